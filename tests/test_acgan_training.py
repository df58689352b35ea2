"""ACGAN end to end: a few hundred steps on synthetic_faces teach D's attribute head.

The discriminator's 40-way head must predict Eyeglasses and Smiling on held-out
(validation) synthetic images with accuracy >= 0.9.
"""

from __future__ import annotations

import numpy as np

from configs import acgan64
from facegan_jax import input_pipeline, train
from facegan_jax.datasets.celeba_attributes import attribute_index
from facegan_jax.models import build_models


def test_acgan_attribute_head_predicts_eyeglasses_and_smiling(tmp_path):
    config = acgan64.get_config("runlocal")
    config.total_steps = 300
    config.train.batch_size = 32
    config.model.d_dim = 16
    config.data.synthetic_num_train = 3000
    config.data.synthetic_num_eval = 256
    config.data.shuffle_buffer = 3000
    config.data.tfds_data_dir = str(tmp_path / "tfds")
    config.log_every_steps = 100
    config.sample_every_steps = 300
    config.checkpoint_every_steps = 300
    state = train.train_and_evaluate(config, str(tmp_path / "run"))

    _, discriminator = build_models(config)
    dataset = input_pipeline.create_dataset(
        config, "validation", batch_size=64, shuffle=False, repeat=False, drop_remainder=False
    )
    predictions, labels = [], []
    for batch in dataset.as_numpy_iterator():
        _, attr_logits = discriminator.apply(
            {"params": state.d_params, **state.d_vars}, batch["image"], train=False
        )
        predictions.append(np.asarray(attr_logits) > 0)
        labels.append(batch["attributes"] > 0.5)
    predictions, labels = np.concatenate(predictions), np.concatenate(labels)
    assert len(labels) == 256
    for name in ("Eyeglasses", "Smiling"):
        i = attribute_index(name)
        accuracy = float(np.mean(predictions[:, i] == labels[:, i]))
        assert 0.1 < labels[:, i].mean() < 0.9, name  # both classes are present
        assert accuracy >= 0.9, (name, accuracy)
