"""Units of distributed work on Ray: data preparation, training, reward actors, batch inference."""
