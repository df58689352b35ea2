"""The GAN training run: `train_and_evaluate(config, workdir)`, its hooks on the one loop.

Owns the run's life cycle: check the config, the data and the workdir; build
models, optimizers and the mesh; restore the newest intact checkpoint or
initialise; stream batches from the input pipeline from the saved position;
run the jitted train step (state donated) in the one loop (`loop.run`), whose
hooks write metrics (TensorBoard + log lines with steps/s and ETA), sample grids
of the fixed control latents, FID, time marks and checkpoints; and stop cleanly
(checkpoint first) on SIGTERM or Ctrl-C, or when a caller's hook asks.

Robustness rules the loop keeps:

* **Validate first.** `validate_config`, `check_workdir`, `check_architecture`
  and opening the dataset run before anything is written into the workdir; a
  mistake is one `errors.UsageError` that names the field or file.
* **Bounded run-ahead.** JAX dispatches steps asynchronously. Before
  dispatching step t the host waits until step t - `MAX_STEPS_AHEAD` is done
  (it holds that step's metrics, which are not donated), so the device queue
  stays full but the host is never more than two steps ahead: a stop request is
  answered with a checkpoint within about two step times, and the steps/s and
  ETA in the log come from completed steps, not from dispatches.
* **Stop together.** SIGTERM (pre-emption, `scancel`) and Ctrl-C set a flag
  checked before each dispatch; the state of the last dispatched step is saved
  and the run returns. With several processes the stop step must be the same
  everywhere: JAX's preemption service (started by `jax.distributed.initialize`)
  catches SIGTERM on any process and `multihost_utils.reached_preemption_sync_point`
  returns True on every process at the same step (see `StopRequests`).
* **Never save a diverged state.** Metrics are checked for non-finite values
  before every checkpoint and log line; divergence stops the run with
  `errors.TrainingDivergedError` naming the step and the last good checkpoint.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from clu import metric_writers
from flax import traverse_util

from facegan_jax import errors, fileio, models, sharding
from facegan_jax import workdir as workdir_lib
from facegan_jax.data import input_pipeline
from facegan_jax.data.celeba_attributes import NUM_ATTRIBUTES
from facegan_jax.generation import sampling
from facegan_jax.training import checkpointing, components, loop, losses
from facegan_jax.training import state as state_lib
from facegan_jax.training import train_step as train_step_lib

# Steps the host may dispatch beyond the last one known to be complete.
MAX_STEPS_AHEAD = 2


class StopRequests:
    """When to stop early: SIGTERM or Ctrl-C, at a step all processes agree on.

    One process: SIGTERM and the first Ctrl-C set a flag (a second Ctrl-C
    raises KeyboardInterrupt at once). Several processes: JAX's preemption
    service owns SIGTERM (its C++ handler, installed by
    `jax.distributed.initialize`; a Python handler would replace it), Ctrl-C is
    passed on to it as SIGTERM, and `requested(step)` asks
    `multihost_utils.reached_preemption_sync_point(step)`, which turns True on
    every process at the same step. It must be called once per step with the
    same step numbers everywhere; the loop calls it before each dispatch.
    """

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._multi = jax.process_count() > 1
        self._sync_available = True
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequests:
        handlers = {signal.SIGINT: self._on_sigint}
        if not self._multi:
            handlers[signal.SIGTERM] = self._on_sigterm
        for signum, handler in handlers.items():
            with contextlib.suppress(ValueError):  # not the main thread (some test runners)
                self._previous[signum] = signal.signal(signum, handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, previous in self._previous.items():
            # None: a handler installed outside Python (it was replaced; the default is the best).
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        del signum, frame
        self.signal_name = self.signal_name or "SIGTERM"

    def _on_sigint(self, signum: int, frame: Any) -> None:
        del frame
        if self._multi:
            signal.raise_signal(signal.SIGTERM)  # JAX's preemption notifier agrees on the step
            return
        if self.signal_name is not None:
            raise KeyboardInterrupt
        self.signal_name = "Ctrl-C"
        logging.warning("Ctrl-C: stopping at the next step with a checkpoint (again: abort)")

    def requested(self, step: int) -> bool:
        """Whether to stop before dispatching step `step + 1` (call once per step)."""
        if not self._multi:
            return self.signal_name is not None
        if not self._sync_available:
            return False
        from jax.experimental import multihost_utils

        try:
            stop = multihost_utils.reached_preemption_sync_point(step)
        except RuntimeError as e:  # jax_enable_preemption_service is off
            logging.warning("SIGTERM will not checkpoint: %s", e)
            self._sync_available = False
            return False
        if stop:
            self.signal_name = "SIGTERM (preemption sync point)"
        return stop


class Clock:
    """Wall-clock budgets of a run: time-marked checkpoints and a deadline.

    `config.checkpoint_every_minutes` saves a checkpoint at the first step after
    every multiple of it, and `config.train_minutes` stops the run (with a
    checkpoint) at the first step after it; both count training time from the
    first completed step (compilation excluded) and are off at 0. This is what
    equal-wall-clock comparisons (`tools.ablate`) and cluster time limits need.
    With several processes the decision is process 0's, broadcast at log steps, so
    every process saves and stops at the same step.
    """

    def __init__(self, train_minutes: float, every_minutes: float, check_every: int):
        self.limit = train_minutes * 60.0 if train_minutes > 0 else None
        self.every = every_minutes * 60.0 if every_minutes > 0 else None
        self.check_every = check_every
        self._start: float | None = None
        self._next_mark = self.every

    @property
    def active(self) -> bool:
        return self.limit is not None or self.every is not None

    def start(self) -> None:
        self._start = time.perf_counter()

    def elapsed(self) -> float:
        return 0.0 if self._start is None else time.perf_counter() - self._start

    def time_left(self) -> float | None:
        """Seconds until `config.train_minutes` stops the run; None without a deadline."""
        return None if self.limit is None else self.limit - self.elapsed()

    def due(self, step: int) -> tuple[bool, bool]:
        """(save a time-marked checkpoint now, stop now) after completing `step`."""
        if not self.active or self._start is None:
            return False, False
        if jax.process_count() > 1 and step % self.check_every:
            return False, False
        elapsed = self.elapsed()
        mark = self._next_mark is not None and elapsed >= self._next_mark
        stop = self.limit is not None and elapsed >= self.limit
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            flags = multihost_utils.broadcast_one_to_all(np.array([mark, stop], np.int32))
            mark, stop = bool(flags[0]), bool(flags[1])
        if mark:
            while self._next_mark is not None and self._next_mark <= elapsed:
                self._next_mark += self.every
        return mark, stop


class MetricWindow:
    """Metrics of the steps since the last log line, checked finite before use."""

    def __init__(self) -> None:
        self._items: list[tuple[int, dict[str, jax.Array]]] = []
        self._checked = 0

    def add(self, step: int, metrics: dict[str, jax.Array]) -> None:
        self._items.append((step, metrics))

    def check_finite(self, manager: checkpointing.CheckpointManager) -> None:
        """Raises `errors.TrainingDivergedError` at the first step with a non-finite metric.

        Blocks until the unchecked steps are done (a chosen sync point).
        """
        items = self._items[self._checked :]
        values = jax.device_get([m for _, m in items])
        for (step, _), vals in zip(items, values, strict=True):
            bad = sorted(k for k, v in vals.items() if not np.all(np.isfinite(v)))
            if bad:
                manager.wait_until_finished()  # a save in flight holds an earlier, finite state
                latest = manager.latest_step()
                good = (
                    f"the last good checkpoint is {manager.step_dir(latest)}"
                    if latest is not None
                    else "there is no checkpoint yet"
                )
                raise errors.TrainingDivergedError(
                    f"training diverged: non-finite {', '.join(bad)} at step {step} (this state "
                    f"is not saved); {good}; lower config.g_optimizer.learning_rate / "
                    "config.d_optimizer.learning_rate (or change the loss) and run again"
                )
        self._checked = len(self._items)

    def mean_and_clear(self) -> dict[str, float]:
        """Mean of each metric over the window (call `check_finite` first)."""
        values = jax.device_get([m for _, m in self._items])  # on the host already: cached
        self._items.clear()
        self._checked = 0
        return {k: float(np.mean([v[k] for v in values])) for k in values[0]}


# ------------------------------------------------------------------------- validation
def validate_config(config: Any) -> None:
    """Checks the config before anything is built, naming the field.

    Raises:
      errors.ConfigError: a value that cannot be trained (one line, names the field).
    """
    try:
        _validate_config(config)
    except errors.FaceganError:
        raise
    except (ValueError, TypeError) as e:
        raise errors.ConfigError(errors.one_line(e)) from e


def _validate_config(config: Any) -> None:
    if config.total_steps < 0:
        raise ValueError(f"config.total_steps={config.total_steps} must be >= 0")
    for name in ("log_every_steps", "sample_every_steps", "checkpoint_every_steps"):
        if config[name] < 1:
            raise ValueError(f"config.{name}={config[name]} must be >= 1")
    for name in ("train_minutes", "checkpoint_every_minutes"):
        if not config.get(name, 0.0) >= 0:
            raise ValueError(f"config.{name}={config[name]} must be >= 0 (0: off)")
    for name in ("max_checkpoints_to_keep", "num_control_samples"):
        if config[name] < 1:
            raise ValueError(f"config.{name}={config[name]} must be >= 1")
    if config.fid.every_steps < 0:
        raise ValueError(f"config.fid.every_steps={config.fid.every_steps} must be >= 0 (0: off)")
    if config.attr_eval.every_steps < 0:
        raise ValueError(
            f"config.attr_eval.every_steps={config.attr_eval.every_steps} must be >= 0 (0: off)"
        )
    if config.attr_eval.every_steps:
        from facegan_jax.metrics import attributes

        attributes.check_folder(config.attr_eval.classifier, "config.attr_eval.classifier")
    if config.train.batch_size < 1:
        raise ValueError(f"config.train.batch_size={config.train.batch_size} must be >= 1")
    if not 0 <= config.train.ema_decay < 1:
        raise ValueError(f"config.train.ema_decay={config.train.ema_decay} must be in [0, 1)")
    data = config.data
    if data.name not in input_pipeline.KNOWN_DATASETS:
        raise ValueError(
            f"config.data.name={data.name!r} is not a known dataset; known: "
            f"{', '.join(input_pipeline.KNOWN_DATASETS)}"
        )
    if data.crop not in input_pipeline.KNOWN_CROPS:
        raise ValueError(
            f"config.data.crop={data.crop!r} is not known; known: "
            f"{', '.join(input_pipeline.KNOWN_CROPS)}"
        )
    if data.resize not in input_pipeline.RESIZE_METHODS:
        raise ValueError(
            f"config.data.resize={data.resize!r} is not known; known: "
            f"{', '.join(input_pipeline.RESIZE_METHODS)}"
        )
    if data.image_size < 1:
        raise ValueError(f"config.data.image_size={data.image_size} must be >= 1")
    if data.channels not in (1, 3):
        raise ValueError(f"config.data.channels={data.channels} must be 1 or 3")
    train_step_lib.validate_schedule(config)
    losses.get_loss(config.loss.name)
    run = components.build(config)  # model family and its fields, optimizers
    sharding.check_global_batch(config.train.batch_size, run.mesh)


def check_architecture(run: components.Components) -> None:
    """Traces (without computing) the state and the generator: the image size must be reachable.

    Raises:
      errors.ConfigError: the model cannot be built at `config.data.image_size` /
        `channels`, naming the field and the model.
    """
    config = run.config
    name, size, channels = config.model.name, config.data.image_size, config.data.channels
    n = state_lib.init_batch_size(config)
    z = jax.ShapeDtypeStruct((n, config.model.z_dim), jnp.float32)
    attrs = (
        jax.ShapeDtypeStruct((n, NUM_ATTRIBUTES), jnp.float32)
        if models.is_conditional(config)
        else None
    )

    def generate(state: state_lib.GanState, z: jax.Array, attrs: jax.Array | None) -> jax.Array:
        return run.generator.apply(
            {"params": state.g_params, **state.g_vars}, z, attrs, train=False
        )

    try:
        shapes = jax.eval_shape(run.init_state, jax.random.PRNGKey(0))
        images = jax.eval_shape(generate, shapes, z, attrs)
    except (ValueError, TypeError) as e:
        message = errors.one_line(e)
        if repr(name) not in message:
            message += f" [model {name!r}]"
        raise errors.ConfigError(message) from e
    if tuple(images.shape[1:]) != (size, size, channels):
        raise errors.ConfigError(
            f"the {name!r} generator makes {'x'.join(map(str, images.shape[1:]))} images, not "
            f"config.data.image_size={size} with config.data.channels={channels}; choose a "
            "size this model produces"
        )


def _flat(tree: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {f"{prefix}.{k}": v for k, v in traverse_util.flatten_dict(tree, sep=".").items()}


def check_workdir(config: Any, workdir: str) -> None:
    """A workdir that holds a run must hold one of the same model (its config.json).

    Other fields (steps, learning rates, logging) may change between runs; the model
    and the image shape may not, because the checkpoints would not fit.

    Raises:
      errors.WorkdirError: naming the differing fields and the workdir's config file.
    """
    if not os.fspath(workdir).strip():  # abspath('') would be the current directory
        raise errors.WorkdirError("--workdir is empty; name the directory of the run")
    try:
        fileio.check_storage_client(workdir)
    except ValueError as e:
        raise errors.WorkdirError(str(e)) from None
    workdir = fileio.resolve(workdir)
    if fileio.isfile(workdir):
        raise errors.WorkdirError(f"--workdir {workdir} is a file, not a directory")
    if not workdir_lib.is_workdir(workdir):
        return
    path = workdir_lib.config_path(workdir)
    try:
        old = components.read_run_config(workdir)
    except (ValueError, OSError) as e:
        raise errors.WorkdirError(errors.one_line(e)) from e
    keys = ("image_size", "channels")
    before = {
        **_flat(old.model.to_dict(), "config.model"),
        **{f"config.data.{k}": old.data.get(k) for k in keys},
    }
    now = {
        **_flat(config.model.to_dict(), "config.model"),
        **{f"config.data.{k}": config.data.get(k) for k in keys},
    }
    diffs = [
        f"{k}={now.get(k)!r} here, {before.get(k)!r} in the run"
        for k in sorted(set(before) | set(now))
        if before.get(k) != now.get(k)
    ]
    if diffs:
        more = f" and {len(diffs) - 2} more" if len(diffs) > 2 else ""
        raise errors.WorkdirError(
            f"--workdir {workdir} holds a run of a different model ({'; '.join(diffs[:2])}{more}); "
            f"use a new --workdir, or the run's own config ({path})"
        )


def _open_dataset(config: Any, batch_size: int, start_batch: int) -> Any:
    """The training batches from `start_batch` on; a dataset that cannot be read is a DataError."""
    try:
        return input_pipeline.create_dataset(
            config,
            config.data.train_split,
            batch_size=batch_size,
            shuffle=True,
            repeat=True,
            start_batch=start_batch,
        )
    except (ValueError, OSError) as e:
        raise errors.DataError(errors.one_line(e)) from e


def load_attribute_pool(config: Any, workdir: str) -> np.ndarray | None:
    """Real attribute vectors [P, 40] for conditional sampling, cached in the workdir."""
    if not models.is_conditional(config):
        return None
    path = workdir_lib.attribute_pool_path(workdir)
    if fileio.exists(path):
        return fileio.load_npy(path)
    pool = np.asarray(input_pipeline.attribute_pool(config), np.float32)
    if jax.process_index() == 0:
        fileio.save_npy(path, pool)
    return pool


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


def _make_eval_hooks(
    config: Any, generator: Any, pool: np.ndarray | None, workdir: str
) -> list[tuple[int, Any]]:
    """(every_steps, hook(state) -> scalars) for FID/KID and the attribute metrics that are on.

    The FID hook is left out, after one warning, when the Inception weights are unavailable.
    """
    from facegan_jax.metrics import evaluation

    hooks = []
    if config.fid.every_steps:
        fid_hook = evaluation.make_training_hook(config, generator, pool, workdir)
        if fid_hook is not None:
            hooks.append((config.fid.every_steps, fid_hook))
    if config.attr_eval.every_steps:
        attr_hook = evaluation.make_attribute_hook(config, generator, pool, workdir)
        hooks.append((config.attr_eval.every_steps, attr_hook))
    return hooks


def _write_report(workdir: str) -> None:
    """The run's pictures (report/): a report never fails a finished run."""
    from facegan_jax.report import run_report as report

    try:
        report.write_report(workdir)
    except (OSError, ImportError, ValueError) as e:
        logging.warning("report not written: %s", errors.one_line(e))


# ------------------------------------------------------------------------------- loop
def train_and_evaluate(
    config: Any,
    workdir: str,
    *,
    exit_on_stop: bool = False,
    hooks: Sequence[loop.Hook] = (),
) -> state_lib.GanState:
    """Trains the GAN described by `config`, writing everything to `workdir`.

    Resumes from the newest intact checkpoint in `workdir` if there is one. Stops
    early, after saving a checkpoint, on SIGTERM or Ctrl-C; a stopped run skips the
    report (a pre-empted job has seconds left; `facegan-report` or the next run's
    end writes it). With `exit_on_stop` (the command line) a stopped run then ends
    the process at once, `os._exit(0)` after the checkpoint is complete and the
    logs flushed: otherwise the tf.data iterator's destructor waits for its
    producer threads, which held a stopped DCGAN-64 run 20-35 s after its last
    line (`tools/preemption.py` measures signal-to-exit).

    `hooks` run after the run's own (logging, samples, evaluation, checkpoints, time
    marks) at every step, as `hook(step, state, metrics)`; True stops the run there
    (without a checkpoint of its own: add one to the hook if it needs one).

    Returns:
      The final training state (or the state at which the run was stopped).

    Raises:
      errors.UsageError: a config, data or workdir mistake, found before anything
        is written into `workdir`.
      errors.TrainingDivergedError: non-finite metrics (naming the last good checkpoint).
      errors.CheckpointError: a checkpoint cannot be written, or none can be read.
    """
    # Everything up to `_open_dataset` only reads: a mistake leaves the workdir untouched.
    validate_config(config)
    check_workdir(config, workdir)
    workdir = fileio.resolve(workdir)
    run = components.build(config)
    check_architecture(run)
    step_examples = config.train.batch_size * config.train.n_critic
    manager, state = None, None
    if fileio.isdir(workdir_lib.checkpoint_dir(workdir)):
        manager = _create_manager(workdir, config)
        if manager.all_steps():
            state = checkpointing.restore(manager, run.abstract_state(), set_aside_corrupt=True)
    start_batch = 0 if state is None else int(state.examples_seen) // step_examples
    dataset = _open_dataset(config, step_examples // jax.process_count(), start_batch)

    logging.info(
        "JAX process %d/%d, devices: %s", jax.process_index(), jax.process_count(), jax.devices()
    )
    try:
        fileio.makedirs(workdir)
    except OSError as e:
        raise errors.WorkdirError(f"cannot create --workdir {workdir}: {e.strerror}") from e
    if manager is None:
        manager = _create_manager(workdir, config)
    if state is None:
        state = run.create_state()
        logging.info("Initialised a new run in %s", workdir)
    else:
        logging.info("Resumed from checkpoint step %d in %s", int(state.step), manager.directory)
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
    batches = input_pipeline.device_put_batches(
        dataset.as_numpy_iterator(), run.batch_sharding, config.data.prefetch_to_device
    )
    pool = load_attribute_pool(config, workdir)
    control = ControlSampler(config, run.generator, pool, workdir)
    eval_hooks = _make_eval_hooks(config, run.generator, pool, workdir)

    train_step = run.scheduled_train_step(initial_step)  # the guided step, then without
    clock = Clock(
        config.get("train_minutes", 0.0),
        config.get("checkpoint_every_minutes", 0.0),
        config.log_every_steps,
    )
    progress = loop.Progress(config.total_steps, step_examples, clock.time_left)
    window = MetricWindow()
    in_flight: collections.deque[dict[str, jax.Array]] = collections.deque()
    last = config.total_steps

    def stop_before(step: int, state: state_lib.GanState) -> bool:
        while len(in_flight) >= MAX_STEPS_AHEAD:  # bounded run-ahead
            jax.block_until_ready(in_flight.popleft())
        # Checked after the wait: a signal that came during it is answered now.
        if not stop.requested(step):
            return False
        logging.warning("%s: checkpointing step %d and stopping", stop.signal_name, step)
        window.check_finite(manager)
        checkpointing.save(manager, state, force=True)
        return True

    def record(step: int, state: state_lib.GanState, metrics: Any) -> None:
        in_flight.append(metrics)
        window.add(step, metrics)
        if step == initial_step + 1:  # compiled and done: the clock starts here
            jax.block_until_ready(metrics)
            progress.start(step)
            clock.start()

    def log_scalars(step: int, state: state_lib.GanState, metrics: Any) -> None:
        window.check_finite(manager)
        scalars = window.mean_and_clear()  # step is complete after this
        scalars.update(progress.report(step) or {})
        writer.write_scalars(step, {f"train/{k}": v for k, v in scalars.items()})
        manager.finish_if_done()

    def checkpoint_and_deadline(step: int, state: state_lib.GanState, metrics: Any) -> bool:
        mark, deadline = clock.due(step)
        if mark or deadline:
            minutes = clock.elapsed() / 60.0
            logging.info("time mark %.2f min: checkpoint at step %d", minutes, step)
            writer.write_scalars(step, {"train/minutes": minutes})
        if loop.is_due(step, config.checkpoint_every_steps, last) or mark or deadline:
            window.check_finite(manager)
            checkpointing.save(manager, state, force=mark or deadline)
        if deadline:
            logging.warning("config.train_minutes reached: stopping at step %d", step)
        return deadline

    all_hooks: list[loop.Hook] = [
        record,
        loop.Periodic(config.log_every_steps, last, log_scalars),
        loop.Periodic(config.sample_every_steps, last, lambda n, s, _: control(s, n, writer)),
        *(
            loop.Periodic(every, last, lambda n, s, _, h=hook: writer.write_scalars(n, h(s)))
            for every, hook in eval_hooks
        ),
        checkpoint_and_deadline,
        *hooks,
    ]
    step = initial_step
    logging.info("Training from step %d to %d in %s", step, config.total_steps, workdir)
    try:
        with StopRequests() as stop:
            state, step = loop.run(
                train_step,
                state,
                batches,
                first_step=initial_step,
                last_step=last,
                hooks=all_hooks,
                before_step=stop_before,
            )
            manager.wait_until_finished()  # still answering signals: the last save completes
    except BaseException:
        _finish_saving_quietly(manager)
        raise
    writer.flush()
    if stop.signal_name is not None:
        logging.warning(
            "Stopped at step %d (%s) with checkpoint %s; the report is written by "
            "`python -m facegan_jax.report --workdir %s` or at the end of the resumed run",
            step,
            stop.signal_name,
            manager.step_dir(step),
            workdir,
        )
        if exit_on_stop:
            _exit_now()
        return state
    if jax.process_index() == 0:
        _write_report(workdir)
        logging.info(
            "Done at step %d. Samples: %s  Report: %s  Logs (TensorBoard): %s  Checkpoints: %s",
            step,
            control.dir,
            workdir_lib.report_dir(workdir),
            workdir,
            manager.directory,
        )
    return state


def _exit_now() -> None:
    """Ends a stopped run's process now: logs flushed, nothing else waited for.

    The checkpoint is complete (`wait_until_finished` returned) and the metric
    writer flushed before this; what is skipped is interpreter shutdown, whose
    destruction of the tf.data iterator blocks until its producer threads finish.
    """
    import logging as std_logging

    for handler in [*std_logging.getLogger().handlers, logging.get_absl_handler()]:
        with contextlib.suppress(Exception):
            handler.flush()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)


def _create_manager(workdir: str, config: Any) -> checkpointing.CheckpointManager:
    return checkpointing.create_manager(
        workdir, config.max_checkpoints_to_keep, remove_partial_saves=True
    )


def _finish_saving_quietly(manager: checkpointing.CheckpointManager) -> None:
    """Lets a save in flight complete before an error propagates (its own error is logged)."""
    try:
        manager.wait_until_finished()
    except Exception as e:  # the error being raised matters more
        logging.warning("%s", errors.one_line(e))
