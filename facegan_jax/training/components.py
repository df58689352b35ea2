"""One builder for a run: config -> models, optimizers, mesh, state (abstract or initial), step.

Training, sampling, benchmarks and tests all build their pieces here, so a run
is assembled one way:

  run = components.build(config)
  state = run.create_state()                 # initial, replicated over run.mesh
  target = run.abstract_state()              # shapes + shardings (Orbax restore target)
  state, metrics = run.train_step(state, batch)  # jitted, state donated

`load_generator(workdir)` restores a workdir's (EMA) generator for sampling and
evaluation.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding

from facegan_jax import fileio, models, sharding
from facegan_jax import workdir as workdir_lib
from facegan_jax.generation import sampling
from facegan_jax.models import build_models, upgrade_model_fields
from facegan_jax.training import state as state_lib
from facegan_jax.training import train_step as train_step_lib

# The seed of `sample`/evaluation latents: image i of a workdir is the same everywhere.
SAMPLE_SEED = 0


# Fields one optimizer reads and the other ignores, with the defaults of configs/default.py.
_ADAM_ONLY = {"b1": 0.5, "b2": 0.999}
_RMSPROP_ONLY = {"decay": 0.9}


def create_optimizer(opt_config: Any, field: str) -> optax.GradientTransformation:
    """Builds the optax optimizer described by `config.g_optimizer` / `config.d_optimizer`.

    `eps` is read by both; `b1`, `b2` by Adam only and `decay` by RMSprop only: a
    config that moves a field the chosen optimizer ignores is refused, naming it.

    Raises:
      ValueError: naming `field` if the optimizer is unknown or a field it ignores is set.
    """
    unread = {"adam": _RMSPROP_ONLY, "rmsprop": _ADAM_ONLY}.get(opt_config.name)
    if unread is None:
        raise ValueError(f"{field}.name={opt_config.name!r} is not known; use 'adam' or 'rmsprop'")
    for key, default in unread.items():
        if key in opt_config and opt_config[key] != default:
            raise ValueError(
                f"{field}.{key}={opt_config[key]!r} has no effect with {field}.name="
                f"{opt_config.name!r}; remove it or choose the optimizer that reads it"
            )
    if opt_config.name == "adam":
        tx = optax.adam(
            opt_config.learning_rate, b1=opt_config.b1, b2=opt_config.b2, eps=opt_config.eps
        )
    else:
        # Keras RMSprop: eps outside the square root, rho = `decay`.
        tx = optax.rmsprop(opt_config.learning_rate, decay=opt_config.decay, eps=opt_config.eps)
    if opt_config.clip_value:
        tx = optax.chain(optax.clip(opt_config.clip_value), tx)
    return tx


@dataclasses.dataclass(frozen=True)
class Components:
    """Everything a run is built from; create with `build(config)`.

    Attributes:
      config: the run config.
      generator, discriminator: the Flax modules.
      g_tx, d_tx: their optax optimizers.
      mesh: the device mesh (one 'data' axis).
    """

    config: Any
    generator: nn.Module
    discriminator: nn.Module
    g_tx: optax.GradientTransformation
    d_tx: optax.GradientTransformation
    mesh: Mesh

    @property
    def replicated(self) -> NamedSharding:
        """Sharding of the state: a full copy on each device."""
        return sharding.replicated(self.mesh)

    @property
    def batch_sharding(self) -> NamedSharding:
        """Sharding of batches: split over the 'data' axis."""
        return sharding.batch_sharded(self.mesh)

    def init_state(self, key: jax.Array) -> state_lib.GanState:
        """A fresh state from `key` (pure: jit it, or use `create_state`)."""
        return state_lib.init_state(
            key, self.config, self.generator, self.discriminator, self.g_tx, self.d_tx
        )

    def create_state(self, seed: int | None = None) -> state_lib.GanState:
        """The initial state from `seed` (default `config.seed`), replicated over the mesh."""
        seed = self.config.seed if seed is None else seed
        init = jax.jit(self.init_state, out_shardings=self.replicated)
        return init(jax.random.PRNGKey(seed))

    def abstract_state(self) -> state_lib.GanState:
        """The state's shapes, dtypes and shardings without computing it (restore target)."""
        shapes = jax.eval_shape(self.init_state, jax.random.PRNGKey(0))
        rep = self.replicated
        return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rep), shapes)

    def train_step_fn(
        self, guided: bool = True
    ) -> Callable[..., tuple[state_lib.GanState, dict[str, jax.Array]]]:
        """The pure train step (not jitted): for tests that trace or differentiate it."""
        return train_step_lib.make_train_step(
            self.config, self.generator, self.discriminator, self.g_tx, self.d_tx, guided=guided
        )

    def _jit_step(self, guided: bool) -> Callable[..., tuple[state_lib.GanState, Any]]:
        rep = self.replicated
        return jax.jit(
            self.train_step_fn(guided),
            in_shardings=(rep, self.batch_sharding),
            out_shardings=(rep, rep),
            donate_argnums=(0,),
        )

    @functools.cached_property
    def train_step(self) -> Callable[..., tuple[state_lib.GanState, dict[str, jax.Array]]]:
        """`train_step(state, batch) -> (state, metrics)`, jitted over the mesh, state donated."""
        return self._jit_step(guided=True)

    @functools.cached_property
    def unguided_train_step(self) -> Callable[..., tuple[state_lib.GanState, Any]]:
        """`train_step` without classifier guidance (what `guide_decay_steps` leaves)."""
        return self._jit_step(guided=False)

    def scheduled_train_step(
        self, first_step: int
    ) -> Callable[..., tuple[state_lib.GanState, dict[str, jax.Array]]]:
        """`train_step` for a run with `first_step` steps done, called once per step.

        With `config.loss.guide_decay_steps` N, the guided step up to step N and from
        then on the step without the guide (compiled when first needed), so a decayed
        guide costs nothing. The step count is kept on the host (no device sync).
        """
        decay = int(self.config.loss.get("guide_decay_steps", 0))
        guided = self.config.loss.get("guide_classifier") and self.config.loss.guide_weight > 0
        if not decay or not guided:
            return self.train_step
        done = [first_step]

        def step(state: state_lib.GanState, batch: Any) -> tuple[state_lib.GanState, Any]:
            fn = self.train_step if done[0] < decay else self.unguided_train_step
            done[0] += 1
            return fn(state, batch)

        return step


def build(config: Any, mesh: Mesh | None = None) -> Components:
    """Builds a run's components from `config`.

    Args:
      config: the run config.
      mesh: the device mesh; default: every device of every process.

    Raises:
      ValueError: naming the config field that cannot be built.
    """
    generator, discriminator = build_models(config)
    return Components(
        config=config,
        generator=generator,
        discriminator=discriminator,
        g_tx=create_optimizer(config.g_optimizer, "config.g_optimizer"),
        d_tx=create_optimizer(config.d_optimizer, "config.d_optimizer"),
        mesh=sharding.create_mesh() if mesh is None else mesh,
    )


# Fields added outside `config.model` since workdirs were first written, with the
# value that reproduces what older runs did.
_ADDED_FIELDS = {("data", "resize"): "bilinear"}


def read_run_config(workdir: str) -> Any:
    """A workdir's config upgraded to today's fields: model fields per family (see models),
    and `_ADDED_FIELDS` filled with the behaviour the run was trained with."""
    config = workdir_lib.read_config(workdir)
    upgrade_model_fields(config)
    with config.unlocked():
        for (section, field), value in _ADDED_FIELDS.items():
            if field not in config[section]:
                config[section][field] = value
    return config


def load_attribute_pool(workdir: str) -> np.ndarray:
    """The real attribute vectors [P, 40] a conditional run samples from (written by training).

    Raises:
      FileNotFoundError: naming the file if the run never started.
    """
    path = workdir_lib.attribute_pool_path(workdir)
    try:
        return fileio.load_npy(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found: it is written when training starts") from None


def load_generator(
    workdir: str, *, step: int | None = None, use_ema: bool = True
) -> tuple[Callable[..., jax.Array], Any, Any]:
    """Loads a workdir's generator from its checkpoint.

    Args:
      workdir: a training workdir.
      step: checkpoint step (default: the latest).
      use_ema: the EMA generator (default) or the live one.

    Returns:
      (generate, variables, config): `generate(variables, indices[, attributes])`
      (variables on the first local device; metrics re-place them on their mesh)
      gives images in [-1, 1] with latents from `sampling.latents(SAMPLE_SEED, indices)`;
      without `attributes`, conditional models use vectors from the workdir's
      real attribute pool.
    """
    from facegan_jax.training import checkpointing

    config = read_run_config(workdir)
    run = build(config)
    manager = checkpointing.create_manager(workdir, config.max_checkpoints_to_keep)
    state = checkpointing.restore(manager, run.abstract_state(), step)
    if use_ema:
        variables = {"params": state.ema_params, **state.ema_vars}
    else:
        variables = {"params": state.g_params, **state.g_vars}
    # On one device, whatever mesh the state was restored onto: replicated variables would
    # make every jitted generator call run on all N devices, each computing the whole batch.
    # (Same images either way: device-count independence comes from the generators' dot
    # formulations, dcgan.Project4x4 and layers.conv_as_dot; tests/test_device_count.py.)
    variables = jax.device_put(variables, jax.local_devices()[0])
    pool = load_attribute_pool(workdir) if models.is_conditional(config) else None
    generate = sampling.make_generate_fn(run.generator, config, seed=SAMPLE_SEED, pool=pool)
    return generate, variables, config
