"""Training and evaluation engine: configs, the step loop, checkpoints, metrics."""
