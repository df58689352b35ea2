r"""DCGAN 32x32 (seed 002): conv_dim 32, z 100, batch 64.

Seed 002's optimiser: Adam(lr 4e-4, betas (0.5, 0.999)) for both nets.

  python -m facegan_jax.main --config=configs/dcgan32.py --workdir=runs/dcgan32

This is also the architecture of the default demo (configs/default.py), which
trains fewer steps.
"""

from __future__ import annotations

import ml_collections

from facegan_jax.recipes import sibling

default = sibling(__file__, "default")


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    """DCGAN-32; `variant='runlocal'` shrinks it to a smoke run."""
    config = default.get_config()
    config.total_steps = 10_000
    config.data.image_size = 32
    config.model.g_dim = 32
    config.model.d_dim = 32
    config.g_optimizer.learning_rate = 4e-4
    config.d_optimizer.learning_rate = 4e-4
    config.checkpoint_every_steps = 1000
    if default.check_variant(variant, __file__) == "runlocal":
        default.shrink_to_runlocal(config)
    return config
