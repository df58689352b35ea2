"""Tests of the FID InceptionV3 port: torch-free weight files (inception_weights) and the
network's agreement with pytorch-fid (inception)."""

from __future__ import annotations

import collections
import io
import pickle
import struct
import sys
import types
import urllib.error
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from facegan_jax.metrics import inception, inception_weights


@pytest.fixture(scope="module")
def forward():
    return jax.jit(lambda p, x: inception.InceptionV3().apply({"params": p}, x, return_blocks=True))


# ----------------------------------------------------------------------------- file reading
def test_state_dict_has_the_real_files_names_and_shapes(inception_fixture_dir):
    state = inception_weights.read_torch_state_dict(
        inception_fixture_dir / "fixture_inception_seed0.pth"
    )
    header = {}
    for line in (inception_fixture_dir / "real_weights_param_shapes.txt").read_text().splitlines():
        name, _, shape = line.partition(" ")
        header[name] = tuple(int(s) for s in shape.split("x") if s)
    assert len(header) == 566
    assert {k: v.shape for k, v in state.items()} == header
    assert state["Conv2d_1a_3x3.conv.weight"].dtype == np.float32
    assert state["Conv2d_1a_3x3.bn.num_batches_tracked"].dtype == np.int64


def test_truncated_download_is_rejected_with_a_clear_error(inception_fixture_dir):
    path = inception_fixture_dir / "real_weights_truncated.pth"
    with pytest.raises(
        inception_weights.InceptionWeightsError, match="truncated or corrupt"
    ) as err:
        inception_weights.load_inception_params(path)
    message = str(err.value)
    assert str(path) in message and "download" in message and "\n" not in message


def test_garbage_file_is_rejected(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"\x80\x02not a torch file" * 10)
    with pytest.raises(inception_weights.InceptionWeightsError, match="junk.pth"):
        inception_weights.read_torch_state_dict(path)


def _fake_torch(monkeypatch):
    """Registers a minimal fake `torch` so pickle can write torch's global references."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    class FloatStorage:
        pass

    class LongStorage:
        pass

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called while writing")

    for obj, mod in (
        (FloatStorage, "torch"),
        (LongStorage, "torch"),
        (_rebuild_tensor_v2, "torch._utils"),
    ):
        obj.__module__, obj.__qualname__ = mod, obj.__name__
    torch.FloatStorage, torch.LongStorage = FloatStorage, LongStorage
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return torch, utils


def _write_torch_file(path, tensors, storages, use_zip, monkeypatch):
    """Writes a torch-format state dict: tensors are (storage key, offset, size, stride)."""
    torch, utils = _fake_torch(monkeypatch)
    types_by_dtype = {
        np.dtype(np.float32): torch.FloatStorage,
        np.dtype(np.int64): torch.LongStorage,
    }

    class Tensor:
        def __init__(self, key, offset, size, stride):
            self.args = (key, offset, size, stride)

        def __reduce__(self):
            key, offset, size, stride = self.args
            return utils._rebuild_tensor_v2, (("S", key), offset, size, stride, False, {})

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, tuple) and len(obj) == 2 and obj[0] == "S":
                data = storages[obj[1]]
                fields = ("storage", types_by_dtype[data.dtype], obj[1], "cpu", data.size)
                return fields if use_zip else (*fields, None)
            return None

    state = collections.OrderedDict((k, Tensor(*v)) for k, v in tensors.items())
    body = io.BytesIO()
    Pickler(body, protocol=2).dump(state)
    if use_zip:
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
            zf.writestr("archive/data.pkl", body.getvalue())
            zf.writestr("archive/byteorder", "little")
            for key, data in storages.items():
                zf.writestr(f"archive/data/{key}", data.tobytes())
        return
    out = io.BytesIO()
    for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
        pickle.dump(header, out, protocol=2)
    out.write(body.getvalue())
    pickle.dump(list(storages), out, protocol=2)
    for data in storages.values():
        out.write(struct.pack("<q", data.size) + data.tobytes())
    path.write_bytes(out.getvalue())


@pytest.mark.parametrize("use_zip", [False, True])
def test_both_torch_formats_read_views_offsets_and_scalars(tmp_path, monkeypatch, use_zip):
    base = np.arange(12, dtype=np.float32)
    storages = {"0": base, "1": np.array([7], np.int64)}
    tensors = {
        "matrix": ("0", 0, (3, 4), (4, 1)),
        "transposed": ("0", 0, (4, 3), (1, 4)),  # a strided view of the same storage
        "tail": ("0", 10, (2,), (1,)),
        "count": ("1", 0, (), ()),
    }
    path = tmp_path / "w.pth"
    _write_torch_file(path, tensors, storages, use_zip, monkeypatch)
    monkeypatch.delitem(sys.modules, "torch")  # the reader must not need torch
    state = inception_weights.read_torch_state_dict(path)
    assert list(state) == list(tensors)
    np.testing.assert_array_equal(state["matrix"], base.reshape(3, 4))
    np.testing.assert_array_equal(state["transposed"], base.reshape(3, 4).T)
    np.testing.assert_array_equal(state["tail"], [10.0, 11.0])
    assert state["count"].shape == () and state["count"] == 7


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    out = io.BytesIO()
    for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
        pickle.dump(header, out, protocol=2)
    pickle.dump(collections.OrderedDict(x=print), out, protocol=2)  # a global outside the list
    path.write_bytes(out.getvalue())
    with pytest.raises(inception_weights.InceptionWeightsError, match="unsupported global"):
        inception_weights.read_torch_state_dict(path)


# ----------------------------------------------------------------------------- locating
def test_offline_without_cached_weights_says_where_to_put_the_file(tmp_path, monkeypatch):
    cache = tmp_path / "no_cache_here"
    monkeypatch.setenv("FACEGAN_CACHE", str(cache))

    def offline(url, dest):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(inception_weights, "_download", offline)
    with pytest.raises(inception_weights.InceptionWeightsUnavailableError) as err:
        inception_weights.load_inception_params(None)
    message = str(err.value)
    assert str(cache / inception_weights.FID_WEIGHTS_FILENAME) in message
    assert inception_weights.FID_WEIGHTS_URL in message
    assert not list(cache.glob("*.partial"))


def test_cached_weights_are_used_without_download(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEGAN_CACHE", str(tmp_path))
    (tmp_path / inception_weights.FID_WEIGHTS_FILENAME).write_bytes(b"x")
    monkeypatch.setattr(inception_weights, "_download", lambda url, dest: pytest.fail("downloaded"))
    assert (
        inception_weights.resolve_weights_path(None)
        == tmp_path / inception_weights.FID_WEIGHTS_FILENAME
    )


def test_download_with_wrong_hash_is_rejected_and_not_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEGAN_CACHE", str(tmp_path))
    monkeypatch.setattr(
        inception_weights, "_download", lambda url, dest: dest.write_bytes(b"html page")
    )
    with pytest.raises(inception_weights.InceptionWeightsError, match="sha256"):
        inception_weights.resolve_weights_path(None)
    assert list(tmp_path.iterdir()) == []


def test_explicit_missing_path_is_named(tmp_path):
    with pytest.raises(inception_weights.InceptionWeightsUnavailableError, match="nope.pth"):
        inception_weights.load_inception_params(tmp_path / "nope.pth")


# ----------------------------------------------------------------------------- numerics
def test_resize_matches_torch_bilinear(inception_expected):
    images = jnp.asarray(inception_expected["images_uint8"][:2], jnp.float32) / 255.0
    resized = jax.jit(inception.resize_to_inception)(images)
    np.testing.assert_allclose(
        np.asarray(resized), inception_expected["resized_299"], atol=1e-5, rtol=0
    )


def test_resize_matrix_rows_are_convex_and_same_size_is_identity():
    m = inception.bilinear_resize_matrix(64, 299)
    np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-6)
    assert m.min() >= 0 and m[0, 0] == 1.0 and m[-1, -1] == 1.0  # edges clamp, no zero padding
    np.testing.assert_array_equal(inception.bilinear_resize_matrix(7, 7), np.eye(7))


def test_avg_pool_excludes_padding():
    x = jnp.arange(16, dtype=jnp.float32).reshape(1, 4, 4, 1)
    pooled = np.asarray(inception._avg_pool_3x3_exclude_pad(x))[0, :, :, 0]
    assert pooled[0, 0] == pytest.approx(np.mean([0, 1, 4, 5]))  # 4 in-image taps, not 9
    assert pooled[1, 1] == pytest.approx(np.mean([0, 1, 2, 4, 5, 6, 8, 9, 10]))
    assert pooled[3, 1] == pytest.approx(np.mean([8, 9, 10, 12, 13, 14]))


def test_blocks_and_pool3_match_pytorch_fid(inception_params, inception_expected, forward):
    images = jnp.asarray(inception_expected["images_uint8"], jnp.float32) / 255.0  # [8, 64, 64, 3]
    out = forward(inception_params, images)
    for name in ("block0", "block1", "block2"):
        got = np.asarray(out[name][:2])
        assert got.shape == inception_expected[name].shape
        np.testing.assert_allclose(got, inception_expected[name], atol=1e-4, rtol=0, err_msg=name)
    np.testing.assert_allclose(
        np.asarray(out["pool3"]), inception_expected["pool3"], atol=1e-4, rtol=0
    )
    assert (
        np.abs(inception_expected["pool3"]).max() > 0.1
    )  # the comparison is not trivially about zeros


def test_batch_of_one_agrees_with_batch_of_eight(inception_params, inception_expected, forward):
    images = jnp.asarray(inception_expected["images_uint8"], jnp.float32) / 255.0
    batch8 = np.asarray(forward(inception_params, images)["pool3"])
    single = jax.jit(inception.pool3_features)
    for i in (0, 7):
        feats = single(inception_params, images[i : i + 1])
        assert feats.shape == (1, 2048) and feats.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(feats[0]), batch8[i], atol=1e-5, rtol=0)
        np.testing.assert_allclose(
            np.asarray(feats[0]), inception_expected["pool3"][i], atol=1e-4, rtol=0
        )
