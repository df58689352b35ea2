"""pytorch-fid's FID Inception weights: locating, reading without torch, converting.

This module owns the weights of `models/inception.py`'s network: the file
`pt_inception-2015-12-05-6726825d.pth` (its URL, sha256 prefix, the cache folder
and the download), reading torch's legacy and zip serialisations into numpy
without torch (only tensors, storages and OrderedDicts may appear in the pickle),
converting pytorch-fid's state dict into our params (BatchNorm with eps 1e-3
folded into each convolution, a block's 1x1 convolutions merged into one
product), and the errors a missing or damaged file raises.
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
from pathlib import Path
from typing import Any

import jax
import numpy as np

from facegan_jax.metrics import inception

FID_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
    "pt_inception-2015-12-05-6726825d.pth"
)
FID_WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
# torch.hub convention: the suffix of the file name is the start of its sha256.
FID_WEIGHTS_SHA256_PREFIX = "6726825d"
BN_EPS = 1e-3


class InceptionWeightsError(ValueError):
    """The weights file exists but is truncated, corrupt or not the FID Inception."""


class InceptionWeightsUnavailableError(FileNotFoundError):
    """The weights file is neither given, nor cached, nor downloadable."""


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
      The 'params' collection of `inception.InceptionV3`, float32 numpy arrays.

    Raises:
      InceptionWeightsError: a tensor is missing or has the wrong shape.
    """
    expected = inception.abstract_params()
    params: dict[str, Any] = {}
    try:
        for name in expected:
            kind = dict(inception.MIXED_BLOCKS).get(name)
            if kind is None:  # a stem conv
                kernel, bias = _fold(state, name)
                params[name] = {"kernel": kernel, "bias": bias}
                continue
            block: dict[str, Any] = {}
            members = [_fold(state, f"{name}.{m}") for m in inception.POINTWISE_MEMBERS[kind]]
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
      The 'params' collection for `inception.InceptionV3` / `inception.pool3_features`
      (float32 numpy).

    Raises:
      InceptionWeightsUnavailableError: no file and no download.
      InceptionWeightsError: the file is truncated, corrupt or holds other tensors.
    """
    resolved = resolve_weights_path(path)
    return convert_state_dict(read_torch_state_dict(resolved), source=str(resolved))
