"""Orbax checkpoints: exact round trip, verified files, fallback, no partial restore, safe saves."""

from __future__ import annotations

import errno
import json
import os
import threading

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from orbax.checkpoint._src.checkpointers import async_checkpointer

from facegan_jax import errors, sharding
from facegan_jax import workdir as workdir_lib
from facegan_jax.training import checkpointing, components
from tests.helpers import fake_batch, tiny_config


@pytest.fixture(scope="module")
def run():
    return components.build(tiny_config())


@pytest.fixture(scope="module")
def states(run):
    """Three distinct states at steps 0, 1, 2 (one real train step, then relabelled copies)."""
    state = run.create_state()
    step = jax.jit(run.train_step_fn())
    batch = jax.device_put(fake_batch(run.config), sharding.batch_sharded(run.mesh))
    one, _ = step(state, batch)
    two = one.replace(step=one.step + 1, g_params=jax.tree.map(lambda x: x * 2, one.g_params))
    return [state, one, two]


def _assert_same(a, b):
    a, b = jax.device_get(a), jax.device_get(b)
    paths_a = jax.tree_util.tree_flatten_with_path(a)[0]
    paths_b = jax.tree_util.tree_flatten_with_path(b)[0]
    assert [p for p, _ in paths_a] == [p for p, _ in paths_b]
    for (path, x), (_, y) in zip(paths_a, paths_b, strict=True):
        assert x.dtype == y.dtype, path
        np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


def _save(workdir, *states, max_to_keep=3):
    manager = checkpointing.create_manager(str(workdir), max_to_keep)
    for state in states:
        checkpointing.save(manager, state)
    manager.wait_until_finished()
    return manager


def _largest_array_file(step_dir):
    files = [
        os.path.join(root, n)
        for root, _, names in os.walk(step_dir)
        for n in names
        if os.sep + "d" + os.sep in os.path.join(root, n)
    ]
    return max(files, key=os.path.getsize)


def test_save_restore_round_trip_is_exact(tmp_path, run, states):
    _save(tmp_path, states[1])
    restored = checkpointing.restore(
        checkpointing.create_manager(str(tmp_path)), run.abstract_state()
    )
    _assert_same(states[1], restored)
    assert int(restored.step) == 1
    # The restored state continues exactly like the original.
    step = jax.jit(run.train_step_fn())
    batch = jax.device_put(fake_batch(run.config, 7), sharding.batch_sharded(run.mesh))
    _, m1 = step(states[1], batch)
    _, m2 = step(restored, batch)
    np.testing.assert_array_equal(np.asarray(m1["d_loss"]), np.asarray(m2["d_loss"]))
    # A completed save carries the checksums of its files.
    with open(tmp_path / "checkpoints" / "1" / checkpointing.CHECKSUMS_FILE) as f:
        listed = json.load(f)["files"]
    assert any(name.startswith("default") for name in listed)
    assert checkpointing.verify(str(tmp_path / "checkpoints" / "1")) is None


def test_a_mismatched_model_is_one_clear_error_never_a_partial_restore(tmp_path, states):
    manager = _save(tmp_path, states[0], states[1])
    target = components.build(tiny_config(**{"model.g_dim": 16})).abstract_state()
    with pytest.raises(errors.WorkdirError) as info:
        checkpointing.restore(manager, target, set_aside_corrupt=True)
    message = str(info.value)
    assert "\n" not in message
    assert f"checkpoint {tmp_path}/checkpoints/1 does not match this config's state" in message
    assert "g_params." in message and "float32[" in message and "use a new --workdir" in message
    # No fallback to step 0 (same structure) and nothing set aside.
    assert checkpointing.create_manager(str(tmp_path)).all_steps() == [0, 1]


def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, run, states, caplog):
    manager = _save(tmp_path, states[1], states[2])
    victim = _largest_array_file(manager.step_dir(2))
    size = os.path.getsize(victim)
    with open(victim, "r+b") as f:  # same size, different bytes: orbax alone restores these
        f.seek(size // 2)
        f.write(bytes(64))
    caplog.set_level("WARNING")
    restored = checkpointing.restore(manager, run.abstract_state())
    _assert_same(states[1], restored)
    assert (
        f"checkpoint {tmp_path}/checkpoints/2 is corrupt (default/" in caplog.text
        and "does not match its checksum); restored the previous checkpoint, "
        f"{tmp_path}/checkpoints/1, instead"
        in caplog.text
    )
    assert manager.all_steps() == [1, 2]  # a reader leaves it in place
    # Training sets it aside (kept, renamed) so that step 2 can be saved again.
    checkpointing.restore(manager, run.abstract_state(), set_aside_corrupt=True)
    assert manager.all_steps() == [1]
    assert os.path.isdir(tmp_path / "checkpoints" / "2.corrupt")
    assert checkpointing.create_manager(str(tmp_path)).all_steps() == [1]


def test_a_truncated_unverified_checkpoint_falls_back_and_none_readable_is_one_error(
    tmp_path, run, states
):
    manager = _save(tmp_path, states[1], states[2])
    for step in (1, 2):  # as if written before checksums existed: orbax's own errors count
        os.remove(os.path.join(manager.step_dir(step), checkpointing.CHECKSUMS_FILE))
    victim = _largest_array_file(manager.step_dir(2))
    with open(victim, "r+b") as f:
        f.truncate(os.path.getsize(victim) // 2)
    _assert_same(states[1], checkpointing.restore(manager, run.abstract_state()))

    with open(os.path.join(manager.step_dir(1), "default", "_METADATA"), "w") as f:
        f.write("not json")
    with pytest.raises(errors.CheckpointError) as info:
        checkpointing.restore(manager, run.abstract_state())
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"no checkpoint can be restored ({tmp_path}/checkpoints/2: it ")
    assert f"{tmp_path}/checkpoints/1: its metadata cannot be read" in message


def _blocked_commit(monkeypatch, release: threading.Event, fail: OSError | None = None):
    """Holds every save's final commit (the rename of its temporary directory) until `release`."""
    original = async_checkpointer._on_commit_callback

    def commit(*args, **kwargs):
        release.wait(timeout=60)
        if fail is not None:
            raise fail
        return original(*args, **kwargs)

    monkeypatch.setattr(async_checkpointer, "_on_commit_callback", commit)


def test_max_to_keep_removes_the_old_checkpoint_only_after_the_new_one_is_complete(
    tmp_path, states, monkeypatch
):
    manager = _save(tmp_path, states[1], max_to_keep=1)
    release = threading.Event()
    _blocked_commit(monkeypatch, release)
    assert checkpointing.save(manager, states[2])
    assert os.path.isdir(manager.step_dir(1))  # the save is in flight: step 1 is still there
    assert not os.path.isdir(manager.step_dir(2))
    release.set()
    manager.wait_until_finished()
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]
    assert checkpointing.verify(manager.step_dir(2)) is None


def test_a_disk_full_during_the_background_write_keeps_the_previous_checkpoint(
    tmp_path, run, states, monkeypatch
):
    manager = _save(tmp_path, states[1], max_to_keep=1)
    release = threading.Event()
    _blocked_commit(monkeypatch, release, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    assert checkpointing.save(manager, states[2])
    release.set()
    with pytest.raises(errors.CheckpointError) as info:
        manager.wait_until_finished()
    assert str(info.value) == (
        f"cannot write checkpoint step 2 to {tmp_path}/checkpoints: [Errno 28] No space left on "
        f"device; the previous checkpoint, {tmp_path}/checkpoints/1, is intact; free space (or "
        "fix the error) and run the same command again to resume"
    )
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1"]  # partial files removed
    assert manager.latest_step() == 1
    _assert_same(states[1], checkpointing.restore(manager, run.abstract_state()))


def test_a_disk_full_in_the_blocking_part_of_a_save_is_one_clear_error(
    tmp_path, states, monkeypatch
):
    manager = _save(tmp_path, states[1])

    async def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ocp.StandardCheckpointHandler, "async_save", full)
    with pytest.raises(errors.CheckpointError, match=r"step 2 .*\[Errno 28\] No space left"):
        checkpointing.save(manager, states[2])
    assert manager.all_steps() == [1]
    assert checkpointing.verify(manager.step_dir(1)) is None
    # The next training run removes what the failed save left and saves that step.
    monkeypatch.undo()
    manager = checkpointing.create_manager(str(tmp_path), remove_partial_saves=True)
    assert checkpointing.save(manager, states[2])
    manager.wait_until_finished()
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "2"]


def test_config_json_is_written_once_and_never_overwritten(tmp_path):
    config = tiny_config()
    workdir_lib.write_config(str(tmp_path), config)
    path = os.path.join(tmp_path, "config.json")
    with open(path) as f:
        original = f.read()
    config.total_steps = 999
    workdir_lib.write_config(str(tmp_path), config)
    with open(path) as f:
        assert f.read() == original
    assert json.loads(original)["total_steps"] == 6
    assert workdir_lib.read_config(str(tmp_path)).data.crop_box == (0, 0, 0, 0)


def test_read_config_of_a_non_workdir_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        workdir_lib.read_config(str(tmp_path))
