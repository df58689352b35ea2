"""DCGAN generator and discriminator (seeds 001 and 002), plain and "improved".

Owns the DCGAN family of the model registry (`config.model.name = 'dcgan'`):

* Generator: z -> ConvTranspose k4 (1x1 -> 4x4) -> BN -> act, then stride-2
  ConvTranspose k4 + BN + act doubling the resolution up to `image_size / 2`,
  and a last stride-2 ConvTranspose to `channels` with tanh. `act` is ReLU
  (DCGAN) or LeakyReLU (the improved DCGAN of seed 001).
* Discriminator: stride-2 Conv k4 + act (no BN on the first layer, as in the
  DCGAN paper), then stride-2 Conv k4 + BN + act down to 4x4; `act` is
  LeakyReLU(0.2) in every seed (`d_activation`),
  optional Dropout after each block (improved DCGAN), and a 4x4 valid conv to
  one logit. The seeds end D with a sigmoid + BCELoss; we return the logit and
  the losses use log-sigmoid, which is the same maths without the overflow.
  With `d_spectral_norm` every D conv is spectrally normalised (SNGAN's
  "standard CNN" discriminator, Miyato et al. 2018) and D has no BatchNorm
  (SN bounds each layer's Lipschitz constant, which a BatchNorm after it would
  undo); the stride-2 convs keep the fast formulation.

Widths follow the seeds: the last G layer / first D layer has `g_dim` / `d_dim`
channels and each resolution step doubles it (64x64 with 64: 512-256-128-64,
the PyTorch DCGAN; 32x32 with 32: 128-64-32, seed 002's conv_dim 32).
All weights are N(0, 0.02); BN scales N(1, 0.02) as in the DCGAN paper.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from facegan_jax.models import build_pair, check_choice, layers

Dtype = Any
_INIT = nn.initializers.normal(stddev=0.02)


def _bn_scale_init(key: jax.Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> jax.Array:
    return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


def activation(name: str, slope: float = 0.2):
    """Returns the activation function named by `config.model.*_activation`."""
    if name == "relu":
        return nn.relu
    if name == "leaky_relu":
        return lambda x: nn.leaky_relu(x, negative_slope=slope)
    if name == "selu":
        return nn.selu
    raise ValueError(f"unknown activation {name!r} (config.model.g_activation / d_activation)")


def num_resolution_steps(image_size: int) -> int:
    """Number of x2 steps between 4x4 and `image_size` (which must be 4 * 2**k, k >= 1)."""
    steps = math.log2(image_size / 4) if image_size >= 8 else -1
    if steps != int(steps) or steps < 1:
        raise ValueError(
            f"config.data.image_size={image_size} must be 4 * 2**k (8, 16, 32, 64, ...)"
        )
    return int(steps)


def _batch_norm(train: bool, dtype: Dtype) -> nn.BatchNorm:
    # momentum 0.9 == PyTorch's BatchNorm momentum 0.1; eps 1e-5 like PyTorch.
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        dtype=dtype,
        scale_init=_bn_scale_init,
    )


def conv_transpose_2x(
    features: int, *, fast: bool, kernel_init: Any, dtype: Dtype, use_bias: bool = False
) -> nn.Module:
    """A k4 s2 transposed conv doubling H and W (PyTorch `ConvTranspose2d(k=4, s=2, p=1)`).

    With `fast`, the sub-pixel formulation from `fast_conv` (same parameters and
    maths, stride-1 convs only) replaces Flax's lhs-dilated transposed conv,
    whose weight gradient is pathologically slow on XLA:CPU.
    """
    if fast:
        from facegan_jax.models.fast_conv import FastConvTranspose2x

        return FastConvTranspose2x(
            features, use_bias=use_bias, kernel_init=kernel_init, dtype=dtype
        )
    return nn.ConvTranspose(
        features,
        (4, 4),
        strides=(2, 2),
        padding=((2, 2), (2, 2)),
        use_bias=use_bias,
        kernel_init=kernel_init,
        dtype=dtype,
    )


def conv_stride_2(
    features: int, *, fast: bool, kernel_init: Any, dtype: Dtype, use_bias: bool = False
) -> nn.Module:
    """A k4 s2 p1 conv halving H and W (PyTorch `Conv2d(k=4, s=2, p=1)`).

    See `conv_transpose_2x` for `fast`.
    """
    if fast:
        from facegan_jax.models.fast_conv import FastConvStride2

        return FastConvStride2(features, use_bias=use_bias, kernel_init=kernel_init, dtype=dtype)
    return nn.Conv(
        features,
        (4, 4),
        strides=(2, 2),
        padding=((1, 1), (1, 1)),
        use_bias=use_bias,
        kernel_init=kernel_init,
        dtype=dtype,
    )


class SNConvStride2(nn.Module):
    """`conv_stride_2` with a spectrally normalised kernel: `layers.SNConv`'s maths.

    The kernel ``[4, 4, cin, features]`` is divided by `layers.spectral_sigma`,
    its vector ``u`` (``'spectral'`` collection) advanced by one power iteration
    when `update_stats` and the collection is mutable, exactly as `layers.SNConv`
    does; the convolution itself is `fast_conv.conv_stride2` (or the plain
    strided conv), whose input gradient XLA:CPU runs faster than SNConv's.
    """

    features: int
    fast: bool = True
    kernel_init: Any = _INIT
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, update_stats: bool) -> jax.Array:
        """x [B, H, W, cin] -> [B, H/2, W/2, features]."""
        kernel = self.param(
            "kernel", self.kernel_init, (4, 4, x.shape[-1], self.features), jnp.float32
        )  # [4, 4, cin, features]
        u_var = self.variable(
            layers.SPECTRAL_COLLECTION,
            "u",
            lambda: _unit(jax.random.normal(self.make_rng("params"), (self.features,))),
        )
        u = u_var.value
        if update_stats and self.is_mutable_collection(layers.SPECTRAL_COLLECTION):
            u = layers.power_iteration(kernel, u, 1)
            u_var.value = u
        kernel = (kernel / layers.spectral_sigma(kernel, u)).astype(self.dtype)
        x = x.astype(self.dtype)
        if self.fast:
            from facegan_jax.models.fast_conv import conv_stride2

            return conv_stride2(x, kernel)
        return jax.lax.conv_general_dilated(
            x, kernel, (2, 2), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
        )


def _unit(v: jax.Array) -> jax.Array:
    return v / jnp.maximum(jnp.linalg.norm(v), 1e-12)


def upsample_to_image(
    x: jax.Array,
    stages: int,
    *,
    channels: int,
    act: Callable[[jax.Array], jax.Array],
    norm: Callable[[], nn.Module],
    fast: bool,
    kernel_init: Any,
    dtype: Dtype,
) -> jax.Array:
    """The DCGAN-style generator tail, shared by the DCGAN and HR-DCGAN families.

    `stages` x [k4 s2 transposed conv halving the width, `norm()`, `act`], then a
    k4 s2 transposed conv to `channels` and tanh. Call it inside a compact method:
    the layers become the caller's submodules (same names as if written inline).

    Args:
      x: features ``[B, H, W, width]``.
      stages: hidden upsampling stages before the output layer.
      channels: image channels.
      act: activation after each normalisation.
      norm: makes the normalisation layer of one stage (e.g. a BatchNorm).
      fast: use `fast_conv`'s formulation (see `conv_transpose_2x`).
      kernel_init: conv kernel initialiser.
      dtype: compute dtype.

    Returns:
      images ``[B, H * 2**(stages + 1), W * 2**(stages + 1), channels]`` in [-1, 1], float32.
    """
    width = x.shape[-1]
    for _ in range(stages):
        width //= 2
        x = conv_transpose_2x(width, fast=fast, kernel_init=kernel_init, dtype=dtype)(
            x
        )  # [B, 2H, 2W, width]
        x = act(norm()(x))
    x = conv_transpose_2x(channels, fast=fast, kernel_init=kernel_init, dtype=dtype)(
        x
    )  # [B, S, S, C]
    return jnp.tanh(x.astype(jnp.float32))


class Generator(nn.Module):
    """DCGAN generator: z [B, z_dim] -> images [B, S, S, C] in [-1, 1]."""

    image_size: int = 64
    channels: int = 3
    base_dim: int = 64
    act: str = "relu"
    leaky_slope: float = 0.2
    fast_convs: bool = True
    num_attributes: int = 0
    cond: str = "input"
    cond_dim: int = 128
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, z: jax.Array, attributes: jax.Array | None = None, *, train: bool
    ) -> jax.Array:
        steps = num_resolution_steps(self.image_size)
        act = activation(self.act, self.leaky_slope)
        width = self.base_dim * 2 ** (steps - 1)
        z, embedding = layers.condition_latent(
            z,
            attributes,
            self.num_attributes,
            cond=self.cond,
            cond_dim=self.cond_dim,
            leaky_slope=self.leaky_slope,
            family="conditional dcgan",
        )  # [B, Z + A], the conditional-normalisation embedding or None

        def norm() -> Callable[[jax.Array], jax.Array]:
            bn = _batch_norm(train, self.dtype)
            if embedding is None:
                return bn
            modulate = layers.Modulate()
            return lambda x: modulate(bn(x), embedding)  # conditional BatchNorm

        x = Project4x4(width, dtype=self.dtype, name="ConvTranspose_0")(z)  # [B, 4, 4, width]
        x = act(norm()(x))
        return upsample_to_image(
            x,
            steps - 1,
            channels=self.channels,
            act=act,
            norm=norm,
            fast=self.fast_convs,
            kernel_init=_INIT,
            dtype=self.dtype,
        )


class Project4x4(nn.Module):
    """z [B, Z] -> [B, 4, 4, F]: the generator's first layer, a matrix product.

    Equal (to float rounding) to PyTorch's `ConvTranspose2d(Z, F, 4, 1, 0)` on a
    1x1 input, i.e. `nn.ConvTranspose(F, (4, 4), padding='VALID', use_bias=False)`
    on `z[:, None, None, :]`, with the same parameter (`kernel` [4, 4, Z, F]), so
    checkpoints of either load into the other. Written as one `dot` because XLA:CPU
    runs that degenerate convolution (a 1x1 input dilated and padded to 7x7) through
    a kernel whose last bits depend on the client's device count: the same seed gave
    a different PNG on 1 and 8 CPU devices. Its dot is also ~10x faster.
    """

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        kernel = self.param("kernel", _INIT, (4, 4, z.shape[-1], self.features), jnp.float32)
        k = kernel[::-1, ::-1].astype(self.dtype)  # a transposed conv flips the kernel
        w = jnp.transpose(k, (2, 0, 1, 3)).reshape(z.shape[-1], 16 * self.features)
        x = jnp.dot(z.astype(self.dtype), w)  # [B, 16 F]
        return x.reshape(z.shape[0], 4, 4, self.features)


class Discriminator(nn.Module):
    """DCGAN discriminator: images [B, S, S, C] (, attributes) -> (logits [B], attr_logits).

    Unconditional (`num_attributes=0`): `attr_logits` is None. Conditional: the 4x4
    feature map `h` also feeds a 40-way attribute head (ACGAN; `attr_head='shared'`
    reads `h`, 'separate' a plain conv tower of its own at half the width), and with
    `projection` the real/fake logit adds <embed(attributes), h> (Miyato & Koyama
    2018): D judges image and condition together, the aux head the attribute itself.
    """

    image_size: int = 64
    base_dim: int = 64
    act: str = "leaky_relu"
    leaky_slope: float = 0.2
    dropout: float = 0.0
    fast_convs: bool = True
    spectral_norm: bool = False
    num_attributes: int = 0
    projection: bool = False
    attr_head: str = "shared"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, images: jax.Array, attributes: jax.Array | None = None, *, train: bool
    ) -> tuple[jax.Array, jax.Array | None]:
        steps = num_resolution_steps(self.image_size)
        act = activation(self.act, self.leaky_slope)
        x = images.astype(self.dtype)
        width = self.base_dim
        for i in range(steps):
            if self.spectral_norm:
                x = SNConvStride2(width, fast=self.fast_convs, dtype=self.dtype)(
                    x, update_stats=train
                )  # [B, H/2, W/2, width]
            else:
                x = conv_stride_2(width, fast=self.fast_convs, kernel_init=_INIT, dtype=self.dtype)(
                    x
                )  # [B, H/2, W/2, width]
                if i > 0:
                    x = _batch_norm(train, self.dtype)(x)
            x = act(x)
            if self.dropout > 0:
                x = nn.Dropout(self.dropout, deterministic=not train)(x)
            width *= 2
        if self.spectral_norm:
            out = layers.SNConv(
                1, (4, 4), padding="VALID", use_bias=False, kernel_init=_INIT, dtype=self.dtype
            )(x, update_stats=train)  # [B, 1, 1, 1]
        else:
            out = nn.Conv(
                1, (4, 4), padding="VALID", use_bias=False, kernel_init=_INIT, dtype=self.dtype
            )(x)  # [B, 1, 1, 1]
        logits = out.reshape(out.shape[0]).astype(jnp.float32)  # [B]
        if not self.num_attributes:
            return logits, None
        features = x.reshape(x.shape[0], -1).astype(jnp.float32)  # [B, 4 * 4 * C]
        if self.projection:
            if attributes is None:
                raise ValueError("conditional dcgan discriminator with projection needs attributes")
            embed = nn.Dense(features.shape[-1], use_bias=False, kernel_init=_INIT, name="embed")(
                attributes.astype(jnp.float32)
            )  # [B, 4 * 4 * C]
            logits = logits + jnp.sum(embed * features, axis=-1)
        if self.attr_head == "separate":
            h = images.astype(self.dtype)
            width = max(self.base_dim // 2, 8)
            for _ in range(steps):
                h = conv_stride_2(width, fast=self.fast_convs, kernel_init=_INIT, dtype=self.dtype)(
                    h
                )
                h = nn.leaky_relu(h, 0.2)  # [B, H/2, W/2, width]
                width *= 2
            features = h.reshape(h.shape[0], -1).astype(jnp.float32)
        attr_logits = nn.Dense(self.num_attributes, kernel_init=_INIT, name="attr_head")(features)
        return logits, attr_logits  # [B], [B, A]


def default_config() -> ml_collections.ConfigDict:
    """The `config.model` fields the DCGAN family reads, with their defaults (the 32x32 demo)."""
    return ml_collections.ConfigDict(
        dict(
            name="dcgan",
            z_dim=100,
            # Width of the last G layer / first D layer; each resolution step doubles it
            # (seed 002's conv_dim 32, the PyTorch DCGAN's 64).
            g_dim=32,
            d_dim=32,
            # 0: unconditional; 40: conditioned on the CelebA attributes (multi-hot),
            # with the conditioning options below.
            num_attributes=0,
            # G conditioning: 'input' (attributes concatenated to z) or 'modulate' (also
            # conditional BatchNorm: a mapping MLP of width g_cond_dim sets a per-layer
            # scale and shift after every BatchNorm).
            g_cond="input",
            g_cond_dim=128,
            # D conditioning: the projection term on the real/fake logit, and where the
            # attribute head reads from ('shared' 4x4 map, or a 'separate' conv tower).
            projection=False,
            attr_head="shared",
            # Hidden activations: 'relu' (DCGAN G), 'leaky_relu' (D; improved DCGAN G), 'selu'.
            g_activation="relu",
            d_activation="leaky_relu",
            leaky_slope=0.2,
            # Dropout after each D block (improved DCGAN); 0 disables.
            d_dropout=0.0,
            # Spectral norm on every D conv, and no BatchNorm in D (SNGAN's standard CNN D).
            d_spectral_norm=False,
            # Exact fast formulations of the k4 s2 (transposed) convs (models/fast_conv.py).
            fast_convs=True,
        )
    )


def build(config: Any) -> tuple[nn.Module, nn.Module]:
    """Builds the DCGAN (generator, discriminator) pair from `config.model` / `config.data`."""
    m = config.model
    if m.num_attributes not in (0, 40):
        raise ValueError(f"config.model.num_attributes={m.num_attributes} must be 0 or 40")
    check_choice(config, "g_cond", ("input", "modulate"))
    check_choice(config, "attr_head", ("shared", "separate"))
    return build_pair(config, Generator, Discriminator)
