"""User mistakes and run faults as one line: the error types and how entry points report them.

Library code raises one of the `FaceganError` subclasses below with a message
that names the field, file or value and says what to do. Every command reports
through `report` (argparse commands through `run_command`), which prints a single
line naming the command,

  train: error: config.data.image_size=48 must be 4 * 2**k (8, 16, 32, 64, ...) [model 'dcgan']

on stderr (the traceback only with `--verbose`) and returns the exit code:
`EXIT_USAGE` (2) for input the user must fix (flags, config, data, workdir),
`EXIT_FAILURE` (1) for a run that could not go on (non-finite loss, a checkpoint
that cannot be written or read). Any other exception is a bug and keeps its
traceback.

`flag_error` turns what ml_collections' `config_flags` raises while loading
`--config` and its `--config.x=v` overrides (`recipes.load_config`) into a
`UsageError` naming the file, override or field.
"""

from __future__ import annotations

import re
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any, TextIO

EXIT_FAILURE = 1
EXIT_USAGE = 2


class FaceganError(Exception):
    """An error whose message is the whole report (no traceback needed)."""

    exit_code = EXIT_FAILURE


class UsageError(FaceganError, ValueError):
    """Input the user must fix: flags, config fields, data, workdir."""

    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    """A config field or combination of fields that cannot be trained."""


class DataError(UsageError):
    """The dataset named by `config.data` cannot be read (unknown, not prepared, bad split)."""


class WorkdirError(UsageError):
    """The workdir holds another run (a different model or checkpoint structure)."""


class RaceError(UsageError):
    """Input a wall-clock comparison (race, ablation) cannot start with (data, venv, --out)."""


class RunError(FaceganError):
    """The run started but cannot go on; what was saved is named in the message."""


class CheckpointError(RunError, OSError):
    """A checkpoint cannot be written (disk full) or none can be read back (an OSError too)."""


class TrainingDivergedError(RunError, FloatingPointError):
    """Non-finite losses or gradients; the last good checkpoint is named."""


def one_line(text: object) -> str:
    """`text` with its line breaks and runs of blanks collapsed to single spaces."""
    return re.sub(r"\s+", " ", str(text)).strip()


def report(
    exc: BaseException,
    *,
    prog: str,
    verbose: bool = False,
    stream: TextIO | None = None,
    default_code: int = EXIT_FAILURE,
) -> int:
    """Prints `exc` as `PROG: error: <one line>` (traceback first if `verbose`).

    The one error reporter of every command (argparse's own usage errors have the
    same `PROG: error:` form).

    Args:
      exc: the error.
      prog: the command's name (`train`, `sample`, ...).
      verbose: print the traceback first.
      stream: where to print (default: stderr).
      default_code: the exit code of an error that carries none (not a `FaceganError`).

    Returns:
      The exit code: the error's `exit_code`, else `default_code`.
    """
    stream = sys.stderr if stream is None else stream
    if verbose:
        traceback.print_exception(exc, file=stream)
    message = one_line(exc) or type(exc).__name__
    print(f"{prog}: error: {message}", file=stream, flush=True)
    return getattr(exc, "exit_code", default_code)


def run_command(prog: str, command: Callable[[], Any], *, verbose: bool = False) -> int:
    """Runs a command's body; a user mistake or run fault becomes `prog: error: <one line>`.

    The one error reporter of the argparse commands (sample, fid, evaluate, report, the
    data_prep tools); `--verbose` (`add_verbose_flag`) prints the traceback first.

    Args:
      prog: the command's name for the message (`fid`, `report`, ...).
      command: the body; raises ValueError/OSError/FaceganError on bad input; an int it
        returns is the exit code (anything else, e.g. a result dict, means 0).
      verbose: print the traceback before the line.

    Returns:
      The body's int code (else 0), or the error's exit code (`EXIT_USAGE`
      unless the error carries its own).
    """
    try:
        code = command()
    except (ValueError, OSError, FaceganError) as e:
        return report(e, prog=prog, verbose=verbose, default_code=EXIT_USAGE)
    return code if isinstance(code, int) else 0  # a body may return its result, not a code


def add_verbose_flag(parser: Any) -> None:
    """`--verbose` on an argparse parser: print the traceback of an error, not only its line."""
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="print the traceback of an error (default: one line, `PROG: error: ...`)",
    )


def _config_overrides(argv: Sequence[str], flag: str) -> list[str]:
    """The `--config.a.b=v` / `--config.a.b v` arguments of `argv`, as written."""
    out = []
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{flag}."):
            if "=" not in arg and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                arg = f"{arg}={argv[i + 1]}"
            out.append(arg)
    return out


def _unknown_field(exc: BaseException, argv: Sequence[str], flag: str) -> UsageError | None:
    """ml_collections raises KeyError/AttributeError('\\'name\\'\\nDid you mean "x"...')."""
    text: object = exc
    while isinstance(text, BaseException):  # AttributeError(KeyError("'name'\nDid you mean..."))
        text = text.args[0] if text.args else ""
    text = str(text)
    match = re.match(r"""\s*['"]?([^'"\n]+?)['"]?\s*(\n|$)""", text)
    if not match:
        return None
    key = match.group(1)
    suggestion = re.search(r'Did you mean "([^"]+)"', text)
    for arg in _config_overrides(argv, flag):
        path = arg[2:].split("=", 1)[0]  # config.train.batch_sise
        parts = path.split(".")
        if key in parts[1:]:
            field = ".".join(parts[: parts.index(key, 1) + 1])
            hint = ""
            if suggestion:
                hint = f" (did you mean {'.'.join([*field.split('.')[:-1], suggestion.group(1)])}?)"
            return UsageError(
                f"{arg}: {field} is not a config field{hint}; the fields are documented in "
                "configs/default.py and the model's family in facegan_jax/models/"
            )
    return None


def flag_error(
    exc: BaseException,
    argv: Sequence[str],
    config_flag: str = "config",
    flag_type: Callable[[str], str | None] | None = None,
) -> UsageError:
    """Turns an error raised while parsing the command line into a one-line `UsageError`.

    Args:
      exc: what absl flags / ml_collections raised (flags.Error, KeyError,
        AttributeError for an unknown config field, OSError for a config file
        that cannot be loaded, ValueError/TypeError from the config file).
      argv: the command line.
      config_flag: the name of the config-file flag.
      flag_type: flag name -> the type of value it takes ('int', ...), if known.
    """
    if isinstance(exc, UsageError):
        return exc
    error = _flag_error(exc, argv, config_flag, flag_type or (lambda name: None))
    error.__cause__ = exc  # `--verbose` shows where it was raised
    return error


def _flag_error(
    exc: BaseException,
    argv: Sequence[str],
    config_flag: str,
    flag_type: Callable[[str], str | None],
) -> UsageError:
    if isinstance(exc, (KeyError, AttributeError)):
        unknown = _unknown_field(exc, argv, config_flag)
        if unknown is not None:
            return unknown
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    specs = [a for a in argv if a.startswith(f"--{config_flag}=")]  # the last one counts
    spec = specs[-1] if specs else f"--{config_flag}"
    if isinstance(exc, OSError) and "config file" in text:
        # ml_collections defers a failed load to the first access of the config.
        reason = [line.strip() for line in text.splitlines() if line.strip()][-1]
        return UsageError(f"{spec}: cannot load the config file ({reason})")
    if "Error whilst parsing config file" in text:
        # absl wraps what the config file raised with its traceback: keep its last line.
        last = [line.strip() for line in text.splitlines() if line.strip()][-1]
        last = re.sub(r"^(\w+\.)*(ValueError|TypeError):\s*", "", last)
        return UsageError(f"{spec}: {last}")
    bad_value = re.match(r"flag --(\S+?)=", text)
    kind = flag_type(bad_value.group(1)) if bad_value else None
    text = re.sub(r"^flag (--\S+?=[^:]*): ", r"\1: ", one_line(text))
    if kind:
        text += f" (--{bad_value.group(1)} takes a value of type {kind})"
    if isinstance(exc, (KeyError, AttributeError, SyntaxError, NameError, ImportError)):
        text = f"{spec}: {type(exc).__name__}: {text}"
    return UsageError(text)
