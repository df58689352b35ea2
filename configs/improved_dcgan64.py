r"""Improved DCGAN 64x64 (seed 001): dropout in D, LeakyReLU in G, one-sided label smoothing.

The PyTorch DCGAN (widths 512-256-128-64, z = 100, N(0, 0.02) init, Adam(2e-4,
b1=0.5), batch 64) with seed 001's changes: Dropout after each D block,
LeakyReLU instead of ReLU in G, and real labels drawn from U(0.7, 1.2). Images:
CenterCrop(160) then Resize(64). See facegan_jax/models/dcgan.py.

  python -m facegan_jax.main --config=configs/improved_dcgan64.py --workdir=runs/improved_dcgan64

The data defaults to the embedded `synthetic_faces`; on real CelebA add
`--config.data.name=celeba_local`.

Seed notes: it names `nn.Dropout()` without a rate, so we take PyTorch's default
p = 0.5; its `LeakyReLU()` in G would be PyTorch's default slope 0.01, we use
DCGAN's 0.2 in G and D (one `model.leaky_slope`).

Smoke run: `--config=configs/improved_dcgan64.py:runlocal`.
"""

from __future__ import annotations

import ml_collections

from facegan_jax.recipes import sibling

default = sibling(__file__, "default")


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    """Improved DCGAN-64; `variant='runlocal'` shrinks it to a smoke run (32x32)."""
    default.check_variant(variant, __file__)
    config = default.get_config()
    config.total_steps = 16 * 1750  # the seed: 16 epochs of 1750 iterations

    # 'celeba_local' for real CelebA.
    config.data.name = "synthetic_faces"
    config.data.image_size = 64
    config.data.channels = 3
    config.data.crop = "center_160"

    config.model.name = "dcgan"
    config.model.z_dim = 100
    config.model.g_dim = 64
    config.model.d_dim = 64
    config.model.g_activation = "leaky_relu"
    config.model.leaky_slope = 0.2
    config.model.d_dropout = 0.5

    config.loss.name = "non_saturating"  # BCE(fake -> 1) for G: what the seed's code computes
    config.loss.real_label_low = 0.7
    config.loss.real_label_high = 1.2

    for opt in (config.g_optimizer, config.d_optimizer):
        opt.name = "adam"
        opt.learning_rate = 2e-4
        opt.b1 = 0.5
        opt.b2 = 0.999

    config.train.batch_size = 64
    config.train.schedule = "alternating"
    config.train.n_critic = 1

    config.sample_every_steps = 500
    config.checkpoint_every_steps = 1000

    if variant == "runlocal":
        default.shrink_to_runlocal(config)
        config.data.image_size = 32
    return config
