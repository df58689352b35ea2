"""Bad input: one line on stderr naming the field/file and what to do, exit 2, workdir untouched."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from facegan_jax import errors
from facegan_jax import workdir as workdir_lib
from facegan_jax.training import checkpointing, components, train
from tests.helpers import tiny_config

REPO_ROOT = Path(__file__).resolve().parent.parent


def _main(workdir: Path, *flags: str, env: dict[str, str] | None = None):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "facegan_jax.cli.train",
            "--config=configs/default.py:runlocal",
            f"--workdir={workdir}",
            *flags,
        ],
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def _error_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.splitlines()
    assert proc.returncode == errors.EXIT_USAGE, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("train: error: "), proc.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("flags", "env", "message"),
    [
        (
            ["--config.train.batch_sise=3"],
            None,
            "train: error: --config.train.batch_sise=3: "
            "config.train.batch_sise is not a config field "
            "(did you mean config.train.batch_size?); the fields are documented in "
            "configs/default.py and the model's family in facegan_jax/models/",
        ),
        (
            ["--config.train.batch_size=abc"],
            None,
            "train: error: --config.train.batch_size=abc: "
            "invalid literal for int() with base 10: 'abc' "
            "(--config.train.batch_size takes a value of type int)",
        ),
        (
            ["--config.train.batch_size=3"],
            {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
            "train: error: "
            "config.train.batch_size=3 must be divisible by the number of devices (2)",
        ),
    ],
    ids=["unknown_field", "ill_typed", "batch_vs_devices"],
)
def test_cli_mistakes_are_one_line_and_write_nothing(tmp_path, flags, env, message):
    workdir = tmp_path / "run"
    assert _error_line(_main(workdir, *flags, env=env)) == message
    assert not workdir.exists()


def test_verbose_adds_the_traceback(tmp_path):
    proc = _main(tmp_path / "run", "--verbose", "--config.train.batch_sise=3")
    assert proc.returncode == errors.EXIT_USAGE
    assert proc.stderr.startswith("Traceback (most recent call last):")
    assert proc.stderr.splitlines()[-1].startswith("train: error: --config.train.batch_sise=3: ")


def _snapshot(path: Path) -> dict[str, tuple[int, int]]:
    """Every file under `path` with its size and modification time (empty if absent)."""
    return {
        str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def _rejected(config, workdir: Path, error: type[errors.UsageError]) -> str:
    """Runs the config; checks the error is one line and `workdir` was left as it was."""
    existed, before = workdir.exists(), _snapshot(workdir)
    with pytest.raises(error) as info:
        train.train_and_evaluate(config, str(workdir))
    message = str(info.value)
    stream = io.StringIO()
    assert errors.report(info.value, prog="train", stream=stream) == errors.EXIT_USAGE
    assert stream.getvalue() == f"train: error: {message}\n" and "\n" not in message
    assert workdir.exists() == existed and _snapshot(workdir) == before
    return message


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"data.name": "celeb_b"},
            "config.data.name='celeb_b' is not a known dataset; known: synthetic_faces, "
            "celeba_local, celeb_a",
        ),
        (
            {"data.image_size": 48},
            "config.data.image_size=48 must be 4 * 2**k (8, 16, 32, 64, ...) [model 'dcgan']",
        ),
        (
            {"model.name": "acgan"},
            "config.model.d_activation is not read by the 'acgan' model (its fields: attr_head, "
            "d_dim, d_pool, d_spectral_norm, g_cond, g_cond_dim, g_dim, leaky_slope, "
            "mbstd_group_size, name, num_attributes, projection, sn_power_iterations, z_dim); "
            "remove it, or start from "
            "a acgan recipe in configs/",
        ),
        ({"train.ema_decay": 1.0}, "config.train.ema_decay=1.0 must be in [0, 1)"),
    ],
    ids=["unknown_dataset", "image_size_dcgan", "model_field_not_read", "ema_decay"],
)
def test_config_mistakes_are_found_before_anything_is_written(tmp_path, overrides, message):
    assert _rejected(tiny_config(**overrides), tmp_path / "run", errors.ConfigError) == message


def test_an_empty_workdir_is_refused_not_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(errors.WorkdirError, match="^--workdir is empty; name the directory"):
        train.train_and_evaluate(tiny_config(), "")
    assert not os.listdir(tmp_path)


def test_a_dataset_that_is_not_prepared_names_the_command_that_prepares_it(tmp_path):
    config = tiny_config(**{"data.name": "celeba_local", "data.tfds_data_dir": str(tmp_path)})
    assert _rejected(config, tmp_path / "run", errors.DataError) == (
        f"config.data.name='celeba_local': no prepared dataset at {tmp_path}/celeba_local/1.0.0 "
        f"(config.data.tfds_data_dir='{tmp_path}'); build it from the official files with "
        "`python -m data_prep.prepare_celeba --manual-dir DIR --data-dir DATA_DIR`"
    )


def test_a_workdir_of_another_model_is_refused_untouched(tmp_path):
    workdir_lib.write_config(str(tmp_path), tiny_config())
    message = _rejected(tiny_config(**{"model.g_dim": 16}), tmp_path, errors.WorkdirError)
    assert message == (
        f"--workdir {tmp_path} holds a run of a different model (config.model.g_dim=16 here, 8 "
        f"in the run); use a new --workdir, or the run's own config ({tmp_path}/config.json)"
    )


def test_a_checkpoint_of_another_structure_is_refused_untouched(tmp_path):
    manager = checkpointing.create_manager(str(tmp_path))
    checkpointing.save(manager, components.build(tiny_config()).create_state())
    manager.wait_until_finished()
    config = tiny_config(**{"d_optimizer.name": "rmsprop"})  # not a model field: no config.json
    message = _rejected(config, tmp_path, errors.WorkdirError)
    assert message.startswith(
        f"checkpoint {tmp_path}/checkpoints/0 does not match this config's state (model or "
        "optimizers): d_opt_state."
    )
    assert message.endswith(
        "resume with the config the run was started with (config.json in the workdir) or use "
        "a new --workdir"
    )
