"""Multi-process set-up: which process this is, where the coordinator is, then `jax.distributed`.

`main` calls `initialize(...)` with its flags before anything touches a JAX backend:

* explicit: `--coordinator-address=HOST:PORT --num-processes=N --process-id=I` (all three;
  `launch.sh slurm` passes them, with the first host of `SLURM_JOB_NODELIST` as the
  coordinator and `SLURM_NTASKS` / `SLURM_PROCID` of each srun task). JAX's own cluster
  auto-detection is then switched off: under SLURM it would otherwise restrict each
  process to the one GPU numbered `SLURM_LOCALID` (it assumes one process per GPU), while
  we run one process per node that owns all the node's GPUs.
* `--distributed`: `jax.distributed.initialize()` with JAX's auto-detection (Cloud TPU
  pods, where each worker finds the coordinator and its id from the TPU metadata).
* neither: a single process (nothing to do).

On CPU, cross-process collectives use gloo (`jax_cpu_collectives_implementation`), so
the same multi-process run works on a laptop or CI with fake devices.

`python -m facegan_jax.distributed slurm-coordinator` prints the SLURM coordinator
address for launch.sh; this module imports only the standard library at the top, so the
system Python can run it before the virtualenv exists (e.g. `launch.sh slurm --dry-run`).
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from collections.abc import Mapping

# JAX's SLURM port rule: SLURM_JOB_ID mapped into the top 4096 ports.
_SLURM_PORT_BASE = 65535 - 2**12 + 1


@dataclasses.dataclass(frozen=True)
class ProcessSpec:
    """Where this process sits in a multi-process run."""

    coordinator_address: str
    num_processes: int
    process_id: int


def spec_from_flags(
    coordinator_address: str | None, num_processes: int | None, process_id: int | None
) -> ProcessSpec | None:
    """The explicit process spec of `--coordinator-address/--num-processes/--process-id`.

    Returns:
      None when none of the three is given (a single process or `--distributed`).

    Raises:
      ValueError: naming the flags that are missing or invalid.
    """
    given = {
        "--coordinator-address": coordinator_address,
        "--num-processes": num_processes,
        "--process-id": process_id,
    }
    if all(v is None for v in given.values()):
        return None
    missing = [name for name, v in given.items() if v is None]
    if missing:
        raise ValueError(
            f"{', '.join(missing)} missing: give all of --coordinator-address, "
            "--num-processes and --process-id (or none of them)"
        )
    if not re.fullmatch(r"\S+:\d+", coordinator_address):
        raise ValueError(f"--coordinator-address={coordinator_address!r} must be HOST:PORT")
    if num_processes < 1:
        raise ValueError(f"--num-processes={num_processes} must be >= 1")
    if not 0 <= process_id < num_processes:
        raise ValueError(
            f"--process-id={process_id} must be in [0, {num_processes}) (--num-processes)"
        )
    return ProcessSpec(coordinator_address, num_processes, process_id)


def first_slurm_host(nodelist: str) -> str:
    """The first host of a SLURM node list.

    'node001' -> 'node001'; 'node[003-006,9],gpu1' -> 'node003'; 'a,b' -> 'a';
    'rack[2-3]-n[07-08]' -> 'rack2-n07' (what `scontrol show hostnames` lists first).

    Raises:
      ValueError: for an empty list.
    """
    host, rest = "", nodelist.strip()
    while rest and rest[0] != ",":
        if rest[0] == "[":  # a range: its first element, then whatever follows the ']'
            inner, _, rest = rest[1:].partition("]")
            host += re.split(r"[,-]", inner, maxsplit=1)[0]
        else:
            literal = re.match(r"[^,\[]*", rest).group(0)
            host, rest = host + literal, rest[len(literal) :]
    if not host:
        raise ValueError(f"SLURM_JOB_NODELIST={nodelist!r} names no host")
    return host


def slurm_coordinator_address(env: Mapping[str, str] | None = None) -> str:
    """HOST:PORT of process 0 of a SLURM job: first host of the job, port from the job id.

    The port is `FACEGAN_COORDINATOR_PORT` if set, else JAX's rule
    (`SLURM_JOB_ID % 4096 + 61440`).

    Raises:
      ValueError: naming the SLURM variable that is missing.
    """
    env = os.environ if env is None else env
    for name in ("SLURM_JOB_ID", "SLURM_JOB_NODELIST"):
        if not env.get(name):
            raise ValueError(f"{name} is not set: run inside an sbatch/salloc allocation")
    port = env.get("FACEGAN_COORDINATOR_PORT") or str(
        int(env["SLURM_JOB_ID"]) % 2**12 + _SLURM_PORT_BASE
    )
    return f"{first_slurm_host(env['SLURM_JOB_NODELIST'])}:{port}"


def initialize(spec: ProcessSpec | None, *, auto: bool = False) -> bool:
    """Joins a multi-process run (call before any JAX computation or `jax.devices()`).

    Args:
      spec: explicit coordinator and process ids (from `spec_from_flags`), or None.
      auto: with no `spec`, let `jax.distributed.initialize()` detect the cluster (TPU pods).

    Returns:
      True when `jax.distributed` was initialised.
    """
    if spec is None and not auto:
        return False
    import jax

    # Cross-process collectives of the CPU backend (the default in recent JAX; explicit
    # because the backend is created after this and reads it then).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if spec is None:
        jax.distributed.initialize()
    else:
        jax.distributed.initialize(
            coordinator_address=spec.coordinator_address,
            num_processes=spec.num_processes,
            process_id=spec.process_id,
            # Every local device belongs to this process (see the module docstring).
            cluster_detection_method="deactivate",
        )
    return True


def _main(argv: list[str]) -> int:
    if argv != ["slurm-coordinator"]:
        print("usage: python -m facegan_jax.distributed slurm-coordinator", file=sys.stderr)
        return 2
    try:
        print(slurm_coordinator_address())
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
