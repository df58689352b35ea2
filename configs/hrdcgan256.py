r"""HR-DCGAN on RGB 256x256 faces: configs/hrdcgan256_gray.py with 3 channels (seed 004).

The same network and training as the greyscale recipe (SELU + BatchNorm,
extra stride-1 convs, simultaneous G/D update); only the image channels differ.

  python -m facegan_jax.main --config=configs/hrdcgan256.py --workdir=runs/hrdcgan256

The data defaults to the embedded `synthetic_faces` (resized to 256 by the input
pipeline); on real CelebA add `--config.data.name=celeba_local`.

Smoke run: `--config=configs/hrdcgan256.py:runlocal`.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from types import ModuleType

import ml_collections


def _sibling_config(name: str) -> ModuleType:
    """Imports configs/<name>.py as `configs.<name>`, or by path when `configs` is not importable.

    config_flags loads a recipe by file path without putting the repo root on sys.path.
    """
    try:
        return importlib.import_module(f"configs.{name}")
    except ImportError:
        spec = importlib.util.spec_from_file_location(
            f"configs.{name}", Path(__file__).with_name(f"{name}.py")
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    """HR-DCGAN 256x256 RGB; `variant='runlocal'` shrinks it to a smoke run (32x32)."""
    if variant not in (None, "", "runlocal"):
        raise ValueError(f"unknown variant {variant!r} for configs/hrdcgan256.py (known: runlocal)")
    config = _sibling_config("hrdcgan256_gray").get_config(variant)
    config.data.channels = 3
    return config
