"""The whole loop on synthetic_faces: outputs written, resume at the saved step, sampling CLI."""

from __future__ import annotations

import os

import numpy as np
from absl.testing import absltest  # noqa: F401  (absl logging handler for captured logs)
from PIL import Image

from facegan_jax import checkpointing, sample, train
from tests.helpers import tiny_config


def _config(tmp_path, total_steps):
    return tiny_config(
        **{
            "total_steps": total_steps,
            "data.tfds_data_dir": str(tmp_path / "tfds"),
            "log_every_steps": 2,
            "sample_every_steps": 2,
            "checkpoint_every_steps": 2,
        }
    )


def test_train_resume_and_sample(tmp_path, caplog):
    workdir = tmp_path / "run"
    state = train.train_and_evaluate(_config(tmp_path, 4), str(workdir))
    assert int(state.step) == 4
    manager = checkpointing.create_manager(str(workdir))
    assert manager.all_steps() == [2, 4]
    grid = np.asarray(Image.open(workdir / "samples" / "step_0000004.png"))
    assert grid.shape == (4 * 34 + 2, 4 * 34 + 2, 3)  # 16 control samples, 32px + 2px padding
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))
    assert int(state.examples_seen) == 4 * 8

    caplog.set_level("INFO")
    state = train.train_and_evaluate(_config(tmp_path, 6), str(workdir))
    assert "Resumed from checkpoint step 4" in caplog.text
    assert int(state.step) == 6 and int(state.examples_seen) == 6 * 8
    assert checkpointing.create_manager(str(workdir)).latest_step() == 6

    out = tmp_path / "grid.png"
    out_dir = tmp_path / "faces"
    rc = sample.main(
        [
            "--workdir",
            str(workdir),
            "--seeds",
            "0-5",
            "--out",
            str(out),
            "--out-dir",
            str(out_dir),
            "--batch-size",
            "4",
        ]
    )
    assert rc == 0
    assert sorted(os.listdir(out_dir)) == [f"seed_{i:05d}.png" for i in range(6)]
    again = tmp_path / "again"
    assert sample.main(["--workdir", str(workdir), "--seeds", "3", "--out-dir", str(again)]) == 0
    np.testing.assert_array_equal(
        np.asarray(Image.open(out_dir / "seed_00003.png")),
        np.asarray(Image.open(again / "seed_00003.png")),
    )
