"""ACGAN attribute-control options: each config field changes what it says, and trains."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import acgan64
from facegan_jax.models import build_models
from facegan_jax.training import losses
from tests.helpers import first_step_metrics


def _config(**model):
    config = acgan64.get_config("runlocal")
    config.model.update(model)
    return config


def _d_outputs(config, attrs):
    _, d = build_models(config)
    images = jax.random.normal(jax.random.PRNGKey(1), (4, 32, 32, 3))
    variables = d.init(jax.random.PRNGKey(0), images, attrs, train=False)
    return variables, d.apply(variables, images, attrs, train=False)


def test_aux_sum_reduction_is_the_mean_times_the_number_of_attributes():
    logits = jax.random.normal(jax.random.PRNGKey(0), (6, 40))
    targets = (jax.random.uniform(jax.random.PRNGKey(1), (6, 40)) > 0.5).astype(jnp.float32)
    mean = losses.attribute_loss(logits, targets, "mean")
    np.testing.assert_allclose(losses.attribute_loss(logits, targets, "sum"), 40 * mean, rtol=1e-6)
    with pytest.raises(ValueError, match="config.loss.aux_reduction='max'"):
        losses.attribute_loss(logits, targets, "max")


def test_projection_makes_the_real_fake_logit_depend_on_the_attributes():
    a0, a1 = jnp.zeros((4, 40)), jnp.ones((4, 40))
    for projection in (False, True):
        config = _config(projection=projection)
        variables, (logits0, attrs0) = _d_outputs(config, a0)
        _, d = build_models(config)
        images = jax.random.normal(jax.random.PRNGKey(1), (4, 32, 32, 3))
        logits1, attrs1 = d.apply(variables, images, a1, train=False)
        np.testing.assert_array_equal(attrs0, attrs1)  # the attribute head never sees labels
        assert np.array_equal(logits0, logits1) != projection
        assert ("embed" in variables["params"]) == projection


def test_sum_pooling_scales_the_head_inputs_by_the_final_area():
    outputs = {}
    for pool in ("mean", "sum"):
        variables, (_, attr_logits) = _d_outputs(_config(d_pool=pool), jnp.zeros((4, 40)))
        bias = variables["params"]["Dense_1"]["bias"]
        outputs[pool] = attr_logits - bias
    # runlocal: 32x32 input, 3 stride-2 stages -> 4x4 = 16 positions.
    np.testing.assert_allclose(outputs["sum"], 16 * outputs["mean"], rtol=1e-4, atol=1e-5)


def test_separate_attribute_head_has_its_own_plain_conv_tower():
    variables, (_, attr_logits) = _d_outputs(_config(attr_head="separate"), jnp.zeros((4, 40)))
    params = variables["params"]
    assert {"Conv_0", "Conv_1", "Conv_2"} <= set(params)  # the plain tower
    # Tower widths max(d_dim // 2, 8) * 2**i = 8, 16, 32 (runlocal d_dim 8, 3 stages).
    assert params["Dense_1"]["kernel"].shape == (32, 40)
    assert attr_logits.shape == (4, 40)


def test_discriminator_without_spectral_norm_has_no_power_iteration_vectors():
    variables, _ = _d_outputs(_config(d_spectral_norm=False), jnp.zeros((4, 40)))
    assert "spectral" not in variables
    variables, _ = _d_outputs(_config(), jnp.zeros((4, 40)))
    assert len(jax.tree.leaves(variables["spectral"])) == 3


def test_bad_pool_and_head_names_are_errors_naming_the_field():
    with pytest.raises(ValueError, match="config.model.d_pool='max'"):
        build_models(_config(d_pool="max"))
    with pytest.raises(ValueError, match="config.model.attr_head='both'"):
        build_models(_config(attr_head="both"))


def test_a_step_with_every_control_option_on_is_finite_and_uses_g_aux_weight():
    config = _config(d_spectral_norm=False, d_pool="sum", attr_head="separate", projection=True)
    config.loss.aux_reduction = "sum"
    results = {}
    for g_aux_weight in (1.0, 10.0):
        config.loss.g_aux_weight = g_aux_weight
        results[g_aux_weight] = first_step_metrics(config)
    # Same D update (g_aux_weight only enters G's loss), larger G loss.
    np.testing.assert_allclose(results[1.0]["d_loss"], results[10.0]["d_loss"], rtol=1e-6)
    assert results[10.0]["g_loss"] > results[1.0]["g_loss"]


def test_flatten_pooling_feeds_the_whole_final_map_to_the_heads():
    variables, (_, attr_logits) = _d_outputs(_config(d_pool="flatten"), jnp.zeros((4, 40)))
    # runlocal: d_dim 8, 3 stages -> a 4x4x32 final map.
    assert variables["params"]["Dense_1"]["kernel"].shape == (4 * 4 * 32, 40)
    assert attr_logits.shape == (4, 40)
