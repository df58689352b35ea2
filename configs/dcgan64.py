r"""DCGAN 64x64 (seed 001's base model; the PyTorch DCGAN of Radford et al.).

ConvTranspose+BatchNorm+ReLU generator with tanh, Conv+BatchNorm+LeakyReLU(0.2)
discriminator, BCE on logits, Adam(2e-4, b1=0.5), z = 100, batch 64, N(0, 0.02)
init, widths 512-256-128-64 (ngf = ndf = 64).

  python -m facegan_jax.main --config=configs/dcgan64.py --workdir=runs/dcgan64

On real CelebA (after `python -m data_prep.prepare_celeba`, see README), with
seed 001's centre crop 160:

  python -m facegan_jax.main --config=configs/dcgan64.py --workdir=runs/dcgan64_celeba \
      --config.data.name=celeba_local --config.data.crop=center_160
"""

from __future__ import annotations

import ml_collections

from facegan_jax.recipes import sibling

default = sibling(__file__, "default")


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    """DCGAN-64; `variant='runlocal'` shrinks it to a smoke run."""
    config = default.get_config()
    config.total_steps = 20_000
    config.data.image_size = 64
    config.model.g_dim = 64
    config.model.d_dim = 64
    config.loss.name = "non_saturating"  # BCE(fake -> 1) for G: what the seed's code computes
    config.sample_every_steps = 500
    config.checkpoint_every_steps = 1000
    if default.check_variant(variant, __file__) == "runlocal":
        default.shrink_to_runlocal(config)
    return config
