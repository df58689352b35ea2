r"""The race: our recipe against the PyTorch DCGAN peer at equal wall-clock, one CPU core each.

  python -m tools.race --minutes 30 --every 5 --out runs/race30 \
      --classifier attr_celeba64 [--config configs/celeba64_fast.py] \
      [--peer ../shared/peers/torch_dcgan_train.py --peer-python .venv-peers/bin/python] \
      [--config.train.diffaugment=] [--fid-weights pt_inception-2015-12-05-6726825d.pth]

What it does:

1. Prepares (once; cached in `--cache-dir`) the uint8 arrays both sides use:
   the 12,000 train-partition CelebA images of `--celeba-dir` and the 2,000
   validation ones, rows 20..198 cropped (178x178) and resized to 64x64 with
   PIL bicubic, exactly what ../shared/peers/README.md says the peer reads.
2. Starts both trainings at the same time, each pinned to its own core
   (`taskset -c 0` ours, `taskset -c 1` the peer) with one thread (XLA
   `--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1`,
   torch `--threads 1`, OMP/MKL/TF threads 1). Both read the same training
   array (ours through `tools.wallclock`, a wall-clock driver around the
   library's jitted train step: same model, step, optimisers and EMA as
   `facegan_jax.cli.train`, without the TFDS pipeline, so preprocessing is identical
   on both sides). Each side times itself from just before its first training
   step (ours includes compiling the step) and, at each `--every` mark, saves
   1,000 samples from fixed latents (ours: the EMA generator) on its own core
   and clock, as the peer script does.
3. After both finished (so the evaluation never competes with training),
   scores every mark on all cores: `fd_attr` (Fréchet distance in the
   attribute classifier's feature space, `facegan_jax.metrics.attributes`) against the
   2,000 validation images, and FID against the same images when Inception
   weights are present (`--fid-weights`, or pytorch-fid's file in the
   facegan_jax cache). Lower is better; the ratio column is peer / ours, so
   above 1 means our faces are closer to real ones.
4. Prints the table and writes `<out>/race.json`, `<out>/race.png` (curves)
   and 8x8 sample grids of each side's last mark.

A step that outlasts an interval (a loaded machine, our first step's compile)
saves once for the marks it passed, and past the end it is the last save, on
both sides alike; the table then shows '-' for the mark a side skipped.

`<out>` gets `ours/` (train.log, marks.json, mark_NN.npy, and `workdir/` with
the final checkpoint for `facegan_jax.cli.sample`), `peer/` (train.log,
marks.json, mark_NN.npy) and `train_floor.npy` (1,000 real training images,
scored as the floor a 1,000-sample set can reach). `--evaluate-only` scores an
existing `<out>` again (e.g. after adding FID weights).

Every input problem (no CelebA files, no peer venv, no classifier, a used
`--out`, a config the race cannot run) is one line on stderr before anything
starts, naming what to run; exit status 2. A side that fails mid-race stops
the other and names its log; exit status 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from facegan_jax import errors
from facegan_jax.cli import args as args_lib
from facegan_jax.errors import RaceError
from tools import race_data, wallclock
from tools.wallclock import mark_label

DEFAULT_PEER = str(race_data.SHARED / "peers" / "torch_dcgan_train.py")
DEFAULT_PEER_PYTHON = os.environ.get(
    "FACEGAN_PEER_PYTHON", str(race_data.REPO_ROOT / ".venv-peers" / "bin" / "python")
)

PEER_SETUP = (
    "python3 -m venv .venv-peers && .venv-peers/bin/pip install "
    "-r ../shared/peers/requirements-peer.txt (see ../shared/peers/README.md)"
)


SIDES = ("ours", "peer")


_PEER_LINE = re.compile(r"min=([0-9.]+) step=(\d+) imgs=(\d+) d=(\S+) g=(\S+)")


class SideFailedError(errors.RunError):
    """One side of the race exited with an error (its log is named)."""


# ----------------------------------------------------------------------------- peer side
def parse_peer_line(line: str) -> dict[str, Any] | None:
    """The peer's progress line after each save ('min=5.0 step=480 imgs=30720 d=.. g=..')."""
    match = _PEER_LINE.search(line)
    if not match:
        return None
    minutes, step, imgs, d, g = match.groups()
    return dict(
        elapsed_s=float(minutes) * 60.0,
        step=int(step),
        images=int(imgs),
        d_loss=float(d),
        g_loss=float(g),
    )


PROG = "race"


def collect_peer_sample(raw_dir: Path, out_dir: Path, k: int) -> str:
    """Moves the peer's newest `samples_NNNmin.npy` to `mark_kk.npy` (before it can be reused).

    The peer names files by whole elapsed minutes, so marks less than a minute
    apart would overwrite each other; moving each file as soon as the peer
    reports it keeps every mark.
    """
    files = sorted(raw_dir.glob("samples_*min.npy"), key=lambda p: p.stat().st_mtime_ns)
    if not files:
        raise SideFailedError(f"the peer reported mark {k} but wrote no samples in {raw_dir}")
    name = f"mark_{k:02d}.npy"
    os.replace(files[-1], out_dir / name)
    return name


def peer_command(
    peer_python: str, peer_script: str, train_npy: Path, raw_dir: Path, minutes: float, every: float
) -> list[str]:
    """The peer script's command (batch 64, one thread)."""
    return [
        peer_python,
        peer_script,
        str(train_npy),
        str(raw_dir),
        "--minutes",
        repr(minutes),
        "--every",
        repr(every),
        "--threads",
        "1",
    ]


def check_peer(peer_python: str, peer_script: str) -> None:
    """RaceError saying how to make the peer venv if it is missing or cannot import torch."""
    if not Path(peer_script).is_file():
        raise RaceError(f"--peer {peer_script} not found (the shared peers folder)")
    if not Path(peer_python).is_file():
        raise RaceError(
            f"peer venv not found: {peer_python} does not exist; create it: {PEER_SETUP}"
        )
    try:
        proc = subprocess.run(
            [peer_python, "-c", "import numpy, torch"], capture_output=True, text=True, timeout=300
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RaceError(f"--peer-python {peer_python} does not run ({e}); {PEER_SETUP}") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        raise RaceError(f"--peer-python {peer_python} cannot import torch ({last}); {PEER_SETUP}")


# ----------------------------------------------------------------------------- running


@dataclasses.dataclass
class _Racer:
    name: str
    proc: subprocess.Popen
    log_path: Path


def _stop(racers: Sequence[_Racer]) -> None:
    for r in racers:
        if r.proc.poll() is None:
            r.proc.send_signal(signal.SIGTERM)
    for r in racers:
        try:
            r.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            r.proc.kill()
            r.proc.wait()


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def run_race(
    *,
    out: Path,
    config_spec: str,
    overrides: Sequence[str],
    train_npy: Path,
    minutes: float,
    every: float,
    peer_python: str,
    peer_script: str,
    cores: Sequence[int],
    log: Callable[[str], None] = print,
) -> None:
    """Runs both sides at once, each pinned to its core, and collects the peer's samples."""
    marks = wallclock.interval_marks(minutes, every)
    raw_dir = out / "peer" / "raw"
    for d in (out / "ours", raw_dir):
        d.mkdir(parents=True, exist_ok=True)
    commands = {
        "ours": wallclock.train_command(
            config_spec, overrides, train_npy, out / "ours", minutes, every
        ),
        "peer": peer_command(peer_python, peer_script, train_npy, raw_dir, minutes, every),
    }
    log(
        f"race: marks at {', '.join(mark_label(m) for m in marks)}; ours on core {cores[0]}, "
        f"peer on core {cores[1]}; logs: {out / 'ours' / 'train.log'}, "
        f"{out / 'peer' / 'train.log'}"
    )
    env = wallclock.single_thread_env()
    racers: list[_Racer] = []
    try:
        for (name, command), core in zip(commands.items(), cores, strict=True):
            log_path = out / name / "train.log"
            with open(log_path, "w") as f:
                proc = subprocess.Popen(
                    wallclock.pinned(command, core), stdout=f, stderr=subprocess.STDOUT, env=env
                )
            racers.append(_Racer(name, proc, log_path))
        peer_records = _follow(racers, raw_dir, marks, log)
    finally:
        _stop(racers)
    # The peer's last save is the one at the end of its budget, even when one long
    # step jumped over the marks before it (the peer then saved once, and stopped).
    peer_records[-1]["mark_s"] = marks[-1]
    wallclock.write_json(out / "peer" / "marks.json", peer_records)
    shutil.rmtree(raw_dir, ignore_errors=True)


def _follow(
    racers: Sequence[_Racer], raw_dir: Path, marks: Sequence[float], log: Callable[[str], None]
) -> list[dict[str, Any]]:
    """Waits for both racers, moving each peer save to its mark as the peer reports it.

    Raises:
      SideFailedError: a racer exited with an error, or the peer saved nothing.
    """
    peer = next(r for r in racers if r.name == "peer")
    records: list[dict[str, Any]] = []
    seen = 0
    while True:
        done = all(r.proc.poll() is not None for r in racers)
        # Complete lines only: the last one may still be being written.
        lines = peer.log_path.read_text(errors="replace").split("\n")[:-1]
        for line in lines[seen:]:
            record = parse_peer_line(line)
            if record is not None and len(records) < len(marks):
                k = len(records)
                record.update(mark_s=marks[k], file=collect_peer_sample(raw_dir, raw_dir.parent, k))
                records.append(record)
                log(f"peer {mark_label(marks[k])}: step {record['step']}")
        seen = len(lines)
        for r in racers:
            if r.proc.poll() not in (None, 0):
                raise SideFailedError(
                    f"{r.name} exited with status {r.proc.returncode}: {_tail(r.log_path)} "
                    f"(full log: {r.log_path})"
                )
        if done:
            break
        time.sleep(0.5)
    if not records:
        raise SideFailedError(f"the peer saved no samples (log: {peer.log_path})")
    return records


# ----------------------------------------------------------------------------- report
def summarize(ours: Sequence[dict], peer: Sequence[dict]) -> list[dict[str, Any]]:
    """One row per mark: both sides' progress and scores, and peer / ours ratios.

    Args:
      ours, peer: per-save records with mark_s, step, images, fd_attr and
        optionally fid. A mark only one side saved at (a step longer than an
        interval skips one) gets None for the other side and no ratio.

    Returns:
      Rows {'mark_s', 'ours': {...} | None, 'peer': {...} | None, 'ratio': {'fd_attr',
      'fid'?}} in mark order; a ratio above 1 means our score is lower (better).
    """
    by_mark: dict[float, dict[str, dict]] = {}
    for side, records in (("ours", ours), ("peer", peer)):
        for record in records:
            by_mark.setdefault(float(record["mark_s"]), {})[side] = dict(record)
    rows = []
    for mark in sorted(by_mark):
        a, b = by_mark[mark].get("ours"), by_mark[mark].get("peer")
        ratio = {}
        for metric in ("fd_attr", "fid"):
            if a and b and metric in a and metric in b:
                ratio[metric] = b[metric] / a[metric] if a[metric] > 0 else math.inf
        rows.append({"mark_s": mark, "ours": a, "peer": b, "ratio": ratio})
    return rows


def format_table(rows: Sequence[dict], floor: dict | None = None) -> list[str]:
    """The race table: per mark, steps, images and scores of each side, and peer / ours."""
    fid = wallclock.has_fid({side: [r[side] for r in rows if r[side]] for side in SIDES})
    side_head = f"{'steps':>7} {'imgs':>7} {'fd_attr':>8}" + (f" {'FID':>7}" if fid else "")
    head = f"{'':>8} | {'ours':<{len(side_head)}} | {'peer':<{len(side_head)}} | peer/ours"
    head += "\n" + f"{'mark':>8} | {side_head} | {side_head} | {'fd_attr':>9}"
    head += f" {'FID':>6}" if fid else ""
    lines = [*head.split("\n"), "-" * len(head.split("\n")[-1])]
    for r in rows:
        line = f"{mark_label(r['mark_s']):>8} |"
        for side in SIDES:
            s = r[side]
            if s is None:
                cells = f"{'-':>7} {'-':>7} {'-':>8}" + (f" {'-':>7}" if fid else "")
            else:
                cells = f"{s['step']:>7d} {s['images']:>7d} {s['fd_attr']:>8.2f}"
                cells += f" {s.get('fid', math.nan):>7.1f}" if fid else ""
            line += f" {cells} |"
        ratio = r["ratio"]
        line += f" {ratio.get('fd_attr', math.nan):>9.2f}"
        line += f" {ratio.get('fid', math.nan):>6.2f}" if fid else ""
        lines.append(line)
    if floor:
        text = f"real-data floor (1,000 train images): fd_attr {floor['fd_attr']:.2f}"
        if "fid" in floor:
            text += f", FID {floor['fid']:.1f}"
        lines.append(text)
    return lines


def write_report(out: Path, scored: dict[str, Any], meta: dict[str, Any], log=print) -> None:
    """Prints the table and writes race.json, race.png and last-mark sample grids."""
    from facegan_jax.generation import sampling

    rows = summarize(scored["ours"], scored["peer"])
    floor = scored.get("floor")
    for line in format_table(rows, floor):
        log(line)
    wallclock.write_json(out / "race.json", {**meta, "rows": rows, "floor": floor})
    wallclock.plot_curves({side: scored[side] for side in SIDES}, out / "race.png", floor)
    for side in SIDES:
        last = scored[side][-1]
        images = race_data.to_float(np.load(out / side / last["file"])[:64])  # marks are uint8
        sampling.save_grid(images, str(out / f"{side}_{mark_label(last['mark_s'])}.png"))
    log(f"wrote {out / 'race.json'}, {out / 'race.png'} and the last marks' sample grids")


# ----------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    """The race's command line (unknown `--config.x=v` arguments are config overrides)."""
    helps = (
        "new folder for everything the race writes",
        "cores for ours,peer (default 0,1)",
        "score an existing --out again",
    )
    parser = wallclock.comparison_parser("race", __doc__, "side", 5.0, helps)
    parser.add_argument("--peer", default=DEFAULT_PEER, help="the peer training script")
    parser.add_argument("--peer-python", default=DEFAULT_PEER_PYTHON, help="the peer venv python")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the race; errors are one line, exit 2 / 1."""
    argv = list(sys.argv[1:] if argv is None else argv)
    body = lambda: _race_main(*args_lib.parse_with_overrides(build_parser(), argv))  # noqa: E731
    return errors.run_command(PROG, body, verbose="--verbose" in argv)


def _race_main(args: argparse.Namespace, overrides: list[str]) -> None:
    from facegan_jax import runtime

    runtime.setup(tensorflow=False)
    out = Path(args.out)
    marks = wallclock.interval_marks(args.minutes, args.every)
    cores = wallclock.parse_cores(args.cores)
    # Every input is checked before anything runs, cheapest first.
    race_data.check_celeba_dir(args.celeba_dir)
    classifier = wallclock.load_classifier(args.classifier)
    fid_weights = wallclock.find_fid_weights(args.fid_weights)
    if args.evaluate_only:
        if not all((out / side / "marks.json").is_file() for side in SIDES):
            raise RaceError(f"--evaluate-only: {out} holds no finished race (*/marks.json)")
    else:
        if out.exists() and any(out.iterdir()):
            raise RaceError(f"--out {out} is not empty: give the race a new folder")
        wallclock.check_cores(cores, count=2)
        wallclock.check_config(wallclock.load_config(args.config, overrides))
        check_peer(args.peer_python, args.peer)
    arrays = race_data.cached_arrays(args.celeba_dir, args.cache_dir)
    if not args.evaluate_only:
        out.mkdir(parents=True, exist_ok=True)
        floor = np.load(arrays["train"], mmap_mode="r")
        pick = np.random.default_rng(0).choice(len(floor), wallclock.NUM_SAMPLES, replace=False)
        np.save(out / "train_floor.npy", np.asarray(floor[np.sort(pick)]))
        run_race(
            out=out.resolve(),
            config_spec=os.path.abspath(args.config.split(":")[0])
            + (":" + args.config.split(":", 1)[1] if ":" in args.config else ""),
            overrides=overrides,
            train_npy=arrays["train"].resolve(),
            minutes=args.minutes,
            every=args.every,
            peer_python=os.path.abspath(args.peer_python),
            peer_script=os.path.abspath(args.peer),
            cores=cores,
        )
    fid_params = None
    if fid_weights:
        from facegan_jax.metrics import evaluation

        print(f"FID with {fid_weights} (Inception on CPU: minutes per mark)")
        fid_params = evaluation.try_load_inception(fid_weights)
    scored = wallclock.score_runs(
        {side: out / side for side in SIDES},
        classifier,
        np.load(arrays["validation"]),
        fid_params,
        floor_images=np.load(floor) if (floor := out / "train_floor.npy").is_file() else None,
    )
    meta = {
        "minutes": args.minutes,
        "every": args.every,
        "marks_s": marks,
        "config": args.config,
        "overrides": overrides,
        "peer": args.peer,
        "classifier": str(args.classifier),
        "fid_weights": fid_weights,
        "cores": cores,
        "cpu": _cpu_model(),
    }
    write_report(out, scored, meta)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    sys.exit(main())
