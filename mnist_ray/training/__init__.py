"""Training: models, optimizers, the per-worker loop Ray Train runs, the driver side, and sweeps."""
