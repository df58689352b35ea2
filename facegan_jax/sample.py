"""Sampling CLI: images from a training workdir's (EMA) generator, seeded and reproducible.

  python -m facegan_jax.sample --workdir runs/default --seeds 0-63 --out grid.png
  python -m facegan_jax.sample --workdir runs/acgan64 --seeds 0-15 --out-dir faces/ \
      --attributes Eyeglasses,Smiling

The image for a seed depends only on the seed and the weights, not on
`--batch-size` or the device count (see sampling.py).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from facegan_jax import components, runtime, sampling
from facegan_jax.datasets.celeba_attributes import NUM_ATTRIBUTES, attribute_index


def parse_attributes(spec: str | None, n: int) -> np.ndarray:
    """'Eyeglasses,Smiling' -> [n, 40] multi-hot vectors with those attributes on."""
    vec = np.zeros((NUM_ATTRIBUTES,), np.float32)
    for name in filter(None, (s.strip() for s in (spec or "").split(","))):
        vec[attribute_index(name)] = 1.0
    return np.tile(vec, (n, 1))


def main(argv: list[str] | None = None) -> int:
    """Parses the command line, writes the requested PNGs; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="training workdir (config + checkpoints)")
    parser.add_argument("--seeds", default="0-63", help="e.g. 0-63 or 1,5,9")
    parser.add_argument("--out", help="write one PNG grid here")
    parser.add_argument("--out-dir", help="write one PNG per seed here (seed_00042.png)")
    parser.add_argument("--batch-size", type=int, default=64, help="generation batch size")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default latest)")
    parser.add_argument("--no-ema", action="store_true", help="use the live generator, not EMA")
    parser.add_argument(
        "--attributes",
        default=None,
        help="conditional models: comma-separated CelebA attributes to switch on "
        "(default: vectors drawn from the training data's attribute pool)",
    )
    parser.add_argument("--ncols", type=int, default=None, help="grid columns")
    args = parser.parse_args(argv)
    if not args.out and not args.out_dir:
        parser.error("give --out GRID.png and/or --out-dir DIR")
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    try:
        seeds = sampling.parse_seeds(args.seeds)
        runtime.setup(tensorflow=False)
        generate, variables, config = components.load_generator(
            args.workdir, step=args.step, use_ema=not args.no_ema
        )
        attributes = None  # conditional models: drawn from the attribute pool
        if config.model.num_attributes and args.attributes is not None:
            attributes = parse_attributes(args.attributes, len(seeds))
        images = sampling.generate_in_batches(
            generate, variables, seeds, args.batch_size, attributes
        )
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.out:
        sampling.save_grid(images, args.out, args.ncols)
        print(f"wrote {len(seeds)} samples as a grid to {args.out}")
    if args.out_dir:
        uint8 = sampling.to_uint8(images)
        for seed, img in zip(seeds, uint8, strict=True):
            sampling.save_png(img, os.path.join(args.out_dir, f"seed_{seed:05d}.png"))
        print(f"wrote {len(seeds)} PNGs to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
