"""CelebA's official files: reading and checking them, without TensorFlow.

This module owns what the official "manual download" of aligned CelebA is: the
file names, the geometry of the images (178x218, and the 178x178 face square the
recipes crop), the annotation parsers (`read_attribute_file`,
`read_partition_file`), the md5 check of complete files, the image-source
discovery (zip or folder) and the JPEG check (`check_jpeg`). The TFDS builder
(`celeba_local`) and the race's array cache (`tools.race_data`) both read the
files through it; it imports neither TensorFlow nor TFDS, so a command that only
reads the files starts in a fraction of a second.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from facegan_jax.data.celeba_attributes import CELEBA_ATTRIBUTES

IMAGES_ZIP = "img_align_celeba.zip"
IMAGES_DIR = "img_align_celeba"
ATTR_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
# Row count of the complete official annotation files.
OFFICIAL_NUM_IMAGES = 202_599
# md5 of the official files: as distributed (CRLF) and with LF line endings
# (what some mirrors and `dos2unix` produce); both hold the same annotations.
OFFICIAL_MD5: dict[str, tuple[str, ...]] = {
    ATTR_FILE: ("75e246fa4810816ffd6ee81facbd244c", "a4e5201f269a1b3f73f9e9b8f6f62e09"),
    PARTITION_FILE: ("d32c9cbf5e040fd4025c592c306e6668", "be94fe8e502ac478aba4274aa7d31b9e"),
}
IMAGE_HEIGHT, IMAGE_WIDTH = 218, 178
PARTITION_TO_SPLIT: dict[int, str] = {0: "train", 1: "validation", 2: "test"}
OFFICIAL_URL = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"


# The face square of aligned CelebA (218x178): rows 20..197, full width, as (top, left,
# height, width) (`config.data.crop='celeba_178'`; tools.race_data crops the same square).
CELEBA_178_BOX = (20, 0, 178, 178)


class CelebaInputError(ValueError):
    """A manual-download file is missing, truncated, an HTML page or inconsistent."""


@dataclasses.dataclass(frozen=True)
class ManualFiles:
    """The validated manual-download inputs.

    Attributes:
      manual_dir: folder holding the files.
      image_source: the zip or folder the images are read from.
      image_locations: image id ("000001.jpg") -> zip member name or file path.
      attribute_rows: image id -> 40 values in {-1, 1}, in `CELEBA_ATTRIBUTES` order.
      split_ids: split name -> sorted image ids listed for it in the partition file.
      md5_status: annotation file name -> "verified" or why it was not checked.
    """

    manual_dir: Path
    image_source: Path
    image_locations: dict[str, str]
    attribute_rows: dict[str, np.ndarray]
    split_ids: dict[str, list[str]]
    md5_status: dict[str, str]

    @property
    def is_zip(self) -> bool:
        return self.image_source.suffix == ".zip"


def _looks_like_html(head: bytes) -> bool:
    """True for the start of an HTML page (e.g. Google Drive's quota/virus-scan page)."""
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return text.startswith((b"<!doctype html", b"<html", b"<head", b"<!--", b"<meta")) or (
        b"<html" in text[:1024]
    )


def _check_not_html_or_empty(path: Path) -> None:
    """Raises `CelebaInputError` if `path` is missing, empty or an HTML page."""
    if not path.is_file():
        raise CelebaInputError(f"{path}: file not found (download it from {OFFICIAL_URL})")
    with path.open("rb") as f:
        head = f.read(2048)
    if not head:
        raise CelebaInputError(f"{path}: file is empty; download it again")
    if _looks_like_html(head):
        raise CelebaInputError(
            f"{path}: is an HTML page, not the CelebA file (Google Drive often saves its "
            f"quota/virus-scan page in place of the download); download it again by hand "
            f"from {OFFICIAL_URL}"
        )


def _md5_status(path: Path, data: bytes, num_rows: int) -> str:
    """Verifies the md5 of a full official annotation file; subsets are not checked."""
    if num_rows != OFFICIAL_NUM_IMAGES:
        return f"not checked ({num_rows:,} rows, not the full {OFFICIAL_NUM_IMAGES:,}-row original)"
    digest = hashlib.md5(data).hexdigest()
    if digest not in OFFICIAL_MD5[path.name]:
        raise CelebaInputError(
            f"{path}: md5 {digest} differs from the official {OFFICIAL_MD5[path.name][0]}; "
            "the file is modified or corrupt, download it again"
        )
    return "verified"


def _read_text(path: Path) -> tuple[bytes, list[str]]:
    _check_not_html_or_empty(path)
    data = path.read_bytes()
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise CelebaInputError(f"{path}: not a CelebA text annotation file") from None
    return data, [line for line in text.splitlines() if line.strip()]


def read_attribute_file(path: Path) -> tuple[dict[str, np.ndarray], str]:
    """Parses `list_attr_celeba.txt`.

    Args:
      path: the attribute file (count line, header of 40 names, one row per image).

    Returns:
      (image id -> int8 [40] values in {-1, 1} in `CELEBA_ATTRIBUTES` order, md5 status).
    """
    data, lines = _read_text(path)
    if len(lines) < 2 or not lines[0].strip().isdigit():
        raise CelebaInputError(f"{path}: first line should be the image count")
    declared, num_rows = int(lines[0]), len(lines) - 2
    if tuple(lines[1].split()) != CELEBA_ATTRIBUTES:
        raise CelebaInputError(
            f"{path}: header does not list the 40 CelebA attributes in the official order"
        )
    if num_rows != declared:
        raise CelebaInputError(
            f"{path}: declares {declared:,} images but lists {num_rows:,} "
            "(truncated download?); download it again"
        )
    md5_status = _md5_status(path, data, num_rows)  # before the slower parse
    # Vectorised parse (the full file has 8.3M values; a per-row Python loop takes seconds).
    width = len(CELEBA_ATTRIBUTES) + 1
    tokens = data.split(b"\n", 2)[2].split()
    bad_row = None
    if len(tokens) != num_rows * width:
        bad_row = next(n for n, line in enumerate(lines[2:]) if len(line.split()) != width)
    else:
        table = np.array(tokens).reshape(-1, width)  # [N, 1 + 40] bytes: id, values
        valid_rows = ((table[:, 1:] == b"1") | (table[:, 1:] == b"-1")).all(axis=1)
        if not valid_rows.all():
            bad_row = int(np.argmin(valid_rows))
    if bad_row is not None:
        raise CelebaInputError(
            f"{path}: line {bad_row + 3} is not an image id followed by 40 values of 1/-1"
        )
    values = np.where(table[:, 1:] == b"1", 1, -1).astype(np.int8)  # [N, 40]
    ids = [image_id.decode() for image_id in table[:, 0]]
    return dict(zip(ids, values)), md5_status


def read_partition_file(path: Path) -> tuple[dict[str, list[str]], str]:
    """Parses `list_eval_partition.txt` (`<id> <0|1|2>` per line).

    Args:
      path: the partition file.

    Returns:
      (split name -> sorted image ids, md5 status).
    """
    data, lines = _read_text(path)
    split_ids: dict[str, list[str]] = {name: [] for name in PARTITION_TO_SPLIT.values()}
    for line_no, line in enumerate(lines, start=1):
        fields = line.split()
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise CelebaInputError(f"{path}: line {line_no} is not '<image id> <0|1|2>'")
        split_ids[PARTITION_TO_SPLIT[int(fields[1])]].append(fields[0])
    for ids in split_ids.values():
        ids.sort()
    return split_ids, _md5_status(path, data, len(lines))


def _zip_image_locations(path: Path) -> dict[str, str]:
    _check_not_html_or_empty(path)
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as e:
        raise CelebaInputError(
            f"{path}: not a complete zip archive ({e}); the download is truncated or "
            "corrupt, download it again"
        ) from None
    return {os.path.basename(n): n for n in names if n.lower().endswith(".jpg")}


def _folder_image_locations(folder: Path) -> dict[str, str]:
    nested = (
        folder / IMAGES_DIR
    )  # the Kaggle archive extracts to img_align_celeba/img_align_celeba/
    if nested.is_dir():
        folder = nested
    return {
        entry.name: entry.path
        for entry in os.scandir(folder)
        if entry.is_file() and entry.name.lower().endswith(".jpg")
    }


def load_manual_files(manual_dir: str | os.PathLike[str]) -> ManualFiles:
    """Validates the manual-download files and indexes the images.

    Args:
      manual_dir: folder with the zip (or extracted folder) and the two annotation files.

    Returns:
      The parsed annotations and the location of every image present.

    Raises:
      CelebaInputError: one line naming the bad file (see the module docstring).
    """
    manual_dir = Path(manual_dir)
    if not manual_dir.is_dir():
        raise CelebaInputError(f"{manual_dir}: manual_dir is not a folder")
    # Cheapest checks first, so a bad download is reported in well under a second.
    for name in (ATTR_FILE, PARTITION_FILE):
        _check_not_html_or_empty(manual_dir / name)
    zip_path, folder = manual_dir / IMAGES_ZIP, manual_dir / IMAGES_DIR
    if zip_path.exists():
        source, locations = zip_path, _zip_image_locations(zip_path)
    elif folder.is_dir():
        source, locations = folder, _folder_image_locations(folder)
    else:
        raise CelebaInputError(
            f"{manual_dir}: neither {IMAGES_ZIP} nor {IMAGES_DIR}/ found "
            f"(download them from {OFFICIAL_URL})"
        )
    split_ids, partition_md5 = read_partition_file(manual_dir / PARTITION_FILE)
    attribute_rows, attr_md5 = read_attribute_file(manual_dir / ATTR_FILE)
    for ids in split_ids.values():
        unannotated = [i for i in ids if i not in attribute_rows]
        if unannotated:
            raise CelebaInputError(
                f"{manual_dir / PARTITION_FILE}: {len(unannotated):,} ids (e.g. {unannotated[0]}) "
                f"have no row in {ATTR_FILE}; the two annotation files do not match"
            )
    return ManualFiles(
        manual_dir=manual_dir,
        image_source=source,
        image_locations=locations,
        attribute_rows=attribute_rows,
        split_ids=split_ids,
        md5_status={ATTR_FILE: attr_md5, PARTITION_FILE: partition_md5},
    )


def check_jpeg(data: bytes) -> str | None:
    """Returns why `data` is not a usable aligned-CelebA JPEG, or None if it is.

    The image is fully decoded (PIL, which like TF rejects truncated data) so that
    nothing that would stop training at decode time gets into the dataset.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "JPEG":
                return f"not a JPEG ({image.format})"
            if image.size != (IMAGE_WIDTH, IMAGE_HEIGHT):
                return (
                    f"size {image.size[0]}x{image.size[1]}, expected {IMAGE_WIDTH}x{IMAGE_HEIGHT}"
                )
            if image.mode not in ("RGB", "L"):
                return f"unsupported colour mode {image.mode}"
            image.load()
    except UnidentifiedImageError:
        return "cannot decode: not an image file"
    except Exception as e:  # PIL raises many types for bad data; all mean "skip it".
        return f"cannot decode: {e}"
    return None
