"""Loss registry: finiteness at extreme logits, exact values, label smoothing and noise."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from facegan_jax.training import losses
from tests.helpers import tiny_config


def test_losses_are_finite_for_extreme_logits():
    extreme = jnp.asarray([-1e4, -50.0, 0.0, 50.0, 1e4])
    ones, zeros = jnp.ones(5), jnp.zeros(5)
    for name, loss in losses.LOSSES.items():
        d = loss.d_loss(extreme, extreme, ones, zeros)
        g = loss.g_loss(extreme)
        assert np.isfinite(float(d)) and np.isfinite(float(g)), name


def test_bce_matches_the_textbook_formula():
    logits = jnp.asarray([-3.0, -0.5, 0.0, 0.7, 2.5])
    targets = jnp.asarray([0.0, 1.0, 0.3, 1.2, 0.9])
    p = 1 / (1 + np.exp(-np.asarray(logits)))
    t = np.asarray(targets)
    expected = -(t * np.log(p) + (1 - t) * np.log(1 - p))
    np.testing.assert_allclose(losses.binary_cross_entropy(logits, targets), expected, rtol=1e-5)


def test_generator_losses():
    x = jnp.asarray([-1.0, 2.0])
    p = 1 / (1 + np.exp(-np.asarray(x)))
    np.testing.assert_allclose(
        losses.get_loss("minimax").g_loss(x), np.mean(np.log(1 - p)), rtol=1e-5
    )
    np.testing.assert_allclose(
        losses.get_loss("non_saturating").g_loss(x), -np.mean(np.log(p)), rtol=1e-5
    )
    np.testing.assert_allclose(losses.get_loss("hinge").g_loss(x), -0.5, rtol=1e-6)


def test_one_sided_label_smoothing_draws_real_targets_from_the_range():
    config = tiny_config(**{"loss.real_label_low": 0.7, "loss.real_label_high": 1.2})
    t_real, t_fake = losses.discriminator_targets(jax.random.PRNGKey(0), 4096, config.loss)
    assert float(t_real.min()) >= 0.7 and float(t_real.max()) <= 1.2
    assert abs(float(t_real.mean()) - 0.95) < 0.02
    assert float(jnp.abs(t_fake).max()) == 0.0  # one-sided: fake targets untouched


def test_label_noise_adds_uniform_noise_to_both_targets():
    config = tiny_config(**{"loss.label_noise": 0.05})
    t_real, t_fake = losses.discriminator_targets(jax.random.PRNGKey(1), 4096, config.loss)
    assert float(t_real.min()) >= 1.0 and float(t_real.max()) <= 1.05
    assert float(t_fake.min()) >= 0.0 and float(t_fake.max()) <= 0.05
    assert abs(float(t_fake.mean()) - 0.025) < 0.003


def test_unknown_loss_names_the_field():
    with pytest.raises(ValueError, match="config.loss.name='wasserstein'"):
        losses.get_loss("wasserstein")
