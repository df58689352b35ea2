"""The jitted train step: updates, finiteness, learning, schedules, EMA and no retracing."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from facegan_jax import sharding
from facegan_jax.training import components, train_step
from tests.helpers import fake_batch, tiny_config


def _setup(config):
    """(initial state, jitted step without donation so states can be reused, mesh)."""
    run = components.build(config)
    return run.create_state(), jax.jit(run.train_step_fn()), run.mesh


def _changed(a, b) -> bool:
    return any(
        not np.array_equal(x, y)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


@pytest.mark.parametrize(
    "schedule,n_critic", [("alternating", 1), ("alternating", 2), ("simultaneous", 1)]
)
def test_one_step_updates_both_nets_and_keeps_losses_finite(schedule, n_critic):
    config = tiny_config(**{"train.schedule": schedule, "train.n_critic": n_critic})
    state, step, mesh = _setup(config)
    before = jax.device_get(state)
    batch = jax.device_put(fake_batch(config), sharding.batch_sharded(mesh))
    new, metrics = step(state, batch)
    metrics = jax.device_get(metrics)
    assert all(np.isfinite(v) for v in metrics.values()), metrics
    assert int(new.step) == 1
    assert int(new.examples_seen) == config.train.batch_size * n_critic
    assert _changed(before.g_params, new.g_params)
    assert _changed(before.d_params, new.d_params)
    assert _changed(before.g_vars["batch_stats"], new.g_vars["batch_stats"])
    assert _changed(before.d_vars["batch_stats"], new.d_vars["batch_stats"])
    assert _changed(before.g_opt_state, new.g_opt_state)
    assert _changed(before.ema_params, new.ema_params)


def test_discriminator_loss_falls_on_a_fixed_batch():
    config = tiny_config(**{"train.batch_size": 16})
    state, step, mesh = _setup(config)
    batch = jax.device_put(fake_batch(config, seed=3), sharding.batch_sharded(mesh))
    d_losses = []
    for _ in range(60):
        state, metrics = step(state, batch)
        d_losses.append(float(metrics["d_loss"]))
    assert np.mean(d_losses[-5:]) < 0.6 * np.mean(d_losses[:3]), d_losses


def test_step_keys_differ_per_step_but_are_reproducible():
    config = tiny_config()
    s1, step, mesh = _setup(config)
    s2, _, _ = _setup(config)
    batch = jax.device_put(fake_batch(config), sharding.batch_sharded(mesh))
    a, _ = step(s1, batch)
    b, _ = step(s2, batch)
    # Same seed, same data: bit-identical states (one PRNG-split state drives everything).
    assert not _changed(jax.device_get(a), jax.device_get(b))
    # The same state and batch at another step number draws other latents: D sees other
    # fakes, so its update differs (the optimizer count lives in d_opt_state, not in step).
    c, _ = step(s1.replace(step=s1.step + 5), batch)
    assert _changed(jax.device_get(a.d_params), jax.device_get(c.d_params))
    assert not _changed(
        jax.device_get(a.d_opt_state[0].count), jax.device_get(c.d_opt_state[0].count)
    )


def test_no_retrace_over_steps_with_changing_data():
    config = tiny_config()
    run = components.build(config)
    state, mesh = run.create_state(), run.mesh
    traces = []
    pure = run.train_step_fn()

    def counted(s, b):
        traces.append(1)
        return pure(s, b)

    rep, bs = sharding.replicated(mesh), sharding.batch_sharded(mesh)
    step = jax.jit(counted, in_shardings=(rep, bs), out_shardings=(rep, rep), donate_argnums=(0,))
    for i in range(4):
        batch = jax.device_put(fake_batch(config, seed=i), bs)
        state, _ = step(state, batch)
    assert len(traces) == 1


def test_ema_with_zero_decay_is_the_live_generator_and_stats_are_averaged():
    config = tiny_config(**{"train.ema_decay": 0.0})
    state, step, mesh = _setup(config)
    batch = jax.device_put(fake_batch(config), sharding.batch_sharded(mesh))
    new, _ = step(state, batch)
    assert not _changed(jax.device_get(new.ema_params), jax.device_get(new.g_params))
    # With decay d (after warm-up), EMA batch stats move by (1 - d) towards the live ones.
    old = new.replace(step=jnp.asarray(10_000, jnp.int32))
    shifted = old.replace(
        g_vars={"batch_stats": jax.tree.map(lambda x: x + 1.0, old.g_vars["batch_stats"])}
    )
    averaged = train_step.update_ema(shifted, 0.9)
    diff = jax.tree.map(
        lambda e, o: e - o, averaged.ema_vars["batch_stats"], old.ema_vars["batch_stats"]
    )
    np.testing.assert_allclose(
        np.concatenate([np.ravel(x) for x in jax.tree.leaves(diff)]), 0.1, rtol=1e-5
    )


def test_bad_schedule_names_the_field():
    config = tiny_config(**{"train.schedule": "sometimes"})
    with pytest.raises(ValueError, match="config.train.schedule='sometimes'"):
        train_step.validate_schedule(config)


def test_mixed_precision_step_is_finite_and_close_to_float32():
    results = {}
    for mixed in (False, True):
        config = tiny_config(**{"train.mixed_precision": mixed})
        state, step, mesh = _setup(config)
        batch = jax.device_put(fake_batch(config), sharding.batch_sharded(mesh))
        new, metrics = step(state, batch)
        results[mixed] = (jax.device_get(metrics), jax.device_get(new))
    (m32, _), (m16, s16) = results[False], results[True]
    # bf16 compute, float32 parameters and optimizer state, float32 losses.
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(s16.g_params))
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(s16.d_opt_state) if x.ndim)
    for name in ("d_loss", "g_loss", "d_real", "d_fake"):
        assert np.isfinite(m16[name]) and m16[name].dtype == np.float32, name
        np.testing.assert_allclose(m16[name], m32[name], rtol=0.05, atol=0.02, err_msg=name)
    assert m16["d_loss"] != m32["d_loss"]  # bf16 really was used for the compute
