"""`python -m facegan_jax.evaluate`: the `evaluate` command (`facegan_jax.cli.evaluate`)."""

import sys

from facegan_jax.cli import evaluate as cmd

if __name__ == "__main__":
    sys.exit(cmd.main())
