"""The training state (`GanState`, one pytree) and its creation, already sharded.

`GanState` holds everything a run needs to continue exactly: the step, the base
PRNG key, how many input batches were consumed, both networks' parameters,
their non-parameter variables (BatchNorm statistics in `batch_stats`,
spectral-norm vectors in `spectral`), both optimizer states, and the EMA
generator. It is checkpointed whole (see checkpointing.py).

The optimizers (optax transformations) are not in the state: they are pure
functions rebuilt from the config, so the state stays a plain pytree of arrays.
"""

from __future__ import annotations

import math
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from facegan_jax import sharding
from facegan_jax.datasets.celeba_attributes import NUM_ATTRIBUTES

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


def create_optimizer(opt_config: Any, field: str) -> optax.GradientTransformation:
    """Builds the optax optimizer described by `config.g_optimizer` / `config.d_optimizer`."""
    if opt_config.name == "adam":
        tx = optax.adam(opt_config.learning_rate, b1=opt_config.b1, b2=opt_config.b2)
    elif opt_config.name == "rmsprop":
        # Keras RMSprop: eps outside the square root, rho = `decay`.
        tx = optax.rmsprop(opt_config.learning_rate, decay=opt_config.decay, eps=opt_config.eps)
    else:
        raise ValueError(f"{field}.name={opt_config.name!r} is not known; use 'adam' or 'rmsprop'")
    if opt_config.clip_value:
        tx = optax.chain(optax.clip(opt_config.clip_value), tx)
    return tx


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
    """Initialises a fresh GanState (pure; jit it with out_shardings to create it sharded)."""
    k_g, k_d, k_train = jax.random.split(key, 3)
    n = init_batch_size(config)
    z = jnp.zeros((n, config.model.z_dim), jnp.float32)
    attrs = jnp.zeros((n, NUM_ATTRIBUTES), jnp.float32) if config.model.num_attributes else None
    g_params, g_vars = split_variables(generator.init({"params": k_g}, z, attrs, train=False))
    size, channels = config.data.image_size, config.data.channels
    images = jnp.zeros((n, size, size, channels), jnp.float32)
    d_variables = discriminator.init({"params": k_d, "dropout": k_d}, images, train=False)
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


def create_state(
    config: Any,
    generator: nn.Module,
    discriminator: nn.Module,
    g_tx: optax.GradientTransformation,
    d_tx: optax.GradientTransformation,
    mesh: Mesh,
) -> GanState:
    """Creates the initial state from `config.seed`, replicated over the mesh."""

    def init(key: jax.Array) -> GanState:
        return init_state(key, config, generator, discriminator, g_tx, d_tx)

    init_jit = jax.jit(init, out_shardings=sharding.replicated(mesh))
    return init_jit(jax.random.PRNGKey(config.seed))


def abstract_state(
    config: Any,
    generator: nn.Module,
    discriminator: nn.Module,
    g_tx: optax.GradientTransformation,
    d_tx: optax.GradientTransformation,
    mesh: Mesh,
) -> GanState:
    """The state's shapes, dtypes and shardings without computing it (restore target)."""

    def init(key: jax.Array) -> GanState:
        return init_state(key, config, generator, discriminator, g_tx, d_tx)

    shapes = jax.eval_shape(init, jax.random.PRNGKey(0))
    rep = sharding.replicated(mesh)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rep), shapes)
