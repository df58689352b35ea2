"""Attribute metrics of generators: the training hook and the evaluate command."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from configs import acgan64, default
from facegan_jax import workdir as workdir_lib
from facegan_jax.cli import evaluate as evaluate_cli
from facegan_jax.metrics import attributes, evaluation
from facegan_jax.training import components, train


@pytest.fixture(scope="module")
def acgan_workdir(tmp_path_factory, saved_folder, synth_tfds_dir):
    """A tiny conditional run (6 steps) on the embedded synthetic faces, attribute metrics on."""
    workdir = tmp_path_factory.mktemp("acgan_run")
    config = acgan64.get_config("runlocal")
    config.data.tfds_data_dir = synth_tfds_dir
    config.attr_eval.every_steps = 3
    config.attr_eval.classifier = str(saved_folder)
    train.train_and_evaluate(config, str(workdir))
    return workdir


def test_training_logs_attribute_metrics_and_writes_the_report(acgan_workdir):
    from facegan_jax.report import run_report as report

    scalars = report.read_scalars(acgan_workdir)
    for tag in ("eval/fd_attr", "eval/attr_control", "eval/attr_control/Eyeglasses"):
        assert scalars[tag].steps.tolist() == [3, 6], tag
    assert all(0 <= v <= 1 for v in scalars["eval/attr_control"].values)
    for name in ("curves.png", "progress.gif", "index.html"):
        assert (acgan_workdir / "report" / name).stat().st_size > 0, name


def test_training_with_attribute_metrics_but_no_classifier_is_a_config_error(tmp_path):
    from facegan_jax import errors

    config = acgan64.get_config("runlocal")
    config.attr_eval.every_steps = 3
    with pytest.raises(errors.ConfigError, match="config.attr_eval.classifier=None"):
        train.train_and_evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_attribute_hook_reports_fd_attr_and_control_per_reliable_attribute(
    acgan_workdir, saved_folder, synth_classifier, monkeypatch
):
    config = components.read_run_config(str(acgan_workdir))
    config.attr_eval.every_steps = 3
    config.attr_eval.classifier = str(saved_folder)
    run = components.build(config)
    pool = components.load_attribute_pool(str(acgan_workdir))
    hook = evaluation.make_attribute_hook(config, run.generator, pool, str(acgan_workdir))
    scalars = hook(run.create_state())
    assert np.isfinite(scalars["eval/fd_attr"]) and scalars["eval/fd_attr"] > 0
    reliable = synth_classifier.reliable_attributes()
    per = {k.split("/")[-1]: v for k, v in scalars.items() if k.startswith("eval/attr_control/")}
    assert set(per) == set(reliable)
    assert all(0.0 <= v <= 1.0 for v in per.values())
    np.testing.assert_allclose(scalars["eval/attr_control"], np.mean(list(per.values())))
    # Quality per condition: PRDC in the classifier's space and the conditional FD.
    for name in ("precision", "recall", "density", "coverage"):
        assert np.isfinite(scalars[f"eval/{name}"]) and scalars[f"eval/{name}"] >= 0
    cond = {k.split("/")[-1]: v for k, v in scalars.items() if k.startswith("eval/cond_fd/")}
    assert set(cond) == set(reliable) and all(v > 0 for v in cond.values() if np.isfinite(v))
    np.testing.assert_allclose(scalars["eval/cond_fd"], np.nanmean(list(cond.values())))
    assert not any(k.startswith("eval/attr_control_consistent") for k in scalars)
    # attr_eval.consistent_requests: control on consistent requests too, as evaluate gives it.
    config.attr_eval.consistent_requests = 0.02
    hook = evaluation.make_attribute_hook(config, run.generator, pool, str(acgan_workdir))
    rates, control = [], attributes.attribute_control

    def spy(*args, **kwargs):
        rates.append(kwargs.get("consistent", 0.0))
        return control(*args, **kwargs)

    monkeypatch.setattr(attributes, "attribute_control", spy)
    both = hook(run.create_state())
    assert rates == [0.0, 0.02]  # as defined, then on consistent requests at that rate
    assert both["eval/attr_control"] == scalars["eval/attr_control"]
    consistent = {
        k.split("/")[-1]: v
        for k, v in both.items()
        if k.startswith("eval/attr_control_consistent/")
    }
    assert set(consistent) == set(reliable)
    np.testing.assert_allclose(
        both["eval/attr_control_consistent"], np.mean(list(consistent.values()))
    )
    config.attr_eval.consistent_requests = 0.5
    with pytest.raises(ValueError, match=r"consistent_requests=0.5 must be in \[0, 0.5\)"):
        evaluation.make_attribute_hook(config, run.generator, pool, str(acgan_workdir))


def test_attribute_hook_is_off_by_default_and_needs_a_classifier():
    config = default.get_config("runlocal")
    assert evaluation.make_attribute_hook(config, None, None, "/nonexistent") is None
    config.attr_eval.every_steps = 5
    with pytest.raises(ValueError, match="config.attr_eval.classifier is not"):
        evaluation.make_attribute_hook(config, None, None, "/nonexistent")


def test_evaluate_cli_prints_the_control_table_and_writes_json(
    acgan_workdir, saved_folder, tmp_path, capsys
):
    out = tmp_path / "m.json"
    args = [f"--workdir={acgan_workdir}", f"--classifier={saved_folder}", "--num-samples=32"]
    args += ["--n-per-side=8", "--batch-size=16", f"--json={out}", "--consistent-requests=0.02"]
    assert evaluate_cli.main(args) == 0
    text = capsys.readouterr().out
    assert text.startswith("fd_attr ") and "attribute control" in text and "mean control" in text
    assert "consistent requests at 0.02" in text
    assert "precision " in text and "coverage " in text and "cond_fd " in text
    metrics = json.loads(out.read_text())
    assert metrics["fd_attr"] > 0 and 0 <= metrics["attr_control"]["mean"] <= 1
    assert metrics["prdc"]["precision"] >= 0 and metrics["cond_fd"]["mean"] > 0
    assert metrics["attr_control"]["consistent"] == 0.02


def test_evaluate_cli_inception_space_fid_and_prdc(
    acgan_workdir, saved_folder, inception_weights, tmp_path, capsys
):
    out = tmp_path / "i.json"
    args = [
        f"--workdir={acgan_workdir}",
        f"--classifier={saved_folder}",
        "--num-samples=16",
        "--n-per-side=4",
        "--batch-size=8",
        f"--inception-weights={inception_weights}",
        f"--json={out}",
    ]
    assert evaluate_cli.main(args) == 0
    text = capsys.readouterr().out
    line = re.search(
        r"^fid ([0-9.]+)  precision ([0-9.]+)  recall ([0-9.]+)  density ([0-9.]+)  "
        r"coverage ([0-9.]+)  \(Inception space, 16 vs 16\)$",
        text,
        re.M,
    )
    assert line, text
    metrics = json.loads(out.read_text())["inception"]
    assert metrics["fid"] == pytest.approx(float(line.group(1)), abs=1e-3) and metrics["fid"] > 0
    assert all(0 <= metrics["prdc"][k] <= 1 for k in ("precision", "recall", "coverage"))
    cached = list(acgan_workdir.rglob("*_n16_features.npz"))
    assert len(cached) == 1 and np.load(cached[0])["features"].shape == (16, 2048)
    # A second evaluation reads the real side from that cache (no Inception params needed).
    config = workdir_lib.read_config(str(acgan_workdir))
    again = evaluation.inception_reference(config, None, 16, 8, str(acgan_workdir))
    np.testing.assert_array_equal(again, np.load(cached[0])["features"])


def test_evaluate_cli_bad_input_is_one_line_and_exit_2(acgan_workdir, tmp_path, capsys):
    assert evaluate_cli.main([f"--workdir={acgan_workdir}", f"--classifier={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("evaluate: error:") and "\n" not in err
    assert evaluate_cli.main([f"--workdir={tmp_path}", f"--classifier={tmp_path}"]) == 2
    capsys.readouterr()
    args = [f"--workdir={acgan_workdir}", f"--classifier={tmp_path}", "--consistent-requests=0.5"]
    with pytest.raises(SystemExit) as exit_info:  # a usage error, like argparse's own
        evaluate_cli.main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--consistent-requests=0.5 must be in [0, 0.5)" in err


def test_inception_metrics_of_a_generator_that_copies_real_images(inception_params):
    """Generated == real images: FID ~0 and precision, recall, coverage exactly 1."""
    import jax.numpy as jnp

    from facegan_jax.metrics import fid

    rng = np.random.default_rng(0)
    real_u8 = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)  # [N, H, W, 3]
    real = jnp.asarray(real_u8, jnp.float32) / 127.5 - 1.0

    def copy(variables, indices):
        return variables[indices % variables.shape[0]]

    real_features = fid.features_from_images([real_u8], inception_params, 8)
    metrics = evaluation.inception_metrics(copy, real, inception_params, real_features, 16, 8)
    assert metrics["num_samples"] == metrics["num_real"] == 16
    assert abs(metrics["fid"]) < 1e-2, metrics
    assert metrics["prdc"]["precision"] == metrics["prdc"]["recall"] == 1.0
    assert metrics["prdc"]["coverage"] == 1.0 and metrics["prdc"]["density"] >= 1.0 / 5
