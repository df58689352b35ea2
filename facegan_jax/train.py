"""The training loop: `train_and_evaluate(config, workdir)`.

Owns the run's life cycle: build models, optimizers and the mesh; restore the
latest checkpoint or initialise; stream batches from the input pipeline from
the saved position; run the jitted train step (state donated, no host sync
except every `log_every_steps`); write metrics (TensorBoard + log lines with
steps/s and ETA), sample grids of the fixed control latents, FID, and
checkpoints; and stop cleanly (checkpoint first) on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions
from flax import traverse_util

from facegan_jax import checkpointing, components, input_pipeline, sampling, sharding
from facegan_jax import state as state_lib
from facegan_jax import train_step as train_step_lib
from facegan_jax import workdir as workdir_lib


class _StopRequested:
    """Turns SIGTERM (pre-emption, `scancel`) into a flag the loop checks between steps."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> _StopRequested:
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handler)
        except ValueError:  # not the main thread (e.g. under some test runners)
            self._previous = None
        return self

    def _handler(self, signum: int, frame: Any) -> None:
        del signum, frame
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def validate_config(config: Any) -> None:
    """Checks config values that would otherwise fail deep inside JAX, naming the field."""
    if config.total_steps < 0:
        raise ValueError(f"config.total_steps={config.total_steps} must be >= 0")
    for name in ("log_every_steps", "sample_every_steps", "checkpoint_every_steps"):
        if config[name] < 1:
            raise ValueError(f"config.{name}={config[name]} must be >= 1")
    if config.train.batch_size < 1:
        raise ValueError(f"config.train.batch_size={config.train.batch_size} must be >= 1")
    if config.data.channels not in (1, 3):
        raise ValueError(f"config.data.channels={config.data.channels} must be 1 or 3")
    if not 0 <= config.train.ema_decay < 1:
        raise ValueError(f"config.train.ema_decay={config.train.ema_decay} must be in [0, 1)")
    train_step_lib.validate_schedule(config)


def load_attribute_pool(config: Any, workdir: str) -> np.ndarray | None:
    """Real attribute vectors [P, 40] for conditional sampling, cached in the workdir."""
    if not config.model.num_attributes:
        return None
    path = workdir_lib.attribute_pool_path(workdir)
    if os.path.exists(path):
        return np.load(path)
    pool = np.asarray(input_pipeline.attribute_pool(config), np.float32)
    if jax.process_index() == 0:
        tmp = path + ".tmp.npy"
        np.save(tmp, pool)
        os.replace(tmp, path)
    return pool


def _mean_metrics(history: list[dict[str, jax.Array]]) -> dict[str, float]:
    stacked = jax.device_get(jax.tree.map(lambda *xs: jnp.stack(xs), *history))
    return {k: float(np.mean(v)) for k, v in stacked.items()}


def _check_finite(metrics: dict[str, float], step: int, manager: Any) -> None:
    bad = {k: v for k, v in metrics.items() if not np.isfinite(v)}
    if bad:
        raise FloatingPointError(
            f"non-finite training metrics at step {step}: {bad}; the state is not saved, the "
            f"latest good checkpoint is step {manager.latest_step()} in {manager.directory}"
        )


class ControlSampler:
    """Renders the grid of fixed control latents from the EMA generator."""

    def __init__(self, config: Any, generator: Any, pool: np.ndarray | None, workdir: str):
        self.indices = np.arange(config.num_control_samples)
        self.generate = jax.jit(
            sampling.make_generate_fn(generator, config, seed=config.seed, pool=pool)
        )
        self.workdir = workdir
        self.dir = workdir_lib.samples_dir(workdir)

    def __call__(self, state: state_lib.GanState, step: int, writer: Any) -> str:
        variables = {"params": state.ema_params, **state.ema_vars}
        images = np.asarray(self.generate(variables, self.indices))
        grid = sampling.make_grid(sampling.to_uint8(images))
        path = workdir_lib.sample_grid_path(self.workdir, step)
        if jax.process_index() == 0:
            sampling.save_png(grid, path)
            sampling.save_png(grid, workdir_lib.sample_grid_path(self.workdir))
        writer.write_images(step, {"samples": grid[None]})
        return path


def _make_fid_hook(config: Any, generator: Any, pool: np.ndarray | None, workdir: str):
    """Returns `fid_hook(state) -> dict` or None when FID is off or its weights are unavailable."""
    if not config.fid.every_steps:
        return None
    from facegan_jax import evaluation

    return evaluation.make_training_hook(config, generator, pool, workdir)


def train_and_evaluate(config: Any, workdir: str) -> state_lib.GanState:
    """Trains the GAN described by `config`, writing everything to `workdir`.

    Resumes from the latest checkpoint in `workdir` if there is one.

    Returns:
      The final training state.
    """
    validate_config(config)
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    run = components.build(config)
    n_critic = config.train.n_critic
    step_examples = config.train.batch_size * n_critic
    sharding.check_global_batch(config.train.batch_size, run.mesh)
    per_process = step_examples // jax.process_count()

    manager = checkpointing.create_manager(workdir, config.max_checkpoints_to_keep)
    if manager.latest_step() is not None:
        state = checkpointing.restore(manager, run.abstract_state())
        logging.info("Resumed from checkpoint step %d in %s", int(state.step), manager.directory)
    else:
        state = run.create_state()
        logging.info("Initialised a new run in %s", workdir)
    if jax.process_index() == 0:
        workdir_lib.write_config(workdir, config)
    initial_step = int(state.step)

    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
    if initial_step == 0:
        writer.write_hparams(
            {
                k: v
                for k, v in traverse_util.flatten_dict(config.to_dict(), sep=".").items()
                if isinstance(v, int | float | str)
            }
        )

    train_step = run.train_step
    start_batch = int(state.examples_seen) // step_examples
    dataset = input_pipeline.create_dataset(
        config,
        config.data.train_split,
        batch_size=per_process,
        shuffle=True,
        repeat=True,
        start_batch=start_batch,
    )
    batches = input_pipeline.device_put_batches(
        dataset.as_numpy_iterator(), run.batch_sharding, config.data.prefetch_to_device
    )
    pool = load_attribute_pool(config, workdir)
    control = ControlSampler(config, run.generator, pool, workdir)
    fid_hook = _make_fid_hook(config, run.generator, pool, workdir)

    report = periodic_actions.ReportProgress(
        num_train_steps=config.total_steps, writer=writer, every_steps=config.log_every_steps
    )
    history: list[dict[str, jax.Array]] = []
    step = initial_step
    last_log = (time.perf_counter(), step)
    logging.info("Training from step %d to %d in %s", step, config.total_steps, workdir)
    with _StopRequested() as stop:
        try:
            while step < config.total_steps:
                batch = next(batches)
                state, metrics = train_step(state, batch)
                history.append(metrics)
                step += 1
                report(step)
                if step % config.log_every_steps == 0 or step == config.total_steps:
                    scalars = _mean_metrics(history)
                    history.clear()
                    _check_finite(scalars, step, manager)
                    now = time.perf_counter()
                    scalars["images_per_sec"] = (
                        (step - last_log[1]) * step_examples / max(now - last_log[0], 1e-9)
                    )
                    last_log = (now, step)
                    writer.write_scalars(step, {f"train/{k}": v for k, v in scalars.items()})
                if step % config.sample_every_steps == 0 or step == config.total_steps:
                    control(state, step, writer)
                if fid_hook is not None and (
                    step % config.fid.every_steps == 0 or step == config.total_steps
                ):
                    writer.write_scalars(step, fid_hook(state))
                if step % config.checkpoint_every_steps == 0 or step == config.total_steps:
                    checkpointing.save(manager, state)
                if stop.requested:
                    logging.warning("SIGTERM received: checkpointing step %d and stopping", step)
                    checkpointing.save(manager, state, force=True)
                    break
        except KeyboardInterrupt:
            logging.warning("Interrupted: checkpointing step %d before exiting", step)
            checkpointing.save(manager, state, force=True)
            manager.wait_until_finished()
            raise
    manager.wait_until_finished()
    writer.flush()
    if jax.process_index() == 0:
        logging.info(
            "Done at step %d. Samples: %s  Logs (TensorBoard): %s  Checkpoints: %s",
            step,
            control.dir,
            workdir,
            manager.directory,
        )
    return state
