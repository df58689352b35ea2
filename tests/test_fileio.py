"""fileio on a local disk: whole-file writes leave no temporary files, arrays and JSON round
trip, an unreadable array file is one ValueError naming it (gs://: tests/test_gcs_workdir.py)."""

from __future__ import annotations

import numpy as np
import pytest

from facegan_jax import fileio


def test_writes_are_whole_and_round_trip(tmp_path):
    target = tmp_path / "a" / "b" / "x.npz"
    fileio.save_npz(target, w=np.arange(3.0), name=np.asarray("n"))
    fileio.save_npy(tmp_path / "a" / "p.npy", np.eye(2, dtype=np.float32))
    fileio.write_json(tmp_path / "a" / "c.json", {"k": [1, 2]})
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b", "c.json", "p.npy"]
    assert [p.name for p in (tmp_path / "a" / "b").iterdir()] == ["x.npz"]  # no temp left
    got = fileio.load_npz(target)
    np.testing.assert_array_equal(got["w"], np.arange(3.0))
    assert str(got["name"]) == "n"
    np.testing.assert_array_equal(fileio.load_npy(tmp_path / "a" / "p.npy"), np.eye(2))
    assert fileio.read_json(tmp_path / "a" / "c.json") == {"k": [1, 2]}
    assert fileio.listdir(tmp_path / "a") == ["b", "c.json", "p.npy"]
    assert sorted(fileio.walk_files(tmp_path / "a")) == ["b/x.npz", "c.json", "p.npy"]


def test_an_unreadable_array_file_names_itself(tmp_path):
    bad = tmp_path / "cut.npz"
    fileio.save_npz(bad, w=np.arange(1000.0))
    bad.write_bytes(bad.read_bytes()[:100])  # truncated
    with pytest.raises(ValueError, match=r"cut\.npz is not a readable \.npz file"):
        fileio.load_npz(bad)
    with pytest.raises(FileNotFoundError):
        fileio.load_npy(tmp_path / "missing.npy")


def test_a_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "keep.json"
    fileio.write_json(path, {"v": 1})

    def broken(fd, mode):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fileio.os, "fdopen", broken)
    with pytest.raises(OSError, match="No space"):
        fileio.write_json(path, {"v": 2})
    assert fileio.read_json(path) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["keep.json"]  # the temp file removed


def test_urls_are_kept_and_local_paths_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert fileio.resolve("gs://b/run") == "gs://b/run"
    assert fileio.resolve("run") == str(tmp_path / "run")
    assert fileio.join("gs://b/run/", "x", "y") == "gs://b/run/x/y"
