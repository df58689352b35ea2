"""The memorisation check: nearest-neighbour maths, and the report command end to end.

A "generator" that returns training images verbatim must be flagged (fraction
of samples closer to a training image than any held-out image ~ 1); one that
returns real held-out images must not be (fraction ~ 1 / (M + 1)).
"""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest  # noqa: F401  (absl logging handler for captured logs)

from facegan_jax import workdir as workdir_lib
from facegan_jax.cli import report as report_cli
from facegan_jax.data import input_pipeline
from facegan_jax.metrics import memorization as mem
from facegan_jax.report import run_report as report
from facegan_jax.training import components
from tests.helpers import tiny_config, untrained_classifier

FEATURE_DIM = 32


def _features(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, FEATURE_DIM))


# ----------------------------------------------------------------------------- maths
@pytest.mark.parametrize("k,chunk", [(1, 1024), (3, 7), (5, 64)])
def test_nearest_neighbours_match_brute_force(k, chunk):
    q, r = _features(0, 50), _features(1, 130)
    d, i = mem.nearest_neighbours(q, r, k=k, chunk_size=chunk)
    full = np.linalg.norm(q[:, None] - r[None], axis=-1)
    want_i = np.argsort(full, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(i, want_i)
    np.testing.assert_allclose(d, np.take_along_axis(full, want_i, axis=1), rtol=1e-12)
    assert np.all(np.diff(d, axis=1) >= 0)


def test_an_exact_copy_is_at_distance_zero():
    r = _features(1, 100) * 1e3  # large norms: the ||q||^2 - 2qr + ||r||^2 shortcut would not be 0
    d, i = mem.nearest_neighbours(r[[5, 17, 99]], r, k=2, chunk_size=16)
    np.testing.assert_array_equal(i[:, 0], [5, 17, 99])
    np.testing.assert_array_equal(d[:, 0], 0.0)
    assert np.all(d[:, 1] > 0)


def test_copies_of_training_rows_are_flagged_and_fresh_draws_are_not():
    train, heldout = _features(0, 500), _features(1, 200)
    copies = train[np.random.default_rng(2).choice(500, 200, replace=False)]
    flagged = mem.memorization(copies, train, heldout, k=3)
    assert flagged.fraction_closer_than_heldout == 1.0
    assert flagged.fraction_below_heldout_median == 1.0
    np.testing.assert_array_equal(flagged.nearest, 0.0)

    fresh = mem.memorization(_features(3, 200), train, heldout, k=3)
    assert fresh.fraction_closer_than_heldout <= 0.05  # 1 / 201 expected
    assert 0.35 <= fresh.fraction_below_heldout_median <= 0.65
    summary = fresh.summary()
    assert summary["num_generated"] == 200 and summary["num_heldout"] == 200
    assert summary["expected_if_like_heldout"]["fraction_closer_than_heldout"] == 1 / 201
    json.dumps(summary)  # plain Python types


def test_near_copies_are_flagged_too():
    train, heldout = _features(0, 500), _features(1, 200)
    near = train[:100] + 0.01 * _features(4, 100)  # a copy with slightly changed pixels
    assert mem.memorization(near, train, heldout).fraction_closer_than_heldout == 1.0
    half = np.concatenate([train[:50], _features(5, 50)])
    assert mem.memorization(half, train, heldout).fraction_closer_than_heldout == pytest.approx(
        0.5, abs=0.05
    )


def test_select_examples_closest_first_then_spread():
    nearest = np.array([5.0, 1.0, 9.0, 3.0, 7.0, 2.0, 8.0, 4.0, 6.0, 0.5])
    rows = mem.select_examples(nearest, 4)
    assert list(rows[:2]) == [9, 1]  # the two closest
    assert len(set(rows.tolist())) == 4
    assert nearest[rows[-1]] == nearest.max()
    assert len(mem.select_examples(nearest[:3], 8)) == 3


def test_bad_features_raise_naming_the_argument():
    with pytest.raises(ValueError, match="queries"):
        mem.nearest_neighbours(np.zeros((0, 3)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="feature sizes differ"):
        mem.nearest_neighbours(np.zeros((2, 3)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="k=5"):
        mem.nearest_neighbours(np.zeros((2, 3)), np.zeros((4, 3)), k=5)


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, synth_tfds_dir):
    """A workdir (config.json only) of the tiny config, and its data: (workdir, train, eval)."""
    root = tmp_path_factory.mktemp("memorization")
    config = tiny_config(**{"data.tfds_data_dir": synth_tfds_dir})
    workdir = root / "run"
    workdir_lib.write_config(str(workdir), config)

    def images(split):
        ds = input_pipeline.create_dataset(
            config, split, batch_size=16, shuffle=False, repeat=False, drop_remainder=False
        )
        return np.concatenate([b["image"] for b in ds.as_numpy_iterator()])

    return workdir, images(config.data.train_split), images(config.data.eval_split), config


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    """An untrained (random-init) attribute classifier: its features still tell faces apart."""
    return untrained_classifier(32, feature_dim=64, seed=0).save(
        tmp_path_factory.mktemp("classifier")
    )


def _fake_generator(monkeypatch, bank, config):
    """components.load_generator -> a generator whose image i is bank[i]."""
    bank = jnp.asarray(bank)

    def generate(variables, indices, attributes=None):
        del variables, attributes
        return bank[indices]

    monkeypatch.setattr(components, "load_generator", lambda w, step=None: (generate, {}, config))


def _run(workdir, classifier_dir, capsys):
    argv = ["--workdir", str(workdir), "--memorization", "--num", "16", "--num-train", "0"]
    argv += ["--num-heldout", "16", "--features", "classifier", "--classifier"]
    argv += [str(classifier_dir), "--batch-size", "8"]
    assert report_cli.main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    with open(report.report_path(workdir, report.MEMORIZATION_JSON)) as f:
        return json.load(f), out


def test_cli_flags_a_generator_that_returns_training_images(
    run_dir, classifier_dir, monkeypatch, capsys
):
    workdir, train, _, config = run_dir
    _fake_generator(monkeypatch, train[10:26], config)  # 16 training images, verbatim
    data, out = _run(workdir, classifier_dir, capsys)
    assert data["feature_space"] == "classifier"
    assert "classifier features" in out and "attribute classifier" in out
    assert data["num_train"] == len(train) and data["num_heldout"] == 16
    assert data["fraction_closer_than_heldout"] == 1.0
    assert data["generated_nearest_distance"]["p100"] < 1e-3
    for name in (report.MEMORIZATION_FILE, report.MEMORIZATION_HIST_FILE, report.INDEX_FILE):
        assert (workdir / "report" / name).stat().st_size > 0
    page = (workdir / "report" / report.INDEX_FILE).read_text()
    assert "Memorisation check" in page and report.MEMORIZATION_FILE in page


def test_cli_does_not_flag_a_generator_that_returns_heldout_images(
    run_dir, classifier_dir, monkeypatch, capsys
):
    workdir, _, heldout, config = run_dir
    assert len(heldout) == 32
    _fake_generator(monkeypatch, heldout[16:32], config)  # real faces not in the reference half
    data, _ = _run(workdir, classifier_dir, capsys)
    assert data["fraction_closer_than_heldout"] <= 0.25  # 1 / 17 expected
    assert data["heldout_min"] > 1e-2


def test_cli_without_a_feature_space_is_one_line_and_exit_2(run_dir, capsys, tmp_path):
    workdir = run_dir[0]
    argv = ["--workdir", str(workdir), "--memorization", "--features", "inception"]
    argv += ["--weights", str(tmp_path / "missing.pth")]
    assert report_cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("report: error:") and "missing.pth" in err[0]
