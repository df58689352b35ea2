"""Command-line entry point: flags, config, distributed init, then `train.train_and_evaluate`.

  python -m facegan_jax.main --config=configs/default.py --workdir=runs/default \
      [--config.total_steps=500] \
      [--coordinator_address=HOST:PORT --num_processes=N --process_id=I | --distributed]

`--config` takes a config file (optionally `file.py:variant`); any field can be
overridden with `--config.<field>=<value>` and a misspelt field is an error
that names it (the config is locked).

Every user mistake (a flag, a config field or value, missing data, a workdir
holding another run) and every run fault (non-finite loss, a checkpoint that
cannot be written) ends the process with ONE line on stderr, `train: error: ...`,
exit code 2 (fix the input) or 1 (the run could not go on); `--verbose` adds
the traceback. Flag-parsing errors, which absl raises before `main()`, are
caught by `run()`'s flags parser.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile

from absl import app, flags, logging
from ml_collections import config_flags

from facegan_jax import distributed, errors, runtime
from facegan_jax.cli import spelling

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Training config file (configs/*.py[:variant]).", lock_config=True
)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
# Multi-process runs (facegan_jax/distributed.py): all three explicit (SLURM, any cluster),
# or --distributed for JAX's own detection (Cloud TPU pods); launch.sh passes them.
flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0 (multi-process).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process).")
flags.DEFINE_integer("process_id", None, "This process, in [0, num_processes).")
flags.DEFINE_bool(
    "distributed",
    False,
    "jax.distributed.initialize() with JAX's cluster auto-detection (Cloud TPU pods).",
)
flags.DEFINE_bool(
    "verbose", False, "Print the traceback of an error (default: one line, `train: error: ...`)."
)
flags.mark_flags_as_required(["config", "workdir"])

PROG = "train"


def main(argv: list[str]) -> int:
    """Trains; a user mistake or run fault is reported as one line (exit code 2 or 1)."""
    try:
        _main(argv)
    except errors.FaceganError as e:
        return errors.report(e, prog=PROG, verbose=FLAGS.verbose)
    except app.UsageError as e:
        return errors.report(errors.UsageError(str(e)), prog=PROG, verbose=FLAGS.verbose)
    except KeyboardInterrupt:  # a second Ctrl-C (the first one stops with a checkpoint)
        message = "interrupted; the latest complete checkpoint is kept"
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 130
    return 0


def _main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise errors.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    with native_startup_chatter_dropped():  # TensorFlow's C++ start-up lines on stderr
        runtime.setup()
    quiet_library_logs()
    try:
        spec = distributed.spec_from_flags(
            FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id
        )
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    distributed.initialize(spec, auto=FLAGS.distributed)
    with native_startup_chatter_dropped():
        from facegan_jax.training import train

    # train_and_evaluate validates the config before it logs (the JAX process and
    # devices first) or writes anything, so a mistake prints one line and nothing else.
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir, exit_on_stop=True)


class _DropLibraryInfo:
    """absl log filter: keeps warnings and errors from orbax/tfds/jax, drops their INFO chatter.

    Their tracebacks are dropped too (our `train: error: ...` line says what failed) unless
    `--verbose`.
    """

    _NOISY = ("/orbax/", "/tensorflow_datasets/", "/absl/logging", "/jax/_src/")

    def filter(self, record) -> bool:
        if not any(n in record.pathname for n in self._NOISY):
            return True
        if record.levelno < 30:
            return False
        if not FLAGS.verbose:
            record.exc_info, record.exc_text = None, None
        return True


def quiet_library_logs() -> None:
    """Keeps the training log readable: our lines plus library warnings."""
    logging.get_absl_handler().addFilter(_DropLibraryInfo())


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


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flags parser, with errors as one line (exit 2) instead of a traceback.

    absl and ml_collections parse `--config` and its overrides before `main()`
    runs and raise flags.Error, KeyError/AttributeError (an unknown config field)
    or OSError (a config file that cannot be loaded, raised on first access).
    """
    try:
        rest = FLAGS(spelling.absl_argv(argv, FLAGS))
        FLAGS.config.get("seed")  # ml_collections defers config-file load errors to here
    except Exception as e:  # anything raised while parsing is about the command line
        error = errors.flag_error(e, argv, flag_type=_flag_type)
        sys.exit(errors.report(error, prog=PROG, verbose=errors.wants_verbose(argv)))
    return rest


def _flag_type(name: str) -> str | None:
    """The type of value flag `name` takes (`int` for `config.train.batch_size`), if defined."""
    return FLAGS[name].flag_type() if name in FLAGS else None


def run(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    app.run(main, argv=argv, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
