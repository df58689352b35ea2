r"""ACGAN 64x64 conditioned on the 40 CelebA attributes (seed 000, Keras).

G: z(128) ++ 40 attributes -> Dense 4x4x1024 -> PixelNorm -> 4x (UpSampling,
SN-Conv k4 512/256/128/64, PixelNorm, LeakyReLU 0.2) -> SN-Conv tanh. D: 4x
SN-Conv k3 s2 128/256/512/1024 + LeakyReLU 0.1, MinibatchStdDev after the
first, global average pool, real/fake and 40 attribute logits. Orthogonal conv
init, BCE on both heads (D on real and fake, G on its samples), Adam(2e-4,
b1=0.5), batch 16. See facegan_jax/models/acgan.py for the network.

  python -m facegan_jax.main --config=configs/acgan64.py --workdir=runs/acgan64

The data defaults to the embedded `synthetic_faces`; on real CelebA (after
`python -m data_prep.prepare_celeba`) add `--config.data.name=celeba_local`.
The seed trains on 180k images and keeps 20k for FID.

Smoke run: `--config=configs/acgan64.py:runlocal`.
"""

from __future__ import annotations

import ml_collections

from facegan_jax.models import model_config
from facegan_jax.recipes import sibling

default = sibling(__file__, "default")


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    """ACGAN-64; `variant='runlocal'` shrinks it to a smoke run (32x32, tiny widths)."""
    default.check_variant(variant, __file__)
    config = default.get_config()
    # Seed: 100 epochs over 180k images at batch 16.
    config.total_steps = 100 * 180_000 // 16

    # 'celeba_local' for real CelebA; the seed uses aligned faces, centred.
    config.data.name = "synthetic_faces"
    config.data.image_size = 64
    config.data.channels = 3
    config.data.crop = "celeba_178"

    config.model = model_config("acgan")
    config.model.z_dim = 128
    config.model.num_attributes = 40
    # Last G width (Dense 16x, convs 8x..1x: 1024-512-256-128-64) and first D
    # width (128-256-512-1024), the seed's `filters`.
    config.model.g_dim = 64
    config.model.d_dim = 128
    config.model.leaky_slope = 0.2  # G; the D slope is the seed's fixed 0.1
    config.model.sn_power_iterations = 1
    # StyleGAN-style groups of 4; the seed/peer use the whole batch (a group >= batch).
    config.model.mbstd_group_size = 4

    config.loss.name = "non_saturating"  # BCE(fake -> 1) for G: what Keras' combined model does
    config.loss.aux_weight = 1.0
    config.loss.aux_on_fake = True  # the seed trains D's attribute head on fakes too

    for opt in (config.g_optimizer, config.d_optimizer):
        opt.name = "adam"
        opt.learning_rate = 2e-4
        opt.b1 = 0.5
        opt.b2 = 0.999

    config.train.batch_size = 16
    config.train.schedule = "alternating"
    config.train.n_critic = 1

    config.sample_every_steps = 1000
    config.checkpoint_every_steps = 5000

    if variant == "runlocal":
        default.shrink_to_runlocal(config)
        config.data.image_size = 32
        config.model.g_dim = 4  # G: 32 (4x4) -> 16 -> 8 -> 4
        config.model.d_dim = 8  # D: 8 -> 16 -> 32
    return config
