"""`python -m facegan_jax.sample`: the `sample` command (`facegan_jax.cli.sample`)."""

import sys

from facegan_jax.cli import sample as cmd

if __name__ == "__main__":
    sys.exit(cmd.main())
