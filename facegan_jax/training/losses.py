"""GAN losses: the one registry of adversarial losses, target sampling and the ACGAN aux loss.

Every adversarial loss is written on logits with log-sigmoid / softplus, so no
value of a logit can produce `inf` or `nan` (the seeds' `sigmoid` + `BCELoss`
saturates to `log(0)` once D is confident).

* ``minimax``: D minimises BCE(real -> 1, fake -> 0); G minimises the original
  minimax objective ``E[log(1 - D(G(z)))]``.
* ``non_saturating``: same D loss; G minimises BCE(fake -> 1) =
  ``-E[log D(G(z))]``. This is what every seed's code actually computes for G
  (criterion(output, ones)), so the seed recipes use it.
* ``hinge``: D ``E[relu(1 - D(x))] + E[relu(1 + D(G(z)))]``, G ``-E[D(G(z))]``.

Targets: BCE losses take soft targets, which is how one-sided label smoothing
(real targets drawn from U(low, high), the improved DCGAN's U(0.7, 1.2)) and
label noise (targets + noise * U(0, 1), the 128x128 Keras write-up) enter.
The hinge loss ignores targets.

Regulariser: `r1_penalty` is Mescheder et al. 2018's R1, ``gamma / 2 *
E_x ||grad_x D(x)||^2`` on real images; the train step applies it lazily
(every `config.loss.r1_every` steps, scaled by that interval, as StyleGAN2).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


def binary_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Elementwise BCE of `sigmoid(logits)` against soft `targets`, finite for any logit.

    Uses ``-t log s(x) - (1 - t) log(1 - s(x)) = softplus(x) - t x``, which also
    holds for targets outside [0, 1] (label smoothing up to 1.2).
    """
    logits = logits.astype(jnp.float32)
    return jax.nn.softplus(logits) - targets * logits


@dataclasses.dataclass(frozen=True)
class AdversarialLoss:
    """A pair of loss functions on logits.

    Attributes:
      d_loss: (real_logits [B], fake_logits [B], real_targets [B], fake_targets [B]) -> scalar.
      g_loss: (fake_logits [B]) -> scalar.
    """

    d_loss: Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]
    g_loss: Callable[[jax.Array], jax.Array]


def _bce_d_loss(
    real: jax.Array, fake: jax.Array, t_real: jax.Array, t_fake: jax.Array
) -> jax.Array:
    return binary_cross_entropy(real, t_real).mean() + binary_cross_entropy(fake, t_fake).mean()


def _minimax_g_loss(fake: jax.Array) -> jax.Array:
    # log(1 - sigmoid(x)) == -softplus(x): finite for every x.
    return -jax.nn.softplus(fake.astype(jnp.float32)).mean()


def _non_saturating_g_loss(fake: jax.Array) -> jax.Array:
    return binary_cross_entropy(fake, jnp.ones_like(fake, jnp.float32)).mean()


def _hinge_d_loss(
    real: jax.Array, fake: jax.Array, t_real: jax.Array, t_fake: jax.Array
) -> jax.Array:
    del t_real, t_fake
    real, fake = real.astype(jnp.float32), fake.astype(jnp.float32)
    return jax.nn.relu(1.0 - real).mean() + jax.nn.relu(1.0 + fake).mean()


def _hinge_g_loss(fake: jax.Array) -> jax.Array:
    return -fake.astype(jnp.float32).mean()


LOSSES: dict[str, AdversarialLoss] = {
    "minimax": AdversarialLoss(_bce_d_loss, _minimax_g_loss),
    "non_saturating": AdversarialLoss(_bce_d_loss, _non_saturating_g_loss),
    "hinge": AdversarialLoss(_hinge_d_loss, _hinge_g_loss),
}


def get_loss(name: str) -> AdversarialLoss:
    """Returns the adversarial loss `config.loss.name`, with an error listing the known names."""
    if name not in LOSSES:
        raise ValueError(f"config.loss.name={name!r} is not a known loss; known: {sorted(LOSSES)}")
    return LOSSES[name]


def discriminator_targets(
    key: jax.Array, batch_size: int, loss_config: Any
) -> tuple[jax.Array, jax.Array]:
    """Draws (real_targets [B], fake_targets [B]) for the BCE discriminator loss.

    Real targets are U(real_label_low, real_label_high) (one-sided smoothing; a
    constant 1 when low == high) and fake targets 0; `label_noise` then adds
    `label_noise * U(0, 1)` to both, like the 128x128 Keras write-up.
    """
    k_smooth, k_noise_real, k_noise_fake = jax.random.split(key, 3)
    low, high = loss_config.real_label_low, loss_config.real_label_high
    if low == high:
        t_real = jnp.full((batch_size,), low, jnp.float32)
    else:
        t_real = jax.random.uniform(k_smooth, (batch_size,), jnp.float32, low, high)
    t_fake = jnp.zeros((batch_size,), jnp.float32)
    if loss_config.label_noise:
        t_real = t_real + loss_config.label_noise * jax.random.uniform(k_noise_real, (batch_size,))
        t_fake = t_fake + loss_config.label_noise * jax.random.uniform(k_noise_fake, (batch_size,))
    return t_real, t_fake


def r1_penalty(
    logits_fn: Callable[[jax.Array], jax.Array], images: jax.Array, gamma: float
) -> jax.Array:
    """R1 gradient penalty ``gamma / 2 * E_x ||grad_x D(x)||^2`` (Mescheder et al. 2018).

    The gradient is that of ``sum_b D(x_b)`` with respect to the batch, as in
    StyleGAN2: for a discriminator that scores each image on its own it is
    exactly the per-image gradient (with BatchNorm in training mode it also
    holds the terms through the batch statistics).

    Args:
      logits_fn: images [B, H, W, C] -> real/fake logits [B] (differentiable).
      images: real images [B, H, W, C].
      gamma: the penalty weight.

    Returns:
      Scalar float32 penalty, differentiable in whatever `logits_fn` closes over.
    """
    grads = jax.grad(lambda x: logits_fn(x).astype(jnp.float32).sum())(images)  # [B, H, W, C]
    squared_norms = jnp.square(grads.astype(jnp.float32)).sum(axis=(1, 2, 3))  # [B]
    return 0.5 * gamma * squared_norms.mean()


AUX_REDUCTIONS = ("mean", "sum")


def attribute_loss(
    attr_logits: jax.Array,
    attributes: jax.Array,
    reduction: str = "mean",
    weights: jax.Array | None = None,
) -> jax.Array:
    """ACGAN auxiliary loss: BCE per attribute, averaged over the batch.

    Args:
      attr_logits: [B, A] attribute logits.
      attributes: [B, A] targets in {0, 1}.
      reduction: over the A attributes: 'mean' (the seed's: each attribute gets
        1/A of the gradient) or 'sum' (StarGAN's: each attribute its own full BCE).
      weights: optional [B, A] weights of each term (e.g. emphasis on the attributes a
        request forced, `train.forced_weight`); None: all 1.
    """
    per = binary_cross_entropy(attr_logits, attributes)  # [B, A]
    if weights is not None:
        per = per * weights
    per_attribute = per.mean(axis=0)  # [A]
    if reduction == "sum":
        return per_attribute.sum()
    if reduction == "mean":
        return per_attribute.mean()
    raise ValueError(
        f"config.loss.aux_reduction={reduction!r} is not known; known: {AUX_REDUCTIONS}"
    )
