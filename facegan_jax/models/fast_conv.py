"""Fast, mathematically identical replacements for DCGAN's stride-2 k4 convolutions.

XLA:CPU lowers the weight gradient of a stride-2 ``nn.ConvTranspose`` to a
convolution over a zero-dilated input that runs ~50-100x slower than the
forward pass. The modules here compute the *same function with the same
parameters*, choosing for the forward pass, the input gradient and the weight
gradient separately (a `jax.custom_vjp`) whichever exact formulation XLA:CPU
runs fastest:

* `FastConvTranspose2x` == ``nn.ConvTranspose(F, (4, 4), strides=(2, 2),
  padding=((2, 2), (2, 2)))`` (PyTorch ``ConvTranspose2d(k=4, s=2, p=1)``).
  Forward: per layer shape and CPU kind (`transposed_forward`, a table from the
  per-layer profile, chosen at trace time) the plain lhs-dilated convolution,
  the sub-pixel (phase) decomposition (each output phase ``(y % 2, x % 2)`` a
  2x2 stride-1 convolution with a 2x2 slice of the kernel, interleaved by
  depth-to-space) or the adjoint of the space-to-depth strided convolution. The
  input gradient is the plain strided convolution, which XLA:CPU does well; the
  weight gradient is a strided convolution's weight gradient with the roles of
  input and output swapped (`conv_transpose_2x_wgrad`: 2.5-10x faster).
* `FastConvStride2` == ``nn.Conv(F, (4, 4), strides=(2, 2), padding=((1, 1),
  (1, 1)))``: plain forward and weight gradient; the input gradient (a
  transposed convolution) via space-to-depth + a 2x2 stride-1 convolution or,
  where the output is 4x4 on AVX-512 (`strided_dgrad`), as one matrix product
  with the kernel and the adjoint of the input patches (`conv_stride2_gemm`).

Both keep Flax's parameter tree (``kernel`` ``[4, 4, Cin, F]`` and optional
``bias`` ``[F]``), initialisers and dtype promotion, so parameters and
checkpoints are interchangeable with the plain layers. On XLA:CPU the stride-1
convolutions are fastest with ``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=
-individual_convolution`` (Eigen instead of YNNPACK convolutions).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array
_DIMS = ("NHWC", "HWIO", "NHWC")


def conv_transpose_2x_lax(x: Array, kernel: Array, precision: Any = None) -> Array:
    """The plain formulation: Flax's strided ``conv_transpose`` (reference and fast fwd/dgrad)."""
    return lax.conv_transpose(
        x, kernel, (2, 2), ((2, 2), (2, 2)), dimension_numbers=_DIMS, precision=precision
    )  # [B, 2H, 2W, Cout]


def conv_transpose_2x_phases(x: Array, kernel: Array, precision: Any = None) -> Array:
    """Flax ``conv_transpose(x, kernel, strides=2, padding=((2, 2), (2, 2)))`` via phases.

    With the (unflipped) Flax kernel ``w``, output row ``2m + p`` is
    ``sum_a x[m + a - 1 + p] @ w[p + 2a]`` for ``a`` in {0, 1}: so phase ``p``
    is a 2x2 stride-1 convolution with kernel rows ``w[p::2]`` over the input
    padded by ``(1 - p, p)``; the same holds independently for columns.

    Args:
      x: input ``[B, H, W, Cin]``.
      kernel: Flax ConvTranspose kernel ``[4, 4, Cin, Cout]``.
      precision: passed to `lax.conv_general_dilated`.

    Returns:
      ``[B, 2H, 2W, Cout]``, equal to the plain strided transposed convolution.
    """
    B, H, W, _ = x.shape
    cout = kernel.shape[-1]
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))  # [B, H+2, W+2, Cin]
    rows = []
    for py in (0, 1):
        cols = []
        for px in (0, 1):
            # Window of the padded input that phase (py, px) reads: rows py .. py+H.
            xw = xp[:, py : py + H + 1, px : px + W + 1]  # [B, H+1, W+1, Cin]
            y = lax.conv_general_dilated(
                xw,
                kernel[py::2, px::2],  # [2, 2, Cin, Cout]
                (1, 1),
                "VALID",
                dimension_numbers=_DIMS,
                precision=precision,
            )  # [B, H, W, Cout]
            cols.append(y)
        rows.append(jnp.stack(cols, axis=3))  # [B, H, W, 2(px), Cout]
    y = jnp.stack(rows, axis=2)  # [B, H, 2(py), W, 2(px), Cout]
    return y.reshape(B, 2 * H, 2 * W, cout)  # depth-to-space interleave


def conv_stride2_lax(x: Array, kernel: Array, precision: Any = None) -> Array:
    """The plain formulation: Flax's strided ``conv`` (reference and fast fwd/wgrad)."""
    return lax.conv_general_dilated(
        x, kernel, (2, 2), ((1, 1), (1, 1)), dimension_numbers=_DIMS, precision=precision
    )  # [B, H/2, W/2, Cout]


def conv_stride2_s2d(x: Array, kernel: Array, precision: Any = None) -> Array:
    """Flax ``conv(x, kernel, strides=2, padding=((1, 1), (1, 1)))`` via space-to-depth.

    Args:
      x: input ``[B, H, W, Cin]`` with even ``H`` and ``W``.
      kernel: Flax Conv kernel ``[4, 4, Cin, Cout]``.
      precision: passed to `lax.conv_general_dilated`.

    Returns:
      ``[B, H/2, W/2, Cout]``, equal to the plain strided convolution.
    """
    B, H, W, cin = x.shape
    cout = kernel.shape[-1]
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))  # [B, H+2, W+2, Cin]
    h2, w2 = H // 2 + 1, W // 2 + 1
    xs = xp.reshape(B, h2, 2, w2, 2, cin).transpose(0, 1, 3, 2, 4, 5)  # [B, h2, w2, 2, 2, Cin]
    xs = xs.reshape(B, h2, w2, 4 * cin)  # [B, h2, w2, (dy, dx, Cin)]
    # Kernel tap (2a + dy, 2b + dx) -> 2x2 tap (a, b), channel block (dy, dx).
    ks = kernel.reshape(2, 2, 2, 2, cin, cout).transpose(0, 2, 1, 3, 4, 5)  # [a, b, dy, dx, ...]
    ks = ks.reshape(2, 2, 4 * cin, cout)  # [2, 2, 4*Cin, Cout]
    return lax.conv_general_dilated(
        xs, ks, (1, 1), "VALID", dimension_numbers=_DIMS, precision=precision
    )  # [B, H/2, W/2, Cout]


def patches_4x4s2(x: Array) -> Array:
    """The input patches of the k4 s2 p1 convolution: ``[B*H/2*W/2, 16*Cin]``.

    Row ``(b, m, l)`` holds the 4x4 window of the zero-padded input under output
    pixel ``(m, l)``, columns ordered ``(ky, kx, Cin)`` like a Flax kernel's rows, so
    ``patches_4x4s2(x) @ kernel.reshape(16 * Cin, Cout)`` is the convolution.

    Args:
      x: input ``[B, H, W, Cin]`` with even ``H`` and ``W``.

    Returns:
      ``[B * H/2 * W/2, 16 * Cin]``.
    """
    B, H, W, cin = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))  # [B, H+2, W+2, Cin]
    taps = [xp[:, ky : ky + H : 2, kx : kx + W : 2] for ky in range(4) for kx in range(4)]
    return jnp.concatenate(taps, axis=-1).reshape(B * (H // 2) * (W // 2), 16 * cin)


def conv_stride2_gemm(x: Array, kernel: Array, precision: Any = None) -> Array:
    """`conv_stride2_lax` as one matrix product of the patches and the kernel.

    Its input gradient is the transposed product ``ct @ kernel^T`` (the kernel
    read in place, no reorder) followed by the patches' adjoint (pads and adds):
    where the output is 4x4, XLA:CPU runs that 1.7x faster than either
    convolution formulation (`strided_dgrad`).

    Args:
      x: input ``[B, H, W, Cin]`` with even ``H`` and ``W``.
      kernel: Flax Conv kernel ``[4, 4, Cin, Cout]``.
      precision: passed to the product.

    Returns:
      ``[B, H/2, W/2, Cout]``, equal to the plain strided convolution.
    """
    B, H, W, _ = x.shape
    cout = kernel.shape[-1]
    y = jnp.dot(patches_4x4s2(x), kernel.reshape(-1, cout), precision=precision)
    return y.reshape(B, H // 2, W // 2, cout)


def conv_transpose_2x_wgrad(x: Array, ct: Array, precision: Any = None) -> Array:
    """The kernel gradient of `conv_transpose_2x_lax` as a strided convolution's.

    With the (unflipped) Flax kernel, ``dW[ky, kx, i, o] = sum x[m, l, i] *
    ct[2m + 2 - ky, 2l + 2 - kx, o]``, which is the kernel gradient ``dV`` of the
    k4 s2 p1 convolution of ``ct`` (``Cout`` channels in, ``Cin`` out) whose output
    gradient is ``x``, with taps flipped and channels swapped:
    ``dW[ky, kx, i, o] = dV[3 - ky, 3 - kx, o, i]``. XLA:CPU computes that strided
    gradient 2.5-10x faster than the transposed convolution's (per-layer profile).

    Args:
      x: the layer's input ``[B, H, W, Cin]``.
      ct: the gradient of its output ``[B, 2H, 2W, Cout]``.
      precision: passed to the convolution.

    Returns:
      The kernel gradient ``[4, 4, Cin, Cout]`` (Flax ConvTranspose layout).
    """
    cin, cout = x.shape[-1], ct.shape[-1]
    v = jax.ShapeDtypeStruct((4, 4, cout, cin), ct.dtype)
    transpose = jax.linear_transpose(lambda v_: conv_stride2_lax(ct, v_, precision), v)
    (dv,) = transpose(x.astype(ct.dtype))
    return dv[::-1, ::-1].transpose(0, 1, 3, 2)


def conv_transpose_2x_s2d(x: Array, kernel: Array, precision: Any = None) -> Array:
    """`conv_transpose_2x_lax` as the input gradient of the space-to-depth strided conv.

    The transposed convolution is the adjoint of the k4 s2 p1 convolution with the
    kernel's taps flipped and channels swapped (``V[3 - ky, 3 - kx, o, i] =
    W[ky, kx, i, o]``, see `conv_transpose_2x_wgrad`); XLA:CPU runs the adjoint of
    `conv_stride2_s2d` (a stride-1 2x2 convolution and depth-to-space) fastest for
    mid-sized layers.

    Args:
      x: input ``[B, H, W, Cin]``.
      kernel: Flax ConvTranspose kernel ``[4, 4, Cin, Cout]``.
      precision: passed to the convolution.

    Returns:
      ``[B, 2H, 2W, Cout]``, equal to the plain strided transposed convolution.
    """
    B, H, W, _ = x.shape
    cout = kernel.shape[-1]
    v = kernel[::-1, ::-1].transpose(0, 1, 3, 2)  # [4, 4, Cout, Cin]
    z = jax.ShapeDtypeStruct((B, 2 * H, 2 * W, cout), x.dtype)
    (y,) = jax.linear_transpose(lambda z_: conv_stride2_s2d(z_, v, precision), z)(x)
    return y


Formulation = Callable[[Array, Array, Any], Array]


def linear_vjp(fwd: Formulation, grads: Callable[..., tuple[Array, Array]]) -> Formulation:
    """`fwd(x, kernel, precision)` whose VJP is `grads(ct, x, kernel, precision) -> (dx, dk)`."""

    @functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
    def apply(x: Array, kernel: Array, precision: Any) -> Array:
        return fwd(x, kernel, precision)

    def apply_fwd(x, kernel, precision):
        return fwd(x, kernel, precision), (x, kernel)

    def apply_bwd(precision, residuals, ct):
        x, kernel = residuals
        return grads(ct, x, kernel, precision)

    apply.defvjp(apply_fwd, apply_bwd)
    return apply


_SMALL_COUT = 16
_TRANSPOSED_FORWARD: dict[str, Formulation] = {
    "phases": conv_transpose_2x_phases,
    "lax": conv_transpose_2x_lax,
    "s2d": conv_transpose_2x_s2d,
}
ISA_ENV = "FACEGAN_CONV_ISA"


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags /proc/cpuinfo lists (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            return frozenset(next((ln for ln in f if ln.startswith("flags")), "").split())
    except OSError:
        return frozenset()


@functools.cache
def cpu_isa() -> str:
    """`avx512` or `avx2` (any other x86 or CPU): which measured table applies.

    From /proc/cpuinfo's flags; the environment variable `FACEGAN_CONV_ISA`
    overrides it (to compare the tables on one machine).
    """
    forced = os.environ.get(ISA_ENV, "")
    if forced in ("avx512", "avx2"):
        return forced
    return "avx512" if "avx512f" in cpu_flags() else "avx2"


def transposed_forward(height: int, cout: int, isa: str | None = None) -> str:
    """The forward formulation `conv_transpose_2x` uses for a ``[B, height, ., .]`` input.

    The table, per layer shape and CPU kind, comes from the per-layer profile
    (`python -m facegan_jax.benchmark --only=layers`, fwd column). DCGAN-64's
    layers at batch 64, one thread, ms (lax / phases / s2d):
    AVX-512 (Xeon, 2026-12): 4x4x512->256 30 / 43 / 46, 8x8x256->128 48 / 51 / 36,
    16x16x128->64 73 / 103 / 36, 32x32x64->3 8 / 179 / 10;
    AVX2 (Zen 3, earlier stops): phases for Cout >= 16, lax below.
    """
    if cout < _SMALL_COUT:
        return "lax"
    if (isa or cpu_isa()) == "avx512":
        return "lax" if height <= 4 else "s2d"
    return "phases"


def strided_dgrad(height: int, isa: str | None = None) -> str:
    """The input-gradient formulation of `conv_stride2` for a ``[B, height, ., .]`` input.

    From the per-layer profile (dgrad column), DCGAN-64 at batch 64, 2 threads, ms
    (s2d / gemm / lax): AVX-512 (Xeon, 2026-12-07): 64x64x3->64 4.1 / 5.2 / 5.8,
    32x32x64->128 17.7 / 50.1 / 47.2, 16x16x128->256 17.2 / 22.4 / 31.0, 8x8x256->512
    24.0 / 15.7 / 20.9 (in the train step 40 ms less per step with gemm there); AVX2
    (Zen 3, earlier stops): s2d everywhere (gemm not measured there, so not taken).
    """
    if (isa or cpu_isa()) == "avx512" and height // 2 <= 4:
        return "gemm"
    return "s2d"


def conv_transpose_2x(x: Array, kernel: Array, precision: Any = None) -> Array:
    """Flax ``conv_transpose(x, kernel, strides=2, padding=((2, 2), (2, 2)))``, fast on XLA:CPU.

    The forward pass and the gradients use whichever exact formulation is
    fastest for the layer's width; the slow strided weight gradient is never used.

    Args:
      x: input ``[B, H, W, Cin]``.
      kernel: Flax ConvTranspose kernel ``[4, 4, Cin, Cout]``.
      precision: passed to the underlying convolutions.

    Returns:
      ``[B, 2H, 2W, Cout]``.
    """
    forward, parts = _route("transpose", x.shape[1], *kernel.shape[2:])
    return hybrid("transpose", forward, parts)(x, kernel, precision)


def onednn_parts(layer: str, height: int, cin: int, cout: int) -> frozenset[str]:
    """Which of 'fwd', 'dgrad', 'wgrad' run on oneDNN with `FACEGAN_CONV_BACKEND=onednn`.

    `layer` 'transpose' (input ``[B, height, ., .]``) or 'stride2' (input height `height`),
    `cin` / `cout` its input / output channels. From the per-layer profile (`benchmark
    --only=layers` with each backend; DCGAN-64, batch 64, 2 threads, AVX-512/AMX Xeon,
    2026-12-07, ms fwd / dgrad / wgrad, XLA against oneDNN): layers whose small side is 4x4
    stay on XLA (4x4x512->256: 20 / 18 / 19 against 27 / 26 / 29; 8x8x256->512: 14 / 27 / 17
    against 22 / 25 / 23); a layer to or from fewer than 16 channels (the images' 3) keeps the
    XLA part whose output has those channels: the transposed layer's forward (6.1 against
    8.4), the strided layer's input gradient (64x64x3->64: 5.2 against 9.3, the
    space-to-depth formulation; 32x32x3->64: 1.4 against 2.8), and takes oneDNN's other
    parts (e.g. 1.6 / 1.7 against 3.3 / 7.6);
    every other layer runs on oneDNN (e.g. 32x32x64->128: 15 / 26 / 28 against 13 / 14 / 17).
    """
    small = height if layer == "transpose" else height // 2
    if small <= 4:
        return frozenset()
    if layer == "transpose" and cout < _SMALL_COUT:
        return frozenset({"dgrad", "wgrad"})
    if layer == "stride2" and cin < _SMALL_COUT:
        return frozenset({"fwd", "wgrad"})
    return frozenset({"fwd", "dgrad", "wgrad"})


_STRIDED: dict[str, Formulation] = {
    "s2d": conv_stride2_s2d,
    "gemm": conv_stride2_gemm,
    "lax": conv_stride2_lax,
}


def _xla_parts(layer: str, variant: str) -> dict[str, Callable[..., Array]]:
    """The XLA parts of a fast layer, each the formulation XLA:CPU runs fastest (all compute
    the same linear map; each is linear in x and in the kernel, so the gradients need no
    forward pass): the transposed conv's forward formulation `variant`, its input gradient
    as the plain strided convolution's VJP and its weight gradient as a strided
    convolution; the strided conv's lax forward and weight gradient and its input gradient
    as the VJP of formulation `variant` ('s2d', 'gemm' or 'lax')."""
    if layer == "transpose":
        fwd = _TRANSPOSED_FORWARD[variant]
        return {
            "fwd": lambda x, k, p: fwd(x, k, p),
            "dgrad": lambda ct, x, k, p: jax.vjp(lambda x_: conv_transpose_2x_lax(x_, k, p), x)[1](
                ct
            )[0],
            "wgrad": lambda ct, x, k, p: conv_transpose_2x_wgrad(x, ct, p).astype(k.dtype),
        }
    return {
        "fwd": lambda x, k, p: conv_stride2_lax(x, k, p),
        "dgrad": lambda ct, x, k, p: jax.vjp(lambda x_: _STRIDED[variant](x_, k, p), x)[1](ct)[0],
        "wgrad": lambda ct, x, k, p: jax.vjp(lambda k_: conv_stride2_lax(x, k_, p), k)[1](ct)[0],
    }


NONE: frozenset[str] = frozenset()  # `hybrid` with no part on oneDNN: the pure-XLA layer


@functools.cache
def hybrid(layer: str, variant: str, on_onednn: frozenset[str] = NONE) -> Formulation:
    """A fast layer ('transpose' or 'stride2'; shape-dependent XLA formulation `variant`, see
    `_xla_parts`) whose parts in `on_onednn` run on oneDNN and the others on XLA:
    ``f(x, kernel, precision)``."""
    xla = _xla_parts(layer, variant)
    dnnl: dict[str, Callable[..., Array]] = {}
    if on_onednn:
        from facegan_jax.models import onednn

        dnnl = onednn.transpose_parts() if layer == "transpose" else onednn.stride2_parts()

    def part(name: str) -> Callable[..., Array]:
        if name in on_onednn:
            return lambda *args: dnnl[name](*args[:-1])  # oneDNN takes no precision
        return xla[name]

    fwd, dgrad, wgrad = part("fwd"), part("dgrad"), part("wgrad")
    return linear_vjp(fwd, lambda *args: (dgrad(*args), wgrad(*args)))


def _variant_here(layer: str, height: int, cout: int) -> str:
    """The shape-dependent XLA formulation of a fast layer ('transpose' or 'stride2', see
    `_xla_parts`): on CPUs the measured table (`transposed_forward`, `strided_dgrad`); on
    other backends the phase decomposition and space-to-depth."""
    on_cpu = jax.default_backend() == "cpu"
    if layer == "transpose":
        return transposed_forward(height, cout) if on_cpu else "phases"
    return strided_dgrad(height) if on_cpu else "s2d"


def _onednn_here() -> bool:
    """`FACEGAN_CONV_BACKEND=onednn` on the CPU backend (`onednn.active`)."""
    from facegan_jax.models import onednn

    return onednn.active()


def _route(layer: str, height: int, cin: int, cout: int) -> tuple[str, frozenset[str]]:
    """Where a fast layer ('transpose' or 'stride2', input height `height`, `cin` -> `cout`
    channels) runs here: its XLA formulation (`_variant_here`) and its parts on oneDNN
    (`onednn_parts` with `FACEGAN_CONV_BACKEND=onednn`, else none). The layers and `describe`
    all take it from here."""
    parts = onednn_parts(layer, height, cin, cout) if _onednn_here() else NONE
    return _variant_here(layer, height, cout), parts


def describe(layer: str, height: int, cin: int, cout: int) -> str:
    """Which formulation each part of a fast layer (input height `height`, `cin` -> `cout`
    channels) takes here (for the benchmark's profile)."""
    if _onednn_here():
        from facegan_jax.models import onednn

        kind = "transpose" if layer == "FastConvTranspose2x" else "stride2"
        _, on = _route(kind, height, cin, cout)
        xla = describe_xla(layer, height, cout).split(" [")[0].split(", ")
        names = [f"{p} oneDNN" if p in on else x for p, x in zip(("fwd", "dgrad", "wgrad"), xla)]
        return ", ".join(names) + f" [oneDNN {onednn.version()}, {cpu_isa()}]"
    return describe_xla(layer, height, cout)


def describe_xla(layer: str, height: int, cout: int) -> str:
    """`describe` for the pure-XLA path."""
    if layer == "FastConvTranspose2x":
        forward = _variant_here("transpose", height, cout)
        return f"fwd {forward}, dgrad lax, wgrad strided-conv [{cpu_isa()}]"
    return f"fwd lax, dgrad {_variant_here('stride2', height, cout)}, wgrad lax [{cpu_isa()}]"


def conv_stride2(x: Array, kernel: Array, precision: Any = None) -> Array:
    """Flax ``conv(x, kernel, strides=2, padding=((1, 1), (1, 1)))``, fast on XLA:CPU.

    Args:
      x: input ``[B, H, W, Cin]`` with even ``H`` and ``W``.
      kernel: Flax Conv kernel ``[4, 4, Cin, Cout]``.
      precision: passed to the underlying convolutions.

    Returns:
      ``[B, H/2, W/2, Cout]``.
    """
    H, W = x.shape[1:3]
    if H % 2 or W % 2:
        raise ValueError(f"fast_conv.conv_stride2: spatial size must be even, got {H}x{W}")
    variant, parts = _route("stride2", H, *kernel.shape[2:])
    return hybrid("stride2", variant, parts)(x, kernel, precision)


class _FastConvBase(nn.Module):
    """Shared parameters and dtype handling of the fast 4x4 stride-2 layers."""

    features: int
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None
    kernel_init: Callable[..., Array] = nn.linear.default_kernel_init
    bias_init: Callable[..., Array] = nn.initializers.zeros_init()

    def _apply(self, x: Array, fn: Callable[..., Array]) -> Array:
        kernel = self.param(
            "kernel", self.kernel_init, (4, 4, x.shape[-1], self.features), self.param_dtype
        )
        bias = (
            self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias
            else None
        )
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = fn(x, kernel, self.precision)
        if bias is not None:
            y = y + bias
        return y


class FastConvTranspose2x(_FastConvBase):
    """Drop-in for ``nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)))``.

    Same parameters (``kernel`` ``[4, 4, Cin, features]``, ``bias``), same
    output ``[B, 2H, 2W, features]``, computed with stride-1 convolutions.
    """

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """Upsamples ``x`` ``[B, H, W, Cin]`` to ``[B, 2H, 2W, features]``."""
        return self._apply(x, conv_transpose_2x)


class FastConvStride2(_FastConvBase):
    """Drop-in for ``nn.Conv(features, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)))``.

    Same parameters (``kernel`` ``[4, 4, Cin, features]``, ``bias``), same
    output ``[B, H/2, W/2, features]``, computed after space-to-depth.
    """

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """Downsamples ``x`` ``[B, H, W, Cin]`` (even H, W) to ``[B, H/2, W/2, features]``."""
        return self._apply(x, conv_stride2)
