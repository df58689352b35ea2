"""Latent attribute editing: conditional sweeps touch one input; fitted directions move the
classifier's probability monotonically (a toy generator and classifier, then a trained DCGAN)."""

from __future__ import annotations

import numpy as np
import pytest

from data_prep import train_attribute_classifier as classifier_cli
from facegan_jax import workdir as workdir_lib
from facegan_jax.cli import sample
from facegan_jax.data.celeba_attributes import NUM_ATTRIBUTES, attribute_index
from facegan_jax.generation import editing, sampling
from facegan_jax.training import components, train
from tests.helpers import tiny_config

EYEGLASSES = attribute_index("Eyeglasses")
SMILING = attribute_index("Smiling")
Z_DIM = 16


def _toy_w() -> np.ndarray:
    w = np.random.default_rng(7).normal(size=Z_DIM)
    return w / np.linalg.norm(w)


def toy_render(z: np.ndarray, attributes: np.ndarray | None) -> np.ndarray:
    """A toy generator: 8x8 RGB images, brightness tanh(z . w / 2) plus a z-dependent tint."""
    z = np.asarray(z, np.float32)
    brightness = np.tanh(0.5 * z @ _toy_w())  # [n] in (-1, 1)
    pattern = 0.1 * np.tanh(z[:, :3])  # [n, 3], colour noise unrelated to w
    return np.clip(brightness[:, None, None, None] + pattern[:, None, None, :], -1, 1) * np.ones(
        (1, 8, 8, 3), np.float32
    )


class ToyClassifier:
    """Eyeglasses = a bright image, Smiling = a red one; no other attribute ever present."""

    thresholds = np.full(NUM_ATTRIBUTES, 0.5)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        out = np.zeros((len(images), NUM_ATTRIBUTES))
        out[:, SMILING] = 1 / (1 + np.exp(-8 * images[:, :, :, 0].mean(axis=(1, 2))))
        out[:, EYEGLASSES] = 1 / (1 + np.exp(-6 * images.mean(axis=(1, 2, 3))))
        return out


def test_attribute_sweep_changes_only_the_named_attribute_input():
    rng = np.random.default_rng(0)
    base = (rng.random((3, NUM_ATTRIBUTES)) < 0.5).astype(np.float32)
    z = rng.normal(size=(3, Z_DIM)).astype(np.float32)
    seen = []

    def spy(zs, attrs):
        seen.append((np.array(zs), np.array(attrs)))
        return np.zeros((len(zs), 4, 4, 3), np.float32)

    images = editing.conditional_edit(spy, z, base, SMILING, [0.0, 0.5, 1.0])
    assert images.shape == (3, 3, 4, 4, 3)
    ((zs, attrs),) = seen
    attrs = attrs.reshape(3, 3, NUM_ATTRIBUTES)
    zs = zs.reshape(3, 3, Z_DIM)
    for i in range(3):
        for j, value in enumerate([0.0, 0.5, 1.0]):
            np.testing.assert_array_equal(zs[i, j], z[i])  # same latent along a row
            assert attrs[i, j, SMILING] == value
            np.testing.assert_array_equal(
                np.delete(attrs[i, j], SMILING), np.delete(base[i], SMILING)
            )


def test_fit_boundary_recovers_a_known_hyperplane():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(3000, Z_DIM))
    w = _toy_w()
    normal, offset = editing.fit_boundary(z, z @ w + 0.3 >= 0)
    assert normal @ w > 0.97 and np.linalg.norm(normal) == pytest.approx(1.0)
    assert offset == pytest.approx(0.3, abs=0.15)
    # Rare positives (5%): class balancing keeps the direction.
    normal, _ = editing.fit_boundary(z, z @ w >= 1.65)
    assert normal @ w > 0.9


def test_toy_direction_raises_the_probability_monotonically(tmp_path):
    z = np.asarray(sampling.latents(editing.FIT_SEED, np.arange(1500), Z_DIM))
    classifier = ToyClassifier()
    probs = editing.label_samples(toy_render, classifier, z, chunk=500)
    directions = editing.fit_directions(z, probs, classifier.thresholds, classifier="toy")
    normal = directions.normal("Eyeglasses")
    assert normal @ _toy_w() > 0.95
    assert directions.accuracy[EYEGLASSES] > 0.95
    # Walk fresh latents (the sampling CLI's seed) along the direction.
    seeds = np.asarray(sampling.latents(0, np.arange(6), Z_DIM))
    strengths = np.linspace(-3, 3, 7)
    images = editing.walk(toy_render, seeds, normal, strengths)
    assert images.shape == (6, 7, 8, 8, 3)
    np.testing.assert_array_equal(images[:, 3], toy_render(seeds, None))  # strength 0: the seed
    report = editing.walk_report(classifier, images, "Eyeglasses", strengths)
    assert report.monotone.all() and report.rise.min() > 0.3
    assert report.mean[0] < 0.1 and report.mean[-1] - report.mean[0] > 0.7
    assert "never falls along the edit for 6/6 seeds" in "\n".join(report.lines())
    # Round trip through the file; attributes with one class only are not fitted.
    path = directions.save(tmp_path / "directions.npz")
    loaded = editing.load_directions(path)
    np.testing.assert_array_equal(loaded.normal("Eyeglasses"), normal)
    assert loaded.classifier == "toy" and loaded.num_samples == 1500 and loaded.z_dim == Z_DIM
    assert loaded.fitted() == ("Eyeglasses", "Smiling")


def test_directions_errors_are_one_clear_line(tmp_path):
    z = np.random.default_rng(2).normal(size=(200, Z_DIM))
    probs = np.zeros((200, NUM_ATTRIBUTES))
    probs[:, SMILING] = (z[:, 0] > 0).astype(float)
    directions = editing.fit_directions(z, probs, np.full(NUM_ATTRIBUTES, 0.5))
    assert directions.fitted() == ("Smiling",)
    with pytest.raises(ValueError, match="no direction for Eyeglasses: .* in 0 of 200 samples"):
        directions.normal("Eyeglasses")
    with pytest.raises(ValueError, match="did you mean Eyeglasses"):
        directions.normal("eyeglases")
    with pytest.raises(FileNotFoundError, match="--fit-directions --classifier"):
        editing.load_directions(tmp_path / "none.npz", "runs/x")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable directions file"):
        editing.load_directions(bad)


def test_trained_dcgan_eyeglasses_direction_raises_the_classifier_monotonically(
    tmp_path, capsys, synth_tfds_dir
):
    """The acceptance run, shrunk: DCGAN + classifier trained on synthetic_faces (~50 s CPU)."""
    tfds_dir, workdir = synth_tfds_dir, str(tmp_path / "run")
    data = {"data.synthetic_num_train": 1000, "data.synthetic_num_eval": 250}
    config = tiny_config(
        **data,
        **{
            "data.tfds_data_dir": tfds_dir,
            "data.shuffle_buffer": 1000,
            "total_steps": 150,
            "train.batch_size": 32,
            "model.g_dim": 16,
            "model.d_dim": 16,
            "log_every_steps": 50,
            "sample_every_steps": 150,
            "checkpoint_every_steps": 150,
        },
    )
    train.train_and_evaluate(config, workdir)
    classifier = classifier_cli.train(  # same rendering as the GAN's: built once
        "synthetic_faces", tfds_dir, 32, steps=150, batch_size=32, log=lambda line: None,
        synthetic_num_train=1000, synthetic_num_eval=250,
    )  # fmt: skip
    assert classifier.balanced_accuracy[EYEGLASSES] > 0.9
    folder = str(classifier.save(tmp_path / "classifier"))

    rc = sample.main(["--workdir", workdir, "--fit-directions", "--classifier", folder,
                      "--num", "1000"])  # fmt: skip
    assert rc == 0 and "Eyeglasses" in capsys.readouterr().out
    directions = editing.load_directions(workdir_lib.directions_path(workdir))
    assert directions.accuracy[EYEGLASSES] > 0.6  # linearly encoded in z, if roughly

    generate, variables, _ = components.load_generator(workdir)

    def render(z, attrs):
        return sampling.generate_latents_in_batches(generate, variables, z, 56, attrs)

    strengths = np.linspace(-3, 3, 7)
    z = np.asarray(generate.latents(np.arange(8)))
    images = editing.walk(render, z, directions.normal("Eyeglasses"), strengths)
    report = editing.walk_report(classifier, images, "Eyeglasses", strengths)
    print("\n".join(report.lines()))
    assert np.all(np.diff(report.mean) > 0)  # the mean probability rises at every step
    assert report.mean[-1] - report.mean[0] > 0.5
    assert report.monotone.sum() >= 6  # and along (almost) every seed's own walk
