"""Recipe files (`configs/*.py`) loaded by path, and the one way to load a run config
(`load_config`: `--config=configs/x.py[:variant]` with `--config.a.b=v` overrides).

`configs/` is a folder of recipe files next to the package, not an installed
package: a generic top-level `configs` in site-packages would collide with any
other project's. A recipe that builds on another one loads it from its own
folder with `sibling(__file__, "default")`, whatever the working directory.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

_PREFIX = "_facegan_recipe_"


def load(path: str | os.PathLike) -> ModuleType:
    """The recipe file at `path` as a module (loaded once per process and path).

    Raises:
      FileNotFoundError: naming the file.
    """
    path = os.path.abspath(os.fspath(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"recipe file {path} does not exist")
    name = _PREFIX + str(abs(hash(path)))
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def sibling(anchor: str | os.PathLike, name: str) -> ModuleType:
    """The recipe `name` (`default`, `acgan64`, ...) from the folder of the file `anchor`."""
    return load(os.path.join(os.path.dirname(os.path.abspath(anchor)), f"{name}.py"))


def repo_recipe(name: str) -> ModuleType:
    """A recipe of the checkout this package runs from (`<checkout>/configs/<name>.py`).

    Raises:
      FileNotFoundError: not run from a checkout (an installed wheel has no configs/).
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.join(root, "configs", f"{name}.py")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} does not exist: the recipes live in a checkout's configs/ "
            "(install with `pip install -e .` from a clone)"
        )
    return load(path)


def load_config(spec: str, overrides: Sequence[str] = (), *, lock: bool = True) -> Any:
    """The ConfigDict of `--config=spec` with `--config.a.b=v` overrides, as every command loads it.

    `spec` is a recipe file, optionally `file.py:variant`; the overrides are parsed by
    ml_collections' `config_flags` (typed, and the config is locked, so a misspelt
    field is an error).

    Raises:
      errors.UsageError: one line naming the file, the override or the field.
    """
    from absl import flags
    from ml_collections import config_flags

    from facegan_jax import errors

    argv = ["facegan", f"--config={spec}", *overrides]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", flag_values=values, lock_config=lock, sys_argv=argv)

    def flag_type(name: str) -> str | None:
        return values[name].flag_type() if name in values else None

    try:
        values(argv)
        config = values.config
        config.get("seed")  # ml_collections defers a config file's load errors to here
    except Exception as e:  # anything raised while parsing is about the command line
        raise errors.flag_error(e, argv, flag_type=flag_type) from e
    return config
