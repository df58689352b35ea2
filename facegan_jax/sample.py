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
from collections.abc import Callable
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax
import numpy as np

from facegan_jax import checkpointing, sampling, sharding
from facegan_jax import state as state_lib
from facegan_jax.datasets.celeba_attributes import NUM_ATTRIBUTES, attribute_index
from facegan_jax.models import build_models

SAMPLE_SEED = 0


def load_generator_for_sampling(
    workdir: str, *, step: int | None = None, use_ema: bool = True
) -> tuple[Callable[..., jax.Array], Any, Any]:
    """Loads a workdir's generator.

    Returns:
      (generate, variables, config): `generate(variables, indices[, attributes])`
      gives images in [-1, 1] with latents from `sampling.latents(SAMPLE_SEED, indices)`;
      without `attributes`, conditional models use vectors from the workdir's
      real attribute pool (`attribute_pool.npy`, written by training).
    """
    config = checkpointing.read_config(workdir)
    generator, discriminator = build_models(config)
    g_tx = state_lib.create_optimizer(config.g_optimizer, "config.g_optimizer")
    d_tx = state_lib.create_optimizer(config.d_optimizer, "config.d_optimizer")
    mesh = sharding.create_mesh()
    manager = checkpointing.create_manager(workdir, config.max_checkpoints_to_keep)
    target = state_lib.abstract_state(config, generator, discriminator, g_tx, d_tx, mesh)
    state = checkpointing.restore(manager, target, step)
    if use_ema:
        variables = {"params": state.ema_params, **state.ema_vars}
    else:
        variables = {"params": state.g_params, **state.g_vars}
    pool = None
    if config.model.num_attributes:
        pool_path = os.path.join(workdir, checkpointing.ATTRIBUTE_POOL_FILE)
        if not os.path.exists(pool_path):
            raise FileNotFoundError(f"{pool_path} not found: it is written when training starts")
        pool = np.load(pool_path)
    generate = sampling.make_generate_fn(generator, config, seed=SAMPLE_SEED, pool=pool)
    return generate, variables, config


def parse_attributes(spec: str | None, n: int) -> np.ndarray:
    """'Eyeglasses,Smiling' -> [n, 40] multi-hot vectors with those attributes on."""
    vec = np.zeros((NUM_ATTRIBUTES,), np.float32)
    for name in filter(None, (s.strip() for s in (spec or "").split(","))):
        vec[attribute_index(name)] = 1.0
    return np.tile(vec, (n, 1))


def main(argv: list[str] | None = None) -> int:
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
        generate, variables, config = load_generator_for_sampling(
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
