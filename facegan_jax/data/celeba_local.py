"""TFDS builder `celeba_local`: CelebA built offline from the files a user downloaded by hand.

This module owns turning the official CelebA "manual download" files (read and
checked by `celeba_files`, which needs no TensorFlow) into a TFDS dataset whose
`image` and `attributes` features are identical to TFDS's own `celeb_a` (so one
input pipeline reads both). It exists because TFDS's `celeb_a` downloads from Google Drive, which
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

from facegan_jax.data.celeba_files import (
    CELEBA_ATTRIBUTES,
    IMAGE_HEIGHT,
    IMAGE_WIDTH,
    OFFICIAL_URL,
    PARTITION_FILE,
    PARTITION_TO_SPLIT,
    CelebaInputError,
    ManualFiles,
    check_jpeg,
    load_manual_files,
)

# Images validated per batch of threaded work while building.
_CHUNK = 256


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
