"""The sampling CLI: seed ranges, truncation, interpolation walks, attribute values and edits,
fitting latent directions; bad input is one line on stderr and exit status 2."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from configs import acgan64
from facegan_jax import workdir as workdir_lib
from facegan_jax.cli import sample
from facegan_jax.data.celeba_attributes import CELEBA_ATTRIBUTES, NUM_ATTRIBUTES, attribute_index
from facegan_jax.generation import editing, sampling
from facegan_jax.metrics import attributes
from facegan_jax.training import components
from tests.helpers import make_workdir, tiny_config

SMILING = attribute_index("Smiling")
EYEGLASSES = attribute_index("Eyeglasses")


@pytest.fixture(scope="module")
def dc_workdir(tmp_path_factory) -> str:
    return make_workdir(tmp_path_factory.mktemp("dc") / "run", tiny_config())


@pytest.fixture(scope="module")
def ac_workdir(tmp_path_factory) -> str:
    pool = (np.random.default_rng(0).random((20, NUM_ATTRIBUTES)) < 0.4).astype(np.float32)
    return make_workdir(tmp_path_factory.mktemp("ac") / "run", acgan64.get_config("runlocal"), pool)


def _png(path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = sample.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_seed_ranges_truncation_and_interpolation_walk(dc_workdir, tmp_path, capsys):
    seeds_dir, t0_dir, frames_dir = tmp_path / "seeds", tmp_path / "t0", tmp_path / "frames"
    rc, out, _ = _run(
        capsys,
        "--workdir",
        dc_workdir,
        "--seeds",
        "3,17-17,40-42",
        "--out-dir",
        seeds_dir,
        "--out",
        tmp_path / "grid.png",
        "--batch-size",
        "2",
    )
    assert rc == 0 and "wrote 5 samples" in out
    assert sorted(os.listdir(seeds_dir)) == [f"seed_{s:05d}.png" for s in (3, 17, 40, 41, 42)]
    assert _png(tmp_path / "grid.png").shape == (2 + 2 * 34, 2 + 3 * 34, 3)

    # Truncation 0: the mean-latent image for every seed.
    rc, _, _ = _run(
        capsys, "--workdir", dc_workdir, "--seeds", "0-2", "--truncation", "0", "--out-dir", t0_dir
    )
    assert rc == 0
    t0 = [_png(t0_dir / f"seed_{s:05d}.png") for s in range(3)]
    np.testing.assert_array_equal(t0[0], t0[1])
    np.testing.assert_array_equal(t0[0], t0[2])

    # A walk 3 -> 17 -> 42: its keyframes are the seeds' own images, bit for bit.
    rc, out, _ = _run(
        capsys,
        "--workdir",
        dc_workdir,
        "--interpolate",
        "3,17,42",
        "--frames",
        "9",
        "--out",
        tmp_path / "walk.gif",
        "--out-dir",
        frames_dir,
        "--batch-size",
        "4",
    )
    assert rc == 0 and "9-frame slerp walk through seeds 3,17,42" in out
    frames = sorted(os.listdir(frames_dir))
    assert len(frames) == 9
    for frame, seed in ((0, 3), (4, 17), (8, 42)):
        np.testing.assert_array_equal(
            _png(frames_dir / frames[frame]), _png(seeds_dir / f"seed_{seed:05d}.png")
        )
    assert not np.array_equal(_png(frames_dir / frames[1]), _png(frames_dir / frames[0]))
    with Image.open(tmp_path / "walk.gif") as gif:
        assert gif.n_frames == 9 and gif.size == (32, 32) and gif.info["loop"] == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--seeds", "0-63,a-b,7"], "'a-b' is not a seed or a range"),
        (["--seeds", "10-3"], "the range '10-3' ends before it starts"),
        (["--interpolate", "1,2", "--out", "walk.avi"], "as .gif or .mp4"),
        (["--interpolate", "1,2,3", "--frames", "2", "--out", "w.gif"], "--frames=2 must be"),
        (["--seeds", "0", "--edit", "Eyeglases"], "did you mean Eyeglasses"),
        (["--seeds", "0", "--edit", "Smiling", "--strength", "-3:x:7"], "--strength='-3:x:7'"),
        (["--seeds", "0", "--attrs", "Smiling=1"], "unconditional: --attrs"),
        (["--seeds", "0", "--edit", "Eyeglasses"], "directions.npz not found: fit"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(dc_workdir, tmp_path, capsys, args, message):
    rc, _, err = _run(capsys, "--workdir", dc_workdir, *args, "--out-dir", tmp_path / "o")
    assert rc == 2
    assert err.startswith("sample: error: ") and err.count("\n") == 1 and message in err
    assert "Traceback" not in err and not (tmp_path / "o").exists()


def test_mp4_without_imageio_ffmpeg_says_what_to_install(dc_workdir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sampling, "_has_module", lambda name: name != "imageio_ffmpeg")
    out = tmp_path / "walk.mp4"
    rc, _, err = _run(capsys, "--workdir", dc_workdir, "--interpolate", "1,2", "--out", out)
    assert rc == 2 and "writing MP4 needs imageio-ffmpeg; pip install imageio-ffmpeg" in err
    assert not out.exists()


def _seeded_inputs(workdir, n):
    """(generate, variables, seeds 0..n-1, their pool vectors, their latents) of a workdir."""
    generate, variables, _ = components.load_generator(workdir)
    seeds = np.arange(n)
    return (
        generate,
        variables,
        seeds,
        np.asarray(generate.attributes(seeds)),
        np.asarray(generate.latents(seeds)),
    )


def test_attrs_apply_on_top_of_pool_vectors_and_edit_changes_only_that_input(
    ac_workdir, tmp_path, capsys, monkeypatch
):
    generate, variables, seeds, pool_vectors, z = _seeded_inputs(ac_workdir, 3)

    # --attrs: real vectors with the requested values on top.
    seeds_flags = ["--workdir", ac_workdir, "--seeds", "0-2"]
    attrs_flags = ["--attrs", "Smiling=1,Eyeglasses=0", "--out-dir", tmp_path / "attrs"]
    rc, _, _ = _run(capsys, *seeds_flags, *attrs_flags)
    assert rc == 0
    # What contradicts the asked values in the pool vectors is resolved (the default).
    asked = sampling.apply_attribute_values(pool_vectors, {SMILING: 1.0, EYEGLASSES: 0.0})
    expected_vectors = sampling.consistent_attributes(asked, (SMILING, EYEGLASSES), generate.pool)
    expected = sampling.to_uint8(
        sampling.generate_latents_in_batches(generate, variables, z, 3, expected_vectors)
    )
    for i in seeds:
        np.testing.assert_array_equal(_png(tmp_path / "attrs" / f"seed_{i:05d}.png"), expected[i])

    # Consistent requests (the default) do resolve: an attribute whose request contradicts
    # these seeds' pool vectors gets the resolved vectors; --consistent-requests 0 the raw ones.
    def vectors(index, rate):
        raw = sampling.apply_attribute_values(pool_vectors, {index: 1.0})
        return raw, sampling.consistent_attributes(raw, [index], generate.pool, rate)

    index = next(a for a in range(NUM_ATTRIBUTES) if (np.not_equal(*vectors(a, 0.02))).any())
    raw, resolved = vectors(index, 0.02)
    for rate, want in ((None, resolved), (0, raw)):
        flags = ["--attrs", f"{CELEBA_ATTRIBUTES[index]}=1", "--out-dir", tmp_path / f"c{rate}"]
        flags += [] if rate is None else ["--consistent-requests", str(rate)]
        rc, _, _ = _run(capsys, *seeds_flags, *flags)
        images = sampling.to_uint8(
            sampling.generate_latents_in_batches(generate, variables, z, 3, want)
        )
        assert rc == 0
        for i in seeds:
            np.testing.assert_array_equal(
                _png(tmp_path / f"c{rate}" / f"seed_{i:05d}.png"), images[i]
            )
    seed = int(np.nonzero((raw != resolved).any(axis=1))[0][0])
    assert not np.array_equal(
        _png(tmp_path / "cNone" / f"seed_{seed:05d}.png"),
        _png(tmp_path / "c0" / f"seed_{seed:05d}.png"),
    )
    # The older --attributes A,B means A=1,B=1, also on top of the pool vectors.
    rc, _, _ = _run(capsys, *seeds_flags, "--attributes", "Smiling", "--out-dir", tmp_path / "old")
    on = sampling.to_uint8(
        sampling.generate_latents_in_batches(
            generate,
            variables,
            z,
            3,
            sampling.consistent_attributes(
                sampling.apply_attribute_values(pool_vectors, {SMILING: 1.0}),
                [SMILING],
                generate.pool,
            ),
        )
    )
    assert rc == 0
    np.testing.assert_array_equal(_png(tmp_path / "old" / "seed_00001.png"), on[1])

    # --edit: record what reaches the generator.
    calls = []
    real = sampling.generate_latents_in_batches

    def spy(gen, variables, z, batch_size, attrs=None):
        calls.append((np.array(z), np.array(attrs)))
        return real(gen, variables, z, batch_size, attrs)

    monkeypatch.setattr(sampling, "generate_latents_in_batches", spy)
    rc, out, _ = _run(
        capsys,
        "--workdir",
        ac_workdir,
        "--seeds",
        "0-2",
        "--edit",
        "Smiling",
        "--out",
        tmp_path / "edit.png",
        "--out-dir",
        tmp_path / "edit",
    )
    assert rc == 0 and "wrote 6 Smiling edits (3 seeds x 2)" in out
    ((zs, attrs),) = calls
    zs, attrs = zs.reshape(3, 2, -1), attrs.reshape(3, 2, NUM_ATTRIBUTES)
    for i in seeds:
        np.testing.assert_array_equal(zs[i, 0], z[i])
        np.testing.assert_array_equal(zs[i, 1], z[i])
        assert attrs[i, 0, SMILING] == 0 and attrs[i, 1, SMILING] == 1
        for col in (0, 1):  # every other input is the seed's real vector
            np.testing.assert_array_equal(
                np.delete(attrs[i, col], SMILING), np.delete(pool_vectors[i], SMILING)
            )
        # The column that matches the real vector's own value is the plain sample.
        own = int(pool_vectors[i, SMILING])
        name = f"seed_{i:05d}_Smiling_{float(own):+.2f}.png"
        plain = sampling.to_uint8(
            real(generate, variables, z[i : i + 1], 1, pool_vectors[i : i + 1])
        )
        np.testing.assert_array_equal(_png(tmp_path / "edit" / name), plain[0])
    assert _png(tmp_path / "edit.png").shape[1] == 2 + 2 * 34  # two columns

    rc, _, err = _run(
        capsys,
        "--workdir",
        ac_workdir,
        "--edit",
        "Smiling",
        "--strength",
        "-1:1:3",
        "--out",
        tmp_path / "x.png",
    )
    assert rc == 2 and "attribute input is in [0, 1]" in err
    rc, _, err = _run(capsys, "--workdir", ac_workdir, "--fit-directions", "--classifier", "c")
    assert rc == 2 and "conditional" in err


def _median_classifier(workdir: str, folder: Path, num: int) -> str:
    """An untrained classifier whose Eyeglasses threshold splits the fitting samples in half.

    Every other attribute's threshold is out of reach, so only Eyeglasses gets a direction.
    """
    generate, variables, _ = components.load_generator(workdir)
    clf = attributes.Classifier(
        image_size=32,
        widths=attributes.default_widths(32),
        feature_dim=32,
        params=attributes.init_params(attributes.default_widths(32), 32, 32, seed=3),
    )
    z = np.asarray(sampling.latents(editing.FIT_SEED, np.arange(num), generate.z_dim))
    images = sampling.generate_latents_in_batches(generate.as_batched(), variables, z, 64)
    logits = clf.logits(images)
    clf.threshold_logits = np.full(NUM_ATTRIBUTES, 1e6)
    clf.threshold_logits[EYEGLASSES] = np.median(logits[:, EYEGLASSES])
    clf.save(folder)
    return str(folder)


def test_fit_directions_then_walk_an_unconditional_generator(dc_workdir, tmp_path, capsys):
    try:
        _fit_and_walk(dc_workdir, tmp_path, capsys)
    finally:  # the shared workdir goes back to having no directions
        Path(workdir_lib.directions_path(dc_workdir)).unlink(missing_ok=True)


def _fit_and_walk(dc_workdir, tmp_path, capsys):
    classifier = _median_classifier(dc_workdir, tmp_path / "clf", 200)
    rc, out, _ = _run(
        capsys,
        "--workdir",
        dc_workdir,
        "--fit-directions",
        "--classifier",
        classifier,
        "--num",
        "200",
    )
    assert rc == 0 and "1 directions from 200 samples" in out and "Eyeglasses" in out
    directions = editing.load_directions(workdir_lib.directions_path(dc_workdir))
    assert directions.fitted() == ("Eyeglasses",) and directions.positives[EYEGLASSES] == 100

    rc, out, _ = _run(
        capsys,
        "--workdir",
        dc_workdir,
        "--seeds",
        "5,6",
        "--edit",
        "Eyeglasses",
        "--strength",
        "-2:2:5",
        "--out",
        tmp_path / "walk.png",
        "--out-dir",
        tmp_path / "walk",
    )
    assert rc == 0 and "Eyeglasses direction: boundary balanced accuracy" in out
    assert "Eyeglasses probability along the edit (mean of 2 seed(s)" in out  # recorded classifier
    assert _png(tmp_path / "walk.png").shape[1] == 2 + 5 * 34
    rc, _, _ = _run(capsys, "--workdir", dc_workdir, "--seeds", "5", "--out-dir", tmp_path / "s")
    np.testing.assert_array_equal(  # strength 0 is the seed's own image
        _png(tmp_path / "walk" / "seed_00005_Eyeglasses_+0.00.png"),
        _png(tmp_path / "s" / "seed_00005.png"),
    )
    rc, _, err = _run(capsys, "--workdir", dc_workdir, "--edit", "Smiling", "--out", "x.png")
    assert rc == 2 and "no direction for Smiling" in err


def test_attribute_grid_rows_are_each_attribute_off_then_on_columns_the_seeds(
    ac_workdir, dc_workdir, tmp_path, capsys
):
    generate, variables, seeds, pool_vectors, z = _seeded_inputs(ac_workdir, 3)
    rc, out, _ = _run(
        capsys, "--workdir", ac_workdir, "--seeds", "0-2",
        "--attribute-grid", "Smiling,Eyeglasses", "--out-dir", tmp_path / "grid",
        "--out", tmp_path / "grid.png",
    )  # fmt: skip
    assert rc == 0 and "2 attributes off/on x 3 seeds" in out
    for name, index in (("Smiling", SMILING), ("Eyeglasses", EYEGLASSES)):
        for value, label in ((0.0, "off"), (1.0, "on")):
            vectors = pool_vectors.copy()
            vectors[:, index] = value  # that attribute and what contradicts it differ
            vectors = sampling.consistent_attributes(vectors, [index], generate.pool)
            expected = sampling.to_uint8(
                sampling.generate_latents_in_batches(generate, variables, z, 3, vectors)
            )
            for i in seeds:
                got = _png(tmp_path / "grid" / f"{name}_{label}_seed_{i:05d}.png")
                np.testing.assert_array_equal(got, expected[i])
    # The grid: 4 rows (Smiling off, on, Eyeglasses off, on) of 3 columns.
    grid = _png(tmp_path / "grid.png")
    assert grid.shape[0] > grid.shape[1]  # 4 rows of 3

    # A row whose requests contradict these seeds' pool vectors draws the resolved ones.
    def row(index, value):
        raw = pool_vectors.copy()
        raw[:, index] = value
        return raw, sampling.consistent_attributes(raw, [index], generate.pool)

    index = next(
        a for a in range(NUM_ATTRIBUTES) if any(np.not_equal(*row(a, v)).any() for v in (0, 1))
    )
    name = CELEBA_ATTRIBUTES[index]
    flags = ["--attribute-grid", name, "--out-dir", tmp_path / "grid2"]
    assert _run(capsys, "--workdir", ac_workdir, "--seeds", "0-2", *flags)[0] == 0
    differs = False
    for value, label in ((0.0, "off"), (1.0, "on")):
        raw, resolved = row(index, value)
        images = [
            sampling.to_uint8(sampling.generate_latents_in_batches(generate, variables, z, 3, v))
            for v in (resolved, raw)
        ]
        for i in seeds:
            got = _png(tmp_path / "grid2" / f"{name}_{label}_seed_{i:05d}.png")
            np.testing.assert_array_equal(got, images[0][i])
            differs |= not np.array_equal(got, images[1][i])
    assert differs  # the raw pool vectors would have drawn another image
    rc, _, err = _run(
        capsys, "--workdir", dc_workdir, "--attribute-grid", "Smiling", "--out", tmp_path / "x.png"
    )
    assert rc == 2 and "unconditional: --attribute-grid needs a conditional model" in err
