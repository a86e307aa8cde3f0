"""Training: optimizer, mesh and sharding, jitted steps, checkpoints, metrics and the loop."""
