"""The training state (`GanState`, one pytree) and its creation, already sharded.

`GanState` holds everything a run needs to continue exactly: the step, the base
PRNG key, how many input batches were consumed, both networks' parameters,
their non-parameter variables (BatchNorm statistics in `batch_stats`,
spectral-norm vectors in `spectral`), both optimizer states, and the EMA
generator. It is checkpointed whole (see checkpointing.py).

The optimizers (optax transformations) are not in the state: they are pure
functions rebuilt from the config, so the state stays a plain pytree of arrays.
`components.py` builds the modules and optimizers and creates the state
(sharded) or its abstract restore target from `init_state`.
"""

from __future__ import annotations

import math
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from facegan_jax import models
from facegan_jax.data.celeba_attributes import NUM_ATTRIBUTES

PyTree = Any


@flax.struct.dataclass
class GanState:
    """All training state, a pytree of arrays.

    Attributes:
      step: number of completed train steps (generator updates), int32 scalar.
      key: base PRNG key; step `t` uses `fold_in(key, t)`.
      examples_seen: real images consumed so far (the input pipeline position).
      g_params, d_params: network parameters.
      g_vars, d_vars: non-parameter collections ('batch_stats', 'spectral').
      g_opt_state, d_opt_state: optax states.
      ema_params, ema_vars: EMA generator (see train_step.update_ema).
    """

    step: jax.Array
    key: jax.Array
    examples_seen: jax.Array
    g_params: PyTree
    g_vars: PyTree
    g_opt_state: PyTree
    d_params: PyTree
    d_vars: PyTree
    d_opt_state: PyTree
    ema_params: PyTree
    ema_vars: PyTree


def split_variables(variables: PyTree) -> tuple[PyTree, PyTree]:
    """Splits Flax variables into (params, every other collection)."""
    variables = dict(variables)
    params = variables.pop("params")
    return params, variables


def init_batch_size(config: Any) -> int:
    """Batch used to initialise the modules (divisible by the minibatch-stddev group)."""
    return math.lcm(2, int(config.model.get("mbstd_group_size", 1) or 1))


def init_state(
    key: jax.Array,
    config: Any,
    generator: nn.Module,
    discriminator: nn.Module,
    g_tx: optax.GradientTransformation,
    d_tx: optax.GradientTransformation,
) -> GanState:
    """Initialises a fresh GanState (pure; `components.Components.create_state` jits it sharded)."""
    k_g, k_d, k_train = jax.random.split(key, 3)
    n = init_batch_size(config)
    z = jnp.zeros((n, config.model.z_dim), jnp.float32)
    attrs = jnp.zeros((n, NUM_ATTRIBUTES), jnp.float32) if models.is_conditional(config) else None
    g_params, g_vars = split_variables(generator.init({"params": k_g}, z, attrs, train=False))
    size, channels = config.data.image_size, config.data.channels
    images = jnp.zeros((n, size, size, channels), jnp.float32)
    d_inputs = (images, attrs) if attrs is not None else (images,)
    d_variables = discriminator.init({"params": k_d, "dropout": k_d}, *d_inputs, train=False)
    d_params, d_vars = split_variables(d_variables)
    return GanState(
        step=jnp.zeros((), jnp.int32),
        key=k_train,
        examples_seen=jnp.zeros((), jnp.int32),
        g_params=g_params,
        g_vars=g_vars,
        g_opt_state=g_tx.init(g_params),
        d_params=d_params,
        d_vars=d_vars,
        d_opt_state=d_tx.init(d_params),
        ema_params=g_params,
        ema_vars=g_vars,
    )
