"""Tests of facegan_jax.metrics.conditional: PRDC and conditional Fréchet distances.

PRDC is checked against the reference implementation (`prdc.compute_prdc`,
test-only dependency). The conditional FD is checked on tiny Gaussian "images"
with a fixed linear "classifier" (no training): a generator that copies held-out
real images of the requested class sits at the real-vs-real floor, and one that
ignores the attribute does not.
"""

from __future__ import annotations

import math

import numpy as np
import prdc as prdc_reference
import pytest

from facegan_jax.data.celeba_attributes import NUM_ATTRIBUTES, attribute_index
from facegan_jax.metrics import attributes, conditional

SMILING = attribute_index("Smiling")
MALE = attribute_index("Male")
TESTED = ("Smiling", "Male")
SIZE = 8  # images are [SIZE, SIZE, 3]
FEATURE_DIM = 8


# ----------------------------------------------------------------------------- PRDC
def _reference(real: np.ndarray, fake: np.ndarray, k: int) -> dict[str, float]:
    return {
        key: float(v)
        for key, v in prdc_reference.compute_prdc(
            real_features=real, fake_features=fake, nearest_k=k
        ).items()
    }


def test_prdc_matches_the_reference_implementation():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(300, 16))
    fake = rng.normal(size=(280, 16)) * 1.2 + 0.4  # shifted, wider
    ours = conditional.prdc(real, fake, nearest_k=5)
    ref = _reference(real, fake, 5)
    assert set(ours) == {"precision", "recall", "density", "coverage"}
    for key in ref:
        assert ours[key] == pytest.approx(ref[key], abs=1e-9), key
    # Not a degenerate agreement: the shift moves the numbers away from 1.
    assert ours["precision"] < 0.95 and ours["coverage"] < 0.95
    # float32 inputs and another k agree too.
    real32, fake32 = real.astype(np.float32), fake.astype(np.float32)
    ours3 = conditional.prdc(real32, fake32, nearest_k=3)
    for key, v in _reference(real32, fake32, 3).items():
        assert ours3[key] == pytest.approx(v, abs=1e-9), key


def test_prdc_of_identical_sets_is_one():
    rng = np.random.default_rng(1)
    real = rng.normal(size=(200, 12))
    ours = conditional.prdc(real, real.copy(), nearest_k=5)
    assert ours["precision"] == 1.0
    assert ours["recall"] == 1.0
    assert ours["coverage"] == 1.0
    assert ours["density"] == pytest.approx(_reference(real, real.copy(), 5)["density"], abs=1e-9)


def test_prdc_in_small_chunks_gives_the_same_numbers(monkeypatch):
    rng = np.random.default_rng(2)
    real, fake = rng.normal(size=(150, 6)), rng.normal(size=(130, 6)) + 0.3
    whole = conditional.prdc(real, fake, nearest_k=4)
    monkeypatch.setattr(conditional, "_MAX_BLOCK_ELEMENTS", 1000)  # chunks of 6-7 rows
    assert conditional.prdc(real, fake, nearest_k=4) == pytest.approx(whole, abs=1e-12)


@pytest.mark.parametrize(
    ("real_shape", "fake_shape", "k", "match"),
    [
        ((50,), (50, 4), 5, "real_features"),
        ((50, 4), (50, 4, 1), 5, "fake_features"),
        ((50, 4), (50, 5), 5, "fake_features has 5 features"),
        ((5, 4), (50, 4), 5, "real_features has 5 rows"),
        ((50, 4), (3, 4), 5, "fake_features has 3 rows"),
        ((50, 4), (50, 4), 0, "nearest_k"),
    ],
)
def test_prdc_rejects_bad_input(real_shape, fake_shape, k, match):
    with pytest.raises(ValueError, match=match):
        conditional.prdc(np.zeros(real_shape), np.ones(fake_shape), nearest_k=k)


def test_prdc_rejects_non_finite_features():
    real = np.zeros((20, 3))
    real[4, 1] = np.nan
    with pytest.raises(ValueError, match="real_features contains NaN"):
        conditional.prdc(real, np.zeros((20, 3)), nearest_k=2)


# ----------------------------------------------------------------------------- conditional FD
class LinearFeatures:
    """Stand-in classifier: features = flattened images @ a fixed random matrix."""

    def __init__(self, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.matrix = rng.normal(size=(SIZE * SIZE * 3, FEATURE_DIM)) / math.sqrt(SIZE * SIZE * 3)
        self.calls = 0

    def features(self, images: np.ndarray) -> np.ndarray:
        self.calls += 1
        images = np.asarray(images, np.float64)
        return images.reshape(len(images), -1) @ self.matrix  # [n, 8]


_PATTERNS = np.random.default_rng(123).choice([-0.4, 0.4], size=(2, SIZE, SIZE, 3))


def _faces(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(images float32 [n, 8, 8, 3], labels float32 [n, 40]): Smiling and Male each
    add (present) or subtract (absent) their own pixel pattern to Gaussian noise."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((n, NUM_ATTRIBUTES), np.float32)
    labels[:, SMILING] = rng.random(n) < 0.5
    labels[:, MALE] = rng.random(n) < 0.4
    signs = 2.0 * labels[:, [SMILING, MALE]] - 1.0  # [n, 2]
    images = rng.normal(scale=0.3, size=(n, SIZE, SIZE, 3))
    images += np.einsum("na,ahwc->nhwc", signs, _PATTERNS)
    return images.astype(np.float32), labels


@pytest.fixture(scope="module")
def data():
    """Held-out real set, a separate bank the fake generators copy from, and a pool."""
    real_images, real_labels = _faces(400, seed=1)
    bank_images, bank_labels = _faces(800, seed=2)
    _, pool = _faces(300, seed=3)
    return real_images, real_labels, bank_images, bank_labels, pool


def _copier(bank_images, bank_labels, honour=TESTED, flip=()):
    """generate_fn returning, per request, a bank image whose labels on `honour` match
    the requested vector (with the attributes in `flip` inverted), seeded by the latent."""
    cols = [attribute_index(a) for a in honour]
    flip_cols = [attribute_index(a) for a in flip]

    def generate_fn(latents: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        wanted = vectors.copy()
        wanted[:, flip_cols] = 1.0 - wanted[:, flip_cols]
        out = []
        for latent, vec in zip(latents, wanted):
            matches = np.flatnonzero(np.all(bank_labels[:, cols] == vec[cols], axis=1))
            pick = np.random.default_rng(int(latent)).choice(matches)
            out.append(bank_images[pick])
        return np.stack(out)

    return generate_fn


def _floor(features: np.ndarray, labels: np.ndarray, j: int, value: float) -> float:
    """Real-vs-real FD of the images whose attribute j == value: the mean FD between
    two disjoint random halves, over 8 splits (one split alone is noisy)."""
    x = features[labels[:, j] == value]
    half = len(x) // 2
    fds = []
    for seed in range(8):
        order = np.random.default_rng(seed).permutation(len(x))
        fds.append(attributes.fd_attr(x[order[:half]], x[order[half : 2 * half]]))
    return float(np.mean(fds))


def test_conditional_fd_of_a_class_copier_is_at_the_real_floor_and_ignoring_is_far(data):
    real_images, real_labels, bank_images, bank_labels, pool = data
    clf = LinearFeatures()
    real = clf.features(real_images)
    kwargs = {"attributes": TESTED, "n_per_side": 200, "seed": 0, "batch_size": 64}

    honest = conditional.conditional_frechet_distances(
        clf, _copier(bank_images, bank_labels), pool, real, real_labels, **kwargs
    )
    # Honours Male, ignores Smiling (copies a bank image of either Smiling value).
    ignores = conditional.conditional_frechet_distances(
        clf, _copier(bank_images, bank_labels, honour=("Male",)), pool, real, real_labels, **kwargs
    )
    # Draws the opposite Smiling class.
    wrong = conditional.conditional_frechet_distances(
        clf, _copier(bank_images, bank_labels, flip=("Smiling",)), pool, real, real_labels, **kwargs
    )

    assert honest["attributes"] == TESTED and honest["n_per_side"] == 200
    assert set(honest["per_attribute"]) == set(TESTED)
    for name in TESTED:
        j = attribute_index(name)
        scores = honest["per_attribute"][name]
        assert scores["mean"] == pytest.approx((scores["on"] + scores["off"]) / 2)
        for side, value in (("on", 1.0), ("off", 0.0)):
            floor = _floor(real, real_labels, j, value)
            assert floor > 0 and scores[side] < 3 * floor, (name, side, scores[side], floor)
            if name == "Smiling":
                assert ignores["per_attribute"][name][side] > 10 * floor
                assert wrong["per_attribute"][name][side] > 10 * floor
    # Male is honoured by all three generators: about the same, small, scores.
    male_floor = _floor(real, real_labels, MALE, 1.0)
    assert ignores["per_attribute"]["Male"]["on"] < 3 * male_floor
    assert honest["mean"] == pytest.approx(
        np.mean([honest["per_attribute"][a]["mean"] for a in TESTED])
    )
    assert ignores["mean"] > 3 * honest["mean"]


def test_conditional_fd_accepts_images_and_draws_like_attribute_control(data):
    real_images, real_labels, bank_images, bank_labels, pool = data
    clf = LinearFeatures()
    requests = []
    copier = _copier(bank_images, bank_labels)

    def recording(latents, vectors):
        requests.append((latents.copy(), vectors.copy()))
        return copier(latents, vectors)

    from_images = conditional.conditional_frechet_distances(
        clf, recording, pool, real_images, real_labels, ["Smiling"], 30, seed=5, batch_size=16
    )
    from_features = conditional.conditional_frechet_distances(
        clf, copier, pool, clf.features(real_images), real_labels, ["Smiling"], 30, seed=5
    )
    assert from_images["per_attribute"]["Smiling"] == pytest.approx(
        from_features["per_attribute"]["Smiling"]
    )
    assert all(len(latents) <= 16 for latents, _ in requests)

    # attribute_control, with the same seed, asks for the same (latent, vector) pairs.
    class Logits:
        threshold_logits = np.zeros(NUM_ATTRIBUTES)

        @staticmethod
        def logits_and_features(images):
            return np.zeros((len(images), NUM_ATTRIBUTES)), clf.features(images)

    control_requests = []
    attributes.attribute_control(
        Logits(),
        lambda latents, vectors: (
            control_requests.append((latents.copy(), vectors.copy())),
            np.zeros((len(latents), SIZE, SIZE, 3), np.float32),
        )[1],
        pool,
        30,
        attributes=["Smiling"],
        seed=5,
    )
    ours_latents = np.concatenate([r[0] for r in requests])
    ours_vectors = np.concatenate([r[1] for r in requests])
    assert np.array_equal(ours_latents, control_requests[0][0])
    assert np.array_equal(ours_vectors, control_requests[0][1])


def test_conditional_fd_records_nan_for_a_class_without_real_images(data):
    real_images, real_labels, bank_images, bank_labels, pool = data
    clf = LinearFeatures()
    real = clf.features(real_images)
    labels = real_labels.copy()
    bald = attribute_index("Bald")
    labels[:, bald] = 0.0
    labels[0, bald] = 1.0  # a single bald image: too few for a covariance
    out = conditional.conditional_frechet_distances(
        clf,
        _copier(bank_images, bank_labels),
        pool,
        real,
        labels,
        ["Bald", "Smiling"],
        40,
    )
    bald_scores = out["per_attribute"]["Bald"]
    assert math.isnan(bald_scores["on"])
    assert math.isfinite(bald_scores["off"]) and bald_scores["mean"] == bald_scores["off"]
    smiling = out["per_attribute"]["Smiling"]["mean"]
    assert out["mean"] == pytest.approx((bald_scores["off"] + smiling) / 2)

    helper = conditional.conditional_fd(None, real[:20], real[:1], real[20:60])
    assert math.isnan(helper["on"]) and helper["mean"] == helper["off"]
    assert math.isnan(conditional.conditional_fd(None, None, real[:1], real[:0])["mean"])


def test_generator_prdc_of_a_copier_matches_prdc_of_its_features(data):
    real_images, _, bank_images, bank_labels, pool = data
    clf = LinearFeatures()
    real = clf.features(real_images)
    copier = _copier(bank_images, bank_labels)
    out = conditional.generator_prdc(clf, copier, pool, real, 100, nearest_k=5, seed=7)
    rng = np.random.default_rng(7)
    rows = rng.choice(len(pool), 100, replace=False)
    latents = rng.integers(0, 2**31 - 1, 100, dtype=np.int64)
    expected = conditional.prdc(real, clf.features(copier(latents, pool[rows])), 5)
    assert out == pytest.approx(expected)
    assert out["precision"] > 0.8 and out["coverage"] > 0.5
    # A bare feature function works too.
    assert conditional.generator_prdc(clf.features, copier, pool, real, 100, seed=7) == out


def test_conditional_fd_rejects_bad_input(data):
    real_images, real_labels, bank_images, bank_labels, pool = data
    clf = LinearFeatures()
    real = clf.features(real_images)
    gen = _copier(bank_images, bank_labels)
    with pytest.raises(ValueError, match="pool"):
        conditional.conditional_frechet_distances(
            clf, gen, pool[:, :5], real, real_labels, TESTED, 10
        )
    with pytest.raises(ValueError, match="n_per_side"):
        conditional.conditional_frechet_distances(clf, gen, pool, real, real_labels, TESTED, 1)
    with pytest.raises(ValueError, match="real_labels"):
        conditional.conditional_frechet_distances(
            clf, gen, pool, real, real_labels[:-1], TESTED, 10
        )
    with pytest.raises(ValueError, match="real_images_or_features"):
        conditional.conditional_frechet_distances(clf, gen, pool, real[0], real_labels, TESTED, 10)
    with pytest.raises(ValueError, match="generate_fn returned"):
        conditional.conditional_frechet_distances(
            clf, lambda i, v: gen(i, v)[:-1], pool, real, real_labels, TESTED, 10
        )
    with pytest.raises(ValueError, match="Not_An_Attribute|attribute"):
        conditional.conditional_frechet_distances(
            clf, gen, pool, real, real_labels, ["Not_An_Attribute"], 10
        )
    with pytest.raises(ValueError, match="nearest_k"):
        conditional.generator_prdc(clf, gen, pool, real, 5, nearest_k=5)


def test_control_features_give_the_same_conditional_fd_without_generating_again(data):
    real_images, real_labels, bank_images, bank_labels, pool = data
    clf = LinearFeatures()
    real = clf.features(real_images)
    calls = []
    copier = _copier(bank_images, bank_labels)

    def counting(latents, vectors):
        calls.append(len(latents))
        return copier(latents, vectors)

    class Judge:
        threshold_logits = np.zeros(NUM_ATTRIBUTES)

        @staticmethod
        def logits_and_features(images):
            return np.zeros((len(images), NUM_ATTRIBUTES)), clf.features(images)

    control = attributes.attribute_control(
        Judge(), counting, pool, 40, attributes=TESTED, seed=3, keep_features=True
    )
    generated = sum(calls)
    table = conditional.conditional_fd_table(control["features"], real, real_labels)
    direct = conditional.conditional_frechet_distances(
        clf, copier, pool, real, real_labels, TESTED, 40, seed=3
    )
    assert generated == 2 * 40 * len(TESTED)  # control's images only: on and off per attribute
    assert table["attributes"] == TESTED
    for name in TESTED:
        for side in ("on", "off", "mean"):
            assert table["per_attribute"][name][side] == pytest.approx(
                direct["per_attribute"][name][side]
            )
    assert table["mean"] == pytest.approx(direct["mean"])
