"""Every byte facegan_jax reads or writes, on a local disk or an object store (`gs://`).

One path layer over `etils.epath` (the one Orbax and TFDS use), so a workdir,
a classifier folder or a dataset can be `gs://bucket/run` as well as
`runs/x`: config.json, samples, attribute pools, reference caches, reports,
directions, checkpoint checksums all go through here (the checkpoints
themselves through Orbax, TensorBoard events through TensorFlow's gfile).

Paths: `resolve` expands `~` and makes a local path absolute; a URL is kept
as it is. Writes are whole files: locally to a temporary sibling renamed into
place (a reader never sees half a file; a crash leaves the previous one); on
an object store an upload is all-or-nothing already, so the object is
written directly. Arrays, JSON, PNGs and figures are written and read as
bytes in memory, so no library below needs a local file name.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from typing import Any

import numpy as np
from etils import epath

PathLike = str | os.PathLike


def is_url(path: PathLike) -> bool:
    """True for `gs://...`, `s3://...` (anything with a scheme)."""
    return "://" in os.fspath(path)


def check_storage_client(path: PathLike, what: str = "--workdir") -> None:
    """Raises ValueError (naming `what` and the fix) when `path` is on a bucket whose client
    is not installed (Orbax lists `gs://` checkpoints with google-cloud-storage)."""
    import importlib.util

    path = os.fspath(path)
    if path.startswith("gs://") and importlib.util.find_spec("google.cloud.storage") is None:
        raise ValueError(
            f"{what} {path} is on Cloud Storage, which needs its client: "
            "pip install 'facegan_jax[gcs]' (or google-cloud-storage)"
        )


def expand_path(path: PathLike | None) -> str | None:
    """`~` expanded in a local path from a flag or config field (the shell does not expand
    `~` after `=`); URLs (`gs://...`) and empty values unchanged."""
    if not path:
        return None if path is None else os.fspath(path)
    path = os.fspath(path)
    return path if is_url(path) else os.path.expanduser(path)


def resolve(path: PathLike) -> str:
    """An absolute local path (`~` expanded), or a URL unchanged."""
    path = expand_path(path)
    return path if is_url(path) else os.path.abspath(path)


def as_path(path: PathLike) -> epath.Path:
    """The `epath.Path` of `path` (after `resolve`)."""
    return epath.Path(resolve(path))


def join(path: PathLike, *names: str) -> str:
    """`path/name/...` as a string, for local paths and URLs alike."""
    return "/".join([resolve(path).rstrip("/"), *names])


def exists(path: PathLike) -> bool:
    """Whether a file or folder exists at `path`."""
    return as_path(path).exists()


def isdir(path: PathLike) -> bool:
    """Whether `path` is a folder (on an object store: a prefix with objects under it)."""
    return as_path(path).is_dir()


def isfile(path: PathLike) -> bool:
    """Whether `path` is a file."""
    return as_path(path).is_file()


def makedirs(path: PathLike) -> None:
    """Creates the folder `path` and its parents (no-op when it exists)."""
    as_path(path).mkdir(parents=True, exist_ok=True)


def listdir(path: PathLike) -> list[str]:
    """Names in the folder `path`, sorted; [] when it does not exist."""
    p = as_path(path)
    if not p.is_dir():
        return []
    return sorted(c.name for c in p.iterdir())


def walk_files(path: PathLike) -> Iterator[str]:
    """Paths (relative to `path`, `/`-separated) of every file under the folder `path`."""
    root = as_path(path)
    prefix = os.fspath(root).rstrip("/")
    for dirpath, _, names in root.walk():
        rel = os.fspath(dirpath)[len(prefix) :].strip("/")
        for name in names:
            yield f"{rel}/{name}" if rel else name


def size(path: PathLike) -> int:
    """Bytes in the file `path`."""
    return int(as_path(path).stat().length)


def remove(path: PathLike) -> None:
    """Deletes the file `path` (no error when it is already gone)."""
    with contextlib.suppress(FileNotFoundError):
        as_path(path).unlink()


def rmtree(path: PathLike) -> None:
    """Deletes the folder `path` and everything under it (no error when absent)."""
    p = as_path(path)
    if p.exists():
        p.rmtree()


def rename(src: PathLike, dst: PathLike) -> None:
    """Moves a file or folder to `dst`, which must not exist.

    On an object store, where there are no folders, a folder's objects are
    copied one by one and the originals deleted after the last copy.
    """
    if not is_url(src) or not isdir(src):
        as_path(src).rename(as_path(dst))
        return
    for rel in list(walk_files(src)):
        write_bytes(join(dst, rel), read_bytes(join(src, rel)))
    rmtree(src)


# ----------------------------------------------------------------------------- bytes
def read_bytes(path: PathLike) -> bytes:
    """The contents of the file `path`."""
    return as_path(path).read_bytes()


def read_text(path: PathLike) -> str:
    """The contents of the text file `path` (UTF-8)."""
    return read_bytes(path).decode("utf-8")


def write_bytes(path: PathLike, data: bytes) -> str:
    """Writes `data` to `path` whole (creating its folder); returns the resolved path.

    Locally through a temporary sibling renamed into place, so the file is
    either the old or the new one, never half of it; on an object store the
    upload itself is all-or-nothing.
    """
    path = resolve(path)
    p = epath.Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if is_url(path):
        p.write_bytes(data)
        return path
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    return path


def write_text(path: PathLike, text: str) -> str:
    """`write_bytes` of UTF-8 text."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: PathLike, obj: Any, indent: int | None = 2) -> str:
    """Writes `obj` as JSON (sorted keys, trailing newline), whole."""
    return write_text(path, json.dumps(obj, indent=indent, sort_keys=True) + "\n")


def read_json(path: PathLike) -> Any:
    """The JSON value in `path` (`json.JSONDecodeError` if it is not JSON)."""
    return json.loads(read_text(path))


# ----------------------------------------------------------------------------- arrays
def save_npy(path: PathLike, array: Any) -> str:
    """Writes one array as `.npy`, whole."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    return write_bytes(path, buf.getvalue())


def load_npy(path: PathLike) -> np.ndarray:
    """Reads an array written by `save_npy` (no pickles).

    Raises:
      FileNotFoundError: no file. ValueError: not a readable `.npy` (truncated, other data).
    """
    data = read_bytes(path)
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, EOFError, OSError, zipfile.BadZipFile) as e:
        raise ValueError(f"{resolve(path)} is not a readable .npy file ({e})") from None


def save_npz(path: PathLike, **arrays: Any) -> str:
    """Writes named arrays as `.npz`, whole."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return write_bytes(path, buf.getvalue())


def load_npz(path: PathLike) -> dict[str, np.ndarray]:
    """Reads every array of an `.npz` into memory (no pickles).

    Raises:
      FileNotFoundError: no file. ValueError: not a readable `.npz` (truncated, other data).
    """
    data = read_bytes(path)
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as f:
            if not hasattr(f, "files"):
                raise ValueError("one array, not an archive")
            return {k: f[k] for k in f.files}
    except (ValueError, EOFError, OSError, zipfile.BadZipFile) as e:
        raise ValueError(f"{resolve(path)} is not a readable .npz file ({e})") from None


# ----------------------------------------------------------------------------- pictures
def save_image(path: PathLike, image: np.ndarray) -> str:
    """Writes a uint8 [H, W, C] image (C = 1 or 3) as PNG, whole."""
    from PIL import Image

    img = image[..., 0] if image.shape[-1] == 1 else image
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return write_bytes(path, buf.getvalue())


def load_image(path: PathLike) -> Any:
    """The image in `path` as a loaded PIL image."""
    from PIL import Image

    with Image.open(io.BytesIO(read_bytes(path))) as img:
        img.load()
        return img.copy()


def save_figure(path: PathLike, fig: Any, dpi: int = 100) -> str:
    """Writes a matplotlib figure as PNG, whole."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return write_bytes(path, buf.getvalue())


@contextlib.contextmanager
def local_file(path: PathLike, suffix: str = "") -> Iterator[str]:
    """A local file name for a writer that needs one (ffmpeg); its bytes then go to `path`.

    Nothing is written to `path` when the block raises.
    """
    folder = tempfile.mkdtemp(prefix="facegan_")
    try:
        tmp = os.path.join(folder, "out" + suffix)
        yield tmp
        with open(tmp, "rb") as f:
            write_bytes(path, f.read())
    finally:
        shutil.rmtree(folder, ignore_errors=True)
