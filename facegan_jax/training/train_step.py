"""The pure train step: one generator update and `n_critic` discriminator updates.

`make_train_step` returns `train_step(state, batch) -> (state, metrics)`, a pure
function that train.py jits over the mesh with the state donated. All of one
step's randomness comes from `fold_in(state.key, state.step)`, split by purpose.

Update schedules (`config.train.schedule`):

* ``alternating`` (most seeds, and PyTorch's DCGAN example): G runs forward
  once, keeping its VJP; D is updated on the real batch and the detached fake
  batch; then G's loss is taken through the *updated* D on the same fake batch
  and pulled back through the stored VJP. With `n_critic > 1`, the first
  `n_critic - 1` D updates use fresh fake batches generated without gradients,
  and each D update uses its own real batch.
* ``simultaneous`` (seed 004's TensorFlow write-up): one forward pass of G and
  D; both gradients come from it (D's from its loss, G's through D at its
  pre-update parameters) and both nets are updated together.

The EMA generator follows the live one with decay
``min(ema_decay, (1 + step) / (10 + step))`` (warm-up as in TF's
ExponentialMovingAverage, so short runs are not dominated by the initial
weights). BatchNorm running statistics are averaged the same way as the
parameters: they are statistics of the live generator's activations, and the
EMA of those tracks the activations of the EMA weights far better than a copy
of the latest ones would. Spectral-norm vectors are copied from the live
generator: they are power-iteration estimates, not quantities to average.
With ``ema_decay = 0`` the EMA generator is exactly the live one. The warm-up
is itself a ramp: its averaging window grows with the step (about step / 9
steps, a half-life of ~8 % of the run, close to StyleGAN2-ADA's ``ema_rampup =
0.05``) until it reaches ``ema_decay``'s.

Regularisers, each a config field (off by default, so the seed recipes are unchanged):

* ``train.diffaugment`` (DiffAugment, `facegan_jax.training.augment`): every image D
  sees, real or fake, in D's update and in G's, goes through the same random
  differentiable transforms; G's gradient flows back through them. Each D call
  draws its own transform from ``fold_in(<that call's key>, _AUGMENT_STREAM)``,
  so switching augmentation on changes no other random draw of the step.
* ``loss.r1_gamma`` / ``loss.r1_every`` (lazy R1, Mescheder et al. 2018;
  StyleGAN2's lazy regularisation): on steps where ``step % r1_every == 0``
  each D update adds ``r1_every * gamma / 2 * E ||grad_x D(x)||^2`` on its real
  batch (through the augmentation, as StyleGAN2-ADA does), so the penalty's
  average weight is ``gamma`` at 1/r1_every of its cost. Logged as ``d_r1``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from facegan_jax import errors, models
from facegan_jax.data import celeba_attributes
from facegan_jax.training import augment as augment_lib
from facegan_jax.training import losses
from facegan_jax.training.state import GanState

PyTree = Any
Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]

SCHEDULES = ("alternating", "simultaneous")
_MUTABLE = ["batch_stats", "spectral"]
# fold_in constant of the DiffAugment draws ("AUG"): a stream of its own, see the docstring.
_AUGMENT_STREAM = 0x415547


def ema_decay_at(step: jax.Array, ema_decay: float) -> jax.Array:
    """The EMA decay used after `step` updates (with TF-style warm-up)."""
    step = step.astype(jnp.float32)
    return jnp.minimum(ema_decay, (1.0 + step) / (10.0 + step))


def update_ema(state: GanState, ema_decay: float) -> GanState:
    """Moves the EMA generator towards the live one (see the module docstring)."""
    if ema_decay == 0:
        return state.replace(ema_params=state.g_params, ema_vars=state.g_vars)
    decay = ema_decay_at(state.step, ema_decay)

    def avg(ema: jax.Array, live: jax.Array) -> jax.Array:
        return (decay * ema + (1.0 - decay) * live).astype(live.dtype)

    ema_params = jax.tree.map(avg, state.ema_params, state.g_params)
    ema_vars = dict(state.g_vars)
    if "batch_stats" in state.g_vars:
        ema_vars["batch_stats"] = jax.tree.map(
            avg, state.ema_vars["batch_stats"], state.g_vars["batch_stats"]
        )
    return state.replace(ema_params=ema_params, ema_vars=ema_vars)


def balance_requests(
    key: jax.Array,
    attrs: jax.Array,
    fraction: float,
    candidates: Sequence[int] = (),
    odds: Sequence[float] = (),
) -> tuple[jax.Array, jax.Array]:
    """Real attribute vectors with one attribute forced on or off in `fraction` of the rows.

    G is otherwise asked for each attribute at its data frequency (Eyeglasses 6.5 %,
    Bald 2.2 %) and rarely practises the rare ones. Here a row is picked with
    probability `fraction`; in it one attribute, uniform over `candidates` (all A
    when empty), is set to 1 or 0 with equal odds, on top of the real vector (so
    the rest stays plausible).

    Args:
      key: PRNG key.
      attrs: float {0, 1} [B, A] real attribute vectors.
      fraction: probability that a row gets a forced attribute, in [0, 1].
      candidates: attribute indices that may be forced (`train.forced_attributes`);
        empty: all A.
      odds: relative odds of forcing each candidate (of each of the A attributes
        when `candidates` is empty; `train.forced_emphasis`); empty: uniform.

    Returns:
      (attributes float [B, A], forced bool [B, A]: the entries this call set).
    """
    k_row, k_attr, k_val = jax.random.split(key, 3)
    B, A = attrs.shape
    picked = jax.random.bernoulli(k_row, fraction, (B, 1))  # [B, 1]
    pool = jnp.asarray(candidates if candidates else range(A), jnp.int32)  # [K]
    if odds:
        if len(odds) != len(pool):
            raise ValueError(f"{len(odds)} odds for {len(pool)} candidate attributes")
        logits = jnp.log(jnp.asarray(odds, jnp.float32))  # [K]
        index = pool[jax.random.categorical(k_attr, logits, shape=(B,))]  # [B]
    else:
        index = pool[jax.random.randint(k_attr, (B,), 0, len(pool))]  # [B]
    which = jax.nn.one_hot(index, A, dtype=bool)  # [B, A]
    value = jax.random.bernoulli(k_val, 0.5, (B, 1)).astype(attrs.dtype)  # [B, 1]
    forced = picked & which
    return jnp.where(forced, value, attrs), forced


def make_guidance(config: Any) -> Callable[..., jax.Array] | None:
    """Classifier guidance: `guide(images, attrs, weights=None, key=None) -> loss`, or None.

    With `config.loss.guide_classifier` (a folder written by
    `data_prep.train_attribute_classifier`) and `config.loss.guide_weight` > 0, G's
    loss adds `guide_weight * BCE(classifier logits - threshold logits, requested
    attributes)`, summed over the attributes that classifier reads reliably and
    averaged over images. With `config.loss.guide_margin` m > 0 the BCE becomes a hinge,
    `relu(m - z)` for a requested attribute and `relu(m + z)` for an absent one (z: the
    logit less the calibrated threshold): once the classifier reads the request beyond
    the margin, guidance stops pushing, so G is not drawn past a clear attribute into
    exaggerated ones. Against adversarial textures (a classifier's input gradient is
    not a picture of the attribute, and another classifier, the judge, reads such
    textures too): `config.loss.guide_augment` (a DiffAugment policy, e.g.
    'translation') shows the guide a randomly augmented copy, so only changes that
    survive the augmentation are pushed; `config.loss.guide_resolution` r > 0 shows it
    the image area-downsampled to r x r, so only coarse changes are pushed.
    The classifier is frozen (its weights are constants of the compiled step). It must
    not be the classifier that judges the run: a generator can learn to fool the
    classifier it trained against without drawing the attribute.

    Several guides, `config.loss.guide_classifier='FOLDER_A,FOLDER_B'` (an ensemble of
    classifiers with other seeds and architectures): the loss is the mean of each
    guide's loss (each over the attributes it reads reliably), so `guide_weight` keeps
    its meaning. A change that fools one network rarely fools another (adversarial
    examples transfer poorly between architectures), so G is pushed towards what every
    guide reads, and, it is hoped, what an unseen judge reads too.
    """
    folders = guide_folders(config)
    weight = float(config.loss.get("guide_weight", 0.0))
    margin = float(config.loss.get("guide_margin", 0.0))
    augment = augment_lib.make_augment(config.loss.get("guide_augment", ""))
    resolution = int(config.loss.get("guide_resolution", 0))
    if not folders or weight == 0:
        return None
    from facegan_jax.data.celeba_attributes import attribute_index
    from facegan_jax.metrics import attributes as attributes_lib

    guides = []  # (net, image size, params, threshold logits [40], reliable mask [40])
    for folder in folders:
        classifier = attributes_lib.load(folder)
        mask = np.zeros((len(classifier.threshold_logits),), np.float32)
        for name in classifier.reliable_attributes():
            mask[attribute_index(name)] = 1.0
        params = jax.tree.map(jnp.asarray, classifier.params)
        offset = jnp.asarray(classifier.threshold_logits, jnp.float32)
        guides.append((classifier.net, classifier.image_size, params, offset, mask))

    def one_guide(
        x: jax.Array, attrs: jax.Array, weights: jax.Array | None, net, size, params, offset, mask
    ) -> jax.Array:
        if x.shape[1] != size:
            shape = (x.shape[0], size, size, x.shape[3])
            x = jax.image.resize(x, shape, "linear", antialias=True)
        logits, _ = net.apply({"params": params}, x)  # [B, 40]
        z = logits - offset  # 0 at the calibrated decision threshold
        if margin > 0:
            per = attrs * jax.nn.relu(margin - z) + (1 - attrs) * jax.nn.relu(margin + z)
        else:
            per = attrs * jax.nn.softplus(-z) + (1 - attrs) * jax.nn.softplus(z)  # [B, 40]
        if weights is not None:
            per = per * weights
        return jnp.mean(jnp.sum(per * mask, axis=-1))

    def guide(
        images: jax.Array,
        attrs: jax.Array,
        weights: jax.Array | None = None,
        key: jax.Array | None = None,
    ) -> jax.Array:
        x = images.astype(jnp.float32)
        if augment is not None:
            x = augment(key, x)
        if resolution and x.shape[1] > resolution:
            f = x.shape[1] // resolution
            x = x.reshape(x.shape[0], resolution, f, resolution, f, x.shape[3]).mean(axis=(2, 4))
        losses = [one_guide(x, attrs, weights, *g) for g in guides]
        return weight * sum(losses) / len(losses)

    return guide


def guide_folders(config: Any) -> tuple[str, ...]:
    """The guide classifier folders of `config.loss.guide_classifier` (comma-separated)."""
    spec = str(config.loss.get("guide_classifier") or "")
    return tuple(f.strip() for f in spec.split(",") if f.strip())


# Fields only attribute-conditioned models read, with the values that mean "off"
# (configs/default.py): an unconditional run that sets one would silently ignore it.
_CONDITIONAL_ONLY = {
    ("loss", "aux_weight"): 1.0,
    ("loss", "g_aux_weight"): 1.0,
    ("loss", "aux_on_fake"): False,
    ("loss", "aux_reduction"): "mean",
    ("loss", "guide_weight"): 0.0,
    ("loss", "guide_classifier"): None,
    ("loss", "guide_margin"): 0.0,
    ("loss", "guide_forced_only"): False,
    ("loss", "guide_augment"): "",
    ("loss", "guide_resolution"): 0,
    ("loss", "guide_decay_steps"): 0,
    ("train", "balanced_requests"): 0.0,
    ("train", "forced_weight"): 1.0,
    ("train", "forced_attributes"): "",
    ("train", "forced_emphasis"): "",
    ("train", "forced_conflicts"): 0.0,
    ("train", "consistent_requests"): 0.0,
}


def forced_candidates(config: Any) -> tuple[int, ...]:
    """Indices of the attributes a balanced request may force (`train.forced_attributes`).

    '' : all 40; 'guide': the attributes the guide classifier
    (`loss.guide_classifier`) reads reliably, so G practises what is measured and
    guided (all 40 when the run has no guide classifier, so a recipe that sets 'guide'
    also runs unguided); otherwise comma-separated CelebA attribute names. Raises a
    ConfigError naming the field for an unknown name.
    """
    from facegan_jax.data.celeba_attributes import CELEBA_ATTRIBUTES

    spec = str(config.train.get("forced_attributes", "") or "").strip()
    if not spec:
        return ()
    if spec == "guide":
        folders = guide_folders(config)
        if not folders:
            return ()  # no guide: every attribute may be forced
        from facegan_jax.metrics import attributes as attributes_lib

        names = sorted({n for f in folders for n in attributes_lib.load(f).reliable_attributes()})
    else:
        names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in CELEBA_ATTRIBUTES]
    if unknown or not names:
        raise errors.ConfigError(
            f"config.train.forced_attributes={spec!r}: unknown attribute(s) {unknown}; give "
            "'' (all 40), 'guide', or CelebA attribute names separated by commas"
        )
    return tuple(sorted(CELEBA_ATTRIBUTES.index(n) for n in set(names)))


def forced_odds(config: Any, candidates: Sequence[int]) -> tuple[float, ...]:
    """Relative odds of forcing each of `candidates` (all 40 when empty), or () for uniform.

    `train.forced_emphasis`: 'Name:factor,...' (for example 'Male:3,Smiling:2'): a balanced
    request forces that attribute `factor` times as often as each other candidate, so G
    practises the attributes it gets wrong (or a user cares about) more. Raises a
    ConfigError naming the field for an unknown name, a name that is not a candidate of
    `train.forced_attributes`, or a factor that is not a positive number.
    """
    from facegan_jax.data.celeba_attributes import CELEBA_ATTRIBUTES

    field = "config.train.forced_emphasis"
    spec = str(config.train.get("forced_emphasis", "") or "").strip()
    if not spec:
        return ()
    pool = list(candidates) if candidates else list(range(len(CELEBA_ATTRIBUTES)))
    odds = [1.0] * len(pool)
    for item in (part.strip() for part in spec.split(",")):
        name, sep, factor = item.partition(":")
        name = name.strip()
        try:
            value = float(factor) if sep else float("nan")
        except ValueError:
            value = float("nan")
        if not value > 0 or not math.isfinite(value):
            raise errors.ConfigError(
                f"{field}={spec!r}: {item!r} is not 'Name:factor' with a factor > 0 "
                "(for example 'Male:3,Smiling:2')"
            )
        if name not in CELEBA_ATTRIBUTES:
            raise errors.ConfigError(f"{field}={spec!r}: unknown attribute {name!r}")
        index = CELEBA_ATTRIBUTES.index(name)
        if index not in pool:
            raise errors.ConfigError(
                f"{field}={spec!r}: {name} is not one of the attributes a request may force "
                f"(config.train.forced_attributes={config.train.get('forced_attributes', '')!r})"
            )
        odds[pool.index(index)] = value
    return tuple(odds)


def validate_schedule(config: Any) -> None:
    """Raises a ValueError naming the field if the step's settings are not usable.

    Checks the update schedule, `n_critic`, the DiffAugment policy, the R1 fields and
    that an unconditional model is given no field only conditional models read.
    """
    if not models.is_conditional(config):
        for (section, name), off in _CONDITIONAL_ONLY.items():
            value = config[section].get(name, off)
            if value != off and not (off is None and value == ""):
                raise errors.ConfigError(
                    f"config.{section}.{name}={value!r} is read only by attribute-conditioned "
                    f"models (config.model.num_attributes=40); remove it for "
                    f"{config.model.name!r} with num_attributes=0"
                )
    if config.train.schedule not in SCHEDULES:
        raise ValueError(
            f"config.train.schedule={config.train.schedule!r} is not known; known: {SCHEDULES}"
        )
    if config.train.n_critic < 1:
        raise ValueError(f"config.train.n_critic={config.train.n_critic} must be >= 1")
    if config.train.schedule == "simultaneous" and config.train.n_critic != 1:
        raise ValueError(
            "config.train.n_critic must be 1 with config.train.schedule='simultaneous'"
        )
    augment_lib.parse_policy(config.train.get("diffaugment", ""))
    r1_gamma, r1_every = config.loss.get("r1_gamma", 0.0), config.loss.get("r1_every", 1)
    if not r1_gamma >= 0:
        raise ValueError(f"config.loss.r1_gamma={r1_gamma} must be >= 0 (0 disables R1)")
    if int(r1_every) != r1_every or r1_every < 1:
        raise ValueError(f"config.loss.r1_every={r1_every} must be an integer >= 1")
    balanced = config.train.get("balanced_requests", 0.0)
    if not 0 <= balanced <= 1:
        raise ValueError(f"config.train.balanced_requests={balanced} must be in [0, 1]")
    for field in ("forced_conflicts", "consistent_requests"):
        rate = config.train.get(field, 0.0)
        celeba_attributes.check_rate(rate, f"config.train.{field}")
        if rate > 0 and not balanced > 0:
            raise ValueError(
                f"config.train.{field}={rate} acts on forced attributes: it needs "
                "config.train.balanced_requests > 0"
            )
    if not config.train.get("forced_weight", 1.0) > 0:
        raise ValueError(f"config.train.forced_weight={config.train.forced_weight} must be > 0")
    guide_weight = config.loss.get("guide_weight", 0.0)
    if not guide_weight >= 0:
        raise ValueError(f"config.loss.guide_weight={guide_weight} must be >= 0")
    guide_margin = config.loss.get("guide_margin", 0.0)
    if not guide_margin >= 0:
        raise ValueError(f"config.loss.guide_margin={guide_margin} must be >= 0 (0: BCE)")
    augment_lib.parse_policy(config.loss.get("guide_augment", ""), "config.loss.guide_augment")
    resolution = config.loss.get("guide_resolution", 0)
    size = config.data.image_size
    if resolution and not (0 < resolution < size and size % resolution == 0):
        raise ValueError(
            f"config.loss.guide_resolution={resolution} must divide "
            f"config.data.image_size={size} and be smaller (0: off)"
        )
    decay = config.loss.get("guide_decay_steps", 0)
    if int(decay) != decay or decay < 0:
        raise ValueError(
            f"config.loss.guide_decay_steps={decay} must be an integer >= 0 (0: constant)"
        )
    if config.loss.get("guide_forced_only", False) and not balanced > 0:
        raise ValueError(
            "config.loss.guide_forced_only=True guides only forced attributes: it needs "
            "config.train.balanced_requests > 0"
        )
    if config.loss.get("guide_classifier"):
        from facegan_jax.metrics import attributes

        for folder in guide_folders(config) or ("",):  # "" (only commas): not a folder
            attributes.check_folder(folder, "config.loss.guide_classifier")


@dataclasses.dataclass(frozen=True, eq=False)
class StepSpec:
    """What a train step is built from: the nets, their optimizers and the config's settings.

    Static under jit (Python values closed over by the compiled step). Built once by
    `StepSpec.from_config`; every update below is a module-level pure function of a
    spec, the state and the batch.
    """

    generator: nn.Module
    discriminator: nn.Module
    g_tx: optax.GradientTransformation
    d_tx: optax.GradientTransformation
    adv: losses.AdversarialLoss
    loss_config: Any  # config.loss: the discriminator's target settings
    schedule: str
    n_critic: int
    conditional: bool
    z_dim: int
    ema_decay: float
    aux_weight: float
    g_aux_weight: float
    aux_reduction: str
    aux_on_fake: bool
    augment: Callable[[jax.Array, jax.Array], jax.Array] | None
    r1_gamma: float
    r1_every: int
    balanced: float
    forced_weight: float
    forced_candidates: tuple[int, ...]
    forced_odds: tuple[float, ...]
    guide: Callable[..., jax.Array] | None
    guide_forced_only: bool
    guide_decay_steps: int
    conflict_rate: float = 0.0
    consistent_rate: float = 0.0
    conflict_table: np.ndarray | None = None  # celeba_attributes.conflict_table of the pool

    @classmethod
    def from_config(
        cls,
        config: Any,
        generator: nn.Module,
        discriminator: nn.Module,
        g_tx: optax.GradientTransformation,
        d_tx: optax.GradientTransformation,
    ) -> StepSpec:
        """Validates `config`'s step settings and reads them (see `validate_schedule`)."""
        validate_schedule(config)
        conditional = models.is_conditional(config)
        candidates = forced_candidates(config) if conditional else ()
        rate = float(config.train.get("forced_conflicts", 0.0)) if conditional else 0.0
        consistent = float(config.train.get("consistent_requests", 0.0)) if conditional else 0.0
        table = None
        if rate > 0 or consistent > 0:
            from facegan_jax.data import input_pipeline

            table = celeba_attributes.conflict_table(input_pipeline.attribute_pool(config))
        return cls(
            generator=generator,
            discriminator=discriminator,
            g_tx=g_tx,
            d_tx=d_tx,
            adv=losses.get_loss(config.loss.name),
            loss_config=config.loss,
            schedule=config.train.schedule,
            n_critic=config.train.n_critic,
            conditional=conditional,
            z_dim=config.model.z_dim,
            ema_decay=config.train.ema_decay,
            aux_weight=config.loss.aux_weight,
            g_aux_weight=config.loss.g_aux_weight,
            aux_reduction=config.loss.aux_reduction,
            aux_on_fake=config.loss.aux_on_fake,
            # .get: configs saved before these fields existed mean "off".
            augment=augment_lib.make_augment(config.train.get("diffaugment", "")),
            r1_gamma=float(config.loss.get("r1_gamma", 0.0)),
            r1_every=int(config.loss.get("r1_every", 1)),
            balanced=float(config.train.get("balanced_requests", 0.0)),
            forced_weight=float(config.train.get("forced_weight", 1.0)),
            forced_candidates=candidates,
            forced_odds=forced_odds(config, candidates) if conditional else (),
            guide=make_guidance(config) if conditional else None,
            guide_forced_only=bool(config.loss.get("guide_forced_only", False)),
            guide_decay_steps=int(config.loss.get("guide_decay_steps", 0)),
            conflict_rate=rate,
            consistent_rate=consistent,
            conflict_table=table,
        )


def g_apply(
    spec: StepSpec, g_params: PyTree, g_vars: PyTree, z: jax.Array, attrs: jax.Array | None
) -> tuple[jax.Array, PyTree]:
    """G in training mode: (images [B, H, W, C], updated variables)."""
    images, updates = spec.generator.apply(
        {"params": g_params, **g_vars}, z, attrs, train=True, mutable=_MUTABLE
    )
    return images, {**g_vars, **updates}


def d_apply(
    spec: StepSpec,
    d_params: PyTree,
    d_vars: PyTree,
    images: jax.Array,
    attrs: jax.Array | None,
    key: jax.Array,
) -> tuple[jax.Array, jax.Array | None, PyTree]:
    """D in training mode on (DiffAugmented) images: (logits, attribute logits, variables).

    The transform is drawn from `key`'s own stream, the dropout from `key`.
    Conditional discriminators also see the attributes (projection conditioning).
    """
    if spec.augment is not None:
        images = spec.augment(jax.random.fold_in(key, _AUGMENT_STREAM), images)
    inputs = (images, attrs) if spec.conditional else (images,)
    (logits, attr_logits), updates = spec.discriminator.apply(
        {"params": d_params, **d_vars},
        *inputs,
        train=True,
        mutable=_MUTABLE,
        rngs={"dropout": key},
    )
    return logits, attr_logits, {**d_vars, **updates}


def r1_term(
    spec: StepSpec,
    d_params: PyTree,
    d_vars: PyTree,
    real: jax.Array,
    real_attrs: jax.Array | None,
    key: jax.Array,
    step: jax.Array,
) -> jax.Array:
    """The lazy R1 term of one D update: r1_every * R1 on R1 steps, else 0 (not computed).

    Uses the same augmentation and dropout draws as the update's real pass; its
    BatchNorm statistics updates are discarded (the real pass already made them).
    """

    def penalty(params: PyTree) -> jax.Array:
        def logits_fn(images: jax.Array) -> jax.Array:
            return d_apply(spec, params, d_vars, images, real_attrs, key)[0]

        return spec.r1_every * losses.r1_penalty(logits_fn, real, spec.r1_gamma)

    if spec.r1_every == 1:
        return penalty(d_params)
    return jax.lax.cond(
        step % spec.r1_every == 0, penalty, lambda _: jnp.zeros((), jnp.float32), d_params
    )


def d_loss(
    spec: StepSpec,
    real_out: tuple[jax.Array, jax.Array | None],
    fake_out: tuple[jax.Array, jax.Array | None],
    targets: tuple[jax.Array, jax.Array],
    real_attrs: jax.Array | None,
    fake_attrs: jax.Array | None,
) -> jax.Array:
    """D's loss from its (logits, attribute logits) on real and fake images."""
    real_logits, real_attr_logits = real_out
    fake_logits, fake_attr_logits = fake_out
    loss = spec.adv.d_loss(real_logits, fake_logits, *targets)
    if spec.conditional:
        loss += spec.aux_weight * losses.attribute_loss(
            real_attr_logits, real_attrs, spec.aux_reduction
        )
        if spec.aux_on_fake:
            loss += spec.aux_weight * losses.attribute_loss(
                fake_attr_logits, fake_attrs, spec.aux_reduction
            )
    return loss


def g_loss(
    spec: StepSpec,
    fake_out: tuple[jax.Array, jax.Array | None],
    fake_attrs: jax.Array | None,
    weights: jax.Array | None = None,
) -> jax.Array:
    """G's loss from D's (logits, attribute logits) on its images (without guidance)."""
    fake_logits, fake_attr_logits = fake_out
    loss = spec.adv.g_loss(fake_logits)
    if spec.conditional:
        loss += spec.g_aux_weight * losses.attribute_loss(
            fake_attr_logits, fake_attrs, spec.aux_reduction, weights
        )
    return loss


class Requests(NamedTuple):
    """G's inputs for one batch and the weights of its attribute terms."""

    z: jax.Array  # [B, Z]
    attrs: jax.Array | None  # requested attributes [B, 40]; None: unconditional
    weights: jax.Array | None  # [B, 40] weights of D's attribute terms in G's loss; None: 1
    guide_weights: jax.Array | None  # [B, 40] weights of the guidance terms; None: 1


def sample_inputs(
    spec: StepSpec, key: jax.Array, batch: int, real_attrs: jax.Array | None
) -> Requests:
    """G's inputs for one batch: z, requested attributes and their loss weights."""
    k_z, k_attr = jax.random.split(key)
    z = jax.random.normal(k_z, (batch, spec.z_dim), jnp.float32)  # [B, Z]
    if not spec.conditional:
        return Requests(z, None, None, None)
    # Fake attributes are real attribute vectors (shuffled), so the joint
    # distribution of attributes matches the data's.
    k_perm, k_bal = jax.random.split(k_attr)
    attrs = jax.random.permutation(k_perm, real_attrs, axis=0)  # [B, 40]
    weights = None
    if spec.balanced:
        attrs, forced = balance_requests(
            k_bal, attrs, spec.balanced, spec.forced_candidates, spec.forced_odds
        )
        if spec.consistent_rate > 0:
            # The request a user would write: what contradicts the forced value goes.
            table = spec.conflict_table
            attrs = celeba_attributes.resolve_conflicts(table, spec.consistent_rate, attrs, forced)
        if spec.forced_weight != 1.0:
            # The attribute a request forces weighs `forced_weight` in G's attribute
            # terms: it wins over the real vector's correlated attributes.
            weights = jnp.where(forced, spec.forced_weight, 1.0)  # [B, 40]
        if spec.conflict_rate > 0:
            # Entries the data never shows with the forced value pull nothing back.
            skip = celeba_attributes.conflicts(
                spec.conflict_table, spec.conflict_rate, attrs, forced
            )
            weights = jnp.where(skip, 0.0, 1.0 if weights is None else weights)
        if spec.guide_forced_only:
            # Guidance only on the attribute each request forces: the rest of the
            # vector is left to D, so G is not pushed on 26 attributes per image.
            forced_only = jnp.where(forced, spec.forced_weight, 0.0)  # [B, 40]
            return Requests(z, attrs, weights, forced_only)
    return Requests(z, attrs, weights, weights)


def _optimizer_step(
    tx: optax.GradientTransformation, params: PyTree, opt_state: PyTree, grads: PyTree
) -> tuple[PyTree, PyTree]:
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def apply_d_grads(spec: StepSpec, state: GanState, grads: PyTree, d_vars: PyTree) -> GanState:
    """One optimizer update of D's parameters (and its new variables)."""
    params, opt_state = _optimizer_step(spec.d_tx, state.d_params, state.d_opt_state, grads)
    return state.replace(d_params=params, d_vars=d_vars, d_opt_state=opt_state)


def apply_g_grads(spec: StepSpec, state: GanState, grads: PyTree, g_vars: PyTree) -> GanState:
    """One optimizer update of G's parameters (and its new variables)."""
    params, opt_state = _optimizer_step(spec.g_tx, state.g_params, state.g_opt_state, grads)
    return state.replace(g_params=params, g_vars=g_vars, g_opt_state=opt_state)


def d_metrics(
    spec: StepSpec,
    loss: jax.Array,
    grads: PyTree,
    real_logits: jax.Array,
    fake_logits: jax.Array,
    real_attr_logits: jax.Array | None,
    real_attrs: jax.Array | None,
    r1: jax.Array,
) -> Metrics:
    """The metrics of one D update."""
    metrics = {
        "d_loss": loss,
        "d_real": jax.nn.sigmoid(real_logits).mean(),
        "d_fake": jax.nn.sigmoid(fake_logits).mean(),
        "d_grad_norm": optax.global_norm(grads),
    }
    if spec.r1_gamma:
        metrics["d_r1"] = r1
    if spec.conditional:
        metrics["d_attr_acc_real"] = ((real_attr_logits > 0) == (real_attrs > 0.5)).mean()
    return metrics


def d_update(
    spec: StepSpec,
    state: GanState,
    real: jax.Array,
    real_attrs: jax.Array | None,
    fake: jax.Array,
    fake_attrs: jax.Array | None,
    key: jax.Array,
) -> tuple[GanState, Metrics]:
    """One D update on real and (detached) fake images; returns (state, metrics)."""
    k_t, k_real, k_fake = jax.random.split(key, 3)
    targets = losses.discriminator_targets(k_t, real.shape[0], spec.loss_config)

    def loss_fn(d_params: PyTree) -> tuple[jax.Array, tuple[Any, ...]]:
        r_logits, r_attr, d_vars = d_apply(spec, d_params, state.d_vars, real, real_attrs, k_real)
        f_logits, f_attr, d_vars = d_apply(spec, d_params, d_vars, fake, fake_attrs, k_fake)
        loss = d_loss(spec, (r_logits, r_attr), (f_logits, f_attr), targets, real_attrs, fake_attrs)
        r1 = jnp.zeros((), jnp.float32)
        if spec.r1_gamma:
            r1 = r1_term(spec, d_params, state.d_vars, real, real_attrs, k_real, state.step)
        return loss + r1, (d_vars, r_logits, f_logits, r_attr, loss, r1)

    (_, (d_vars, r_logits, f_logits, r_attr, loss, r1)), grads = jax.value_and_grad(
        loss_fn, has_aux=True
    )(state.d_params)
    state = apply_d_grads(spec, state, grads, d_vars)
    return state, d_metrics(spec, loss, grads, r_logits, f_logits, r_attr, real_attrs, r1)


def guide_scale(decay_steps: int, step: jax.Array) -> jax.Array:
    """The guidance weight's factor at `step`: 1 without decay, else 1 -> 0 linearly."""
    if not decay_steps:
        return jnp.ones((), jnp.float32)
    return jnp.clip(1.0 - step.astype(jnp.float32) / decay_steps, 0.0, 1.0)


def scheduled_guidance(spec: StepSpec, step: jax.Array, images: jax.Array, *args: Any) -> jax.Array:
    """`spec.guide`'s loss times `guide_scale` at `step`.

    From `guide_decay_steps` on the factor is 0 and the run switches to the step built
    with `guided=False` (`make_train_step`, `Components.scheduled_train_step`), which
    does not run the guide at all: a `lax.cond` skipping it inside one compiled step
    made every guided step ~25% slower on CPU.
    """
    assert spec.guide is not None
    if not spec.guide_decay_steps:
        return spec.guide(images, *args)
    return guide_scale(spec.guide_decay_steps, step) * spec.guide(images, *args)


def alternating_update(
    spec: StepSpec, state: GanState, batch: Batch, key: jax.Array
) -> tuple[GanState, Metrics]:
    """`n_critic` D updates, then G's through the updated D (see the module docstring)."""
    n_critic = spec.n_critic
    real_all = batch["image"]
    B = real_all.shape[0] // n_critic
    attrs_all = batch["attributes"] if spec.conditional else None
    keys = jax.random.split(key, 2 * n_critic + 1)
    metrics: Metrics = {}
    for i in range(n_critic):
        real = real_all[i * B : (i + 1) * B]  # [B, H, W, C]
        real_attrs = attrs_all[i * B : (i + 1) * B] if spec.conditional else None
        z, fake_attrs, fake_weights, guide_weights = sample_inputs(spec, keys[2 * i], B, real_attrs)
        if i < n_critic - 1:
            fake, g_vars = g_apply(spec, state.g_params, state.g_vars, z, fake_attrs)
            state = state.replace(g_vars=g_vars)
            fake = jax.lax.stop_gradient(fake)
            state, metrics = d_update(
                spec, state, real, real_attrs, fake, fake_attrs, keys[2 * i + 1]
            )
            continue
        # Last critic step: keep G's VJP to reuse this fake batch for the G update.
        fake, g_vjp, g_vars = jax.vjp(
            lambda p, z=z, a=fake_attrs, v=state.g_vars: g_apply(spec, p, v, z, a),
            state.g_params,
            has_aux=True,
        )
        state, metrics = d_update(spec, state, real, real_attrs, fake, fake_attrs, keys[2 * i + 1])

    def g_loss_fn(fake_images: jax.Array) -> tuple[jax.Array, tuple[PyTree, jax.Array]]:
        f_logits, f_attr, d_vars = d_apply(
            spec, state.d_params, state.d_vars, fake_images, fake_attrs, keys[-1]
        )
        loss = g_loss(spec, (f_logits, f_attr), fake_attrs, fake_weights)
        guide_loss = jnp.zeros((), jnp.float32)
        if spec.guide is not None:
            k_guide = jax.random.fold_in(keys[-1], 1)  # leaves every other key as it was
            guide_loss = scheduled_guidance(
                spec, state.step, fake_images, fake_attrs, guide_weights, k_guide
            )
        return loss + guide_loss, (d_vars, guide_loss)

    (loss, (d_vars, guide_loss)), fake_grad = jax.value_and_grad(g_loss_fn, has_aux=True)(fake)
    (g_grads,) = g_vjp(fake_grad)
    state = apply_g_grads(spec, state.replace(d_vars=d_vars), g_grads, g_vars)
    metrics.update(g_loss=loss, g_grad_norm=optax.global_norm(g_grads))
    if spec.guide is not None:
        metrics["g_guide"] = guide_loss
    return state, metrics


def simultaneous_update(
    spec: StepSpec, state: GanState, batch: Batch, key: jax.Array
) -> tuple[GanState, Metrics]:
    """One forward pass of G and D; both nets updated from it (see the module docstring)."""
    real = batch["image"]
    B = real.shape[0]
    real_attrs = batch["attributes"] if spec.conditional else None
    k_in, k_t, k_real, k_fake = jax.random.split(key, 4)
    z, fake_attrs, fake_weights, guide_weights = sample_inputs(spec, k_in, B, real_attrs)
    targets = losses.discriminator_targets(k_t, B, spec.loss_config)
    fake, g_vjp, g_vars = jax.vjp(
        lambda p: g_apply(spec, p, state.g_vars, z, fake_attrs), state.g_params, has_aux=True
    )

    def d_outputs(d_params: PyTree, fake_images: jax.Array) -> tuple[Any, PyTree]:
        r_logits, r_attr, d_vars = d_apply(spec, d_params, state.d_vars, real, real_attrs, k_real)
        f_logits, f_attr, d_vars = d_apply(spec, d_params, d_vars, fake_images, fake_attrs, k_fake)
        return ((r_logits, r_attr), (f_logits, f_attr)), d_vars

    outs, d_vjp, d_vars = jax.vjp(d_outputs, state.d_params, fake, has_aux=True)
    dl, d_cot = jax.value_and_grad(
        lambda o: d_loss(spec, o[0], o[1], targets, real_attrs, fake_attrs)
    )(outs)
    gl, g_cot = jax.value_and_grad(lambda o: g_loss(spec, o[1], fake_attrs, fake_weights))(outs)
    d_grads, _ = d_vjp(d_cot)
    _, fake_grad = d_vjp(g_cot)
    if spec.guide is not None:
        k_guide = jax.random.fold_in(k_fake, 1)  # leaves every other key as it was
        guide_loss, guide_grad = jax.value_and_grad(
            functools.partial(scheduled_guidance, spec, state.step)
        )(fake, fake_attrs, guide_weights, k_guide)
        gl, fake_grad = gl + guide_loss, fake_grad + guide_grad
    (g_grads,) = g_vjp(fake_grad)
    r1 = jnp.zeros((), jnp.float32)
    if spec.r1_gamma:
        r1, r1_grads = jax.value_and_grad(functools.partial(r1_term, spec))(
            state.d_params, state.d_vars, real, real_attrs, k_real, state.step
        )
        d_grads = jax.tree.map(jnp.add, d_grads, r1_grads)
    state = apply_d_grads(spec, state, d_grads, d_vars)
    state = apply_g_grads(spec, state, g_grads, g_vars)
    (r_logits, r_attr), (f_logits, _) = outs
    metrics = d_metrics(spec, dl, d_grads, r_logits, f_logits, r_attr, real_attrs, r1)
    metrics.update(g_loss=gl, g_grad_norm=optax.global_norm(g_grads))
    if spec.guide is not None:
        metrics["g_guide"] = guide_loss
    return state, metrics


_UPDATES = {"alternating": alternating_update, "simultaneous": simultaneous_update}


def train_step(spec: StepSpec, state: GanState, batch: Batch) -> tuple[GanState, Metrics]:
    """One step of `spec.schedule`: key from `fold_in(state.key, state.step)`, EMA after."""
    key = jax.random.fold_in(state.key, state.step)
    state, metrics = _UPDATES[spec.schedule](spec, state, batch, key)
    state = state.replace(
        step=state.step + 1, examples_seen=state.examples_seen + batch["image"].shape[0]
    )
    return update_ema(state, spec.ema_decay), metrics


def make_train_step(
    config: Any,
    generator: nn.Module,
    discriminator: nn.Module,
    g_tx: optax.GradientTransformation,
    d_tx: optax.GradientTransformation,
    guided: bool = True,
) -> Callable[[GanState, Batch], tuple[GanState, Metrics]]:
    """`train_step(state, batch) -> (state, metrics)` for `config` (see the module docstring).

    The batch holds `n_critic * B` real images (and attributes); B fake images
    are generated per D update. `guided=False`: the step without classifier guidance
    (what a decayed guide, `config.loss.guide_decay_steps`, leaves).
    """
    spec = StepSpec.from_config(config, generator, discriminator, g_tx, d_tx)
    if not guided:
        spec = dataclasses.replace(spec, guide=None)
    return functools.partial(train_step, spec)
