r"""Computes and caches the real-side FID statistics of a dataset split.

The images come from `facegan_jax.data.input_pipeline` exactly as training sees them
(crop, resize, channels of the config), quantised to PNG levels like generated
images, and go through `facegan_jax.metrics.fid`. The output `.npz` has `mu`, `sigma` and
metadata (n, source, resolution, crop, weights sha256), like
`python -m facegan_jax.fid --save-stats`, and can be passed to that CLI as a source.

  python -m data_prep.fid_reference_stats --config=configs/default.py \
      --split=validation --out=stats/synthetic_val.npz [--num-samples=2048] \
      [--weights=PATH] [--batch-size=50]

An existing output file is reused (it is the cache), never overwritten.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from facegan_jax import errors
from facegan_jax.cli import args as args_lib

PROG = "fid_reference_stats"


def build_parser() -> args_lib.Parser:
    """The command's flags."""
    parser = args_lib.Parser(PROG, description=__doc__.splitlines()[0])
    args_lib.add_config_argument(parser, what="Run")
    parser.add_argument("--split", help="dataset split (default: config.data.eval_split)")
    parser.add_argument("--out", help="output .npz (default: in the facegan_jax cache dir)")
    parser.add_argument("--num-samples", type=int, default=0, help="images (0: whole split)")
    parser.add_argument("--weights", help="FID Inception weights (default: cache/download)")
    parser.add_argument("--batch-size", type=int, default=50, help="images per network call")
    errors.add_verbose_flag(parser)
    return parser


def default_output(config: Any, split: str, num_samples: int) -> str:
    """Cache path for a split's statistics, named by everything that changes them."""
    from facegan_jax.metrics import inception_weights

    d = config.data
    name = f"{d.name}_{split}_{d.image_size}px_{d.channels}ch_{d.crop}_n{num_samples or 'all'}"
    return str(inception_weights.cache_dir() / "fid_stats" / (name.replace("/", "_") + ".npz"))


def compute_reference_stats(
    config: Any,
    split: str,
    num_samples: int,
    weights: str | None,
    out: str,
    batch_size: int = 50,
) -> tuple[Any, Any, int]:
    """Computes the statistics of `split` and writes them to `out` (a new file).

    Args:
      config: the run config (`config.data` selects dataset, crop, size, channels).
      split: TFDS split, e.g. 'validation' or 'validation[:2048]'.
      num_samples: images to use; 0 for the whole split.
      weights: FID Inception weights file, or None for the cache/download logic.
      out: the .npz to write; must not exist.
      batch_size: images per network call.

    Returns:
      (mu, sigma, n).
    """
    from facegan_jax.data import input_pipeline
    from facegan_jax.metrics import fid, inception_weights

    weights_path = inception_weights.resolve_weights_path(weights)
    params = inception_weights.load_inception_params(weights_path)
    dataset = input_pipeline.ordered_dataset(config, split, batch_size)
    mu, sigma, n = fid.compute_stats_from_images(
        dataset.as_numpy_iterator(),
        params,
        batch_size,
        max_samples=num_samples or None,
    )
    fid.save_stats(
        out,
        mu,
        sigma,
        n=n,
        source=f"{config.data.name}:{split}",
        resolution=[config.data.image_size, config.data.image_size],
        crop=config.data.crop,
        weights_sha256=inception_weights.file_sha256(weights_path),
    )
    return mu, sigma, n


def main(argv: list[str] | None = None) -> int:
    """Entry point (see the module docstring); returns the exit status."""
    from facegan_jax import runtime

    args = args_lib.parse_args(build_parser(), argv)
    runtime.setup()
    config = args.config
    split = args.split or config.data.eval_split
    out = args.out or default_output(config, split, args.num_samples)
    if os.path.exists(out):
        print(f"Reusing cached statistics {out}")
        return 0
    try:
        _, _, n = compute_reference_stats(
            config, split, args.num_samples, args.weights, out, args.batch_size
        )
    except (ValueError, OSError) as e:
        return errors.report(e, prog=PROG, verbose=args.verbose, default_code=errors.EXIT_FAILURE)
    print(f"Wrote statistics of {n} images of {config.data.name}:{split} to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
