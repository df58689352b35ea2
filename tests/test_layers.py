"""Tests for facegan_jax/models/layers.py: spectral norm, pixel norm, minibatch stddev."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from facegan_jax.models.layers import (
    MinibatchStdDev,
    PixelNorm,
    SNConv,
    SNDense,
    conv_as_dot,
    minibatch_stddev,
    power_iteration,
    spectral_sigma,
)

# (layer, input shape): a Dense kernel [24, 16] and a conv kernel [3, 3, 8, 16] (matrix [72, 16]).
SN_CASES = {
    "dense": (lambda n: SNDense(16, n_power_iterations=n), (2, 24)),
    "conv": (lambda n: SNConv(16, (3, 3), strides=(2, 2), n_power_iterations=n), (2, 6, 6, 8)),
}


def _normal(seed: int, shape: tuple[int, ...]) -> jax.Array:
    # numpy draws: on XLA:CPU a 4-D jax.random draw takes seconds to compile.
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _largest_singular_value(kernel: np.ndarray) -> float:
    return float(np.linalg.svd(np.asarray(kernel).reshape(-1, kernel.shape[-1]))[1][0])


def _random_kernel_variables(make_layer, x_shape, n_power_iterations):
    """The layer, an input, and variables with a random N(0, 1) kernel (sigma far from 1)."""
    layer = make_layer(n_power_iterations)
    x = _normal(1, x_shape)
    shapes = jax.eval_shape(lambda: layer.init(jax.random.key(0), x, update_stats=False))
    kernel_shape = shapes["params"]["kernel"].shape
    u = _normal(3, (kernel_shape[-1],))
    params = {"kernel": _normal(2, kernel_shape), "bias": jnp.zeros(kernel_shape[-1])}
    return layer, x, {"params": params, "spectral": {"u": u / jnp.linalg.norm(u)}}


@pytest.mark.parametrize("case", sorted(SN_CASES))
def test_power_iteration_sigma_matches_numpy_svd(case):
    make_layer, x_shape = SN_CASES[case]
    layer, x, variables = _random_kernel_variables(make_layer, x_shape, n_power_iterations=200)
    kernel = variables["params"]["kernel"]
    sigma_before = float(spectral_sigma(kernel, variables["spectral"]["u"]))
    _, updated = layer.apply(variables, x, update_stats=True, mutable=["spectral"])
    sigma = float(spectral_sigma(kernel, updated["spectral"]["u"]))
    expected = _largest_singular_value(kernel)
    assert abs(sigma - expected) / expected < 1e-3, (sigma, expected)
    # The random start was a poor estimate: the iterations did the work.
    assert abs(sigma_before - expected) / expected > 1e-2


@pytest.mark.parametrize("case", sorted(SN_CASES))
def test_sn_layer_equals_plain_layer_with_kernel_over_sigma(case):
    make_layer, x_shape = SN_CASES[case]
    layer, x, variables = _random_kernel_variables(make_layer, x_shape, n_power_iterations=3)
    y, updated = layer.apply(variables, x, update_stats=True, mutable=["spectral"])
    kernel = variables["params"]["kernel"]
    sigma = spectral_sigma(kernel, updated["spectral"]["u"])
    plain = nn.Dense(16) if case == "dense" else nn.Conv(16, (3, 3), strides=(2, 2), padding="SAME")
    expected = plain.apply({"params": {"kernel": kernel / sigma, "bias": jnp.zeros(16)}}, x)
    assert y.shape == expected.shape
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(24, 16), (3, 3, 8, 16), (4, 4, 5, 3)])
def test_spectral_norm_normalised_kernel_has_unit_spectral_norm(shape):
    kernel = 3.0 * _normal(3, shape)
    u0 = jnp.ones((shape[-1],), jnp.float32) / np.sqrt(shape[-1])
    u = power_iteration(kernel, u0, 300)
    normalised = kernel / spectral_sigma(kernel, u)
    assert abs(_largest_singular_value(normalised) - 1.0) < 1e-3


def test_spectral_norm_eval_freezes_u_and_train_advances_it():
    layer = SNConv(8, (3, 3), n_power_iterations=1)
    x = _normal(4, (2, 6, 6, 4))
    variables = layer.init(jax.random.key(0), x, update_stats=False)
    u0 = np.asarray(variables["spectral"]["u"])
    out_eval, after_eval = layer.apply(variables, x, update_stats=False, mutable=["spectral"])
    np.testing.assert_array_equal(after_eval["spectral"]["u"], u0)
    _, after_train = layer.apply(variables, x, update_stats=True, mutable=["spectral"])
    assert np.abs(np.asarray(after_train["spectral"]["u"]) - u0).max() > 1e-3
    # Training call on an immutable collection: reads u, writes nothing, no error.
    out_frozen = layer.apply(variables, x, update_stats=True)
    # Same kernel; inference sums the products as one dot (conv_as_dot): equal to rounding.
    np.testing.assert_allclose(out_frozen, out_eval, rtol=1e-5, atol=1e-7)


def test_spectral_sigma_gradient_is_v_u_outer_product():
    w = _normal(5, (6, 4))
    u = _normal(6, (4,))
    u = u / jnp.linalg.norm(u)
    v = w @ u / jnp.linalg.norm(w @ u)
    grad = jax.grad(spectral_sigma)(w, u)
    np.testing.assert_allclose(grad, jnp.outer(v, u), rtol=1e-5, atol=1e-6)


def test_spectral_norm_rejects_zero_power_iterations():
    layer = SNDense(4, n_power_iterations=0)
    with pytest.raises(ValueError, match=r"config\.model\.sn_power_iterations=0"):
        layer.init(jax.random.key(0), jnp.ones((1, 3)), update_stats=False)


def test_pixel_norm_gives_unit_rms_per_pixel():
    scales = jnp.array([0.1, 1.0, 50.0])[:, None, None, None]
    x = scales * _normal(0, (3, 4, 5, 16))  # [B, H, W, C]
    y = np.asarray(PixelNorm().apply({}, x))
    rms = np.sqrt(np.mean(np.square(y), axis=-1))
    np.testing.assert_allclose(rms, 1.0, rtol=1e-4)
    xn = np.asarray(x, np.float64)
    expected = xn / np.sqrt(np.mean(xn**2, axis=-1, keepdims=True) + 1e-8)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    assert PixelNorm().apply({}, x.astype(jnp.bfloat16)).dtype == jnp.bfloat16


def _numpy_mbstd(x: np.ndarray, group: int) -> np.ndarray:
    """Direct per-example computation: example n's group is {n % M + k M}, M = B / group."""
    batch = x.shape[0]
    m = batch // group
    out = np.empty(batch)
    for n in range(batch):
        members = x[[n % m + k * m for k in range(group)]].astype(np.float64)  # [G, H, W, C]
        std = np.sqrt(members.var(axis=0) + 1e-8)  # biased variance, eps inside the sqrt
        out[n] = std.mean()
    return out


@pytest.mark.parametrize("batch,group", [(8, 4), (8, 2), (6, 3), (4, 4)])
def test_minibatch_stddev_matches_numpy_grouping(batch, group):
    # Distinct scale per example, so a wrong group/batch axis order gives different numbers.
    scale = np.arange(1, batch + 1, dtype=np.float32)[:, None, None, None]
    x = scale * np.asarray(_normal(0, (batch, 3, 3, 5)))
    y = MinibatchStdDev(group_size=group).apply({}, jnp.asarray(x))
    assert y.shape == (batch, 3, 3, 6)
    np.testing.assert_array_equal(y[..., :5], x)
    expected = _numpy_mbstd(x, group)
    np.testing.assert_allclose(y[..., 5], expected[:, None, None] * np.ones((1, 3, 3)), rtol=1e-5)
    # Not the contiguous-group reading (examples n // G): the test can tell them apart.
    contiguous = np.repeat(
        [np.sqrt(x[i : i + group].var(0) + 1e-8).mean() for i in range(0, batch, group)], group
    )
    if group < batch:
        assert not np.allclose(expected, contiguous, rtol=1e-3)


def test_minibatch_stddev_group_at_least_batch_is_whole_batch_statistic():
    x = _normal(1, (6, 4, 4, 3))
    # The seed's / Keras peer's formula: one scalar over the whole batch.
    whole = jnp.mean(jnp.sqrt(jnp.mean(jnp.square(x - x.mean(0)), axis=0) + 1e-8))
    np.testing.assert_allclose(minibatch_stddev(x, group_size=64), jnp.full((6,), whole), rtol=1e-6)


def test_minibatch_stddev_rejects_batch_not_divisible_by_group():
    with pytest.raises(ValueError, match=r"config\.model\.mbstd_group_size=4 .* batch of 6"):
        MinibatchStdDev(group_size=4).apply({}, jnp.ones((6, 2, 2, 3)))


@pytest.mark.parametrize(
    "shape,kernel,strides,padding",
    [
        ((2, 9, 9, 5), (3, 3), (1, 1), "SAME"),
        ((2, 8, 8, 4), (4, 4), (2, 2), "SAME"),
        ((1, 7, 6, 3), (3, 2), (2, 1), "VALID"),
        ((2, 8, 8, 6), (4, 4), (2, 2), ((1, 1), (1, 1))),
    ],
)
def test_conv_as_dot_equals_the_convolution(shape, kernel, strides, padding):
    kx, kk = jax.random.split(jax.random.PRNGKey(0))
    x = jax.random.normal(kx, shape)
    w = jax.random.normal(kk, (*kernel, shape[-1], 7))
    want = jax.lax.conv_general_dilated(
        x,
        w,
        strides,
        padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=jax.lax.Precision.HIGHEST,
    )
    got = conv_as_dot(x, w, strides, padding)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
