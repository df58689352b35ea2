"""Latent attribute editing: conditional sweeps, and InterFaceGAN directions for unconditional GANs.

Conditional generators take the attribute vector as an input, so editing an
attribute is changing that one entry: `attribute_sweep` gives, for each base
vector, copies that differ only in the named attribute (the latent is kept).

Unconditional generators have no attribute input. Following InterFaceGAN
(Shen et al., 2020), `fit_directions` samples M latents, labels their images
with the library's attribute classifier (probability >= its calibrated
threshold) and fits, per attribute, a linear boundary `n . z + b = 0` in
latent space (class-balanced, L2-regularised logistic regression); the unit
normal `n` points towards the attribute. Walking `z + s * n` (`walk_latents`)
then moves a face across the boundary. Each boundary's balanced accuracy on
held-out latents says how linearly the attribute is encoded in `z` (0.5: not
at all). `Directions` are saved as `<workdir>/directions.npz`
(`workdir.directions_path`).

Everything here takes a `render(z [n, Z], attributes [n, 40] | None) ->
images [n, H, W, C]` callable in [-1, 1], so it is independent of how images
are generated (the sampling CLI passes `sampling.generate_latents_in_batches`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import optimize

from facegan_jax import fileio
from facegan_jax.data.celeba_attributes import CELEBA_ATTRIBUTES, NUM_ATTRIBUTES
from facegan_jax.generation import sampling
from facegan_jax.metrics.attributes import as_rgb

Render = Callable[[np.ndarray, np.ndarray | None], np.ndarray]

# Latent seed of the samples directions are fitted on (apart from the sampling
# CLI's seed 0, whose images are the ones being edited).
FIT_SEED = 1
# Each class needs at least this many samples for a boundary to be fitted.
MIN_PER_CLASS = 10
# Every HOLDOUT_EVERY-th sample is held out to score the boundary.
HOLDOUT_EVERY = 5
FIT_COMMAND = (
    "python -m facegan_jax.sample --workdir {workdir} --fit-directions --classifier FOLDER"
)
FORMAT = "facegan_jax.directions"
# Probability changes smaller than this count as flat when checking monotonicity.
MONOTONE_TOLERANCE = 1e-6


# ----------------------------------------------------------------------------- conditional
def attribute_sweep(base: Any, index: int, values: Sequence[float]) -> np.ndarray:
    """Attribute vectors [N, V, 40]: base vectors [N, 40] with attribute `index` set to `values`.

    Nothing but entry `index` differs from the base vector.
    """
    base = np.asarray(base, np.float32)
    out = np.repeat(base[:, None, :], len(values), axis=1)  # [N, V, 40]
    out[:, :, index] = np.asarray(values, np.float32)[None, :]
    return out


def conditional_edit(
    render: Render, z: Any, base: Any, index: int, values: Sequence[float]
) -> np.ndarray:
    """Images [N, V, H, W, C]: latent `z[i]` with attribute `index` of `base[i]` set to each value.

    Args:
      render: `render(z [n, Z], attributes [n, 40]) -> images`.
      z: latents [N, Z] (one per row).
      base: attribute vectors [N, 40] (real vectors, with any requested values on top).
      index: the edited attribute.
      values: its input values, one column each (0: off, 1: on).
    """
    z = np.asarray(z, np.float32)
    n, v = len(z), len(values)
    attrs = attribute_sweep(base, index, values).reshape(n * v, NUM_ATTRIBUTES)
    zs = np.repeat(z, v, axis=0)  # [N * V, Z], the same latent along a row
    images = np.asarray(render(zs, attrs))
    return images.reshape(n, v, *images.shape[1:])


# ----------------------------------------------------------------------------- directions
@dataclasses.dataclass
class Directions:
    """Latent attribute directions of an unconditional generator.

    Attributes:
      normals: float32 [40, Z] unit normals in CelebA order (towards the
        attribute); NaN rows for attributes that could not be fitted.
      offsets: float32 [40] signed distance of each boundary from the origin
        (`n . z + offset = 0` on the boundary).
      accuracy: float64 [40] balanced accuracy of each boundary on held-out
        latents (NaN where not fitted).
      positives: int64 [40] samples the classifier labelled positive.
      num_samples: latents labelled.
      classifier: the classifier folder used (for reports).
      fit_seed: latent seed of the samples.
    """

    normals: np.ndarray
    offsets: np.ndarray
    accuracy: np.ndarray
    positives: np.ndarray
    num_samples: int
    classifier: str = ""
    fit_seed: int = FIT_SEED

    @property
    def z_dim(self) -> int:
        """Latent size."""
        return int(self.normals.shape[1])

    def fitted(self) -> tuple[str, ...]:
        """Names of the attributes that have a direction (CelebA order)."""
        ok = ~np.isnan(self.normals).any(axis=1)
        return tuple(name for name, f in zip(CELEBA_ATTRIBUTES, ok) if f)

    def normal(self, name: str) -> np.ndarray:
        """The unit normal [Z] of attribute `name`.

        Raises:
          ValueError: an unknown name (with the closest valid ones), or an
            attribute too rare or too common among the samples to be fitted.
        """
        index = sampling.resolve_attribute(name)
        n = self.normals[index]
        if np.isnan(n).any():
            pos = int(self.positives[index])
            raise ValueError(
                f"no direction for {CELEBA_ATTRIBUTES[index]}: the classifier found it in {pos} "
                f"of {self.num_samples} samples (need >= {MIN_PER_CLASS} with and without); "
                f"fitted: {', '.join(self.fitted()) or 'none'}"
            )
        return n

    def save(self, path: str | os.PathLike) -> str:
        """Writes the directions as an .npz, atomically; returns the path."""
        path = os.fspath(path)
        fileio.save_npz(
            path,
            format=np.asarray(FORMAT),
            attributes=np.asarray(CELEBA_ATTRIBUTES),
            normals=self.normals.astype(np.float32),
            offsets=self.offsets.astype(np.float32),
            accuracy=self.accuracy.astype(np.float64),
            positives=self.positives.astype(np.int64),
            num_samples=np.asarray(self.num_samples, np.int64),
            classifier=np.asarray(self.classifier),
            fit_seed=np.asarray(self.fit_seed, np.int64),
        )
        return path


def load_directions(path: str | os.PathLike, workdir: str | None = None) -> Directions:
    """Reads directions saved by `Directions.save`.

    Raises:
      FileNotFoundError: no file (the message gives the command that fits them).
      ValueError: a file that is not a directions file, naming it.
    """
    path = os.fspath(path)
    command = FIT_COMMAND.format(workdir=workdir or "WORKDIR")
    if not fileio.exists(path):
        raise FileNotFoundError(f"{path} not found: fit the directions first with `{command}`")
    try:
        f = fileio.load_npz(path)
        if str(f["format"]) != FORMAT or tuple(f["attributes"]) != CELEBA_ATTRIBUTES:
            raise ValueError("not a directions file")
        d = Directions(
            normals=np.asarray(f["normals"], np.float32),
            offsets=np.asarray(f["offsets"], np.float32),
            accuracy=np.asarray(f["accuracy"], np.float64),
            positives=np.asarray(f["positives"], np.int64),
            num_samples=int(f["num_samples"]),
            classifier=str(f["classifier"]),
            fit_seed=int(f["fit_seed"]),
        )
    except (OSError, KeyError, ValueError) as e:
        raise ValueError(
            f"{path} is not a readable directions file ({e}); refit with `{command}`"
        ) from None
    if d.normals.ndim != 2 or d.normals.shape[0] != NUM_ATTRIBUTES:
        raise ValueError(f"{path}: normals have shape {d.normals.shape}; refit with `{command}`")
    return d


def fit_boundary(z: Any, labels: Any, l2: float = 1e-2) -> tuple[np.ndarray, float]:
    """A linear boundary separating `labels` in latent space.

    Class-balanced logistic regression (each class weighs one half) with an L2
    penalty `l2 / 2 * |w|^2`, fitted by L-BFGS.

    Args:
      z: latents [M, Z].
      labels: bool [M] (both classes present).
      l2: penalty weight.

    Returns:
      (unit normal [Z] towards the positives, offset): the boundary is
      `normal . z + offset = 0`.
    """
    x = np.asarray(z, np.float64)
    y = np.where(np.asarray(labels, bool), 1.0, -1.0)
    pos = max(int((y > 0).sum()), 1)
    neg = max(int((y < 0).sum()), 1)
    weight = np.where(y > 0, 0.5 / pos, 0.5 / neg)

    def loss(params: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = params[:-1], params[-1]
        margin = y * (x @ w + b)
        value = np.sum(weight * np.logaddexp(0.0, -margin)) + 0.5 * l2 * w @ w
        coef = -weight * y * _sigmoid(-margin)  # d loss / d (x . w + b)
        grad = np.concatenate([x.T @ coef + l2 * w, [coef.sum()]])
        return float(value), grad

    result = optimize.minimize(
        loss, np.zeros(x.shape[1] + 1), jac=True, method="L-BFGS-B", options={"maxiter": 500}
    )
    w, b = result.x[:-1], result.x[-1]
    norm = float(np.linalg.norm(w))
    if norm == 0.0:
        return np.full(x.shape[1], np.nan), float("nan")
    return w / norm, float(b / norm)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _balanced_accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
    pos, neg = labels.sum(), (~labels).sum()
    if pos == 0 or neg == 0:
        return float("nan")
    return 0.5 * ((labels & predictions).sum() / pos + (~labels & ~predictions).sum() / neg)


def fit_directions(
    z: Any,
    probabilities: Any,
    thresholds: Any,
    *,
    classifier: str = "",
    fit_seed: int = FIT_SEED,
    l2: float = 1e-2,
    attributes: Sequence[str] | None = None,
) -> Directions:
    """Fits one latent direction per attribute from classifier-labelled samples.

    Args:
      z: latents [M, Z].
      probabilities: the classifier's probabilities [M, 40] for their images.
      thresholds: the classifier's decision thresholds [40] (probabilities).
      classifier: the classifier folder, recorded with the directions.
      fit_seed: the latents' seed, recorded.
      l2: `fit_boundary`'s penalty.
      attributes: fit only these (default: all 40 that have both classes).

    Returns:
      `Directions`. The accuracy of each boundary is its balanced accuracy on
      every `HOLDOUT_EVERY`-th sample, fitted without them; the saved normal is
      then refitted on all samples.
    """
    z = np.asarray(z, np.float64)
    labels = np.asarray(probabilities) >= np.asarray(thresholds)[None, :]  # [M, 40]
    m, zd = z.shape
    held = np.arange(m) % HOLDOUT_EVERY == 0
    wanted = (
        set(range(NUM_ATTRIBUTES))
        if attributes is None
        else {sampling.resolve_attribute(a) for a in attributes}
    )
    normals = np.full((NUM_ATTRIBUTES, zd), np.nan, np.float32)
    offsets = np.full(NUM_ATTRIBUTES, np.nan, np.float32)
    accuracy = np.full(NUM_ATTRIBUTES, np.nan)
    positives = labels.sum(axis=0).astype(np.int64)
    for j in sorted(wanted):
        y = labels[:, j]
        if min(y.sum(), (~y).sum()) < MIN_PER_CLASS:
            continue
        if min(y[~held].sum(), (~y[~held]).sum()) > 0:
            n_cv, b_cv = fit_boundary(z[~held], y[~held], l2)
            if not np.isnan(b_cv):
                accuracy[j] = _balanced_accuracy(y[held], z[held] @ n_cv + b_cv >= 0)
        normal, offset = fit_boundary(z, y, l2)
        normals[j], offsets[j] = normal, offset
    return Directions(
        normals=normals,
        offsets=offsets,
        accuracy=accuracy,
        positives=positives,
        num_samples=m,
        classifier=classifier,
        fit_seed=fit_seed,
    )


def label_samples(
    render: Render,
    classifier: Any,
    z: Any,
    chunk: int = 256,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """The classifier's probabilities [M, 40] for the images of latents `z` [M, Z].

    Args:
      render: `render(z [n, Z], None) -> images [n, H, W, C]` in [-1, 1].
      classifier: has `probabilities(images [n, S, S, 3]) -> [n, 40]`.
      z: latents.
      chunk: latents rendered at a time (memory bound).
      progress: called as `progress(done, total)`.
    """
    z = np.asarray(z, np.float32)
    out = []
    for start in range(0, len(z), chunk):
        images = np.asarray(render(z[start : start + chunk], None))
        out.append(np.asarray(classifier.probabilities(as_rgb(images)), np.float32))
        if progress is not None:
            progress(min(start + chunk, len(z)), len(z))
    return np.concatenate(out)


# ----------------------------------------------------------------------------- walks
def walk_latents(z: Any, normal: Any, strengths: Sequence[float]) -> np.ndarray:
    """Latents [N, S, Z]: `z[i] + s * normal` for each strength `s`.

    A strength of 0 returns `z[i]` exactly, so that column is the seed's own image.
    """
    z = np.asarray(z, np.float32)
    s = np.asarray(strengths, np.float32)
    return z[:, None, :] + s[None, :, None] * np.asarray(normal, np.float32)[None, None, :]


def walk(render: Render, z: Any, normal: Any, strengths: Sequence[float]) -> np.ndarray:
    """Images [N, S, H, W, C] along `z + s * normal` (a row per latent)."""
    zs = walk_latents(z, normal, strengths)
    n, s, zd = zs.shape
    images = np.asarray(render(zs.reshape(n * s, zd), None))
    return images.reshape(n, s, *images.shape[1:])


def attribute_probabilities(classifier: Any, images: Any, index: int) -> np.ndarray:
    """The classifier's probability of attribute `index` for images [N, S, H, W, C] -> [N, S]."""
    images = np.asarray(images, np.float32)
    n, s = images.shape[:2]
    flat = as_rgb(images.reshape(n * s, *images.shape[2:]))
    return np.asarray(classifier.probabilities(flat))[:, index].reshape(n, s)


@dataclasses.dataclass(frozen=True)
class WalkReport:
    """How an attribute's probability moves along edits (rows: seeds, columns: strengths).

    Attributes:
      name: the attribute.
      strengths: float [S].
      probabilities: float [N, S].
    """

    name: str
    strengths: np.ndarray
    probabilities: np.ndarray

    @property
    def mean(self) -> np.ndarray:
        """Mean probability per strength [S]."""
        return self.probabilities.mean(axis=0)

    @property
    def monotone(self) -> np.ndarray:
        """bool [N]: the probability never falls (beyond float noise) along the row."""
        return np.all(np.diff(self.probabilities, axis=1) >= -MONOTONE_TOLERANCE, axis=1)

    @property
    def rise(self) -> np.ndarray:
        """Probability at the last strength minus at the first, per row [N]."""
        return self.probabilities[:, -1] - self.probabilities[:, 0]

    def lines(self) -> list[str]:
        """A printable summary."""
        n = len(self.probabilities)
        mean_monotone = bool(np.all(np.diff(self.mean) >= -MONOTONE_TOLERANCE))
        cells = "  ".join(f"{s:+g}:{p:.3f}" for s, p in zip(self.strengths, self.mean))
        return [
            f"{self.name} probability along the edit (mean of {n} seed(s), strength:prob): {cells}",
            f"  moves {self.mean[-1] - self.mean[0]:+.3f} from first to last (per seed: min "
            f"{self.rise.min():+.3f}, max {self.rise.max():+.3f}); never falls along the edit "
            f"for {int(self.monotone.sum())}/{n} seeds; mean curve "
            f"{'monotone' if mean_monotone else 'not monotone'}",
        ]


def walk_report(classifier: Any, images: Any, name: str, strengths: Sequence[float]) -> WalkReport:
    """The classifier's view of an edit grid [N, S, H, W, C] for attribute `name`."""
    index = sampling.resolve_attribute(name)
    probs = attribute_probabilities(classifier, images, index)
    return WalkReport(CELEBA_ATTRIBUTES[index], np.asarray(strengths, np.float64), probs)


def format_directions(directions: Directions, classifier_bacc: Any = None) -> list[str]:
    """A table of the fitted directions: positives, boundary accuracy (and classifier's)."""
    head = f"{'attribute':<22}{'positives':>10}{'boundary_bacc':>15}"
    if classifier_bacc is not None:
        head += f"{'classifier_bacc':>17}"
    lines = [head]
    for j, name in enumerate(CELEBA_ATTRIBUTES):
        if np.isnan(directions.normals[j]).any():
            continue
        acc = directions.accuracy[j]
        row = f"{name:<22}{int(directions.positives[j]):>10}"
        row += f"{'n/a' if np.isnan(acc) else f'{acc:.3f}':>15}"
        if classifier_bacc is not None:
            c = float(classifier_bacc[j])
            row += f"{'n/a' if np.isnan(c) else f'{c:.3f}':>17}"
        lines.append(row)
    lines.append(
        f"{len(directions.fitted())} directions from {directions.num_samples} samples "
        f"(attributes with < {MIN_PER_CLASS} samples on either side are skipped)"
    )
    return lines
