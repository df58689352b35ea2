"""The whole loop on synthetic_faces: outputs, resume, sampling, SIGTERM, progress, divergence."""

from __future__ import annotations

import os
import re
import signal
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
from facegan_jax.training import checkpointing, loop, train
from facegan_jax.training import train_step as train_step_lib
from tests.helpers import tiny_config


@pytest.fixture(scope="module")
def tfds_dir(synth_tfds_dir):
    """The session's rendered synthetic faces (TFDS keeps each size in its own config)."""
    return synth_tfds_dir


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


STEP_SECONDS = 0.05  # the artificial device time of one step (the host runs ahead of it)
SIGNAL_AFTER = 13  # SIGTERM arrives right after this step is dispatched


def test_sigterm_checkpoints_within_two_steps_and_progress_counts_completed_steps(
    tmp_path, tfds_dir, monkeypatch, caplog
):
    """The host runs at most 2 steps ahead: SIGTERM is answered at once, steps/s is true.

    Deterministic: a slow "device" step (a host callback) records which steps are
    complete; every assertion is about order (what was complete when the host did
    something), none about durations.
    """
    finished: list[int] = []  # steps the device completed, in order
    dispatched: list[tuple[int, int]] = []  # (step dispatched, last complete step then)
    reported: list[tuple[int, int]] = []  # (step of a progress line, last complete step then)

    def slow_device_step(step, metrics):
        time.sleep(STEP_SECONDS)
        finished.append(int(step))
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

    def watch_dispatch(step, state, metrics):
        dispatched.append((step, max(finished, default=0)))
        if step == SIGNAL_AFTER:
            os.kill(os.getpid(), signal.SIGTERM)  # handled at once, in this thread

    report = loop.Progress.report

    def watched_report(self, step):
        reported.append((step, max(finished, default=0)))
        return report(self, step)

    monkeypatch.setattr(train_step_lib, "make_train_step", make_slow_train_step)
    monkeypatch.setattr(loop.Progress, "report", watched_report)
    caplog.set_level("INFO")
    config = _config(
        tfds_dir, 40, log_every_steps=6, sample_every_steps=100, checkpoint_every_steps=100
    )
    exits: list[bool] = []
    monkeypatch.setattr(train, "_exit_now", lambda: exits.append(True))
    state = train.train_and_evaluate(
        config, str(tmp_path), exit_on_stop=True, hooks=[watch_dispatch]
    )

    # The command line's process ends right after the checkpoint; no report in the grace period.
    assert exits == [True]
    assert not (tmp_path / "report" / "index.html").exists()
    # Nothing is dispatched after the signal: the state saved is the signalled step's.
    assert int(state.step) == SIGNAL_AFTER == dispatched[-1][0]
    assert checkpointing.create_manager(str(tmp_path)).all_steps() == [SIGNAL_AFTER]
    assert f"SIGTERM: checkpointing step {SIGNAL_AFTER} and stopping" in caplog.text
    # Bounded run-ahead: when step t is dispatched (its hooks run), step t - 2 is complete.
    assert all(step - complete <= 2 for step, complete in dispatched), dispatched
    # Progress lines (steps 6 and 12) are measured on completed steps only.
    assert [r[0] for r in reported] == [6, 12]
    assert all(complete >= step for step, complete in reported), reported
    assert re.search(r"step 12/40: [\d.e+]+ steps/s", caplog.text)


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
    budget = [None]
    progress = loop.Progress(1_000_000, 32, lambda: budget[0], clock=lambda: now[0])
    progress.start(0)
    now[0] += 10.0
    progress.report(20)  # 2 steps/s: 999,980 steps left is 138h53m10s
    assert "step 20/1000000: 2 steps/s, 64 images/s, ETA 138h53m10s" in caplog.text
    budget[0] = 90.0  # train_minutes ends the run in 90 s
    now[0] += 10.0
    progress.report(40)
    assert "step 40/1000000: 2 steps/s, 64 images/s, ETA 1m30s" in caplog.text


def test_one_loop_runs_hooks_in_order_and_stops_where_asked():
    calls = []

    def step_fn(state, batch):
        return state + batch, {"loss": float(batch)}

    def hook(step, state, metrics):
        calls.append((step, state, metrics["loss"]))
        return step == 4  # stop after the fourth step

    every_two = []

    def remember(n, s, m):
        every_two.append(n)
        return f"grid_{n}.png"  # a truthy value that is not True does not stop the loop

    periodic = loop.Periodic(2, 5, remember)
    state, step = loop.run(
        step_fn, 100, iter([1, 2, 3, 4, 5, 6]), first_step=0, last_step=5, hooks=[hook, periodic]
    )
    assert (state, step) == (110, 4)
    assert calls == [(1, 101, 1.0), (2, 103, 2.0), (3, 106, 3.0), (4, 110, 4.0)]
    assert every_two == [2, 4]  # the hooks after the stopping one still run at that step
    # Periodic fires at its period and at the last step; 0 never.
    assert [n for n in range(1, 8) if loop.Periodic(3, 7, None).due(n)] == [3, 6, 7]
    assert not any(loop.Periodic(0, 7, None).due(n) for n in range(1, 8))
    assert [n for n in range(1, 8) if loop.is_due(n, 3, 7)] == [3, 6, 7]
    # Resuming from step 3 to 5, with a stop request before the fifth step's dispatch.
    state, step = loop.run(
        step_fn,
        0,
        iter([10, 20, 30]),
        first_step=3,
        last_step=5,
        before_step=lambda n, s: n == 4 and s == 10,
    )
    assert (state, step) == (10, 4)
    with pytest.raises(loop.BatchesExhaustedError, match="ran out after 1 of 3 steps"):
        loop.run(step_fn, 0, [1], first_step=0, last_step=3)
