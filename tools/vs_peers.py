r"""Speed side by side with the peers: our train step and FID features against PyTorch's.

  python -m tools.vs_peers [--rounds 3] [--what train,fid] [--config configs/dcgan64.py]
      [--peers-dir ../shared/peers] [--peer-python .venv-peers/bin/python] [--threads 2]

Each round runs both sides back to back on the otherwise idle machine, alternating
which goes first (A B, B A, ...), each in its own process with all `--threads`:

* train: `python -m facegan_jax.benchmark --only=train` (DCGAN-64, batch 64 by
  default) against `torch_dcgan.py --channels-last` (the same model in PyTorch);
* fid: `python -m facegan_jax.benchmark --only=fid` (Inception pool3, float32)
  against `torch_fid_features.py --channels-last` (pytorch-fid's InceptionV3).

It prints every run, the median per side, the ratio ours / peer, and the CPU
(model, AVX-512 / AVX2) the figures belong to. Figures are only comparable on one
machine: never run it beside another heavy job. The peers' venv (../shared/peers/README.md):
`python3 -m venv .venv-peers`, then its pip installs `../shared/peers/requirements-peer.txt`.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from facegan_jax import errors
from facegan_jax.cli import args as args_lib

PROG = "vs_peers"
_RESULT = re.compile(r"RESULT name=(\S+) img_per_s=([0-9.]+)")


def parse_result(output: str, name: str | None = None) -> float | None:
    """img/s of the last `RESULT name=... img_per_s=...` line (of `name`, if given)."""
    found = None
    for match in _RESULT.finditer(output):
        if name is None or match.group(1) == name:
            found = float(match.group(2))
    return found


def cpu_summary() -> str:
    """`model name` and the vector ISA of this machine's CPU (from /proc/cpuinfo)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown CPU"
    model = re.search(r"^model name\s*:\s*(.*)$", info, re.M)
    flags = set((re.search(r"^flags\s*:\s*(.*)$", info, re.M) or [None, ""])[1].split())
    isa = [f for f in ("avx512f", "avx512_bf16", "amx_bf16", "avx2", "fma") if f in flags]
    return f"{model.group(1) if model else 'unknown CPU'} ({', '.join(isa) or 'SSE'})"


def commands(
    what: str, config: str, peers: Path, peer_python: str, threads: int
) -> dict[str, list[str]]:
    """The two command lines of one comparison (`train` or `fid`)."""
    ours = [sys.executable, "-m", "facegan_jax.benchmark", f"--config={config}"]
    if what == "train":
        return {
            "ours": [*ours, "--only=train", "--steps=20", "--warmup=3"],
            "peer": [
                peer_python,
                str(peers / "torch_dcgan.py"),
                "--steps=20",
                "--batch=64",
                f"--threads={threads}",
                "--channels-last",
            ],
        }
    return {
        "ours": [*ours, "--only=fid", "--fid-batch=50", "--fid-steps=6"],
        "peer": [
            peer_python,
            str(peers / "torch_fid_features.py"),
            "--steps=6",
            "--batch=50",
            f"--threads={threads}",
            "--channels-last",
        ],
    }


def run_side(command: list[str], name: str | None, env: dict[str, str] | None = None) -> float:
    """Runs one side; returns its img/s (a failed side is an error naming its command)."""
    proc = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    value = parse_result(proc.stdout, name) if proc.returncode == 0 else None
    if value is None:
        tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
        raise errors.RunError(f"{' '.join(command)} exited {proc.returncode}: {tail}")
    return value


def compare(
    what: str, cmds: dict[str, list[str]], rounds: int, ours_env: dict[str, str] | None = None
) -> tuple[float, float]:
    """Alternating rounds of both sides; prints each run; returns the medians (ours, peer)."""
    results: dict[str, list[float]] = {"ours": [], "peer": []}
    for r in range(rounds):
        order = ("ours", "peer") if r % 2 == 0 else ("peer", "ours")
        for side in order:
            ours = side == "ours"
            value = run_side(cmds[side], what if ours else None, ours_env if ours else None)
            results[side].append(value)
            print(f"{what} round {r + 1} {side:4s}: {value:7.2f} img/s", flush=True)
    ours, peer = (statistics.median(results[s]) for s in ("ours", "peer"))
    print(
        f"{what}: ours {ours:.2f} img/s (runs {', '.join(f'{v:.1f}' for v in results['ours'])}), "
        f"peer {peer:.2f} img/s (runs {', '.join(f'{v:.1f}' for v in results['peer'])}): "
        f"ratio {ours / peer:.2f}x",
        flush=True,
    )
    return ours, peer


def main(argv: Sequence[str] | None = None) -> int:
    parser = args_lib.Parser("vs_peers", description=__doc__)
    parser.add_argument("--what", default="train,fid", help="comma-separated: train, fid")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--config", default="configs/dcgan64.py", help="our train recipe")
    parser.add_argument(
        "--peers-dir",
        default=os.environ.get("FACEGAN_PEERS", "../shared/peers"),
        help="folder of torch_dcgan.py and torch_fid_features.py (env FACEGAN_PEERS)",
    )
    parser.add_argument(
        "--peer-python",
        default=os.environ.get("FACEGAN_PEER_PYTHON", ".venv-peers/bin/python"),
        help="the peers' Python (env FACEGAN_PEER_PYTHON)",
    )
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument(
        "--conv-backend",
        choices=("xla", "onednn"),
        default=os.environ.get("FACEGAN_CONV_BACKEND", "xla") or "xla",
        help="our convolutions: XLA's (default) or oneDNN's (pip install 'facegan_jax[onednn]')",
    )
    errors.add_verbose_flag(parser)
    args = args_lib.parse_args(parser, argv)
    return errors.run_command(PROG, lambda: _run(args), verbose=args.verbose)


def _run(args: argparse.Namespace) -> int:
    peers = Path(args.peers_dir)
    if not (peers / "torch_dcgan.py").is_file():
        raise errors.UsageError(f"--peers-dir={peers}: no torch_dcgan.py there")
    if not Path(args.peer_python).is_file():
        raise errors.UsageError(
            f"--peer-python={args.peer_python} does not exist: python3 -m venv .venv-peers && "
            f".venv-peers/bin/pip install -r {peers / 'requirements-peer.txt'}"
        )
    if args.rounds < 1:
        raise errors.UsageError(f"--rounds={args.rounds} must be >= 1")
    print(
        f"machine: {cpu_summary()}, {args.threads} threads per side, "
        f"our convolutions: {args.conv_backend}",
        flush=True,
    )
    ours_env = {**os.environ, "FACEGAN_CONV_BACKEND": args.conv_backend}
    ratios = []
    for what in [w.strip() for w in args.what.split(",") if w.strip()]:
        if what not in ("train", "fid"):
            raise errors.UsageError(f"--what: unknown {what!r}; known: train, fid")
        cmds = commands(what, args.config, peers, args.peer_python, args.threads)
        ours, peer = compare(what, cmds, args.rounds, ours_env)
        ratios.append(f"{what} {ours / peer:.2f}x")
    print(f"RATIO {' '.join(ratios)} (our convolutions: {args.conv_backend})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
