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

Families are imported lazily so that one family's import cost (or bug) does not
reach runs of another.
"""

from __future__ import annotations

import importlib
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

# name -> module path under facegan_jax.models exposing build(config).
MODEL_FAMILIES: dict[str, str] = {
    "dcgan": "facegan_jax.models.dcgan",
    "acgan": "facegan_jax.models.acgan",
    "gan128": "facegan_jax.models.gan128",
    "hrdcgan": "facegan_jax.models.hrdcgan",
}


def build_models(config: Any) -> tuple[nn.Module, nn.Module]:
    """Builds (generator, discriminator) for `config.model.name`.

    Raises:
      ValueError: naming the field and the known names if the model is unknown.
    """
    name = config.model.name
    if name not in MODEL_FAMILIES:
        raise ValueError(
            f"config.model.name={name!r} is not a known model; known: {sorted(MODEL_FAMILIES)}"
        )
    module = importlib.import_module(MODEL_FAMILIES[name])
    return module.build(config)


def compute_dtype(config: Any) -> Any:
    """The modules' computation dtype: bfloat16 with `config.train.mixed_precision`.

    Parameters stay float32 (each module's `param_dtype`), and generators and
    discriminators return float32 images and logits, so the losses are float32.
    """
    return jnp.bfloat16 if config.train.mixed_precision else jnp.float32


def require_unconditional(config: Any) -> None:
    """Raises a ValueError naming the field if an unconditional family is given attributes."""
    if config.model.num_attributes:
        raise ValueError(
            f"config.model.num_attributes must be 0 for {config.model.name!r} (use 'acgan')"
        )
