"""Attribute-conditioned ACGAN over the 40 CelebA attributes (seed 000).

Owns the ACGAN family of the model registry (`config.model.name = 'acgan'`).
At 64x64 with the recipe widths (g_dim 64, d_dim 128) it is exactly the seed's
network (and `../shared/peers/keras_acgan.py`, the Keras reference):

* Generator: concat(z [128], attributes [40]) -> Dense(4*4*1024) ->
  LeakyReLU(0.2) -> reshape -> PixelNorm -> 4x [UpSampling x2 (nearest),
  SN-Conv k4 'same' (512, 256, 128, 64), PixelNorm, LeakyReLU(0.2)] ->
  SN-Conv(3, k4, 'same') -> tanh.
* Discriminator: SN-Conv k3 s2 (128) -> LeakyReLU(0.1) -> MinibatchStdDev ->
  3x [SN-Conv k3 s2 (256, 512, 1024), LeakyReLU(0.1)] -> global average pool
  -> Dense(1) real/fake logit and Dense(40) attribute logits.

Widths scale with `config.model.g_dim` (the last hidden G width; Dense gets
16x, the convs 8x, 4x, 2x, 1x) and `config.model.d_dim` (the first D width;
then 2x, 4x, 8x), so the `runlocal` smoke configs can shrink them. Other
image sizes (any 4 * 2**k >= 8) add or remove one up/down stage per factor 2.

Choices where the seed is silent or differs from its reference:
* The seed's heads end in sigmoid; we return logits (the losses apply
  log-sigmoid: same maths, no overflow).
* Convs use orthogonal init as the seed; the Dense layers keep Keras' default
  Glorot-uniform (the seed sets no initialiser on them); biases start at 0.
* The last G conv is spectrally normalised as in the seed; the Keras peer
  uses a plain Conv2D there (same FLOPs, no effect on the benchmark).
* MinibatchStdDev groups `config.model.mbstd_group_size` examples (StyleGAN);
  the seed/peer take the whole batch, i.e. a group size >= the batch.
* LeakyReLU slopes: G uses `config.model.leaky_slope` (the seed's 0.2); D
  uses the seed's 0.1 (`D_LEAKY_SLOPE`).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from facegan_jax.models import build_pair, check_choice
from facegan_jax.models.layers import (
    MinibatchStdDev,
    Modulate,
    PixelNorm,
    SNConv,
    condition_latent,
)

Dtype = Any

# The seed's discriminator slope (its generator uses 0.2 = config.model.leaky_slope).
D_LEAKY_SLOPE = 0.1
_CONV_INIT = nn.initializers.orthogonal()
_DENSE_INIT = nn.initializers.xavier_uniform()  # Keras Dense default (glorot_uniform)


def num_stages(image_size: int) -> int:
    """Number of x2 stages between 4x4 and `image_size` (4 * 2**k, k >= 1)."""
    k = math.log2(image_size / 4) if image_size >= 8 else -1.0
    if k != int(k) or k < 1:
        raise ValueError(
            f"config.data.image_size={image_size} must be 4 * 2**k (8, 16, 32, 64, ...) for acgan"
        )
    return int(k)


def upsample_nearest_2x(x: jax.Array) -> jax.Array:
    """Keras UpSampling2D(2) (nearest): [B, H, W, C] -> [B, 2H, 2W, C]."""
    b, h, w, c = x.shape
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))  # [B, H, 2, W, 2, C]
    return x.reshape(b, 2 * h, 2 * w, c)


class Generator(nn.Module):
    """ACGAN generator: (z [B, z_dim], attributes [B, A]) -> images [B, S, S, C] in [-1, 1]."""

    image_size: int = 64
    channels: int = 3
    num_attributes: int = 40
    base_dim: int = 64
    leaky_slope: float = 0.2
    sn_power_iterations: int = 1
    cond: str = "input"
    cond_dim: int = 128
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, z: jax.Array, attributes: jax.Array | None = None, *, train: bool
    ) -> jax.Array:
        stages = num_stages(self.image_size)
        z, embedding = condition_latent(
            z,
            attributes,
            self.num_attributes,
            cond=self.cond,
            cond_dim=self.cond_dim,
            leaky_slope=self.leaky_slope,
            family="acgan",
        )  # [B, Z + A], the conditional-normalisation embedding or None
        width = self.base_dim * 2**stages
        x = nn.Dense(4 * 4 * width, kernel_init=_DENSE_INIT, dtype=self.dtype)(
            z.astype(self.dtype)
        )  # [B, 16 * width]
        x = nn.leaky_relu(x, self.leaky_slope)
        x = PixelNorm()(x.reshape(x.shape[0], 4, 4, width))  # [B, 4, 4, width]
        if embedding is not None:
            x = Modulate()(x, embedding)
        for _ in range(stages):
            width //= 2
            x = upsample_nearest_2x(x)  # [B, 2H, 2W, 2 * width]
            x = SNConv(
                width,
                (4, 4),
                n_power_iterations=self.sn_power_iterations,
                kernel_init=_CONV_INIT,
                dtype=self.dtype,
            )(x, update_stats=train)  # [B, 2H, 2W, width]
            x = PixelNorm()(x)
            if embedding is not None:
                x = Modulate()(x, embedding)  # this layer's scale and shift from the attributes
            x = nn.leaky_relu(x, self.leaky_slope)
        x = SNConv(
            self.channels,
            (4, 4),
            n_power_iterations=self.sn_power_iterations,
            kernel_init=_CONV_INIT,
            dtype=self.dtype,
        )(x, update_stats=train)  # [B, S, S, C]
        return jnp.tanh(x.astype(jnp.float32))


class Discriminator(nn.Module):
    """ACGAN discriminator: images [B, S, S, C] -> (logits [B], attr_logits [B, A] or None).

    The seed's network by default; the attribute-control options (issue 11) are
    fields, each off in the seed recipe:

    * `spectral_norm=False`: plain convs (the seed normalises every D conv).
    * `pool='sum'`: sum instead of average pooling of the last feature map, so
      small, localised features (a mouth) are not diluted by the area;
      `pool='flatten'`: the whole 4x4 map, which also keeps where a feature is
      (the library's attribute classifier needs this: with average pooling it
      stays at chance on Eyeglasses).
    * `attr_head='separate'`: the attribute logits come from their own plain-conv
      tower (no spectral norm, no minibatch-stddev) instead of the shared,
      spectrally normalised trunk.
    * `projection=True`: adds the projection term <embed(attributes), h> to the
      real/fake logit (Miyato & Koyama 2018; float multi-hot labels as in
      StyleGAN2-ADA), so D judges image *and* condition together.
    """

    image_size: int = 64
    num_attributes: int = 40
    base_dim: int = 128
    mbstd_group_size: int = 4
    sn_power_iterations: int = 1
    spectral_norm: bool = True
    pool: str = "mean"
    attr_head: str = "shared"
    projection: bool = False
    dtype: Dtype = jnp.float32

    def _conv(self, features: int, normalise: bool) -> nn.Module:
        if normalise:
            return SNConv(
                features,
                (3, 3),
                strides=(2, 2),
                n_power_iterations=self.sn_power_iterations,
                kernel_init=_CONV_INIT,
                dtype=self.dtype,
            )
        return nn.Conv(
            features,
            (3, 3),
            strides=(2, 2),
            padding="SAME",
            kernel_init=_CONV_INIT,
            dtype=self.dtype,
        )

    def _pool(self, x: jax.Array) -> jax.Array:
        x = x.astype(jnp.float32)
        if self.pool == "flatten":  # keeps where a feature is (glasses on the eyes)
            return x.reshape(x.shape[0], -1)  # [B, 4 * 4 * C]
        reduce = jnp.sum if self.pool == "sum" else jnp.mean
        return reduce(x, axis=(1, 2))  # [B, C]

    @nn.compact
    def __call__(
        self, images: jax.Array, attributes: jax.Array | None = None, *, train: bool
    ) -> tuple[jax.Array, jax.Array | None]:
        stages = num_stages(self.image_size)
        x = images.astype(self.dtype)
        for i in range(stages):
            conv = self._conv(self.base_dim * 2**i, self.spectral_norm)
            x = conv(x, update_stats=train) if self.spectral_norm else conv(x)
            x = nn.leaky_relu(x, D_LEAKY_SLOPE)  # [B, H/2, W/2, base_dim * 2**i]
            if i == 0:
                x = MinibatchStdDev(self.mbstd_group_size)(x)  # [B, H, W, base_dim + 1]
        features = self._pool(x)  # [B, 8 * base_dim]
        logits = nn.Dense(1, kernel_init=_DENSE_INIT, dtype=jnp.float32)(features)[:, 0]  # [B]
        if not self.num_attributes:
            return logits, None
        if self.projection:
            if attributes is None:
                raise ValueError("acgan discriminator with projection needs the attributes")
            embed = nn.Dense(
                features.shape[-1], use_bias=False, kernel_init=_DENSE_INIT, name="embed"
            )(attributes.astype(jnp.float32))  # [B, 8 * base_dim]
            logits = logits + jnp.sum(embed * features, axis=-1)  # [B]
        if self.attr_head == "separate":
            h = images.astype(self.dtype)
            for i in range(stages):
                h = nn.leaky_relu(self._conv(max(self.base_dim // 2, 8) * 2**i, False)(h), 0.2)
            head_in = self._pool(h)  # [B, 4 * base_dim]
        else:
            head_in = features
        # Unnamed, so the seed's parameter tree (Dense_0 logits, Dense_1 attributes) is kept.
        attr_logits = nn.Dense(self.num_attributes, kernel_init=_DENSE_INIT, dtype=jnp.float32)(
            head_in
        )  # [B, A]
        return logits, attr_logits


def default_config() -> ml_collections.ConfigDict:
    """The `config.model` fields the ACGAN family reads, with the seed's values (ACGAN-64)."""
    return ml_collections.ConfigDict(
        dict(
            name="acgan",
            z_dim=128,
            # Last hidden G width (Dense 16x, convs 8x..1x) and first D width (then 2x..8x).
            g_dim=64,
            d_dim=128,
            # Conditioning on the 40 CelebA attributes (multi-hot).
            num_attributes=40,
            # Generator LeakyReLU slope (D uses the seed's fixed 0.1, D_LEAKY_SLOPE).
            leaky_slope=0.2,
            # Spectral-norm power iterations per training step.
            sn_power_iterations=1,
            # How G is conditioned: 'input' (the seed: attributes concatenated to z) or
            # 'modulate' (also a mapping MLP of width `g_cond_dim` whose output sets a
            # scale and shift after every PixelNorm: conditional normalisation).
            g_cond="input",
            g_cond_dim=128,
            # Minibatch-stddev group size; must divide the per-device batch.
            mbstd_group_size=4,
            # Attribute-control options of the discriminator (see `Discriminator`);
            # the seed's values: SN convs, average pooling, a shared head, no projection.
            d_spectral_norm=True,
            d_pool="mean",  # 'mean', 'sum' or 'flatten'
            attr_head="shared",  # 'shared' or 'separate'
            projection=False,
        )
    )


def build(config: Any) -> tuple[nn.Module, nn.Module]:
    """Builds the ACGAN (generator, discriminator) pair from `config.model` / `config.data`.

    Args:
      config: the run config (reads data.image_size/channels, model.num_attributes,
        g_dim, d_dim, leaky_slope, sn_power_iterations, mbstd_group_size and
        train.mixed_precision).

    Returns:
      (generator, discriminator) Flax modules following facegan_jax.models' contract.
    """
    num_stages(config.data.image_size)  # fail early with the field name
    check_choice(config, "d_pool", ("mean", "sum", "flatten"))
    check_choice(config, "g_cond", ("input", "modulate"))
    check_choice(config, "attr_head", ("shared", "separate"))
    return build_pair(config, Generator, Discriminator)
