"""End to end: the control recipe makes an attribute controllable, judged by the classifier."""

from __future__ import annotations

import jax
import pytest

from configs import acgan32_control
from facegan_jax.metrics import attributes
from facegan_jax.training import components, train

# Minutes of training or subprocesses: outside the fast subset (`-m "not slow"`).
pytestmark = pytest.mark.slow


def test_control_recipe_makes_eyeglasses_controllable_in_800_steps(
    synth_classifier, synth_tfds_dir, tmp_path
):
    config = acgan32_control.get_config()
    config.data.tfds_data_dir = synth_tfds_dir  # the classifier's data: 4,000 train faces
    config.data.synthetic_num_train = 4000
    config.data.synthetic_num_eval = 500
    config.total_steps = 800
    config.log_every_steps = 200
    config.sample_every_steps = 800
    config.checkpoint_every_steps = 800
    train.train_and_evaluate(config, str(tmp_path))
    generate, variables, _ = components.load_generator(str(tmp_path))
    batched = jax.jit(generate.as_batched())
    result = attributes.attribute_control(
        synth_classifier,
        lambda indices, vectors: batched(variables, indices, vectors),
        components.load_attribute_pool(str(tmp_path)),
        n_per_side=200,
        attributes=["Eyeglasses"],
        seed=1,
    )
    assert result["per_attribute"]["Eyeglasses"] >= 0.90, result
