"""The 128x128 Keras GAN of seed 003 (`config.model.name = 'gan128'`).

At 128x128 with the recipe widths (g_dim 128, d_dim 256) it is the seed's
network; LeakyReLU everywhere uses Keras' default slope 0.3
(`config.model.leaky_slope`):

* Generator: z -> Dense(16*16*128) -> LeakyReLU -> reshape -> Conv(256, 5)
  -> LeakyReLU -> 3x [ConvTranspose(256, 4, s2, 'same'), LeakyReLU] ->
  2x [Conv(512, 5), LeakyReLU] -> Conv(channels, 7) -> tanh.
  Widths: g_dim, 2g, 2g (x3), 4g, 4g; the start resolution is image_size / 8.
* Discriminator: Conv(256, 3, 'valid') -> LeakyReLU -> Conv(256, 4, s2,
  'valid') -> LeakyReLU -> Flatten -> Dropout(`config.model.d_dropout`, the
  seed's 0.4) -> Dense(1). Widths: d_dim, d_dim.

Seed bugs and choices:
* The seed's D applies its second conv to an undefined `X` (a typo for `x`,
  a NameError as written); we apply it to the first conv's output.
* The seed's D ends in a sigmoid; we return the logit (losses use log-sigmoid).
* The seed's prose mentions batch normalisation, its code has none; we follow
  the code.
* Keras initialisers: Glorot-uniform kernels, zero biases.

The G is heavy: its two 5x5 convs at 128x128 with 512 channels are ~320 of
its ~336 forward GFLOP per image.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from facegan_jax.models import build_pair, dcgan, require_unconditional

Dtype = Any
_INIT = nn.initializers.xavier_uniform()  # Keras glorot_uniform


def start_size(image_size: int) -> int:
    """Resolution before the three x2 transposed convs (image_size / 8)."""
    if image_size % 8 or image_size < 16:
        raise ValueError(
            f"config.data.image_size={image_size} must be a multiple of 8 (>= 16) for gan128"
        )
    return image_size // 8


class Generator(nn.Module):
    """gan128 generator: z [B, z_dim] -> images [B, S, S, C] in [-1, 1]."""

    image_size: int = 128
    channels: int = 3
    base_dim: int = 128
    leaky_slope: float = 0.3
    fast_convs: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, z: jax.Array, attributes: jax.Array | None = None, *, train: bool
    ) -> jax.Array:
        del attributes, train  # unconditional; no dropout or BN in G
        s0, g = start_size(self.image_size), self.base_dim

        def act(x: jax.Array) -> jax.Array:
            return nn.leaky_relu(x, self.leaky_slope)

        x = nn.Dense(s0 * s0 * g, kernel_init=_INIT, dtype=self.dtype)(z.astype(self.dtype))
        x = act(x).reshape(z.shape[0], s0, s0, g)  # [B, S/8, S/8, g]
        x = act(nn.Conv(2 * g, (5, 5), kernel_init=_INIT, dtype=self.dtype)(x))  # [B, S/8, S/8, 2g]
        for _ in range(3):
            up = dcgan.conv_transpose_2x(  # Keras Conv2DTranspose(k4, s2, "same"), with bias
                2 * g, fast=self.fast_convs, kernel_init=_INIT, dtype=self.dtype, use_bias=True
            )
            x = act(up(x))  # [B, 2H, 2W, 2g]
        for _ in range(2):
            x = act(nn.Conv(4 * g, (5, 5), kernel_init=_INIT, dtype=self.dtype)(x))  # [B, S, S, 4g]
        x = nn.Conv(self.channels, (7, 7), kernel_init=_INIT, dtype=self.dtype)(x)  # [B, S, S, C]
        return jnp.tanh(x.astype(jnp.float32))


class Discriminator(nn.Module):
    """gan128 discriminator: images [B, S, S, C] -> (logits [B], None)."""

    image_size: int = 128
    base_dim: int = 256
    leaky_slope: float = 0.3
    dropout: float = 0.4
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool) -> tuple[jax.Array, None]:
        start_size(self.image_size)
        x = images.astype(self.dtype)
        x = nn.Conv(self.base_dim, (3, 3), padding="VALID", kernel_init=_INIT, dtype=self.dtype)(
            x
        )  # [B, S-2, S-2, d]
        x = nn.leaky_relu(x, self.leaky_slope)
        x = nn.Conv(
            self.base_dim,
            (4, 4),
            strides=(2, 2),
            padding="VALID",
            kernel_init=_INIT,
            dtype=self.dtype,
        )(x)  # [B, (S-6)/2 + 1, (S-6)/2 + 1, d]
        x = nn.leaky_relu(x, self.leaky_slope)
        x = x.reshape(x.shape[0], -1)  # [B, F]
        if self.dropout > 0:
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        # float32 head: the logit of a ~1M-wide dot product keeps full precision.
        logits = nn.Dense(1, kernel_init=_INIT, dtype=jnp.float32)(x)  # [B, 1]
        return logits[:, 0], None


def default_config() -> ml_collections.ConfigDict:
    """The `config.model` fields the gan128 family reads, with the seed's values."""
    return ml_collections.ConfigDict(
        dict(
            name="gan128",
            z_dim=32,
            g_dim=128,  # Dense 128 -> convs 256 -> 512
            d_dim=256,
            num_attributes=0,  # unconditional
            leaky_slope=0.3,  # Keras LeakyReLU() default
            d_dropout=0.4,
            # Exact fast formulation of G's k4 s2 transposed convs (models/fast_conv.py).
            fast_convs=True,
        )
    )


def build(config: Any) -> tuple[nn.Module, nn.Module]:
    """Builds the gan128 (generator, discriminator) pair from `config.model` / `config.data`.

    Args:
      config: the run config (reads data.image_size/channels, model.g_dim,
        d_dim, leaky_slope, d_dropout, fast_convs, num_attributes and
        train.mixed_precision).

    Returns:
      (generator, discriminator) Flax modules following facegan_jax.models' contract.
    """
    require_unconditional(config)
    start_size(config.data.image_size)
    return build_pair(config, Generator, Discriminator)
