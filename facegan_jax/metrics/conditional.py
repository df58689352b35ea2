"""Sample-quality metrics beyond one Fréchet distance: PRDC and conditional Fréchet distances.

This module owns:

* `prdc`: precision and recall with k-nearest-neighbour balls (Kynkäänniemi et
  al. 2019, "Improved Precision and Recall Metric for Assessing Generative
  Models") and density and coverage (Naeem et al. 2020, "Reliable Fidelity and
  Diversity Metrics for Generative Models"), with the definitions of the
  reference implementation (`prdc.compute_prdc`, clovaai): a point's radius is
  the distance to its k-th nearest neighbour other than itself, and "inside a
  ball" is a strict `<`. Pure numpy, float64 distances, computed in row chunks
  so 10k x 10k feature sets never hold a full distance matrix.
* `generator_prdc`: PRDC of a conditional generator's samples against real
  features in some feature space (e.g. the attribute classifier's).
* `conditional_fd` and `conditional_frechet_distances`: per attribute, the
  Fréchet distance between classifier features of images generated with the
  attribute forced on (off) and real images that have (lack) it. A generator
  that draws good faces but ignores the attribute scores well on plain
  `fd_attr` and badly here. The Fréchet maths is
  `facegan_jax.metrics.attributes.fd_attr` (`facegan_jax.metrics.fid.frechet_distance`).

Generators are called like `attributes.attribute_control` calls them:
`generate_fn(latent_indices int64 [n], attribute_vectors float32 [n, 40]) ->
images [n, S, S, 3] in [-1, 1]`, with attribute vectors drawn from a pool of real
ones and latent indices from `np.random.default_rng(seed)`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from facegan_jax.data.celeba_attributes import NUM_ATTRIBUTES, attribute_index
from facegan_jax.metrics.attributes import fd_attr, feature_statistics

# Largest distance block (rows x columns, float64) `prdc` holds at once: 64 MiB.
_MAX_BLOCK_ELEMENTS = 1 << 23


# ----------------------------------------------------------------------------- PRDC
def _check_features(name: str, features: Any, nearest_k: int) -> np.ndarray:
    x = np.asarray(features, np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be features [N, F], got shape {x.shape}")
    if x.shape[0] <= nearest_k:
        raise ValueError(f"{name} has {x.shape[0]} rows; needs more than nearest_k={nearest_k}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def _row_chunks(rows: int, cols: int) -> range:
    """Starts of row chunks whose [chunk, cols] float64 block fits `_MAX_BLOCK_ELEMENTS`."""
    return range(0, rows, max(1, _MAX_BLOCK_ELEMENTS // max(cols, 1)))


def _distances(a: np.ndarray, a_sq: np.ndarray, b: np.ndarray, b_sq: np.ndarray) -> np.ndarray:
    """Euclidean distances [n, m] of a [n, F] to b [m, F], given squared norms [n] and [m]."""
    d2 = a_sq[:, None] + b_sq[None, :] - 2.0 * (a @ b.T)  # [n, m]
    np.maximum(d2, 0.0, out=d2)  # rounding can make near-zero squares negative
    return np.sqrt(d2, out=d2)


def _kth_neighbour_radii(x: np.ndarray, x_sq: np.ndarray, nearest_k: int) -> np.ndarray:
    """Distance of each row of x [N, F] to its nearest_k-th nearest other row, float64 [N].

    The row itself is at distance ~0, so this is the (nearest_k + 1)-th smallest
    distance in its row of the self-distance matrix (as in `prdc.compute_prdc`).
    """
    n = x.shape[0]
    radii = np.empty(n)
    chunks = _row_chunks(n, n)
    for start in chunks:
        stop = min(start + chunks.step, n)
        d = _distances(x[start:stop], x_sq[start:stop], x, x_sq)  # [c, N]
        d[np.arange(stop - start), np.arange(start, stop)] = 0.0  # exact self-distance
        radii[start:stop] = np.partition(d, nearest_k, axis=1)[:, nearest_k]
    return radii


def prdc(real_features: Any, fake_features: Any, nearest_k: int = 5) -> dict[str, float]:
    """Precision, recall, density and coverage of fake features against real ones.

    With r(x) the distance from x to its `nearest_k`-th nearest neighbour in its
    own set and B(x) = {y : |y - x| < r(x)}:

    * precision: fraction of fakes inside some real ball B(real_i);
    * recall: fraction of reals inside some fake ball B(fake_j);
    * density: mean over fakes of (number of real balls containing it) / nearest_k;
    * coverage: fraction of reals whose ball B(real_i) contains some fake.

    Same numbers as `prdc.compute_prdc(real_features, fake_features, nearest_k)`.

    Args:
      real_features: [N, F] features of real images.
      fake_features: [M, F] features of generated images.
      nearest_k: k of the k-nearest-neighbour radii (>= 1).

    Returns:
      {'precision', 'recall', 'density', 'coverage'}: floats; density can exceed 1,
      the others are in [0, 1].
    """
    if isinstance(nearest_k, bool) or not isinstance(nearest_k, int | np.integer):
        raise ValueError(f"nearest_k must be an int, got {nearest_k!r}")
    if nearest_k < 1:
        raise ValueError(f"nearest_k={nearest_k} must be >= 1")
    real = _check_features("real_features", real_features, nearest_k)  # [N, F]
    fake = _check_features("fake_features", fake_features, nearest_k)  # [M, F]
    if real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"fake_features has {fake.shape[1]} features per row, real_features has {real.shape[1]}"
        )
    real_sq = np.einsum("ij,ij->i", real, real)  # [N]
    fake_sq = np.einsum("ij,ij->i", fake, fake)  # [M]
    real_radii = _kth_neighbour_radii(real, real_sq, nearest_k)  # [N]
    fake_radii = _kth_neighbour_radii(fake, fake_sq, nearest_k)  # [M]

    n, m = real.shape[0], fake.shape[0]
    balls_per_fake = np.zeros(m, np.int64)  # real balls containing each fake
    real_in_fake_ball = np.zeros(n, bool)  # recall
    real_ball_has_fake = np.zeros(n, bool)  # coverage
    chunks = _row_chunks(n, m)
    for start in chunks:
        stop = min(start + chunks.step, n)
        d = _distances(real[start:stop], real_sq[start:stop], fake, fake_sq)  # [c, M]
        inside_real = d < real_radii[start:stop, None]  # [c, M]
        balls_per_fake += inside_real.sum(axis=0)
        real_in_fake_ball[start:stop] = (d < fake_radii[None, :]).any(axis=1)
        real_ball_has_fake[start:stop] = d.min(axis=1) < real_radii[start:stop]
    return {
        "precision": float((balls_per_fake > 0).mean()),
        "recall": float(real_in_fake_ball.mean()),
        "density": float(balls_per_fake.mean() / nearest_k),
        "coverage": float(real_ball_has_fake.mean()),
    }


# ----------------------------------------------------------------------------- generators
def _check_pool(pool: Any) -> np.ndarray:
    pool = np.asarray(pool, np.float32)
    if pool.ndim != 2 or pool.shape[1] != NUM_ATTRIBUTES or len(pool) == 0:
        raise ValueError(f"pool must be real attribute vectors [P, 40], got shape {pool.shape}")
    return pool


def _feature_fn(classifier_or_feature_fn: Any) -> Callable[[np.ndarray], np.ndarray]:
    features = getattr(classifier_or_feature_fn, "features", classifier_or_feature_fn)
    if not callable(features):
        raise ValueError("expected a classifier with `features(images)` or a feature function")
    return features


def _generated_features(
    features: Callable[[np.ndarray], np.ndarray],
    generate_fn: Callable[[np.ndarray, np.ndarray], Any],
    latents: np.ndarray,
    vectors: np.ndarray,
    batch_size: int,
) -> np.ndarray:
    """Features [n, F] of generate_fn(latents [n], vectors [n, 40]) in batches of batch_size."""
    out = []
    for s in range(0, len(latents), batch_size):
        idx, vec = latents[s : s + batch_size], vectors[s : s + batch_size]
        images = np.asarray(generate_fn(idx, vec))
        if images.shape[0] != len(idx):
            raise ValueError(
                f"generate_fn returned {images.shape[0]} images for {len(idx)} requests"
            )
        out.append(np.asarray(features(images.astype(np.float32, copy=False))))
    return np.concatenate(out)


def _real_features(
    features: Callable[[np.ndarray], np.ndarray], real: Any, batch_size: int
) -> np.ndarray:
    """Real features [M, F] from features [M, F] or images [M, S, S, 3]."""
    real = np.asarray(real)
    if real.ndim == 2:
        return real
    if real.ndim == 4:
        return np.concatenate(
            [
                np.asarray(features(real[s : s + batch_size]))
                for s in range(0, len(real), batch_size)
            ]
        )
    raise ValueError(
        f"real_images_or_features must be features [M, F] or images [M, S, S, 3], "
        f"got shape {real.shape}"
    )


def generator_prdc(
    classifier_or_feature_fn: Any,
    generate_fn: Callable[[np.ndarray, np.ndarray], Any],
    pool: Any,
    real_features: Any,
    n: int,
    nearest_k: int = 5,
    seed: int = 0,
    batch_size: int = 256,
) -> dict[str, float]:
    """`prdc` of `n` generated images against real features.

    Attribute vectors are `n` rows of `pool` and latent indices are drawn with
    `np.random.default_rng(seed)` (as `attributes.attribute_control` draws them).

    Args:
      classifier_or_feature_fn: an object with `features(images) -> [b, F]`
        (e.g. `attributes.Classifier`) or such a function itself.
      generate_fn: `generate_fn(latent_indices int64 [b], attribute_vectors
        float32 [b, 40]) -> images [b, S, S, 3] in [-1, 1]`.
      pool: real attribute vectors {0, 1} [P, 40].
      real_features: [M, F] features of real images (same feature function).
      n: images to generate (> nearest_k).
      nearest_k: k of the k-nearest-neighbour radii.
      seed: draws the vectors and latent indices.
      batch_size: largest `generate_fn` call.

    Returns:
      `prdc(real_features, generated features, nearest_k)`.
    """
    pool = _check_pool(pool)
    if n <= nearest_k:
        raise ValueError(f"n={n} must be more than nearest_k={nearest_k}")
    features = _feature_fn(classifier_or_feature_fn)
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(pool), n, replace=len(pool) < n)
    latents = rng.integers(0, 2**31 - 1, n, dtype=np.int64)
    fake = _generated_features(features, generate_fn, latents, pool[rows], batch_size)
    return prdc(real_features, fake, nearest_k)


# ----------------------------------------------------------------------------- conditional FD
def _side_fd(generated: np.ndarray | None, real: np.ndarray) -> float:
    if generated is None or len(real) < 2 or len(generated) < 2:
        return math.nan
    return fd_attr(feature_statistics(generated), feature_statistics(real))


def conditional_fd(
    gen_features_on: Any,
    gen_features_off: Any,
    real_features_on: Any,
    real_features_off: Any,
) -> dict[str, float]:
    """Fréchet distances of one attribute's two sides.

    Args:
      gen_features_on: [n, F] features of images generated with the attribute on
        (None to skip the side).
      gen_features_off: [n', F] the same with the attribute off (or None).
      real_features_on: [a, F] features of real images that have the attribute.
      real_features_off: [b, F] features of real images that lack it.

    Returns:
      {'on': FD(gen on, real on), 'off': FD(gen off, real off), 'mean': mean of
      the finite sides}. A side with fewer than 2 real (or generated) rows is NaN
      and left out of the mean (NaN when both sides are).
    """
    on = _side_fd(
        None if gen_features_on is None else np.asarray(gen_features_on),
        np.asarray(real_features_on),
    )
    off = _side_fd(
        None if gen_features_off is None else np.asarray(gen_features_off),
        np.asarray(real_features_off),
    )
    finite = [v for v in (on, off) if not math.isnan(v)]
    mean = float(np.mean(finite)) if finite else math.nan
    return {"on": on, "off": off, "mean": mean}


def conditional_frechet_distances(
    classifier: Any,
    generate_fn: Callable[[np.ndarray, np.ndarray], Any],
    pool: Any,
    real_images_or_features: Any,
    real_labels: Any,
    attributes: Sequence[str] | None,
    n_per_side: int,
    seed: int = 0,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Per attribute, Fréchet distances of generated vs real images with and without it.

    For each attribute: draw `n_per_side` real attribute vectors from `pool` and
    latent indices (the same draws as `attributes.attribute_control`), generate
    once with the attribute forced on and once forced off (same latents), and
    compare the generated images' classifier features with those of the real
    images labelled with (without) the attribute (`conditional_fd`).

    Args:
      classifier: an object with `features(images [b, S, S, 3]) -> [b, F]`
        (e.g. `attributes.Classifier`).
      generate_fn: `generate_fn(latent_indices int64 [n], attribute_vectors
        float32 [n, 40]) -> images [n, S, S, 3] in [-1, 1]`; the same index must
        mean the same latent.
      pool: real attribute vectors {0, 1} [P, 40].
      real_images_or_features: features [M, F] of held-out real images (e.g.
        `attributes.collect_features`, computed once by the caller) or the
        images [M, S, S, 3] themselves.
      real_labels: their attributes {0, 1} [M, 40].
      attributes: names to score; None for `classifier.reliable_attributes()`.
      n_per_side: images generated with the attribute on (and as many off), >= 2.
      seed: draws the vectors and latent indices.
      batch_size: largest `generate_fn` (and feature) call.

    Returns:
      {'per_attribute': {name: {'on': fd, 'off': fd, 'mean': fd}}, 'mean': mean
      over attributes of the finite per-attribute means (NaN if none),
      'attributes': tuple of names, 'n_per_side': int}. A side whose real class
      has fewer than 2 images is NaN and is not generated.
    """
    pool = _check_pool(pool)
    if n_per_side < 2:
        raise ValueError(f"n_per_side={n_per_side} must be >= 2 (a covariance needs 2 rows)")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    features = _feature_fn(classifier)
    real = _real_features(features, real_images_or_features, batch_size)  # [M, F]
    labels = np.asarray(real_labels)
    if labels.shape != (len(real), NUM_ATTRIBUTES):
        raise ValueError(
            f"real_labels must be [{len(real)}, 40] (one row per real image), "
            f"got shape {labels.shape}"
        )
    names = classifier.reliable_attributes() if attributes is None else tuple(attributes)
    rng = np.random.default_rng(seed)
    generated: dict[str, tuple[np.ndarray | None, np.ndarray | None]] = {}
    for name in names:
        j = attribute_index(name)
        rows = rng.choice(len(pool), n_per_side, replace=len(pool) < n_per_side)
        latents = rng.integers(0, 2**31 - 1, n_per_side, dtype=np.int64)
        has = labels[:, j] >= 0.5  # [M]
        sides = []
        for value, real_count in ((1.0, int(has.sum())), (0.0, int((~has).sum()))):
            if real_count < 2:
                sides.append(None)  # nothing to compare with: skip generating
                continue
            vectors = pool[rows].copy()
            vectors[:, j] = value
            sides.append(_generated_features(features, generate_fn, latents, vectors, batch_size))
        generated[name] = (sides[0], sides[1])
    result = conditional_fd_table(generated, real, labels)
    return {**result, "n_per_side": n_per_side}


def conditional_fd_table(
    generated: dict[str, tuple[Any, Any]], real_features: Any, real_labels: Any
) -> dict[str, Any]:
    """`conditional_fd` of each attribute from already-computed generated features.

    Args:
      generated: {name: (features [n, F] generated with it on, [n', F] off)}, e.g.
        `attributes.attribute_control(..., keep_features=True)['features']` (the
        control metric's own images, so nothing is generated twice); None skips a side.
      real_features: [M, F] features of held-out real images.
      real_labels: their attributes {0, 1} [M, 40].

    Returns:
      {'per_attribute': {name: {'on', 'off', 'mean'}}, 'mean': mean of the finite
      per-attribute means (NaN if none), 'attributes': tuple of names}.
    """
    real, labels = np.asarray(real_features), np.asarray(real_labels)
    scores: dict[str, dict[str, float]] = {}
    for name, (on, off) in generated.items():
        has = labels[:, attribute_index(name)] >= 0.5  # [M]
        scores[name] = conditional_fd(on, off, real[has], real[~has])
    means = [s["mean"] for s in scores.values() if not math.isnan(s["mean"])]
    mean = float(np.mean(means)) if means else math.nan
    return {"per_attribute": scores, "mean": mean, "attributes": tuple(generated)}
