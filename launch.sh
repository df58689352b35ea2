#!/usr/bin/env bash
# facegan_jax set-up and launcher.
#
#   bash launch.sh demo                      set up, then train the default demo (runs/default)
#   bash launch.sh test                      set up, then lint and run the whole test suite
#   bash launch.sh setup                     only create .venv and install (FACEGAN_ACCEL=gpu|tpu|cpu)
#   bash launch.sh train CONFIG WORKDIR [--config.x=y ...]
#                                            set up (FACEGAN_ACCEL, default cpu), train on this host
#   bash launch.sh gpu CONFIG WORKDIR [...]  set up jax[cuda12], train on all GPUs of this host
#                                            (one process, data-parallel over its GPUs)
#   bash launch.sh slurm CONFIG WORKDIR [...]
#                                            inside an sbatch/salloc allocation: set up (default gpu),
#                                            then srun one process per node; coordinator = first host
#                                            of SLURM_JOB_NODELIST, process id = SLURM_PROCID
#   bash launch.sh tpu TPU_NAME ZONE CONFIG WORKDIR [...]
#                                            every worker of a Cloud TPU pod slice (gcloud ssh
#                                            --worker=all): set up jax[tpu], train with --distributed
#
#   --dry-run (any mode, anywhere after it): print the commands that would run, one per line,
#   and run nothing.
#
# Environment: PYTHON (default python3, >= 3.11), VENV (default .venv), FACEGAN_ACCEL (cpu, gpu,
# tpu: which jax build `setup` installs), FACEGAN_SHARED_DATA (tests: the shared data folder),
# FACEGAN_COORDINATOR_PORT (slurm: coordinator port; default from SLURM_JOB_ID, as JAX does).
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
ACCEL=${FACEGAN_ACCEL:-cpu}

# `--dry-run` may appear anywhere among the arguments; it is not passed on.
DRY_RUN=0
args=()
for arg in "$@"; do
  if [ "$arg" = "--dry-run" ]; then DRY_RUN=1; else args+=("$arg"); fi
done
set -- "${args[@]+"${args[@]}"}"

# Prints its arguments as one shell command line (quoted only where needed).
quote() {
  local out="" a
  for a in "$@"; do
    if [[ $a =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
      out+="$a "
    else
      out+="'${a//\'/\'\\\'\'}' "
    fi
  done
  printf '%s\n' "${out% }"
}

# Runs a command, or prints it under --dry-run.
run() {
  if [ "$DRY_RUN" = 1 ]; then quote "$@"; else "$@"; fi
}

log() {
  [ "$DRY_RUN" = 1 ] || echo "[launch] $*"
}

setup() {
  "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "facegan_jax needs Python >= 3.11")'
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV"
    run "$PYTHON" -m venv "$VENV"
  fi
  local extras="test"
  case "$ACCEL" in
    cpu) ;;                       # jax (CPU) comes with the base install
    gpu) extras="test,gpu,gcs" ;;     # jax[cuda12], google-cloud-storage (gs:// workdirs)
    tpu) extras="test,tpu,gcs" ;;     # jax[tpu], google-cloud-storage
    *) echo "[launch] FACEGAN_ACCEL=$ACCEL: use cpu, gpu or tpu" >&2; exit 2 ;;
  esac
  # Re-install only when the package metadata changed (keeps repeated runs fast).
  local stamp="$VENV/.facegan_setup_$ACCEL"
  local digest
  digest=$(cat setup.cfg pyproject.toml | "$PYTHON" -c 'import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$digest" ]; then
    log "installing facegan_jax[$extras] into $VENV (first time: a few minutes)"
    run "$VENV/bin/python" -m pip install -q --upgrade pip
    run "$VENV/bin/python" -m pip install -q -e ".[$extras]"
    [ "$DRY_RUN" = 1 ] || echo "$digest" > "$stamp"
  fi
}

train_local() {
  local config=$1 workdir=$2; shift 2
  run "$VENV/bin/python" -m facegan_jax.main --config="$config" --workdir="$workdir" "$@"
}

usage() {
  echo "usage: launch.sh $1 [--dry-run] [--config.x=y ...]" >&2
  exit 2
}

cmd=${1:-help}; shift || true
case "$cmd" in
  setup) setup ;;
  demo)
    setup
    train_local configs/default.py "${FACEGAN_WORKDIR:-runs/default}" "$@"
    log "samples: ${FACEGAN_WORKDIR:-runs/default}/samples/latest.png, TensorBoard logs:" \
        "${FACEGAN_WORKDIR:-runs/default}, checkpoints: ${FACEGAN_WORKDIR:-runs/default}/checkpoints"
    ;;
  test)
    setup
    run "$VENV/bin/ruff" check .
    run "$VENV/bin/ruff" format --check .
    # Exit code 5 (no tests collected) is a failure like any other non-zero code.
    run env FACEGAN_SHARED_DATA="${FACEGAN_SHARED_DATA:-$(pwd)/../shared/data}" \
      "$VENV/bin/python" -m pytest -q "$@"
    ;;
  train)
    [ $# -ge 2 ] || usage "train CONFIG WORKDIR"
    setup
    train_local "$@"
    ;;
  gpu)
    [ $# -ge 2 ] || usage "gpu CONFIG WORKDIR"
    ACCEL=gpu
    setup
    # One process sees every GPU of the host; the step is data-parallel over all of them.
    train_local "$@"
    ;;
  slurm)
    [ $# -ge 2 ] || usage "slurm CONFIG WORKDIR"
    [ -n "${SLURM_JOB_ID:-}" ] || { echo "launch.sh slurm: run inside an sbatch/salloc allocation" >&2; exit 2; }
    nodes=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-}}
    [ -n "$nodes" ] || { echo "launch.sh slurm: SLURM_JOB_NUM_NODES is not set" >&2; exit 2; }
    config=$1 workdir=$2; shift 2
    ACCEL=${FACEGAN_ACCEL:-gpu}
    setup  # once, on the batch host: the checkout and .venv must be on a shared filesystem
    # Process 0 (first host of the job) is the coordinator; each srun task gets its own
    # SLURM_PROCID, and SLURM_NTASKS = one task per node.
    coordinator=$("$PYTHON" -m facegan_jax.distributed slurm-coordinator)
    task="exec $(quote "$VENV/bin/python" -m facegan_jax.main --config="$config" \
      --workdir="$workdir" --coordinator-address="$coordinator")"
    task+=' --num-processes=$SLURM_NTASKS --process-id=$SLURM_PROCID'
    [ $# -eq 0 ] || task+=" $(quote "$@")"
    run srun --nodes="$nodes" --ntasks="$nodes" --ntasks-per-node=1 bash -c "$task"
    ;;
  tpu)
    [ $# -ge 4 ] || usage "tpu TPU_NAME ZONE CONFIG WORKDIR"
    name=$1 zone=$2 config=$3 workdir=$4; shift 4
    # Every worker needs the same checkout at the same path (e.g. cloned there) and a workdir
    # all workers can write (gs://bucket/run, README). Each worker sets itself up (jax[tpu]);
    # --distributed lets jax.distributed.initialize() find the coordinator and worker ids.
    remote="cd $(quote "$(pwd)") && FACEGAN_ACCEL=tpu bash launch.sh setup && $(quote \
      "$VENV/bin/python" -m facegan_jax.main --config="$config" --workdir="$workdir" \
      --distributed "$@")"
    run gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all --command "$remote"
    ;;
  help|-h|--help) sed -n '2,24p' "$0" ;;
  *) echo "launch.sh: unknown command '$cmd' (see: bash launch.sh help)" >&2; exit 2 ;;
esac
