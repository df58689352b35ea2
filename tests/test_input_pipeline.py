"""Tests for facegan_jax.data.input_pipeline: preprocessing, sources, sharding, order, resume, put.

CelebA cases read the shared 14,000-image subset built once per session into
the pytest base temp dir (shared with tests/test_celeba_local.py).
"""

from __future__ import annotations

import io
from pathlib import Path

import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from PIL import Image

from configs.default import get_config
from facegan_jax import fileio
from facegan_jax.data import input_pipeline
from facegan_jax.data.celeba_attributes import CELEBA_ATTRIBUTES


@pytest.fixture(scope="session")
def celeba_dir(celeba_local_build) -> str:
    builder, _ = celeba_local_build
    return str(Path(builder.data_dir).parents[1])  # the TFDS data_dir


def _config(celeba_dir: str | None = None, **data_overrides):
    config = get_config()
    config.data.name = "celeba_local"
    config.data.tfds_data_dir = celeba_dir
    config.data.crop = "celeba_178"
    config.data.shuffle_buffer = 256
    for key, value in data_overrides.items():
        config.data[key] = value
    return config


def _first_batch(config, split="validation", batch_size=8, **kwargs) -> dict[str, np.ndarray]:
    kwargs = {"shuffle": False, "repeat": False, **kwargs}
    ds = input_pipeline.create_dataset(config, split, batch_size=batch_size, **kwargs)
    return next(ds.as_numpy_iterator())


@pytest.mark.parametrize("size", [64, 128])
def test_celeba_batches_have_shape_dtype_and_range(celeba_dir, size):
    batch = _first_batch(_config(celeba_dir, image_size=size))
    assert batch["image"].shape == (8, size, size, 3)
    assert batch["image"].dtype == np.float32
    assert batch["image"].min() >= -1.0 and batch["image"].max() <= 1.0
    assert batch["image"].min() < -0.8 and batch["image"].max() > 0.8  # the range is used
    assert batch["attributes"].shape == (8, 40) and batch["attributes"].dtype == np.float32
    assert set(np.unique(batch["attributes"])) <= {0.0, 1.0}


def test_greyscale_has_one_channel_of_luma(celeba_dir):
    grey = _first_batch(_config(celeba_dir, image_size=32, channels=1))["image"]
    rgb = _first_batch(_config(celeba_dir, image_size=32))["image"]
    assert grey.shape == (8, 32, 32, 1)
    luma = (((rgb + 1) * 127.5) @ np.array([0.2989, 0.587, 0.114])) / 127.5 - 1
    np.testing.assert_allclose(grey[..., 0], luma, atol=2e-3)


def test_pipeline_pixels_equal_pil_decode_then_preprocess_image(celeba_dir):
    config = _config(celeba_dir, image_size=64)
    batch = _first_batch(config, batch_size=4)
    builder = input_pipeline.get_builder(config.data)
    encoded = builder.as_dataset(
        split="validation", shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()}
    )
    for i, ex in enumerate(encoded.take(4).as_numpy_iterator()):
        pil = np.asarray(Image.open(io.BytesIO(ex["image"])).convert("RGB"))  # [218, 178, 3]
        expected = input_pipeline.preprocess_image(tf.constant(pil), config.data).numpy()
        np.testing.assert_allclose(batch["image"][i], expected, atol=1e-5)


def _file_rows(path: Path, ids: list[str]) -> np.ndarray:
    """The attribute rows of `ids` as {0, 1}, parsed independently of the code under test."""
    lines = path.read_text().splitlines()
    assert tuple(lines[1].split()) == CELEBA_ATTRIBUTES
    wanted = set(ids)
    rows = {ln[:10]: ln.split()[1:] for ln in lines[2:] if ln[:10] in wanted}
    return np.array([[float(int(v) > 0) for v in rows[i]] for i in ids])


def _stored_ids(builder, split: str, count: int) -> list[str]:
    ds = builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
    return [ex["image_id"].decode() for ex in ds.take(count).as_numpy_iterator()]


def test_attribute_vectors_equal_the_file_rows(celeba_dir, shared_data):
    attr_file = shared_data / "celeba" / "list_attr_celeba.txt"
    config = _config(celeba_dir, image_size=8)
    batch = _first_batch(config, batch_size=32)
    builder = input_pipeline.get_builder(config.data)
    expected = _file_rows(attr_file, _stored_ids(builder, "validation", 32))
    np.testing.assert_array_equal(batch["attributes"], expected)
    pool = input_pipeline.attribute_pool(config, max_examples=50)
    assert pool.shape == (50, 40) and pool.dtype == np.float32
    np.testing.assert_array_equal(pool, _file_rows(attr_file, _stored_ids(builder, "train", 50)))


def _coordinate_image() -> tf.Tensor:
    """uint8 [218, 178, 3]: channel 0 = row, channel 1 = column, channel 2 = 255."""
    rows, cols = np.meshgrid(np.arange(218), np.arange(178), indexing="ij")
    return tf.constant(np.stack([rows, cols, np.full_like(rows, 255)], -1).astype(np.uint8))


@pytest.mark.parametrize(
    ("crop", "box", "size", "first_row", "first_col"),
    [
        ("celeba_178", (0, 0, 0, 0), 178, 20, 0),
        ("center_160", (0, 0, 0, 0), 160, 29, 9),
        ("box", (10, 5, 50, 50), 50, 10, 5),
    ],
)
def test_preprocess_image_crops_the_documented_box(crop, box, size, first_row, first_col):
    data = _config(crop=crop, crop_box=box, image_size=size).data
    out = input_pipeline.preprocess_image(_coordinate_image(), data).numpy()  # no resize
    pixels = np.round((out + 1) * 127.5)
    assert out.shape == (size, size, 3)
    np.testing.assert_array_equal(pixels[:, 0, 0], np.arange(first_row, first_row + size))
    np.testing.assert_array_equal(pixels[0, :, 1], np.arange(first_col, first_col + size))
    assert out[..., 2].min() == 1.0  # 255 -> +1


def test_resize_is_antialiased():
    checker = (np.indices((128, 128)).sum(0) % 2 * 255).astype(np.uint8)  # 1-pixel checkerboard
    image = tf.constant(np.repeat(checker[..., None], 3, -1))
    data = _config(crop="none", image_size=32).data
    out = input_pipeline.preprocess_image(image, data).numpy()
    assert np.abs(out).max() < 0.02  # averaged to mid-grey, not aliased to black/white


def test_bicubic_resize_is_pil_bicubic_within_rounding(shared_data):
    import zipfile

    with zipfile.ZipFile(shared_data / "celeba" / "img_align_celeba.zip") as zf:
        pil = Image.open(io.BytesIO(zf.read("img_align_celeba/000001.jpg"))).convert("RGB")
    face = pil.crop((0, 20, 178, 198))
    image = tf.constant(np.asarray(face))
    out = {}
    for method in ("bicubic", "bilinear"):
        data = _config(crop="none", image_size=64, resize=method).data
        out[method] = (input_pipeline.preprocess_image(image, data).numpy() + 1) * 127.5
    for method, pil_filter in (("bicubic", Image.BICUBIC), ("bilinear", Image.BILINEAR)):
        expected = np.asarray(face.resize((64, 64), pil_filter), np.float32)
        diff = np.abs(out[method] - expected)
        assert diff.mean() < 0.3 and diff.max() <= 3.0, (method, diff.mean(), diff.max())
    # The two filters differ visibly on a real face (bicubic is sharper).
    assert np.abs(out["bicubic"] - out["bilinear"]).mean() > 0.5
    with pytest.raises(ValueError, match=r"config\.data\.resize='lanczos'"):
        input_pipeline.preprocess_image(image, _config(crop="none", resize="lanczos").data)


def test_bad_crop_and_name_raise_errors_naming_the_field(celeba_dir):
    with pytest.raises(ValueError, match=r"config\.data\.crop='circle'"):
        input_pipeline.crop_window(218, 178, _config(crop="circle").data)
    with pytest.raises(ValueError, match=r"config\.data\.crop='box'.*does not fit a 218x178"):
        input_pipeline.crop_window(218, 178, _config(crop="box", crop_box=(100, 0, 150, 50)).data)
    with pytest.raises(ValueError, match=r"config\.data\.crop='circle'"):
        input_pipeline.create_dataset(
            _config(celeba_dir, crop="circle"), "train", batch_size=2, shuffle=False, repeat=False
        )
    with pytest.raises(ValueError, match=r"config\.data\.name='ffhq'.*celeba_local"):
        input_pipeline.get_builder(_config(name="ffhq").data)
    with pytest.raises(ValueError, match=r"split 'test' is not in celeba_local"):
        input_pipeline.create_dataset(
            _config(celeba_dir), "test", batch_size=2, shuffle=False, repeat=False
        )


def test_unprepared_datasets_give_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"config\.data\.name='celeba_local'.*prepare_celeba"):
        input_pipeline.get_builder(_config(str(tmp_path)).data)
    with pytest.raises(
        ValueError, match=r"config\.data\.name='celeb_a'.*Google Drive.*prepare_celeba"
    ):
        input_pipeline.get_builder(_config(str(tmp_path), name="celeb_a").data)
    assert not any(tmp_path.iterdir())  # nothing was downloaded or written


def test_two_processes_cover_every_example_exactly_once(celeba_dir):
    config = _config(celeba_dir, image_size=8)
    split = "validation[:999]"  # odd: the processes get 500 and 499

    def fingerprints(**kwargs) -> list[bytes]:
        ds = input_pipeline.create_dataset(
            config, split, batch_size=64, shuffle=True, repeat=False, drop_remainder=False, **kwargs
        )
        return [image.tobytes() for batch in ds.as_numpy_iterator() for image in batch["image"]]

    everything = fingerprints(process_index=0, process_count=1)
    shards = [fingerprints(process_index=i, process_count=2) for i in range(2)]
    assert len(everything) == len(set(everything)) == 999
    assert sorted(len(s) for s in shards) == [499, 500]
    assert sorted(shards[0] + shards[1]) == sorted(everything)


def test_shuffle_is_seeded_and_changes_each_epoch(celeba_dir):
    config = _config(celeba_dir, image_size=8)

    def epochs(seed: int) -> list[np.ndarray]:
        config.seed = seed
        ds = input_pipeline.create_dataset(
            config, "validation[:64]", batch_size=64, shuffle=True, repeat=True
        )
        return [b["image"] for _, b in zip(range(2), ds.as_numpy_iterator())]

    first, again, other = epochs(0), epochs(0), epochs(1)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])
    assert not np.array_equal(first[0], first[1])  # a new order each epoch
    np.testing.assert_array_equal(np.sort(first[0], 0), np.sort(first[1], 0))  # same examples


def test_start_batch_resumes_with_the_next_unseen_batches(celeba_dir):
    config = _config(celeba_dir, image_size=8)
    kwargs = {"batch_size": 16, "shuffle": True, "repeat": True}
    split = "validation[:100]"  # 6.25 batches per epoch: resume crosses epoch boundaries
    fresh = input_pipeline.create_dataset(config, split, **kwargs).as_numpy_iterator()
    reference = [next(fresh)["image"] for _ in range(14)]
    for start in (5, 9):
        resumed = input_pipeline.create_dataset(config, split, start_batch=start, **kwargs)
        for i, batch in zip(range(start, 14), resumed.as_numpy_iterator()):
            np.testing.assert_array_equal(batch["image"], reference[i], err_msg=f"batch {i}")


def test_device_put_batches_yields_every_batch_in_order_with_the_batch_sharding():
    # One in-process device; the split over 2 devices is asserted in test_data_parallel.py.
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    batches = [
        {
            "image": np.full((4, 8, 8, 3), i, np.float32),
            "attributes": np.full((4, 40), i, np.float32),
        }
        for i in range(3)
    ]
    out = list(input_pipeline.device_put_batches(iter(batches), sharding, prefetch=2))
    assert len(out) == 3
    for i, batch in enumerate(out):
        assert batch["image"].shape == (4, 8, 8, 3) and batch["image"].sharding == sharding
        assert len(batch["image"].addressable_shards) == mesh.devices.size
        np.testing.assert_array_equal(np.asarray(batch["attributes"]), batches[i]["attributes"])


def test_measure_throughput_reports_images_per_second(celeba_dir):
    config = _config(celeba_dir, image_size=64)
    config.train.batch_size = 16
    assert input_pipeline.measure_throughput(config, num_batches=3) > 0


def test_synthetic_faces_source_resizes_to_any_size(tmp_path):
    config = get_config("runlocal")
    config.data.tfds_data_dir = str(tmp_path)
    config.data.image_size = 48  # not rendered natively: rendered at 128, then resized
    batch = _first_batch(config, split="train", batch_size=4)
    assert batch["image"].shape == (4, 48, 48, 3)
    assert batch["image"].min() >= -1.0 and batch["image"].max() <= 1.0
    assert batch["attributes"].shape == (4, 40)


def test_tilde_in_a_data_dir_is_the_home_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert fileio.expand_path("~/tensorflow_datasets") == str(tmp_path / "tensorflow_datasets")
    assert fileio.expand_path("gs://b/~x") == "gs://b/~x"
    assert fileio.expand_path(None) is None
