"""One flag spelling rule for every command: `--batch-size` and `--batch_size` are one flag.

The argparse commands (sample, fid, evaluate, report, the data_prep tools) define their
flags with dashes; the absl ones (train, benchmark, fid_reference_stats) with
underscores, absl's convention, which `--config.a_b=...` overrides share. `normalize`
rewrites the other spelling of a flag the command defines, so a user never has to
remember which command uses which. Config overrides (`--config.x`) and values are
left alone.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Sequence
from typing import Any


def normalize(argv: Sequence[str], known: Iterable[str]) -> list[str]:
    """`argv` with each `--a-b` / `--a_b` rewritten to the spelling in `known` (`--a_b`).

    Only options before a bare `--` and only names that are not already known are
    rewritten; anything else (values, unknown flags, `--config.x`) is kept for the
    parser to accept or reject.
    """
    known = set(known)
    out: list[str] = []
    rest = False
    for arg in argv:
        if rest or not arg.startswith("--") or arg == "--":
            rest = rest or arg == "--"
            out.append(arg)
            continue
        name, eq, value = arg.partition("=")
        if name not in known and "." not in name:
            body = name[2:]
            candidates = [body.replace("-", "_"), body.replace("_", "-")]
            if body.startswith(("no-", "no_")):  # absl's negated booleans: --noverbose
                candidates.append("no" + body[3:].replace("-", "_"))
            for other in (f"--{c}" for c in candidates):
                if other in known:
                    name = other
                    break
        out.append(name + eq + value)
    return out


def option_strings(parser: argparse.ArgumentParser) -> list[str]:
    """Every `--long` option `parser` defines."""
    return [s for action in parser._actions for s in action.option_strings if s.startswith("--")]


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """`parser.parse_args` accepting either spelling of each flag."""
    import sys

    argv = sys.argv[1:] if argv is None else list(argv)
    return parser.parse_args(normalize(argv, option_strings(parser)))


def absl_argv(argv: Sequence[str], flag_values: Any) -> list[str]:
    """`argv` (program name first) for an absl parser: `--a-b` becomes `--a_b` when defined."""
    names = list(flag_values)
    known = {f"--{n}" for n in names} | {f"--no{n}" for n in names}
    return [argv[0], *normalize(argv[1:], known)]


def absl_flags_parser(flag_values: Any) -> Callable[[list[str]], list[str]]:
    """An `app.run(..., flags_parser=...)` that accepts either spelling of each flag."""

    def parse(argv: list[str]) -> list[str]:
        return flag_values(absl_argv(argv, flag_values))

    return parse
