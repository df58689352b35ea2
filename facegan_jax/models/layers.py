"""Normalisation layers we own: spectral norm (Dense and Conv), pixel norm, minibatch stddev.

* `SNDense`, `SNConv` and the kernel-level `SpectralNorm`: weights divided by
  a power-iteration estimate of their largest singular value (Miyato et al.
  2018). The left singular vector estimate `u` lives in the ``'spectral'``
  variable collection (next to, not inside, ``'params'``) so the optimiser
  never sees it and the checkpoint keeps it. It advances only when the layer
  is called with ``update_stats=True`` *and* ``'spectral'`` is mutable; in
  evaluation it is read, never written.
* `PixelNorm`: each pixel's feature vector scaled to unit RMS (ProGAN).
* `MinibatchStdDev`: appends the group-averaged standard deviation as one
  extra channel (ProGAN / StyleGAN).
* `AttributeEmbedding` and `Modulate`: conditional normalisation (BigGAN's
  conditional BatchNorm, StyleGAN2-ADA's label embedding): the attributes are
  mapped once, and every generator layer takes its scale and shift from them.

All statistics are computed in float32 whatever the computation dtype, so the
layers behave the same under bfloat16 mixed precision.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Dtype = Any
Initializer = Any

# Name of the variable collection holding the power-iteration vectors.
SPECTRAL_COLLECTION = "spectral"


def _l2_normalize(x: jax.Array, eps: float) -> jax.Array:
    # x / max(||x||, eps), as torch.nn.functional.normalize: no NaN for a zero vector.
    return x / jnp.maximum(jnp.linalg.norm(x), eps)


def _as_matrix(kernel: jax.Array) -> jax.Array:
    """Kernel [..., out] -> float32 matrix [prod(...), out] (conv: [kh*kw*cin, cout])."""
    return kernel.reshape(-1, kernel.shape[-1]).astype(jnp.float32)


def power_iteration(
    kernel: jax.Array, u: jax.Array, n_iterations: int, eps: float = 1e-12
) -> jax.Array:
    """Advances the singular-vector estimate `u` by `n_iterations` power iterations.

    Args:
      kernel: Dense kernel [in, out] or conv kernel [kh, kw, cin, out].
      u: current estimate of the top right singular vector of the kernel matrix, [out].
      n_iterations: number of (v <- W u, u <- W^T v) rounds.
      eps: norm floor of the normalisation.

    Returns:
      The new unit vector u, [out], float32, with no gradient.
    """
    w = lax.stop_gradient(_as_matrix(kernel))  # [in, out]

    def one_round(_: int, u: jax.Array) -> jax.Array:
        v = _l2_normalize(w @ u, eps)  # [in]
        return _l2_normalize(w.T @ v, eps)  # [out]

    return lax.fori_loop(0, n_iterations, one_round, u.astype(jnp.float32))


def spectral_sigma(kernel: jax.Array, u: jax.Array, eps: float = 1e-12) -> jax.Array:
    """The spectral-norm estimate the layers divide by: v^T W u with v = normalise(W u).

    Differentiable in `kernel` (d sigma / dW = v u^T, the standard SN gradient);
    `u` and `v` carry no gradient. Also the accessor for tests and logging:
    ``spectral_sigma(params[name]['kernel'], spectral[name]['u'])``.

    Args:
      kernel: Dense [in, out] or conv [kh, kw, cin, out] kernel.
      u: the layer's stored vector, [out].
      eps: norm floor of the normalisation.

    Returns:
      Scalar float32 sigma.
    """
    w = _as_matrix(kernel)  # [in, out]
    u = lax.stop_gradient(u.astype(jnp.float32))  # [out]
    v = lax.stop_gradient(_l2_normalize(w @ u, eps))  # [in]
    return v @ (w @ u)


def _spectral_normalize(
    module: nn.Module,
    kernel: jax.Array,
    *,
    n_power_iterations: int,
    update_stats: bool,
    eps: float,
) -> jax.Array:
    """Declares `module`'s 'spectral'/'u' variable and returns kernel / sigma (float32)."""
    if n_power_iterations < 1:
        raise ValueError(
            f"config.model.sn_power_iterations={n_power_iterations} must be >= 1 "
            f"({module.__class__.__name__})"
        )
    out = kernel.shape[-1]

    def init_u() -> jax.Array:
        # Only evaluated when the variable is created, so apply() needs no 'params' rng.
        u0 = jax.random.normal(module.make_rng("params"), (out,), jnp.float32)
        return _l2_normalize(u0, eps)

    u_var = module.variable(SPECTRAL_COLLECTION, "u", init_u)
    u = u_var.value
    if update_stats and module.is_mutable_collection(SPECTRAL_COLLECTION):
        u = power_iteration(kernel, u, n_power_iterations, eps)
        u_var.value = u
    sigma = spectral_sigma(kernel, u, eps)
    return kernel.astype(jnp.float32) / sigma


class SNDense(nn.Module):
    """Dense layer with a spectrally normalised kernel.

    Variables: ``params/{kernel [in, out], bias [out]}`` and ``spectral/u [out]``.
    """

    features: int
    use_bias: bool = True
    n_power_iterations: int = 1
    eps: float = 1e-12
    kernel_init: Initializer = nn.initializers.lecun_normal()
    bias_init: Initializer = nn.initializers.zeros_init()
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, update_stats: bool) -> jax.Array:
        """x [..., in] -> [..., features] in `dtype`."""
        kernel = self.param(
            "kernel", self.kernel_init, (x.shape[-1], self.features), self.param_dtype
        )  # [in, out]
        kernel = _spectral_normalize(
            self,
            kernel,
            n_power_iterations=self.n_power_iterations,
            update_stats=update_stats,
            eps=self.eps,
        )
        y = x.astype(self.dtype) @ kernel.astype(self.dtype)  # [..., out]
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            y = y + bias.astype(self.dtype)
        return y


def conv_as_dot(x: jax.Array, kernel: jax.Array, strides: Sequence[int], padding: Any) -> jax.Array:
    """`lax.conv_general_dilated` (NHWC, HWIO) as exact patch extraction and one `dot`.

    Equal to the convolution to float rounding. The patches are gathered by a
    convolution with a 0/1 kernel, which is exact in any summation order, and
    the products summed by a matrix product, whose result XLA:CPU computes the
    same way whatever the client's device count; its direct convolution kernels
    do not (some shapes differ in the last bits between 1, 2 and 8 CPU devices).
    Used by generators in inference, so a seed's image is the same on any device count.
    """
    kh, kw, cin, cout = kernel.shape
    patches = lax.conv_general_dilated_patches(
        x,
        (kh, kw),
        tuple(strides),
        padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=lax.Precision.HIGHEST,
    )  # [B, H', W', cin * kh * kw], feature order (cin, kh, kw)
    w = jnp.transpose(kernel, (2, 0, 1, 3)).reshape(cin * kh * kw, cout)
    return jnp.dot(patches, w)


class SNConv(nn.Module):
    """2-D convolution (NHWC, HWIO kernel) with a spectrally normalised kernel.

    The kernel is normalised as the matrix [kh*kw*cin, cout]. `padding` is
    'SAME' (Keras 'same', also for even kernels and strides: the extra pad goes
    after, as in TensorFlow), 'VALID', or explicit ((lo, hi), (lo, hi)) pairs.
    Variables: ``params/{kernel, bias}`` and ``spectral/u [cout]``.
    """

    features: int
    kernel_size: Sequence[int] = (3, 3)
    strides: Sequence[int] = (1, 1)
    padding: str | Sequence[tuple[int, int]] = "SAME"
    use_bias: bool = True
    n_power_iterations: int = 1
    eps: float = 1e-12
    kernel_init: Initializer = nn.initializers.lecun_normal()
    bias_init: Initializer = nn.initializers.zeros_init()
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, update_stats: bool) -> jax.Array:
        """x [B, H, W, cin] -> [B, H', W', features] in `dtype`."""
        kh, kw = self.kernel_size
        kernel = self.param(
            "kernel", self.kernel_init, (kh, kw, x.shape[-1], self.features), self.param_dtype
        )  # [kh, kw, cin, cout]
        kernel = _spectral_normalize(
            self,
            kernel,
            n_power_iterations=self.n_power_iterations,
            update_stats=update_stats,
            eps=self.eps,
        )
        padding = self.padding if isinstance(self.padding, str) else tuple(self.padding)
        if update_stats:
            y = lax.conv_general_dilated(
                x.astype(self.dtype),
                kernel.astype(self.dtype),
                window_strides=tuple(self.strides),
                padding=padding,
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
            )  # [B, H', W', cout]
        else:
            y = conv_as_dot(x.astype(self.dtype), kernel.astype(self.dtype), self.strides, padding)
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            y = y + bias.astype(self.dtype)
        return y


class PixelNorm(nn.Module):
    """Scales each pixel's feature vector to unit RMS: x / sqrt(mean_c(x^2) + eps)."""

    eps: float = 1e-8

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x [..., C] -> same shape and dtype."""
        x32 = x.astype(jnp.float32)
        scale = lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)  # [..., 1]
        return (x32 * scale).astype(x.dtype)


def minibatch_stddev(x: jax.Array, group_size: int, eps: float = 1e-8) -> jax.Array:
    """The per-example minibatch-stddev feature (StyleGAN's grouping).

    The batch is split into groups of G = min(group_size, B) examples. As in
    StyleGAN's ``reshape([G, -1, ...])`` the *group member* index is the slow
    axis, so example n belongs to group n % (B / G): groups are strided
    through the batch (examples n, n + B/G, n + 2B/G, ...). For each group:
    std over its members (biased, with eps inside the sqrt) per (h, w, c), then
    the mean over (h, w, c): one scalar per group, given to each member.

    Args:
      x: features [B, H, W, C].
      group_size: requested group size (`config.model.mbstd_group_size`).
      eps: added to the variance before the square root.

    Returns:
      float32 [B] statistic, one value per example.

    Raises:
      ValueError: if B is not a multiple of min(group_size, B).
    """
    batch = x.shape[0]
    if group_size < 1:
        raise ValueError(f"config.model.mbstd_group_size={group_size} must be >= 1")
    g = min(group_size, batch)
    if batch % g:
        raise ValueError(
            f"config.model.mbstd_group_size={group_size} does not divide the batch of {batch} "
            "seen by MinibatchStdDev (each D call's batch must be a multiple of it)"
        )
    y = x.astype(jnp.float32).reshape(g, batch // g, *x.shape[1:])  # [G, M, H, W, C]
    y = y - jnp.mean(y, axis=0, keepdims=True)  # [G, M, H, W, C]
    std = jnp.sqrt(jnp.mean(jnp.square(y), axis=0) + eps)  # [M, H, W, C]
    per_group = jnp.mean(std, axis=(1, 2, 3))  # [M]
    return jnp.tile(per_group, g)  # [B]: example n gets group n % M


class MinibatchStdDev(nn.Module):
    """Appends the group-averaged stddev (see `minibatch_stddev`) as one channel.

    With `group_size` >= batch the whole batch is one group, which is the
    seed's / Keras peer's whole-batch statistic.

    Attributes:
      group_size: `config.model.mbstd_group_size`; must divide the batch.
      eps: added to the variance before the square root.
    """

    group_size: int = 4
    eps: float = 1e-8

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x [B, H, W, C] -> [B, H, W, C + 1] in x's dtype."""
        stat = minibatch_stddev(x, self.group_size, self.eps).astype(x.dtype)  # [B]
        feat = jnp.broadcast_to(stat[:, None, None, None], (*x.shape[:3], 1))  # [B, H, W, 1]
        return jnp.concatenate([x, feat], axis=-1)


class AttributeEmbedding(nn.Module):
    """The mapping MLP of conditional normalisation: attributes [B, A] -> embedding [B, E].

    As BigGAN's conditional BatchNorm and StyleGAN2-ADA's label embedding: the
    multi-hot attributes are mapped once; every G layer then takes its own scale and
    shift from the embedding (`Modulate`).
    """

    embed_dim: int = 128
    leaky_slope: float = 0.2

    @nn.compact
    def __call__(self, attributes: jax.Array) -> jax.Array:
        e = attributes.astype(jnp.float32)  # [B, A]
        for _ in range(2):
            e = nn.leaky_relu(
                nn.Dense(self.embed_dim, kernel_init=nn.initializers.xavier_uniform())(e),
                self.leaky_slope,
            )
        return e  # [B, E]


class Modulate(nn.Module):
    """`x * (1 + gamma(e)) + beta(e)` for a normalised map x [B, H, W, C] and embedding e [B, E].

    `gamma` and `beta` come from one zero-initialised Dense, so training starts from
    the unconditioned layer.
    """

    @nn.compact
    def __call__(self, x: jax.Array, e: jax.Array) -> jax.Array:
        gb = nn.Dense(2 * x.shape[-1], kernel_init=nn.initializers.zeros)(e)  # [B, 2C]
        gamma, beta = jnp.split(gb[:, None, None, :].astype(x.dtype), 2, axis=-1)
        return x * (1 + gamma) + beta


def condition_latent(
    z: jax.Array,
    attributes: jax.Array | None,
    num_attributes: int,
    *,
    cond: str,
    cond_dim: int,
    leaky_slope: float,
    family: str,
) -> tuple[jax.Array, jax.Array | None]:
    """A conditional generator's input: (z with the attributes appended, embedding or None).

    Call it inside a compact method (the embedding MLP becomes the caller's
    submodule). `cond='modulate'` also returns the `AttributeEmbedding` of the
    attributes, from which each layer's `Modulate` takes its scale and shift.

    Raises:
      ValueError: attributes missing or not [B, num_attributes].
    """
    if not num_attributes:
        return z, None
    if attributes is None or attributes.shape != (z.shape[0], num_attributes):
        got = None if attributes is None else attributes.shape
        raise ValueError(
            f"{family} generator needs attributes of shape {(z.shape[0], num_attributes)}"
            f" (config.model.num_attributes={num_attributes}); got {got}"
        )
    embedding = None
    if cond == "modulate":
        embedding = AttributeEmbedding(cond_dim, leaky_slope)(attributes)  # [B, E]
    return jnp.concatenate([z, attributes.astype(z.dtype)], axis=-1), embedding  # [B, Z + A]
