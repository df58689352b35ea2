"""The one training loop: a pure step over batches, with hooks after each step.

Every trainer in the project runs through `run`: the GAN run (`train.train_and_evaluate`:
logging, samples, evaluation, checkpoints and time marks are hooks, a stop request is the
`before_step` check), the wall-clock comparison (`tools.wallclock.train_for_marks`: its
time marks and deadline are one hook) and the attribute classifier
(`metrics.attributes.train_classifier`: progress is a hook). The loop owns only what all
of them share: the step count, the end of the batches, and stopping when a hook says so.

A hook is `hook(step, state, metrics) -> bool | None`, called after step `step` (1-based:
the number of completed steps) with the new state and that step's metrics; True (exactly:
not any truthy value, so a hook may return what it wrote) stops the loop after the
remaining hooks of that step have run. `Periodic` runs a function every N
steps (and at the last step); `Progress` is the steps/s, images/s and ETA line.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from absl import logging

Hook = Callable[[int, Any, Any], "bool | None"]


class BatchesExhaustedError(ValueError):
    """The batches ended before the loop's last step."""


def run(
    step_fn: Callable[[Any, Any], tuple[Any, Any]],
    state: Any,
    batches: Iterable[Any],
    *,
    first_step: int,
    last_step: int,
    hooks: Sequence[Hook] = (),
    before_step: Callable[[int, Any], bool] | None = None,
) -> tuple[Any, int]:
    """Runs `state, metrics = step_fn(state, batch)` from `first_step` to `last_step`.

    Args:
      step_fn: one update (usually jitted, the state donated).
      state: the state after `first_step` completed steps.
      batches: one batch per step; running out before `last_step` is a
        `BatchesExhaustedError`.
      first_step: completed steps before the first call.
      last_step: the loop ends after this many completed steps.
      hooks: called in order after every step (see the module docstring).
      before_step: `before_step(step, state) -> stop`, checked before each step is
        dispatched (step: the steps completed so far); True ends the loop there.

    Returns:
      (the final state, its number of completed steps).
    """
    step = first_step
    iterator = iter(batches)
    while step < last_step:
        if before_step is not None and before_step(step, state):
            break
        try:
            batch = next(iterator)
        except StopIteration:
            raise BatchesExhaustedError(
                f"the batches ran out after {step} of {last_step} steps; pass a repeated dataset"
            ) from None
        state, metrics = step_fn(state, batch)
        step += 1
        stop = False
        for hook in hooks:
            stop = hook(step, state, metrics) is True or stop  # True, not any truthy value
        if stop:
            break
    return state, step


def is_due(step: int, every_steps: int, last_step: int) -> bool:
    """`step` is a multiple of `every_steps` or the last step (`every_steps` <= 0: never)."""
    return every_steps > 0 and (step % every_steps == 0 or step == last_step)


class Periodic:
    """A hook that calls `fn(step, state, metrics)` every `every_steps` steps and at `last_step`.

    `every_steps` <= 0 never calls it. Returns what `fn` returns (True stops the loop).
    """

    def __init__(self, every_steps: int, last_step: int, fn: Hook):
        self.every_steps = every_steps
        self.last_step = last_step
        self.fn = fn

    def due(self, step: int) -> bool:
        return is_due(step, self.every_steps, self.last_step)

    def __call__(self, step: int, state: Any, metrics: Any) -> bool | None:
        return self.fn(step, state, metrics) if self.due(step) else None


def format_duration(seconds: float) -> str:
    """`1h02m03s`, `4m05s`, `6s`."""
    s = round(seconds)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Progress:
    """Steps/s, images/s and ETA measured between completed steps.

    `start(step)` and `report(step)` must be called when `step` is known to be
    complete (the GAN loop calls them right after blocking on that step's metrics).
    With a wall-clock budget (`time_left`, seconds or None), the ETA is whichever
    ends first: the remaining steps at the measured rate or the budget. `clock`
    (seconds) can be replaced in tests.
    """

    def __init__(
        self,
        total_steps: int,
        examples_per_step: int,
        time_left: Callable[[], float | None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.total_steps = total_steps
        self.examples_per_step = examples_per_step
        self._time_left = time_left
        self._clock = clock
        self._mark: tuple[float, int] | None = None

    def start(self, step: int) -> None:
        self._mark = (self._clock(), step)

    def rates(self, step: int) -> tuple[dict[str, float], float] | None:
        """({'steps_per_sec', 'images_per_sec'}, ETA seconds) since the last call, or None."""
        now = self._clock()
        mark, self._mark = self._mark, (now, step)
        if mark is None or step <= mark[1] or now <= mark[0]:
            return None
        rate = (step - mark[1]) / (now - mark[0])
        eta = (self.total_steps - step) / rate
        budget = self._time_left() if self._time_left is not None else None
        if budget is not None:
            eta = min(eta, max(budget, 0.0))
        return {"steps_per_sec": rate, "images_per_sec": rate * self.examples_per_step}, eta

    def report(self, step: int) -> dict[str, float] | None:
        """The rates since the last call (None for the first one); logs the progress line."""
        measured = self.rates(step)
        if measured is None:
            return None
        rates, eta = measured
        logging.info(
            "step %d/%d: %.3g steps/s, %.4g images/s, ETA %s",
            step,
            self.total_steps,
            rates["steps_per_sec"],
            rates["images_per_sec"],
            format_duration(eta),
        )
        return rates
