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
