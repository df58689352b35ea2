"""Orbax checkpoints of the whole GanState that cannot betray: save, verify, restore with fallback.

Checkpoints live in `<workdir>/checkpoints/<step>/`. What this module adds to
Orbax's `CheckpointManager`, and why:

* **Complete or absent.** Orbax writes a checkpoint into a temporary directory
  and renames it when every file is written; old checkpoints beyond
  `max_to_keep` are deleted only after that rename, in the save's finalize
  step, and not at all when the save fails (checked in tests/test_checkpointing.py).
  So a save never removes the last good checkpoint before the new one is whole.
* **Verified.** Orbax does not checksum its files: bytes overwritten inside an
  array file restore silently as wrong numbers. When a save has completed, a
  `facegan_checksums.json` (size and SHA-256 of every file) is written into the
  step directory; `restore` checks it before reading.
* **Fallback.** `restore` takes the newest checkpoint that verifies and reads;
  a corrupt one (checksum mismatch, truncated or unreadable files) is skipped
  with a warning naming it and the checkpoint used instead. Training sets the
  corrupt one aside as `<step>.corrupt` (kept, never deleted) so it is not
  skipped again and a new save of that step can happen.
* **No partial restore.** Before reading, the checkpoint's array tree (names,
  shapes, dtypes from its metadata) is compared with the restore target; any
  difference is one `errors.WorkdirError` naming the first differing array,
  never a fallback to an older checkpoint (which would have the same structure)
  and never a partial restore.
* **One clear error for a failed save.** A save that fails (disk full, I/O
  error), in its blocking part or in the background, raises
  `errors.CheckpointError` naming the step, the reason and the previous
  checkpoint, which is intact; the partial temporary directory is removed.

Saves are asynchronous: `save` returns once the arrays are copied off the
devices; `manager.wait_until_finished()` blocks until the files are complete
(and raises the save's error). The run's config file and other workdir paths
belong to workdir.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

from facegan_jax import errors, fileio
from facegan_jax import workdir as workdir_lib
from facegan_jax.training.state import GanState

CHECKSUMS_FILE = "facegan_checksums.json"
CORRUPT_SUFFIX = ".corrupt"


class CheckpointManager(ocp.CheckpointManager):
    """Orbax's manager, plus checksums of completed saves and one clear error for failed ones.

    Create with `create_manager`; save with `save(manager, state)`.
    """

    def __init__(self, directory: str, options: ocp.CheckpointManagerOptions):
        self._facegan_in_flight: int | None = None  # the step whose save is in flight
        # The handler is named up front so that `item_metadata` can read a step's
        # array tree before the first save or restore (structure check).
        super().__init__(directory, options=options, item_handlers=ocp.StandardCheckpointHandler())

    def reached_preemption(self, step: int) -> bool:
        """False: Orbax must not ask JAX's preemption service itself.

        `multihost_utils.reached_preemption_sync_point(step)` records `step` as this
        process's position; the sync step is the largest position reported + 1. Orbax
        would report the step of a finishing save from its background thread, behind the
        training loop (train.StopRequests), which is then the only caller. Preemption
        saves are the loop's own (`save(..., force=True)`).
        """
        del step
        return False

    def step_dir(self, step: int) -> str:
        """`<workdir>/checkpoints/<step>`."""
        return fileio.join(os.fspath(self.directory), str(step))

    def save_state(self, state: GanState, *, force: bool = False) -> bool:
        """Starts saving `state` at its step; see `save`."""
        step = int(state.step)
        self.wait_until_finished()  # the previous save: its error, or its checksums
        if step in self.all_steps():
            return False
        try:
            saved = self.save(step, args=ocp.args.StandardSave(state), force=force)
        except errors.CheckpointError:
            raise
        except Exception as e:  # disk full, I/O error... in the blocking part of the save
            raise self._save_failed(step, e) from e
        if saved:
            self._facegan_in_flight = step
        return saved

    def wait_until_finished(self) -> None:
        """Blocks until the save in flight is complete, then writes its checksums.

        Raises:
          errors.CheckpointError: the save failed (naming the intact previous checkpoint).
        """
        step, self._facegan_in_flight = self._facegan_in_flight, None
        try:
            super().wait_until_finished()
        except Exception as e:
            if step is None:
                raise
            raise self._save_failed(step, e) from e
        if step is not None:
            self._write_checksums(step)

    def finish_if_done(self) -> None:
        """Writes the checksums of a save that completed in the background (blocks briefly)."""
        step = self._facegan_in_flight
        if step is not None and fileio.isdir(self.step_dir(step)):
            self.wait_until_finished()

    def _write_checksums(self, step: int) -> None:
        if jax.process_index() != 0:
            return
        path = fileio.join(self.step_dir(step), CHECKSUMS_FILE)
        try:
            fileio.write_json(path, {"files": file_checksums(self.step_dir(step))}, indent=1)
        except OSError as e:  # the checkpoint itself is complete; only its verification is lost
            logging.warning("could not write %s (%s); that checkpoint stays unverified", path, e)

    def _save_failed(self, step: int, error: BaseException) -> errors.CheckpointError:
        """The error of a failed save; removes its partial files and re-reads the steps on disk."""
        if jax.process_index() == 0:
            for name in fileio.listdir(self.directory):
                if name.startswith(f"{step}.orbax-"):
                    with contextlib.suppress(OSError):
                        fileio.rmtree(fileio.join(os.fspath(self.directory), name))
        self.reload()  # orbax forgot the steps it meant to delete after this save
        good = [s for s in self.all_steps() if s != step]
        intact = (
            f"the previous checkpoint, {self.step_dir(max(good))}, is intact"
            if good
            else "there is no earlier checkpoint"
        )
        return errors.CheckpointError(
            f"cannot write checkpoint step {step} to {self.directory}: {_reason(error)}; "
            f"{intact}; free space (or fix the error) and run the same command again to resume"
        )


def _reason(error: BaseException) -> str:
    """The OSError behind `error` (`[Errno 28] No space left on device`), else its first line."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno:
            return f"[Errno {seen.errno}] {seen.strerror or os.strerror(seen.errno)}"
        seen = seen.__cause__ or seen.__context__
    # TensorStore's I/O errors (a ValueError) carry the OS error code: `[os_error_code='28']`.
    code = re.search(r"os_error_code='(\d+)'", str(error))
    if code:
        return f"[Errno {code.group(1)}] {os.strerror(int(code.group(1)))}"
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:300] if lines else ''}".strip()


def create_manager(
    workdir: str, max_to_keep: int = 3, *, remove_partial_saves: bool = False
) -> CheckpointManager:
    """The checkpoint manager of `<workdir>/checkpoints` (the folder is created if missing).

    Args:
      workdir: the run's workdir.
      max_to_keep: newest checkpoints kept (older ones are deleted after a save completes).
      remove_partial_saves: delete the temporary folders of saves that never completed
        (a killed run, a full disk). Only the process that trains may: a reader would
        delete the save a live run has in flight.
    """
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=remove_partial_saves
    )
    return CheckpointManager(workdir_lib.checkpoint_dir(workdir), options)


def save(manager: CheckpointManager, state: GanState, *, force: bool = False) -> bool:
    """Starts saving `state` at its step (asynchronously: `manager.wait_until_finished()`).

    First finishes the previous save. Returns False if that step is already saved.

    Raises:
      errors.CheckpointError: this or the previous save failed (disk full...), naming
        the previous checkpoint, which is intact.
    """
    return manager.save_state(state, force=force)


def file_checksums(directory: str) -> dict[str, list]:
    """`{relative path: [size, sha256]}` of every file under `directory` but the checksum file."""
    out = {}
    for rel in sorted(fileio.walk_files(directory)):
        if rel == CHECKSUMS_FILE:
            continue
        data = fileio.read_bytes(fileio.join(directory, rel))
        out[rel] = [len(data), hashlib.sha256(data).hexdigest()]
    return out


def verify(step_dir: str) -> str | None:
    """What is wrong with the files of a checkpoint, or None (also when it has no checksums).

    Args:
      step_dir: `<workdir>/checkpoints/<step>`.
    """
    path = fileio.join(step_dir, CHECKSUMS_FILE)
    if not fileio.exists(path):
        return None  # written before checksums existed, or killed just after its commit
    try:
        expected = fileio.read_json(path)["files"]
    except (OSError, ValueError, KeyError) as e:
        return f"{CHECKSUMS_FILE} is unreadable ({e})"
    for rel, (size, digest) in sorted(expected.items()):
        file = fileio.join(step_dir, rel)
        if not fileio.isfile(file):
            return f"{rel} is missing"
        data = fileio.read_bytes(file)
        if len(data) != size:
            return f"{rel} has {len(data)} bytes, {size} when saved"
        if hashlib.sha256(data).hexdigest() != digest:
            return f"{rel} does not match its checksum"
    return None


def _leaves(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {
        ".".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path): (
            tuple(leaf.shape),
            str(leaf.dtype),
        )
        for path, leaf in flat
    }


def structure_difference(saved: Any, target: Any) -> str | None:
    """The first difference between a checkpoint's array tree and the restore target, or None."""
    have = _leaves(saved)
    want = _leaves(ocp.tree.serialize_tree(target, keep_empty_nodes=True))
    diffs = []

    # G and D parameters first: the most telling difference (optimizer and EMA trees follow).
    def order(name: str) -> tuple[bool, str]:
        return name.split(".")[0] not in ("g_params", "d_params"), name

    for name in sorted(set(have) | set(want), key=order):
        if name not in want:
            diffs.append(f"{name} is in the checkpoint but not in this config's state")
        elif name not in have:
            diffs.append(f"{name} is missing from the checkpoint")
        elif have[name] != want[name]:
            (s1, d1), (s2, d2) = have[name], want[name]
            diffs.append(f"{name} is {d1}{list(s1)} in the checkpoint but {d2}{list(s2)} here")
    if not diffs:
        return None
    more = f" (and {len(diffs) - 1} more differences)" if len(diffs) > 1 else ""
    return diffs[0] + more


def _try_restore(
    manager: CheckpointManager, step: int, target: GanState
) -> tuple[GanState | None, str | None]:
    """(state, None), or (None, what is corrupt). Raises WorkdirError on a structure mismatch."""
    step_dir = manager.step_dir(step)
    problem = verify(step_dir)
    if problem is not None:
        return None, problem
    try:
        saved = manager.item_metadata(step)
        if saved is None:
            raise ValueError("no array metadata")
    except Exception as e:  # unreadable metadata: a corrupt checkpoint
        return None, f"its metadata cannot be read ({_reason(e)})"
    difference = structure_difference(saved, target)
    if difference is not None:
        raise errors.WorkdirError(
            f"checkpoint {step_dir} does not match this config's state (model or optimizers): "
            f"{difference}; resume with the config the run was started with (config.json in "
            "the workdir) or use a new --workdir"
        )
    try:
        return manager.restore(step, args=ocp.args.StandardRestore(target)), None
    except Exception as e:  # truncated or unreadable array files
        return None, f"it cannot be read ({_reason(e)})"


def set_aside(manager: CheckpointManager, step: int) -> str:
    """Renames a corrupt checkpoint to `<step>.corrupt` (kept for inspection); returns that path."""
    src = manager.step_dir(step)
    dst = src + CORRUPT_SUFFIX
    n = 1
    while fileio.exists(dst):
        n += 1
        dst = f"{src}{CORRUPT_SUFFIX}{n}"
    if jax.process_index() == 0:
        fileio.rename(src, dst)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"facegan_set_aside_{step}")
    manager.reload()
    return dst


def restore(
    manager: CheckpointManager,
    target: GanState,
    step: int | None = None,
    *,
    set_aside_corrupt: bool = False,
) -> GanState:
    """Restores the checkpoint at `step`, or the newest one that is intact, into `target`.

    Args:
      manager: from `create_manager`.
      target: the abstract state (`components.Components.abstract_state()`).
      step: a step to restore (no fallback); default: the newest intact checkpoint.
      set_aside_corrupt: rename corrupt checkpoints to `<step>.corrupt` (training does,
        so a new save of that step can happen; readers such as `sample` do not).

    Raises:
      FileNotFoundError: there is no checkpoint.
      errors.WorkdirError: the checkpoint's arrays do not match `target` (another model).
      errors.CheckpointError: no checkpoint (or not `step`) can be read, naming each problem.
    """
    steps = sorted(manager.all_steps(), reverse=True) if step is None else [step]
    if not steps:
        raise FileNotFoundError(f"no checkpoint in {manager.directory}")
    corrupt: list[tuple[int, str]] = []
    for s in steps:
        state, problem = _try_restore(manager, s, target)
        if state is not None:
            for bad, why in corrupt:
                kept = set_aside(manager, bad) if set_aside_corrupt else manager.step_dir(bad)
                logging.warning(
                    "checkpoint %s is corrupt (%s); restored the previous checkpoint, %s, "
                    "instead (the corrupt one is kept as %s)",
                    manager.step_dir(bad),
                    why,
                    manager.step_dir(s),
                    kept,
                )
            return state
        corrupt.append((s, problem))
    listing = "; ".join(f"{manager.step_dir(s)}: {why}" for s, why in corrupt)
    raise errors.CheckpointError(
        f"no checkpoint can be restored ({listing}); move {manager.directory} aside to start "
        "afresh, or restore it from a backup"
    )
