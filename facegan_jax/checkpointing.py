"""Orbax checkpoints of the whole GanState: save, restore into an abstract target, restore-or-init.

Checkpoints live in `<workdir>/checkpoints/<step>/`. Orbax writes each one to a
temporary directory and renames it when complete, so an interrupted save never
replaces a good checkpoint; `max_to_keep` old ones are kept. The run's config is
written once to `<workdir>/config.json` (never overwritten: a resumed run with
a different config keeps the original and logs the differences).
"""

from __future__ import annotations

import json
import os
from typing import Any

import orbax.checkpoint as ocp
from absl import logging

from facegan_jax.state import GanState

CONFIG_FILE = "config.json"
# Real attribute vectors [P, 40] a conditional run samples fake attributes from.
ATTRIBUTE_POOL_FILE = "attribute_pool.npy"


def checkpoint_dir(workdir: str) -> str:
    """Where the checkpoints of a run live."""
    return os.path.join(os.path.abspath(workdir), "checkpoints")


def create_manager(workdir: str, max_to_keep: int = 3) -> ocp.CheckpointManager:
    """An Orbax CheckpointManager over `<workdir>/checkpoints`."""
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def save(manager: ocp.CheckpointManager, state: GanState, *, force: bool = False) -> bool:
    """Saves `state` at its step (asynchronously; call `manager.wait_until_finished()`)."""
    step = int(state.step)
    if step in manager.all_steps():
        return False
    return manager.save(step, args=ocp.args.StandardSave(state), force=force)


def restore(manager: ocp.CheckpointManager, target: GanState, step: int | None = None) -> GanState:
    """Restores the checkpoint at `step` (default: latest) into the abstract `target`.

    Raises:
      FileNotFoundError: if there is no checkpoint.
      ValueError: naming the checkpoint directory if it cannot be read into the
        target (corrupt files, or a config whose model does not match it).
    """
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {manager.directory}")
    try:
        return manager.restore(step, args=ocp.args.StandardRestore(target))
    except Exception as e:  # orbax raises many types; give one clear message
        path = os.path.join(str(manager.directory), str(step))
        raise ValueError(
            f"cannot restore checkpoint {path}: {type(e).__name__}: {str(e).splitlines()[0][:300]} "
            "(is it complete, and does the config's model match the one that wrote it?)"
        ) from e


def write_config(workdir: str, config: Any) -> None:
    """Writes the run config to `<workdir>/config.json` once; warns on a changed config."""
    path = os.path.join(workdir, CONFIG_FILE)
    new = json.loads(config.to_json_best_effort())
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        if old != new:
            changed = sorted(_diff_keys(old, new))
            logging.warning(
                "config differs from the one in %s (kept unchanged): %s", path, ", ".join(changed)
            )
        return
    os.makedirs(workdir, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(new, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def read_config(workdir: str) -> Any:
    """Reads the config a run was started with, as an ml_collections ConfigDict."""
    import ml_collections

    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: is {workdir!r} a facegan_jax training workdir?")
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    return ml_collections.ConfigDict(_tuples(data))


def _tuples(obj: Any) -> Any:
    """JSON turns tuples into lists; the configs use tuples (e.g. crop_box)."""
    if isinstance(obj, dict):
        return {k: _tuples(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return tuple(_tuples(v) for v in obj)
    return obj


def _diff_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            out += _diff_keys(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return [] if old == new else [prefix.rstrip(".")]
