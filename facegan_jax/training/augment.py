"""DiffAugment: differentiable augmentation of every image the discriminator sees.

Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN
Training" (https://arxiv.org/abs/2006.10738). The same random transform family
T is applied to real *and* generated images before D, in D's update and in G's,
and it is differentiable, so G's gradient flows back through T. D then cannot
memorise the few thousand real images by their exact pixels, yet G is still
pushed towards the un-augmented data (each transform here is non-leaking: the
distribution of T(x) determines that of x).

`config.train.diffaugment` is a comma-separated policy ('' disables it):

* ``color``: per image, brightness ``x + U(-0.5, 0.5)``, saturation
  ``(x - mean_c) * U(0, 2) + mean_c`` (mean over channels, per pixel) and
  contrast ``(x - mean) * U(0.5, 1.5) + mean`` (mean over the image).
* ``translation``: per image, an integer shift of up to 1/8 of the side in each
  direction, uniformly in ``[-S/8, S/8]``; pixels shifted in are zero.
* ``cutout``: per image, a ``S/2 x S/2`` square of zeros centred uniformly in
  the image (clipped at the borders, so at least a quarter of it remains).

These are the official implementation's operations and magnitudes, written for
NHWC images in [-1, 1]. Every draw comes from the key the caller passes (the
train step derives it from its own per-step key), one value per image.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

Augment = Callable[[jax.Array, jax.Array], jax.Array]

POLICY_NAMES = ("color", "translation", "cutout")


def brightness(key: jax.Array, x: jax.Array) -> jax.Array:
    """Adds U(-0.5, 0.5) to every pixel of each image ``x`` [B, H, W, C]."""
    shift = jax.random.uniform(key, (x.shape[0], 1, 1, 1), x.dtype) - 0.5  # [B, 1, 1, 1]
    return x + shift


def saturation(key: jax.Array, x: jax.Array) -> jax.Array:
    """Scales each pixel's deviation from its channel mean by U(0, 2), per image."""
    mean = x.mean(axis=-1, keepdims=True)  # [B, H, W, 1]
    scale = jax.random.uniform(key, (x.shape[0], 1, 1, 1), x.dtype, 0.0, 2.0)
    return (x - mean) * scale + mean


def contrast(key: jax.Array, x: jax.Array) -> jax.Array:
    """Scales each image's deviation from its mean by U(0.5, 1.5)."""
    mean = x.mean(axis=(1, 2, 3), keepdims=True)  # [B, 1, 1, 1]
    scale = jax.random.uniform(key, (x.shape[0], 1, 1, 1), x.dtype, 0.5, 1.5)
    return (x - mean) * scale + mean


def color(key: jax.Array, x: jax.Array) -> jax.Array:
    """Brightness, then saturation, then contrast (the official 'color' policy)."""
    k_b, k_s, k_c = jax.random.split(key, 3)
    return contrast(k_c, saturation(k_s, brightness(k_b, x)))


def translation(key: jax.Array, x: jax.Array) -> jax.Array:
    """Shifts each image by integers (dy, dx) in [-H/8, H/8] x [-W/8, W/8], zero fill.

    ``out[b, i, j] = x[b, i + dy, j + dx]`` where that pixel exists, else 0.
    """
    B, H, W, C = x.shape
    sy, sx = H // 8, W // 8
    k_y, k_x = jax.random.split(key)
    dy = jax.random.randint(k_y, (B,), -sy, sy + 1)  # [B]
    dx = jax.random.randint(k_x, (B,), -sx, sx + 1)  # [B]
    padded = jnp.pad(x, ((0, 0), (sy, sy), (sx, sx), (0, 0)))  # [B, H + 2sy, W + 2sx, C]

    def shift(image: jax.Array, y: jax.Array, x0: jax.Array) -> jax.Array:
        return jax.lax.dynamic_slice(image, (sy + y, sx + x0, 0), (H, W, C))

    return jax.vmap(shift)(padded, dy, dx)  # [B, H, W, C]


def cutout(key: jax.Array, x: jax.Array) -> jax.Array:
    """Zeroes one (H/2 x W/2) square per image, its centre uniform over the image.

    As in the official code the centre is drawn from ``[0, H]`` (``[0, H - 1]`` for
    odd square sides) and the square is clipped at the borders.
    """
    B, H, W, _ = x.shape
    ch, cw = H // 2, W // 2
    k_y, k_x = jax.random.split(key)
    cy = jax.random.randint(k_y, (B, 1), 0, H + (1 - ch % 2))  # [B, 1]
    cx = jax.random.randint(k_x, (B, 1), 0, W + (1 - cw % 2))  # [B, 1]
    rows, cols = jnp.arange(H)[None], jnp.arange(W)[None]  # [1, H], [1, W]
    in_rows = (rows >= cy - ch // 2) & (rows < cy - ch // 2 + ch)  # [B, H]
    in_cols = (cols >= cx - cw // 2) & (cols < cx - cw // 2 + cw)  # [B, W]
    keep = ~(in_rows[:, :, None] & in_cols[:, None, :])  # [B, H, W]
    return x * keep[..., None].astype(x.dtype)


_OPS: dict[str, Augment] = {"color": color, "translation": translation, "cutout": cutout}


def parse_policy(policy: str, field: str = "config.train.diffaugment") -> tuple[str, ...]:
    """The operations of a policy string ('color,translation,cutout'; '' is none).

    Raises:
      ValueError: naming `field` for an unknown or repeated operation.
    """
    names = tuple(name.strip() for name in policy.split(",") if name.strip())
    for name in names:
        if name not in _OPS:
            raise ValueError(
                f"{field}={policy!r}: unknown operation {name!r}; "
                f"known: {', '.join(POLICY_NAMES)} (comma-separated, '' disables)"
            )
    if len(set(names)) != len(names):
        raise ValueError(f"{field}={policy!r} repeats an operation")
    return names


def diff_augment(key: jax.Array, images: jax.Array, policy: str) -> jax.Array:
    """Applies the policy's operations in order, each with its own key.

    Args:
      key: PRNG key (one draw per image and operation).
      images: [B, H, W, C] float images in [-1, 1].
      policy: e.g. 'color,translation,cutout'; '' returns `images` itself.

    Returns:
      Augmented images [B, H, W, C], differentiable in `images`.
    """
    names = parse_policy(policy)
    if not names:
        return images
    x = images
    for name, k in zip(names, jax.random.split(key, len(names)), strict=True):
        x = _OPS[name](k, x)
    return x


def make_augment(policy: str) -> Augment | None:
    """`augment(key, images)` for `policy`, or None when the policy is empty (no-op)."""
    if not parse_policy(policy):
        return None
    return lambda key, images: diff_augment(key, images, policy)
