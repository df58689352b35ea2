"""InceptionV3 exactly as pytorch-fid's FID variant, and its torch-free weight loader.

This module owns the FID feature network: the architecture (pytorch-fid 0.3.0's
`fid_inception_v3` with its patched blocks: average pools that exclude the zero
padding in Mixed_5b-5d, 6b-6e and 7b, a max pool in 7c, BatchNorm eps 1e-3,
bias-free convolutions), the input pipeline of `pytorch_fid.inception.InceptionV3`
(bilinear resize to 299 with half-pixel centres and no antialias, then `2x - 1`),
and reading pytorch-fid's weights file `pt_inception-2015-12-05-6726825d.pth`
without torch (legacy torch serialisation or the zip format).

Inference-only rewrites, each mathematically exact (only float rounding differs):

* BatchNorm is folded into each convolution (kernel scale and a bias) at load time.
* The 1x1 convolutions of a block that read the same input are one matrix product.
* An average-pool branch runs its 1x1 convolution *before* the pool: both are linear
  (the pool per channel, the convolution per pixel), so they commute, and pooling the
  192 outputs instead of the 768-1280 inputs saves most of the pooling work.
* On CPU, KxK convolutions with >= 64 input channels are im2col matrix products
  (faster than XLA:CPU's convolution there); accelerators keep native convolutions.

Layout is NHWC; convolutions and products run at `Precision.HIGHEST` so accelerators
do not drop to TF32/bf16 passes (which would break agreement with pytorch-fid).
"""

from __future__ import annotations

import collections
import hashlib
import io
import os
import pickle
import struct
import sys
import urllib.error
import urllib.request
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

FID_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
    "pt_inception-2015-12-05-6726825d.pth"
)
FID_WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
# torch.hub convention: the suffix of the file name is the start of its sha256.
FID_WEIGHTS_SHA256_PREFIX = "6726825d"
INPUT_SIZE = 299
BN_EPS = 1e-3
POOL3_DIM = 2048

_HIGHEST = lax.Precision.HIGHEST


class InceptionWeightsError(ValueError):
    """The weights file exists but is truncated, corrupt or not the FID Inception."""


class InceptionWeightsUnavailableError(FileNotFoundError):
    """The weights file is neither given, nor cached, nor downloadable."""


# ----------------------------------------------------------------------------- architecture
# (block name, kind) in network order; kinds follow torchvision's InceptionA..E naming.
MIXED_BLOCKS: tuple[tuple[str, str], ...] = (
    ("Mixed_5b", "A"),
    ("Mixed_5c", "A"),
    ("Mixed_5d", "A"),
    ("Mixed_6a", "B"),
    ("Mixed_6b", "C"),
    ("Mixed_6c", "C"),
    ("Mixed_6d", "C"),
    ("Mixed_6e", "C"),
    ("Mixed_7a", "D"),
    ("Mixed_7b", "E1"),
    ("Mixed_7c", "E2"),
)
# The 1x1 convolutions of a block that read the block input, merged into one product
# (`pointwise_kernel` [Cin, sum], `pointwise_bias`), in this order. 'branch_pool' here
# means its conv runs before the (linear) average pool; see the module docstring.
POINTWISE_MEMBERS: dict[str, tuple[str, ...]] = {
    "A": ("branch1x1", "branch5x5_1", "branch3x3dbl_1", "branch_pool"),
    "B": ("branch3x3dbl_1",),
    "C": ("branch1x1", "branch7x7_1", "branch7x7dbl_1", "branch_pool"),
    "D": ("branch3x3_1", "branch7x7x3_1"),
    "E1": ("branch1x1", "branch3x3_1", "branch3x3dbl_1", "branch_pool"),
    "E2": ("branch1x1", "branch3x3_1", "branch3x3dbl_1"),
}


def _conv(
    x: jax.Array,
    kernel: jax.Array,
    bias: jax.Array,
    strides: int = 1,
    padding: tuple[int, int] = (0, 0),
) -> jax.Array:
    """BN-folded BasicConv2d: conv (HWIO kernel) + bias + ReLU."""
    # Plain XLA convolution, also on CPU: with Eigen's convolutions (runtime.CPU_CONV_FLAG)
    # every layer runs at 100-170 GFLOP/s on 2 AVX2 cores, while an im2col patch matrix
    # times the kernel (used here before) ran Conv2d_4a at 46 GFLOP/s: 12.5 vs 9.0 img/s
    # for the whole network (`python -m facegan_jax.benchmark --only=fid,fid_layers`).
    y = lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(strides, strides),
        padding=((padding[0], padding[0]), (padding[1], padding[1])),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=_HIGHEST,
    )
    return jax.nn.relu(y + bias)


def _max_pool_3x3(x: jax.Array, strides: int, padding: int) -> jax.Array:
    """3x3 max pool; padded positions never win (they hold -inf), as in torch."""
    pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, strides, strides, 1), pad)


def _avg_pool_3x3_exclude_pad(x: jax.Array) -> jax.Array:
    """3x3 stride-1 average pool with padding 1 and count_include_pad=False.

    Separable box sum of shifted slices (XLA fuses it into one loop), divided by the
    number of in-image pixels under each window, as TensorFlow and pytorch-fid do.
    """
    _, H, W, _ = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))  # [B, H+2, W+2, C]
    rows = xp[:, :-2] + xp[:, 1:-1] + xp[:, 2:]  # [B, H, W+2, C]
    box = rows[:, :, :-2] + rows[:, :, 1:-1] + rows[:, :, 2:]  # [B, H, W, C]
    count = np.outer(_window_counts(H), _window_counts(W)).astype(np.float32)  # [H, W]
    return box / count[None, :, :, None]


def _window_counts(n: int) -> np.ndarray:
    """In-range taps of a size-3, padding-1 window at each of n positions."""
    idx = np.arange(n)
    return np.minimum(idx + 1, n - 1) - np.maximum(idx - 1, 0) + 1


def bilinear_resize_matrix(in_size: int, out_size: int) -> np.ndarray:
    """Interpolation matrix of torch `F.interpolate(bilinear, align_corners=False)`.

    Half-pixel centres, source index clamped at 0 and the upper neighbour clamped at
    the last pixel, no antialias; computed in float32 as torch's CPU kernel does.

    Args:
      in_size: input length along one axis.
      out_size: output length along that axis.

    Returns:
      [out_size, in_size] float32 matrix whose rows sum to 1.
    """
    scale = np.float32(in_size) / np.float32(out_size)
    dst = np.arange(out_size, dtype=np.float32)
    src = np.maximum(scale * (dst + np.float32(0.5)) - np.float32(0.5), np.float32(0))
    i0 = np.minimum(src.astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    lam1 = (src - i0.astype(np.float32)).astype(np.float32)
    lam0 = np.float32(1) - lam1
    matrix = np.zeros((out_size, in_size), np.float32)
    rows = np.arange(out_size)
    np.add.at(matrix, (rows, i0), lam0)
    np.add.at(matrix, (rows, i1), lam1)
    return matrix


def resize_to_inception(images_01: jax.Array, size: int = INPUT_SIZE) -> jax.Array:
    """Bilinear resize of [0, 1] images to `size` exactly like pytorch-fid's input step.

    Args:
      images_01: [B, H, W, C] float32 in [0, 1].
      size: output side.

    Returns:
      [B, size, size, C] float32 (still in [0, 1]; `2x - 1` is applied by the network).
    """
    _, H, W, _ = images_01.shape
    x = images_01.astype(jnp.float32)
    if size != H:
        mh = jnp.asarray(bilinear_resize_matrix(H, size))  # [size, H]
        x = jnp.einsum("oh,bhwc->bowc", mh, x, precision=_HIGHEST)  # [B, size, W, C]
    if size != W:
        mw = jnp.asarray(bilinear_resize_matrix(W, size))  # [size, W]
        x = jnp.einsum("pw,bowc->bopc", mw, x, precision=_HIGHEST)  # [B, size, size, C]
    return x


class FoldedConv(nn.Module):
    """A pytorch-fid BasicConv2d (conv without bias, BatchNorm, ReLU) with BN folded in."""

    features: int
    kernel_size: tuple[int, int]
    strides: int = 1
    padding: tuple[int, int] = (0, 0)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param(
            "kernel",
            nn.initializers.lecun_normal(),
            (*self.kernel_size, x.shape[-1], self.features),
        )
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        return _conv(x, kernel, bias, self.strides, self.padding)


class MixedBlock(nn.Module):
    """One of pytorch-fid's Inception blocks (kind A, B, C, D, E1 or E2).

    Attributes:
      kind: block kind (see MIXED_BLOCKS).
      width: pool features (A) or channels_7x7 (C); unused otherwise.
    """

    kind: str
    width: int = 0

    def _pointwise(self, x: jax.Array, sizes: Sequence[int]) -> list[jax.Array]:
        """The merged 1x1 convolutions, returned per member *before* bias and ReLU."""
        kernel = self.param(
            "pointwise_kernel", nn.initializers.lecun_normal(), (x.shape[-1], sum(sizes))
        )
        self.param("pointwise_bias", nn.initializers.zeros, (sum(sizes),))
        y = jnp.einsum("bhwc,cd->bhwd", x, kernel, precision=_HIGHEST)  # [B, H, W, sum]
        return jnp.split(y, np.cumsum(sizes)[:-1].tolist(), axis=-1)

    def _bias_relu(self, parts: list[jax.Array], sizes: Sequence[int]) -> list[jax.Array]:
        bias = self.get_variable("params", "pointwise_bias")
        biases = jnp.split(bias, np.cumsum(sizes)[:-1].tolist())
        return [jax.nn.relu(p + b) for p, b in zip(parts, biases)]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kind
        if k == "A":
            sizes = (64, 48, 64, self.width)
            parts = self._pointwise(x, sizes)
            parts[3] = _avg_pool_3x3_exclude_pad(parts[3])  # conv-then-pool: both linear
            b1, b5, b3, bp = self._bias_relu(parts, sizes)
            b5 = FoldedConv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
            b3 = FoldedConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
            b3 = FoldedConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
            return jnp.concatenate([b1, b5, b3, bp], axis=-1)
        if k == "B":
            b3 = FoldedConv(384, (3, 3), strides=2, name="branch3x3")(x)
            (bd,) = self._bias_relu(self._pointwise(x, (64,)), (64,))
            bd = FoldedConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
            bd = FoldedConv(96, (3, 3), strides=2, name="branch3x3dbl_3")(bd)
            return jnp.concatenate([b3, bd, _max_pool_3x3(x, 2, 0)], axis=-1)
        if k == "C":
            c7 = self.width
            sizes = (192, c7, c7, 192)
            parts = self._pointwise(x, sizes)
            parts[3] = _avg_pool_3x3_exclude_pad(parts[3])
            b1, b7, bd, bp = self._bias_relu(parts, sizes)
            b7 = FoldedConv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
            b7 = FoldedConv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
            bd = FoldedConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
            bd = FoldedConv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
            bd = FoldedConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
            bd = FoldedConv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
            return jnp.concatenate([b1, b7, bd, bp], axis=-1)
        if k == "D":
            sizes = (192, 192)
            b3, b7 = self._bias_relu(self._pointwise(x, sizes), sizes)
            b3 = FoldedConv(320, (3, 3), strides=2, name="branch3x3_2")(b3)
            b7 = FoldedConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
            b7 = FoldedConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
            b7 = FoldedConv(192, (3, 3), strides=2, name="branch7x7x3_4")(b7)
            return jnp.concatenate([b3, b7, _max_pool_3x3(x, 2, 0)], axis=-1)
        if k in ("E1", "E2"):
            sizes = (320, 384, 448, 192) if k == "E1" else (320, 384, 448)
            parts = self._pointwise(x, sizes)
            if k == "E1":
                parts[3] = _avg_pool_3x3_exclude_pad(parts[3])
            b1, b3, bd, *rest = self._bias_relu(parts, sizes)
            if k == "E1":
                (bp,) = rest
            else:  # pytorch-fid's E_2 max-pools (a quirk of the TF graph), then convs.
                bp = FoldedConv(192, (1, 1), name="branch_pool")(_max_pool_3x3(x, 1, 1))
            b3 = jnp.concatenate(
                [
                    FoldedConv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                    FoldedConv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3),
                ],
                axis=-1,
            )
            bd = FoldedConv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
            bd = jnp.concatenate(
                [
                    FoldedConv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                    FoldedConv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd),
                ],
                axis=-1,
            )
            return jnp.concatenate([b1, b3, bd, bp], axis=-1)
        raise ValueError(f"unknown Inception block kind {k!r}")


_BLOCK_WIDTHS = {
    "Mixed_5b": 32,
    "Mixed_5c": 64,
    "Mixed_5d": 64,
    "Mixed_6b": 128,
    "Mixed_6c": 160,
    "Mixed_6d": 160,
    "Mixed_6e": 192,
}


class InceptionV3(nn.Module):
    """pytorch-fid's FID InceptionV3 (NHWC), from [0, 1] images to pool3 features.

    Call with images [B, H, W, 3] float32 in [0, 1]; they are resized to 299 inside.
    Returns pool3 [B, 2048], or with `return_blocks=True` a dict with 'block0'
    [B, 73, 73, 64], 'block1' [B, 35, 35, 192], 'block2' [B, 17, 17, 768] and 'pool3'.
    """

    @nn.compact
    def __call__(
        self, images_01: jax.Array, return_blocks: bool = False
    ) -> jax.Array | dict[str, jax.Array]:
        x = resize_to_inception(images_01)  # [B, 299, 299, 3]
        x = 2.0 * x - 1.0
        x = FoldedConv(32, (3, 3), strides=2, name="Conv2d_1a_3x3")(x)  # [B, 149, 149, 32]
        x = FoldedConv(32, (3, 3), name="Conv2d_2a_3x3")(x)  # [B, 147, 147, 32]
        x = FoldedConv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
        block0 = _max_pool_3x3(x, 2, 0)  # [B, 73, 73, 64]
        x = FoldedConv(80, (1, 1), name="Conv2d_3b_1x1")(block0)
        x = FoldedConv(192, (3, 3), name="Conv2d_4a_3x3")(x)  # [B, 71, 71, 192]
        block1 = _max_pool_3x3(x, 2, 0)  # [B, 35, 35, 192]
        x = block1
        block2 = None
        for name, kind in MIXED_BLOCKS:
            x = MixedBlock(kind, _BLOCK_WIDTHS.get(name, 0), name=name)(x)
            if name == "Mixed_6e":
                block2 = x  # [B, 17, 17, 768]
        pool3 = jnp.mean(x, axis=(1, 2))  # [B, 2048]
        if return_blocks:
            return {"block0": block0, "block1": block1, "block2": block2, "pool3": pool3}
        return pool3


def pool3_features(params: Any, images_01: jax.Array) -> jax.Array:
    """FID features of [0, 1] images (jittable).

    Args:
      params: the pytree from `load_inception_params` (the 'params' collection).
      images_01: [B, H, W, 3] float32 in [0, 1]; any H, W (resized to 299 inside).

    Returns:
      [B, 2048] float32 pool3 features.
    """
    return InceptionV3().apply({"params": params}, images_01)


def abstract_params() -> Any:
    """Shapes and dtypes of the params pytree, without computing anything."""
    shapes = jax.eval_shape(
        InceptionV3().init,
        jax.random.key(0),
        jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32),
    )
    return shapes["params"]


# ----------------------------------------------------------------------------- torch files
_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


class _Storage:
    """A torch storage named in a pickle; its bytes are attached after unpickling."""

    def __init__(self, key: str, dtype: Any, numel: int):
        self.key, self.dtype, self.numel = key, np.dtype(dtype), int(numel)
        self.array: np.ndarray | None = None


class _TensorRef:
    """What `_rebuild_tensor_v2` returns: a view description, materialised later."""

    def __init__(self, storage: Any, offset: int, size: tuple, stride: tuple):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def materialize(self, name: str) -> np.ndarray:
        storage, view_offset = self.storage, 0
        if isinstance(storage, tuple):  # legacy view: (root storage, element offset)
            storage, view_offset = storage
        data = storage.array
        start = view_offset + self.offset
        extent = 1 + sum((n - 1) * s for n, s in zip(self.size, self.stride) if n > 0)
        if any(n == 0 for n in self.size):
            return np.zeros(self.size, storage.dtype)
        if data is None or start + extent > data.shape[0]:
            raise InceptionWeightsError(f"tensor {name!r} lies outside its storage")
        itemsize = data.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            data[start:],
            shape=tuple(self.size),
            strides=tuple(s * itemsize for s in self.stride),
            writeable=False,
        )
        return np.array(view)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *unused):
    del unused  # requires_grad, backward_hooks, metadata: irrelevant for inference
    return _TensorRef(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, *unused):
    del unused
    return data


class _TorchUnpickler(pickle.Unpickler):
    """Unpickles torch state dicts allowing only the globals they need (no code runs)."""

    def __init__(self, file: Any, storages: dict[str, _Storage]):
        super().__init__(file, encoding="utf-8")
        self.storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        raise pickle.UnpicklingError(f"unsupported global {module}.{name} in a weights file")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        dtype, key, _location, numel = pid[1:5]
        view_metadata = pid[5] if len(pid) > 5 else None
        key = str(key)
        if key not in self.storages:
            self.storages[key] = _Storage(key, dtype, numel)
        storage = self.storages[key]
        if view_metadata is not None:  # very old files: (view key, offset, size)
            _view_key, view_offset, _view_size = view_metadata
            return (storage, int(view_offset))
        return storage


def _corrupt(path: Path, why: str) -> InceptionWeightsError:
    return InceptionWeightsError(
        f"{path}: truncated or corrupt PyTorch weights file ({why}); delete it and download "
        f"it again from {FID_WEIGHTS_URL}"
    )


def _read_legacy(path: Path, raw: bytes) -> tuple[Any, dict[str, _Storage]]:
    """The pre-1.6 torch.save format: 5 pickles, then each storage's int64 count + bytes."""
    f = io.BytesIO(raw)
    storages: dict[str, _Storage] = {}
    magic = pickle.load(f)
    if magic != _LEGACY_MAGIC:
        raise _corrupt(path, "bad magic number")
    protocol = pickle.load(f)
    if protocol != _LEGACY_PROTOCOL:
        raise _corrupt(path, f"unsupported protocol version {protocol}")
    sys_info = pickle.load(f)
    if not sys_info.get("little_endian", True):
        raise InceptionWeightsError(f"{path}: big-endian torch files are not supported")
    obj = _TorchUnpickler(f, storages).load()
    keys = pickle.load(f)
    for key in keys:
        storage = storages.get(str(key))
        if storage is None:
            raise _corrupt(path, f"storage {key!r} listed but never used")
        head = f.read(8)
        if len(head) < 8:
            raise _corrupt(path, f"file ends before storage {key!r} (size {len(raw)} bytes)")
        (numel,) = struct.unpack("<q", head)
        if numel != storage.numel:
            raise _corrupt(path, f"storage {key!r} has {numel} elements, expected {storage.numel}")
        nbytes = numel * storage.dtype.itemsize
        start = f.tell()
        if start + nbytes > len(raw):
            missing = start + nbytes - len(raw)
            raise _corrupt(
                path, f"file is {len(raw)} bytes, {missing} bytes short in storage {key!r}"
            )
        storage.array = np.frombuffer(raw, storage.dtype, numel, start)
        f.seek(start + nbytes)
    return obj, storages


def _read_zip(path: Path) -> tuple[Any, dict[str, _Storage]]:
    """The torch>=1.6 zip format: <root>/data.pkl and <root>/data/<key> raw bytes."""
    storages: dict[str, _Storage] = {}
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pkl:
            raise _corrupt(path, "zip archive without data.pkl")
        root = pkl[0][: -len("data.pkl")]
        byteorder = "little"
        if f"{root}byteorder" in names:
            byteorder = zf.read(f"{root}byteorder").decode().strip()
        obj = _TorchUnpickler(io.BytesIO(zf.read(pkl[0])), storages).load()
        for key, storage in storages.items():
            member = f"{root}data/{key}"
            if member not in names:
                raise _corrupt(path, f"missing storage {member!r}")
            data = zf.read(member)
            dtype = storage.dtype.newbyteorder("<" if byteorder == "little" else ">")
            if len(data) < storage.numel * dtype.itemsize:
                raise _corrupt(path, f"storage {member!r} is short")
            storage.array = np.frombuffer(data, dtype, storage.numel).astype(storage.dtype)
    return obj, storages


def read_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a torch-saved state dict into numpy arrays, without torch.

    Supports the legacy (non-zip) serialisation, which pytorch-fid's weights file uses,
    and the zip format of torch>=1.6. Only tensors, storages and OrderedDicts may
    appear in the pickle: nothing in the file can run code.

    Args:
      path: the .pth file.

    Returns:
      name -> numpy array (a copy, C-contiguous), in file order.

    Raises:
      InceptionWeightsError: the file is truncated, corrupt or not a state dict.
    """
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            obj, _ = _read_zip(path)
        else:
            obj, _ = _read_legacy(path, path.read_bytes())
    except InceptionWeightsError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError,
            AttributeError, IndexError, struct.error, zipfile.BadZipFile) as e:  # fmt: skip
        raise _corrupt(path, f"{type(e).__name__}: {e}") from None
    if not isinstance(obj, dict):
        raise InceptionWeightsError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return {
        name: t.materialize(name) if isinstance(t, _TensorRef) else np.asarray(t)
        for name, t in obj.items()
    }


# ----------------------------------------------------------------------------- conversion
def _fold(state: dict[str, np.ndarray], prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """BN-folded (HWIO kernel, bias) of torch BasicConv2d `prefix` in float64."""
    w = state[f"{prefix}.conv.weight"].astype(np.float64)  # [O, I, kh, kw]
    gamma = state[f"{prefix}.bn.weight"].astype(np.float64)
    beta = state[f"{prefix}.bn.bias"].astype(np.float64)
    mean = state[f"{prefix}.bn.running_mean"].astype(np.float64)
    var = state[f"{prefix}.bn.running_var"].astype(np.float64)
    scale = gamma / np.sqrt(var + BN_EPS)  # [O]
    kernel = w.transpose(2, 3, 1, 0) * scale  # [kh, kw, I, O]
    return kernel, beta - mean * scale


def convert_state_dict(state: dict[str, np.ndarray], source: str = "state dict") -> Any:
    """pytorch-fid state dict -> our params pytree (BN folded, 1x1 convs merged).

    Args:
      state: torch parameter name -> array, as `read_torch_state_dict` returns.
      source: what to name in errors (usually the file path).

    Returns:
      The 'params' collection of `InceptionV3`, float32 numpy arrays.

    Raises:
      InceptionWeightsError: a tensor is missing or has the wrong shape.
    """
    expected = abstract_params()
    params: dict[str, Any] = {}
    try:
        for name in expected:
            kind = dict(MIXED_BLOCKS).get(name)
            if kind is None:  # a stem conv
                kernel, bias = _fold(state, name)
                params[name] = {"kernel": kernel, "bias": bias}
                continue
            block: dict[str, Any] = {}
            members = [_fold(state, f"{name}.{m}") for m in POINTWISE_MEMBERS[kind]]
            block["pointwise_kernel"] = np.concatenate([k[0, 0] for k, _ in members], axis=1)
            block["pointwise_bias"] = np.concatenate([b for _, b in members])
            for conv in expected[name]:
                if conv.startswith("pointwise_"):
                    continue
                kernel, bias = _fold(state, f"{name}.{conv}")
                block[conv] = {"kernel": kernel, "bias": bias}
            params[name] = block
    except KeyError as e:
        raise InceptionWeightsError(
            f"{source}: missing tensor {e.args[0]!r}; not pytorch-fid's FID Inception weights"
        ) from None
    params = jax.tree.map(lambda a: np.ascontiguousarray(a, np.float32), params)
    got = jax.tree.map(lambda a: a.shape, params)
    want = jax.tree.map(lambda a: a.shape, expected)
    if got != want:
        bad = [
            f"{jax.tree_util.keystr(p)}: {g} != {w}"
            for (p, g), w in zip(
                jax.tree_util.tree_leaves_with_path(got, is_leaf=lambda t: isinstance(t, tuple)),
                jax.tree.leaves(want, is_leaf=lambda t: isinstance(t, tuple)),
            )
            if g != w
        ]
        raise InceptionWeightsError(f"{source}: wrong tensor shapes: {'; '.join(bad[:3])}")
    return params


# ----------------------------------------------------------------------------- locating
def cache_dir() -> Path:
    """Where downloaded weights live: $FACEGAN_CACHE or ~/.cache/facegan_jax."""
    return Path(os.environ.get("FACEGAN_CACHE", Path.home() / ".cache" / "facegan_jax"))


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file (streamed)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download(url: str, dest: Path) -> None:
    """Downloads `url` to `dest` with a progress bar on stderr (no retries)."""
    with urllib.request.urlopen(url, timeout=60) as response:
        total = int(response.headers.get("Content-Length") or 0)
        try:
            from tqdm import tqdm

            bar = tqdm(total=total or None, unit="B", unit_scale=True, desc=dest.name)
        except ImportError:  # tqdm is optional: a plain counter will do
            bar = None
        done = 0
        with open(dest, "wb") as out:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                out.write(chunk)
                done += len(chunk)
                if bar is not None:
                    bar.update(len(chunk))
                else:
                    print(f"\r{dest.name}: {done / 1e6:.1f}/{total / 1e6:.1f} MB", end="",
                          file=sys.stderr)  # fmt: skip
        if bar is not None:
            bar.close()
        else:
            print(file=sys.stderr)


def resolve_weights_path(path: str | os.PathLike | None = None) -> Path:
    """The weights file to use: `path`, else the cached copy, else a fresh download.

    Args:
      path: an explicit .pth file, or None for the cache/download logic.

    Returns:
      Path to an existing file.

    Raises:
      InceptionWeightsUnavailableError: `path` does not exist, or nothing is cached and
        the download failed (the message says where to put the file).
      InceptionWeightsError: the download's sha256 does not match.
    """
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise InceptionWeightsUnavailableError(
                f"FID Inception weights file {path} does not exist; download "
                f"{FID_WEIGHTS_URL} and pass its path"
            )
        return path
    cached = cache_dir() / FID_WEIGHTS_FILENAME
    if cached.is_file():
        return cached
    partial = cached.with_name(cached.name + ".partial")
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        _download(FID_WEIGHTS_URL, partial)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        partial.unlink(missing_ok=True)
        raise InceptionWeightsUnavailableError(
            f"FID Inception weights not found in {cached.parent} and the download from "
            f"{FID_WEIGHTS_URL} failed ({e}); put the file at {cached} (or set $FACEGAN_CACHE, "
            "or pass the weights path explicitly)"
        ) from None
    digest = file_sha256(partial)
    if not digest.startswith(FID_WEIGHTS_SHA256_PREFIX):
        partial.unlink(missing_ok=True)
        raise InceptionWeightsError(
            f"downloaded {FID_WEIGHTS_URL} has sha256 {digest}, expected a prefix of "
            f"{FID_WEIGHTS_SHA256_PREFIX}; put a good copy at {cached}"
        )
    partial.replace(cached)
    return cached


def load_inception_params(path: str | os.PathLike | None = None) -> Any:
    """Loads pytorch-fid's FID Inception weights as our (BN-folded) params pytree.

    Args:
      path: the `pt_inception-2015-12-05-6726825d.pth` file (or a file with the same
        tensors); None looks in `cache_dir()` and otherwise downloads it.

    Returns:
      The 'params' collection for `InceptionV3` / `pool3_features` (float32 numpy).

    Raises:
      InceptionWeightsUnavailableError: no file and no download.
      InceptionWeightsError: the file is truncated, corrupt or holds other tensors.
    """
    resolved = resolve_weights_path(path)
    return convert_state_dict(read_torch_state_dict(resolved), source=str(resolved))
