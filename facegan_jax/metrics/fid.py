"""FID and KID maths: Inception features, streaming statistics, distances, stats files.

This module owns the metric itself, with no notion of training runs or command
lines: turning generator output or image files into pytorch-fid's pool3 features
(`models/inception.py`), accumulating their mean and covariance on the device
(`StatsAccumulator`), the Frechet distance and KID, statistics of image
iterators and image folders, and the `.npz` statistics files (`save_stats`,
`load_stats`). Metrics on a generator during training and after are
`evaluation.py`; the command line is `fid_cli.py` (`python -m facegan_jax.fid`
still runs it).

Preprocessing, identical for generated and real images: [-1, 1] floats are quantised
to the 256 levels of a saved PNG (`sampling.to_uint8`'s rounding), scaled to [0, 1],
resized to 299 (bilinear, half-pixel centres, no antialias) and mapped to [-1, 1] by
the network, all in float32 at `Precision.HIGHEST` (TF32 would break agreement with
pytorch-fid). Greyscale images are tiled to 3 channels.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from facegan_jax import fileio
from facegan_jax.metrics import inception

PyTree = Any
# KID computes whole kernel matrices up front when neither set is larger than this.
_KID_FULL_KERNEL_MAX = 4096
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


# ----------------------------------------------------------------------------- preprocessing
def to_unit_range(images: jax.Array, quantize: bool = True) -> jax.Array:
    """Network input in [0, 1] from uint8 images or [-1, 1] floats, 3 channels.

    Args:
      images: [B, H, W, C] uint8 (0..255) or float in [-1, 1]; C is 1 or 3.
      quantize: round floats to the 256 levels a saved PNG would hold.

    Returns:
      [B, H, W, 3] float32 in [0, 1].
    """
    if images.dtype == jnp.uint8:
        x = images.astype(jnp.float32) / 255.0
    else:
        x = images.astype(jnp.float32)
        if quantize:  # same rounding as sampling.to_uint8 (what a saved PNG holds)
            x = jnp.clip(jnp.round((x + 1.0) * 127.5), 0.0, 255.0) / 255.0
        else:
            x = jnp.clip((x + 1.0) * 0.5, 0.0, 1.0)
    if x.shape[-1] == 1:
        x = jnp.tile(x, (1, 1, 1, 3))  # [B, H, W, 3]
    return x


@functools.partial(jax.jit, static_argnames=("quantize",))
def image_features(params: PyTree, images: jax.Array, quantize: bool = True) -> jax.Array:
    """pool3 features of uint8 or [-1, 1] images (jitted).

    Args:
      params: Inception params from `inception_weights.load_inception_params`.
      images: [B, H, W, C] uint8 or float in [-1, 1]; C is 1 or 3.
      quantize: round float images to PNG levels first.

    Returns:
      [B, 2048] float32.
    """
    with jax.default_matmul_precision("highest"):
        return inception.pool3_features(params, to_unit_range(images, quantize))


@functools.lru_cache(maxsize=8)
def generator_features_fn(
    generate: Callable[[PyTree, jax.Array], jax.Array],
    quantize: bool = True,
    mesh: Mesh | None = None,
) -> Callable[[PyTree, PyTree, jax.Array], jax.Array]:
    """Fuses generation and feature extraction into one jitted function.

    Generated images never leave the devices: the function returns features only.
    Cached per (generate, quantize, mesh), so repeated evaluations reuse one compile.

    Args:
      generate: `generate(gen_variables, indices int32[B]) -> images [B, H, W, C]` in
        [-1, 1] (C = 1 or 3).
      quantize: round generated images to PNG levels first (default, as if saved).
      mesh: when given, indices and features are sharded over its 'data' axis and
        both variable trees are replicated.

    Returns:
      `features_fn(gen_variables, inception_params, indices) -> [B, 2048]` float32.
    """

    def features(gen_variables: PyTree, inception_params: PyTree, indices: jax.Array):
        with jax.default_matmul_precision("highest"):
            images = generate(gen_variables, indices)  # [B, H, W, C] in [-1, 1]
            return inception.pool3_features(inception_params, to_unit_range(images, quantize))

    if mesh is None:
        return jax.jit(features)
    rep = NamedSharding(mesh, PartitionSpec())
    data = NamedSharding(mesh, PartitionSpec("data"))
    return jax.jit(features, in_shardings=(rep, rep, data), out_shardings=data)


# ----------------------------------------------------------------------------- statistics
def _twosum_add(total: jax.Array, comp: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Neumaier-compensated `total + x`: the rounding error goes into `comp`."""
    new = total + x
    err = jnp.where(jnp.abs(total) >= jnp.abs(x), (total - new) + x, (x - new) + total)
    return new, comp + err


@jax.jit
def _init_stats(features: jax.Array, valid: jax.Array) -> dict[str, jax.Array]:
    mask = (jnp.arange(features.shape[0]) < valid)[:, None]  # [B, 1]
    shift = jnp.sum(jnp.where(mask, features, 0.0), axis=0) / valid  # [D]
    D = features.shape[1]
    return {
        "shift": shift,
        "sum": jnp.zeros((D,), jnp.float32),
        "sum_c": jnp.zeros((D,), jnp.float32),
        "gram": jnp.zeros((D, D), jnp.float32),
        "gram_c": jnp.zeros((D, D), jnp.float32),
    }


@jax.jit
def _accumulate(state: dict[str, jax.Array], features: jax.Array, valid: jax.Array):
    mask = (jnp.arange(features.shape[0]) < valid)[:, None]  # [B, 1]
    # Centre on the first batch's mean: the later `gram - n m m^T` then cancels little.
    x = jnp.where(mask, features.astype(jnp.float32) - state["shift"], 0.0)  # [B, D]
    batch_sum = jnp.sum(x, axis=0)  # [D]
    batch_gram = jnp.einsum("bi,bj->ij", x, x, precision=jax.lax.Precision.HIGHEST)  # [D, D]
    total, comp = _twosum_add(state["sum"], state["sum_c"], batch_sum)
    gram, gram_c = _twosum_add(state["gram"], state["gram_c"], batch_gram)
    return {"shift": state["shift"], "sum": total, "sum_c": comp, "gram": gram, "gram_c": gram_c}


class StatsAccumulator:
    """Streaming mean and covariance of feature batches, accumulated on the device.

    Each batch adds its (shifted) sum and Gram matrix X^T X in float32 into running
    totals kept with Neumaier compensation (an error term per entry), which is as
    accurate as float64 accumulation; only the final totals travel to the host,
    where mean and covariance are formed in float64.
    """

    def __init__(self) -> None:
        self._state: dict[str, jax.Array] | None = None
        self.count = 0

    def update(self, features: jax.Array, valid: int | None = None) -> None:
        """Adds the first `valid` rows (default all) of features [B, D]; no host sync."""
        valid = features.shape[0] if valid is None else int(valid)
        if valid <= 0:
            return
        n = jnp.asarray(valid, jnp.int32)
        if self._state is None:
            self._state = _init_stats(features, n)
        self._state = _accumulate(self._state, features, n)
        self.count += valid

    def result(self) -> tuple[np.ndarray, np.ndarray, int]:
        """Returns (mu [D] float64, sigma [D, D] float64 with ddof=1, n)."""
        if self._state is None or self.count < 2:
            raise ValueError(f"FID statistics need at least 2 samples, got {self.count}")
        st = {k: np.asarray(v, np.float64) for k, v in jax.device_get(self._state).items()}
        n = self.count
        mean_shifted = (st["sum"] + st["sum_c"]) / n  # [D]
        gram = st["gram"] + st["gram_c"]  # [D, D]
        sigma = (gram - n * np.outer(mean_shifted, mean_shifted)) / (n - 1)
        return st["shift"] + mean_shifted, (sigma + sigma.T) / 2, n


def stats_from_features(features: np.ndarray | jax.Array) -> tuple[np.ndarray, np.ndarray, int]:
    """Mean and covariance of features held in full, via `StatsAccumulator`.

    Args:
      features: [N, D], N >= 2.

    Returns:
      (mu [D] float64, sigma [D, D] float64 with ddof=1, N).
    """
    acc = StatsAccumulator()
    acc.update(jnp.asarray(features))
    return acc.result()


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

    Uses tr sqrt(S1 S2) = sum sqrt(eig(sqrt(S1) S2 sqrt(S1))), a symmetric PSD matrix,
    so it needs only `eigh`: no `sqrtm`, no complex numbers, and it stays finite for
    fewer samples than dimensions (rank-deficient covariances).

    Args:
      mu1, mu2: means [D].
      sigma1, sigma2: covariances [D, D].

    Returns:
      ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2).
    """
    mu1, mu2 = (
        np.atleast_1d(np.asarray(mu1, np.float64)),
        np.atleast_1d(np.asarray(mu2, np.float64)),
    )
    s1, s2 = (
        np.atleast_2d(np.asarray(sigma1, np.float64)),
        np.atleast_2d(np.asarray(sigma2, np.float64)),
    )
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != mu1.shape * 2:
        raise ValueError(
            f"statistics do not match: mu {mu1.shape} vs {mu2.shape}, "
            f"sigma {s1.shape} vs {s2.shape}"
        )
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
    w, v = scipy.linalg.eigh(s1)
    sqrt_s1 = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T  # [D, D]
    m = sqrt_s1 @ s2 @ sqrt_s1
    eig = scipy.linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = np.sum(np.sqrt(np.clip(eig, 0.0, None)))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def kid(
    feats1: np.ndarray,
    feats2: np.ndarray,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel Inception Distance: unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3.

    Averaged over `num_subsets` random subsets (without replacement) of
    min(`subset_size`, n1, n2) rows from each side, as torch-fidelity does.

    Args:
      feats1, feats2: features [N1, D], [N2, D].
      num_subsets: number of subset pairs.
      subset_size: rows per subset (capped by the smaller set).
      seed: subset selection seed.

    Returns:
      (mean, std) of the per-subset MMD^2 estimates.
    """
    f1, f2 = np.asarray(feats1, np.float64), np.asarray(feats2, np.float64)
    m = min(subset_size, f1.shape[0], f2.shape[0])
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per side, got {f1.shape[0]}, {f2.shape[0]}")
    d = f1.shape[1]
    rng = np.random.default_rng(seed)
    kernel = lambda a, b: (a @ b.T / d + 1.0) ** 3  # noqa: E731
    # Small sets (the training hook's): three kernel matrices once, subsets index them.
    full = max(f1.shape[0], f2.shape[0]) <= _KID_FULL_KERNEL_MAX
    if full:
        k11, k22, k12 = kernel(f1, f1), kernel(f2, f2), kernel(f1, f2)
    values = []
    for _ in range(num_subsets):
        i = rng.choice(f1.shape[0], m, replace=False)
        j = rng.choice(f2.shape[0], m, replace=False)
        if full:
            kxx, kyy, kxy = k11[np.ix_(i, i)], k22[np.ix_(j, j)], k12[np.ix_(i, j)]
        else:
            kxx, kyy, kxy = kernel(f1[i], f1[i]), kernel(f2[j], f2[j]), kernel(f1[i], f2[j])
        within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        values.append(within - 2.0 * kxy.mean())
    return float(np.mean(values)), float(np.std(values))


# ----------------------------------------------------------------------------- image batches
def _fixed_batches(batches: Iterable[Any], batch_size: int) -> Iterator[tuple[np.ndarray, int]]:
    """Re-chunks image batches to exactly `batch_size` rows (last one zero-padded).

    One shape means one compile; yields (batch, number of real rows).
    """
    pending: list[np.ndarray] = []
    held = 0
    for batch in batches:
        images = np.asarray(batch["image"] if isinstance(batch, dict) else batch)
        pending.append(images)
        held += images.shape[0]
        while held >= batch_size:
            joined = np.concatenate(pending)
            yield joined[:batch_size], batch_size
            pending, held = [joined[batch_size:]], held - batch_size
    if held:
        joined = np.concatenate(pending)
        pad = np.zeros((batch_size - held, *joined.shape[1:]), joined.dtype)
        yield np.concatenate([joined, pad]), held


def _image_feature_batches(
    batches: Iterable[Any], inception_params: PyTree, batch_size: int, quantize: bool
) -> Iterator[tuple[jax.Array, int]]:
    params = jax.device_put(inception_params)
    for images, valid in _fixed_batches(batches, batch_size):
        yield image_features(params, jnp.asarray(images), quantize), valid


def compute_stats_from_images(
    batches: Iterable[Any],
    inception_params: PyTree,
    batch_size: int = 50,
    *,
    quantize: bool = True,
    max_samples: int | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """FID statistics of images from an iterator.

    Args:
      batches: iterator of [b, H, W, C] uint8 or [-1, 1] float arrays (or dicts with
        an 'image' entry, as the input pipeline yields).
      inception_params: from `inception_weights.load_inception_params`.
      batch_size: images per network call (batches are re-chunked to this size).
      quantize: round float images to PNG levels first.
      max_samples: stop after this many images.

    Returns:
      (mu [2048] float64, sigma [2048, 2048] float64, n).
    """
    acc = StatsAccumulator()
    for features, valid in _image_feature_batches(
        _limit(batches, max_samples), inception_params, batch_size, quantize
    ):
        acc.update(features, valid)
    return acc.result()


def features_from_images(
    batches: Iterable[Any],
    inception_params: PyTree,
    batch_size: int = 50,
    *,
    quantize: bool = True,
    max_samples: int | None = None,
) -> np.ndarray:
    """pool3 features [N, 2048] of images from an iterator (see compute_stats_from_images)."""
    chunks = [
        np.asarray(f)[:valid]
        for f, valid in _image_feature_batches(
            _limit(batches, max_samples), inception_params, batch_size, quantize
        )
    ]
    return np.concatenate(chunks) if chunks else np.zeros((0, inception.POOL3_DIM), np.float32)


def _limit(batches: Iterable[Any], max_samples: int | None) -> Iterator[Any]:
    seen = 0
    for batch in batches:
        images = batch["image"] if isinstance(batch, dict) else batch
        if max_samples is not None:
            if seen >= max_samples:
                return
            images = images[: max_samples - seen]
        seen += images.shape[0]
        yield images


# ------------------------------------------------------------ image folders, statistics files
def list_image_files(folder: str | os.PathLike) -> list[Path]:
    """Image files directly in `folder` (by extension, see IMAGE_EXTENSIONS), sorted by name.

    Args:
      folder: an existing folder.

    Returns:
      The paths; empty when the folder holds no image files.
    """
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


def iterate_image_folder(files: list[Path], batch_size: int) -> Iterator[np.ndarray]:
    """Yields uint8 [b, H, W, 3] batches of RGB images; all must share one size.

    Args:
      files: image paths, e.g. from `list_image_files`.
      batch_size: images per batch (the last one may hold fewer).

    Raises:
      ValueError: naming the file that cannot be decoded or has a different size.
    """
    from PIL import Image

    size = None
    batch: list[np.ndarray] = []
    for path in files:
        try:
            with Image.open(path) as img:
                array = np.asarray(img.convert("RGB"), np.uint8)  # [H, W, 3]
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: cannot read image ({e})") from None
        if size is None:
            size = array.shape
        elif array.shape != size:
            raise ValueError(
                f"{path}: image is {array.shape[1]}x{array.shape[0]} but the folder's first "
                f"image is {size[1]}x{size[0]}; all images must share one size"
            )
        batch.append(array)
        if len(batch) == batch_size:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


def save_stats(path: str | os.PathLike, mu: np.ndarray, sigma: np.ndarray, **meta: Any) -> None:
    """Writes `mu`, `sigma` and metadata to a new .npz; never replaces an existing file.

    Args:
      path: the output, ending in .npz.
      mu: mean [D].
      sigma: covariance [D, D].
      **meta: extra entries (n, source, resolution, crop, weights_sha256, ...).

    Raises:
      ValueError: `path` does not end in .npz.
      FileExistsError: `path` exists.
    """
    path = fileio.resolve(path)
    if not path.endswith(".npz"):
        raise ValueError(f"{path}: statistics output must end in .npz")
    if fileio.exists(path):
        raise FileExistsError(f"{path} already exists; choose another output path")
    fileio.save_npz(path, mu=mu, sigma=sigma, **{k: np.asarray(v) for k, v in meta.items()})


def load_stats(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Reads `mu` and `sigma` from a statistics .npz (ours or pytorch-fid's).

    Args:
      path: the .npz file.

    Returns:
      (mu [D], sigma [D, D]) as stored.

    Raises:
      ValueError: naming the file when it is unreadable or lacks `mu` or `sigma`.
    """
    try:
        data = fileio.load_npz(path)
    except (OSError, ValueError) as e:
        raise ValueError(
            f"{path}: cannot read statistics ({e}); expected an .npz of mu, sigma"
        ) from None
    missing = [k for k in ("mu", "sigma") if k not in data]
    if missing:
        raise ValueError(
            f"{path}: statistics file without {missing[0]!r}; write one with "
            "`python -m facegan_jax.fid --save-stats SRC OUT.npz`"
        )
    return data["mu"], data["sigma"]
