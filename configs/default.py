r"""Default config: the 32x32 DCGAN demo on the embedded `synthetic_faces` data.

This is the config every recipe starts from; each field is documented here.
It trains the second seed's DCGAN (conv_dim 32, z 100) at 32x32 and finishes on
2 CPU cores in a few minutes, showing recognisable faces.

Run it:

  python -m facegan_jax.main --config=configs/default.py --workdir=runs/default

Tiny smoke run (`runlocal` variant, a handful of steps):

  python -m facegan_jax.main --config=configs/default.py:runlocal --workdir=/tmp/smoke

Override any field with `--config.<field>=<value>`, e.g. `--config.total_steps=500`.
"""

from __future__ import annotations

import os

import ml_collections

from facegan_jax.models import model_config


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    """Returns the default config; `variant='runlocal'` shrinks it to a smoke run."""
    config = ml_collections.ConfigDict()

    # Base PRNG seed: parameter init, the training key in the state, data order.
    config.seed = 0
    # Number of optimisation steps (one step = one generator update; with
    # `train.n_critic` > 1 a step holds several discriminator updates).
    config.total_steps = 1500

    # ---------------------------------------------------------------- data
    config.data = data = ml_collections.ConfigDict()
    # 'synthetic_faces' (embedded, rendered), 'celeba_local' (our builder over the
    # official files, see data_prep/prepare_celeba.py) or 'celeb_a' (TFDS's own).
    data.name = "synthetic_faces"
    # TFDS data_dir; None means TFDS's default (~/tensorflow_datasets or $TFDS_DATA_DIR).
    data.tfds_data_dir = ml_collections.config_dict.placeholder(str)
    data.train_split = "train"
    # Real side of FID and of held-out metrics ('validation' or 'test').
    data.eval_split = "validation"
    # Output resolution (square) and channels (3 = RGB, 1 = greyscale).
    data.image_size = 32
    data.channels = 3
    # Crop applied before resizing: 'none', 'celeba_178' (178x178 box from row 20,
    # the usual aligned-CelebA face crop), 'center_160' (centre 160x160, seed 001)
    # or 'box' (uses `crop_box` = (top, left, height, width)). Crops apply to the
    # CelebA sources only: synthetic_faces renders are framed faces already.
    data.crop = "none"
    data.crop_box = (0, 0, 0, 0)
    # Resampling filter of the resize after the crop, antialiased either way:
    # 'bilinear' (PIL BILINEAR) or 'bicubic' (PIL BICUBIC, what the PyTorch peer
    # and `tools.race` use).
    data.resize = "bilinear"
    # Shuffle buffer (examples) and tf.data parallelism (-1 = AUTOTUNE).
    data.shuffle_buffer = 10_000
    data.num_parallel_calls = -1
    # Batches prefetched onto the devices ahead of the train step.
    data.prefetch_to_device = 2
    # synthetic_faces only: images rendered per split when the dataset is built.
    data.synthetic_num_train = 12_000
    data.synthetic_num_eval = 1_000

    # --------------------------------------------------------------- model
    # `model.name` picks the family in facegan_jax/models/ ('dcgan', 'acgan',
    # 'gan128', 'hrdcgan'); `config.model` holds exactly the fields that family
    # reads (each family's `default_config()` documents them; common to all:
    # z_dim, g_dim, d_dim, num_attributes). A field the family would ignore is
    # an error, so recipes of another family start from `model_config(name)`.
    config.model = model_config("dcgan")

    # ---------------------------------------------------------------- loss
    config.loss = loss = ml_collections.ConfigDict()
    # Registry key in facegan_jax/losses.py: 'minimax' (BCE, the seeds'),
    # 'non_saturating' or 'hinge'.
    loss.name = "non_saturating"
    # One-sided label smoothing: real targets drawn from U(low, high); (1, 1) disables.
    # The improved DCGAN uses (0.7, 1.2).
    loss.real_label_low = 1.0
    loss.real_label_high = 1.0
    # Label noise (gan128): targets += noise * U(0, 1) for real and fake labels.
    loss.label_noise = 0.0
    # ACGAN: weight of the attribute BCE, and whether D's attribute head also
    # learns from fake images (with the attributes they were generated for).
    loss.aux_weight = 1.0
    loss.aux_on_fake = False
    # Weight of the attribute BCE in the generator's loss (AttGAN uses 10).
    loss.g_aux_weight = 1.0
    # Attribute BCE over the 40 attributes: 'mean' (the seed) or 'sum' (StarGAN).
    loss.aux_reduction = "mean"
    # R1 penalty gamma / 2 * E||grad_x D(x)||^2 on real images (Mescheder et al. 2018);
    # 0 disables. Lazy: applied every `r1_every` steps, scaled by r1_every (StyleGAN2).
    loss.r1_gamma = 0.0
    loss.r1_every = 1
    # Classifier guidance (conditional models): a frozen attribute classifier (a folder
    # of data_prep.train_attribute_classifier; None: no guidance) adds `guide_weight` x
    # its BCE of the requested attributes on G's images, over the attributes it reads
    # reliably. Never judge a run with the classifier that guided it.
    loss.guide_classifier = ml_collections.config_dict.placeholder(str)
    loss.guide_weight = 0.0
    # > 0: guidance is a hinge with this logit margin beyond the classifier's threshold
    # (no push once an attribute reads clearly); 0: the BCE.
    loss.guide_margin = 0.0
    # True: guidance only on the attribute each request forces (train.balanced_requests),
    # weighted train.forced_weight; False: on every attribute the guide reads reliably.
    loss.guide_forced_only = False
    # Against adversarial textures: the guide sees a DiffAugment-ed copy of G's images
    # (a policy as train.diffaugment, e.g. 'translation'; '' none) and/or the images
    # area-downsampled to guide_resolution (0: as they are).
    loss.guide_augment = ""
    loss.guide_resolution = 0
    # > 0: guide_weight decays linearly to 0 at this step and guidance is skipped after
    # it (guidance early, while G learns what each attribute looks like; then D alone,
    # so realism recovers); 0: constant weight.
    loss.guide_decay_steps = 0

    # ----------------------------------------------------------- optimizers
    def optimizer(lr: float) -> ml_collections.ConfigDict:
        return ml_collections.ConfigDict(
            dict(
                name="adam",  # 'adam' or 'rmsprop'
                learning_rate=lr,
                b1=0.5,  # Adam only
                b2=0.999,  # Adam only
                decay=0.9,  # RMSprop only (Keras' rho)
                eps=1e-8,  # both (Adam's default; RMSprop recipes set Keras' 1e-7)
                # Clip each gradient element to [-clip_value, clip_value]; 0 disables.
                clip_value=0.0,
            )
        )

    config.g_optimizer = optimizer(2e-4)
    config.d_optimizer = optimizer(2e-4)

    # -------------------------------------------------------------- training
    config.train = train = ml_collections.ConfigDict()
    # Global batch size (split over all devices of all processes).
    train.batch_size = 64
    # 'alternating' (D step, then G step with fresh G output: most seeds),
    # 'simultaneous' (both gradients from one forward pass: seed 004).
    train.schedule = "alternating"
    # Discriminator updates per generator update.
    train.n_critic = 1
    # EMA of generator weights for samples and evaluation; 0 disables.
    train.ema_decay = 0.999
    # DiffAugment (Zhao et al. 2020) of every image D sees, real and fake, in D's and
    # G's updates: comma-separated 'color', 'translation', 'cutout'; '' disables.
    train.diffaugment = ""
    # Conditional models: fraction of G's requested attribute vectors (real vectors)
    # in which one attribute, uniform over the 40, is forced on or off with equal odds,
    # so rare attributes are practised as often as common ones; 0 disables.
    train.balanced_requests = 0.0
    # Weight, in G's attribute terms (aux head and guidance), of the attribute a balanced
    # request forced (1: like the others); above 1 the asked-for attribute wins over the
    # real vector's correlated ones (Male asked for on a vector with Wearing_Lipstick).
    train.forced_weight = 1.0
    # Which attributes a balanced request may force: '' all 40; 'guide' the ones the
    # guide classifier (loss.guide_classifier) reads reliably (all 40 without a guide);
    # or names, comma-separated.
    train.forced_attributes = ""
    # Relative odds of forcing each of those: 'Name:factor,...' ('Male:3': Male is forced
    # 3x as often as each other candidate, so G practises it more); '' uniform.
    train.forced_emphasis = ""
    # In a request with a forced attribute A=v, G's attribute terms (aux head and
    # guidance) skip every other entry whose requested value has probability below this
    # among real vectors with A=v (the run's attribute pool): the forced attribute wins
    # without being pulled back by contradictions the data never shows (Male forced on
    # a vector with Wearing_Lipstick: P(Lipstick | Male) ~ 0.01). 0 disables.
    train.forced_conflicts = 0.0
    # Consistent requests: in a request with a forced attribute A=v, every other entry
    # whose value has probability below this among real vectors with A=v is set to its
    # likely value (a man is asked for without lipstick), so G, D's projection and every
    # attribute term see the request a user would write (the sample command's requests
    # and `evaluate --consistent-requests` are made the same way). 0 disables.
    train.consistent_requests = 0.0
    # bfloat16 compute with float32 parameters, optimizer state and losses.
    train.mixed_precision = False

    # ---------------------------------------------------- logging & outputs
    config.log_every_steps = 50
    # PNG grid of the fixed control latents (EMA generator) every N steps.
    config.sample_every_steps = 250
    config.num_control_samples = 64
    config.checkpoint_every_steps = 500
    # Wall-clock budgets in minutes of training (compilation excluded; 0: off): stop
    # with a checkpoint after `train_minutes`, and also checkpoint every
    # `checkpoint_every_minutes` (equal-wall-clock comparisons, cluster time limits).
    config.train_minutes = 0.0
    config.checkpoint_every_minutes = 0.0
    config.max_checkpoints_to_keep = 3

    # ------------------------------------------------------------------ FID
    config.fid = fid = ml_collections.ConfigDict()
    # Evaluate FID on the EMA generator every N steps (0 disables) and at the end.
    fid.every_steps = 0
    fid.num_samples = 2048
    fid.batch_size = 64
    # pytorch-fid weights file; None: cache dir, else download.
    fid.weights_path = ml_collections.config_dict.placeholder(str)
    # Also compute KID (unbiased, polynomial kernel).
    fid.kid = True

    # ------------------------------------------------------ attribute metrics
    # With the library's attribute classifier (a folder written by
    # `python -m data_prep.train_attribute_classifier`), every N steps (0 disables)
    # and at the end: `eval/fd_attr` (Frechet distance of classifier features,
    # generated vs held-out real) and, for conditional models, `eval/attr_control`
    # (mean balanced accuracy of forced attributes the classifier judges reliably).
    config.attr_eval = attr_eval = ml_collections.ConfigDict()
    attr_eval.every_steps = 0
    attr_eval.classifier = ml_collections.config_dict.placeholder(str)
    attr_eval.num_samples = 1000
    # Images generated with each attribute forced on (and as many forced off).
    attr_eval.n_per_side = 100
    attr_eval.batch_size = 64
    # > 0: also `eval/attr_control_consistent` (and per attribute): control on consistent
    # requests at this rate (`evaluate --consistent-requests`; what `sample` asks by default).
    attr_eval.consistent_requests = 0.0

    if check_variant(variant, __file__) == "runlocal":
        shrink_to_runlocal(config)
    return config


def check_variant(variant: str | None, config_file: str) -> str | None:
    """Returns `variant` (None, '' or 'runlocal'); any other value is an error naming the file.

    Args:
      variant: the ``:variant`` suffix of ``--config=configs/x.py:variant``.
      config_file: the recipe's ``__file__``, for the message.
    """
    if variant not in (None, "", "runlocal"):
        name = os.path.basename(config_file)
        raise ValueError(f"unknown variant {variant!r} for configs/{name} (known: runlocal)")
    return variant


def shrink_to_runlocal(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Shrinks any recipe to a smoke run: a few steps, tiny batch, widths and dataset."""
    config.total_steps = 6
    config.train.batch_size = 8
    config.data.synthetic_num_train = 64
    config.data.synthetic_num_eval = 32
    config.data.shuffle_buffer = 64
    config.log_every_steps = 2
    config.sample_every_steps = 3
    config.checkpoint_every_steps = 3
    config.num_control_samples = 16
    config.model.g_dim = 8
    config.model.d_dim = 8
    config.fid.num_samples = 16
    config.fid.batch_size = 8
    config.attr_eval.num_samples = 32
    config.attr_eval.n_per_side = 8
    config.attr_eval.batch_size = 16
    return config
