"""qd.train: models, checkpoints and the training loop (needs the `train` extra: torch)."""
