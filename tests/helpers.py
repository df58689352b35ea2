"""Small builders shared by the tests: tiny configs, models, states and fake batches."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from configs import default
from facegan_jax import sharding
from facegan_jax import state as state_lib
from facegan_jax.models import build_models


def tiny_config(**overrides: Any) -> Any:
    """The default config shrunk to a smoke run; `overrides` use dotted names."""
    config = default.get_config("runlocal")
    for name, value in overrides.items():
        node = config
        *parents, leaf = name.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


def build_all(config: Any):
    """(generator, discriminator, g_tx, d_tx, mesh) for `config`."""
    generator, discriminator = build_models(config)
    g_tx = state_lib.create_optimizer(config.g_optimizer, "config.g_optimizer")
    d_tx = state_lib.create_optimizer(config.d_optimizer, "config.d_optimizer")
    return generator, discriminator, g_tx, d_tx, sharding.create_mesh()


def fake_batch(config: Any, seed: int = 0, n: int | None = None) -> dict[str, jax.Array]:
    """A random batch of `n` (default: batch_size * n_critic) images in [-1, 1] and attributes."""
    n = n or config.train.batch_size * config.train.n_critic
    rng = np.random.default_rng(seed)
    s, c = config.data.image_size, config.data.channels
    return {
        "image": jnp.asarray(rng.uniform(-1, 1, (n, s, s, c)), jnp.float32),
        "attributes": jnp.asarray(rng.integers(0, 2, (n, 40)), jnp.float32),
    }
