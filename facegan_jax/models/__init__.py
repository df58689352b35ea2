"""The model registry: `config.model.name` -> (generator, discriminator) Flax modules.

Every model family exposes `build(config) -> (generator, discriminator)` where
`config` is the whole run config (models read `config.model`, `config.data`
and `config.train.mixed_precision`). The modules follow one contract, which
the train step, sampler and FID code rely on:

* ``generator(z, attributes, train=...)``: ``z`` is ``[B, z_dim]`` float32,
  ``attributes`` is ``[B, 40]`` float32 in {0, 1} or ``None`` for unconditional
  models; returns images ``[B, H, W, C]`` in ``[-1, 1]`` (float32).
* ``discriminator(images, train=...)``: returns ``(logits [B], attr_logits)``
  where ``attr_logits`` is ``[B, 40]`` for attribute-conditioned models and
  ``None`` otherwise.
* Variable collections: ``params``; ``batch_stats`` (BatchNorm running
  statistics); ``spectral`` (spectral-norm power-iteration vectors). Both
  non-param collections are mutable only when ``train=True``.
* RNG streams: ``dropout`` (only modules with dropout use it).

Each family also exposes `default_config()`: exactly the `config.model` fields
it reads, with its seed's values. `build_models` rejects a `config.model` that
holds any other field (a field the model would silently ignore) or lacks one.
Recipes start from `model_config(name)`.

Families are imported lazily so that one family's import cost (or bug) does not
reach runs of another.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

# name -> module path under facegan_jax.models exposing build(config).
MODEL_FAMILIES: dict[str, str] = {
    "dcgan": "facegan_jax.models.dcgan",
    "acgan": "facegan_jax.models.acgan",
    "gan128": "facegan_jax.models.gan128",
    "hrdcgan": "facegan_jax.models.hrdcgan",
}


def _family(name: str) -> Any:
    if name not in MODEL_FAMILIES:
        raise ValueError(
            f"config.model.name={name!r} is not a known model; known: {sorted(MODEL_FAMILIES)}"
        )
    return importlib.import_module(MODEL_FAMILIES[name])


def model_config(name: str) -> ml_collections.ConfigDict:
    """The `config.model` of family `name`: the fields it reads, with its seed's defaults."""
    return _family(name).default_config()


def check_model_fields(config: Any) -> None:
    """Raises a ValueError naming a `config.model` field the family does not read, or lacks.

    A field the model would ignore (say `d_activation` for an ACGAN) is an error,
    not a silent no-op.
    """
    name = config.model.name
    expected = set(model_config(name).keys())
    present = set(config.model.keys())
    extra, missing = sorted(present - expected), sorted(expected - present)
    if extra:
        raise ValueError(
            f"config.model.{extra[0]} is not read by the {name!r} model (its fields: "
            f"{', '.join(sorted(expected))}); remove it, or start from a {name} recipe in configs/"
        )
    if missing:
        raise ValueError(
            f"config.model.{missing[0]} is missing for the {name!r} model; start from "
            f"models.model_config({name!r}) (a {name} recipe in configs/)"
        )


def upgrade_model_fields(config: ml_collections.ConfigDict) -> list[str]:
    """Makes an older workdir's `config.model` match its family's fields; returns what changed.

    Workdirs written before per-family model configs hold every family's fields in
    `config.json` (the ones a family did not read never had an effect: dropped);
    fields added to a family since then are filled with their defaults, which are
    the behaviour the run was trained with.
    """
    defaults = model_config(config.model.name)
    present = set(config.model.keys())
    dropped = sorted(present - set(defaults.keys()))
    added = sorted(set(defaults.keys()) - present)
    with config.unlocked():
        for field in dropped:
            del config.model[field]
        for field in added:
            config.model[field] = defaults[field]
    return [f"-{f}" for f in dropped] + [f"+{f}" for f in added]


def build_models(config: Any) -> tuple[nn.Module, nn.Module]:
    """Builds (generator, discriminator) for `config.model.name`.

    Raises:
      ValueError: naming the field if the model is unknown or `config.model`
        holds a field the family does not read.
    """
    module = _family(config.model.name)
    check_model_fields(config)
    return module.build(config)


def compute_dtype(config: Any) -> Any:
    """The modules' computation dtype: bfloat16 with `config.train.mixed_precision`.

    Parameters stay float32 (each module's `param_dtype`), and generators and
    discriminators return float32 images and logits, so the losses are float32.
    """
    return jnp.bfloat16 if config.train.mixed_precision else jnp.float32


def is_conditional(config: Any) -> bool:
    """Whether the model is attribute-conditioned: `config.model.num_attributes` 40, not 0."""
    return bool(config.model.num_attributes)


def require_unconditional(config: Any) -> None:
    """Raises a ValueError naming the field if an unconditional family is given attributes."""
    if is_conditional(config):
        raise ValueError(
            f"config.model.num_attributes must be 0 for {config.model.name!r} (use 'acgan')"
        )


# The config.model field each module attribute is read from where the names differ
# (`build_pair`); any other attribute is read from the config.model field of its own name.
_GENERATOR_FIELDS = {
    "base_dim": "g_dim",
    "act": "g_activation",
    "cond": "g_cond",
    "cond_dim": "g_cond_dim",
}
_DISCRIMINATOR_FIELDS = {
    "base_dim": "d_dim",
    "act": "d_activation",
    "dropout": "d_dropout",
    "spectral_norm": "d_spectral_norm",
    "pool": "d_pool",
}


def check_choice(config: Any, field: str, choices: tuple[str, ...]) -> None:
    """Raises a ValueError naming `config.model.<field>` if its value is not one of `choices`."""
    value = config.model[field]
    if value not in choices:
        names = [repr(c) for c in choices]
        options = " or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)
        raise ValueError(f"config.model.{field}={value!r} must be {options}")


def build_pair(
    config: Any, generator_cls: type[nn.Module], discriminator_cls: type[nn.Module]
) -> tuple[nn.Module, nn.Module]:
    """A family's (generator, discriminator), each attribute read from the config.

    `image_size` and `channels` come from `config.data`, `dtype` from `compute_dtype`,
    every other attribute the module declares from `config.model` (G's `base_dim` from
    `g_dim`, D's from `d_dim`, and so on: `_GENERATOR_FIELDS`, `_DISCRIMINATOR_FIELDS`);
    an attribute with no config field keeps the module's default.
    """

    def make(cls: type[nn.Module], renames: dict[str, str]) -> nn.Module:
        data = {"image_size": config.data.image_size, "channels": config.data.channels}
        kwargs: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            source = renames.get(field.name, field.name)
            if field.name in ("parent", "name") or not field.init:
                continue
            if field.name == "dtype":
                kwargs["dtype"] = compute_dtype(config)
            elif field.name in data:
                kwargs[field.name] = data[field.name]
            elif source in config.model:
                kwargs[field.name] = config.model[source]
        return cls(**kwargs)

    return make(generator_cls, _GENERATOR_FIELDS), make(discriminator_cls, _DISCRIMINATOR_FIELDS)
