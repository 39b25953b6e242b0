"""Training: SFT and GRPO setup for TRL, DeepSpeed configs, callbacks, validation, generation, model loading, the tiny model, the image processor, export and the sweep space."""
