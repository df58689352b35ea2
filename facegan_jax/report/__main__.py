"""`python -m facegan_jax.report`: the report command (`facegan_jax.cli.report`)."""

import sys

from facegan_jax.cli import report

if __name__ == "__main__":
    sys.exit(report.main())
