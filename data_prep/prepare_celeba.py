r"""Builds the `celeba_local` TFDS dataset from CelebA files downloaded by hand.

This module owns the command line around `facegan_jax.data.celeba_local`:
validate the manual files, build with a progress bar, print a summary.

  python -m data_prep.prepare_celeba --manual-dir ~/celeba --data-dir ~/tensorflow_datasets

`--manual-dir` holds `img_align_celeba.zip` (or the extracted `img_align_celeba/`),
`list_attr_celeba.txt` and `list_eval_partition.txt`. Then train with
`--config.data.name=celeba_local --config.data.tfds_data_dir=<data_dir>`.

Exit status: 0 built (or already built: an existing dataset is reused, never
overwritten); 2 bad input (one line on stderr naming the file, nothing written).
The outcome for every kind of bad input is listed in celeba_local's docstring.
"""

from __future__ import annotations

import argparse
import sys

import tensorflow_datasets as tfds

from facegan_jax import errors, runtime
from facegan_jax.cli import args as args_lib
from facegan_jax.data import celeba_local


def main(argv: list[str] | None = None) -> int:
    """Runs the command line.

    Args:
      argv: arguments without the program name (default `sys.argv[1:]`).

    Returns:
      The exit status (0 success, 2 bad input).
    """
    parser = args_lib.Parser(
        "prepare_celeba",
        description="Build the celeba_local TFDS dataset from the official CelebA files.",
    )
    parser.add_argument("--manual-dir", required=True, help="folder with the downloaded files")
    parser.add_argument("--data-dir", default=None, help="TFDS data_dir (default: TFDS's)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    errors.add_verbose_flag(parser)
    args = args_lib.parse_args(parser, argv)
    runtime.setup()
    return errors.run_command("prepare_celeba", lambda: _run(args), verbose=args.verbose)


def _run(args: argparse.Namespace) -> int:
    if args.no_progress:
        tfds.disable_progress_bar()  # TFDS's own bars and banner; this process only builds
    builder, report = celeba_local.prepare(
        args.manual_dir, args.data_dir, show_progress=not args.no_progress
    )
    if report is None:
        print(
            f"celeba_local is already built at {builder.data_path}; nothing done "
            "(an existing dataset is never overwritten)"
        )
    else:
        print(f"built celeba_local {builder.version} at {builder.data_path}")
        print("\n".join(report.summary_lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
