r"""Writes a preview grid of `synthetic_faces` renders to a PNG.

This module owns the command line around `facegan_jax.data.face_renderer`:
render faces `start .. start+num-1` of a seed and tile them with
`facegan_jax.generation.sampling.make_grid` (near-square unless `--cols` is given).

  python -m data_prep.render_synthetic_faces --out grid.png --resolution 64 --num 64

Face `i` of the grid is the renderer's face `(seed, start + i)`; the TFDS
dataset's 'train' split holds faces `0 .. num_train-1` of its seed, so with the
defaults the grid shows the first training images. Nothing here uses TensorFlow.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from facegan_jax import runtime
from facegan_jax.cli import args as args_lib
from facegan_jax.data import face_renderer
from facegan_jax.generation import sampling


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line.

    Args:
      argv: arguments without the program name (default `sys.argv[1:]`).

    Returns:
      The exit status (0 success; bad arguments exit with 2 through argparse).
    """
    runtime.setup(tensorflow=False)  # renders with numpy only: TF is never imported
    parser = args_lib.Parser(
        "render_synthetic_faces",
        description="Write a preview grid of synthetic_faces renders to a PNG.",
    )
    parser.add_argument("--out", required=True, help="PNG file to write")
    parser.add_argument("--resolution", type=int, default=64, choices=face_renderer.RESOLUTIONS)
    parser.add_argument("--num", type=int, default=64, help="number of faces in the grid")
    parser.add_argument("--cols", type=int, default=None, help="grid columns (default: square)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed")
    parser.add_argument("--start", type=int, default=0, help="index of the first face")
    args = args_lib.parse_args(parser, argv)
    for flag in ("num", "cols"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            parser.error(f"--{flag} must be >= 1, got {value}")
    for flag in ("seed", "start"):
        if getattr(args, flag) < 0:
            parser.error(f"--{flag} must be >= 0, got {getattr(args, flag)}")

    images, _ = face_renderer.render_faces(
        args.seed, range(args.start, args.start + args.num), args.resolution
    )
    grid = sampling.make_grid(images, args.cols)
    sampling.save_png(grid, args.out)
    print(f"wrote {args.out}: {args.num} faces at {args.resolution}x{args.resolution}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
