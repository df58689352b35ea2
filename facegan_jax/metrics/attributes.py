"""The library's CelebA attribute classifier and the attribute metrics built on it.

This module owns:

* `AttributeNet`, a small Flax CNN for square RGB images in [-1, 1] (any power
  of two >= 32): one 4x4 stride-2 block per halving down to 4x4 (GroupNorm +
  LeakyReLU, plus a 3x3 conv at 16x16 and below), the 4x4 map flattened into a
  penultimate feature vector (`feature_dim`, 256 by default) and 40 logits in
  `CELEBA_ATTRIBUTES` order.
* `train_classifier`: Adam (AdamW with `weight_decay`) on the per-attribute BCE
  summed over attributes (optionally positive-weighted for rare attributes), random
  horizontal flips (and random shifts with `shift`), then `calibrate` on the
  validation split: per-attribute decision thresholds that maximise balanced
  accuracy, and the validation balanced accuracy itself.
* `Classifier`: the trained network plus its thresholds; batched, jitted
  `features`, `logits`, `probabilities` and `predict`; `save(folder)` and
  `load(folder)`. A classifier folder holds `classifier.json` (sizes,
  thresholds, per-attribute balanced accuracy, training data, steps, and the
  weights file's byte length and sha256) and `weights.msgpack`
  (`flax.serialization` bytes of the parameters). Anything wrong with a folder
  raises `ClassifierFileError` naming the file and how to rebuild it.
* Generator-agnostic metrics: `balanced_accuracy`, `attribute_control`
  (does a conditional generator honour a forced attribute?) and `fd_attr`
  (Fréchet distance between classifier features of generated and real images,
  computed with `facegan_jax.metrics.fid.frechet_distance`).

Balanced accuracy is the mean of the true-positive and true-negative rates, so
a constant prediction scores 0.5 whatever the attribute's frequency. The
recorded validation balanced accuracy is cross-fitted: the threshold used for
each half of the validation split is the one chosen on the other half, so the
number is not inflated by choosing the threshold on the images it scores. The
saved thresholds are chosen on the whole validation split.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from facegan_jax import fileio
from facegan_jax.data import celeba_attributes
from facegan_jax.data.celeba_attributes import (
    CELEBA_ATTRIBUTES,
    NUM_ATTRIBUTES,
    attribute_index,
)
from facegan_jax.metrics.fid import frechet_distance
from facegan_jax.models.fast_conv import FastConvStride2
from facegan_jax.training import loop

CONFIG_FILE = "classifier.json"
WEIGHTS_FILE = "weights.msgpack"
FORMAT = "facegan_jax.attribute_classifier"
# Bump when AttributeNet's function changes: saved weights then no longer load.
FORMAT_VERSION = 1
TRAIN_COMMAND = (
    "python -m data_prep.train_attribute_classifier --data=synthetic_faces|celeba_local "
    "--out={folder}"
)
# Attributes whose validation balanced accuracy reaches this are "reliable":
# the metrics below only trust the classifier on those.
DEFAULT_MIN_BACC = 0.80
# Largest batch one jitted forward call sees; inputs are cut into chunks of this.
_MAX_CHUNK = 256
# Smallest padded batch: small calls share one compiled shape.
_MIN_CHUNK = 8


class ClassifierFileError(ValueError):
    """A classifier folder is missing, truncated, foreign or does not match its config."""


# ------------------------------------------------------------------ network
def default_widths(image_size: int) -> tuple[int, ...]:
    """Channel widths of the stride-2 blocks of `AttributeNet` for `image_size`.

    Args:
      image_size: a power of two >= 32.

    Returns:
      `log2(image_size) - 2` widths, one per halving down to 4x4: 32, 64, ...
      doubling up to 256.
    """
    _check_image_size(image_size)
    num_down = int(math.log2(image_size)) - 2
    return tuple(min(32 * 2**i, 256) for i in range(num_down))


def _check_image_size(image_size: int) -> None:
    if image_size < 32 or image_size & (image_size - 1):
        raise ValueError(f"image_size={image_size} must be a power of two >= 32")


class AttributeNet(nn.Module):
    """Small CNN: images [B, S, S, 3] in [-1, 1] -> (logits [B, 40], features [B, F]).

    Each block is a 4x4 stride-2 convolution, GroupNorm and LeakyReLU; blocks whose
    output is at most `refine_below` pixels wide add a 3x3 convolution (same
    norm and activation), where extra depth is cheap.

    Attributes:
      widths: output channels of each stride-2 block; the input size must be
        `4 * 2 ** len(widths)` (the last block outputs 4x4).
      feature_dim: size of the penultimate feature vector.
      num_outputs: number of logits (the 40 CelebA attributes).
      refine_below: largest block output size that gets the extra 3x3 conv.
      leaky_slope: negative slope of the LeakyReLUs.
    """

    widths: tuple[int, ...]
    feature_dim: int = 256
    num_outputs: int = NUM_ATTRIBUTES
    refine_below: int = 16
    leaky_slope: float = 0.2

    @nn.compact
    def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Returns (logits [B, num_outputs], penultimate features [B, feature_dim])."""

        def norm(x: jax.Array) -> jax.Array:
            # GroupNorm, not BatchNorm: no batch statistics to carry, save or
            # mismatch between training and evaluation batches.
            channels = x.shape[-1]
            x = nn.GroupNorm(num_groups=math.gcd(min(8, channels // 4), channels))(x)
            return nn.leaky_relu(x, self.leaky_slope)

        x = images
        for width in self.widths:
            # Same maths as nn.Conv(k4, s2, p1); its gradient is much faster on XLA:CPU.
            x = norm(FastConvStride2(width)(x))  # halves H and W
            if x.shape[1] <= self.refine_below:
                x = norm(nn.Conv(width, (3, 3), padding=1)(x))
        # Flatten the 4x4 map (a 4x4 "valid" conv) instead of average-pooling it:
        # pooling discards where things are (a hat sits above the eyes, glasses
        # on them), which these few layers cannot re-encode. Measured on
        # synthetic_faces at 32x32, 300 steps: Eyeglasses 0.99 balanced accuracy
        # flattened, 0.48 (chance) pooled.
        x = x.reshape(x.shape[0], -1)  # [B, 16 * C]
        features = nn.relu(nn.Dense(self.feature_dim)(x))  # [B, F]
        logits = nn.Dense(self.num_outputs)(features)  # [B, 40]
        return logits, features


@functools.partial(jax.jit, static_argnums=(0, 3))
def _forward(
    net: AttributeNet, params: Any, images: jax.Array, image_size: int
) -> tuple[jax.Array, jax.Array]:
    if images.shape[1:3] != (image_size, image_size):
        # Other generator resolutions: antialiased bilinear, like the input pipeline.
        shape = (images.shape[0], image_size, image_size, images.shape[3])
        images = jax.image.resize(images, shape, "linear", antialias=True)
    return net.apply({"params": params}, images.astype(jnp.float32))


def _bucket(n: int) -> int:
    """Padded size of a chunk of `n` images: a power of two in [_MIN_CHUNK, _MAX_CHUNK]."""
    return min(_MAX_CHUNK, max(_MIN_CHUNK, 1 << max(n - 1, 0).bit_length()))


# ------------------------------------------------------------------ classifier
@dataclasses.dataclass
class Classifier:
    """A trained attribute classifier.

    Attributes:
      image_size: input resolution it was trained at (other sizes are resized).
      widths: `AttributeNet.widths`.
      feature_dim: `AttributeNet.feature_dim`.
      params: the network parameters.
      threshold_logits: float64 [40]; attribute i is predicted present when its
        logit is >= threshold_logits[i] (kept as logits: probabilities saturate).
      balanced_accuracy: float64 [40] cross-fitted validation balanced accuracy
        (NaN where the validation split lacks positives or negatives).
      val_positives: int [40] positives per attribute in the validation split.
      val_count: validation images used for calibration.
      data_name: the training data (`synthetic_faces`, `celeba_local`, ...).
      steps: optimisation steps trained.
      info: extra training facts saved with the config (batch size, lr, ...).
    """

    image_size: int
    widths: tuple[int, ...]
    feature_dim: int
    params: Any
    threshold_logits: np.ndarray = dataclasses.field(
        default_factory=lambda: np.zeros(NUM_ATTRIBUTES)
    )
    balanced_accuracy: np.ndarray = dataclasses.field(
        default_factory=lambda: np.full(NUM_ATTRIBUTES, np.nan)
    )
    val_positives: np.ndarray = dataclasses.field(
        default_factory=lambda: np.zeros(NUM_ATTRIBUTES, np.int64)
    )
    val_count: int = 0
    data_name: str = ""
    steps: int = 0
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def net(self) -> AttributeNet:
        """The Flax module (hashable: the jitted forward is compiled per module and shape)."""
        return AttributeNet(widths=tuple(self.widths), feature_dim=self.feature_dim)

    @property
    def thresholds(self) -> np.ndarray:
        """Decision thresholds as probabilities, float64 [40]."""
        return 1.0 / (1.0 + np.exp(-self.threshold_logits))

    def _run(self, images: Any) -> tuple[np.ndarray, np.ndarray]:
        """(logits [B, 40], features [B, F]) in fixed-size padded chunks."""
        images = _as_images(images)
        n = images.shape[0]
        logits, feats = [], []
        net = self.net
        for start in range(0, n, _MAX_CHUNK):
            chunk = images[start : start + _MAX_CHUNK]
            size = chunk.shape[0]
            padded = _bucket(size)
            if padded != size:
                # Padding to a few fixed sizes keeps the number of compilations small.
                chunk = np.concatenate(
                    [chunk, np.zeros((padded - size, *chunk.shape[1:]), chunk.dtype)]
                )
            lg, ft = _forward(net, self.params, jnp.asarray(chunk), self.image_size)
            logits.append(np.asarray(lg)[:size])
            feats.append(np.asarray(ft)[:size])
        if not logits:
            return np.zeros((0, NUM_ATTRIBUTES), np.float32), np.zeros(
                (0, self.feature_dim), np.float32
            )
        return np.concatenate(logits), np.concatenate(feats)

    def logits_and_features(self, images: Any) -> tuple[np.ndarray, np.ndarray]:
        """(logits float32 [B, 40], features float32 [B, feature_dim]) in one pass."""
        return self._run(images)

    def logits(self, images: Any) -> np.ndarray:
        """Attribute logits, float32 [B, 40], for images [B, H, W, 3] in [-1, 1]."""
        return self._run(images)[0]

    def probabilities(self, images: Any) -> np.ndarray:
        """Attribute probabilities, float32 [B, 40], for images [B, H, W, 3] in [-1, 1]."""
        return np.asarray(jax.nn.sigmoid(self.logits(images)))

    def features(self, images: Any) -> np.ndarray:
        """Penultimate features, float32 [B, feature_dim], for images [B, H, W, 3] in [-1, 1]."""
        return self._run(images)[1]

    def predict(self, images: Any) -> np.ndarray:
        """Attribute decisions with the calibrated thresholds, bool [B, 40]."""
        return self.logits(images) >= self.threshold_logits

    def reliable_attributes(self, min_bacc: float = DEFAULT_MIN_BACC) -> tuple[str, ...]:
        """Attributes whose validation balanced accuracy is >= `min_bacc` (CelebA order)."""
        return reliable_attributes(self, min_bacc)

    def save(self, folder: str | os.PathLike) -> Any:
        """Writes `classifier.json` and `weights.msgpack` into `folder` (created if needed).

        The weights go first, under a temporary name; the JSON, which records their
        length and sha256, is written last, so an interrupted save never leaves a
        folder that `load` accepts with the wrong weights.

        Returns:
          The folder.
        """
        folder = fileio.as_path(folder)
        data = flax.serialization.msgpack_serialize(
            flax.serialization.to_state_dict(jax.device_get(self.params))
        )
        fileio.write_bytes(folder / WEIGHTS_FILE, data)
        bacc = {
            name: (None if np.isnan(v) else float(v))
            for name, v in zip(CELEBA_ATTRIBUTES, self.balanced_accuracy)
        }
        config = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "image_size": int(self.image_size),
            "widths": [int(w) for w in self.widths],
            "feature_dim": int(self.feature_dim),
            "attributes": list(CELEBA_ATTRIBUTES),
            "thresholds": [float(t) for t in self.thresholds],
            "threshold_logits": [float(t) for t in self.threshold_logits],
            "balanced_accuracy": bacc,
            "reliable_attributes": list(self.reliable_attributes()),
            "val_positives": [int(p) for p in self.val_positives],
            "val_count": int(self.val_count),
            "training_data": self.data_name,
            "steps": int(self.steps),
            "info": self.info,
            "weights": {
                "file": WEIGHTS_FILE,
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            },
        }
        fileio.write_text(folder / CONFIG_FILE, json.dumps(config, indent=2) + "\n")
        return folder


def as_rgb(images: Any) -> np.ndarray:
    """Greyscale images [N, H, W, 1] as RGB by repetition (the classifier reads 3 channels);
    RGB unchanged. float32 numpy."""
    images = np.asarray(images, np.float32)
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def _as_images(images: Any) -> np.ndarray:
    """Checks a batch of images [B, H, W, 3] in [-1, 1] (floats) and returns it as numpy."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"expected square RGB images [B, S, S, 3], got shape {images.shape}")
    if not np.issubdtype(images.dtype, np.floating):
        # uint8 pixels would be read as values far outside [-1, 1]: refuse, do not guess.
        raise ValueError(f"expected float images in [-1, 1], got dtype {images.dtype}")
    return images


def init_params(widths: Sequence[int], feature_dim: int, image_size: int, seed: int = 0) -> Any:
    """Fresh `AttributeNet` parameters for `image_size` inputs."""
    net = AttributeNet(widths=tuple(widths), feature_dim=feature_dim)
    dummy = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    return jax.jit(net.init)(jax.random.PRNGKey(seed), dummy)["params"]


def check_widths(widths: Sequence[int], image_size: int) -> None:
    """Raises ValueError unless `widths` fit `AttributeNet` at `image_size` (one per halving)."""
    _check_image_size(image_size)
    want = int(math.log2(image_size)) - 2
    if len(widths) != want or any(int(w) < 4 for w in widths):
        raise ValueError(
            f"widths={tuple(widths)} must list {want} channel counts >= 4 for {image_size}x"
            f"{image_size} (one stride-2 block per halving down to 4x4)"
        )


# ------------------------------------------------------------------ load
def check_folder(folder: str | None, field: str) -> None:
    """Raises a ValueError naming config field `field` unless `folder` holds a classifier."""
    if not folder or not fileio.isfile(fileio.join(folder, CONFIG_FILE)):
        raise ValueError(
            f"{field}={folder!r} is not an attribute classifier folder; "
            "train one with `python -m data_prep.train_attribute_classifier --out FOLDER`"
        )


def load(folder: str | os.PathLike) -> Classifier:
    """Loads a classifier saved by `Classifier.save`.

    Args:
      folder: the classifier folder.

    Returns:
      The classifier, parameters on the default device.

    Raises:
      ClassifierFileError: a missing or unreadable `classifier.json`, a weights file
        that is missing, truncated, foreign (length or sha256 differ from the
        config) or whose arrays do not match the config's network. The message
        names the file and says how to rebuild the folder.
    """
    folder = fileio.as_path(folder)
    config_path = folder / CONFIG_FILE

    def fail(path: Any, what: str) -> ClassifierFileError:
        return ClassifierFileError(
            f"{path}: {what}; retrain the classifier with "
            f"`{TRAIN_COMMAND.format(folder=os.fspath(folder))}`"
        )

    try:
        config = json.loads(config_path.read_text())
    except FileNotFoundError:
        raise fail(config_path, "no attribute classifier here (file not found)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise fail(config_path, f"not a readable classifier config ({e})") from None
    try:
        if config.get("format") != FORMAT:
            raise KeyError("format")
        if config.get("format_version") != FORMAT_VERSION:
            raise fail(
                config_path,
                f"saved by format version {config.get('format_version')}, this code reads "
                f"version {FORMAT_VERSION} (the network changed)",
            )
        if list(config["attributes"]) != list(CELEBA_ATTRIBUTES):
            raise fail(config_path, "its attribute list is not CelebA's 40 attributes in order")
        image_size = int(config["image_size"])
        widths = tuple(int(w) for w in config["widths"])
        feature_dim = int(config["feature_dim"])
        check_widths(widths, image_size)
        threshold_logits = np.asarray(config["threshold_logits"], np.float64)
        bacc = np.array(
            [
                np.nan if v is None else v
                for v in (config["balanced_accuracy"][n] for n in CELEBA_ATTRIBUTES)
            ],
            np.float64,
        )
        val_positives = np.asarray(config["val_positives"], np.int64)
        expected_bytes = int(config["weights"]["bytes"])
        expected_sha = str(config["weights"]["sha256"])
        weights_name = str(config["weights"]["file"])
        if threshold_logits.shape != (NUM_ATTRIBUTES,) or val_positives.shape != (NUM_ATTRIBUTES,):
            raise ValueError("thresholds and val_positives must have 40 entries")
    except ClassifierFileError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise fail(config_path, f"not a facegan_jax attribute classifier config ({e!r})") from None

    weights_path = folder / weights_name
    try:
        data = weights_path.read_bytes()
    except OSError as e:
        raise fail(weights_path, f"cannot read the weights ({e.strerror or e})") from None
    if len(data) != expected_bytes:
        raise fail(
            weights_path,
            f"{len(data)} bytes where {config_path.name} records {expected_bytes} "
            "(truncated or replaced weights)",
        )
    if hashlib.sha256(data).hexdigest() != expected_sha:
        raise fail(weights_path, f"sha256 differs from the one {config_path.name} records")
    template = jax.eval_shape(lambda: init_params(widths, feature_dim, image_size))
    try:
        state = flax.serialization.msgpack_restore(data)
        params = flax.serialization.from_state_dict(template, state)
    except Exception as e:  # msgpack and Flax raise many unrelated types
        raise fail(weights_path, f"not weights of this network ({type(e).__name__}: {e})") from None
    want = jax.tree_util.tree_map(lambda x: (x.shape, np.dtype(x.dtype)), template)
    got = jax.tree_util.tree_map(lambda x: (np.shape(x), np.asarray(x).dtype), params)
    if want != got:
        raise fail(weights_path, "array shapes differ from the network its config describes")
    return Classifier(
        image_size=image_size,
        widths=widths,
        feature_dim=feature_dim,
        params=jax.device_put(params),
        threshold_logits=threshold_logits,
        balanced_accuracy=bacc,
        val_positives=val_positives,
        val_count=int(config.get("val_count", 0)),
        data_name=str(config.get("training_data", "")),
        steps=int(config.get("steps", 0)),
        info=dict(config.get("info", {})),
    )


# ------------------------------------------------------------------ balanced accuracy
def balanced_accuracy(labels: Any, predictions: Any) -> np.ndarray:
    """Per-attribute balanced accuracy: (TPR + TNR) / 2.

    Args:
      labels: {0, 1} (or bool) [N, K] or [N].
      predictions: bool (or {0, 1}) of the same shape.

    Returns:
      float64 [K] (or a 0-d array for [N] inputs); NaN where `labels` has no
      positives or no negatives for that attribute. Predicting "absent" for
      everything scores 0.5 wherever both classes occur.
    """
    labels = np.asarray(labels) > 0.5
    predictions = np.asarray(predictions).astype(bool)
    if labels.shape != predictions.shape:
        raise ValueError(f"labels {labels.shape} and predictions {predictions.shape} differ")
    pos = labels.sum(axis=0)
    neg = labels.shape[0] - pos
    tp = (labels & predictions).sum(axis=0)
    tn = (~labels & ~predictions).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        bacc = 0.5 * (tp / pos + tn / neg)
    return np.where((pos > 0) & (neg > 0), bacc, np.nan)


def best_thresholds(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column threshold maximising balanced accuracy of `scores >= t`.

    Args:
      scores: float [N, K] (logits).
      labels: bool [N, K].

    Returns:
      (thresholds float64 [K], their balanced accuracy float64 [K]); columns with a
      single class get threshold 0 (probability 0.5) and NaN.
    """
    n, k = scores.shape
    thresholds = np.zeros(k)
    best = np.full(k, np.nan)
    for j in range(k):
        y = labels[:, j]
        pos = int(y.sum())
        neg = n - pos
        if pos == 0 or neg == 0:
            continue
        order = np.argsort(-scores[:, j], kind="stable")
        s, ys = scores[order, j].astype(np.float64), y[order]
        # Predicting the top i as positive (i = 0..n): TP and FP counts.
        tp = np.concatenate([[0], np.cumsum(ys)])
        fp = np.concatenate([[0], np.cumsum(~ys)])
        bacc = 0.5 * (tp / pos + (neg - fp) / neg)
        # A cut is only realisable between distinct scores (or at either end).
        valid = np.ones(n + 1, bool)
        valid[1:n] = s[:-1] > s[1:]
        bacc = np.where(valid, bacc, -np.inf)
        i = int(np.argmax(bacc))
        best[j] = bacc[i]
        if i == 0:
            thresholds[j] = s[0] + 1.0  # nothing positive
        elif i == n:
            thresholds[j] = s[-1] - 1.0  # everything positive
        else:
            thresholds[j] = 0.5 * (s[i - 1] + s[i])  # midway between the two scores
    return thresholds, best


def calibrate(classifier: Classifier, images: Any, labels: Any) -> Classifier:
    """Sets thresholds and validation balanced accuracy from a validation split.

    Thresholds come from the whole split. The recorded balanced accuracy is
    cross-fitted: images with even index are scored with the threshold chosen on
    the odd ones and vice versa (falling back to the whole-split threshold where
    a half lacks a class).

    Args:
      classifier: the trained classifier (updated in place and returned).
      images: validation images [N, S, S, 3] in [-1, 1].
      labels: validation attributes {0, 1} [N, 40].

    Returns:
      `classifier`, with `threshold_logits`, `balanced_accuracy`, `val_positives`
      and `val_count` set.
    """
    labels = np.asarray(labels) > 0.5
    logits = classifier.logits(images).astype(np.float64)  # [N, 40]
    full, _ = best_thresholds(logits, labels)
    halves = (np.arange(len(labels)) % 2 == 0, np.arange(len(labels)) % 2 == 1)
    predictions = np.zeros_like(labels)
    for fit, score in (halves, halves[::-1]):
        t, t_bacc = best_thresholds(logits[fit], labels[fit])
        t = np.where(np.isnan(t_bacc), full, t)
        predictions[score] = logits[score] >= t
    classifier.threshold_logits = full
    classifier.balanced_accuracy = balanced_accuracy(labels, predictions)
    classifier.val_positives = labels.sum(axis=0).astype(np.int64)
    classifier.val_count = len(labels)
    return classifier


def reliable_attributes(
    classifier: Classifier, min_bacc: float = DEFAULT_MIN_BACC
) -> tuple[str, ...]:
    """Attributes the classifier recognises with validation balanced accuracy >= `min_bacc`.

    Args:
      classifier: a calibrated classifier.
      min_bacc: the bar (0.80 by default).

    Returns:
      Attribute names in CelebA order (NaN, i.e. untestable, attributes are excluded).
    """
    bacc = np.nan_to_num(classifier.balanced_accuracy, nan=-1.0)
    return tuple(name for name, v in zip(CELEBA_ATTRIBUTES, bacc) if v >= min_bacc)


# ------------------------------------------------------------------ training
def pos_weights(positive_rate: Any, max_weight: float = 10.0) -> np.ndarray:
    """BCE weights of the positive term: sqrt(neg / pos), clipped to [1, max_weight].

    The square root up-weights rare attributes without letting a handful of
    positives dominate the summed loss; attributes never present get 1.

    Args:
      positive_rate: float [40], fraction of positives in the training data.
      max_weight: upper bound.

    Returns:
      float32 [40].
    """
    p = np.asarray(positive_rate, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.sqrt((1.0 - p) / p)
    w = np.where(p > 0, w, 1.0)
    return np.clip(w, 1.0, max_weight).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of `train_classifier`.

    Attributes:
      image_size: training resolution (power of two >= 32).
      steps: optimisation steps (one batch each).
      learning_rate: Adam's peak rate (linear warm-up, then cosine decay to 1%).
      warmup_steps: steps of linear warm-up.
      widths: network widths; None for `default_widths(image_size)`.
      feature_dim: penultimate feature size.
      seed: parameter init and augmentation.
      data_name: training data name recorded with the classifier.
      adversarial_eps: L2 radius (in [-1, 1] pixel units, over the whole image) of
        adversarial training; 0: off. Each step then averages the loss on the
        clean batch and on the batch moved `adversarial_eps` along its own input
        gradient (one normalised step, Goodfellow et al. 2015 / Madry et al. 2018
        with one step): a robust classifier, whose input gradients look like the
        attribute (Santurkar et al. 2019), for classifier guidance. Doubles the
        step cost. 2.0 is CIFAR's usual L2 0.5 in [0, 1] units at 64x64.
      shift: random translation augmentation, at most this many pixels in each
        direction (edge-padded); 0: off (flips only).
      weight_decay: decoupled weight decay (AdamW) of every parameter; 0: Adam.
    """

    image_size: int = 64
    steps: int = 2000
    learning_rate: float = 2e-3
    warmup_steps: int = 100
    widths: tuple[int, ...] | None = None
    feature_dim: int = 256
    seed: int = 0
    data_name: str = ""
    adversarial_eps: float = 0.0
    shift: int = 0
    weight_decay: float = 0.0


def random_shift(images: jax.Array, key: jax.Array, shift: int) -> jax.Array:
    """Each image translated by its own random offset in [-shift, shift]^2 (edge-padded).

    Args:
      images: float [B, H, W, C].
      key: PRNG key.
      shift: largest offset in pixels (0: `images` unchanged).

    Returns:
      float [B, H, W, C].
    """
    if shift <= 0:
        return images
    b, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (shift, shift), (shift, shift), (0, 0)), mode="edge")
    offsets = jax.random.randint(key, (b, 2), 0, 2 * shift + 1)

    def crop(image: jax.Array, offset: jax.Array) -> jax.Array:
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))

    return jax.vmap(crop)(padded, offsets)


def adversarial_images(images: jax.Array, input_grads: jax.Array, eps: float) -> jax.Array:
    """`images` moved `eps` (L2, per image) along `input_grads`, clipped to [-1, 1]."""
    norm = jnp.sqrt(jnp.sum(jnp.square(input_grads), axis=(1, 2, 3), keepdims=True))  # [B,1,1,1]
    moved = images + eps * input_grads / jnp.maximum(norm, 1e-12)
    return jax.lax.stop_gradient(jnp.clip(moved, -1.0, 1.0))


def _make_train_step(
    net: AttributeNet,
    tx: optax.GradientTransformation,
    adversarial_eps: float = 0.0,
    shift: int = 0,
) -> Callable:
    def loss_fn(params, images, labels, pos_weight):
        logits, _ = net.apply({"params": params}, images)  # [B, 40]
        # BCE with a positive weight: w * y * softplus(-z) + (1 - y) * softplus(z).
        per = pos_weight * labels * jax.nn.softplus(-logits) + (1 - labels) * jax.nn.softplus(
            logits
        )
        return jnp.mean(jnp.sum(per, axis=-1))  # summed over attributes, mean over images

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, images, labels, key, pos_weight):
        # Without shifts the flips use `key` itself: classifiers trained before
        # shifts existed come out the same.
        flip_key, shift_key = jax.random.split(key) if shift > 0 else (key, key)
        flip = jax.random.bernoulli(flip_key, 0.5, (images.shape[0], 1, 1, 1))
        images = jnp.where(flip, images[:, :, ::-1], images)  # random horizontal flips
        images = random_shift(images, shift_key, shift)
        if adversarial_eps > 0:
            # One pass gives the clean loss's gradients for the parameters and the
            # images; the second trains on the images moved up the loss.
            loss, (grads, input_grads) = jax.value_and_grad(loss_fn, argnums=(0, 1))(
                params, images, labels, pos_weight
            )
            moved = adversarial_images(images, input_grads, adversarial_eps)
            adv_loss, adv_grads = jax.value_and_grad(loss_fn)(params, moved, labels, pos_weight)
            loss = 0.5 * (loss + adv_loss)
            grads = jax.tree_util.tree_map(lambda a, b: 0.5 * (a + b), grads, adv_grads)
        else:
            loss, grads = jax.value_and_grad(loss_fn)(params, images, labels, pos_weight)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def train_classifier(
    train_config: TrainConfig,
    train_batches: Iterable[Mapping[str, Any]],
    val_data: Mapping[str, Any] | Iterable[Mapping[str, Any]],
    *,
    pos_weight: Any = None,
    progress: Callable[[int, int, float], None] | None = None,
    info: Mapping[str, Any] | None = None,
    init: Classifier | None = None,
) -> Classifier:
    """Trains an attribute classifier and calibrates it on validation data.

    Args:
      train_config: hyperparameters.
      train_batches: yields at least `train_config.steps` dicts with 'image'
        float [b, S, S, 3] in [-1, 1] and 'attributes' {0, 1} [b, 40] (e.g. a
        repeated `input_pipeline.create_dataset(...).as_numpy_iterator()`).
      val_data: a dict of arrays {'image', 'attributes'} or an iterable of such
        batches: the validation split, for thresholds and balanced accuracy.
      pos_weight: float [40] weights of the positive BCE term (`pos_weights`), or
        None for plain BCE.
      progress: called as `progress(step, steps, loss)` after each step.
      info: extra facts recorded in the saved config.
      init: a classifier to start from (fine-tuning, e.g. adversarially); its
        network must be the one `train_config` describes.

    Returns:
      The calibrated `Classifier`.
    """
    cfg = train_config
    widths = tuple(cfg.widths) if cfg.widths else default_widths(cfg.image_size)
    check_widths(widths, cfg.image_size)
    if cfg.steps < 1:
        raise ValueError(f"steps={cfg.steps} must be >= 1")
    if not cfg.adversarial_eps >= 0:
        raise ValueError(f"adversarial_eps={cfg.adversarial_eps} must be >= 0")
    if cfg.shift < 0 or not cfg.weight_decay >= 0:
        raise ValueError(f"shift={cfg.shift} and weight_decay={cfg.weight_decay} must be >= 0")
    net = AttributeNet(widths=widths, feature_dim=cfg.feature_dim)
    if init is None:
        params = init_params(widths, cfg.feature_dim, cfg.image_size, cfg.seed)
    else:
        mine = (widths, cfg.feature_dim, cfg.image_size)
        theirs = (tuple(init.widths), init.feature_dim, init.image_size)
        if mine != theirs:
            raise ValueError(
                f"init classifier has (widths, feature_dim, image_size) {theirs}, "
                f"training asks for {mine}"
            )
        params = jax.tree_util.tree_map(jnp.array, init.params)  # a copy: steps donate it
    warmup = min(cfg.warmup_steps, max(cfg.steps // 10, 1))
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, cfg.learning_rate, warmup, max(cfg.steps, warmup + 1), cfg.learning_rate * 0.01
    )
    if cfg.weight_decay > 0:
        tx = optax.adamw(schedule, weight_decay=cfg.weight_decay)
    else:
        tx = optax.adam(schedule)
    opt_state = tx.init(params)
    step_fn = _make_train_step(net, tx, cfg.adversarial_eps, cfg.shift)
    weight = (
        jnp.ones(NUM_ATTRIBUTES) if pos_weight is None else jnp.asarray(pos_weight, jnp.float32)
    )
    key = jax.random.PRNGKey(cfg.seed + 1)

    def one_step(state: tuple[Any, Any, int], batch: Mapping[str, Any]) -> tuple[Any, jax.Array]:
        params, opt_state, step = state
        images = jnp.asarray(batch["image"], jnp.float32)
        if images.shape[1:] != (cfg.image_size, cfg.image_size, 3):
            raise ValueError(
                f"training images have shape {images.shape[1:]}, expected "
                f"({cfg.image_size}, {cfg.image_size}, 3)"
            )
        labels = jnp.asarray(batch["attributes"], jnp.float32)
        params, opt_state, loss = step_fn(
            params, opt_state, images, labels, jax.random.fold_in(key, step + 1), weight
        )
        return (params, opt_state, step + 1), loss

    hooks = []
    if progress is not None:
        hooks.append(lambda step, _, loss: progress(step, cfg.steps, float(loss)))
    try:
        (params, opt_state, _), _ = loop.run(
            one_step,
            (params, opt_state, 0),
            train_batches,
            first_step=0,
            last_step=cfg.steps,
            hooks=hooks,
        )
    except loop.BatchesExhaustedError as e:
        raise ValueError(f"train_batches: {e}") from None
    classifier = Classifier(
        image_size=cfg.image_size,
        widths=widths,
        feature_dim=cfg.feature_dim,
        params=params,
        data_name=cfg.data_name,
        steps=cfg.steps,
        info={
            "learning_rate": cfg.learning_rate,
            "seed": cfg.seed,
            "pos_weighted": pos_weight is not None,
            "adversarial_eps": cfg.adversarial_eps,
            "shift": cfg.shift,
            "weight_decay": cfg.weight_decay,
            **dict(info or {}),
        },
    )
    val_images, val_labels = _gather(val_data)
    return calibrate(classifier, val_images, val_labels)


def _gather(data: Mapping[str, Any] | Iterable[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """(images, attributes) from a dict of arrays or an iterable of batch dicts."""
    if isinstance(data, Mapping):
        return np.asarray(data["image"]), np.asarray(data["attributes"])
    images, labels = [], []
    for batch in data:
        images.append(np.asarray(batch["image"]))
        labels.append(np.asarray(batch["attributes"]))
    if not images:
        raise ValueError("validation data is empty")
    return np.concatenate(images), np.concatenate(labels)


# ------------------------------------------------------------------ metrics
def attribute_control(
    classifier: Classifier,
    generate_fn: Callable[[np.ndarray, np.ndarray], Any],
    pool: Any,
    n_per_side: int,
    attributes: Sequence[str] | None = None,
    seed: int = 0,
    batch_size: int = 256,
    keep_features: bool = False,
    consistent: float = 0.0,
) -> dict[str, Any]:
    """How well a conditional generator honours each attribute it is asked for.

    For each attribute: draw `n_per_side` real attribute vectors from `pool` and
    latent indices, generate once with the attribute forced on and once forced
    off (same vectors otherwise, same latents, so the pair differs only in the
    attribute), classify with the attribute's calibrated threshold, and score
    the balanced accuracy of the forced value. 1.0: always honoured; 0.5: no
    effect (paired latents make an ignored attribute score exactly 0.5).

    Args:
      classifier: a calibrated classifier.
      generate_fn: `generate_fn(latent_indices int64 [n], attribute_vectors
        float32 [n, 40]) -> images [n, S, S, 3] in [-1, 1]`; the same index must
        mean the same latent.
      pool: real attribute vectors {0, 1} [P, 40].
      n_per_side: images generated with the attribute on (and as many off).
      attributes: names to test; None for `classifier.reliable_attributes()`.
      seed: draws the vectors and latent indices.
      batch_size: largest `generate_fn` call.
      keep_features: also return the classifier features of the generated images
        (from the same pass), for the conditional Frechet distances.
      consistent: 0 (the metric's definition): only the attribute changes, so Male
        is asked for on a woman's vector with Wearing_Lipstick. > 0: consistent
        requests, as a user who asks for a man would write one: each other entry
        whose value has probability below `consistent` among the pool's vectors with
        the forced value is set to its likely value (`celeba_attributes.conflicts`).

    Returns:
      {'per_attribute': {name: balanced accuracy}, 'mean': float (NaN if no
      attribute), 'attributes': tuple of names, 'n_per_side': int}; with
      `keep_features`, also 'features': {name: (on [n, F], off [n, F])}.
    """
    pool = np.asarray(pool, np.float32)
    if pool.ndim != 2 or pool.shape[1] != NUM_ATTRIBUTES or len(pool) == 0:
        raise ValueError(f"pool must be real attribute vectors [P, 40], got shape {pool.shape}")
    if n_per_side < 1:
        raise ValueError(f"n_per_side={n_per_side} must be >= 1")
    names = classifier.reliable_attributes() if attributes is None else tuple(attributes)
    rng = np.random.default_rng(seed)
    table = celeba_attributes.conflict_table(pool) if consistent > 0 else None
    scores: dict[str, float] = {}
    kept: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in names:
        j = attribute_index(name)
        rows = rng.choice(len(pool), n_per_side, replace=len(pool) < n_per_side)
        latents = rng.integers(0, 2**31 - 1, n_per_side, dtype=np.int64)
        on, off = pool[rows].copy(), pool[rows].copy()
        on[:, j], off[:, j] = 1.0, 0.0
        vectors = np.concatenate([on, off])  # [2n, 40]
        if table is not None:
            forced = np.zeros(vectors.shape, bool)
            forced[:, j] = True
            resolved = celeba_attributes.resolve_conflicts(table, consistent, vectors, forced)
            vectors = np.asarray(resolved, np.float32)
        indices = np.concatenate([latents, latents])  # [2n]
        outputs = [
            classifier.logits_and_features(
                _generate(generate_fn, indices[s : s + batch_size], vectors[s : s + batch_size])
            )
            for s in range(0, 2 * n_per_side, batch_size)
        ]
        logits = np.concatenate([lg[:, j] for lg, _ in outputs])  # [2n]
        if keep_features:
            feats = np.concatenate([ft for _, ft in outputs])  # [2n, F]
            kept[name] = (feats[:n_per_side], feats[n_per_side:])
        predicted = logits >= classifier.threshold_logits[j]
        target = np.arange(2 * n_per_side) < n_per_side
        scores[name] = float(balanced_accuracy(target, predicted))
    mean = float(np.mean(list(scores.values()))) if scores else float("nan")
    result = {
        "per_attribute": scores,
        "mean": mean,
        "attributes": names,
        "n_per_side": n_per_side,
        "consistent": consistent,
    }
    if keep_features:
        result["features"] = kept
    return result


def _generate(generate_fn: Callable, indices: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    images = np.asarray(generate_fn(indices, vectors))
    if images.shape[0] != len(indices):
        raise ValueError(
            f"generate_fn returned {images.shape[0]} images for {len(indices)} requests"
        )
    return images.astype(np.float32, copy=False)


def collect_features(
    classifier: Classifier, batches: Iterable[Any], max_samples: int | None = None
) -> np.ndarray:
    """Penultimate features of image batches (arrays, or dicts with 'image').

    Args:
      classifier: the classifier.
      batches: yields images [b, S, S, 3] in [-1, 1] or {'image': ...} dicts.
      max_samples: stop after this many images (None: all).

    Returns:
      float32 [N, feature_dim].
    """
    out, count = [], 0
    for batch in batches:
        images = batch["image"] if isinstance(batch, Mapping) else batch
        images = np.asarray(images)
        if max_samples is not None:
            images = images[: max_samples - count]
        if len(images):
            out.append(classifier.features(images))
            count += len(images)
        if max_samples is not None and count >= max_samples:
            break
    if not out:
        return np.zeros((0, classifier.feature_dim), np.float32)
    return np.concatenate(out)


def feature_statistics(features: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean [F] and covariance [F, F] (float64, unbiased) of features [N, F], N >= 2."""
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need features [N >= 2, F], got shape {x.shape}")
    return x.mean(axis=0), np.cov(x, rowvar=False)


def fd_attr(
    generated: np.ndarray | tuple[np.ndarray, np.ndarray],
    real: np.ndarray | tuple[np.ndarray, np.ndarray],
) -> float:
    """Fréchet distance between classifier features of generated and real images.

    Like FID, but in the attribute classifier's penultimate feature space, so it
    measures how the generated faces' attribute content is distributed compared
    with held-out real faces.

    Args:
      generated: features [N, F] (`Classifier.features`) or their (mu, sigma).
      real: features [M, F] of held-out real images, or their (mu, sigma)
        (e.g. cached statistics).

    Returns:
      The Fréchet distance (0 for identical statistics).
    """
    mu1, s1 = generated if isinstance(generated, tuple) else feature_statistics(generated)
    mu2, s2 = real if isinstance(real, tuple) else feature_statistics(real)
    return frechet_distance(mu1, s1, mu2, s2)


def format_table(classifier: Classifier, min_bacc: float = DEFAULT_MIN_BACC) -> list[str]:
    """Per-attribute lines: name, validation positives, balanced accuracy, threshold, reliable."""
    lines = [f"{'attribute':<22}{'val_pos':>8}{'bal_acc':>9}{'thresh':>8}  reliable"]
    for j, name in enumerate(CELEBA_ATTRIBUTES):
        b = classifier.balanced_accuracy[j]
        reliable = "yes" if not np.isnan(b) and b >= min_bacc else "no"
        bacc = "   n/a" if np.isnan(b) else f"{b:.3f}"
        lines.append(
            f"{name:<22}{int(classifier.val_positives[j]):>8}{bacc:>9}"
            f"{classifier.thresholds[j]:>8.3f}  {reliable}"
        )
    reliable = classifier.reliable_attributes(min_bacc)
    finite = classifier.balanced_accuracy[~np.isnan(classifier.balanced_accuracy)]
    mean = float(finite.mean()) if finite.size else float("nan")
    lines.append(
        f"mean balanced accuracy {mean:.3f} over {finite.size} testable attributes; "
        f"{len(reliable)} reliable (>= {min_bacc:.2f}) on {classifier.val_count} validation images"
    )
    return lines


def iterate_batches(
    images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int = 0
) -> Iterator[dict[str, np.ndarray]]:
    """Endless shuffled batches from in-memory arrays (a new permutation each epoch).

    Args:
      images: [N, S, S, 3] uint8 pixels (converted to [-1, 1]) or floats in [-1, 1].
      labels: [N, 40].
      batch_size: images per batch (<= N).
      seed: permutation seed.

    Yields:
      {'image': float32 [batch_size, S, S, 3] in [-1, 1], 'attributes': float32 [batch_size, 40]}.
    """
    n = len(images)
    if not 0 < batch_size <= n:
        raise ValueError(f"batch_size={batch_size} must be in [1, {n}]")
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(n)
        for start in range(0, n - batch_size + 1, batch_size):
            idx = np.sort(order[start : start + batch_size])
            batch = images[idx]
            if batch.dtype == np.uint8:
                batch = batch.astype(np.float32) / 127.5 - 1.0
            yield {"image": batch.astype(np.float32), "attributes": labels[idx].astype(np.float32)}
