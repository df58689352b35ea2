"""Every command parses flags one way (`cli/args.py`): either spelling, `--config` overrides,
one-line usage errors."""

from __future__ import annotations

import pytest

from facegan_jax import errors
from facegan_jax.cli import args as args_lib
from facegan_jax.cli import benchmark, train
from tests.conftest import REPO_ROOT
from tests.helpers import run_python


def test_normalize_rewrites_only_known_flags_before_a_bare_double_dash():
    known = ["--batch-size", "--out-dir", "--num_samples"]
    argv = [
        "--batch_size=8",
        "--out_dir",
        "d",
        "--num-samples",
        "3",
        "--config.data.tfds_data_dir=x",
    ]
    argv += ["--unknown_flag", "--", "--batch_size"]
    assert args_lib.normalize(argv, known) == [
        "--batch-size=8",
        "--out-dir",
        "d",
        "--num_samples",
        "3",
        "--config.data.tfds_data_dir=x",
        "--unknown_flag",
        "--",
        "--batch_size",
    ]


def test_either_spelling_and_config_overrides_in_both_forms():
    parser = train.build_parser()
    args = args_lib.parse_args(
        parser,
        [
            f"--config={REPO_ROOT}/configs/default.py:runlocal",
            "--workdir",
            "w",
            "--num_processes=2",
            "--process-id",
            "1",
            "--config.train.batch_size",
            "6",
            "--config.seed=5",
        ],
    )
    assert (args.workdir, args.num_processes, args.process_id) == ("w", 2, 1)
    assert args.config.train.batch_size == 6 and args.config.seed == 5
    assert args.config.data.name == "synthetic_faces"  # the :runlocal variant
    with pytest.raises(AttributeError):  # locked, like main's config always was
        args.config.new_field = 1
    bench = args_lib.parse_args(benchmark.build_parser(), ["--only=train,layers", "--fid_batch=7"])
    assert bench.only == ["train", "layers"] and bench.fid_batch == 7
    assert bench.config.model.name == "dcgan"  # the default recipe, configs/dcgan64.py


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--workdir=w"], "train: error: the following arguments are required: --config"),
        (
            ["--config=configs/default.py", "--workdir=w", "--config.train.batch_sise=3"],
            "train: error: --config.train.batch_sise=3: config.train.batch_sise is not a config "
            "field (did you mean config.train.batch_size?)",
        ),
        (
            ["--config=configs/nothing.py", "--workdir=w"],
            "train: error: --config=configs/nothing.py: cannot load the config file",
        ),
        (["--config=configs/default.py", "--wrokdir=w"], "train: error: the following arguments"),
        (["--only=trian"], "benchmark: error: argument --only: 'trian': choose from train"),
    ],
)
def test_mistakes_are_one_line_with_exit_code_2(argv, message, capsys, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    parser = benchmark.build_parser() if argv[0].startswith("--only") else train.build_parser()
    with pytest.raises(SystemExit) as exit_info:
        args_lib.parse_args(parser, argv)
    assert exit_info.value.code == errors.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(message), err


_HELP_PROBE = """
import runpy, sys
sys.argv = ["prog", "--help"]
try:
    runpy.run_module(sys.argv_module, run_name="__main__")
except SystemExit as e:
    assert e.code == 0, e.code
heavy = ("tensorflow", "tensorflow_datasets", "torch")
print("IMPORTED=" + ",".join(m for m in heavy if m in sys.modules))
"""


@pytest.mark.parametrize(
    "module",
    ["tools.race", "tools.ablate", "tools.wallclock", "data_prep.train_attribute_classifier"],
)
def test_help_answers_before_tensorflow_is_imported(module):
    # --help and flag mistakes answer at once: TensorFlow (~7 s to import) is only
    # loaded by the code that reads a TFDS dataset.
    probe = _HELP_PROBE.replace("sys.argv_module", repr(module))
    out = run_python(["-c", probe], timeout=120)
    assert "usage:" in out
    assert out.splitlines()[-1] == "IMPORTED=", f"{module} --help imported TF or torch"
