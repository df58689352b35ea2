"""`python -m facegan_jax.benchmark`: the `benchmark` command (`facegan_jax.cli.benchmark`)."""

from facegan_jax.cli import benchmark as cmd

if __name__ == "__main__":
    cmd.run()
