"""Tests for the offline CelebA builder (`celeba_local`) and its CLI `data_prep.prepare_celeba`.

The shared 14,000-image subset (`../shared/data/celeba`, official layout) is built
once per session (~40 s on 2 cores); bad-input cases use small crafted copies.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_prep import prepare_celeba
from facegan_jax.data import celeba_files, celeba_local
from facegan_jax.data.celeba_attributes import CELEBA_ATTRIBUTES


@pytest.fixture(scope="session")
def shared_build(celeba_local_build):
    return celeba_local_build


def _attribute_rows(path: Path, ids: set[str]) -> dict[str, np.ndarray]:
    """Reads the rows of `ids` from the attribute file, independently of the code under test."""
    lines = path.read_text().splitlines()
    return {
        ln[:10]: np.array([int(v) > 0 for v in ln.split()[1:]])
        for ln in lines[2:]
        if ln[:10] in ids
    }


def test_subset_build_reports_present_and_skipped_counts(shared_build):
    builder, report = shared_build
    assert report.present == {"train": 12_000, "validation": 2_000, "test": 0}
    assert sum(report.missing.values()) == celeba_files.OFFICIAL_NUM_IMAGES - 14_000
    assert report.corrupt == []
    assert report.md5_status == {
        "list_attr_celeba.txt": "verified",
        "list_eval_partition.txt": "verified",
    }
    assert builder.info.splits["train"].num_examples == 12_000
    assert builder.info.splits["validation"].num_examples == 2_000
    assert "test" not in builder.info.splits  # empty splits are not created
    text = "\n".join(report.summary_lines())
    assert "train: 12,000  validation: 2,000  test: 0" in text
    assert "skipped 188,599 ids" in text


def test_sampled_ids_have_the_file_row_and_original_jpeg_bytes(shared_build, shared_data):
    builder, _ = shared_build
    ds = builder.as_dataset(split="validation", decoders={"image": tfds.decode.SkipDecoding()})
    examples = list(ds.take(200).as_numpy_iterator())
    ids = [ex["image_id"].decode() for ex in examples]
    rows = _attribute_rows(shared_data / "celeba" / "list_attr_celeba.txt", set(ids))
    with zipfile.ZipFile(shared_data / "celeba" / "img_align_celeba.zip") as archive:
        for i, (image_id, ex) in enumerate(zip(ids, examples)):
            got = np.array([ex["attributes"][name] for name in CELEBA_ATTRIBUTES])
            np.testing.assert_array_equal(got, rows[image_id], err_msg=image_id)
            if i < 20:  # stored bytes are the original JPEG, not a re-encoding
                assert ex["image"] == archive.read(f"img_align_celeba/{image_id}")


def _small_manual_dir(shared_data: Path, root: Path, *, as_folder: bool = False) -> dict:
    """Writes 12 real images (8 train, 4 validation) plus subset annotation files.

    One validation id is listed but has no image; with `as_folder` the images are
    extracted instead of zipped.
    """
    src = shared_data / "celeba"
    with zipfile.ZipFile(src / "img_align_celeba.zip") as archive:
        present = {os.path.basename(n) for n in archive.namelist() if n.endswith(".jpg")}
        partition = dict(
            ln.split()
            for ln in (src / "list_eval_partition.txt").read_text().split("\n")
            if ln.strip()
        )
        train = sorted(i for i in present if partition[i] == "0")[:8]
        val = sorted(i for i in present if partition[i] == "1")[:4]
        missing = next(i for i in sorted(partition) if partition[i] == "1" and i not in present)
        images = {i: archive.read(f"img_align_celeba/{i}") for i in train + val}
    root.mkdir(parents=True)
    if as_folder:
        (root / "img_align_celeba").mkdir()
        for i, data in images.items():
            (root / "img_align_celeba" / i).write_bytes(data)
    else:
        with zipfile.ZipFile(root / "img_align_celeba.zip", "w") as out:
            for i, data in images.items():
                out.writestr(f"img_align_celeba/{i}", data)
    listed = sorted([*train, *val, missing])
    attr_lines = (src / "list_attr_celeba.txt").read_text().splitlines()
    rows = [ln for ln in attr_lines[2:] if ln.split()[0] in set(listed)]
    (root / "list_attr_celeba.txt").write_text(
        "\n".join([str(len(rows)), attr_lines[1], *rows]) + "\n"
    )
    (root / "list_eval_partition.txt").write_text("".join(f"{i} {partition[i]}\n" for i in listed))
    return {"train": train, "validation": val, "missing": missing, "images": images}


def _replace_in_zip(path: Path, replacements: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path) as archive:
        contents = {n: archive.read(n) for n in archive.namelist()}
    with zipfile.ZipFile(path, "w") as out:
        for name, data in contents.items():
            out.writestr(name, replacements.get(os.path.basename(name), data))


def test_corrupt_jpegs_are_skipped_and_named(shared_data, tmp_path, capsys):
    manual = tmp_path / "manual"
    small = _small_manual_dir(shared_data, manual)
    garbage_id, truncated_id = small["train"][1], small["validation"][0]
    truncated = small["images"][truncated_id][: len(small["images"][truncated_id]) // 2]
    _replace_in_zip(
        manual / "img_align_celeba.zip",
        {garbage_id: b"\xff\xd8 not really a jpeg", truncated_id: truncated},
    )
    status = prepare_celeba.main(
        ["--manual-dir", str(manual), "--data-dir", str(tmp_path / "out"), "--no-progress"]
    )
    out = capsys.readouterr().out
    assert status == 0
    assert "train: 7  validation: 3  test: 0" in out
    assert "skipped 2 corrupt image(s):" in out
    assert f"{garbage_id}: cannot decode: not an image file" in out
    assert f"{truncated_id}: cannot decode: image file is truncated" in out
    assert "skipped 1 ids listed in list_eval_partition.txt with no image" in out
    assert "md5 list_attr_celeba.txt: not checked (13 rows" in out
    builder = celeba_local.CelebaLocal(data_dir=tmp_path / "out")
    stored = {
        ex["image_id"].decode()
        for split in ("train", "validation")
        for ex in builder.as_dataset(split=split).as_numpy_iterator()
    }
    assert stored == set(small["train"] + small["validation"]) - {garbage_id, truncated_id}


def test_extracted_folder_gives_the_same_dataset_as_the_zip(shared_data, tmp_path):
    small = _small_manual_dir(shared_data, tmp_path / "manual", as_folder=True)
    builder, report = celeba_local.prepare(
        tmp_path / "manual", tmp_path / "out", show_progress=False
    )
    assert report.image_source.name == "img_align_celeba"
    assert report.present == {"train": 8, "validation": 4, "test": 0}
    assert report.missing == {"train": 0, "validation": 1, "test": 0}
    ds = builder.as_dataset(split="train", decoders={"image": tfds.decode.SkipDecoding()})
    for ex in ds.as_numpy_iterator():
        assert ex["image"] == small["images"][ex["image_id"].decode()]


def test_existing_dataset_is_reused_not_overwritten(shared_data, tmp_path, capsys):
    _small_manual_dir(shared_data, tmp_path / "manual")
    args = [
        "--manual-dir",
        str(tmp_path / "manual"),
        "--data-dir",
        str(tmp_path / "out"),
        "--no-progress",
    ]
    assert prepare_celeba.main(args) == 0
    files = sorted((tmp_path / "out").rglob("*"))
    mtimes = [f.stat().st_mtime_ns for f in files]
    capsys.readouterr()
    assert prepare_celeba.main(args) == 0
    assert "already built" in capsys.readouterr().out
    assert sorted((tmp_path / "out").rglob("*")) == files
    assert [f.stat().st_mtime_ns for f in files] == mtimes


def _official_manual_dir(shared_data: Path, root: Path) -> Path:
    """A manual dir linking the official files, for one file to be replaced."""
    root.mkdir()
    for name in ("img_align_celeba.zip", "list_attr_celeba.txt", "list_eval_partition.txt"):
        os.symlink(shared_data / "celeba" / name, root / name)
    return root


def _expect_input_error(manual: Path, out_dir: Path, capsys, *fragments: str) -> None:
    status = prepare_celeba.main(["--manual-dir", str(manual), "--data-dir", str(out_dir)])
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert "\n" not in err and err.startswith("prepare_celeba: error: "), err  # one line
    for fragment in fragments:
        assert fragment in err, err
    assert not out_dir.exists()  # nothing written


def test_truncated_zip_is_a_one_line_error(shared_data, tmp_path, capsys):
    manual = _official_manual_dir(shared_data, tmp_path / "manual")
    zip_path = manual / "img_align_celeba.zip"
    data = zip_path.read_bytes()
    zip_path.unlink()
    zip_path.write_bytes(data[: len(data) // 2])
    _expect_input_error(
        manual, tmp_path / "out", capsys, "img_align_celeba.zip", "truncated", "download it again"
    )


def test_html_page_saved_as_the_zip_is_detected(shared_data, tmp_path, capsys):
    manual = _official_manual_dir(shared_data, tmp_path / "manual")
    (manual / "img_align_celeba.zip").unlink()
    (manual / "img_align_celeba.zip").write_text(
        "<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head></html>"
    )
    _expect_input_error(
        manual, tmp_path / "out", capsys, "img_align_celeba.zip: is an HTML page", "Google Drive"
    )


def test_html_page_saved_as_an_annotation_file_is_detected(shared_data, tmp_path, capsys):
    manual = _official_manual_dir(shared_data, tmp_path / "manual")
    (manual / "list_eval_partition.txt").unlink()
    (manual / "list_eval_partition.txt").write_text("\n  <html><body>Sorry...</body></html>")
    _expect_input_error(
        manual, tmp_path / "out", capsys, "list_eval_partition.txt: is an HTML page"
    )


def test_modified_full_attribute_file_fails_md5(shared_data, tmp_path, capsys):
    manual = _official_manual_dir(shared_data, tmp_path / "manual")
    attr = manual / "list_attr_celeba.txt"
    data = attr.read_bytes()
    attr.unlink()
    at = data.index(b"000001.jpg") + len(b"000001.jpg")
    flipped = data[:at] + data[at:].replace(b" 1", b"-1", 1)
    attr.write_bytes(flipped)
    _expect_input_error(manual, tmp_path / "out", capsys, "list_attr_celeba.txt: md5", "differs")


def test_truncated_attribute_file_is_an_error(shared_data, tmp_path, capsys):
    manual = tmp_path / "manual"
    _small_manual_dir(shared_data, manual)
    attr = manual / "list_attr_celeba.txt"
    attr.write_text("\n".join(attr.read_text().splitlines()[:-3]) + "\n")
    _expect_input_error(manual, tmp_path / "out", capsys, "list_attr_celeba.txt: declares 13")


def test_malformed_attribute_row_is_an_error_naming_the_line(shared_data, tmp_path, capsys):
    manual = tmp_path / "manual"
    _small_manual_dir(shared_data, manual)
    attr = manual / "list_attr_celeba.txt"
    lines = attr.read_text().splitlines()
    lines[4] = lines[4].replace(" 1", " 2", 1)
    attr.write_text("\n".join(lines) + "\n")
    _expect_input_error(manual, tmp_path / "out", capsys, "list_attr_celeba.txt: line 5 is not")


def test_missing_image_source_is_an_error(shared_data, tmp_path):
    manual = tmp_path / "manual"
    _small_manual_dir(shared_data, manual)
    (manual / "img_align_celeba.zip").unlink()
    with pytest.raises(celeba_files.CelebaInputError, match=r"neither img_align_celeba\.zip"):
        celeba_files.load_manual_files(manual)
    shutil.rmtree(manual)
