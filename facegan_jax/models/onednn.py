"""Optional oneDNN convolutions for the fast 4x4 stride-2 layers, through `jax.ffi` (issue 21).

XLA:CPU runs convolutions with Eigen kernels, which gain little from AVX-512; PyTorch
runs the same layers with oneDNN's. This module owns the optional route to the latter:
it compiles `csrc/dnnl_conv.cc` once per machine (g++, the `onednn-devel-cpu-gomp`
headers and library from PyPI, JAX's FFI headers) into a cache folder, registers it as
an XLA:CPU custom call, and gives the three directions of a 2D convolution (forward,
input gradient, weight gradient) as JAX functions, plus an inference-only forward with the
bias and ReLU fused into the call (`conv_bias_relu`, the FID network's layers). `fast_conv`
and `metrics.inception` use them when the environment variable `FACEGAN_CONV_BACKEND=onednn`
is set; the pure-XLA formulations stay the default and the fallback.

Install: `pip install 'facegan_jax[onednn]'` (a C++ compiler is needed once).

Limitation: XLA's SPMD partitioner cannot split a custom call, so with several devices in
one process (a data-parallel mesh over fake CPU devices) the call is replicated: correct
(checked against XLA's values on a 2-device mesh) but not data-parallel. It is meant for
the one-CPU-device case, where it runs on all the cores through oneDNN's own threads.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import pathlib
import subprocess
from collections.abc import Callable
from importlib import metadata

import jax
import jax.numpy as jnp
import numpy as np

from facegan_jax import errors

BACKEND_ENV = "FACEGAN_CONV_BACKEND"
TARGET = "facegan_dnnl_conv"
INFER_TARGET = "facegan_dnnl_conv_infer"
SOURCE = pathlib.Path(__file__).with_name("csrc") / "dnnl_conv.cc"
FORWARD, BACKWARD_DATA, BACKWARD_WEIGHTS = 0, 1, 2
_registered: list[str] = []


class OneDnnError(errors.UsageError):
    """The oneDNN route was asked for but cannot be built or loaded."""


def requested() -> bool:
    """True when `FACEGAN_CONV_BACKEND=onednn` asks for oneDNN convolutions (read at trace time)."""
    value = os.environ.get(BACKEND_ENV, "xla").strip().lower()
    if value not in ("xla", "onednn", ""):
        raise OneDnnError(f"{BACKEND_ENV}={value!r}: use 'xla' (default) or 'onednn'")
    return value == "onednn"


def active() -> bool:
    """`requested()` and the default backend is the CPU (where the custom call exists)."""
    return requested() and jax.default_backend() == "cpu"


def _installed_file(dist: str, suffix: str) -> pathlib.Path | None:
    """The installed file of distribution `dist` whose path ends with `suffix`, or None."""
    try:
        found = metadata.distribution(dist)
    except metadata.PackageNotFoundError:
        return None
    for f in found.files or []:
        if str(f).endswith(suffix):
            return pathlib.Path(found.locate_file(f)).resolve()
    return None


def _cache_dir() -> pathlib.Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "facegan_jax" / "onednn"


@functools.cache
def library() -> ctypes.CDLL:
    """Builds (once per source and JAX version) and loads the custom-call library.

    Raises a one-line OneDnnError naming what is missing and how to install it.
    """
    header = _installed_file("onednn-devel-cpu-gomp", "oneapi/dnnl/dnnl.hpp")
    shared = _installed_file("onednn-cpu-gomp", "libdnnl.so")
    if header is None or shared is None:
        raise OneDnnError(
            f"{BACKEND_ENV}=onednn needs the oneDNN wheels: pip install 'facegan_jax[onednn]' "
            "(onednn-cpu-gomp, onednn-devel-cpu-gomp), or unset it for XLA's convolutions"
        )
    include, lib = header.parents[2], shared.parent
    digest = hashlib.sha256(SOURCE.read_bytes() + jax.__version__.encode()).hexdigest()[:16]
    out = _cache_dir() / digest / "libfacegan_dnnl.so"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        command = [
            os.environ.get("CXX", "g++"),
            "-O2",
            "-std=c++17",
            "-shared",
            "-fPIC",
            "-w",
            f"-I{jax.ffi.include_dir()}",
            f"-I{include}",
            str(SOURCE),
            "-o",
            str(tmp),
            f"-L{lib}",
            "-ldnnl",
            f"-Wl,-rpath,{lib}",
        ]
        try:
            done = subprocess.run(command, capture_output=True, text=True, check=False)
        except OSError as e:
            raise OneDnnError(f"building {SOURCE.name}: {e} (install g++ or set CXX)") from None
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["?"])[-1]
            raise OneDnnError(f"building {SOURCE.name} failed: {last}")
        os.replace(tmp, out)
    handle = ctypes.cdll.LoadLibrary(str(out))
    if not _registered:  # once per process, even if the cache is cleared
        jax.ffi.register_ffi_target(
            TARGET, jax.ffi.pycapsule(handle.FaceganDnnlConv), platform="cpu"
        )
        jax.ffi.register_ffi_target(
            INFER_TARGET, jax.ffi.pycapsule(handle.FaceganDnnlConvInfer), platform="cpu"
        )
        _registered.append(str(out))
    handle.FaceganDnnlVersion.restype = ctypes.c_char_p
    return handle


def version() -> str:
    """oneDNN's version, e.g. '3.2.0' (builds and loads the library)."""
    return library().FaceganDnnlVersion().decode()


Padding = int | tuple[int, int]


def _call(
    kind: int, a: jax.Array, b: jax.Array, out_shape: tuple[int, ...], stride: int, pad: Padding
) -> jax.Array:
    library()
    bf16 = a.dtype == jnp.bfloat16 and b.dtype == jnp.bfloat16
    # bfloat16 kernels where the CPU has them (AVX512_BF16 / AMX); float32 sums otherwise.
    dtype = jnp.bfloat16 if bf16 and cpu_has_bf16() else jnp.float32
    y = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct(out_shape, dtype))(
        a.astype(dtype),
        b.astype(dtype),
        kind=np.int64(kind),
        stride=np.int64(stride),
        pad_h=np.int64(_pads(pad)[0]),
        pad_w=np.int64(_pads(pad)[1]),
    )
    return y.astype(jnp.bfloat16) if bf16 else y


def cpu_has_bf16() -> bool:
    """Whether the CPU lists avx512_bf16 or amx_bf16 (oneDNN's bfloat16 kernels)."""
    from facegan_jax.models import fast_conv

    return bool({"avx512_bf16", "amx_bf16"} & fast_conv.cpu_flags())


def _pads(pad: Padding) -> tuple[int, int]:
    """(rows, columns) of padding on each side."""
    return (pad, pad) if isinstance(pad, int) else (int(pad[0]), int(pad[1]))


def conv_forward(x: jax.Array, w: jax.Array, stride: int, pad: Padding) -> jax.Array:
    """``conv(x [N,H,W,I], w [KH,KW,I,O])``, square stride, `pad` (rows, cols) each side."""
    return _call(FORWARD, x, w, _forward_shape(x.shape, w.shape, stride, pad), stride, pad)


def _forward_shape(
    x_shape: tuple[int, ...], w_shape: tuple[int, ...], stride: int, pad: Padding
) -> tuple[int, int, int, int]:
    """[N, OH, OW, O] of the convolution of x [N,H,W,I] by w [KH,KW,I,O]."""
    n, h, wd, _ = x_shape
    kh, kw, _, o = w_shape
    ph, pw = _pads(pad)
    return n, (h + 2 * ph - kh) // stride + 1, (wd + 2 * pw - kw) // stride + 1, o


def conv_bias_relu(
    x: jax.Array, w: jax.Array, bias: jax.Array, stride: int, pad: Padding, relu: bool = True
) -> jax.Array:
    """``relu(conv(x, w) + bias)`` (or without the ReLU) in one oneDNN inference call, float32.

    The bias and ReLU run inside the convolution (a post-op), not as a second pass over its
    output. Forward only: it has no gradient (the FID network's layers).
    """
    library()
    ph, pw = _pads(pad)
    f32 = jnp.float32
    out = jax.ShapeDtypeStruct(_forward_shape(x.shape, w.shape, stride, pad), f32)
    return jax.ffi.ffi_call(INFER_TARGET, out)(
        x.astype(f32),
        w.astype(f32),
        bias.astype(f32),
        stride=np.int64(stride),
        pad_h=np.int64(ph),
        pad_w=np.int64(pw),
        relu=np.int64(relu),
    )


def conv_backward_data(
    dy: jax.Array, w: jax.Array, in_shape: tuple[int, ...], stride: int, pad: Padding
) -> jax.Array:
    """The input gradient of `conv_forward` for output cotangent `dy`: ``in_shape``."""
    return _call(BACKWARD_DATA, dy, w, tuple(in_shape), stride, pad)


def conv_backward_weights(
    x: jax.Array, dy: jax.Array, w_shape: tuple[int, ...], stride: int, pad: Padding
) -> jax.Array:
    """The weight gradient of `conv_forward` for input `x` and output cotangent `dy`."""
    return _call(BACKWARD_WEIGHTS, x, dy, tuple(w_shape), stride, pad)


def _transposed_weights(kernel: jax.Array) -> jax.Array:
    """Flax ConvTranspose kernel [4,4,Ci,Co] -> the strided conv [4,4,Co,Ci] it is adjoint to."""
    return jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)


# The three parts of each layer as direct functions, for `fast_conv` to mix with XLA's:
# forward (x, kernel) -> y; input gradient and weight gradient (ct, x, kernel) -> dx / dkernel.


def stride2_parts() -> dict[str, Callable[..., jax.Array]]:
    """{'fwd', 'dgrad', 'wgrad'} of ``nn.Conv(F, (4, 4), strides=2, padding=1)`` on oneDNN."""
    return {
        "fwd": lambda x, k: conv_forward(x, k, 2, 1).astype(x.dtype),
        "dgrad": lambda ct, x, k: conv_backward_data(ct, k, x.shape, 2, 1).astype(x.dtype),
        "wgrad": lambda ct, x, k: conv_backward_weights(x, ct, k.shape, 2, 1).astype(k.dtype),
    }


def transpose_parts() -> dict[str, Callable[..., jax.Array]]:
    """{'fwd', 'dgrad', 'wgrad'} of ``nn.ConvTranspose(F, (4, 4), strides=2, padding=2)``."""

    def fwd(x, k):
        out = (x.shape[0], 2 * x.shape[1], 2 * x.shape[2], k.shape[-1])
        return conv_backward_data(x, _transposed_weights(k), out, 2, 1).astype(x.dtype)

    def wgrad(ct, x, k):
        w_shape = (k.shape[0], k.shape[1], k.shape[3], k.shape[2])
        dw = conv_backward_weights(ct, x, w_shape, 2, 1)
        return _transposed_weights(dw).astype(k.dtype)

    return {
        "fwd": fwd,
        "dgrad": lambda ct, x, k: conv_forward(ct, _transposed_weights(k), 2, 1).astype(x.dtype),
        "wgrad": wgrad,
    }


def conv_stride2(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """``nn.Conv(F, (4, 4), strides=2, padding=1)`` of `x` [B,H,W,I], `kernel` [4,4,I,F], every
    part on oneDNN."""
    return _all_parts("stride2")(x, kernel, None)


def conv_transpose_2x(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """``nn.ConvTranspose(F, (4, 4), strides=2, padding=2)``: `x` [B,H,W,I], `kernel` [4,4,I,F],
    every part on oneDNN."""
    return _all_parts("transpose")(x, kernel, None)


def _all_parts(layer: str) -> Callable[..., jax.Array]:
    from facegan_jax.models import fast_conv

    return fast_conv.hybrid(layer, "lax", frozenset({"fwd", "dgrad", "wgrad"}))
