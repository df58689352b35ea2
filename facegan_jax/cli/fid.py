r"""The FID command line: argument parsing, telling sources apart, one-line errors.

  python -m facegan_jax.cli.fid SRC_A SRC_B [--weights PATH] [--batch-size N] \
      [--num-samples N] [--kid]
  python -m facegan_jax.cli.fid --save-stats SRC OUT.npz

(`python -m facegan_jax.fid ...` runs the same command.) A SRC is a folder of
images, an `.npz` of statistics (`mu`, `sigma`) or a training workdir (its latest
EMA generator is sampled). This module owns only the command: the maths is
`fid.py`, sampling a workdir is `evaluation.py`, the weights are
`models/inception_weights.py`. Bad input (a missing or empty folder, a damaged
weights file, a path that is no source) ends with one line `fid: error: ...` on
stderr naming the path and what to do, and exit code 2 (`errors.EXIT_USAGE`); a
workdir checkpoint that cannot be read is reported the same way with exit code 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from facegan_jax import errors, fileio, runtime
from facegan_jax import workdir as workdir_lib
from facegan_jax.cli import args as args_lib
from facegan_jax.metrics import evaluation, fid, inception_weights

PROG = "fid"
# Kinds of source.
STATS, IMAGES, WORKDIR = "statistics", "images", "workdir"
_WHAT = "pass a folder of images, an .npz of statistics or a training workdir"


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = args_lib.Parser(
        "fid",
        description="FID between two sources (image folder, .npz statistics or training workdir).",
    )
    parser.add_argument("path", nargs=2, help="two sources (or SRC OUT.npz with --save-stats)")
    parser.add_argument("--weights", default=None, help="pt_inception-2015-12-05-6726825d.pth")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--num-samples", type=int, default=None, help="images per source")
    parser.add_argument("--kid", action="store_true", help="also print KID")
    parser.add_argument("--save-stats", action="store_true", help="write SRC's statistics to OUT")
    errors.add_verbose_flag(parser)
    args = args_lib.parse_args(parser, argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size={args.batch_size} must be >= 1")
    if args.num_samples is not None and args.num_samples < 2:
        parser.error(f"--num-samples={args.num_samples} must be >= 2")
    return args


def source_kind(src: str) -> str:
    """What a command-line source is: STATS, IMAGES or WORKDIR.

    Args:
      src: the path given on the command line.

    Returns:
      The kind.

    Raises:
      ValueError: one line naming `src` and what to pass instead.
    """
    if not fileio.exists(src):
        raise ValueError(f"{src} does not exist; {_WHAT}")
    if fileio.isfile(src):
        if src.endswith(".npz"):
            return STATS
        raise ValueError(f"{src} is a file but not an .npz of statistics; {_WHAT}")
    if not fileio.is_url(src) and fid.list_image_files(Path(src)):
        return IMAGES
    if workdir_lib.is_workdir(src):
        return WORKDIR
    raise ValueError(
        f"{src} holds no image files ({', '.join(fid.IMAGE_EXTENSIONS)}) and no config.json "
        f"of a training run; {_WHAT}"
    )


def _source_stats(
    src: str, kind: str, args: argparse.Namespace, params: Any, need_features: bool
) -> dict[str, Any]:
    """mu, sigma (+ features, metadata for --save-stats) of one source."""
    if kind == STATS:
        mu, sigma = fid.load_stats(src)
        return {"mu": mu, "sigma": sigma}
    if kind == WORKDIR:
        mu, sigma, n, feats, config = evaluation.workdir_stats(
            src, params, args.batch_size, args.num_samples, keep_features=need_features
        )
        resolution, crop = [config.data.image_size] * 2, config.data.crop
    else:
        files = fid.list_image_files(src)[: args.num_samples]
        if len(files) < 2:
            raise ValueError(f"{src} holds 1 image; FID statistics need at least 2: add images")
        feats = fid.features_from_images(
            fid.iterate_image_folder(files, args.batch_size), params, args.batch_size
        )
        mu, sigma, n = fid.stats_from_features(feats)
        first = next(fid.iterate_image_folder(files[:1], 1))  # [1, H, W, 3]
        resolution, crop = [int(first.shape[1]), int(first.shape[2])], "none"
    meta = {"n": n, "source": src, "resolution": resolution, "crop": crop}
    return {"mu": mu, "sigma": sigma, "features": feats, "meta": meta}


def _check_sources(args: argparse.Namespace) -> list[str]:
    """Kinds of the sources (and the output of --save-stats), before any work is done."""
    if args.save_stats:
        src, out = args.path
        kind = source_kind(src)
        if kind == STATS:
            raise ValueError(
                f"{src} already is a statistics file; --save-stats needs images or a workdir"
            )
        if not out.endswith(".npz"):
            raise ValueError(f"{out}: the statistics output must end in .npz")
        if fileio.exists(out):
            raise ValueError(f"{out} already exists; choose another output path (never replaced)")
        return [kind]
    kinds = [source_kind(p) for p in args.path]
    if args.kid:
        for src, kind in zip(args.path, kinds):
            if kind == STATS:
                raise ValueError(
                    f"{src}: KID needs features, but this is a statistics file; pass a folder "
                    "of images or a training workdir, or drop --kid"
                )
    return kinds


def run(args: argparse.Namespace) -> None:
    """Runs the command; prints the result (or writes the statistics file).

    Args:
      args: parsed command line.

    Raises:
      ValueError, OSError: bad input, with a message naming the path.
      errors.CheckpointError: a workdir's checkpoint cannot be read.
    """
    kinds = _check_sources(args)
    params, sha = None, None
    if any(kind != STATS for kind in kinds):
        weights = inception_weights.resolve_weights_path(args.weights)
        params = inception_weights.load_inception_params(weights)
        sha = inception_weights.file_sha256(weights)
    if args.save_stats:
        src, out = args.path
        stats = _source_stats(src, kinds[0], args, params, need_features=False)
        fid.save_stats(out, stats["mu"], stats["sigma"], weights_sha256=sha, **stats["meta"])
        print(f"Saved statistics of {stats['meta']['n']} images to {out}")
        return
    a, b = (_source_stats(p, k, args, params, args.kid) for p, k in zip(args.path, kinds))
    print(f"FID: {fid.frechet_distance(a['mu'], a['sigma'], b['mu'], b['sigma'])}")
    if args.kid:
        mean, std = fid.kid(a["features"], b["features"])
        print(f"KID: {mean} (std {std})")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see the module docstring).

    Args:
      argv: arguments without the program name; None reads sys.argv.

    Returns:
      0 on success; after one line `fid: error: ...` on stderr, 2 for bad input
      (`errors.EXIT_USAGE`) or 1 for a checkpoint that cannot be read
      (`errors.CheckpointError`).
    """
    runtime.setup(tensorflow=False)  # the command never touches TensorFlow: don't import it
    args = _parse_args(argv)
    return errors.run_command(PROG, lambda: run(args), verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
