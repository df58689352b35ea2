"""Tests that the fast stride-2 layers compute exactly what the plain Flax layers compute.

Forward values, gradients w.r.t. the input, kernel and bias, and the parameter
trees (shapes and initial values from the same key) must match the plain
``nn.ConvTranspose`` / ``nn.Conv`` they replace.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from facegan_jax.models import fast_conv
from facegan_jax.models.fast_conv import FastConvStride2, FastConvTranspose2x

RTOL, ATOL = 1e-4, 1e-5


@pytest.fixture(autouse=True, scope="module")
def _fast_compiles():
    """Skips XLA's optimisation passes: ~5x faster compiles, same arithmetic; restored after."""
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


def _plain_and_fast(kind: str, features: int, use_bias: bool, **kw) -> tuple[nn.Module, nn.Module]:
    """The plain Flax layer and its fast replacement with the same constructor arguments."""
    if kind == "transpose":
        plain = nn.ConvTranspose(
            features, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)), use_bias=use_bias, **kw
        )
        return plain, FastConvTranspose2x(features, use_bias=use_bias, **kw)
    plain = nn.Conv(
        features, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)), use_bias=use_bias, **kw
    )
    return plain, FastConvStride2(features, use_bias=use_bias, **kw)


def _out_shape(kind: str, shape: tuple[int, ...], features: int) -> tuple[int, ...]:
    """Output shape of the layer: spatial x2 for the transpose, /2 for the strided conv."""
    B, H, W, _ = shape
    if kind == "transpose":
        return (B, 2 * H, 2 * W, features)
    return (B, H // 2, W // 2, features)


# (kind, input shape [B, H, W, Cin], features, use_bias): odd channels, batch 1, non-square.
CASES = [
    ("transpose", (1, 1, 1, 3), 5, False),
    ("transpose", (2, 3, 5, 7), 3, True),
    ("transpose", (1, 4, 4, 16), 8, False),
    ("transpose", (3, 2, 6, 1), 1, True),
    ("transpose", (2, 3, 2, 5), 17, True),  # wide layer: the phase formulation
    ("transpose", (2, 6, 8, 5), 17, True),  # wide and > 4 high: space-to-depth on AVX-512
    ("stride2", (1, 2, 2, 3), 5, False),
    ("stride2", (2, 6, 4, 7), 3, True),
    ("stride2", (1, 8, 8, 16), 8, False),
    ("stride2", (3, 4, 10, 1), 1, True),
    ("stride2", (2, 6, 6, 5), 17, False),
]


@pytest.fixture(params=["avx512", "avx2"])
def isa(request, monkeypatch):
    """Each CPU kind's formulation table, whatever this machine is."""
    monkeypatch.setenv(fast_conv.ISA_ENV, request.param)
    fast_conv.cpu_isa.cache_clear()
    yield request.param
    fast_conv.cpu_isa.cache_clear()


def test_the_table_picks_each_forward_formulation():
    picks = {
        (isa, h, c): fast_conv.transposed_forward(h, c, isa)
        for isa in ("avx512", "avx2")
        for h, c in ((4, 256), (8, 128), (16, 64), (32, 3))
    }
    assert picks == {
        ("avx512", 4, 256): "lax",
        ("avx512", 8, 128): "s2d",
        ("avx512", 16, 64): "s2d",
        ("avx512", 32, 3): "lax",
        ("avx2", 4, 256): "phases",
        ("avx2", 8, 128): "phases",
        ("avx2", 16, 64): "phases",
        ("avx2", 32, 3): "lax",
    }


def test_the_table_picks_each_strided_input_gradient():
    picks = {
        (isa, h): fast_conv.strided_dgrad(h, isa)
        for isa in ("avx512", "avx2")
        for h in (64, 32, 16, 8, 4)
    }
    assert picks == {
        ("avx512", 64): "s2d",
        ("avx512", 32): "s2d",
        ("avx512", 16): "s2d",
        ("avx512", 8): "gemm",
        ("avx512", 4): "gemm",
        **{("avx2", h): "s2d" for h in (64, 32, 16, 8, 4)},
    }


@pytest.mark.parametrize(
    ("isa_kind", "height", "products"), [("avx512", 8, 1), ("avx512", 16, 0), ("avx2", 8, 0)]
)
def test_the_strided_layer_takes_the_tables_input_gradient(monkeypatch, isa_kind, height, products):
    """The compiled input gradient is the table's formulation: one matrix product and no
    convolution for 'gemm', convolutions and no product for 's2d'."""
    monkeypatch.delenv("FACEGAN_CONV_BACKEND", raising=False)
    monkeypatch.setenv(fast_conv.ISA_ENV, isa_kind)
    fast_conv.cpu_isa.cache_clear()
    try:
        x = jnp.ones((2, height, height, 3))  # [B, H, W, Cin]
        kernel = jnp.ones((4, 4, 3, 5))
        ct = jnp.ones((2, height // 2, height // 2, 5))

        def input_gradient(x, kernel, ct):
            return jax.vjp(lambda x_: fast_conv.conv_stride2(x_, kernel), x)[1](ct)[0]

        hlo = jax.jit(input_gradient).lower(x, kernel, ct).compile().as_text()
    finally:
        fast_conv.cpu_isa.cache_clear()
    assert hlo.count(" dot(") == products, hlo
    assert (" convolution(" in hlo) == (products == 0), hlo


def test_patches_are_the_windows_under_each_output_pixel():
    x = jnp.arange(2 * 4 * 6 * 3, dtype=jnp.float32).reshape(2, 4, 6, 3)
    p = fast_conv.patches_4x4s2(x).reshape(2, 2, 3, 4, 4, 3)  # [B, m, n, ky, kx, C]
    xp = np.pad(np.asarray(x), ((0, 0), (1, 1), (1, 1), (0, 0)))
    for b, m, n in ((0, 0, 0), (1, 1, 2), (0, 1, 1)):
        np.testing.assert_array_equal(p[b, m, n], xp[b, 2 * m : 2 * m + 4, 2 * n : 2 * n + 4])


@pytest.mark.parametrize(("kind", "shape", "features", "use_bias"), CASES)
def test_fast_layer_matches_plain_forward_and_backward(kind, shape, features, use_bias, isa):
    plain, fast = _plain_and_fast(kind, features, use_bias, kernel_init=nn.initializers.normal(1.0))
    kx, kp, kc = jax.random.split(jax.random.key(sum(shape) + features), 3)
    x = jax.random.normal(kx, shape)  # [B, H, W, Cin]
    params = plain.init(kp, x)
    if use_bias:  # a non-zero bias so that its gradient and addition are really compared
        params = jax.tree.map(lambda p: p + 0.1 * jnp.arange(p.size).reshape(p.shape), params)

    ct = jax.random.normal(kc, _out_shape(kind, shape, features))  # cotangent [B, H', W', F]

    @jax.jit
    def value_and_grads(params, x, ct):
        """(y, d params, d x) of both layers in one compiled call (keeps the test fast)."""
        out = []
        for layer in (plain, fast):
            y, vjp = jax.vjp(layer.apply, params, x)
            out.append((y, *vjp(ct)))
        return out

    (y_plain, g_params_plain, g_x_plain), (y_fast, g_params_fast, g_x_fast) = value_and_grads(
        params, x, ct
    )
    assert y_fast.shape == y_plain.shape == ct.shape
    np.testing.assert_allclose(y_fast, y_plain, rtol=RTOL, atol=ATOL)

    np.testing.assert_allclose(g_x_fast, g_x_plain, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(
        g_params_fast["params"]["kernel"], g_params_plain["params"]["kernel"], rtol=RTOL, atol=ATOL
    )
    if use_bias:
        np.testing.assert_allclose(
            g_params_fast["params"]["bias"], g_params_plain["params"]["bias"], rtol=RTOL, atol=ATOL
        )
    # Sanity: the comparison is not vacuous.
    assert float(jnp.abs(g_params_plain["params"]["kernel"]).max()) > 1e-2


@pytest.mark.parametrize(
    ("formulation", "reference", "shape"),
    [
        (fast_conv.conv_transpose_2x_phases, fast_conv.conv_transpose_2x_lax, (2, 3, 4, 5)),
        (fast_conv.conv_transpose_2x_s2d, fast_conv.conv_transpose_2x_lax, (2, 3, 4, 5)),
        (fast_conv.conv_stride2_s2d, fast_conv.conv_stride2_lax, (2, 6, 4, 5)),
        (fast_conv.conv_stride2_gemm, fast_conv.conv_stride2_lax, (2, 6, 4, 5)),
        (fast_conv.conv_stride2_gemm, fast_conv.conv_stride2_lax, (3, 8, 8, 6)),
    ],
)
@pytest.mark.parametrize("cout", [3, 20])
def test_every_formulation_equals_the_strided_lax_op(formulation, reference, shape, cout):
    kx, kw, kc = jax.random.split(jax.random.key(cout), 3)
    x = jax.random.normal(kx, shape)  # [B, H, W, Cin]
    kernel = jax.random.normal(kw, (4, 4, shape[-1], cout))  # [4, 4, Cin, Cout]

    @jax.jit
    def value_and_grads(x, kernel):
        y_ref, vjp_ref = jax.vjp(lambda a, b: reference(a, b, None), x, kernel)
        ct = jax.random.normal(kc, y_ref.shape)  # cotangent [B, H', W', Cout]
        y, vjp = jax.vjp(lambda a, b: formulation(a, b, None), x, kernel)
        return (y, *vjp(ct)), (y_ref, *vjp_ref(ct))

    ours, ref = value_and_grads(x, kernel)
    for a, b in zip(ours, ref, strict=True):  # y, d x, d kernel
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("kind", ["transpose", "stride2"])
@pytest.mark.parametrize("use_bias", [False, True])
def test_param_trees_and_init_values_are_identical(kind, use_bias):
    plain, fast = _plain_and_fast(
        kind, 6, use_bias, kernel_init=nn.initializers.normal(0.02), bias_init=nn.initializers.ones
    )
    x = jnp.ones((2, 4, 4, 5))  # [B, H, W, Cin]
    p_plain = plain.init(jax.random.key(3), x)
    p_fast = fast.init(jax.random.key(3), x)
    assert jax.tree.structure(p_fast) == jax.tree.structure(p_plain)
    assert jax.tree.map(jnp.shape, p_fast) == jax.tree.map(jnp.shape, p_plain)
    assert p_fast["params"]["kernel"].shape == (4, 4, 5, 6)
    jax.tree.map(np.testing.assert_array_equal, p_fast, p_plain)
    # The fast layer runs on the plain layer's parameters and vice versa.
    np.testing.assert_allclose(fast.apply(p_plain, x), plain.apply(p_fast, x), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("kind", ["transpose", "stride2"])
def test_bfloat16_compute_dtype_follows_flax_promotion(kind):
    plain, fast = _plain_and_fast(kind, 4, True, dtype=jnp.bfloat16)
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 3))  # [B, H, W, Cin]
    params = plain.init(jax.random.key(1), x)
    assert params["params"]["kernel"].dtype == jnp.float32  # param_dtype stays float32
    y_plain, y_fast = plain.apply(params, x), fast.apply(params, x)
    assert y_fast.dtype == y_plain.dtype == jnp.bfloat16
    np.testing.assert_allclose(
        y_fast.astype(jnp.float32), y_plain.astype(jnp.float32), rtol=3e-2, atol=3e-2
    )


def test_stride2_rejects_odd_spatial_size_with_clear_message():
    with pytest.raises(ValueError, match="spatial size must be even"):
        FastConvStride2(2).init(jax.random.key(0), jnp.ones((1, 5, 4, 3)))


@pytest.mark.parametrize(
    ("shape", "cout"), [((2, 3, 4, 5), 3), ((3, 6, 2, 7), 20), ((1, 1, 1, 2), 1)]
)
def test_transposed_weight_gradient_equals_autodiff_of_the_lax_op(shape, cout):
    kx, kw, kc = jax.random.split(jax.random.key(cout), 3)
    x = jax.random.normal(kx, shape)  # [B, H, W, Cin]
    kernel = jax.random.normal(kw, (4, 4, shape[-1], cout))
    B, H, W, _ = shape
    ct = jax.random.normal(kc, (B, 2 * H, 2 * W, cout))
    _, vjp = jax.vjp(lambda k: fast_conv.conv_transpose_2x_lax(x, k), kernel)
    (expected,) = vjp(ct)
    got = jax.jit(fast_conv.conv_transpose_2x_wgrad)(x, ct)
    assert got.shape == (4, 4, shape[-1], cout)
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)
    assert float(jnp.abs(expected).max()) > 0.1  # not vacuous
