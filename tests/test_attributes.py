"""Tests of facegan_jax.metrics.attributes: balanced accuracy, the classifier, files, metrics.

One classifier is trained once per session on a small synthetic_faces
rendering at 32x32 (conftest's `synth_classifier`, through the CLI's `train`,
so the data path is the one users run) and shared by the tests below.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from data_prep import train_attribute_classifier as cli
from facegan_jax.data import face_renderer as renderer
from facegan_jax.data.celeba_attributes import CELEBA_ATTRIBUTES, attribute_index
from facegan_jax.metrics import attributes

EYEGLASSES = attribute_index("Eyeglasses")
HAT = attribute_index("Wearing_Hat")
# Faces the fake generators draw from: indices far from the train split's 0..N-1.
BANK_START, BANK_SIZE = 10_000_000, 400


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def bank() -> tuple[np.ndarray, np.ndarray]:
    """Held-out rendered faces: (images float32 [N, 32, 32, 3] in [-1, 1], attributes [N, 40])."""
    images, attrs = renderer.render_faces(0, range(BANK_START, BANK_START + BANK_SIZE), 32)
    return images.astype(np.float32) / 127.5 - 1.0, attrs.astype(np.float32)


def _copy(folder: Path, dest: Path) -> Path:
    dest.mkdir()
    for f in folder.iterdir():
        (dest / f.name).write_bytes(f.read_bytes())
    return dest


# ----------------------------------------------------------------------------- maths
def test_balanced_accuracy_on_hand_made_values():
    labels = np.array([[1, 1, 1, 0], [1, 0, 1, 0], [0, 0, 1, 0], [0, 0, 1, 0]])
    predictions = np.array([[1, 0, 1, 1], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 1, 0]], bool)
    got = attributes.balanced_accuracy(labels, predictions)
    # col 0: TPR 1/2, TNR 2/2; col 1: TPR 0/1, TNR 2/3; cols 2, 3: one class only.
    np.testing.assert_allclose(got[:2], [0.75, 1 / 3])
    assert np.isnan(got[2]) and np.isnan(got[3])


def test_predicting_all_absent_scores_one_half_whatever_the_prevalence():
    labels = np.zeros((100, 3))
    labels[:1, 0], labels[:30, 1], labels[:90, 2] = 1, 1, 1
    got = attributes.balanced_accuracy(labels, np.zeros_like(labels, bool))
    np.testing.assert_allclose(got, [0.5, 0.5, 0.5])
    assert attributes.balanced_accuracy(labels, labels > 0).tolist() == [1.0, 1.0, 1.0]
    assert float(attributes.balanced_accuracy([1, 0, 0, 1], [1, 1, 0, 0])) == 0.5  # 1-D


def test_best_thresholds_maximise_balanced_accuracy():
    scores = np.array([[0.1, 5.0], [0.4, 5.0], [0.35, 5.0], [0.8, 5.0]])
    labels = np.array([[0, 1], [0, 0], [1, 1], [1, 0]], bool)
    thresholds, bacc = attributes.best_thresholds(scores, labels)
    # Column 0: cutting between 0.35 and 0.4 mistakes only 0.4 (TPR 1, TNR 1/2);
    # cutting above 0.4 mistakes only 0.35 (TPR 1/2, TNR 1): both 0.75, first wins.
    assert bacc[0] == 0.75
    assert 0.1 < thresholds[0] <= 0.35 or 0.4 < thresholds[0] <= 0.8
    predictions = scores[:, 0] >= thresholds[0]
    assert attributes.balanced_accuracy(labels[:, 0], predictions) == 0.75
    assert bacc[1] == 0.5  # tied scores cannot be split


def test_pos_weights_upweight_rare_attributes_within_bounds():
    w = attributes.pos_weights([0.5, 0.01, 0.9, 0.0, 0.2])
    np.testing.assert_allclose(w, [1.0, np.sqrt(99), 1.0, 1.0, 2.0], rtol=1e-6)
    assert attributes.pos_weights([1e-6], max_weight=10.0)[0] == 10.0


def test_fd_attr_is_zero_for_identical_features_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(500, 16)) * rng.uniform(0.5, 2.0, 16)
    assert abs(attributes.fd_attr(feats, feats)) < 1e-6
    shifted = attributes.fd_attr(feats + 0.5, feats)
    assert shifted == pytest.approx(16 * 0.25, rel=1e-6)  # a pure mean shift: ||d||^2
    stats = attributes.feature_statistics(feats)
    assert attributes.fd_attr(feats + 0.5, stats) == pytest.approx(shifted)


# ----------------------------------------------------------------------------- classifier
def test_synthetic_classifier_recognises_eyeglasses_and_hats(synth_classifier):
    bacc = dict(zip(CELEBA_ATTRIBUTES, synth_classifier.balanced_accuracy))
    print({k: round(float(v), 3) for k, v in bacc.items() if not np.isnan(v)})
    assert bacc["Eyeglasses"] >= 0.95
    assert bacc["Wearing_Hat"] >= 0.95
    assert np.isnan(bacc["Attractive"])  # never drawn: untestable, not "reliable"
    reliable = synth_classifier.reliable_attributes()
    assert {"Eyeglasses", "Wearing_Hat"} <= set(reliable)
    assert "Attractive" not in reliable
    assert synth_classifier.val_count == 500


def test_classifier_outputs_are_batch_independent(synth_classifier, bank):
    images = bank[0][:37]
    probs = synth_classifier.probabilities(images)
    feats = synth_classifier.features(images)
    assert probs.shape == (37, 40) and feats.shape == (37, 256)
    assert np.all((probs >= 0) & (probs <= 1))
    np.testing.assert_allclose(synth_classifier.probabilities(images[:5]), probs[:5], atol=1e-5)
    with pytest.raises(ValueError, match="float images"):
        synth_classifier.features((bank[0][:2] * 127.5 + 127.5).astype(np.uint8))


def test_save_load_round_trip_gives_identical_outputs(synth_classifier, saved_folder, bank):
    loaded = attributes.load(saved_folder)
    images = bank[0][:64]
    np.testing.assert_array_equal(
        loaded.probabilities(images), synth_classifier.probabilities(images)
    )
    np.testing.assert_array_equal(loaded.features(images), synth_classifier.features(images))
    np.testing.assert_array_equal(loaded.threshold_logits, synth_classifier.threshold_logits)
    np.testing.assert_array_equal(loaded.balanced_accuracy, synth_classifier.balanced_accuracy)
    assert loaded.reliable_attributes() == synth_classifier.reliable_attributes()
    config = json.loads((saved_folder / attributes.CONFIG_FILE).read_text())
    assert config["image_size"] == 32 and config["training_data"] == "synthetic_faces"
    assert config["steps"] == 400 and config["weights"]["bytes"] > 0
    assert set(config["balanced_accuracy"]) == set(CELEBA_ATTRIBUTES)


@pytest.mark.parametrize("damage", ["truncated", "foreign", "missing", "mismatched"])
def test_damaged_weights_raise_one_clear_error_naming_the_file(saved_folder, tmp_path, damage):
    folder = _copy(saved_folder, tmp_path / "clf")
    weights = folder / attributes.WEIGHTS_FILE
    data = weights.read_bytes()
    if damage == "truncated":
        weights.write_bytes(data[: len(data) // 3])
    elif damage == "foreign":
        weights.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40)
    elif damage == "missing":
        weights.unlink()
    else:  # weights intact, config describes another network
        config = json.loads((folder / attributes.CONFIG_FILE).read_text())
        config["widths"] = [w * 2 for w in config["widths"]]
        (folder / attributes.CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(attributes.ClassifierFileError) as info:
        attributes.load(folder)
    message = str(info.value)
    assert str(weights) in message
    assert "data_prep.train_attribute_classifier" in message
    assert isinstance(info.value, ValueError)


def test_missing_or_garbled_config_raises_the_same_error(saved_folder, tmp_path):
    with pytest.raises(attributes.ClassifierFileError, match="file not found"):
        attributes.load(tmp_path / "nothing_here")
    folder = _copy(saved_folder, tmp_path / "clf")
    (folder / attributes.CONFIG_FILE).write_text("<html>quota exceeded</html>")
    with pytest.raises(attributes.ClassifierFileError, match=attributes.CONFIG_FILE):
        attributes.load(folder)


# ----------------------------------------------------------------------------- metrics
def _honouring_generator(bank, keys):
    """A fake conditional generator: a bank face whose `keys` attributes match the request."""
    images, attrs = bank
    key_cols = [attribute_index(k) for k in keys]

    def generate(indices, vectors):
        out = []
        for index, vector in zip(indices, vectors):
            match = np.flatnonzero(np.all(attrs[:, key_cols] == vector[key_cols], axis=1))
            out.append(images[match[int(index) % len(match)]])
        return np.stack(out)

    return generate


def _ignoring_generator(bank):
    images, _ = bank
    return lambda indices, vectors: images[np.asarray(indices) % len(images)]


def test_attribute_control_is_one_when_honoured_and_one_half_when_ignored(synth_classifier, bank):
    keys = ("Eyeglasses", "Wearing_Hat")
    pool = bank[1]
    honoured = attributes.attribute_control(
        synth_classifier, _honouring_generator(bank, keys), pool, 64, attributes=keys, seed=1
    )
    assert set(honoured["per_attribute"]) == set(keys)
    assert min(honoured["per_attribute"].values()) >= 0.9
    assert honoured["mean"] >= 0.95
    ignored = attributes.attribute_control(
        synth_classifier, _ignoring_generator(bank), pool, 64, attributes=keys, seed=1
    )
    # Paired latents: on and off images are identical, so every score is exactly 0.5.
    assert ignored["per_attribute"] == {k: 0.5 for k in keys}
    default = attributes.attribute_control(
        synth_classifier, _ignoring_generator(bank), pool, 4, seed=1
    )
    assert default["attributes"] == synth_classifier.reliable_attributes()


def test_consistent_requests_resolve_what_contradicts_the_forced_attribute(synth_classifier, bank):
    male, lipstick, smiling = (
        attributes.attribute_index(n) for n in ("Male", "Wearing_Lipstick", "Smiling")
    )
    pool = np.zeros((200, 40), np.float32)
    pool[:100, male] = 1  # men, none with lipstick
    pool[100:, lipstick] = 1  # women, all with lipstick
    pool[::2, smiling] = 1
    seen = []

    def generate(indices, vectors):
        seen.append(np.array(vectors))
        return _ignoring_generator(bank)(indices, vectors)

    for consistent in (0.0, 0.02):
        seen.clear()
        result = attributes.attribute_control(
            synth_classifier, generate, pool, 50, attributes=("Male",), consistent=consistent
        )
        vectors = np.concatenate(seen)
        on, off = vectors[:50], vectors[50:]
        assert (on[:, male] == 1).all() and (off[:, male] == 0).all()
        np.testing.assert_array_equal(on[:, smiling], off[:, smiling])  # not tied to Male
        assert result["consistent"] == consistent
        if consistent:  # a man without lipstick, a woman with it, whatever the vector
            assert (on[:, lipstick] == 0).all() and (off[:, lipstick] == 1).all()
        else:  # only Male changes: the drawn vectors' lipstick stays
            np.testing.assert_array_equal(on[:, lipstick], off[:, lipstick])
            assert 0 < on[:, lipstick].mean() < 1


def test_fd_attr_on_classifier_features_separates_faces_from_altered_faces(synth_classifier, bank):
    images = bank[0]
    real = synth_classifier.features(images[:200])
    same_kind = synth_classifier.features(images[200:])
    darker = synth_classifier.features(np.clip(images[200:] - 0.6, -1, 1))
    # 200 samples of 256-d features: rank-deficient covariances, float64 round-off only.
    scale = np.trace(attributes.feature_statistics(real)[1])
    assert abs(attributes.fd_attr(real, real)) < 1e-6 * scale
    between_halves = attributes.fd_attr(same_kind, real)
    darkened = attributes.fd_attr(darker, real)
    assert darkened > 3 * between_halves, (darkened, between_halves)


# ----------------------------------------------------------------------------- CLI
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    assert cli.main(["--data=celeb_b", f"--out={tmp_path / 'x'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "celeb_b" in err
    assert err.startswith("train_attribute_classifier: error: ")
    assert (
        cli.main(["--data=celeba_local", f"--tfds-data-dir={tmp_path}", f"--out={tmp_path}/x"]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "prepare_celeba" in err
    assert cli.main(["--data=synthetic_faces", "--image-size=48", f"--out={tmp_path}/x"]) == 2
    assert "power of two" in capsys.readouterr().err
    assert cli.main(["--data=synthetic_faces", "--widths=8,x", f"--out={tmp_path}/x"]) == 2
    assert capsys.readouterr().err == (
        "train_attribute_classifier: error: --widths='8,x' must be comma-separated integers\n"
    )
    args = ["--data=synthetic_faces", "--steps=0", "--verbose", f"--out={tmp_path}/x"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and err.endswith(
        "train_attribute_classifier: error: --steps=0 and --batch-size=64 must be >= 1\n"
    )
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------- robust training
def test_adversarial_images_move_eps_along_the_gradient_and_stay_in_range():
    rng = np.random.default_rng(0)
    images = rng.uniform(-0.5, 0.5, (3, 8, 8, 3)).astype(np.float32)
    grads = rng.normal(size=(3, 8, 8, 3)).astype(np.float32) * np.array([1e-3, 1.0, 50.0])[
        :, None, None, None
    ].astype(np.float32)
    moved = np.asarray(attributes.adversarial_images(images, grads, 0.5))
    step = (moved - images).reshape(3, -1)
    np.testing.assert_allclose(np.linalg.norm(step, axis=1), 0.5, rtol=1e-5)  # eps, any scale
    unit = grads.reshape(3, -1) / np.linalg.norm(grads.reshape(3, -1), axis=1, keepdims=True)
    np.testing.assert_allclose(step / 0.5, unit, atol=1e-6)  # along the gradient
    far = np.asarray(attributes.adversarial_images(images, grads, 100.0))
    assert far.min() >= -1.0 and far.max() <= 1.0 and (np.abs(far) == 1.0).mean() > 0.5


def _symmetric_batches(images: np.ndarray, labels: np.ndarray):
    # Mirror-symmetric faces: the step's random flips leave them unchanged.
    images = np.concatenate([images[:, :, :16], images[:, :, :16][:, :, ::-1]], axis=2)
    while True:
        yield {"image": images, "attributes": labels}


def test_adversarial_training_loss_is_the_mean_of_clean_and_moved_batches(synth_classifier, bank):
    import jax
    import jax.numpy as jnp

    images, labels = bank[0][:16], bank[1][:16]
    batch = next(_symmetric_batches(images, labels))
    config = attributes.TrainConfig(
        image_size=32,
        steps=1,
        learning_rate=0.0,  # parameters stay the init's: the loss is computed from them
        widths=tuple(synth_classifier.widths),
        feature_dim=synth_classifier.feature_dim,
        adversarial_eps=1.5,
    )
    seen = []
    trained = attributes.train_classifier(
        config,
        _symmetric_batches(images, labels),
        {"image": batch["image"], "attributes": labels},
        progress=lambda step, total, loss: seen.append(loss),
        init=synth_classifier,
    )
    # Starting from `init` (not a fresh network): with a zero rate the weights are the init's.
    for a, b in zip(jax.tree.leaves(trained.params), jax.tree.leaves(synth_classifier.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    net = attributes.AttributeNet(
        widths=tuple(synth_classifier.widths), feature_dim=synth_classifier.feature_dim
    )
    x, y = jnp.asarray(batch["image"]), jnp.asarray(labels)

    def loss(x):  # plain BCE (no positive weights), summed over attributes, mean over images
        logits, _ = net.apply({"params": synth_classifier.params}, x)
        per = y * jax.nn.softplus(-logits) + (1 - y) * jax.nn.softplus(logits)
        return jnp.mean(jnp.sum(per, axis=-1))

    clean, grads = jax.value_and_grad(loss)(x)
    moved = loss(attributes.adversarial_images(x, grads, 1.5))
    assert moved > clean  # the moved batch is harder
    np.testing.assert_allclose(seen[0], 0.5 * (clean + moved), rtol=1e-4)


def test_init_must_match_the_network_it_continues(synth_classifier, bank):
    config = attributes.TrainConfig(image_size=32, steps=1, widths=(8, 8, 8), feature_dim=16)
    with pytest.raises(ValueError, match="init classifier has"):
        attributes.train_classifier(
            config,
            _symmetric_batches(*bank),
            {"image": bank[0], "attributes": bank[1]},
            init=synth_classifier,
        )


def test_cli_robust_flags_bad_input_is_one_line_and_exit_2(tmp_path, capsys, saved_folder):
    out = f"--out={tmp_path / 'x'}"
    assert cli.main(["--data=synthetic_faces", "--adversarial-eps=-1", out]) == 2
    assert capsys.readouterr().err == (
        "train_attribute_classifier: error: --adversarial-eps=-1.0 must be >= 0\n"
    )
    assert cli.main(["--data=synthetic_faces", f"--init-from={tmp_path / 'nope'}", out]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--init-from" in err and str(tmp_path / "nope") in err
    assert (
        cli.main(["--data=synthetic_faces", "--image-size=64", f"--init-from={saved_folder}", out])
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "trained at 32x32, not --image-size=64" in err
    widths = ["--image-size=32", "--widths=8,8,8", f"--init-from={saved_folder}", out]
    assert cli.main(["--data=synthetic_faces", *widths]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--widths=8,8,8 differs from" in err and "16,32,64" in err
    assert not (tmp_path / "x").exists()


def test_random_shift_translates_each_image_by_its_own_offset_with_edge_padding():
    import jax

    rng = np.random.default_rng(1)
    images = rng.uniform(-1, 1, (6, 10, 12, 3)).astype(np.float32)
    key = jax.random.PRNGKey(3)
    assert attributes.random_shift(images, key, 0) is images  # off: untouched
    shifted = np.asarray(attributes.random_shift(images, key, 2))
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="edge")
    offsets = []
    for i in range(6):
        # Exactly one window of the edge-padded image is this output.
        hits = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if np.array_equal(padded[i, dy : dy + 10, dx : dx + 12], shifted[i])
        ]
        assert len(hits) >= 1
        offsets.append(hits[0])
    assert len(set(offsets)) > 1  # per-image offsets, not one for the batch


def test_shift_and_weight_decay_train_and_are_recorded(bank):
    images, labels = bank[0][:32], bank[1][:32]
    common = dict(image_size=32, steps=2, learning_rate=1e-3, widths=(8, 8, 8), feature_dim=16)
    runs = {}
    for name, extra in {
        "plain": {},
        "shift": {"shift": 3},
        "decay": {"weight_decay": 0.5},
    }.items():
        runs[name] = attributes.train_classifier(
            attributes.TrainConfig(**common, **extra),
            _symmetric_batches(images, labels),
            {"image": images, "attributes": labels},
        )
    assert runs["shift"].info["shift"] == 3 and runs["decay"].info["weight_decay"] == 0.5
    assert runs["plain"].info["shift"] == 0 and runs["plain"].info["weight_decay"] == 0.0

    def flat(c):
        import jax

        return np.concatenate([np.ravel(a) for a in jax.tree.leaves(c.params)])

    # Each option changes what is learned (shifted batches; AdamW's decay of the weights).
    assert not np.allclose(flat(runs["shift"]), flat(runs["plain"]))
    assert np.abs(flat(runs["decay"])).sum() < np.abs(flat(runs["plain"])).sum()
    with pytest.raises(ValueError, match="shift=-1"):
        attributes.train_classifier(
            attributes.TrainConfig(**common, shift=-1),
            _symmetric_batches(images, labels),
            {"image": images, "attributes": labels},
        )


def test_cli_augmentation_flags_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    out = f"--out={tmp_path / 'x'}"
    assert cli.main(["--data=synthetic_faces", "--shift=-2", out]) == 2
    assert capsys.readouterr().err == (
        "train_attribute_classifier: error: --shift=-2 and --weight-decay=0.0 must be >= 0\n"
    )
    assert cli.main(["--data=synthetic_faces", "--weight-decay=-1", out]) == 2
    assert "--weight-decay=-1.0 must be >= 0" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
