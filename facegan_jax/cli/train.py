"""Command-line entry point: flags, config, distributed init, then `train.train_and_evaluate`.

  python -m facegan_jax.main --config=configs/default.py --workdir=runs/default \
      [--config.total_steps=500] \
      [--coordinator-address=HOST:PORT --num-processes=N --process-id=I | --distributed]

`--config` takes a config file (optionally `file.py:variant`); any field can be
overridden with `--config.<field>=<value>` and a misspelt field is an error
that names it (the config is locked). Flags are parsed like every command's
(`cli/args.py`: argparse, `--a-b` == `--a_b`).

Every user mistake (a flag, a config field or value, missing data, a workdir
holding another run) and every run fault (non-finite loss, a checkpoint that
cannot be written) ends the process with ONE line on stderr, `train: error: ...`,
exit code 2 (fix the input) or 1 (the run could not go on); `--verbose` adds
the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import tempfile

from absl import logging

from facegan_jax import distributed, errors, runtime
from facegan_jax.cli import args as args_lib

PROG = "train"


def build_parser() -> args_lib.Parser:
    """The train command's flags."""
    parser = args_lib.Parser(PROG, description=__doc__.splitlines()[0])
    args_lib.add_config_argument(parser)
    parser.add_argument(
        "--workdir", required=True, help="directory for checkpoints, logs and samples"
    )
    # Multi-process runs (facegan_jax/distributed.py): all three explicit (SLURM, any
    # cluster), or --distributed for JAX's own detection (Cloud TPU pods); launch.sh
    # passes them.
    parser.add_argument("--coordinator-address", help="HOST:PORT of process 0 (multi-process)")
    parser.add_argument("--num-processes", type=int, help="number of processes (multi-process)")
    parser.add_argument("--process-id", type=int, help="this process, in [0, num_processes)")
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="jax.distributed.initialize() with JAX's cluster auto-detection (Cloud TPU pods)",
    )
    errors.add_verbose_flag(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Trains; a user mistake or run fault is reported as one line (exit code 2 or 1)."""
    args = args_lib.parse_args(build_parser(), argv)
    try:
        _main(args)
    except errors.FaceganError as e:
        return errors.report(e, prog=PROG, verbose=args.verbose)
    except KeyboardInterrupt:  # a second Ctrl-C (the first one stops with a checkpoint)
        message = "interrupted; the latest complete checkpoint is kept"
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 130
    return 0


def _main(args: argparse.Namespace) -> None:
    with native_startup_chatter_dropped():  # TensorFlow's C++ start-up lines on stderr
        runtime.setup(keep_memory=True)
    setup_logging(verbose=args.verbose)
    try:
        spec = distributed.spec_from_flags(
            args.coordinator_address, args.num_processes, args.process_id
        )
    except ValueError as e:
        raise errors.UsageError(str(e)) from None
    distributed.initialize(spec, auto=args.distributed)
    with native_startup_chatter_dropped():
        from facegan_jax.training import train

    # train_and_evaluate validates the config before it logs (the JAX process and
    # devices first) or writes anything, so a mistake prints one line and nothing else.
    train.train_and_evaluate(args.config, args.workdir, exit_on_stop=True)


class _DropLibraryInfo:
    """absl log filter: keeps warnings and errors from orbax/tfds/jax, drops their INFO chatter.

    Their tracebacks are dropped too (our `train: error: ...` line says what failed) unless
    `verbose`.
    """

    _NOISY = ("/orbax/", "/tensorflow_datasets/", "/absl/logging", "/jax/_src/")

    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose

    def filter(self, record) -> bool:
        if not any(n in record.pathname for n in self._NOISY):
            return True
        if record.levelno < 30:
            return False
        if not self.verbose:
            record.exc_info, record.exc_text = None, None
        return True


def setup_logging(verbose: bool = False) -> None:
    """absl's log lines at INFO on stderr (what `app.run` set up), our lines plus library warnings.

    absl's flags are not parsed (argparse parses ours), so they are marked parsed, which
    keeps absl from warning that logging started before flag parsing.
    """
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    logging.use_absl_handler()
    logging.set_verbosity(logging.INFO)
    handler = logging.get_absl_handler()
    for old in [f for f in handler.filters if isinstance(f, _DropLibraryInfo)]:
        handler.removeFilter(old)
    handler.addFilter(_DropLibraryInfo(verbose))


# Lines TensorFlow's C++ code writes straight to the stderr file descriptor while it loads
# (it ignores TF_CPP_MIN_LOG_LEVEL for them): harmless, and they would bury a one-line error.
_NATIVE_CHATTER = re.compile(
    r"All log messages before absl::InitializeLog|oneDNN custom operations are on|"
    r"Unable to register cu(DNN|FFT|BLAS) factory|computation placer already registered|"
    r"TF-TRT Warning|This TensorFlow binary is optimized to use available CPU instructions|"
    r"rebuild TensorFlow with the appropriate compiler flags"
)


@contextlib.contextmanager
def native_startup_chatter_dropped():
    """Drops `_NATIVE_CHATTER` lines written to fd 2 inside the block; every other line is kept."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines(keepends=True):
                if not _NATIVE_CHATTER.search(line):
                    sys.stderr.write(line)
            sys.stderr.flush()


def run(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    sys.exit(main(argv))


if __name__ == "__main__":
    run()
