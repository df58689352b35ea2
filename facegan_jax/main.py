"""`python -m facegan_jax.main`: the `train` command (`facegan_jax.cli.train`)."""

from facegan_jax.cli import train as cmd

if __name__ == "__main__":
    cmd.run()
