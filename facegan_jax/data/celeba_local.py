"""TFDS builder `celeba_local`: CelebA built offline from the files a user downloaded by hand.

This module owns reading and validating the official CelebA "manual download"
files and turning them into a TFDS dataset whose `image` and `attributes`
features are identical to TFDS's own `celeb_a` (so one input pipeline reads
both). It exists because TFDS's `celeb_a` downloads from Google Drive, which
often answers with an HTML quota page saved in place of the zip
(tensorflow/datasets#1271, #1482).

Inputs, in `manual_dir`:
  - `img_align_celeba.zip` (preferred when present) or the extracted folder
    `img_align_celeba/` (also the nested `img_align_celeba/img_align_celeba/`);
  - `list_attr_celeba.txt` and `list_eval_partition.txt` (official text files).

Outcome for each kind of input (tested in tests/test_celeba_local.py):
  - An HTML page saved in place of any file, an empty file, a truncated or
    otherwise unreadable zip, a missing file, malformed or inconsistent
    annotation rows, or a full (202,599-row) annotation file whose md5 differs
    from the official one: `CelebaInputError`, one line naming the file, raised
    before anything is written.
  - Annotation files that are not the full originals (fewer rows, e.g. a
    hand-made subset): accepted, md5 not checked, and the summary says so.
  - Ids listed in `list_eval_partition.txt` with no image in the zip/folder:
    skipped and counted per split (a subset download is valid input).
  - An image that cannot be read (zip CRC error), is not a JPEG, does not
    decode completely (e.g. truncated), or is not 178x218: skipped and named in
    the report; the build goes on. The original JPEG bytes of every good image
    are stored unchanged (no re-encoding).
  - A split with no images (the shared subset has no test images) is not
    created; the report lists it with 0 images.

Splits: train (partition 0), validation (1), test (2). Each example also stores
its `image_id` (e.g. "000001.jpg").
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import os
import time
import zipfile
import zlib
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
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
# Images validated per batch of threaded work while building.
_CHUNK = 256
OFFICIAL_URL = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"


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


@dataclasses.dataclass
class BuildReport:
    """What a build wrote and skipped.

    Attributes:
      present: split -> images written.
      missing: split -> ids listed in the partition file with no image.
      corrupt: (image id, reason) for every unreadable image that was skipped.
      unlisted_images: images in the source that no annotation lists (ignored).
      md5_status: annotation file -> "verified" or why it was not checked.
      image_source: the zip or folder the images came from.
      seconds: wall time of the build.
    """

    present: dict[str, int]
    missing: dict[str, int]
    corrupt: list[tuple[str, str]]
    unlisted_images: int
    md5_status: dict[str, str]
    image_source: Path
    seconds: float = 0.0

    def summary_lines(self) -> list[str]:
        """Returns the human-readable summary printed by `data_prep.prepare_celeba`."""
        splits = "  ".join(f"{s}: {self.present.get(s, 0):,}" for s in PARTITION_TO_SPLIT.values())
        lines = [
            f"images written per split -> {splits}",
            f"skipped {sum(self.missing.values()):,} ids listed in {PARTITION_FILE} with no image "
            f"in {self.image_source.name} ("
            + ", ".join(f"{s}: {self.missing.get(s, 0):,}" for s in PARTITION_TO_SPLIT.values())
            + ")",
            f"skipped {len(self.corrupt)} corrupt image(s)" + (":" if self.corrupt else ""),
        ]
        lines += [f"  {image_id}: {reason}" for image_id, reason in self.corrupt]
        if self.unlisted_images:
            lines.append(f"ignored {self.unlisted_images:,} images not listed in {PARTITION_FILE}")
        lines += [f"md5 {name}: {status}" for name, status in self.md5_status.items()]
        lines.append(f"build time: {self.seconds:.1f} s")
        return lines


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


class CelebaLocal(tfds.core.GeneratorBasedBuilder):
    """CelebA (aligned and cropped, with 40 attributes) from manually downloaded files."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        "1.0.0": "Image, 40 attributes and image id, from the official files."
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
    Download from {OFFICIAL_URL} (Google Drive / Baidu "Align&Cropped Images" and "Anno",
    "Eval") into one folder:
      img_align_celeba.zip (or the extracted img_align_celeba/ folder)
      list_attr_celeba.txt
      list_eval_partition.txt
    then run: python -m data_prep.prepare_celeba --manual-dir <that folder> --data-dir <out>
    """

    def __init__(self, *, show_progress: bool = True, **kwargs) -> None:
        """Creates the builder.

        Args:
          show_progress: show a per-split tqdm progress bar while building.
          **kwargs: `tfds.core.GeneratorBasedBuilder` arguments (`data_dir`, ...).
        """
        self._show_progress = show_progress
        self._manual_files: ManualFiles | None = None
        self.build_report: BuildReport | None = None
        super().__init__(**kwargs)

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        """This file. Overridden because TFDS 4.9.10's own lookup imports `importlib_resources`,
        which it only declares as a dependency for Python < 3.9 (ModuleNotFoundError on 3.11)."""
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    # Same image and attribute features as TFDS's celeb_a.
                    "image": tfds.features.Image(
                        shape=(IMAGE_HEIGHT, IMAGE_WIDTH, 3), encoding_format="jpeg"
                    ),
                    "attributes": {name: np.bool_ for name in CELEBA_ATTRIBUTES},
                    "image_id": tfds.features.Text(),
                }
            ),
            homepage=OFFICIAL_URL,
        )

    def manual_files(self, manual_dir: str | os.PathLike[str]) -> ManualFiles:
        """Validates `manual_dir` once per builder (the CLI calls this before building)."""
        if self._manual_files is None or self._manual_files.manual_dir != Path(manual_dir):
            self._manual_files = load_manual_files(manual_dir)
        return self._manual_files

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        files = self.manual_files(dl_manager.manual_dir)
        present = {
            split: [i for i in ids if i in files.image_locations]
            for split, ids in files.split_ids.items()
        }
        listed = {i for ids in files.split_ids.values() for i in ids}
        self.build_report = BuildReport(
            present={split: 0 for split in present},
            missing={
                split: len(files.split_ids[split]) - len(ids) for split, ids in present.items()
            },
            corrupt=[],
            unlisted_images=sum(1 for i in files.image_locations if i not in listed),
            md5_status=dict(files.md5_status),
            image_source=files.image_source,
        )
        if not any(present.values()):
            raise CelebaInputError(
                f"{files.image_source}: holds none of the images listed in {PARTITION_FILE}"
            )
        # TFDS rejects empty splits, so a split with no images is simply not created.
        return {
            split: self._generate_examples(split, ids, files)
            for split, ids in present.items()
            if ids
        }

    def _generate_examples(self, split: str, image_ids: list[str], files: ManualFiles) -> Iterator:
        from tqdm.auto import tqdm  # a dependency of TFDS

        report = self.build_report
        assert report is not None
        archive = zipfile.ZipFile(files.image_source) if files.is_zip else None

        def load(image_id: str) -> tuple[bytes | None, str | None]:
            location = files.image_locations[image_id]
            try:
                data = archive.read(location) if archive else Path(location).read_bytes()
            except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as e:
                return None, f"cannot read: {e}"
            return data, check_jpeg(data)

        progress = tqdm(
            total=len(image_ids),
            desc=f"celeba_local {split}",
            unit="img",
            disable=not self._show_progress,
        )
        # Decoding to validate releases the GIL: check a chunk in threads while TFDS serialises.
        with archive or contextlib.nullcontext(), futures.ThreadPoolExecutor(2) as pool, progress:
            for start in range(0, len(image_ids), _CHUNK):
                chunk = image_ids[start : start + _CHUNK]
                for image_id, (data, problem) in zip(chunk, pool.map(load, chunk)):
                    progress.update(1)
                    if problem:
                        report.corrupt.append((image_id, problem))
                        continue
                    report.present[split] += 1
                    row = files.attribute_rows[image_id]
                    yield (
                        image_id,
                        {
                            "image": data,  # original JPEG bytes, stored as-is
                            "attributes": {n: bool(v > 0) for n, v in zip(CELEBA_ATTRIBUTES, row)},
                            "image_id": image_id,
                        },
                    )


def prepare(
    manual_dir: str | os.PathLike[str],
    data_dir: str | os.PathLike[str] | None,
    *,
    show_progress: bool = True,
) -> tuple[CelebaLocal, BuildReport | None]:
    """Builds `celeba_local` into `data_dir` unless it is already there.

    Args:
      manual_dir: folder with the official files.
      data_dir: TFDS data_dir (None: TFDS's default).
      show_progress: show progress bars.

    Returns:
      (the prepared builder, the build report; None if an existing build was reused,
      which is never overwritten).

    Raises:
      CelebaInputError: bad manual files (nothing is written).
    """
    builder = CelebaLocal(data_dir=data_dir, show_progress=show_progress)
    # Checking the file first avoids TFDS's absl warning about a missing variant folder.
    if (builder.data_path / "dataset_info.json").exists() and builder.is_prepared():
        return builder, None
    start = time.perf_counter()
    builder.manual_files(manual_dir)  # validate before TFDS creates any folder
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir))
    )
    report = builder.build_report
    assert report is not None
    report.seconds = time.perf_counter() - start
    # Reopen so `info.splits` reflects the files just written.
    return CelebaLocal(data_dir=data_dir, show_progress=show_progress), report
