"""Tests of FID/KID: distances and statistics (fid), generators in the graph and the
weights loader of the training hook (evaluation), the command line (fid_cli)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from facegan_jax.cli import fid as fid_cli
from facegan_jax.metrics import evaluation, fid
from facegan_jax.metrics import inception_weights as weights_lib
from tests.conftest import REPO_ROOT
from tests.helpers import run_python


# ----------------------------------------------------------------------------- distances
def test_frechet_distance_matches_pytorch_fid(inception_expected):
    value = fid.frechet_distance(
        inception_expected["fd_mu1"],
        inception_expected["fd_sigma1"],
        inception_expected["fd_mu2"],
        inception_expected["fd_sigma2"],
    )
    assert value == pytest.approx(float(inception_expected["fd_expected"]), rel=1e-6)


def test_frechet_distance_of_diagonal_gaussians_has_the_closed_form():
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.0])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert fid.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(want, rel=1e-12)


def test_frechet_distance_is_finite_with_fewer_samples_than_dimensions():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(10, 64)), rng.normal(size=(12, 64)) + 0.5
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)  # ranks 9 and 11 of 64
    value = fid.frechet_distance(x.mean(0), s1, y.mean(0), s2)
    assert np.isfinite(value) and value > 0
    same = fid.frechet_distance(x.mean(0), s1, x.mean(0), s1)
    assert abs(same) < 1e-6 * np.trace(s1)


def test_frechet_distance_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="do not match"):
        fid.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_kid_is_the_unbiased_polynomial_mmd():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(20, 8)), rng.normal(size=(20, 8)) + 1.0
    k = lambda a, b: (a @ b / 8 + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(20) for j in range(20) if i != j) / (20 * 19)
    yy = sum(k(y[i], y[j]) for i in range(20) for j in range(20) if i != j) / (20 * 19)
    xy = sum(k(x[i], y[j]) for i in range(20) for j in range(20)) / 400
    # One subset of all rows is a permutation of each set: the estimate is exact.
    mean, std = fid.kid(x, y, num_subsets=1, subset_size=100)
    assert mean == pytest.approx(xx + yy - 2 * xy, rel=1e-10) and std == 0.0
    a, b = rng.normal(size=(2, 300, 8))
    same, _ = fid.kid(a, b, num_subsets=10, subset_size=200)
    shifted, _ = fid.kid(a, b + 1.0, num_subsets=10, subset_size=200)
    assert abs(same) < 0.02 * shifted and shifted > 0.5


def test_kid_precomputed_kernels_equal_per_subset_kernels(monkeypatch):
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(50, 8)), rng.normal(size=(40, 8)) + 0.3
    full = fid.kid(x, y, num_subsets=5, subset_size=30, seed=7)
    monkeypatch.setattr(fid, "_KID_FULL_KERNEL_MAX", 0)
    per_subset = fid.kid(x, y, num_subsets=5, subset_size=30, seed=7)
    np.testing.assert_allclose(full, per_subset, rtol=1e-10)


# ----------------------------------------------------------------------------- statistics
def test_streaming_stats_match_np_cov_with_padded_batches():
    rng = np.random.default_rng(2)
    # A large common offset makes naive float32 sum-of-squares lose most digits.
    x = (rng.normal(size=(1000, 24)) * 0.3 + 20.0).astype(np.float32)
    acc = fid.StatsAccumulator()
    for start in range(0, 1000, 64):
        batch = np.zeros((64, 24), np.float32)  # padded rows hold junk the mask must drop
        batch[:] = 1e3
        rows = x[start : start + 64]
        batch[: len(rows)] = rows
        acc.update(jnp.asarray(batch), len(rows))
    mu, sigma, n = acc.result()
    ref = np.cov(x.astype(np.float64), rowvar=False)
    assert n == 1000
    np.testing.assert_allclose(mu, x.astype(np.float64).mean(0), rtol=1e-6)
    assert np.abs(sigma - ref).max() / np.abs(ref).max() < 1e-4
    np.testing.assert_allclose(np.diag(sigma), np.diag(ref), rtol=1e-4)


def test_stats_need_two_samples():
    acc = fid.StatsAccumulator()
    acc.update(jnp.ones((4, 3)), 1)
    with pytest.raises(ValueError, match="at least 2"):
        acc.result()


def test_to_unit_range_quantises_like_a_png_and_tiles_greyscale():
    x = jnp.asarray([-1.0, -0.999, 0.0, 0.5, 1.0, 1.2]).reshape(1, 1, 6, 1)
    out = np.asarray(fid.to_unit_range(x))
    assert out.shape == (1, 1, 6, 3)
    np.testing.assert_allclose(out[0, 0, :, 0] * 255, [0, 0, 128, 191, 255, 255], atol=1e-4)
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    raw = np.asarray(fid.to_unit_range(x, quantize=False))[0, 0, :, 0]
    np.testing.assert_allclose(raw, [0.0, 0.0005, 0.5, 0.75, 1.0, 1.0], atol=1e-6)
    u8 = np.asarray(fid.to_unit_range(jnp.asarray([[[[0, 128, 255]]]], jnp.uint8)))
    np.testing.assert_allclose(u8[0, 0, 0], [0.0, 128 / 255, 1.0])


def test_fixed_batches_rechunk_and_pad():
    batches = [np.ones((3, 2)), {"image": 2 * np.ones((4, 2))}]
    out = list(fid._fixed_batches(batches, 5))
    assert [(b.shape, v) for b, v in out] == [((5, 2), 5), ((5, 2), 2)]
    np.testing.assert_array_equal(out[1][0][:, 0], [2, 2, 0, 0, 0])


# ----------------------------------------------------------------------------- in the graph
def _bank_generator(inception_expected):
    """A "generator" returning the fixture images in [-1, 1] by index (mod 8).

    After PNG quantisation the network sees exactly pytorch-fid's input, so its
    features must equal pytorch-fid's.
    """
    bank = jnp.asarray(inception_expected["images_uint8"], jnp.float32) / 127.5 - 1.0

    def generate(variables, indices):
        return variables["bank"][indices % 8]  # [B, 64, 64, 3]

    return generate, {"bank": bank}


def test_generator_features_fn_is_built_once_per_generate_quantize_and_mesh(inception_expected):
    generate, _ = _bank_generator(inception_expected)
    features_fn = fid.generator_features_fn(generate, True, None)
    assert fid.generator_features_fn(generate, True, None) is features_fn
    assert fid.generator_features_fn(generate, False, None) is not features_fn


def test_fused_generator_features_match_pytorch_fid_and_padded_rows_do_not_count(
    inception_params, inception_expected
):
    generate, variables = _bank_generator(inception_expected)
    features_fn = fid.generator_features_fn(generate, True, None)
    feats = features_fn(variables, inception_params, jnp.asarray([5, 2], jnp.int32))
    np.testing.assert_allclose(
        np.asarray(feats), inception_expected["pool3"][[5, 2]], atol=1e-4, rtol=0
    )

    real = inception_expected["pool3"]
    mu, sigma = real.mean(0), np.cov(real, rowvar=False)
    # 3 samples in batches of 2: the padded 4th row must not count.
    result = evaluation.evaluate_generator(
        generate,
        variables,
        inception_params,
        num_samples=3,
        batch_size=2,
        reference=(mu, sigma),
        real_features=real,
        features_fn=features_fn,
    )
    gen = real[:3]
    want = fid.frechet_distance(gen.mean(0), np.cov(gen, rowvar=False), mu, sigma)
    assert result["fid"] == pytest.approx(want, rel=1e-3, abs=1e-4)
    assert result["kid"] == pytest.approx(fid.kid(gen, real)[0], abs=1e-4)


_TWO_DEVICE_SCRIPT = textwrap.dedent(
    """
    import sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, PartitionSpec
    from facegan_jax import runtime
    runtime.setup(tensorflow=False)
    from facegan_jax.metrics import evaluation, fid
    from facegan_jax.metrics import inception_weights as weights_lib

    assert len(jax.devices()) == 2, jax.devices()
    fixture = sys.argv[1]
    params = weights_lib.load_inception_params(fixture + "/fixture_inception_seed0.pth")
    with np.load(fixture + "/fixture_expected_seed0.npz") as f:
        images, real = f["images_uint8"], f["pool3"]
    variables = {"bank": jnp.asarray(images, jnp.float32) / 127.5 - 1.0}
    generate = lambda v, indices: v["bank"][indices % 8]
    mesh = Mesh(np.asarray(jax.devices()), ("data",))
    features_fn = fid.generator_features_fn(generate, True, mesh)
    feats = features_fn(variables, params, jnp.asarray([5, 2], jnp.int32))
    assert feats.sharding.spec == PartitionSpec("data"), feats.sharding
    assert len(feats.sharding.device_set) == 2, feats.sharding
    np.testing.assert_allclose(np.asarray(feats), real[[5, 2]], atol=1e-4, rtol=0)
    # batch_size 1 is rounded up to 2 (one row per device); 3 samples pad a 4th row,
    # which must not count.
    mu, sigma, n, kept = evaluation.generator_stats(
        generate, variables, params, num_samples=3, batch_size=1, mesh=mesh,
        features_fn=features_fn, keep_features=True)
    gen = real[:3].astype(np.float64)
    assert n == 3 and kept.shape == (3, 2048), (n, kept.shape)
    np.testing.assert_allclose(kept, real[:3], atol=1e-4, rtol=0)
    np.testing.assert_allclose(mu, gen.mean(0), atol=1e-4, rtol=0)
    np.testing.assert_allclose(sigma, np.cov(gen, rowvar=False), atol=1e-4, rtol=0)
    print("TWO_DEVICE_FID_OK")
    """
)


def test_two_device_mesh_shards_generator_features_and_stats_match_pytorch_fid(
    inception_fixture_dir,
):
    # The suite runs with one in-process CPU device (conftest.py): two fake devices
    # need their own process.
    out = run_python(["-c", _TWO_DEVICE_SCRIPT, str(inception_fixture_dir)], num_devices=2)
    assert "TWO_DEVICE_FID_OK" in out


def test_try_load_inception_returns_none_with_one_warning_per_unusable_file(tmp_path, monkeypatch):
    warnings = []
    monkeypatch.setattr(evaluation.logging, "warning", lambda *a: warnings.append(a))
    assert evaluation.try_load_inception(str(tmp_path / "missing.pth")) is None
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x00" * 100)
    assert evaluation.try_load_inception(str(bad)) is None
    assert len(warnings) == 2 and "missing.pth" in str(warnings[0])


# ----------------------------------------------------------------------------- statistics files
def test_load_stats_reads_save_stats_and_names_a_file_without_sigma(tmp_path):
    mu, sigma = np.arange(3.0), np.eye(3)
    fid.save_stats(tmp_path / "s.npz", mu, sigma, n=3)
    got_mu, got_sigma = fid.load_stats(tmp_path / "s.npz")
    np.testing.assert_array_equal(got_mu, mu)
    np.testing.assert_array_equal(got_sigma, sigma)
    np.savez(tmp_path / "mu_only.npz", mu=mu)
    with pytest.raises(ValueError, match="mu_only.npz.*'sigma'"):
        fid.load_stats(tmp_path / "mu_only.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="junk.npz: cannot read statistics"):
        fid.load_stats(tmp_path / "junk.npz")


# ----------------------------------------------------------------------------- CLI
def _write_pngs(folder, images):
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:03d}.png")


def test_save_stats_over_png_folder_matches_pool3_statistics(
    tmp_path, inception_weights, inception_expected
):
    _write_pngs(tmp_path / "imgs", inception_expected["images_uint8"])
    out = tmp_path / "stats.npz"
    args = ["--save-stats", str(tmp_path / "imgs"), str(out), "--weights", inception_weights]
    assert fid_cli.main([*args, "--batch-size", "8"]) == 0
    with np.load(out) as f:
        np.testing.assert_allclose(f["mu"], inception_expected["pool3"].mean(0), atol=1e-4, rtol=0)
        ref = np.cov(inception_expected["pool3"].astype(np.float64), rowvar=False)
        np.testing.assert_allclose(f["sigma"], ref, atol=1e-4, rtol=0)
        assert int(f["n"]) == 8 and list(f["resolution"]) == [64, 64] and str(f["crop"]) == "none"
        assert str(f["weights_sha256"]) == weights_lib.file_sha256(inception_weights)
        assert str(f["source"]) == str(tmp_path / "imgs")


def test_cli_prints_fid_between_statistics_files(tmp_path, inception_expected, capsys):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    fid.save_stats(a, inception_expected["fd_mu1"], inception_expected["fd_sigma1"])
    fid.save_stats(b, inception_expected["fd_mu2"], inception_expected["fd_sigma2"])
    assert fid_cli.main([str(a), str(b)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("FID: ")
    assert float(line.split()[1]) == pytest.approx(
        float(inception_expected["fd_expected"]), rel=1e-6
    )


def test_python_m_facegan_jax_fid_still_runs_the_cli(tmp_path, inception_expected):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    fid.save_stats(a, inception_expected["fd_mu1"], inception_expected["fd_sigma1"])
    fid.save_stats(b, inception_expected["fd_mu2"], inception_expected["fd_sigma2"])
    proc = subprocess.run(
        [sys.executable, "-m", "facegan_jax.fid", str(a), str(b)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    value = float(proc.stdout.strip().splitlines()[-1].removeprefix("FID: "))
    assert value == pytest.approx(float(inception_expected["fd_expected"]), rel=1e-6)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("fid: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


def test_folder_errors_name_the_file(tmp_path, inception_weights, capsys):
    folder = tmp_path / "mixed"
    _write_pngs(folder, [np.zeros((8, 8, 3), np.uint8), np.zeros((9, 8, 3), np.uint8)])
    assert fid_cli.main([str(folder), str(folder), "--weights", inception_weights]) == 2
    assert "001.png" in _one_line_error(capsys)
    (folder / "001.png").write_bytes(b"not a png")
    assert fid_cli.main([str(folder), str(folder), "--weights", inception_weights]) == 2
    err = _one_line_error(capsys)
    assert "001.png" in err and "cannot read" in err


@pytest.mark.parametrize(
    "case, hint",
    [
        ("missing_folder", "does not exist"),
        ("empty_folder", "no image files"),
        ("not_a_workdir", "no config.json"),
        ("not_npz_file", "not an .npz"),
        ("truncated_weights", "download it again"),
        ("existing_output", "already exists"),
    ],
)
def test_bad_input_is_one_error_line_naming_the_path_with_exit_code_2(
    tmp_path, inception_fixture_dir, inception_expected, capsys, case, hint
):
    images = tmp_path / "imgs"
    _write_pngs(images, inception_expected["images_uint8"][:2])
    stats = tmp_path / "s.npz"
    fid.save_stats(stats, inception_expected["fd_mu1"], inception_expected["fd_sigma1"])
    weights = str(inception_fixture_dir / "fixture_inception_seed0.pth")
    named = {
        "missing_folder": tmp_path / "nowhere",
        "empty_folder": tmp_path / "empty",
        "not_a_workdir": tmp_path / "other",
        "not_npz_file": tmp_path / "notes.txt",
        "truncated_weights": inception_fixture_dir / "real_weights_truncated.pth",
        "existing_output": stats,
    }[case]
    (tmp_path / "empty").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "readme.txt").write_text("no images here")
    (tmp_path / "notes.txt").write_text("hello")
    if case == "truncated_weights":
        argv = [str(images), str(stats), "--weights", str(named)]
    elif case == "existing_output":
        argv = ["--save-stats", str(images), str(stats), "--weights", weights]
    else:
        argv = [str(named), str(stats), "--weights", weights]
    assert fid_cli.main(argv) == 2
    err = _one_line_error(capsys)
    assert str(named) in err and hint in err


def test_workdir_source_without_checkpoint_is_one_error_line_with_exit_code_2(
    tmp_path, inception_weights, inception_expected, capsys
):
    from facegan_jax import workdir as workdir_lib
    from tests.helpers import tiny_config

    run = tmp_path / "run"
    workdir_lib.write_config(run, tiny_config())  # a workdir whose training never saved
    stats = tmp_path / "s.npz"
    fid.save_stats(stats, inception_expected["fd_mu1"], inception_expected["fd_sigma1"])
    assert fid_cli.main([str(run), str(stats), "--weights", inception_weights]) == 2
    err = _one_line_error(capsys)
    assert "no checkpoint" in err and str(run) in err
