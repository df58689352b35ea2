"""Every config in configs/ loads by path (as the CLI does), validates and builds its models."""

from __future__ import annotations

import glob
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from ml_collections import config_flags

from facegan_jax import train
from facegan_jax.models import build_models
from tests.conftest import REPO_ROOT

CONFIG_FILES = sorted(
    p for p in glob.glob(str(REPO_ROOT / "configs" / "*.py")) if not p.endswith("__init__.py")
)


def _load(path: str, variant: str | None = None):
    module = config_flags.config_flags._LoadConfigModule("config", path)  # what --config does
    return module.get_config(variant) if variant else module.get_config()


def test_there_are_recipe_configs():
    names = {os.path.basename(p) for p in CONFIG_FILES}
    assert {"default.py", "dcgan64.py", "dcgan32.py"} <= names


@pytest.mark.parametrize("path", CONFIG_FILES, ids=os.path.basename)
def test_config_loads_validates_and_builds_models(path):
    for variant in (None, "runlocal"):
        config = _load(path, variant)
        train.validate_config(config)
        assert config.total_steps > 0
        with open(path) as f:
            doc = f.read()
        assert "python -m facegan_jax.main --config=configs/" in doc  # the command is documented
        g, _ = build_models(config)
        z = jnp.zeros((4, config.model.z_dim))
        attrs = jnp.zeros((4, 40)) if config.model.num_attributes else None
        g_shapes = jax.eval_shape(
            lambda g=g, z=z, a=attrs: g.init(jax.random.PRNGKey(0), z, a, train=False)
        )
        s, c = config.data.image_size, config.data.channels
        images = jax.eval_shape(
            lambda v, g=g, z=z, a=attrs: g.apply(v, z, a, train=False), g_shapes
        )
        assert images.shape == (4, s, s, c)


def test_misspelt_override_is_an_error_naming_the_key(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "facegan_jax.main",
            "--config=configs/default.py",
            f"--workdir={tmp_path}",
            "--config.train.batch_sise=3",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "batch_sise" in proc.stderr
    assert not os.listdir(tmp_path)  # nothing was written


def test_unknown_variant_is_an_error():
    with pytest.raises(ValueError, match="unknown variant 'huge'"):
        _load(str(REPO_ROOT / "configs" / "default.py"), "huge")


@pytest.mark.parametrize("path", CONFIG_FILES, ids=os.path.basename)
def test_every_recipe_rejects_an_unknown_variant_naming_its_file(path):
    name = os.path.basename(path)
    with pytest.raises(ValueError, match=rf"unknown variant 'huge' for configs/{name}"):
        _load(path, "huge")
