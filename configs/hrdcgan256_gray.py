r"""HR-DCGAN on greyscale 256x256 faces, simultaneous G/D update (seed 004, TensorFlow).

HR-DCGAN (Curtó et al. 2017): a DCGAN with SELU (+ BatchNorm) activations and an
extra stride-1 conv as the first G layer and the last D layer. G: z(100) ->
Dense 8x8x512 -> Conv k4 s1 (512) -> ConvTranspose k4 s2 256-128-64-32 -> 1
channel, tanh; D: Conv k4 s2 32-64-128-256-512 -> Conv k4 s1 (512) -> Dense
logit. Adam(2e-4, b1=0.5) for both, batch 64, BCE; both gradients come from one
forward pass (`train.schedule='simultaneous'`, the seed's train_step). See
facegan_jax/models/hrdcgan.py for the network and the seed's deviations.

  python -m facegan_jax.main --config=configs/hrdcgan256_gray.py --workdir=runs/hrdcgan256_gray

The data defaults to the embedded `synthetic_faces`, rendered at up to 128x128:
the input pipeline resizes it to 256 (and converts to greyscale). On real CelebA
add `--config.data.name=celeba_local`. The RGB variant is configs/hrdcgan256.py.

Smoke run: `--config=configs/hrdcgan256_gray.py:runlocal`.
"""

from __future__ import annotations

import ml_collections

from facegan_jax.models import model_config
from facegan_jax.recipes import sibling

default = sibling(__file__, "default")


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    """HR-DCGAN 256x256 greyscale; `variant='runlocal'` shrinks it to a smoke run (32x32)."""
    default.check_variant(variant, __file__)
    config = default.get_config()
    config.total_steps = 40_000  # the seed: 50 epochs over 50k faces at batch 64

    # 'celeba_local' for real CelebA; synthetic_faces is resized up from <= 128.
    config.data.name = "synthetic_faces"
    config.data.image_size = 256
    config.data.channels = 1
    config.data.crop = "celeba_178"  # the seed centres each detected face

    config.model = model_config("hrdcgan")
    config.model.z_dim = 100
    # Last G / first D width; doubled per stage to 512 at 8x8. (The seed's own
    # code used 8 / 32, which its FID of 564 reflects.)
    config.model.g_dim = 32
    config.model.d_dim = 32
    config.model.g_activation = "selu"
    config.model.d_activation = "selu"

    config.loss.name = "non_saturating"  # the seed's generator_loss: BCE(fake -> 1)

    for opt in (config.g_optimizer, config.d_optimizer):
        opt.name = "adam"
        opt.learning_rate = 2e-4
        opt.b1 = 0.5
        opt.b2 = 0.999

    config.train.batch_size = 64
    config.train.schedule = "simultaneous"
    config.train.n_critic = 1

    config.sample_every_steps = 1000
    config.num_control_samples = 16  # 256x256 images: a 4x4 grid
    config.checkpoint_every_steps = 2000

    if variant == "runlocal":
        default.shrink_to_runlocal(config)
        config.data.image_size = 32
        config.model.g_dim = 4  # G: 8 (8x8) -> 4 -> 1 channel
        config.model.d_dim = 4  # D: 4 -> 8, stride-1 conv 8
    return config
