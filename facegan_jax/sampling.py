"""Seeded sampling: latents from seeds, generator application, image grids and PNGs.

The latent of image `i` under seed `s` is `normal(fold_in(PRNGKey(s), i))`, so
an image depends only on (seed, index) and the weights, never on the batch size
or device count. The sampling CLI (`facegan_jax.sample`) uses seed 0 and the
requested seeds as indices; the training loop's control grid uses
`config.seed` and indices `0..num_control_samples-1`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from facegan_jax.datasets.celeba_attributes import NUM_ATTRIBUTES

PyTree = Any


def latents(seed: int, indices: jax.Array, z_dim: int) -> jax.Array:
    """Latents [N, z_dim] for image `indices` [N] under `seed` (batch-size independent)."""
    key = jax.random.PRNGKey(seed)
    return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), (z_dim,)))(
        jnp.asarray(indices, jnp.uint32)
    )


def pool_attributes(seed: int, indices: jax.Array, pool: jax.Array) -> jax.Array:
    """Attribute vectors [N, 40] for `indices`, drawn from a pool of real vectors [P, 40]."""
    key = jax.random.fold_in(jax.random.PRNGKey(seed), 0x5EED)
    idx = jax.vmap(lambda i: jax.random.randint(jax.random.fold_in(key, i), (), 0, pool.shape[0]))(
        jnp.asarray(indices, jnp.uint32)
    )
    return jnp.asarray(pool)[idx]


def make_generate_fn(
    generator: nn.Module, config: Any, seed: int, pool: np.ndarray | None = None
) -> Callable[..., jax.Array]:
    """Returns `generate(variables, indices, attributes) -> images [N, H, W, C]` in [-1, 1].

    The generator runs in eval mode (BatchNorm running statistics, frozen
    spectral-norm vectors), so each image depends on its own latent only.
    `attributes` is `[N, 40]` for conditional models and ignored otherwise; when it
    is omitted, a conditional model gets `pool_attributes(seed, indices, pool)`
    (real attribute vectors) or, without a pool, all-zero attributes.

    Images are generated one at a time inside the graph (`lax.map` over a
    batch-1 generator): XLA picks different convolution kernels for different
    batch shapes, whose float results differ in the last bits, so this is what
    makes an image bit-identical whatever the batch size.
    """
    z_dim = config.model.z_dim
    conditional = bool(config.model.num_attributes)
    pool_array = None if pool is None else jnp.asarray(pool, jnp.float32)

    def generate(variables: PyTree, indices: jax.Array, attributes: jax.Array | None = None):
        z = latents(seed, indices, z_dim)  # [N, Z]
        if not conditional:
            attributes = jnp.zeros((z.shape[0], 0), jnp.float32)  # unused
        elif attributes is None and pool is not None:
            attributes = pool_attributes(seed, indices, pool_array)  # [N, 40]
        elif attributes is None:
            attributes = jnp.zeros((z.shape[0], NUM_ATTRIBUTES), jnp.float32)

        def one(args: tuple[jax.Array, jax.Array]) -> jax.Array:
            z_i, a_i = args
            a = a_i[None] if conditional else None
            return generator.apply(variables, z_i[None], a, train=False)[0]  # [H, W, C]

        return jax.lax.map(one, (z, jnp.asarray(attributes, jnp.float32)))  # [N, H, W, C]

    return generate


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[-1, 1] floats -> uint8, the quantisation of a saved PNG."""
    return np.clip(np.round((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(
        np.uint8
    )


def make_grid(images: np.ndarray, ncols: int | None = None, pad: int = 2) -> np.ndarray:
    """Tiles uint8 images [N, H, W, C] into one grid image on a grey background."""
    n, h, w, c = images.shape
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), 128, np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, ncols)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y : y + h, x : x + w] = img
    return grid


def save_png(image: np.ndarray, path: str) -> None:
    """Writes a uint8 [H, W, C] image (C = 1 or 3) as PNG, atomically."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    img = image[..., 0] if image.shape[-1] == 1 else image
    tmp = path + ".tmp.png"
    Image.fromarray(img).save(tmp)
    os.replace(tmp, path)


def save_grid(images: np.ndarray, path: str, ncols: int | None = None) -> None:
    """Saves images in [-1, 1] [N, H, W, C] as one PNG grid."""
    save_png(make_grid(to_uint8(images), ncols), path)


def parse_seeds(spec: str) -> list[int]:
    """Parses '0-63', '1,5,9' or '0-3,10' into a list of non-negative seeds."""
    seeds: list[int] = []
    try:
        for part in spec.split(","):
            part = part.strip()
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                if hi < lo:
                    raise ValueError
                seeds.extend(range(lo, hi + 1))
            elif part:
                seeds.append(int(part))
    except ValueError:
        raise ValueError(f"--seeds={spec!r} is not like '0-63' or '1,5,9'") from None
    if not seeds or min(seeds) < 0:
        raise ValueError(f"--seeds={spec!r} names no non-negative seeds")
    return seeds


def generate_in_batches(
    generate: Callable[..., jax.Array],
    variables: PyTree,
    indices: Sequence[int],
    batch_size: int,
    attributes: np.ndarray | None = None,
) -> np.ndarray:
    """Runs `generate` over `indices` in batches of `batch_size`; returns images [N, H, W, C].

    The last batch is padded to `batch_size` so one compiled shape serves all.
    """
    gen = jax.jit(generate)
    out = []
    idx = np.asarray(indices, np.int64)
    for start in range(0, len(idx), batch_size):
        chunk = idx[start : start + batch_size]
        pad = batch_size - len(chunk)
        chunk_p = np.concatenate([chunk, np.zeros(pad, np.int64)]) if pad else chunk
        attrs = None
        if attributes is not None:
            a = attributes[start : start + batch_size]
            attrs = np.concatenate([a, np.zeros((pad, a.shape[1]), a.dtype)]) if pad else a
        images = np.asarray(gen(variables, chunk_p, attrs))
        out.append(images[: len(chunk)])
    return np.concatenate(out, axis=0)
