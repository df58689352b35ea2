"""Small builders shared by the tests: tiny configs, fake batches, untrained workdirs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from configs import default


def tiny_config(**overrides: Any) -> Any:
    """The default config shrunk to a smoke run; `overrides` use dotted names (`train.n_critic`)."""
    config = default.get_config("runlocal")
    config.update_from_flattened_dict(overrides)
    return config


def fake_batch(config: Any, seed: int = 0, n: int | None = None) -> dict[str, jax.Array]:
    """A random batch of `n` (default: batch_size * n_critic) images in [-1, 1] and attributes."""
    n = n or config.train.batch_size * config.train.n_critic
    rng = np.random.default_rng(seed)
    s, c = config.data.image_size, config.data.channels
    return {
        "image": jnp.asarray(rng.uniform(-1, 1, (n, s, s, c)), jnp.float32),
        "attributes": jnp.asarray(rng.integers(0, 2, (n, 40)), jnp.float32),
    }


def load_config_file(spec: str, *overrides: str) -> Any:
    """Loads `configs/x.py[:variant]` exactly as `--config=spec --config.a.b=v ...` does.

    Args:
      spec: the `--config` value (a path, optionally with `:variant`).
      overrides: further flags such as `--config.total_steps=5`.
    """
    from facegan_jax import recipes

    return recipes.load_config(spec, overrides)


def python_env(num_devices: int = 1) -> dict[str, str]:
    """This environment for a child Python on the CPU with `num_devices` host devices."""
    import os

    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
    if num_devices > 1:
        flags.append(f"--xla_force_host_platform_device_count={num_devices}")
    env["XLA_FLAGS"] = " ".join(flags)
    return env


def run_python(args: list[str], num_devices: int = 1, timeout: float = 600) -> str:
    """Runs `python ARGS` from the repository root on `num_devices` CPU devices and
    asserts that it succeeded (the stderr tail is the message); returns its stdout."""
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    proc = subprocess.run(
        [sys.executable, *args],
        cwd=REPO_ROOT,
        env=python_env(num_devices),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


def first_step_metrics(config: Any) -> dict[str, np.ndarray]:
    """The metrics of one jitted train step from the initial state on a fake batch,
    asserted finite."""
    from facegan_jax import sharding
    from facegan_jax.training import components

    run = components.build(config)
    batch = jax.device_put(fake_batch(config), sharding.batch_sharded(run.mesh))
    _, metrics = jax.jit(run.train_step_fn())(run.create_state(), batch)
    metrics = jax.device_get(metrics)
    assert all(np.isfinite(v) for v in metrics.values()), metrics
    return metrics


def make_workdir(path: Path, config: Any, pool: np.ndarray | None = None) -> str:
    """A workdir holding the initial state as its checkpoint (what training writes first)."""
    from facegan_jax import fileio
    from facegan_jax import workdir as workdir_lib
    from facegan_jax.training import checkpointing, components

    run = components.build(config)
    workdir_lib.write_config(str(path), config)
    manager = checkpointing.create_manager(str(path))
    checkpointing.save(manager, run.create_state(), force=True)
    manager.wait_until_finished()
    if pool is not None:
        fileio.save_npy(workdir_lib.attribute_pool_path(str(path)), pool)
    return str(path)


def untrained_classifier(image_size: int = 32, feature_dim: int = 64, seed: int = 0) -> Any:
    """A random-init attribute classifier (its features still tell images apart)."""
    from facegan_jax.metrics import attributes

    widths = attributes.default_widths(image_size)
    return attributes.Classifier(
        image_size=image_size,
        widths=widths,
        feature_dim=feature_dim,
        params=attributes.init_params(widths, feature_dim, image_size, seed=seed),
    )
