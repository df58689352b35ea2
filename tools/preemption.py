r"""How long a pre-empted training run takes to answer SIGTERM, broken down.

  python -m tools.preemption [--config configs/dcgan64.py] [--after-steps 20] \
      [--repeats 2] [--data-dir DIR] [--limit 10]

Starts `python -m facegan_jax.main` on `--config` in a fresh temporary workdir,
waits until it has logged `--after-steps` training steps, sends SIGTERM (what
SLURM's `scancel`, a TPU maintenance event or Kubernetes sends first), and
times from the signal:

  checkpoint line  "SIGTERM: checkpointing step N and stopping" is logged
  done line        "Done at step N" / "Stopped at step N" is logged
  exit             the process has exited (what the cluster's grace period measures)

It then checks that the workdir holds a complete, verified checkpoint of the
step the log named. A cluster gives about 30 s between SIGTERM and SIGKILL; the
target is under `--limit` seconds (default 10). Prints one line per repeat and
exits non-zero when a repeat misses the limit or left no checkpoint.

This is a benchmark, not a test: it measures wall-clock time on whatever else
the machine is doing. Run it on an idle machine.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

from facegan_jax.cli import args as args_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_STEP_RE = re.compile(r"step (\d+)/\d+:")
_CKPT_RE = re.compile(r"checkpointing step (\d+) and stopping")
_DONE_RE = re.compile(r"(Done|Stopped) at step (\d+)")


def _watch(proc: subprocess.Popen, events: dict[str, float], lines: list[str], t0: float) -> None:
    """Records when each milestone appears in the child's stderr (absl logs there)."""
    assert proc.stderr is not None
    for raw in proc.stderr:
        line = raw.decode(errors="replace").rstrip()
        now = time.perf_counter()
        lines.append(f"{now - t0:8.2f}s {line}")
        m = _STEP_RE.search(line)
        if m:
            events["last_step"] = float(m.group(1))
            events.setdefault("first_step_line", now)
        if _CKPT_RE.search(line):
            events.setdefault("checkpoint_line", now)
            events["checkpoint_step"] = float(_CKPT_RE.search(line).group(1))
        if _DONE_RE.search(line):
            events.setdefault("done_line", now)


def run_once(config: str, after_steps: int, data_dir: str | None, timeout: float) -> dict:
    """One run: train, SIGTERM after `after_steps` steps, time the answer."""
    workdir = tempfile.mkdtemp(prefix="facegan_preempt_")
    cmd = [
        sys.executable,
        "-m",
        "facegan_jax.main",
        f"--config={config}",
        f"--workdir={workdir}",
        "--config.log_every_steps=1",
        "--config.total_steps=100000",
    ]
    if data_dir:
        cmd.append(f"--config.data.tfds_data_dir={data_dir}")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    events: dict[str, float] = {}
    lines: list[str] = []
    watcher = threading.Thread(target=_watch, args=(proc, events, lines, t0), daemon=True)
    watcher.start()
    while events.get("last_step", -1) < after_steps:
        if proc.poll() is not None:
            sys.stderr.write("\n".join(lines[-20:]) + "\n")
            raise SystemExit(f"training exited early (code {proc.returncode})")
        if time.perf_counter() - t0 > timeout:
            proc.kill()
            raise SystemExit(f"no step {after_steps} within {timeout:.0f} s")
        time.sleep(0.05)
    t_sig = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    t_exit = time.perf_counter()
    watcher.join(timeout=5)
    ckpt_step = int(events.get("checkpoint_step", -1))
    verified = _verified(workdir, ckpt_step)
    return {
        "workdir": workdir,
        "startup_s": events.get("first_step_line", t_sig) - t0,
        "checkpoint_line_s": events.get("checkpoint_line", float("nan")) - t_sig,
        "done_line_s": events.get("done_line", float("nan")) - t_sig,
        "exit_s": t_exit - t_sig,
        "returncode": proc.returncode,
        "checkpoint_step": ckpt_step,
        "verified": verified,
        "tail": lines[-15:],
    }


def _verified(workdir: str, step: int) -> bool:
    """The checkpoint of `step` exists and its checksums verify (the library's own check)."""
    if step < 0:
        return False
    sys.path.insert(0, REPO)
    from facegan_jax import workdir as workdir_lib
    from facegan_jax.training import checkpointing

    step_dir = os.path.join(workdir_lib.checkpoint_dir(workdir), str(step))
    has_sums = os.path.exists(os.path.join(step_dir, checkpointing.CHECKSUMS_FILE))
    return has_sums and checkpointing.verify(step_dir) is None


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark; exit code 1 when a repeat missed `--limit` or saved nothing."""
    p = args_lib.Parser("preemption", description=__doc__)
    p.add_argument("--config", default="configs/dcgan64.py")
    p.add_argument("--after-steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--data-dir", default=None, help="config.data.tfds_data_dir")
    p.add_argument("--limit", type=float, default=10.0, help="seconds from SIGTERM to exit")
    p.add_argument("--verbose", action="store_true", help="print the log tail of each run")
    args = args_lib.parse_args(p, argv)
    ok = True
    print(f"SIGTERM after {args.after_steps} steps of {args.config} (limit {args.limit:.0f} s)")
    print("  run  startup  ->checkpoint line  ->done line  ->exit  code  checkpoint")
    for i in range(args.repeats):
        r = run_once(args.config, args.after_steps, args.data_dir, timeout=600)
        good = r["exit_s"] <= args.limit and r["verified"]
        ok &= good
        print(
            f"  {i + 1:3d}  {r['startup_s']:6.1f} s  {r['checkpoint_line_s']:14.2f} s"
            f"  {r['done_line_s']:9.2f} s  {r['exit_s']:5.2f} s  {r['returncode']:4d}"
            f"  step {r['checkpoint_step']} {'verified' if r['verified'] else 'MISSING'}"
            f"{'' if good else '  <-- over the limit or no checkpoint'}"
        )
        if args.verbose or not good:
            print("\n".join("      " + t for t in r["tail"]))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
