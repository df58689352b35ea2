r"""CelebA 64x64 for the best faces per CPU-minute (issue 14): a small DCGAN with DiffAugment + EMA.

The compute is the constraint: in 60 minutes on one CPU core the PyTorch peer
makes ~1-2k steps of batch 64, a handful of epochs of the 12,000-image CelebA
subset. The recipe is chosen from the literature and is *to be confirmed by the
ablation*: `python -m facegan_jax.race` with one `--config.<field>=<value>` per
ingredient (README "Quality per CPU-minute" lists them):

* DCGAN at half the PyTorch peer's width (g_dim = d_dim = 32: 256-128-64-32),
  batch 32: ~4x fewer FLOPs per image than ngf = ndf = 64, two updates per
  64 images. Early in training, steps buy more quality than width does.
* DiffAugment 'translation,cutout' on every image D sees (Zhao et al. 2020: the
  policy of their full-data CIFAR-10 BigGAN runs, FID 9.59 -> 8.70; the lever
  for 1k-30k images). 'color' is left out: it makes D blind to the colours the
  attribute metrics (hair, skin) measure, and the race budget sees few epochs.
* Generator EMA 0.999 with the step warm-up (Yazici et al. 2019: averaging is
  the cheapest large gain early in training; the warm-up is a ramp like
  StyleGAN2-ADA's ema_rampup, see train_step.py).
* Non-saturating loss, Adam(2e-4, b1 = 0.5), BatchNorm D: the DCGAN settings
  that learn fastest from scratch. Lazy R1 (`loss.r1_gamma`, `loss.r1_every`),
  spectral norm in D (`model.d_spectral_norm`, with hinge and betas (0, 0.99))
  and two-timescale learning rates stay available for the ablation; they buy
  stability over long runs, which a 60-minute budget does not reach.

Prepare CelebA once (README "CelebA"), then train:

  python -m data_prep.prepare_celeba --manual_dir ../shared/data/celeba \
      --data_dir ~/tensorflow_datasets
  python -m facegan_jax.main --config=configs/celeba64_fast.py --workdir=runs/celeba64_fast \
      --config.data.tfds_data_dir=~/tensorflow_datasets

Race it against the PyTorch DCGAN peer, one core each (needs the attribute
classifier and `.venv-peers`, see README "Quality per CPU-minute"):

  python -m facegan_jax.race --minutes 30 --every 5 --out runs/race30 \
      --classifier attr_celeba64

Smoke run on the embedded synthetic faces: `--config=configs/celeba64_fast.py:runlocal`.
"""

from __future__ import annotations

import ml_collections

from configs import default


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    """The fast CelebA-64 recipe; `variant='runlocal'`: a smoke run on synthetic_faces at 32x32."""
    default.check_variant(variant, __file__)
    config = default.get_config()
    # ~20 epochs of the 12k subset; the race stops on wall-clock time instead.
    config.total_steps = 8_000

    config.data.name = "celeba_local"
    config.data.crop = "celeba_178"
    config.data.resize = "bicubic"  # the peer's and the race's PIL bicubic
    config.data.image_size = 64
    config.data.channels = 3

    config.model.g_dim = 32
    config.model.d_dim = 32

    config.loss.name = "non_saturating"
    config.loss.r1_gamma = 0.0
    config.loss.r1_every = 16
    for opt in (config.g_optimizer, config.d_optimizer):
        opt.learning_rate = 2e-4
        opt.b1 = 0.5
        opt.b2 = 0.999

    config.train.batch_size = 32
    config.train.diffaugment = "translation,cutout"
    config.train.ema_decay = 0.999

    config.sample_every_steps = 500
    config.checkpoint_every_steps = 1000

    if variant == "runlocal":
        default.shrink_to_runlocal(config)
        config.data.name = "synthetic_faces"
        config.data.crop = "none"
        config.data.image_size = 32
    return config
