"""The one flag library of every command: argparse, one spelling rule, one-line errors.

Every command (train, sample, fid, evaluate, report, benchmark, the data_prep tools)
builds a `Parser` and parses with `parse_args`:

* every flag is defined with dashes (`--batch-size`) and either spelling is accepted:
  `--batch-size` and `--batch_size` are one flag (`normalize`); config overrides
  (`--config.a_b=...`) and values are left alone;
* a command with a recipe (`add_config_argument`) takes `--config=configs/x.py[:variant]`
  and any number of `--config.<field>=<value>` overrides, loaded by
  `recipes.load_config` (ml_collections' `config_flags` parses them, so a misspelt
  field or a value of the wrong type is an error naming it); `args.config` is the
  locked ConfigDict;
* a parsing mistake is ONE line on stderr, `PROG: error: ...` (see --help), exit code
  2, like every other user mistake (`errors.report`); `--verbose` adds the traceback
  of a config that cannot be loaded.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn

from facegan_jax import errors


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line: `PROG: error: MESSAGE (see --help)`."""

    def __init__(self, prog: str, description: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(prog=prog, description=description, **kwargs)

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr, flush=True)
        sys.exit(errors.EXIT_USAGE)


def add_config_argument(
    parser: argparse.ArgumentParser, default: str | None = None, what: str = "Training"
) -> None:
    """`--config=FILE[:VARIANT]` (required without a default) and its `--config.x` overrides."""
    parser.loads_config = True  # type: ignore[attr-defined]  # parse_args loads it
    parser.add_argument(
        "--config",
        default=default,
        required=default is None,
        metavar="FILE[:VARIANT]",
        help=f"{what} recipe (configs/*.py, optionally :variant); override any field with "
        "--config.<field>=<value>",
    )


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
            for other in (f"--{body.replace('-', '_')}", f"--{body.replace('_', '-')}"):
                if other in known:
                    name = other
                    break
        out.append(name + eq + value)
    return out


def option_strings(parser: argparse.ArgumentParser) -> list[str]:
    """Every `--long` option `parser` defines."""
    return [s for action in parser._actions for s in action.option_strings if s.startswith("--")]


def split_config_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(`argv` without its `--config.a.b[=v]` overrides, the overrides as `--config.a.b=v`)."""
    rest: list[str] = []
    overrides: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest.extend(argv[i:])
            break
        if arg.startswith("--config."):
            if "=" not in arg and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                arg, i = f"{arg}={argv[i + 1]}", i + 1
            overrides.append(arg)
        else:
            rest.append(arg)
        i += 1
    return rest, overrides


def parse_with_overrides(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> tuple[argparse.Namespace, list[str]]:
    """(arguments, the `--config.a.b=v` overrides as written), either spelling accepted.

    For commands that hand a recipe and its overrides on unloaded (the wall-clock
    comparisons start each run in its own process); any other unknown argument is a
    usage error.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    rest, overrides = split_config_overrides(normalize(argv, option_strings(parser)))
    return parser.parse_args(rest), overrides


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """`parser.parse_args` with either spelling of each flag; loads `add_config_argument`'s.

    A config that cannot be loaded (a missing file, an unknown field, a bad value)
    ends the process like any usage error: one line naming the file or field, exit 2
    (`--verbose`, when the parser defines it, prints the traceback first).
    """
    if not getattr(parser, "loads_config", False):
        argv = sys.argv[1:] if argv is None else list(argv)
        return parser.parse_args(normalize(argv, option_strings(parser)))
    from facegan_jax import recipes

    args, overrides = parse_with_overrides(parser, argv)
    try:
        args.config = recipes.load_config(args.config, overrides)
    except errors.UsageError as e:
        verbose = bool(getattr(args, "verbose", False))
        sys.exit(errors.report(e, prog=parser.prog, verbose=verbose))
    return args
