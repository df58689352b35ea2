"""Every config in configs/ loads by path (as the CLI does), validates and builds its models."""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from configs import default
from facegan_jax import errors
from facegan_jax.models import build_models
from facegan_jax.training import train
from tests.conftest import REPO_ROOT
from tests.helpers import load_config_file

CONFIG_FILES = sorted(
    p for p in glob.glob(str(REPO_ROOT / "configs" / "*.py")) if not p.endswith("__init__.py")
)


def _load(path: str, variant: str | None = None):
    return load_config_file(f"{path}:{variant}" if variant else path)  # what --config does


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
            "facegan_jax.cli.train",
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
    with pytest.raises(errors.UsageError, match="unknown variant .huge."):
        _load(str(REPO_ROOT / "configs" / "default.py"), "huge")


@pytest.mark.parametrize("path", CONFIG_FILES, ids=os.path.basename)
def test_every_recipe_rejects_an_unknown_variant_naming_its_file(path):
    name = os.path.basename(path)
    with pytest.raises(errors.UsageError, match=rf"unknown variant .huge. for configs/{name}"):
        _load(path, "huge")


def test_a_model_field_the_family_does_not_read_is_an_error_naming_it():
    from configs import acgan64

    config = acgan64.get_config("runlocal")
    with config.unlocked():
        config.model.d_activation = "selu"  # the ACGAN D has the seed's fixed LeakyReLU(0.1)
    with pytest.raises(ValueError, match=r"config.model.d_activation is not read by the 'acgan'"):
        build_models(config)
    # On the command line the field does not exist for an ACGAN recipe at all.
    with pytest.raises(errors.UsageError, match="config.model.d_activation is not a config"):
        load_config_file("configs/acgan64.py:runlocal", "--config.model.d_activation=selu")


def test_switching_family_by_name_alone_is_an_error_naming_a_foreign_field():
    config = load_config_file("configs/default.py:runlocal", "--config.model.name=acgan")
    with pytest.raises(ValueError, match=r"config.model.d_activation is not read by the 'acgan'"):
        build_models(config)


@pytest.mark.parametrize("family", ["dcgan", "acgan", "gan128", "hrdcgan"])
def test_every_family_builds_from_exactly_its_default_model_fields(family):
    from facegan_jax.models import check_model_fields, model_config

    config = load_config_file("configs/default.py:runlocal")
    with config.unlocked():
        config.model = model_config(family)
    check_model_fields(config)  # no error
    with config.unlocked():
        del config.model["z_dim"]
    with pytest.raises(ValueError, match=r"config.model.z_dim is missing"):
        check_model_fields(config)


def test_dcgan_discriminator_honours_d_activation():
    outputs = {}
    for act in ("leaky_relu", "selu"):
        config = load_config_file(
            "configs/default.py:runlocal", f"--config.model.d_activation={act}"
        )
        _, d = build_models(config)
        images = jax.random.normal(jax.random.PRNGKey(1), (4, 32, 32, 3))
        variables = d.init(jax.random.PRNGKey(0), images, train=False)
        outputs[act] = d.apply(variables, images, train=False)[0]
    assert not jnp.allclose(outputs["leaky_relu"], outputs["selu"])


def test_an_older_workdir_config_drops_unread_fields_and_fills_new_ones(tmp_path):
    import json

    from configs import acgan64
    from facegan_jax import workdir as workdir_lib
    from facegan_jax.training import components

    config = acgan64.get_config("runlocal").to_dict()
    config["model"].update(g_activation="relu", d_activation="leaky_relu", fast_convs=True)
    del config["model"]["projection"]  # a field added after the run was written
    del config["data"]["resize"]  # likewise outside the model
    with open(workdir_lib.config_path(tmp_path), "w") as f:
        json.dump(config, f)
    loaded = components.read_run_config(str(tmp_path))
    assert "d_activation" not in loaded.model and loaded.model.mbstd_group_size == 4
    assert loaded.model.projection is False
    assert loaded.data.resize == "bilinear"  # what runs before the field resized with
    build_models(loaded)  # builds


def test_an_optimizer_field_the_chosen_optimizer_ignores_is_refused_by_name():
    from facegan_jax.training import components

    config = default.get_config()
    config.g_optimizer.decay = 0.5  # RMSprop's rho, under Adam
    with pytest.raises(ValueError, match=r"g_optimizer\.decay=0\.5 has no effect .*'adam'"):
        components.create_optimizer(config.g_optimizer, "config.g_optimizer")
    config.d_optimizer.name = "rmsprop"
    config.d_optimizer.b1 = 0.0
    with pytest.raises(ValueError, match=r"d_optimizer\.b1=0\.0 has no effect .*'rmsprop'"):
        components.create_optimizer(config.d_optimizer, "config.d_optimizer")


def test_recipes_load_by_path_from_any_directory_and_configs_is_not_installed(tmp_path):
    """A recipe that builds on others loads from anywhere; no top-level `configs` is installed."""
    code = (
        "import importlib.util, sys\n"
        "from facegan_jax import recipes\n"
        f"m = recipes.load({str(REPO_ROOT / 'configs' / 'celeba64_control.py')!r})\n"
        "c = m.get_config()\n"
        "print(c.model.g_cond, c.model.num_attributes, c.train.batch_size)\n"
        "print(importlib.util.find_spec('configs'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == ["modulate 40 32", "None"], proc.stdout


@pytest.mark.parametrize(
    "recipe, field, value, message",
    [
        (
            "acgan64",
            "d_pool",
            "max",
            "config.model.d_pool='max' must be 'mean', 'sum' or 'flatten'",
        ),
        ("dcgan64", "g_cond", "film", "config.model.g_cond='film' must be 'input' or 'modulate'"),
        ("acgan64", "attr_head", "x", "config.model.attr_head='x' must be 'shared' or 'separate'"),
    ],
)
def test_a_model_choice_outside_its_options_is_an_error_naming_them(recipe, field, value, message):
    config = load_config_file(f"configs/{recipe}.py:runlocal", f"--config.model.{field}={value}")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}"):
        build_models(config)


def test_every_module_attribute_comes_from_its_config_field():
    config = load_config_file("configs/acgan64.py:runlocal", "--config.model.g_dim=24")
    with config.unlocked():
        config.train.mixed_precision = True
    generator, discriminator = build_models(config)
    assert (generator.base_dim, discriminator.base_dim) == (24, config.model.d_dim)
    assert generator.image_size == discriminator.image_size == config.data.image_size
    assert generator.dtype == discriminator.dtype == jnp.bfloat16
    assert discriminator.pool == config.model.d_pool and generator.cond == config.model.g_cond
