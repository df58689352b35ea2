"""Command-line entry point: flags, config, distributed init, then `train.train_and_evaluate`.

  python -m facegan_jax.main --config=configs/default.py --workdir=runs/default \
      [--config.total_steps=500] [--distributed]

`--config` takes a config file (optionally `file.py:variant`); any field can be
overridden with `--config.<field>=<value>` and a misspelt field is an error
that names it (the config is locked).
"""

from __future__ import annotations

from absl import app, flags, logging
from ml_collections import config_flags

from facegan_jax import runtime

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Training config file (configs/*.py[:variant]).", lock_config=True
)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
flags.DEFINE_bool(
    "distributed",
    False,
    "Call jax.distributed.initialize() (multi-host GPU/TPU, SLURM); launch.sh sets it.",
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    runtime.setup()
    import jax

    quiet_library_logs()
    if FLAGS.distributed:
        jax.distributed.initialize()
    from facegan_jax import train

    logging.info(
        "JAX process %d/%d, devices: %s",
        jax.process_index(),
        jax.process_count(),
        jax.devices(),
    )
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


class _DropLibraryInfo:
    """absl log filter: keeps warnings and errors from orbax/tfds, drops their INFO chatter."""

    _NOISY = ("/orbax/", "/tensorflow_datasets/", "/absl/logging")

    def filter(self, record) -> bool:
        return record.levelno >= 30 or not any(n in record.pathname for n in self._NOISY)


def quiet_library_logs() -> None:
    """Keeps the training log readable: our lines plus library warnings."""
    logging.get_absl_handler().addFilter(_DropLibraryInfo())


def run() -> None:
    """Console-script entry point."""
    app.run(main)


if __name__ == "__main__":
    run()
