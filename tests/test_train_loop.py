"""The whole loop on synthetic_faces: outputs, resume, sampling, SIGTERM, progress, divergence."""

from __future__ import annotations

import os
import re
import signal
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest  # noqa: F401  (absl logging handler for captured logs)
from PIL import Image

from facegan_jax import errors
from facegan_jax.cli import sample
from facegan_jax.data import input_pipeline
from facegan_jax.training import checkpointing, train
from facegan_jax.training import train_step as train_step_lib
from tests.helpers import tiny_config

pytestmark = pytest.mark.usefixtures("shared_compilation_cache")


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tfds")


def _config(tfds_dir, total_steps, **overrides):
    return tiny_config(
        **{
            "total_steps": total_steps,
            "data.tfds_data_dir": str(tfds_dir),
            "log_every_steps": 2,
            "sample_every_steps": 2,
            "checkpoint_every_steps": 2,
            **overrides,
        }
    )


def test_train_resume_and_sample(tmp_path, tfds_dir, caplog):
    workdir = tmp_path / "run"
    caplog.set_level("INFO")
    state = train.train_and_evaluate(_config(tfds_dir, 4), str(workdir))
    assert int(state.step) == 4
    manager = checkpointing.create_manager(str(workdir))
    assert manager.all_steps() == [2, 4]
    assert checkpointing.verify(manager.step_dir(4)) is None  # checksums of the final save
    grid = np.asarray(Image.open(workdir / "samples" / "step_0000004.png"))
    assert grid.shape == (4 * 34 + 2, 4 * 34 + 2, 3)  # 16 control samples, 32px + 2px padding
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))
    assert int(state.examples_seen) == 4 * 8
    assert re.search(r"step 4/4: [\d.e+]+ steps/s, [\d.e+]+ images/s, ETA 0s", caplog.text)

    state = train.train_and_evaluate(_config(tfds_dir, 6), str(workdir))
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


STEP_SECONDS = 0.3  # the artificial device time of one train step
SIGNAL_AFTER = 13  # SIGTERM half a step after this step completes


def test_sigterm_checkpoints_within_two_steps_and_progress_counts_completed_steps(
    tmp_path, tfds_dir, monkeypatch, caplog
):
    """The host runs at most 2 steps ahead: SIGTERM is answered within 2 steps, steps/s is true."""
    finished: dict[int, float] = {}  # step -> when the device finished it
    signalled: list[float] = []

    def send_sigterm() -> None:
        signalled.append(time.perf_counter())
        os.kill(os.getpid(), signal.SIGTERM)

    def slow_device_step(step, metrics):
        time.sleep(STEP_SECONDS)
        finished[int(step)] = time.perf_counter()
        if int(step) == SIGNAL_AFTER:
            threading.Timer(STEP_SECONDS / 2, send_sigterm).start()
        return step, metrics

    make_train_step = train_step_lib.make_train_step

    def make_slow_train_step(*args, **kwargs):
        step_fn = make_train_step(*args, **kwargs)

        def slow_step(state, batch):
            state, metrics = step_fn(state, batch)
            shapes = jax.tree.map(
                lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), (state.step, metrics)
            )
            step, metrics = jax.pure_callback(slow_device_step, shapes, state.step, metrics)
            return state.replace(step=step), metrics  # the next step waits for this one

        return slow_step

    monkeypatch.setattr(train_step_lib, "make_train_step", make_slow_train_step)
    caplog.set_level("INFO")
    config = _config(
        tfds_dir, 40, log_every_steps=6, sample_every_steps=100, checkpoint_every_steps=100
    )
    exits: list[bool] = []
    monkeypatch.setattr(train, "_exit_now", lambda: exits.append(True))
    state = train.train_and_evaluate(config, str(tmp_path), exit_on_stop=True)

    assert signalled, "the run ended before the signal"
    # The command line's process ends right after the checkpoint; no report in the grace period.
    assert exits == [True]
    assert not (tmp_path / "report" / "index.html").exists()
    done_at_signal = max(s for s, t in finished.items() if t <= signalled[0])
    stopped = int(state.step)
    assert done_at_signal + 1 <= stopped <= done_at_signal + 2, (done_at_signal, stopped)
    assert checkpointing.create_manager(str(tmp_path)).all_steps() == [stopped]
    assert f"SIGTERM: checkpointing step {stopped} and stopping" in caplog.text

    # The logged rate between steps 6 and 12 is the device's.
    logged = float(re.search(r"step 12/40: ([\d.e+]+) steps/s", caplog.text).group(1))
    true_rate = 6 / (finished[12] - finished[6])
    assert true_rate / 1.5 < logged < true_rate * 1.5, (logged, true_rate)


def test_non_finite_loss_stops_naming_the_step_and_the_last_good_checkpoint(
    tmp_path, tfds_dir, monkeypatch
):
    device_put_batches = input_pipeline.device_put_batches

    def nan_images_from_the_third_batch(*args, **kwargs):
        for i, batch in enumerate(device_put_batches(*args, **kwargs)):
            if i >= 2:
                batch = {**batch, "image": batch["image"] * jnp.nan}
            yield batch

    monkeypatch.setattr(input_pipeline, "device_put_batches", nan_images_from_the_third_batch)
    config = _config(tfds_dir, 6, log_every_steps=6, checkpoint_every_steps=1)
    with pytest.raises(errors.TrainingDivergedError) as info:
        train.train_and_evaluate(config, str(tmp_path))
    assert re.fullmatch(
        r"training diverged: non-finite (\w+, )*g_loss(, \w+)* at step 3 \(this state is not "
        rf"saved\); the last good checkpoint is {tmp_path}/checkpoints/2; lower "
        r"config.g_optimizer.learning_rate / config.d_optimizer.learning_rate \(or change the "
        r"loss\) and run again",
        str(info.value),
    ), str(info.value)
    assert checkpointing.create_manager(str(tmp_path)).all_steps() == [1, 2]


def test_progress_eta_is_the_earlier_of_steps_and_wall_clock_budget(caplog, monkeypatch):
    caplog.set_level("INFO")
    now = [100.0]
    monkeypatch.setattr(train.time, "perf_counter", lambda: now[0])
    budget = [None]
    progress = train.Progress(1_000_000, 32, lambda: budget[0])
    progress.start(0)
    now[0] += 10.0
    progress.report(20)  # 2 steps/s: 999,980 steps left is 138h53m10s
    assert "step 20/1000000: 2 steps/s, 64 images/s, ETA 138h53m10s" in caplog.text
    budget[0] = 90.0  # train_minutes ends the run in 90 s
    now[0] += 10.0
    progress.report(40)
    assert "step 40/1000000: 2 steps/s, 64 images/s, ETA 1m30s" in caplog.text
