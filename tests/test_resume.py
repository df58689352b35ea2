"""Exact resume: a run SIGKILLed after a checkpoint, then restarted, ends bit-identical."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from facegan_jax.training import checkpointing, components, train
from tests.helpers import load_config_file

# Minutes of training or subprocesses: outside the fast subset (`-m "not slow"`).
pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parent.parent
TOTAL_STEPS = 12
KILL_AT = 6  # between the checkpoints of steps 4 and 8
OVERRIDES = (
    f"--config.total_steps={TOTAL_STEPS}",
    "--config.checkpoint_every_steps=4",
    "--config.log_every_steps=1",
    "--config.sample_every_steps=6",
)
# The run to kill: a hook SIGKILLs the process after step KILL_AT, once the checkpoint
# of step 4 is on disk. Deterministic: no sleeps, no "slow enough to be killed".
_KILLED_RUN = """
import os, pathlib, signal, sys, time
from facegan_jax import runtime
runtime.setup()
from facegan_jax.training import train
from tests.helpers import load_config_file

workdir, *overrides = sys.argv[1:]
config = load_config_file("configs/default.py:runlocal", *overrides)

def kill(step, state, metrics):
    if step == KILL_AT:
        while not pathlib.Path(workdir, "checkpoints", "4").is_dir():  # Orbax's commit
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGKILL)

train.train_and_evaluate(config, workdir, hooks=[kill])
""".replace("KILL_AT", str(KILL_AT))


@pytest.fixture(scope="module")
def cache_dir(shared_compilation_cache):
    """The compilation cache folder, passed on to the subprocesses."""
    return shared_compilation_cache


def _final_state(workdir: Path, config):
    manager = checkpointing.create_manager(str(workdir))
    assert manager.latest_step() == TOTAL_STEPS
    return jax.device_get(checkpointing.restore(manager, components.build(config).abstract_state()))


def test_a_killed_and_restarted_run_ends_bit_identical_to_an_uninterrupted_one(tmp_path, cache_dir):
    tfds = tmp_path / "tfds"
    overrides = (*OVERRIDES, f"--config.data.tfds_data_dir={tfds}")
    config = load_config_file("configs/default.py:runlocal", *overrides)

    # The uninterrupted run, in this process (its compiled steps go to the shared cache).
    reference = tmp_path / "reference"
    train.train_and_evaluate(config, str(reference))

    env = {
        **os.environ,
        "JAX_COMPILATION_CACHE_DIR": str(cache_dir),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }
    killed = tmp_path / "killed"
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_RUN, str(killed), *overrides],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert checkpointing.create_manager(str(killed)).all_steps() == [4]

    command = [
        sys.executable,
        "-m",
        "facegan_jax.cli.train",
        "--config=configs/default.py:runlocal",
        f"--workdir={killed}",
        *overrides,
    ]
    restarted = subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    assert "Resumed from checkpoint step 4" in restarted.stderr

    want = _final_state(reference, config)
    got = _final_state(killed, config)
    assert int(got.examples_seen) == int(want.examples_seen) == TOTAL_STEPS * 8
    leaves_want = jax.tree_util.tree_flatten_with_path(want)[0]
    leaves_got = jax.tree_util.tree_flatten_with_path(got)[0]
    assert [p for p, _ in leaves_want] == [p for p, _ in leaves_got]
    for (path, a), (_, b) in zip(leaves_want, leaves_got, strict=True):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
