"""`python -m facegan_jax.fid`: the `fid` command (`facegan_jax.cli.fid`)."""

import sys

from facegan_jax.cli import fid as cmd

if __name__ == "__main__":
    sys.exit(cmd.main())
