"""Generation: seeded latents and generators, attribute vectors over real pools, editing."""
