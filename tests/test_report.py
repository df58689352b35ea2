"""The run report: scalars read back from TensorBoard files, curves, progress GIF, HTML page."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from absl.testing import absltest  # noqa: F401  (absl logging handler for captured logs)
from clu import metric_writers
from PIL import Image

from facegan_jax import workdir as workdir_lib
from facegan_jax.cli import report as report_cli
from facegan_jax.generation import sampling
from facegan_jax.report import run_report as report
from facegan_jax.training import train
from tests.helpers import tiny_config

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, synth_tfds_dir):
    """`configs/default.py:runlocal` trained for its 6 steps, a grid every 3 steps."""
    root = tmp_path_factory.mktemp("report")
    config = tiny_config(**{"data.tfds_data_dir": synth_tfds_dir})
    assert (config.total_steps, config.sample_every_steps, config.log_every_steps) == (6, 3, 2)
    workdir = root / "run"
    train.train_and_evaluate(config, str(workdir))
    return workdir


def test_report_of_a_tiny_run(tiny_run):
    paths = report.write_report(tiny_run)
    out = tiny_run / "report"
    assert paths == {
        "curves": str(out / "curves.png"),
        "progress": str(out / "progress.gif"),
        "index": str(out / "index.html"),
    }
    scalars = report.read_scalars(tiny_run)
    for tag in ("train/d_loss", "train/g_loss", "train/d_real", "train/d_fake"):
        np.testing.assert_array_equal(scalars[tag].steps, [2, 4, 6])
        assert np.all(np.isfinite(scalars[tag].values))
    assert "samples" not in scalars and not any(t.startswith("_hparams_") for t in scalars)

    with Image.open(paths["curves"]) as curves:
        assert curves.width >= 800 and curves.height >= 300
    grids = report.control_grids(tiny_run)
    assert [s for s, _ in grids] == [3, 6]
    with Image.open(paths["progress"]) as gif:
        assert gif.n_frames == len(grids)
        gif.seek(gif.n_frames - 1)
        last = np.asarray(gif.convert("RGB"))
    grid = np.asarray(Image.open(workdir_lib.sample_grid_path(tiny_run, 6)).convert("RGB"))
    assert last.shape[1] == grid.shape[1] and last.shape[0] > grid.shape[0]  # + caption strip
    # Below the caption the frame is the grid (GIF palette: near, not exact).
    strip = last.shape[0] - grid.shape[0]
    assert np.abs(last[strip:].astype(int) - grid.astype(int)).mean() < 8

    page = (out / "index.html").read_text()
    for needle in ("curves.png", "progress.gif", "train/d_loss", "../samples/step_0000006.png"):
        assert needle in page
    assert "&quot;total_steps&quot;: 6" in page  # config.json, pretty-printed and escaped


def test_cli_writes_the_report_and_rejects_a_non_workdir(tiny_run, tmp_path, capsys):
    assert report_cli.main(["--workdir", str(tiny_run)]) == 0
    assert "progress: " in capsys.readouterr().out
    assert report_cli.main(["--workdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config.json not found" in err[0]


def test_python_m_facegan_jax_report_runs_the_cli():
    proc = subprocess.run(
        [sys.executable, "-m", "facegan_jax.report", "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "--memorization" in proc.stdout and "--workdir" in proc.stdout


def test_a_resumed_run_replaces_the_steps_it_repeats(tmp_path):
    first = metric_writers.create_default_writer(str(tmp_path))
    for step in (10, 20, 30):
        first.write_scalars(step, {"train/d_loss": float(step), "eval/fid": 100.0 - step})
    first.write_images(30, {"samples": np.zeros((1, 4, 4, 3), np.uint8)})
    first.flush()
    first.close()
    second = metric_writers.create_default_writer(str(tmp_path))
    for step in (20, 40):  # resumed from the checkpoint at step 10
        second.write_scalars(step, {"train/d_loss": step + 0.5})
    second.flush()
    second.close()
    assert len(report.event_files(tmp_path)) == 2
    scalars = report.read_scalars(tmp_path)
    np.testing.assert_array_equal(scalars["train/d_loss"].steps, [10, 20, 40])
    np.testing.assert_array_equal(scalars["train/d_loss"].values, [10.0, 20.5, 40.5])
    np.testing.assert_array_equal(scalars["eval/fid"].values, [90.0, 80.0, 70.0])
    titles = [p.title for p in report.group_panels(list(scalars))]
    assert titles == ["Losses", "fid"]


def test_progress_gif_thins_long_runs_and_keeps_first_and_last(tmp_path):
    grids = []
    for i, step in enumerate(range(100, 1100, 100)):
        path = str(tmp_path / f"step_{step:07d}.png")
        sampling.save_png(np.full((20, 30, 3), 20 * i, np.uint8), path)
        grids.append((step, path))
    gif = report.write_progress_gif(grids, str(tmp_path / "p.gif"), max_frames=4, max_side=15)
    with Image.open(gif) as im:
        assert im.n_frames == 4
        assert im.width == 15  # 30 px shrunk to max_side
        im.seek(3)
        assert np.asarray(im.convert("RGB"))[-1, -1, 0] > 150  # the last grid (value 180)
    assert report.write_progress_gif([], str(tmp_path / "none.gif")) is None


def test_report_without_logs_or_grids_still_writes_the_page(tmp_path):
    workdir_lib.write_config(str(tmp_path), tiny_config())
    paths = report.write_report(tmp_path)
    assert list(paths) == ["index"]
    assert "No scalars logged yet" in (tmp_path / "report" / "index.html").read_text()
