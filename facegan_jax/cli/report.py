r"""The report command line: argument parsing and one-line errors only.

  python -m facegan_jax.report --workdir runs/default
  python -m facegan_jax.report --workdir runs/default --memorization [--num 500] \
      [--num-train 10000] [--num-heldout N] [--features auto|inception|classifier] \
      [--classifier FOLDER] [--weights pt_inception-2015-12-05-6726825d.pth]

(`python -m facegan_jax.cli.report ...` is the same command.) Writes
`<workdir>/report/`: curves.png, progress.gif and index.html, and with
`--memorization` also memorization.png, memorization_hist.png and
memorization.json (which index.html then shows). The memorisation check
measures distances in Inception pool3 space when the Inception weights can
be loaded (`--weights`, the cache, or a download), else in the attribute
classifier's feature space (`--classifier`, default: the run's
`config.attr_eval.classifier`); the output says which. The work is done by
`report.py` and `memorization.py`.

Exit status: 0 done; 2 bad input (one line `report: error: ...` on stderr);
1 a checkpoint that cannot be read.
"""

from __future__ import annotations

import argparse
import sys

from facegan_jax import errors, runtime
from facegan_jax import workdir as workdir_lib
from facegan_jax.cli import args as args_lib

PROG = "report"


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = args_lib.Parser(
        "report",
        description="Curves, progress GIF and HTML page of a training run; "
        "optionally the memorisation check.",
    )
    parser.add_argument("--workdir", required=True, help="a training workdir")
    mem = parser.add_argument_group("memorisation check")
    mem.add_argument(
        "--memorization",
        action="store_true",
        help="find the nearest training images of generated samples",
    )
    mem.add_argument("--num", type=int, default=500, help="generated samples (default 500)")
    mem.add_argument(
        "--num-train",
        type=int,
        default=10_000,
        help="training images searched, the first N of the split (0: all; default 10000)",
    )
    mem.add_argument(
        "--num-heldout",
        type=int,
        default=None,
        help="held-out real images of config.data.eval_split (default: --num)",
    )
    mem.add_argument(
        "--features",
        choices=("auto", "inception", "classifier"),
        default="auto",
        help="feature space (auto: Inception when its weights load, else the classifier)",
    )
    mem.add_argument("--classifier", default=None, help="attribute classifier folder")
    mem.add_argument("--weights", default=None, help="pt_inception-2015-12-05-6726825d.pth")
    mem.add_argument("--batch-size", type=int, default=64)
    mem.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    errors.add_verbose_flag(parser)
    args = args_lib.parse_args(parser, argv)
    for name in ("num", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}={getattr(args, name)} must be >= 1")
    if args.num_train < 0:
        parser.error(f"--num-train={args.num_train} must be >= 0 (0: the whole split)")
    if args.num_heldout is not None and args.num_heldout < 1:
        parser.error(f"--num-heldout={args.num_heldout} must be >= 1")
    return args


def run(args: argparse.Namespace) -> dict[str, str]:
    """Runs the command; returns {name: path} of the files written."""
    from facegan_jax.report import run_report as report

    if not workdir_lib.is_workdir(args.workdir):
        raise ValueError(
            f"{workdir_lib.config_path(args.workdir)} not found: is {args.workdir!r} a "
            "facegan_jax training workdir?"
        )
    paths: dict[str, str] = {}
    if args.memorization:
        result = report.check_memorization(
            args.workdir,
            num=args.num,
            num_train=args.num_train or None,
            num_heldout=args.num_heldout,
            features=args.features,
            weights=args.weights,
            classifier=args.classifier,
            batch_size=args.batch_size,
            step=args.step,
        )
        paths.update(result["paths"])
    paths.update(report.write_report(args.workdir))
    for name, path in paths.items():
        print(f"{name}: {path}")
    return paths


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see the module docstring).

    Args:
      argv: arguments without the program name; None reads sys.argv.

    Returns:
      0 on success; after one line `report: error: ...` on stderr, 2 for bad input
      or 1 for a checkpoint that cannot be read.
    """
    args = _parse_args(argv)  # first: --help and flag mistakes need no TensorFlow
    runtime.setup()  # the memorisation check reads the dataset through tf.data
    return errors.run_command(PROG, lambda: run(args), verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
