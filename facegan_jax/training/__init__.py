"""Training: state pytree, pure step, losses, DiffAugment, the loop, checkpoints, run builder."""
