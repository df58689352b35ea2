"""Input pipeline: TFDS faces -> host decode/crop/resize -> per-process batches -> global arrays.

This module owns everything between a TFDS dataset on disk and a batch on the
devices: choosing the builder (`synthetic_faces`, `celeba_local`, `celeb_a`),
per-process sharding, seeded shuffling, the resumable input position, image
preprocessing, the attribute vector, and placing batches on the mesh.

Element structure (all sources): {'image': float32 [b, S, S, C] in [-1, 1],
'attributes': float32 [b, 40] in {0, 1}, `CELEBA_ATTRIBUTES` order}.

Order and resume: examples are read in the stored (deterministic) file order;
epoch `e` is shuffled with a seed derived from (`config.seed`, e). Because epoch
`e`'s order does not depend on earlier epochs, `start_batch` jumps straight to
the right epoch and skips the remaining offset on *encoded* records (no JPEG
decoding), so a resumed run sees exactly the batches an uninterrupted run would.

Resizing uses `tf.image.resize(method=config.data.resize, antialias=True)`:
when downscaling, the bilinear (triangle) or bicubic (Keys, a = -0.5) kernel is
widened by the scale factor, so it is a proper low-pass filter like PIL's
`Image.resize(BILINEAR)` / `(BICUBIC)`, not point sampling; 'bicubic' equals
PIL's (the PyTorch peer's) resize to within 3 levels (mean 0.27). JPEGs are decoded with
`INTEGER_ACCURATE` DCT, which matches PIL (and so pytorch-fid's reference
preprocessing) pixel for pixel, and the crop is fused into the decode
(`decode_and_crop_jpeg`, same pixels, less work).
"""

from __future__ import annotations

import collections
import itertools
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from facegan_jax import fileio
from facegan_jax.data import celeba_local, face_renderer
from facegan_jax.data.celeba_attributes import CELEBA_ATTRIBUTES, NUM_ATTRIBUTES
from facegan_jax.data.celeba_files import CELEBA_178_BOX

KNOWN_DATASETS = ("synthetic_faces", "celeba_local", "celeb_a")
KNOWN_CROPS = ("none", "celeba_178", "center_160", "box")
RESIZE_METHODS = ("bilinear", "bicubic")  # config.data.resize; both antialiased
# Upper bound for the epoch counter of a repeated dataset (effectively infinite).
_MAX_EPOCHS = 2**40
PREPARE_COMMAND = "python -m data_prep.prepare_celeba --manual-dir DIR --data-dir DATA_DIR"


def _is_prepared(builder: tfds.core.DatasetBuilder) -> bool:
    # Checking the file first avoids TFDS's absl warning about a missing variant folder.
    return (builder.data_path / "dataset_info.json").exists() and builder.is_prepared()


def _not_prepared_error(data_config: ml_collections.ConfigDict, builder: Any, hint: str) -> str:
    return (
        f"config.data.name={data_config.name!r}: no prepared dataset at {builder.data_path} "
        f"(config.data.tfds_data_dir={data_config.tfds_data_dir!r}); {hint}"
    )


def get_builder(
    data_config: ml_collections.ConfigDict, *, seed: int = 0
) -> tfds.core.DatasetBuilder:
    """Returns the prepared TFDS builder named by `data_config.name`.

    Args:
      data_config: `config.data`.
      seed: rendering seed for `synthetic_faces` (ignored by the CelebA sources).

    Returns:
      A builder whose data is on disk (synthetic_faces is built if needed).

    Raises:
      ValueError: unknown name, or a CelebA dataset that has not been prepared.
    """
    name, data_dir = data_config.name, fileio.expand_path(data_config.tfds_data_dir)
    if name == "synthetic_faces":
        from facegan_jax.data import synthetic_faces

        size = data_config.image_size
        resolution = size if size in face_renderer.RESOLUTIONS else max(face_renderer.RESOLUTIONS)
        return synthetic_faces.prepare_builder(
            resolution,
            data_config.synthetic_num_train,
            data_config.synthetic_num_eval,
            seed=seed,
            data_dir=data_dir,
        )
    if name == "celeba_local":
        builder = celeba_local.CelebaLocal(data_dir=data_dir)
        if not _is_prepared(builder):
            raise ValueError(
                _not_prepared_error(
                    data_config,
                    builder,
                    f"build it from the official files with `{PREPARE_COMMAND}`",
                )
            )
        return builder
    if name == "celeb_a":
        builder = tfds.builder("celeb_a", data_dir=data_dir)
        if not _is_prepared(builder):
            raise ValueError(
                _not_prepared_error(
                    data_config,
                    builder,
                    "TFDS downloads it from Google Drive, which often returns an HTML quota page "
                    "instead of the zip; download the files by hand and use "
                    f"config.data.name='celeba_local' after `{PREPARE_COMMAND}`",
                )
            )
        return builder
    raise ValueError(f"unknown config.data.name={name!r}; known: {', '.join(KNOWN_DATASETS)}")


def crop_window(
    height: int, width: int, data_config: ml_collections.ConfigDict
) -> tuple[int, int, int, int] | None:
    """Returns the (top, left, height, width) crop for an image, or None for no crop.

    Args:
      height: image height.
      width: image width.
      data_config: `config.data` (`crop`, `crop_box`).

    Returns:
      The crop box, validated to lie inside the image. With 'none' a non-square image
      (aligned CelebA is 218x178) is later resized to a square, changing its aspect ratio.

    Raises:
      ValueError: unknown `config.data.crop`, or a box that does not fit.
    """
    crop = data_config.crop
    if crop not in KNOWN_CROPS:
        raise ValueError(f"unknown config.data.crop={crop!r}; known: {', '.join(KNOWN_CROPS)}")
    if crop == "none":
        return None
    if data_config.get("name") == "synthetic_faces":
        # The crops frame the face in CelebA's 178x218 photos; synthetic_faces renders
        # are framed faces already, so recipes keep their CelebA crop and stay runnable.
        logging.log_first_n(
            logging.INFO,
            "config.data.crop=%r frames CelebA photos; synthetic_faces renders are framed "
            "faces already and are not cropped",
            1,
            crop,
        )
        return None
    if crop == "celeba_178":
        box = CELEBA_178_BOX
    elif crop == "center_160":
        box = ((height - 160) // 2, (width - 160) // 2, 160, 160)
    elif crop == "box":
        box = tuple(int(v) for v in data_config.crop_box)
        if len(box) != 4:
            raise ValueError(
                f"config.data.crop_box={data_config.crop_box!r} must be (top, left, height, width)"
            )
    else:
        raise ValueError(f"unknown config.data.crop={crop!r}; known: {', '.join(KNOWN_CROPS)}")
    top, left, box_h, box_w = box
    if (
        top < 0
        or left < 0
        or box_h <= 0
        or box_w <= 0
        or top + box_h > height
        or left + box_w > width
    ):
        raise ValueError(
            f"config.data.crop={crop!r} (box top={top}, left={left}, size {box_h}x{box_w}; "
            f"config.data.crop_box={tuple(data_config.crop_box)!r}) does not fit a "
            f"{height}x{width} image"
        )
    return box


def _resize_and_scale(image: tf.Tensor, data_config: ml_collections.ConfigDict) -> tf.Tensor:
    """Cropped uint8 [h, w, 3] -> float32 [S, S, C] in [-1, 1]."""
    size, channels = int(data_config.image_size), int(data_config.channels)
    if size <= 0:
        raise ValueError(f"config.data.image_size={size} must be positive")
    if channels not in (1, 3):
        raise ValueError(f"config.data.channels={channels} must be 1 (greyscale) or 3 (RGB)")
    method = data_config.resize
    if method not in RESIZE_METHODS:
        raise ValueError(
            f"config.data.resize={method!r} is not known; known: {', '.join(RESIZE_METHODS)}"
        )
    image = tf.cast(image, tf.float32)  # [h, w, 3]
    if tuple(image.shape[:2]) != (size, size):
        image = tf.image.resize(image, (size, size), method=method, antialias=True)  # [S, S, 3]
    if channels == 1:
        image = tf.image.rgb_to_grayscale(image)  # [S, S, 1], ITU-R 601 luma
    return tf.clip_by_value(image / 127.5 - 1.0, -1.0, 1.0)  # [S, S, C]


def preprocess_image(image_uint8: tf.Tensor, data_config: ml_collections.ConfigDict) -> tf.Tensor:
    """Crops, resizes (antialiased `data.resize`), optionally greys and scales one image.

    Args:
      image_uint8: uint8 [H, W, 3] with static H and W.
      data_config: `config.data` (`crop`, `crop_box`, `resize`, `image_size`, `channels`).

    Returns:
      float32 [S, S, C] in [-1, 1], S = `image_size`, C = `channels`.
    """
    height, width = image_uint8.shape[0], image_uint8.shape[1]
    if height is None or width is None:
        raise ValueError("preprocess_image needs an image with a static height and width")
    box = crop_window(height, width, data_config)
    if box is not None:
        top, left, box_h, box_w = box
        image_uint8 = image_uint8[top : top + box_h, left : left + box_w]  # [h, w, 3]
    return _resize_and_scale(image_uint8, data_config)


def attributes_to_vector(attr_dict: Mapping[str, tf.Tensor]) -> tf.Tensor:
    """Returns the 40 boolean attributes as float32 {0, 1} in `CELEBA_ATTRIBUTES` order.

    Args:
      attr_dict: attribute name -> bool tensor (any leading batch shape).

    Returns:
      float32 [..., 40].
    """
    return tf.stack([tf.cast(attr_dict[name], tf.float32) for name in CELEBA_ATTRIBUTES], axis=-1)


def _decode_fn(builder: tfds.core.DatasetBuilder, data_config: ml_collections.ConfigDict):
    """Returns encoded element -> preprocessed element, with the crop fused into JPEG decoding."""
    feature = builder.info.features["image"]
    height, width, _ = feature.shape
    box = crop_window(height, width, data_config)
    is_jpeg = getattr(feature, "encoding_format", None) == "jpeg"

    def decode(example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        encoded = example["image"]
        if is_jpeg:
            if box is None:
                image = tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE")
            else:
                image = tf.io.decode_and_crop_jpeg(
                    encoded, list(box), channels=3, dct_method="INTEGER_ACCURATE"
                )
        else:
            image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
            image.set_shape((height, width, 3))
            if box is not None:
                image = image[box[0] : box[0] + box[2], box[1] : box[1] + box[3]]
        crop_h, crop_w = (height, width) if box is None else box[2:]
        image.set_shape((crop_h, crop_w, 3))  # [h, w, 3]
        return {"image": _resize_and_scale(image, data_config), "attributes": example["attributes"]}

    return decode


def _num_examples(builder: tfds.core.DatasetBuilder, split: str, name: str) -> int:
    try:
        return builder.info.splits[split].num_examples
    except (KeyError, ValueError, AssertionError) as e:
        raise ValueError(
            f"split {split!r} is not in {name} (splits: {', '.join(builder.info.splits)}); "
            f"check config.data.train_split / config.data.eval_split ({e})"
        ) from None


def create_dataset(
    config: ml_collections.ConfigDict,
    split: str,
    *,
    batch_size: int,
    shuffle: bool,
    repeat: bool,
    start_batch: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
    drop_remainder: bool = True,
) -> tf.data.Dataset:
    """Returns this process's batches of preprocessed faces.

    Args:
      config: the run config (`config.data`, `config.seed`).
      split: TFDS split (sub-split strings like 'validation[:1000]' work).
      batch_size: per-process batch (global batch // process count).
      shuffle: shuffle each epoch with a seed derived from `config.seed` and the epoch.
      repeat: repeat forever.
      start_batch: batches already consumed (the checkpointed input position); they are
        skipped on encoded records, before decoding.
      process_index: this process (default `jax.process_index()`).
      process_count: number of processes (default `jax.process_count()`).
      drop_remainder: drop a last partial batch.

    Returns:
      Dataset of {'image': float32 [b, S, S, C] in [-1, 1], 'attributes': float32 [b, 40]}.
      Process i reads `tfds.even_splits(split, process_count)[i]`: every example of
      `split` goes to exactly one process (sizes differ by at most one).
    """
    data_config = config.data
    if batch_size <= 0 or start_batch < 0:
        raise ValueError(f"batch_size={batch_size} must be > 0 and start_batch={start_batch} >= 0")
    builder = get_builder(data_config, seed=config.seed)
    decode = _decode_fn(builder, data_config)  # validates crop/size/channels before any I/O
    _num_examples(builder, split, data_config.name)
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    local_split = tfds.split_for_jax_process(
        split, process_index=process_index, process_count=process_count, drop_remainder=False
    )
    num_local = _num_examples(builder, local_split, data_config.name)
    if num_local == 0:
        raise ValueError(f"split {split!r} has no examples for process {process_index}")

    encoded = builder.as_dataset(
        split=local_split,
        shuffle_files=False,  # fixed file order: the per-epoch shuffle below is the only randomness
        decoders={"image": tfds.decode.SkipDecoding()},
    )
    encoded = encoded.map(
        lambda ex: {"image": ex["image"], "attributes": attributes_to_vector(ex["attributes"])}
    )

    position = start_batch * batch_size  # examples already consumed
    if repeat:
        first_epoch, offset = divmod(position, num_local)
        epochs = tf.data.Dataset.range(first_epoch, _MAX_EPOCHS)
    else:
        offset = position
        epochs = tf.data.Dataset.range(0, 1)

    def one_epoch(epoch: tf.Tensor) -> tf.data.Dataset:
        if not shuffle:
            return encoded
        seed = tf.constant(int(config.seed), tf.int64) * 1_000_003 + epoch
        return encoded.shuffle(
            data_config.shuffle_buffer, seed=seed, reshuffle_each_iteration=False
        )

    ds = epochs.flat_map(one_epoch).skip(offset)
    parallel = data_config.num_parallel_calls
    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE if parallel == -1 else parallel)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    return ds.prefetch(tf.data.AUTOTUNE)


def ordered_dataset(
    config: ml_collections.ConfigDict, split: str, batch_size: int
) -> tf.data.Dataset:
    """All of `split` once, in file order, on every process: for statistics and evaluation.

    Every process reads the whole (held-out, small) split, so all of them compute the
    same statistics; the last batch may be partial.
    """
    return create_dataset(
        config,
        split,
        batch_size=batch_size,
        shuffle=False,
        repeat=False,
        process_index=0,
        process_count=1,
        drop_remainder=False,
    )


def device_put_batches(
    iterator: Iterable[Mapping[str, Any]],
    mesh_sharding: jax.sharding.NamedSharding,
    prefetch: int = 2,
) -> Iterator[dict[str, jax.Array]]:
    """Turns per-process numpy batches into global arrays, `prefetch` batches ahead.

    Args:
      iterator: per-process batches (dicts of numpy or TF eager arrays).
      mesh_sharding: sharding of the batch dimension over the mesh (e.g. P('data')).
      prefetch: batches transferred ahead, so the next one is on device while a step runs.

    Yields:
      Dicts of global `jax.Array`s whose leading dimension is the global batch.
    """
    iterator = iter(iterator)
    queue: collections.deque = collections.deque()

    def enqueue(n: int) -> None:
        for batch in itertools.islice(iterator, n):
            queue.append(
                {
                    key: jax.make_array_from_process_local_data(mesh_sharding, np.asarray(value))
                    for key, value in batch.items()
                }
            )

    enqueue(max(prefetch, 1))
    while queue:
        yield queue.popleft()
        enqueue(1)


def attribute_pool(config: ml_collections.ConfigDict, max_examples: int = 4096) -> np.ndarray:
    """Returns real attribute vectors from the train split, to condition generated samples.

    Args:
      config: the run config.
      max_examples: at most this many vectors (the first ones in stored order).

    Returns:
      float32 [N, 40] in {0, 1}.
    """
    builder = get_builder(config.data, seed=config.seed)
    split = config.data.train_split
    count = min(_num_examples(builder, split, config.data.name), max_examples)
    ds = builder.as_dataset(
        split=split, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()}
    )
    ds = ds.take(count).map(lambda ex: attributes_to_vector(ex["attributes"])).batch(1024)
    pool = np.concatenate(list(ds.as_numpy_iterator()), axis=0).astype(np.float32)
    assert pool.shape == (count, NUM_ATTRIBUTES)
    return pool


def measure_throughput(config: ml_collections.ConfigDict, num_batches: int) -> float:
    """Measures training-pipeline throughput on this host.

    Args:
      config: the run config (batches of `config.train.batch_size // process_count`).
      num_batches: batches timed, after two warm-up batches (shuffle buffer fill, start-up).

    Returns:
      Images per second.
    """
    batch_size = config.train.batch_size // jax.process_count()
    ds = create_dataset(
        config, config.data.train_split, batch_size=batch_size, shuffle=True, repeat=True
    )
    iterator = ds.as_numpy_iterator()
    for _ in range(2):
        next(iterator)
    start = time.perf_counter()
    for _ in range(num_batches):
        next(iterator)
    return num_batches * batch_size / (time.perf_counter() - start)
