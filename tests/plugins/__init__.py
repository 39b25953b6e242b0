"""Session-scoped pytest fixtures shared by the whole suite (servers, tiny model, checkpoints)."""
