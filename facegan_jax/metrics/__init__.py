"""Metrics: FID/KID (Inception network and weights), the attribute classifier and its metrics,
evaluation of generators during and after training, and the memorisation check."""
