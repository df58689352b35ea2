"""HR-DCGAN of seed 004 (Curtó et al. 2017), greyscale or RGB (`config.model.name = 'hrdcgan'`).

HR-DCGAN is a DCGAN whose activations are SELU (with batch normalisation,
"BS" layers) and which adds a stride-1 convolution as the first layer of the
generator and the last layer of the discriminator. Shapes follow the seed's
full (non-"reduced") 256x256 TensorFlow network, which starts G at 8x8:

* Generator: z -> Dense(8*8*C8, no bias) -> BN -> SELU -> reshape ->
  Conv(C8, k4, s1, 'same') -> BN -> SELU [the extra stride-1 layer] ->
  stride-2 ConvTranspose k4 + BN + SELU up to S/2 -> stride-2 ConvTranspose
  k4 to `channels` -> tanh. Width at resolution r is g_dim * S / (2r): the
  last hidden layer has `g_dim` channels (S=256, g_dim=32: 512 at 8x8).
* Discriminator: stride-2 Conv k4 + SELU (no BN on the input layer), then
  stride-2 Conv k4 + BN + SELU down to 8x8 (widths d_dim, 2d, 4d, ...), then
  Conv(k4, s1, 'same') + BN + SELU [the extra stride-1 layer] -> Flatten ->
  Dropout(`config.model.d_dropout`, 0 by default) -> Dense(1) logit.

The activations come from `config.model.g_activation` / `d_activation`
('selu' in the recipes). Stride-2 convs reuse the DCGAN family's
(`fast_convs`-aware) k4 s2 layers: for even sizes TF's 'same' padding is the
PyTorch padding=1 they implement. BatchNorm uses Keras' defaults (momentum
0.99, eps 1e-3), the seed being Keras.

Seed differences:
* The seed's code uses ELU although its text (and the paper) say SELU, and it
  comments out D's extra stride-1 conv; we implement the described network.
* Kernels use LeCun-normal init, the one SELU's self-normalisation assumes
  (the seed leaves Keras' Glorot-uniform).
* As in the seed, the stride-2 convs have no bias (BN follows).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from facegan_jax.models import build_pair, require_unconditional
from facegan_jax.models.dcgan import activation, conv_stride_2, upsample_to_image

Dtype = Any
_INIT = nn.initializers.lecun_normal()
START_SIZE = 8  # G starts / D ends at 8x8, as the seed's 256x256 network.


def num_stages(image_size: int) -> int:
    """Number of x2 stages between 8x8 and `image_size` (8 * 2**k, k >= 1)."""
    k = math.log2(image_size / START_SIZE) if image_size >= 2 * START_SIZE else -1.0
    if k != int(k) or k < 1:
        raise ValueError(
            f"config.data.image_size={image_size} must be 8 * 2**k (16, 32, ..., 256) for hrdcgan"
        )
    return int(k)


def _batch_norm(train: bool, dtype: Dtype) -> nn.BatchNorm:
    # Keras BatchNormalization defaults (the seed is tf.keras).
    return nn.BatchNorm(use_running_average=not train, momentum=0.99, epsilon=1e-3, dtype=dtype)


class Generator(nn.Module):
    """HR-DCGAN generator: z [B, z_dim] -> images [B, S, S, C] in [-1, 1]."""

    image_size: int = 256
    channels: int = 1
    base_dim: int = 32
    act: str = "selu"
    leaky_slope: float = 0.2
    fast_convs: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, z: jax.Array, attributes: jax.Array | None = None, *, train: bool
    ) -> jax.Array:
        del attributes  # unconditional
        stages = num_stages(self.image_size)
        act = activation(self.act, self.leaky_slope)
        width = self.base_dim * 2 ** (stages - 1)  # g_dim * S / (2 * 8)
        project = nn.Dense(
            START_SIZE * START_SIZE * width, use_bias=False, kernel_init=_INIT, dtype=self.dtype
        )
        x = project(z.astype(self.dtype))  # [B, 64 * width]
        x = act(_batch_norm(train, self.dtype)(x))
        x = x.reshape(z.shape[0], START_SIZE, START_SIZE, width)  # [B, 8, 8, width]
        x = nn.Conv(width, (4, 4), use_bias=False, kernel_init=_INIT, dtype=self.dtype)(x)
        x = act(_batch_norm(train, self.dtype)(x))  # [B, 8, 8, width]
        return upsample_to_image(
            x,
            stages - 1,
            channels=self.channels,
            act=act,
            norm=lambda: _batch_norm(train, self.dtype),
            fast=self.fast_convs,
            kernel_init=_INIT,
            dtype=self.dtype,
        )


class Discriminator(nn.Module):
    """HR-DCGAN discriminator: images [B, S, S, C] -> (logits [B], None)."""

    image_size: int = 256
    base_dim: int = 32
    act: str = "selu"
    leaky_slope: float = 0.2
    dropout: float = 0.0
    fast_convs: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool) -> tuple[jax.Array, None]:
        stages = num_stages(self.image_size)
        act = activation(self.act, self.leaky_slope)
        x = images.astype(self.dtype)
        width = self.base_dim
        for i in range(stages):
            width = self.base_dim * 2**i
            x = conv_stride_2(width, fast=self.fast_convs, kernel_init=_INIT, dtype=self.dtype)(
                x
            )  # [B, H/2, W/2, width]
            if i > 0:
                x = _batch_norm(train, self.dtype)(x)
            x = act(x)
        x = nn.Conv(width, (4, 4), use_bias=False, kernel_init=_INIT, dtype=self.dtype)(x)
        x = act(_batch_norm(train, self.dtype)(x))  # [B, 8, 8, width]
        x = x.reshape(x.shape[0], -1)  # [B, 64 * width]
        if self.dropout > 0:
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        logits = nn.Dense(1, kernel_init=_INIT, dtype=jnp.float32)(x)  # [B, 1]
        return logits[:, 0], None


def default_config() -> ml_collections.ConfigDict:
    """The `config.model` fields the HR-DCGAN family reads, with the seed's values."""
    return ml_collections.ConfigDict(
        dict(
            name="hrdcgan",
            z_dim=100,
            # Last hidden G width / first D width (256x256 with 32: 512 channels at 8x8).
            g_dim=32,
            d_dim=32,
            num_attributes=0,  # unconditional
            # 'selu' (HR-DCGAN), 'relu' or 'leaky_relu'.
            g_activation="selu",
            d_activation="selu",
            leaky_slope=0.2,  # used only by 'leaky_relu'
            d_dropout=0.0,
            fast_convs=True,
        )
    )


def build(config: Any) -> tuple[nn.Module, nn.Module]:
    """Builds the HR-DCGAN (generator, discriminator) pair from `config.model` / `config.data`.

    Args:
      config: the run config (reads data.image_size/channels, model.g_dim,
        d_dim, g_activation, d_activation, leaky_slope, d_dropout, fast_convs,
        num_attributes and train.mixed_precision).

    Returns:
      (generator, discriminator) Flax modules following facegan_jax.models' contract.
    """
    require_unconditional(config)
    num_stages(config.data.image_size)
    return build_pair(config, Generator, Discriminator)
