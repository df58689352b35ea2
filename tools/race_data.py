"""The CelebA arrays of the race and the ablation: the peer's preprocessing, cached.

The 12,000 train-partition images of a CelebA folder and its 2,000 validation
ones, rows 20..198 cropped (178x178) and resized to 64x64 with PIL bicubic,
exactly what ../shared/peers/README.md says the PyTorch peer reads; decoded once
per folder into uint8 .npy files that both sides (and every ablation variant)
read.
"""

from __future__ import annotations

import io
import json
import os
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from facegan_jax.data import celeba_files
from facegan_jax.data.celeba_files import CELEBA_178_BOX
from facegan_jax.errors import RaceError

# The harness runs from a checkout (it is not installed): its defaults are the checkout's
# `configs/` and the shared folder beside it, or wherever FACEGAN_SHARED points.
REPO_ROOT = Path(__file__).resolve().parent.parent
# The recipe the race and the ablation train by default.
DEFAULT_CONFIG = str(REPO_ROOT / "configs" / "celeba64_fast.py")
SHARED = Path(os.environ.get("FACEGAN_SHARED", str(REPO_ROOT.parent / "shared")))
DEFAULT_CELEBA = str(SHARED / "data" / "celeba")
DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "facegan_jax", "race")

IMAGE_SIZE = 64


# PIL's (left, upper, right, lower) of the library's CELEBA_178_BOX (top, left, height, width).
_TOP, _LEFT, _H, _W = CELEBA_178_BOX
CROP_BOX = (_LEFT, _TOP, _LEFT + _W, _TOP + _H)  # (0, 20, 178, 198)


SPLITS = {"train": 0, "validation": 1}  # list_eval_partition.txt codes


ZIP_FOLDER = "img_align_celeba/"


def read_partition(path: str | os.PathLike) -> dict[str, int]:
    """`list_eval_partition.txt` -> {'000001.jpg': 0, ...} (the library's parser)."""
    split_ids, _ = celeba_files.read_partition_file(Path(path))
    code = {name: c for c, name in celeba_files.PARTITION_TO_SPLIT.items()}
    return {image_id: code[name] for name, ids in split_ids.items() for image_id in ids}


def split_members(zip_names: Sequence[str], partition: dict[str, int], split: str) -> list[str]:
    """The zip members of `split` ('train' or 'validation'), sorted by image id."""
    code = SPLITS[split]
    names = [
        n
        for n in zip_names
        if n.startswith(ZIP_FOLDER) and partition.get(n[len(ZIP_FOLDER) :]) == code
    ]
    return sorted(names)


def face64(jpeg: bytes) -> np.ndarray:
    """One aligned CelebA JPEG -> uint8 [64, 64, 3]: rows 20..198, PIL bicubic to 64."""
    from PIL import Image

    with Image.open(io.BytesIO(jpeg)) as img:
        img = img.convert("RGB").crop(CROP_BOX)
        return np.asarray(img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC), np.uint8)


def check_celeba_dir(celeba_dir: str | os.PathLike) -> tuple[Path, Path]:
    """(zip, partition file) of `celeba_dir`; RaceError naming what is missing."""
    folder = Path(celeba_dir)
    archive, partition = folder / "img_align_celeba.zip", folder / "list_eval_partition.txt"
    missing = [p.name for p in (archive, partition) if not p.is_file()]
    if missing:
        raise RaceError(
            f"--celeba-dir {folder}: {', '.join(missing)} not found; it needs CelebA's "
            "img_align_celeba.zip and list_eval_partition.txt (README 'CelebA'; the shared "
            "subset is ../shared/data/celeba)"
        )
    return archive, partition


def prepare_split(
    celeba_dir: str | os.PathLike, split: str, limit: int | None = None
) -> tuple[np.ndarray, list[str]]:
    """Decodes `split`'s images of the CelebA folder into uint8 [N, 64, 64, 3].

    Args:
      celeba_dir: folder with img_align_celeba.zip and list_eval_partition.txt.
      split: 'train' or 'validation'.
      limit: the first `limit` images by id only (None: all in the zip).

    Returns:
      (images, file names such as '000001.jpg'), in id order.
    """
    archive, partition_file = check_celeba_dir(celeba_dir)
    partition = read_partition(partition_file)
    with zipfile.ZipFile(archive) as zf:
        members = split_members(zf.namelist(), partition, split)[:limit]
        images = np.zeros((len(members), IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
        for i, name in enumerate(members):
            images[i] = face64(zf.read(name))
    return images, [m[len(ZIP_FOLDER) :] for m in members]


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


def cached_arrays(
    celeba_dir: str | os.PathLike, cache_dir: str | os.PathLike, log: Callable[[str], None] = print
) -> dict[str, Path]:
    """The train and validation arrays (.npy), prepared once per CelebA folder and cached.

    The cache is keyed by the zip's and partition file's size and mtime; a
    changed folder is prepared again.

    Returns:
      {'train': path, 'validation': path}.
    """
    archive, partition = check_celeba_dir(celeba_dir)
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    key = {
        "celeba_dir": str(Path(celeba_dir).resolve()),
        "zip": [archive.stat().st_size, archive.stat().st_mtime_ns],
        "partition": [partition.stat().st_size, partition.stat().st_mtime_ns],
        "crop_box": list(CROP_BOX),
        "size": IMAGE_SIZE,
        "resample": "PIL bicubic",
    }
    meta_path = cache / "celeba64_meta.json"
    paths = {split: cache / f"celeba64_{split}.npy" for split in SPLITS}
    if meta_path.is_file() and all(p.is_file() for p in paths.values()):
        with open(meta_path) as f:
            if json.load(f).get("key") == key:
                return paths
    meta: dict[str, Any] = {"key": key}
    for split, path in paths.items():
        start = time.perf_counter()
        images, names = prepare_split(celeba_dir, split)
        _save_npy_atomic(path, images)
        meta[split] = {"count": len(names), "first": names[:1], "last": names[-1:]}
        log(f"prepared {len(names)} {split} images -> {path} ({time.perf_counter() - start:.0f} s)")
    with open(meta_path, "w") as f:
        json.dump(meta, f, indent=2)
    return paths


def to_float(images: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, C] -> float32 in [-1, 1] (x / 127.5 - 1, as the peer scales)."""
    return images.astype(np.float32) / 127.5 - 1.0
