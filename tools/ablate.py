r"""The ablation: variants of our recipe trained side by side at equal wall-clock, one core each.

  python -m tools.ablate --minutes 30 --every 10 --out runs/ablate30 \
      --classifier attr_celeba64 [--config configs/celeba64_fast.py] [--race runs/race60] \
      --variant recipe \
      --variant no_diffaugment --config.train.diffaugment= \
      --variant no_ema --config.train.ema_decay=0 \
      --variant seed1 --config.seed=1

Each `--variant NAME` is the recipe with the `--config.x=v` overrides that
follow it (overrides before the first `--variant` apply to all). The variants
train on the race's CelebA arrays (`race_data`) through `tools.wallclock`,
as many at a time as `--cores` lists, each pinned to its core with one thread,
so every variant has the same wall-clock budget under the same load; each saves
1,000 EMA samples at every `--every` mark. Then every mark is scored with
`fd_attr` (and FID with `--fid-weights`) against the 2,000 validation images.

It prints one row per variant (steps reached, fd_attr at each mark, and the
ratio to the first variant at the last mark: below 1 is better than it),
writes `<out>/ablation.json`, `<out>/ablation.png` (curves) and an 8x8 grid of
each variant's last mark. `--race DIR` adds a finished race's two sides
(`race:ours`, `race:peer`) up to `--minutes`, scored the same way, so the table
also says where each variant stands against the PyTorch peer.

An interrupted ablation resumes: run the same command again and the variants
that finished (`<out>/<name>/marks.json`) are kept, the others trained again
(an unfinished try is moved to `<out>/interrupted/<name>-k`, not deleted); more
`--variant`s can be added to a finished ablation the same way. A
variant that fails (diverges) is reported in the table with its log and the
others go on; the exit status is then 1. `--evaluate-only` scores again.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from facegan_jax import errors
from facegan_jax.errors import RaceError
from tools import race_data, wallclock
from tools.wallclock import mark_label

RACE_SIDES = ("ours", "peer")
INTERRUPTED = "interrupted"  # <out>/interrupted/<name>-k: unfinished tries, set aside
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+=-]*$")


class VariantFailedError(errors.RunError):
    """At least one variant exited with an error (the table names its log)."""


@dataclasses.dataclass(frozen=True)
class Variant:
    """One row of the ablation: a name and the config overrides that make it."""

    name: str
    overrides: tuple[str, ...]


PROG = "ablate"


def split_variants(
    argv: Sequence[str],
) -> tuple[list[str], list[str], list[Variant]]:
    """Splits the command line into (other arguments, common overrides, variants).

    `--variant NAME` (or `--variant=NAME`) opens a variant; the `--config.x=v`
    arguments after it, up to the next `--variant`, are its overrides. Those
    before the first `--variant` are common to all.

    Raises:
      RaceError: a variant without a name, a bad or repeated name.
    """
    rest: list[str] = []
    common: list[str] = []
    groups: list[tuple[str, list[str]]] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--variant" or arg.startswith("--variant="):
            if arg == "--variant":
                if i + 1 >= len(args) or args[i + 1].startswith("--"):
                    raise RaceError("--variant needs a name, e.g. --variant no_ema")
                name, i = args[i + 1], i + 2
            else:
                name, i = arg.split("=", 1)[1], i + 1
            groups.append((name, []))
            continue
        if arg.startswith("--config."):
            (groups[-1][1] if groups else common).append(arg)
        else:
            rest.append(arg)
        i += 1
    names = [name for name, _ in groups]
    for name in names:
        if not _NAME.match(name) or name in ("floor", INTERRUPTED):
            raise RaceError(
                f"--variant {name!r}: a name is letters, digits and _.+=- (a folder of --out)"
            )
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise RaceError(f"--variant {', '.join(repeated)} is given twice")
    return rest, common, [Variant(name, tuple(common + ov)) for name, ov in groups]


def build_parser() -> argparse.ArgumentParser:
    """Everything but `--variant` and `--config.x=v` (see `split_variants`)."""
    helps = (
        "folder for the ablation (resumable)",
        "cores to run variants on at once",
        "score a finished --out",
    )
    parser = wallclock.comparison_parser("ablate", __doc__, "variant", 10.0, helps)
    parser.add_argument("--race", help="a finished race folder to add to the table")
    return parser


def _plan(args: argparse.Namespace, variants: Sequence[Variant]) -> dict[str, Any]:
    return {
        "minutes": args.minutes,
        "every": args.every,
        "config": str(Path(args.config.split(":")[0]).resolve())
        + (":" + args.config.split(":", 1)[1] if ":" in args.config else ""),
        "variants": {v.name: list(v.overrides) for v in variants},
    }


def check_plan(out: Path, plan: dict[str, Any]) -> None:
    """RaceError if `out` holds an ablation with another budget, recipe or variant overrides.

    Adding variants to a finished ablation is allowed (they are trained); a
    variant of the same name must have the same overrides.
    """
    path = out / "plan.json"
    if not path.is_file():
        if out.exists() and any(out.iterdir()):
            raise RaceError(f"--out {out} is not empty and holds no ablation (plan.json)")
        return
    with open(path) as f:
        old = json.load(f)
    for key in ("minutes", "every", "config"):
        if old.get(key) != plan[key]:
            raise RaceError(
                f"--out {out} holds an ablation with {key}={old.get(key)!r}, not {plan[key]!r}: "
                "give a new --out or the same arguments"
            )
    for name, overrides in plan["variants"].items():
        if name in old["variants"] and old["variants"][name] != overrides:
            raise RaceError(
                f"--variant {name}: {out} trained it with {old['variants'][name]}, "
                f"not {overrides}; rename the variant or use a new --out"
            )


def _free_path(path: Path) -> Path:
    k = 1
    while path.with_name(f"{path.name}-{k}").exists():
        k += 1
    return path.with_name(f"{path.name}-{k}")


def _finished(folder: Path) -> bool:
    return (folder / "marks.json").is_file()


def run_variants(
    out: Path,
    config_spec: str,
    variants: Sequence[Variant],
    train_npy: Path,
    minutes: float,
    every: float,
    cores: Sequence[int],
    log: Callable[[str], None] = print,
) -> dict[str, str]:
    """Trains the unfinished variants, len(cores) at a time, each pinned to one core.

    Returns:
      {name: last lines of its log} for each variant that failed.
    """
    todo = [v for v in variants if not _finished(out / v.name)]
    for v in variants:
        if v not in todo:
            log(f"{v.name}: finished before, kept")
    env = wallclock.single_thread_env()
    failed: dict[str, str] = {}
    for start in range(0, len(todo), len(cores)):
        wave = todo[start : start + len(cores)]
        procs = []
        for v, core in zip(wave, cores, strict=False):
            folder = out / v.name
            if folder.exists():  # an interrupted try: kept aside, never deleted
                aside = _free_path(out / INTERRUPTED / v.name)
                aside.parent.mkdir(exist_ok=True)
                folder.rename(aside)
                log(f"{v.name}: unfinished earlier try moved to {aside}")
            folder.mkdir(parents=True)
            command = wallclock.train_command(
                config_spec, v.overrides, train_npy, folder, minutes, every
            )
            with open(folder / "train.log", "w") as f:
                proc = subprocess.Popen(
                    wallclock.pinned(command, core), stdout=f, stderr=subprocess.STDOUT, env=env
                )
            procs.append((v, proc))
            log(f"{v.name}: core {core}, {' '.join(v.overrides) or 'the recipe'}")
        try:
            for _, proc in procs:
                proc.wait()
        finally:
            for _, proc in procs:
                if proc.poll() is None:
                    proc.terminate()
                    proc.wait()
        for v, proc in procs:
            if proc.returncode != 0 or not _finished(out / v.name):
                text = (out / v.name / "train.log").read_text(errors="replace").strip()
                failed[v.name] = " | ".join(text.splitlines()[-2:])
                log(f"{v.name}: FAILED ({failed[v.name]})")
            else:
                log(f"{v.name}: done")
    return failed


def race_records(race_dir: Path) -> dict[str, Path]:
    """{'race:ours': folder, 'race:peer': folder} of a finished race (RaceError if not one)."""
    folders = {f"race:{side}": race_dir / side for side in RACE_SIDES}
    if not all(_finished(f) for f in folders.values()):
        raise RaceError(f"--race {race_dir} holds no finished race (ours/ and peer/marks.json)")
    return folders


def _up_to(records: Sequence[dict], minutes: float) -> list[dict]:
    return [r for r in records if r["mark_s"] <= minutes * 60.0 + 1e-6]


def format_table(
    scored: dict[str, list[dict]],
    overrides: dict[str, Sequence[str]],
    failed: dict[str, str],
    floor: dict | None = None,
) -> list[str]:
    """One row per run: its overrides, steps at its last mark, fd_attr per mark, ratio to the first.

    The ratio is the run's fd_attr over the first run's at the last mark both
    have (below 1: better than the first run).
    """
    marks = sorted({r["mark_s"] for records in scored.values() for r in records})
    names = [*scored, *(n for n in failed if n not in scored)]
    width = max([len(n) for n in names] + [7])
    head = f"{'run':<{width}} | {'steps':>6} | " + " ".join(f"{mark_label(m):>8}" for m in marks)
    first = next(iter(scored), None)
    head += f" | {'vs ' + first if first else '':>{max(len(first or '') + 3, 9)}} | overrides"
    lines = [f"fd_attr (lower is better) at each mark; {len(names)} runs", head, "-" * len(head)]
    base = {r["mark_s"]: r["fd_attr"] for r in scored.get(first, [])} if first else {}
    for name in names:
        if name in failed:
            lines.append(f"{name:<{width}} | FAILED: {failed[name]}")
            continue
        records = scored[name]
        by_mark = {r["mark_s"]: r for r in records}
        cells = " ".join(
            f"{by_mark[m]['fd_attr']:>8.2f}" if m in by_mark else f"{'-':>8}" for m in marks
        )
        common = [m for m in marks if m in by_mark and m in base]
        ratio = by_mark[common[-1]]["fd_attr"] / base[common[-1]] if common else float("nan")
        steps = records[-1]["step"] if records else 0
        text = " ".join(overrides.get(name, ())) or "-"
        lines.append(
            f"{name:<{width}} | {steps:>6} | {cells} | "
            f"{ratio:>{max(len(first or '') + 3, 9)}.3f} | {text}"
        )
    if floor:
        lines.append(f"real-data floor (1,000 train images): fd_attr {floor['fd_attr']:.2f}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ablation; errors are one line (exit 2), a failed variant exits 1 after the table."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return errors.run_command(PROG, lambda: _main(argv), verbose="--verbose" in argv)


def _main(argv: list[str]) -> None:
    parser = build_parser()
    rest, _, variants = split_variants(argv)
    args = parser.parse_args(rest)
    if not variants:
        raise RaceError(
            "no --variant given; e.g. --variant recipe --variant no_ema --config.train.ema_decay=0"
        )
    from facegan_jax import runtime

    runtime.setup(tensorflow=False)
    out = Path(args.out)
    marks = wallclock.interval_marks(args.minutes, args.every)
    cores = wallclock.parse_cores(args.cores)
    # Every input is checked before anything runs, cheapest first.
    race_data.check_celeba_dir(args.celeba_dir)
    classifier = wallclock.load_classifier(args.classifier)
    fid_weights = wallclock.find_fid_weights(args.fid_weights)
    race_folders = race_records(Path(args.race)) if args.race else {}
    plan = _plan(args, variants)
    if args.evaluate_only:
        missing = [v.name for v in variants if not (out / v.name).is_dir()]
        if missing:
            raise RaceError(f"--evaluate-only: {out} has no run of {', '.join(missing)}")
    else:
        check_plan(out, plan)
        wallclock.check_cores(cores)
        for v in variants:
            try:
                wallclock.check_config(wallclock.load_config(args.config, v.overrides))
            except RaceError as e:
                raise RaceError(f"--variant {v.name}: {e}") from None
    arrays = race_data.cached_arrays(args.celeba_dir, args.cache_dir)
    failed: dict[str, str] = {}
    if not args.evaluate_only:
        out.mkdir(parents=True, exist_ok=True)
        old = {}
        if (out / "plan.json").is_file():
            old = json.loads((out / "plan.json").read_text())["variants"]
        wallclock.write_json(out / "plan.json", {**plan, "variants": {**old, **plan["variants"]}})
        print(
            f"ablation: {len(variants)} variants, {args.minutes:g} min each, marks at "
            f"{', '.join(mark_label(m) for m in marks)}, {len(cores)} at a time on cores "
            f"{','.join(map(str, cores))}"
        )
        failed = run_variants(
            out.resolve(),
            plan["config"],
            variants,
            arrays["train"].resolve(),
            args.minutes,
            args.every,
            cores,
        )
    else:
        failed = {v.name: "no marks.json" for v in variants if not _finished(out / v.name)}
    runs = {v.name: out / v.name for v in variants if v.name not in failed}
    runs.update(race_folders)
    fid_params = None
    if fid_weights:
        from facegan_jax.metrics import evaluation

        fid_params = evaluation.try_load_inception(fid_weights)
    train = np.load(arrays["train"], mmap_mode="r")
    count = min(len(train), wallclock.NUM_SAMPLES)
    pick = np.sort(np.random.default_rng(0).choice(len(train), count, replace=False))
    scored = wallclock.score_runs(
        runs,
        classifier,
        np.load(arrays["validation"]),
        fid_params,
        floor_images=np.asarray(train[pick]),
    )
    floor = scored.pop("floor")
    scored = {name: _up_to(records, args.minutes) for name, records in scored.items()}
    overrides = {v.name: v.overrides for v in variants}
    if race_folders:
        race_meta = json.loads((Path(args.race) / "race.json").read_text())
        overrides["race:ours"] = tuple(race_meta.get("overrides", ())) or ("the race's recipe",)
        overrides["race:peer"] = ("PyTorch DCGAN peer",)
    for line in format_table(scored, overrides, failed, floor):
        print(line)
    wallclock.write_json(
        out / "ablation.json",
        {**plan, "runs": scored, "failed": failed, "floor": floor, "race": args.race},
    )
    wallclock.plot_curves(scored, out / "ablation.png", floor)
    from facegan_jax.generation import sampling

    for name, records in scored.items():
        if records and not name.startswith("race:"):
            last = records[-1]
            images = race_data.to_float(np.load(runs[name] / last["file"])[:64])
            sampling.save_grid(images, str(out / f"{name}_{mark_label(last['mark_s'])}.png"))
    print(f"wrote {out / 'ablation.json'}, {out / 'ablation.png'} and each variant's last grid")
    if failed:
        raise VariantFailedError(
            f"{len(failed)} variant(s) failed: "
            + "; ".join(f"{n} (log: {out / n / 'train.log'})" for n in failed)
        )


if __name__ == "__main__":
    sys.exit(main())
