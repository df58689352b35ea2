"""Every path inside a training run's workdir, and the run config stored there.

A workdir holds one run:

  <workdir>/config.json            the config the run started with (written once)
  <workdir>/checkpoints/<step>/    Orbax checkpoints of the whole GanState
  <workdir>/attribute_pool.npy     real attribute vectors [P, 40] conditional sampling draws from
  <workdir>/samples/               control-latent grids (step_NNNNNNN.png, latest.png)
  <workdir>/fid_reference/         cached real-image FID statistics
  <workdir>/attr_reference/        cached real-image attribute-classifier statistics
  <workdir>/directions.npz         latent attribute directions of an unconditional generator
  <workdir>/report/                pictures of the run (curves, progress GIF, HTML)
  <workdir>/events.out.tfevents.*  TensorBoard metrics (clu writers)

No other module spells these names; they ask this one.
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections
from absl import logging

from facegan_jax import fileio

CONFIG_FILE = "config.json"
CHECKPOINTS_DIR = "checkpoints"
ATTRIBUTE_POOL_FILE = "attribute_pool.npy"
SAMPLES_DIR = "samples"
FID_REFERENCE_DIR = "fid_reference"
ATTR_REFERENCE_DIR = "attr_reference"
DIRECTIONS_FILE = "directions.npz"
REPORT_DIR = "report"


def _join(workdir: str | os.PathLike, *names: str) -> str:
    return fileio.join(workdir, *names)


def config_path(workdir: str | os.PathLike) -> str:
    """`<workdir>/config.json`."""
    return _join(workdir, CONFIG_FILE)


def checkpoint_dir(workdir: str | os.PathLike) -> str:
    """`<workdir>/checkpoints`: where Orbax keeps one folder per saved step."""
    return _join(workdir, CHECKPOINTS_DIR)


def attribute_pool_path(workdir: str | os.PathLike) -> str:
    """`<workdir>/attribute_pool.npy`: real attribute vectors of a conditional run."""
    return _join(workdir, ATTRIBUTE_POOL_FILE)


def samples_dir(workdir: str | os.PathLike) -> str:
    """`<workdir>/samples`: control grids written during training."""
    return _join(workdir, SAMPLES_DIR)


def sample_grid_path(workdir: str | os.PathLike, step: int | None = None) -> str:
    """The control grid of `step` (`step_0001500.png`), or `latest.png` for None."""
    name = "latest.png" if step is None else f"step_{step:07d}.png"
    return _join(workdir, SAMPLES_DIR, name)


def fid_reference_dir(workdir: str | os.PathLike) -> str:
    """`<workdir>/fid_reference`: cached real-image FID statistics."""
    return _join(workdir, FID_REFERENCE_DIR)


def attr_reference_dir(workdir: str | os.PathLike) -> str:
    """`<workdir>/attr_reference`: cached real-image attribute-classifier statistics."""
    return _join(workdir, ATTR_REFERENCE_DIR)


def directions_path(workdir: str | os.PathLike) -> str:
    """`<workdir>/directions.npz`: latent attribute directions (unconditional editing)."""
    return _join(workdir, DIRECTIONS_FILE)


def report_dir(workdir: str | os.PathLike) -> str:
    """`<workdir>/report`: the run's pictures and HTML page."""
    return _join(workdir, REPORT_DIR)


def is_workdir(workdir: str | os.PathLike) -> bool:
    """True when `workdir` holds a run (its config.json)."""
    return fileio.exists(config_path(workdir))


def write_config(workdir: str | os.PathLike, config: Any) -> None:
    """Writes the run config to `<workdir>/config.json` once; warns on a changed config."""
    path = config_path(workdir)
    new = json.loads(config.to_json_best_effort())
    if fileio.exists(path):
        old = fileio.read_json(path)
        if old != new:
            changed = sorted(_diff_keys(old, new))
            logging.warning(
                "config differs from the one in %s (kept unchanged): %s", path, ", ".join(changed)
            )
        return
    fileio.write_json(path, new)


def read_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
    """Reads the config a run was started with.

    Raises:
      FileNotFoundError: if `workdir` holds no run.
      ValueError: naming the file if it is not valid JSON.
    """
    path = config_path(workdir)
    if not fileio.exists(path):
        raise FileNotFoundError(
            f"{path} not found: is {os.fspath(workdir)!r} a facegan_jax training workdir?"
        )
    try:
        data = fileio.read_json(path)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); restore it from a backup") from e
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
