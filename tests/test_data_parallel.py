"""Data parallelism: the jitted step over a 2-device 'data' mesh equals the 1-device step.

Runs in a subprocess with 2 fake XLA:CPU devices (see conftest.py for why the
rest of the suite uses one device).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from tests.conftest import REPO_ROOT

_SCRIPT = textwrap.dedent(
    """
    import jax, numpy as np
    from jax.sharding import Mesh
    from facegan_jax import components, input_pipeline, runtime
    from tests.helpers import fake_batch, tiny_config

    runtime.setup(tensorflow=False)
    assert len(jax.devices()) == 2, jax.devices()
    config = tiny_config(**{"train.batch_size": 4, "model.g_dim": 4, "model.d_dim": 4})
    results = []
    for devices in (jax.devices()[:1], jax.devices()):
        run = components.build(config, Mesh(np.asarray(devices), ("data",)))
        bs = run.batch_sharding
        state, step = run.create_state(), run.train_step
        host_batch = {k: np.asarray(v) for k, v in fake_batch(config).items()}
        (batch,) = list(input_pipeline.device_put_batches(iter([host_batch]), bs, prefetch=2))
        assert len(batch["image"].sharding.device_set) == len(devices)
        for _ in range(2):
            state, metrics = step(state, batch)
        results.append(jax.device_get((state.g_params, state.d_params, metrics)))
    one, two = results
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(two)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    print("DATA_PARALLEL_OK", float(two[2]["d_loss"]))
    """
)


def test_two_device_step_matches_one_device_step():
    env = dict(os.environ)
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "DATA_PARALLEL_OK" in proc.stdout
