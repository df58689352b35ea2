"""The race's parts that need no race: schedule, data, our wall-clock side, peer, table, CLI."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from facegan_jax.cli import args as args_lib
from tests.helpers import tiny_config
from tools import race, race_data, wallclock

# Minutes of training or subprocesses: outside the fast subset (`-m "not slow"`).
pytestmark = pytest.mark.slow


# ------------------------------------------------------------------------------ schedule
@pytest.mark.parametrize(
    "minutes,every,marks",
    [
        (30, 5, [300, 600, 900, 1200, 1500, 1800]),
        (1, 0.5, [30, 60]),
        (7, 5, [300, 420]),  # the last mark is the end, as in the peer script
        (2, 5, [120]),
        (0.75, 0.25, [15, 30, 45]),
    ],
)
def test_interval_marks_follow_the_peer_schedule(minutes, every, marks):
    assert wallclock.interval_marks(minutes, every) == marks


def test_interval_marks_reject_non_positive_budgets():
    for minutes, every in ((0, 5), (30, 0), (-1, 1)):
        with pytest.raises(race.RaceError, match="--minutes"):
            wallclock.interval_marks(minutes, every)


def test_mark_labels():
    assert [wallclock.mark_label(s) for s in (300, 30, 135)] == ["5min", "0.5min", "2.25min"]


# ------------------------------------------------------------------------------ data
def test_prepared_faces_are_the_peer_preprocessing_bit_for_bit(shared_data, inception_expected):
    train, names = race_data.prepare_split(shared_data / "celeba", "train", limit=6)
    assert train.shape == (6, 64, 64, 3) and train.dtype == np.uint8
    assert names == sorted(names) and names[0] == "000001.jpg"
    # pytorch-fid's fixture holds 6 real faces made by the peers' recipe (rows 20..198,
    # PIL bicubic to 64): the first six train-partition images.
    np.testing.assert_array_equal(train, inception_expected["images_uint8"][:6])
    # And the same by hand, from the zip.
    with zipfile.ZipFile(shared_data / "celeba" / "img_align_celeba.zip") as zf:
        img = Image.open(io.BytesIO(zf.read("img_align_celeba/000004.jpg"))).convert("RGB")
    by_hand = np.asarray(img.crop((0, 20, 178, 198)).resize((64, 64), Image.BICUBIC))
    np.testing.assert_array_equal(train[1], by_hand)


def test_validation_split_holds_partition_1_images_only(shared_data):
    partition = race_data.read_partition(shared_data / "celeba" / "list_eval_partition.txt")
    images, names = race_data.prepare_split(shared_data / "celeba", "validation", limit=3)
    assert images.shape == (3, 64, 64, 3)
    assert all(partition[n] == 1 for n in names) and names == sorted(names)


def _fake_celeba(folder, ids_and_splits):
    """A CelebA folder in the manual-download layout with tiny fake JPEGs."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(folder / "img_align_celeba.zip", "w") as zf:
        for image_id, _ in ids_and_splits:
            pixels = rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, "JPEG")
            zf.writestr(f"img_align_celeba/{image_id}", buf.getvalue())
    lines = [f"{i} {s}" for i, s in ids_and_splits] + ["999999.jpg 0"]  # listed, not in zip
    (folder / "list_eval_partition.txt").write_text("\r\n".join(lines) + "\r\n")


def test_arrays_are_prepared_once_and_again_when_the_data_changes(tmp_path):
    celeba = tmp_path / "celeba"
    _fake_celeba(celeba, [("000003.jpg", 0), ("000001.jpg", 0), ("000002.jpg", 1)])
    logs = []
    paths = race_data.cached_arrays(celeba, tmp_path / "cache", log=logs.append)
    train, val = np.load(paths["train"]), np.load(paths["validation"])
    assert train.shape == (2, 64, 64, 3) and val.shape == (1, 64, 64, 3)
    assert len(logs) == 2
    meta = json.loads((tmp_path / "cache" / "celeba64_meta.json").read_text())
    assert meta["train"]["first"] == ["000001.jpg"] and meta["train"]["count"] == 2
    race_data.cached_arrays(celeba, tmp_path / "cache", log=logs.append)
    assert len(logs) == 2  # cached
    _fake_celeba(celeba, [("000001.jpg", 0), ("000002.jpg", 1), ("000004.jpg", 1)])
    race_data.cached_arrays(celeba, tmp_path / "cache", log=logs.append)
    assert len(logs) == 4 and np.load(paths["validation"]).shape[0] == 2


def test_missing_celeba_folder_is_one_clear_error(tmp_path, capsys):
    rc = race.main(
        ["--out", str(tmp_path / "out"), "--celeba-dir", str(tmp_path / "nothing"), "--every", "1"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "img_align_celeba.zip" in err[0] and "README 'CelebA'" in err[0]


# ------------------------------------------------------------------------------ peer
def test_peer_progress_lines_are_parsed():
    line = "min=5.0 step=480 imgs=30720 d=0.812 g=2.531"
    assert race.parse_peer_line(line) == dict(
        elapsed_s=300.0, step=480, images=30720, d_loss=0.812, g_loss=2.531
    )
    assert race.parse_peer_line("Warning: something else") is None


def test_peer_samples_are_moved_per_mark_so_sub_minute_marks_survive(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "peer"
    raw.mkdir()
    out.mkdir()
    # With --every 0.5 the peer names both the 0.5 and the 1.0... mark 'samples_000min' or
    # 'samples_001min'; each is moved as soon as the peer reports it.
    for k, name in enumerate(["samples_000min.npy", "samples_001min.npy", "samples_001min.npy"]):
        np.save(raw / name, np.full((2, 64, 64, 3), k, np.uint8))
        assert race.collect_peer_sample(raw, out, k) == f"mark_{k:02d}.npy"
    assert [int(np.load(out / f"mark_{k:02d}.npy")[0, 0, 0, 0]) for k in range(3)] == [0, 1, 2]
    with pytest.raises(race.SideFailedError, match="no samples"):
        race.collect_peer_sample(raw, out, 3)


def test_missing_peer_venv_says_how_to_make_it(tmp_path):
    # A peer script that exists (a fresh clone has no ../shared/peers), a venv that does not.
    peer = tmp_path / "torch_dcgan_train.py"
    peer.write_text("")
    with pytest.raises(race.RaceError, match=r"peer venv not found.*-m venv \.venv-peers.*pip"):
        race.check_peer(str(tmp_path / "no-venv" / "bin" / "python"), str(peer))
    # And a missing peer script is named first.
    with pytest.raises(race.RaceError, match=r"--peer .*nothing\.py not found"):
        race.check_peer(str(tmp_path / "no-venv" / "bin" / "python"), str(tmp_path / "nothing.py"))


def test_missing_classifier_says_how_to_train_one(tmp_path):
    for folder in (None, str(tmp_path / "none")):
        with pytest.raises(race.RaceError, match="data_prep.train_attribute_classifier"):
            wallclock.load_classifier(folder)


def test_each_side_is_pinned_to_its_core_with_one_thread(tmp_path):
    env = wallclock.single_thread_env({"XLA_FLAGS": "--foo"})
    assert env["XLA_FLAGS"] == "--foo " + wallclock.SINGLE_THREAD_XLA
    assert "intra_op_parallelism_threads=1" in env["XLA_FLAGS"]
    assert env["OMP_NUM_THREADS"] == env["TF_NUM_INTRAOP_THREADS"] == "1"
    npy = tmp_path / "train.npy"
    ours = wallclock.pinned(
        wallclock.train_command("c.py", ["--config.x=1"], npy, tmp_path, 30.0, 5.0), 0
    )
    assert ours[:3] == ["taskset", "-c", "0"] and ours[4:6] == ["-m", "tools.wallclock"]
    assert "--config=c.py" in ours and "--config.x=1" in ours
    peer = wallclock.pinned(race.peer_command("py", "peer.py", npy, tmp_path, 30.0, 5.0), 1)
    assert peer[:5] == ["taskset", "-c", "1", "py", "peer.py"]
    assert peer[peer.index("--threads") + 1] == "1" and peer[peer.index("--minutes") + 1] == "30.0"


def test_config_overrides_pass_through_and_other_arguments_are_refused():
    args, overrides = args_lib.parse_with_overrides(
        race.build_parser(),
        ["--out", "o", "--minutes", "1", "--config.train.diffaugment=", "--config.loss.r1_gamma=1"],
    )
    assert args.minutes == 1.0 and overrides == [
        "--config.train.diffaugment=",
        "--config.loss.r1_gamma=1",
    ]
    with pytest.raises(SystemExit):
        args_lib.parse_with_overrides(race.build_parser(), ["--out", "o", "--bogus"])


def test_race_refuses_a_recipe_it_cannot_race():
    config = wallclock.load_config(str(race_data.DEFAULT_CONFIG), ["--config.data.image_size=32"])
    with pytest.raises(race.RaceError, match="64x64"):
        wallclock.check_config(config)
    with pytest.raises(race.RaceError, match="train.batch_sise"):
        wallclock.load_config(str(race_data.DEFAULT_CONFIG), ["--config.train.batch_sise=3"])


# ------------------------------------------------------------------------------ our side
def test_our_side_saves_ema_samples_and_progress_at_each_mark(tmp_path):
    config = tiny_config(**{"data.image_size": 8})
    data = np.random.default_rng(0).integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    logs = []
    # A fake clock: the start, then the end of steps 1..5. Step 5 jumps over the 45 s
    # mark and past the end: like the peer, it saves once, as the last save, and stops.
    clock = iter([0.0, 10.0, 20.0, 30.0, 40.0, 75.0]).__next__
    records = wallclock.train_for_marks(
        config, data, tmp_path, [15, 30, 45, 60], num_samples=12, log=logs.append, clock=clock
    )
    assert [(r["mark_s"], r["step"]) for r in records] == [(15, 2), (30, 3), (60, 5)]
    assert records[-1]["images"] == 5 * 8 and records[-1]["elapsed_s"] == 75.0
    for k, record in enumerate(records):
        samples = np.load(tmp_path / record["file"])
        assert record["file"] == f"mark_{k:02d}.npy"
        assert samples.shape == (12, 8, 8, 3) and samples.dtype == np.uint8
    assert json.loads((tmp_path / "marks.json").read_text()) == records
    parsed = race.parse_peer_line(logs[0])  # the peer's line format
    assert parsed is not None and (parsed["step"], parsed["images"]) == (2, 16)
    assert (tmp_path / "workdir" / "config.json").is_file()


# ------------------------------------------------------------------------------ summary
def _records(fd, fid=None, steps=(10, 20)):
    out = []
    for k, (mark, f) in enumerate(zip((300.0, 600.0), fd, strict=True)):
        r = dict(mark_s=mark, step=steps[k], images=steps[k] * 64, fd_attr=f)
        if fid is not None:
            r["fid"] = fid[k]
        out.append(r)
    return out


def test_summary_ratio_is_peer_over_ours_per_mark():
    rows = race.summarize(_records([4.0, 2.0], [100.0, 50.0]), _records([8.0, 3.0], [150.0, 75.0]))
    assert [r["ratio"]["fd_attr"] for r in rows] == [2.0, 1.5]
    assert [r["ratio"]["fid"] for r in rows] == [1.5, 1.5]
    table = race.format_table(rows, floor={"fd_attr": 0.5, "fid": 10.0})
    assert "peer/ours" in table[0] and "fd_attr" in table[1] and "FID" in table[1]
    assert table[3].split()[0] == "5min" and table[3].split()[-2:] == ["2.00", "1.50"]
    assert "real-data floor" in table[-1] and "0.50" in table[-1]


def test_summary_without_fid_and_with_a_mark_one_side_skipped():
    rows = race.summarize(_records([4.0, 2.0]), _records([2.0, 2.0]))
    assert [r["ratio"] for r in rows] == [{"fd_attr": 0.5}, {"fd_attr": 1.0}]
    assert "FID" not in race.format_table(rows)[1]
    # One peer step outlasted a whole interval: it saved only at the end (600 s).
    rows = race.summarize(_records([4.0, 2.0]), _records([3.0, 3.0])[1:])
    assert [r["mark_s"] for r in rows] == [300.0, 600.0]
    assert rows[0]["peer"] is None and rows[0]["ratio"] == {}
    assert rows[1]["ratio"] == {"fd_attr": 1.5}
    assert " - " in race.format_table(rows)[3]


def test_plot_is_written(tmp_path):
    series = {"ours": _records([4.0, 2.0], [100.0, 50.0]), "peer": _records([8.0, 3.0], [1.0, 2.0])}
    wallclock.plot_curves(series, tmp_path / "race.png", floor={"fd_attr": 0.5})
    with Image.open(tmp_path / "race.png") as img:
        assert img.size == (640, 720)  # fd_attr and FID panels
