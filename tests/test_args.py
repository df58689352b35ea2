"""Either spelling of a flag works in every command (`--batch-size` == `--batch_size`)."""

from __future__ import annotations

import argparse

from absl import flags

from facegan_jax.cli import spelling


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
    assert spelling.normalize(argv, known) == [
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


def test_argparse_and_absl_commands_accept_both_spellings():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-size", type=int)
    assert spelling.parse_args(parser, ["--batch_size", "7"]).batch_size == 7
    assert spelling.parse_args(parser, ["--batch-size=9"]).batch_size == 9

    values = flags.FlagValues()
    flags.DEFINE_integer("num_samples", 0, "", flag_values=values)
    flags.DEFINE_bool("no_progress", False, "", flag_values=values)
    spelling.absl_flags_parser(values)(["prog", "--num-samples=5", "--no-progress"])
    flags.DEFINE_bool("verbose", True, "", flag_values=values)
    spelling.absl_flags_parser(values)(["prog", "--no-verbose"])
    assert not values.verbose
    assert values.num_samples == 5 and values.no_progress
