"""Memorisation maths: nearest training neighbours in a feature space, and how close is too close.

Pure numpy, no notion of generators, datasets or files (the report gathers the
features and draws the pictures: `report.py`). Every image is a feature vector
(Inception pool3, or the attribute classifier's penultimate layer) and
distances are Euclidean in that space.

With N generated samples g_i, M held-out real images h_j (the config's eval
split: real faces the generator never saw) and T training images x_t:

  d_gen[i]  = min_t ||g_i - x_t||     each sample's nearest-train distance
  d_held[j] = min_t ||h_j - x_t||     each held-out image's nearest-train distance

  fraction_closer_than_heldout  = mean_i [ d_gen[i] < min_j d_held[j] ]
  fraction_below_heldout_median = mean_i [ d_gen[i] < median_j d_held[j] ]

The first is the issue's definition: the share of samples closer to a
training image than any real unseen face is. A generator that copies
training images scores ~1 on both; one whose samples sit as far from the
training set as fresh real faces do scores about 1 / (M + 1) and 1 / 2
(`expected_if_like_heldout`). The median fraction moves smoothly with the
whole distribution; the minimum one reacts to outright copies only.
A held-out image that duplicates a training image (distance 0) makes the
first fraction 0 whatever the generator does: `heldout_min` is reported so
that case is visible.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

DEFAULT_CHUNK = 1024


def _as_features(x: Any, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"{name}: expected features [N > 0, F], got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name}: features hold non-finite values")
    return x.astype(np.float64, copy=False)


def nearest_neighbours(
    queries: Any, references: Any, k: int = 1, chunk_size: int = DEFAULT_CHUNK
) -> tuple[np.ndarray, np.ndarray]:
    """The `k` nearest references of each query (Euclidean), computed in chunks.

    Candidates are ranked with ||q||^2 + ||r||^2 - 2 q.r over blocks of
    `chunk_size` x `chunk_size` (memory stays O(chunk_size^2)); the distances
    returned are then recomputed exactly as ||q - r||, so an exact copy is at
    distance 0.0, not at the square root of a rounding error.

    Args:
      queries: [N, F] features.
      references: [T, F] features.
      k: neighbours per query (at most T).
      chunk_size: rows of queries and of references per block.

    Returns:
      (distances float64 [N, k] ascending, indices int64 [N, k] into `references`).
    """
    q = _as_features(queries, "queries")
    r = _as_features(references, "references")
    if q.shape[1] != r.shape[1]:
        raise ValueError(f"feature sizes differ: queries {q.shape[1]}, references {r.shape[1]}")
    if not 1 <= k <= r.shape[0]:
        raise ValueError(f"k={k} must be in [1, {r.shape[0]}] (the number of references)")
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size} must be >= 1")
    r_sq = np.einsum("tf,tf->t", r, r)
    n = q.shape[0]
    out_d = np.empty((n, k), np.float64)
    out_i = np.empty((n, k), np.int64)
    for qs in range(0, n, chunk_size):
        qc = q[qs : qs + chunk_size]
        q_sq = np.einsum("nf,nf->n", qc, qc)[:, None]
        best_d = np.full((len(qc), 0), np.inf)
        best_i = np.zeros((len(qc), 0), np.int64)
        for rs in range(0, r.shape[0], chunk_size):
            rc = r[rs : rs + chunk_size]
            d2 = q_sq + r_sq[None, rs : rs + len(rc)] - 2.0 * qc @ rc.T  # [n, t]
            cand_d = np.concatenate([best_d, d2], axis=1)
            cand_i = np.concatenate(
                [best_i, np.broadcast_to(np.arange(rs, rs + len(rc)), d2.shape)], axis=1
            )
            kk = min(k, cand_d.shape[1])
            part = np.argpartition(cand_d, kk - 1, axis=1)[:, :kk]
            best_d = np.take_along_axis(cand_d, part, axis=1)
            best_i = np.take_along_axis(cand_i, part, axis=1)
        exact = np.linalg.norm(qc[:, None, :] - r[best_i], axis=-1)  # [n, k]
        order = np.lexsort((best_i, exact), axis=1)  # by distance, ties by index
        out_d[qs : qs + len(qc)] = np.take_along_axis(exact, order, axis=1)
        out_i[qs : qs + len(qc)] = np.take_along_axis(best_i, order, axis=1)
    return out_d, out_i


@dataclasses.dataclass
class MemorizationResult:
    """Nearest-train distances of generated and held-out images, and the verdict numbers.

    Attributes:
      generated_distances: float64 [N, k], each sample's k nearest-train distances.
      generated_neighbours: int64 [N, k], their indices into the training features.
      heldout_distances: float64 [M], each held-out image's nearest-train distance.
    """

    generated_distances: np.ndarray
    generated_neighbours: np.ndarray
    heldout_distances: np.ndarray

    @property
    def nearest(self) -> np.ndarray:
        """d_gen: each sample's nearest-train distance, float64 [N]."""
        return self.generated_distances[:, 0]

    @property
    def heldout_min(self) -> float:
        return float(np.min(self.heldout_distances))

    @property
    def heldout_median(self) -> float:
        return float(np.median(self.heldout_distances))

    @property
    def fraction_closer_than_heldout(self) -> float:
        """Share of samples nearer to a training image than any held-out image is."""
        return fraction_below(self.nearest, self.heldout_min)

    @property
    def fraction_below_heldout_median(self) -> float:
        """Share of samples nearer to a training image than the median held-out image is."""
        return fraction_below(self.nearest, self.heldout_median)

    def summary(self) -> dict[str, Any]:
        """The numbers for memorization.json (plain Python types)."""
        m = len(self.heldout_distances)
        pct = (0, 5, 25, 50, 75, 95, 100)

        def percentiles(x: np.ndarray) -> dict[str, float]:
            return {f"p{p}": float(v) for p, v in zip(pct, np.percentile(x, pct))}

        return {
            "num_generated": len(self.nearest),
            "num_heldout": int(m),
            "fraction_closer_than_heldout": self.fraction_closer_than_heldout,
            "fraction_below_heldout_median": self.fraction_below_heldout_median,
            "expected_if_like_heldout": {
                "fraction_closer_than_heldout": 1.0 / (m + 1),
                "fraction_below_heldout_median": 0.5,
            },
            "heldout_min": self.heldout_min,
            "heldout_median": self.heldout_median,
            "generated_nearest_distance": percentiles(self.nearest),
            "heldout_nearest_distance": percentiles(self.heldout_distances),
        }


def fraction_below(values: Any, threshold: float) -> float:
    """Share of `values` strictly below `threshold`."""
    values = np.asarray(values)
    return float(np.mean(values < threshold)) if values.size else float("nan")


def memorization(
    generated: Any,
    train: Any,
    heldout: Any,
    k: int = 3,
    chunk_size: int = DEFAULT_CHUNK,
) -> MemorizationResult:
    """Nearest-train distances of generated and held-out features (see the module docstring).

    Args:
      generated: [N, F] features of generated samples.
      train: [T, F] features of training images.
      heldout: [M, F] features of held-out real images (not in `train`).
      k: training neighbours kept per sample (for the pictures).
      chunk_size: see `nearest_neighbours`.
    """
    train = _as_features(train, "train")
    k = min(k, train.shape[0])
    gen_d, gen_i = nearest_neighbours(generated, train, k, chunk_size)
    held_d, _ = nearest_neighbours(heldout, train, 1, chunk_size)
    return MemorizationResult(gen_d, gen_i, held_d[:, 0])


def select_examples(nearest: Any, num: int = 8) -> np.ndarray:
    """Samples to show beside their neighbours: the closest half, then evenly spread ones.

    Args:
      nearest: [N] nearest-train distances.
      num: rows wanted (at most N).

    Returns:
      int64 indices into `nearest`, closest first; no repeats.
    """
    nearest = np.asarray(nearest)
    order = np.argsort(nearest, kind="stable")
    num = min(num, len(order))
    closest = order[: (num + 1) // 2]
    rest = order[len(closest) :]
    spread_n = num - len(closest)
    if spread_n and len(rest):
        picks = np.unique(np.linspace(0, len(rest) - 1, spread_n).round().astype(np.int64))
        spread = rest[picks]
    else:
        spread = np.zeros(0, np.int64)
    return np.concatenate([closest, spread]).astype(np.int64)
