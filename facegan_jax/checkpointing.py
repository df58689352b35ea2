"""Orbax checkpoints of the whole GanState: save, restore into an abstract target, restore-or-init.

Checkpoints live in `<workdir>/checkpoints/<step>/`. Orbax writes each one to a
temporary directory and renames it when complete, so an interrupted save never
replaces a good checkpoint; `max_to_keep` old ones are kept. The run's config
file and other workdir paths belong to workdir.py.
"""

from __future__ import annotations

import os

import orbax.checkpoint as ocp

from facegan_jax import workdir as workdir_lib
from facegan_jax.state import GanState


def create_manager(workdir: str, max_to_keep: int = 3) -> ocp.CheckpointManager:
    """An Orbax CheckpointManager over `<workdir>/checkpoints`."""
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    return ocp.CheckpointManager(workdir_lib.checkpoint_dir(workdir), options=options)


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
