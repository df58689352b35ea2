"""The optional oneDNN convolutions (facegan_jax.models.onednn) against XLA's: float32 rounding."""

from __future__ import annotations

import platform
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from facegan_jax.models import fast_conv, onednn

pytestmark = pytest.mark.skipif(
    platform.machine() != "x86_64" or shutil.which("g++") is None,
    reason="the oneDNN route is built for x86-64 with g++",
)


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize(
    "layer, shape",
    [
        ("stride2", (3, 16, 16, 3, 8)),  # D's first layer (3 input channels)
        ("stride2", (2, 8, 8, 24, 40)),
        ("transpose", (3, 4, 4, 40, 24)),  # G's layers
        ("transpose", (2, 16, 16, 8, 3)),  # G's last layer (3 output channels)
    ],
)
def test_onednn_layers_equal_xla_forward_and_both_gradients(layer, shape):
    b, h, w, cin, cout = shape
    keys = jax.random.split(jax.random.PRNGKey(sum(shape)), 3)
    x = jax.random.normal(keys[0], (b, h, w, cin))
    kernel = jax.random.normal(keys[1], (4, 4, cin, cout))
    if layer == "stride2":
        ref_fn, dnnl_fn = fast_conv.conv_stride2_lax, onednn.conv_stride2
    else:
        ref_fn, dnnl_fn = fast_conv.conv_transpose_2x_lax, onednn.conv_transpose_2x
    y_ref, vjp_ref = jax.vjp(lambda x_, k_: ref_fn(x_, k_, "highest"), x, kernel)
    y, vjp = jax.jit(lambda x_, k_: jax.vjp(dnnl_fn, x_, k_))(x, kernel)
    assert y.shape == y_ref.shape and y.dtype == jnp.float32
    ct = jax.random.normal(keys[2], y.shape)
    (dx_ref, dk_ref), (dx, dk) = vjp_ref(ct), vjp(ct)
    # Exact to float32 rounding: the sums run in another order, nothing else differs.
    assert _rel(y, y_ref) < 2e-6 and _rel(dx, dx_ref) < 2e-6 and _rel(dk, dk_ref) < 2e-6
    # A wrong formulation (the kernel not flipped) is far off: the check can fail.
    assert _rel(dnnl_fn(x, jnp.flip(kernel, (0, 1))), y_ref) > 0.1


_BF16_KERNELS = [
    pytest.param(True, marks=pytest.mark.skipif(not onednn.cpu_has_bf16(), reason="no bf16 CPU")),
    False,  # the float32 fallback every CPU takes
]


@pytest.mark.parametrize("bf16_kernels", _BF16_KERNELS)
@pytest.mark.parametrize("layer", ["stride2", "transpose"])
def test_bfloat16_operands_run_in_bfloat16_close_to_float32(layer, bf16_kernels, monkeypatch):
    monkeypatch.setattr(onednn, "cpu_has_bf16", lambda: bf16_kernels)
    keys = jax.random.split(jax.random.PRNGKey(7), 3)
    x = jax.random.normal(keys[0], (2, 8, 8, 32))
    kernel = jax.random.normal(keys[1], (4, 4, 32, 16))
    if layer == "stride2":
        ref_fn, dnnl_fn = fast_conv.conv_stride2_lax, onednn.conv_stride2
    else:
        ref_fn, dnnl_fn = fast_conv.conv_transpose_2x_lax, onednn.conv_transpose_2x
    xb, kb = x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16)
    y_ref, vjp_ref = jax.vjp(
        lambda x_, k_: ref_fn(x_, k_, "highest"), xb.astype(float), kb.astype(float)
    )
    y, vjp = jax.vjp(dnnl_fn, xb, kb)
    assert y.dtype == jnp.bfloat16
    ct = jax.random.normal(keys[2], y.shape)
    (dx_ref, dk_ref), (dx, dk) = vjp_ref(ct), vjp(ct.astype(jnp.bfloat16))
    assert dx.dtype == dk.dtype == jnp.bfloat16
    # bfloat16 outputs (8 mantissa bits) of float32 sums: within a few bfloat16 ulps.
    assert _rel(y, y_ref) < 1e-2 and _rel(dx, dx_ref) < 1e-2 and _rel(dk, dk_ref) < 1e-2


def test_backend_switch_routes_the_dcgan_layers_and_keeps_their_gradients(monkeypatch):
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 16))
    kernel = jax.random.normal(jax.random.PRNGKey(1), (4, 4, 16, 8))

    def grads():
        def loss(x_, k_):
            up = fast_conv.conv_transpose_2x(x_, k_)  # [2, 16, 16, 8]
            down = fast_conv.conv_stride2(up, jnp.transpose(k_, (0, 1, 3, 2)))  # [2, 8, 8, 16]
            return jnp.sum(down**2)

        return jax.jit(jax.grad(loss, (0, 1)))(x, kernel), jax.make_jaxpr(loss)(x, kernel)

    monkeypatch.setenv(onednn.BACKEND_ENV, "xla")
    (gx_ref, gk_ref), jaxpr_ref = grads()
    monkeypatch.setenv(onednn.BACKEND_ENV, "onednn")
    (gx, gk), jaxpr = grads()
    assert "ffi_call" in str(jaxpr) and "ffi_call" not in str(jaxpr_ref)
    assert _rel(gx, gx_ref) < 1e-5 and _rel(gk, gk_ref) < 1e-5
    assert "oneDNN 3." in fast_conv.describe("FastConvStride2", 8, 8, 8)


@pytest.mark.parametrize(
    "layer, height, cin, cout, on_onednn",
    [
        ("transpose", 4, 8, 8, set()),  # 4x4 small side: XLA's
        ("transpose", 8, 16, 3, {"dgrad", "wgrad"}),  # to 3 channels: XLA's forward
        ("transpose", 8, 16, 16, {"fwd", "dgrad", "wgrad"}),
        ("stride2", 8, 16, 16, set()),  # 8x8 -> 4x4: XLA's
        ("stride2", 16, 3, 16, {"fwd", "wgrad"}),  # from 3 channels: XLA's input gradient
        ("stride2", 16, 16, 16, {"fwd", "dgrad", "wgrad"}),
    ],
)
def test_each_part_takes_the_backend_of_the_table_and_the_same_values(
    layer, height, cin, cout, on_onednn, monkeypatch
):
    assert fast_conv.onednn_parts(layer, height, cin, cout) == on_onednn
    x = jax.random.normal(jax.random.PRNGKey(3), (2, height, height, cin))
    kernel = jax.random.normal(jax.random.PRNGKey(4), (4, 4, cin, cout))
    fn = fast_conv.conv_transpose_2x if layer == "transpose" else fast_conv.conv_stride2

    def run():
        y, vjp = jax.vjp(lambda x_, k_: fn(x_, k_, "highest"), x, kernel)
        fwd_jaxpr = str(jax.make_jaxpr(lambda x_, k_: fn(x_, k_, "highest"))(x, kernel))
        bwd_jaxpr = str(jax.make_jaxpr(vjp)(y))
        return (y, *vjp(jnp.ones_like(y) + y)), fwd_jaxpr, bwd_jaxpr

    monkeypatch.setenv(onednn.BACKEND_ENV, "xla")
    ref, _, _ = run()
    monkeypatch.setenv(onednn.BACKEND_ENV, "onednn")
    got, fwd_jaxpr, bwd_jaxpr = run()
    assert ("ffi_call" in fwd_jaxpr) == ("fwd" in on_onednn)
    assert bwd_jaxpr.count("ffi_call") == len(on_onednn & {"dgrad", "wgrad"})
    for a, b in zip(got, ref):
        assert _rel(a, b) < 1e-5
    described = fast_conv.describe(
        "FastConvTranspose2x" if layer == "transpose" else "FastConvStride2", height, cin, cout
    )
    assert described.count("oneDNN") == len(on_onednn) + 1  # each part, and the version


def test_onednn_problems_are_one_line_errors(monkeypatch):
    monkeypatch.setenv(onednn.BACKEND_ENV, "mkl")
    with pytest.raises(onednn.OneDnnError, match="FACEGAN_CONV_BACKEND='mkl': use 'xla'"):
        onednn.requested()
    monkeypatch.setattr(onednn, "_installed_file", lambda dist, suffix: None)
    onednn.library.cache_clear()
    try:
        with pytest.raises(onednn.OneDnnError) as info:
            onednn.library()
        assert "pip install 'facegan_jax[onednn]'" in str(info.value)
        assert "\n" not in str(info.value)
    finally:
        onednn.library.cache_clear()


@pytest.mark.parametrize(
    "kernel, stride, pad, relu",
    [((3, 3), 2, (0, 0), True), ((1, 7), 1, (0, 3), True), ((1, 1), 1, (0, 0), False)],
)
def test_fused_inference_conv_equals_conv_plus_bias_then_relu(kernel, stride, pad, relu):
    from jax import lax

    keys = jax.random.split(jax.random.PRNGKey(7), 3)
    x = jax.random.normal(keys[0], (2, 13, 11, 24))
    w = jax.random.normal(keys[1], (*kernel, 24, 40)) * 0.2
    b = jax.random.normal(keys[2], (40,))
    conv = lax.conv_general_dilated(
        x,
        w,
        (stride, stride),
        ((pad[0], pad[0]), (pad[1], pad[1])),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision="highest",
    )
    expected = jax.nn.relu(conv + b) if relu else conv + b
    got = jax.jit(lambda *a: onednn.conv_bias_relu(*a, stride, pad, relu))(x, w, b)
    assert got.shape == expected.shape
    assert _rel(got, expected) < 1e-6
    # It is the fused call that ran: without the ReLU, negatives survive.
    assert (np.asarray(got) < 0).any() == (not relu)
    assert _rel(got, conv) > 0.05  # and the bias was added


def test_fid_features_through_onednn_match_pytorch_fid(
    inception_params, inception_expected, monkeypatch
):
    from facegan_jax.metrics import inception

    monkeypatch.setenv(onednn.BACKEND_ENV, "onednn")
    net = inception.InceptionV3()
    forward = jax.jit(lambda p, x: net.apply({"params": p}, x, return_blocks=True))
    images = jnp.asarray(inception_expected["images_uint8"], jnp.float32) / 255.0
    assert "ffi_call" in str(jax.make_jaxpr(forward)(inception_params, images[:1]))
    out = forward(inception_params, images)
    np.testing.assert_allclose(
        np.asarray(out["pool3"]), inception_expected["pool3"], atol=1e-4, rtol=0
    )
