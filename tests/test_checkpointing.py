"""Orbax checkpoints: exact round trip, clear errors, config kept."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from facegan_jax import checkpointing, components, sharding
from facegan_jax import workdir as workdir_lib
from tests.helpers import fake_batch, tiny_config


def test_save_restore_round_trip_is_exact(tmp_path):
    config = tiny_config()
    run = components.build(config)
    state, mesh = run.create_state(), run.mesh
    step = jax.jit(run.train_step_fn())
    state, _ = step(state, jax.device_put(fake_batch(config), sharding.batch_sharded(mesh)))
    manager = checkpointing.create_manager(str(tmp_path))
    checkpointing.save(manager, state)
    manager.wait_until_finished()
    target = run.abstract_state()
    restored = checkpointing.restore(checkpointing.create_manager(str(tmp_path)), target)
    a, b = jax.device_get(state), jax.device_get(restored)
    paths_a = jax.tree_util.tree_flatten_with_path(a)[0]
    paths_b = jax.tree_util.tree_flatten_with_path(b)[0]
    assert [p for p, _ in paths_a] == [p for p, _ in paths_b]
    for (path, x), (_, y) in zip(paths_a, paths_b, strict=True):
        assert x.dtype == y.dtype, path
        np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))
    assert int(restored.step) == 1
    # The restored state continues exactly like the original.
    _, m1 = step(state, jax.device_put(fake_batch(config, 7), sharding.batch_sharded(mesh)))
    _, m2 = step(restored, jax.device_put(fake_batch(config, 7), sharding.batch_sharded(mesh)))
    np.testing.assert_array_equal(np.asarray(m1["d_loss"]), np.asarray(m2["d_loss"]))


def test_restore_with_a_mismatched_model_names_the_checkpoint(tmp_path):
    config = tiny_config()
    manager = checkpointing.create_manager(str(tmp_path))
    checkpointing.save(manager, components.build(config).create_state())
    manager.wait_until_finished()
    target = components.build(tiny_config(**{"model.g_dim": 16})).abstract_state()
    with pytest.raises(ValueError, match=r"cannot restore checkpoint .*checkpoints/0"):
        checkpointing.restore(checkpointing.create_manager(str(tmp_path)), target)


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
