"""Data parallelism: the jitted step over an 8-device 'data' mesh equals the 1-device step.

Each test runs a script in a subprocess with 8 fake XLA:CPU devices (see conftest.py for
why the rest of the suite uses one device); shapes are tiny so the 8 device threads on 2
cores stay far from XLA's 40 s collective rendezvous timeout. The script asserts that it
sees 8 devices and that the batch is really split over all of them, so a run that silently
fell back to one device fails.

* DCGAN: BatchNorm statistics are over the global batch (GSPMD computes the global
  function), so the 8-device step equals the 1-device step on the same global batch.
* ACGAN (`configs/acgan64.py:runlocal`): spectral norm and minibatch-stddev groups of
  `config.model.mbstd_group_size`=4 over a global batch of 8, i.e. 1 example per device:
  groups are over the global batch whatever the per-device batch, proved by the equality;
  a group size that does not divide the batch is an error naming the field.
"""

from __future__ import annotations

import textwrap

import pytest

from tests.helpers import run_python

# Minutes of training or subprocesses: outside the fast subset (`-m "not slow"`).
pytestmark = pytest.mark.slow

NUM_DEVICES = 8

_COMMON = textwrap.dedent(
    """
    import sys
    import jax, numpy as np
    from jax.sharding import Mesh
    from facegan_jax.training import components
    from facegan_jax.data import input_pipeline
    from facegan_jax import runtime, sharding
    from tests.helpers import fake_batch, load_config_file, tiny_config

    runtime.setup(tensorflow=False)
    N = 8
    assert len(jax.devices()) == N, jax.devices()

    def train(config, devices, initial=None, steps=2):
        # -> (initial state, (final state, metrics)) on the host, after `steps` steps.
        run = components.build(config, Mesh(np.asarray(devices), ("data",)))
        host_batch = {k: np.asarray(v) for k, v in fake_batch(config).items()}
        (batch,) = input_pipeline.device_put_batches(iter([host_batch]), run.batch_sharding)
        for value in batch.values():
            assert len(value.sharding.device_set) == len(devices), value.sharding
            assert value.addressable_shards[0].data.shape[0] == len(value) // len(devices)
        # The 1-device run starts from the 8-device initial state (saves one init compile).
        state = run.create_state() if initial is None else jax.device_put(initial, run.replicated)
        initial = jax.device_get(state)
        for _ in range(steps):
            state, metrics = run.train_step(state, batch)
        return initial, jax.device_get((state, metrics))

    def compare_1_and_n_devices(config):
        initial, many = train(config, jax.devices())
        _, one = train(config, jax.devices()[:1], initial)
        assert_same(one, many)
        return one[0], many[1]

    def assert_same(one, many):
        paths_one = jax.tree_util.tree_leaves_with_path(one)
        for (path, a), b in zip(paths_one, jax.tree.leaves(many), strict=True):
            np.testing.assert_allclose(
                a, b, rtol=1e-4, atol=1e-5, err_msg=jax.tree_util.keystr(path)
            )
    """
)

_DCGAN = textwrap.dedent(
    """
    config = tiny_config(**{"train.batch_size": 16, "model.g_dim": 4, "model.d_dim": 4})
    state, metrics = compare_1_and_n_devices(config)
    assert state.g_vars["batch_stats"] and state.d_vars["batch_stats"], "DCGAN BatchNorm"
    print("DATA_PARALLEL_OK dcgan", float(metrics["d_loss"]))
    """
)

_ACGAN = textwrap.dedent(
    """
    import pytest
    from facegan_jax.models import layers

    config = load_config_file("configs/acgan64.py:runlocal")
    assert config.train.batch_size == N and config.model.mbstd_group_size == 4
    state, metrics = compare_1_and_n_devices(config)
    assert state.d_vars["spectral"], "ACGAN D has spectral-norm vectors"

    # The layer itself under a sharded batch: the groups are those of the global batch.
    mesh = Mesh(np.asarray(jax.devices()), ("data",))
    x = np.random.default_rng(0).normal(size=(N, 4, 4, 3)).astype(np.float32)
    x_sharded = jax.device_put(x, sharding.batch_sharded(mesh))
    assert len(x_sharded.sharding.device_set) == N
    stat = jax.jit(layers.minibatch_stddev, static_argnums=1)
    np.testing.assert_allclose(stat(x_sharded, 4), layers.minibatch_stddev(x, 4), rtol=1e-6)
    groups = x.reshape(4, N // 4, -1)
    want = np.sqrt(groups.var(axis=0) + 1e-8).mean(axis=-1)
    np.testing.assert_allclose(stat(x_sharded, 4), np.tile(want, 4), rtol=1e-5)

    # A group that does not divide the (global) batch is an error naming the field.
    bad = load_config_file("configs/acgan64.py:runlocal", "--config.model.mbstd_group_size=3")
    bad_run = components.build(bad, mesh)
    bad_batch = jax.device_put(fake_batch(bad), bad_run.batch_sharding)
    with pytest.raises(ValueError, match=r"config\\.model\\.mbstd_group_size=3"):
        jax.eval_shape(bad_run.train_step, bad_run.abstract_state(), bad_batch)  # traces only
    print("DATA_PARALLEL_OK acgan", float(metrics["d_loss"]))
    """
)


def _run_on_8_devices(body: str) -> str:
    return run_python(["-c", _COMMON + body], num_devices=NUM_DEVICES)


def test_dcgan_step_on_8_devices_matches_1_device_batchnorm_over_global_batch():
    assert "DATA_PARALLEL_OK dcgan" in _run_on_8_devices(_DCGAN)


def test_acgan_step_on_8_devices_matches_1_device_mbstd_groups_over_global_batch():
    assert "DATA_PARALLEL_OK acgan" in _run_on_8_devices(_ACGAN)
