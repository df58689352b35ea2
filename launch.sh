#!/usr/bin/env bash
# facegan_jax set-up and launcher.
#
#   bash launch.sh demo                      set up, then train the default demo (runs/default)
#   bash launch.sh test                      set up, then lint and run the whole test suite
#   bash launch.sh setup                     only create .venv and install (FACEGAN_ACCEL=gpu|tpu|cpu)
#   bash launch.sh train CONFIG WORKDIR [--config.x=y ...]
#                                            train on this host (all its GPUs/TPU cores, data-parallel)
#   bash launch.sh slurm CONFIG WORKDIR [...]
#                                            inside an sbatch allocation: one process per node via srun,
#                                            jax.distributed.initialize() picks up SLURM's variables
#   bash launch.sh tpu TPU_NAME ZONE CONFIG WORKDIR [...]
#                                            run on every worker of a Cloud TPU pod slice (gcloud)
#
# Environment: PYTHON (default python3, >= 3.11), VENV (default .venv), FACEGAN_ACCEL (cpu, gpu,
# tpu: which jax build `setup` installs), FACEGAN_SHARED_DATA (tests: the shared data folder).
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
ACCEL=${FACEGAN_ACCEL:-cpu}

setup() {
  "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "facegan_jax needs Python >= 3.11")'
  if [ ! -x "$VENV/bin/python" ]; then
    echo "[launch] creating $VENV"
    "$PYTHON" -m venv "$VENV"
  fi
  local extras="test"
  case "$ACCEL" in
    cpu) ;;
    gpu) extras="test,gpu" ;;
    tpu) extras="test,tpu" ;;
    *) echo "[launch] FACEGAN_ACCEL=$ACCEL: use cpu, gpu or tpu" >&2; exit 2 ;;
  esac
  # Re-install only when the package metadata changed (keeps repeated runs fast).
  local stamp="$VENV/.facegan_setup_$ACCEL"
  local digest
  digest=$(cat setup.cfg pyproject.toml | "$PYTHON" -c 'import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$digest" ]; then
    echo "[launch] installing facegan_jax[$extras] into $VENV (first time: a few minutes)"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e ".[$extras]"
    echo "$digest" > "$stamp"
  fi
}

train_local() {
  local config=$1 workdir=$2; shift 2
  "$VENV/bin/python" -m facegan_jax.main --config="$config" --workdir="$workdir" "$@"
}

cmd=${1:-help}; shift || true
case "$cmd" in
  setup) setup ;;
  demo)
    setup
    train_local configs/default.py "${FACEGAN_WORKDIR:-runs/default}" "$@"
    echo "[launch] samples: ${FACEGAN_WORKDIR:-runs/default}/samples/latest.png, TensorBoard logs:" \
         "${FACEGAN_WORKDIR:-runs/default}, checkpoints: ${FACEGAN_WORKDIR:-runs/default}/checkpoints"
    ;;
  test)
    setup
    "$VENV/bin/ruff" check .
    "$VENV/bin/ruff" format --check .
    export FACEGAN_SHARED_DATA=${FACEGAN_SHARED_DATA:-$(pwd)/../shared/data}
    # Exit code 5 (no tests collected) is a failure like any other non-zero code.
    "$VENV/bin/python" -m pytest -q "$@"
    ;;
  train)
    [ $# -ge 2 ] || { echo "usage: launch.sh train CONFIG WORKDIR [flags]" >&2; exit 2; }
    train_local "$@"
    ;;
  slurm)
    [ $# -ge 2 ] || { echo "usage: launch.sh slurm CONFIG WORKDIR [flags]" >&2; exit 2; }
    [ -n "${SLURM_JOB_ID:-}" ] || { echo "launch.sh slurm: run inside an sbatch/salloc allocation" >&2; exit 2; }
    config=$1 workdir=$2; shift 2
    srun --ntasks-per-node=1 "$VENV/bin/python" -m facegan_jax.main \
      --config="$config" --workdir="$workdir" --distributed "$@"
    ;;
  tpu)
    [ $# -ge 4 ] || { echo "usage: launch.sh tpu TPU_NAME ZONE CONFIG WORKDIR [flags]" >&2; exit 2; }
    name=$1 zone=$2 config=$3 workdir=$4; shift 4
    # Every worker needs the same checkout (e.g. on a shared disk or cloned at the same path)
    # and a workdir all workers can write (e.g. gs://bucket/run).
    gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all --command \
      "cd $(pwd) && FACEGAN_ACCEL=tpu bash launch.sh setup && $VENV/bin/python -m facegan_jax.main --config=$config --workdir=$workdir --distributed $*"
    ;;
  help|-h|--help) sed -n '2,17p' "$0" ;;
  *) echo "launch.sh: unknown command '$cmd' (see: bash launch.sh help)" >&2; exit 2 ;;
esac
