"""Training: one trainer, recipes per customization type, checkpoints, metrics."""
