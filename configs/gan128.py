r"""128x128 Keras GAN with RMSprop, label noise and a 6x6 control grid (seed 003).

G: Dense 16x16x128 -> Conv 5 (256) -> 3x ConvTranspose k4 s2 (256) -> 2x Conv 5
(512) -> Conv 7 tanh, LeakyReLU (Keras default slope 0.3) throughout. D: Conv 3
(256) -> Conv 4 s2 (256) -> Flatten -> Dropout 0.4 -> Dense logit. RMSprop(1e-4,
rho 0.9, clip each gradient element to [-1, 1]) for both, batch 16, label noise
+0.05*U(0, 1) on D's targets, a 6x6 grid of fixed control latents every 50 steps.
See facegan_jax/models/gan128.py for the network.

  python -m facegan_jax.main --config=configs/gan128.py --workdir=runs/gan128

The data defaults to the embedded `synthetic_faces`; on real CelebA add
`--config.data.name=celeba_local` (the seed uses 10k images).

Seed notes: its crop assumes 208-pixel-tall images (CelebA's aligned images are
218), so its square is off-centre; we take the centred 178x178 square
('celeba_178'). Its `decay=1e-8` is Keras' learning-rate time decay
(lr / (1 + 1e-8 t)), negligible over 4000 steps, not RMSprop's rho. Its
`LATENT_DIM` is undefined in the write-up; 32 is the value of the tutorial it
follows. Its labels are inverted (fake 1, real 0); we use real 1, fake 0 with
the same noise on both.

Smoke run: `--config=configs/gan128.py:runlocal`.
"""

from __future__ import annotations

import ml_collections

from facegan_jax.models import model_config
from facegan_jax.recipes import sibling

default = sibling(__file__, "default")


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    """gan128; `variant='runlocal'` shrinks it to a smoke run (32x32, tiny widths)."""
    default.check_variant(variant, __file__)
    config = default.get_config()
    config.total_steps = 4000  # the seed's iters

    # 'celeba_local' for real CelebA.
    config.data.name = "synthetic_faces"
    config.data.image_size = 128
    config.data.channels = 3
    config.data.crop = "celeba_178"

    config.model = model_config("gan128")
    config.model.z_dim = 32
    config.model.g_dim = 128  # Dense 128 -> convs 256 -> 512
    config.model.d_dim = 256
    config.model.leaky_slope = 0.3  # Keras LeakyReLU() default
    config.model.d_dropout = 0.4

    config.loss.name = "non_saturating"  # BCE(fake -> "real") for G, as the seed's combined model
    config.loss.label_noise = 0.05

    for opt in (config.g_optimizer, config.d_optimizer):
        opt.name = "rmsprop"
        opt.learning_rate = 1e-4
        opt.decay = 0.9  # Keras RMSprop rho
        opt.eps = 1e-7  # Keras RMSprop epsilon
        opt.clip_value = 1.0

    config.train.batch_size = 16
    config.train.schedule = "alternating"
    config.train.n_critic = 1

    config.sample_every_steps = 50
    config.num_control_samples = 36  # 6x6 grid
    config.checkpoint_every_steps = 500

    if variant == "runlocal":
        default.shrink_to_runlocal(config)
        config.data.image_size = 32
        config.num_control_samples = 36  # keep the 6x6 grid: the recipe's point
        config.model.g_dim = 4  # G: 4 -> 8 -> 16 channels
        config.model.d_dim = 8
    return config
