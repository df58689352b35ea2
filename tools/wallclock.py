r"""Our side of the wall-clock comparisons: train for a budget on one core, save and score marks.

  python -m tools.wallclock --config=configs/celeba64_fast.py [--config.x=v ...] \
      --data celeba64_train.npy --out DIR --minutes 30 --every 5

The race (`tools.race`, ours against the PyTorch peer) and the ablation
(`tools.ablate`, variants of our recipe against each other) start this
command pinned to a core (`pinned`) with one thread (`single_thread_env`). It
trains with the library's jitted train step on an in-memory uint8 array (the
race arrays, `race_data`), no TFDS pipeline, and saves 1,000 EMA-generator
samples of fixed latents at each mark (`interval_marks`), the peer script's
schedule; `score_runs` then scores every saved mark with `fd_attr` (and FID
with Inception weights) against the validation images, and `plot_curves`
draws any number of runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from facegan_jax import errors, models
from facegan_jax.cli import args as args_lib
from facegan_jax.errors import RaceError
from tools.race_data import IMAGE_SIZE, to_float

NUM_SAMPLES = 1000  # what the peer script saves per mark; ours matches it
SAMPLE_BATCH = 100
SINGLE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
CLASSIFIER_COMMAND = (
    "python -m data_prep.prepare_celeba --manual-dir ../shared/data/celeba "
    "--data-dir ~/tensorflow_datasets && python -m data_prep.train_attribute_classifier "
    "--data=celeba_local --tfds-data-dir ~/tensorflow_datasets --image-size 64 --steps 2400 "
    "--seed 1 --widths 40,80,160,320 --feature-dim 320 --out {folder}"
)


# ----------------------------------------------------------------------------- schedule
def interval_marks(minutes: float, every: float) -> list[float]:
    """The seconds at which every run saves samples: every `every` minutes, and at the end.

    Mirrors the peer script: marks at k * every (k = 1, 2, ...) strictly before
    `minutes`, then `minutes` itself (the last mark, where both stop).

    Raises:
      RaceError: for a non-positive `minutes` or `every`.
    """
    if not minutes > 0 or not every > 0:
        raise RaceError(f"--minutes={minutes} and --every={every} must both be > 0")
    end = minutes * 60.0
    marks = []
    k = 1
    while k * every * 60.0 < end - 1e-6:
        marks.append(round(k * every * 60.0, 6))
        k += 1
    return [*marks, round(end, 6)]


def mark_label(seconds: float) -> str:
    """'5min', '0.5min', '2.25min': a mark's name in tables and file listings."""
    return f"{seconds / 60.0:g}min"


# ----------------------------------------------------------------------------- config
def load_config(spec: str, overrides: Sequence[str] = ()) -> Any:
    """Loads `configs/x.py[:variant]` with `--config.a.b=v` overrides, exactly as main does.

    Raises:
      RaceError: the file or an override cannot be loaded (names it).
    """
    from facegan_jax import recipes

    try:
        return recipes.load_config(spec, overrides)
    except errors.UsageError as e:
        raise RaceError(errors.one_line(e)) from None


def check_config(config: Any) -> None:
    """What a run on the race arrays needs of a config: a valid, unconditional 64x64 RGB recipe.

    Raises:
      RaceError: naming the field.
    """
    from facegan_jax.training import train

    try:
        train.validate_config(config)
    except ValueError as e:
        raise RaceError(str(e)) from None
    if config.data.image_size != IMAGE_SIZE or config.data.channels != 3:
        raise RaceError(
            f"config.data.image_size={config.data.image_size}, channels="
            f"{config.data.channels}: the race trains on 64x64 RGB (the peer's data)"
        )
    if models.is_conditional(config):
        raise RaceError("config.model.num_attributes must be 0: the peer is unconditional")


# ----------------------------------------------------------------------------- training
def _ema_variables(state: Any) -> dict[str, Any]:
    return {"params": state.ema_params, **state.ema_vars}


def epoch_batches(images: np.ndarray, per_step: int, seed: int) -> Iterator[np.ndarray]:
    """Endless full batches [per_step, H, W, C] uint8: a seeded permutation per epoch.

    Like the peer script's loop: each epoch a fresh permutation, the last partial
    batch dropped.
    """
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(images))
        for i in range(0, len(order) - per_step + 1, per_step):
            yield images[order[i : i + per_step]]


def train_for_marks(
    config: Any,
    train_images: np.ndarray,
    out_dir: str | os.PathLike,
    marks: Sequence[float],
    *,
    num_samples: int = NUM_SAMPLES,
    log: Callable[[str], None] = print,
    clock: Callable[[], float] = time.perf_counter,
) -> list[dict[str, Any]]:
    """Trains `config` on `train_images` until the last mark, saving samples at marks.

    The wall-clock twin of the peer script's loop, run by the library's one loop
    (`training.loop.run`, its time marks and deadline one hook): `epoch_batches`, one
    jitted (donated) `train_step` per batch, and after a step that ends at or past the
    next mark the EMA generator draws `num_samples` images of the fixed latents
    `sampling.latents(components.SAMPLE_SEED, 0..N-1)`, saved as `mark_NN.npy`
    (uint8). As in the peer, a step saves at most once and the save of a step
    past the last mark is the last one (marks a single step jumped over have no
    save). The clock starts just before the first step (its compile included);
    building the state and compiling the sampler come first. The final state is
    checkpointed into `<out_dir>/workdir` after the clock.

    Args:
      config: the recipe.
      train_images: uint8 [N, H, W, C].
      out_dir: where samples, marks.json and the final workdir go.
      marks: seconds of the saves (`interval_marks`).
      num_samples: images per save.
      log: where the peer-style progress line of each save goes.
      clock: seconds (a fake one in tests).

    Returns:
      One record per save: mark_s, elapsed_s, step, images, d_loss, g_loss, file.

    Raises:
      errors.TrainingDivergedError: non-finite losses at a save.
    """
    import jax

    from facegan_jax.generation import sampling
    from facegan_jax.training import components, loop

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = components.build(config)
    per_step = config.train.batch_size * config.train.n_critic
    if len(train_images) < per_step:
        raise RaceError(f"{len(train_images)} training images < {per_step} per step")
    generate = sampling.make_batched_generate_fn(run.generator, config, seed=components.SAMPLE_SEED)
    indices = np.arange(num_samples)
    state = run.create_state()
    sample_batch = min(SAMPLE_BATCH, num_samples)
    sampling.generate_in_batches(
        generate, _ema_variables(state), indices[:sample_batch], sample_batch
    )

    records: list[dict[str, Any]] = []

    def one_step(state: Any, batch: np.ndarray) -> tuple[Any, Any]:
        images = jax.device_put(to_float(batch), run.batch_sharding)
        return run.train_step(state, {"image": images})

    def at_marks(step: int, state: Any, metrics: Any) -> bool:
        """The deadline hook: samples at each mark passed, True (stop) at the last."""
        jax.block_until_ready(metrics)  # the clock must see finished steps
        elapsed = clock() - start
        if elapsed < marks[len(records)]:
            return False
        final = elapsed >= marks[-1]
        record = dict(
            mark_s=marks[-1] if final else marks[len(records)],
            elapsed_s=elapsed,
            step=step,
            images=step * per_step,
            d_loss=float(metrics["d_loss"]),
            g_loss=float(metrics["g_loss"]),
            file=f"mark_{len(records):02d}.npy",
        )
        if not (math.isfinite(record["d_loss"]) and math.isfinite(record["g_loss"])):
            raise errors.TrainingDivergedError(
                f"non-finite losses at step {step}: d={record['d_loss']}, g={record['g_loss']}"
            )
        samples = sampling.generate_in_batches(
            generate, _ema_variables(state), indices, sample_batch
        )
        np.save(out / record["file"], sampling.to_uint8(samples))
        records.append(record)
        log(
            f"min={elapsed / 60:.1f} step={step} imgs={record['images']} "
            f"d={record['d_loss']:.3f} g={record['g_loss']:.3f}"
        )
        return final

    start = clock()
    state, _ = loop.run(
        one_step,
        state,
        epoch_batches(train_images, per_step, config.seed),
        first_step=0,
        last_step=sys.maxsize,  # the batches never end: the deadline hook stops the loop
        hooks=[at_marks],
    )
    write_json(out / "marks.json", records)
    _save_checkpoint(out / "workdir", config, state)
    return records


def _save_checkpoint(workdir: Path, config: Any, state: Any) -> None:
    """The final state as a training workdir (`facegan_jax.cli.sample --workdir` reads it)."""
    from facegan_jax import workdir as workdir_lib
    from facegan_jax.training import checkpointing

    workdir_lib.write_config(workdir, config)
    manager = checkpointing.create_manager(str(workdir))
    checkpointing.save(manager, state, force=True)
    manager.wait_until_finished()


def write_json(path: Path, obj: Any) -> None:
    """`obj` as indented JSON, written atomically (a reader never sees half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- launching
def single_thread_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of one pinned run: one thread for XLA, TensorFlow, torch/OpenMP and BLAS."""
    env = dict(os.environ if base is None else base)
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {SINGLE_THREAD_XLA}".strip()
    for name in (
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "TF_NUM_INTRAOP_THREADS",
        "TF_NUM_INTEROP_THREADS",
    ):
        env[name] = "1"
    env.setdefault("JAX_PLATFORMS", "cpu")
    env.setdefault("CUDA_VISIBLE_DEVICES", "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def pinned(command: Sequence[str], core: int) -> list[str]:
    """`command` pinned to CPU `core` with taskset."""
    return ["taskset", "-c", str(core), *command]


def train_command(
    config_spec: str,
    overrides: Sequence[str],
    train_npy: Path,
    out: Path,
    minutes: float,
    every: float,
) -> list[str]:
    """This module's command line for one run (what the race and the ablation pin to a core)."""
    return [
        sys.executable,
        "-m",
        "tools.wallclock",
        f"--config={config_spec}",
        *overrides,
        "--data",
        str(train_npy),
        "--out",
        str(out),
        "--minutes",
        repr(minutes),
        "--every",
        repr(every),
    ]


def check_cores(cores: Sequence[int], count: int | None = None) -> None:
    """RaceError unless taskset exists and `cores` are distinct, usable here and `count` many.

    Args:
      cores: CPU numbers, one per run that trains at the same time.
      count: how many are needed (None: any number from 1).
    """
    if shutil.which("taskset") is None:
        raise RaceError("taskset not found (util-linux): each run is pinned to its own core")
    allowed = os.sched_getaffinity(0)
    wrong_count = count is not None and len(cores) != count
    if not cores or wrong_count or len(set(cores)) != len(cores) or not set(cores) <= allowed:
        need = f"{count} distinct cores" if count else "distinct cores"
        raise RaceError(f"--cores {','.join(map(str, cores))}: need {need} of {sorted(allowed)}")


def comparison_parser(
    prog: str, doc: str, unit: str, every: float, helps: tuple[str, str, str]
) -> argparse.ArgumentParser:
    """The parser of a comparison (the race, the ablation) with the arguments they share.

    Budget per `unit`, marks every `every` minutes, --out, --config, the judge, the
    CelebA arrays, FID weights, cores and --evaluate-only; `helps` are the help
    texts of --out, --cores and --evaluate-only. The caller adds its own.
    """
    from facegan_jax.cli import args as args_lib
    from tools import race_data

    out_help, cores_help, evaluate_help = helps
    parser = args_lib.Parser(prog, description=doc.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--minutes", type=float, default=30.0, help=f"training budget per {unit}")
    parser.add_argument("--every", type=float, default=every, help="minutes between sample marks")
    parser.add_argument("--out", required=True, help=out_help)
    parser.add_argument(
        "--config", default=race_data.DEFAULT_CONFIG, help="our recipe (configs/*.py)"
    )
    parser.add_argument("--classifier", help="attribute classifier folder (the fd_attr judge)")
    parser.add_argument(
        "--celeba-dir", default=race_data.DEFAULT_CELEBA, help="CelebA manual-download folder"
    )
    parser.add_argument(
        "--cache-dir", default=race_data.DEFAULT_CACHE, help="where prepared arrays are kept"
    )
    parser.add_argument("--fid-weights", help="pytorch-fid Inception weights (default: the cache)")
    parser.add_argument("--cores", default="0,1", help=cores_help)
    parser.add_argument("--evaluate-only", action="store_true", help=evaluate_help)
    errors.add_verbose_flag(parser)
    return parser


def parse_cores(text: str) -> list[int]:
    """'0,1' -> [0, 1]; RaceError naming `--cores` otherwise."""
    try:
        return [int(c) for c in text.split(",")]
    except ValueError:
        raise RaceError(f"--cores {text!r} must be core numbers, e.g. 0,1") from None


# ----------------------------------------------------------------------------- scoring
def load_classifier(folder: str | None) -> Any:
    """The attribute classifier, or RaceError saying how to train one."""
    if not folder:
        raise RaceError(
            "--classifier FOLDER is required (the fd_attr judge); train one with: "
            + CLASSIFIER_COMMAND.format(folder="attr_celeba64")
        )
    from facegan_jax.metrics import attributes

    try:
        return attributes.load(folder)
    except (OSError, ValueError) as e:
        raise RaceError(
            f"--classifier {folder}: {errors.one_line(e)}; train one with: "
            + CLASSIFIER_COMMAND.format(folder=folder)
        ) from None


def find_fid_weights(path: str | None) -> str | None:
    """The Inception weights to score FID with: `path`, else the cached file, else None."""
    if path:
        if not Path(path).is_file():
            raise RaceError(f"--fid-weights {path} not found")
        return path
    from facegan_jax.metrics import inception_weights

    cached = inception_weights.cache_dir() / inception_weights.FID_WEIGHTS_FILENAME
    return str(cached) if cached.is_file() else None


def score_runs(
    runs: Mapping[str, Path],
    classifier: Any,
    validation: np.ndarray,
    fid_params: Any = None,
    floor_images: np.ndarray | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """fd_attr (and FID with `fid_params`) of every saved mark of every run.

    Args:
      runs: name -> folder holding marks.json and the mark_NN.npy it names.
      classifier: the attribute classifier (`load_classifier`).
      validation: uint8 real images the marks are compared with.
      fid_params: Inception parameters, or None for no FID.
      floor_images: uint8 real training images scored as 'floor' (None: no floor).
      log: one line per scored mark.

    Returns:
      {name: [marks.json record + scores], ..., 'floor': scores (with floor_images)}.
    """
    from facegan_jax.metrics import attributes, fid

    real = attributes.feature_statistics(classifier.features(to_float(validation)))
    real_fid = None
    if fid_params is not None:
        mu, sigma, _ = fid.compute_stats_from_images([validation], fid_params)
        real_fid = (mu, sigma)

    def score(images: np.ndarray) -> dict[str, float]:
        result = {"fd_attr": attributes.fd_attr(classifier.features(to_float(images)), real)}
        if real_fid is not None:
            mu, sigma, _ = fid.compute_stats_from_images([images], fid_params)
            result["fid"] = fid.frechet_distance(mu, sigma, *real_fid)
        return result

    scored: dict[str, Any] = {}
    for name, folder in runs.items():
        with open(Path(folder) / "marks.json") as f:
            records = json.load(f)
        for record in records:
            record.update(score(np.load(Path(folder) / record["file"])))
            log(f"{name} {mark_label(record['mark_s'])}: fd_attr {record['fd_attr']:.2f}")
        scored[name] = records
    if floor_images is not None:
        scored["floor"] = score(np.asarray(floor_images))
    return scored


_COLOURS = [
    (31, 119, 180),
    (214, 39, 40),
    (44, 160, 44),
    (148, 103, 189),
    (255, 127, 14),
    (140, 86, 75),
    (227, 119, 194),
    (23, 190, 207),
]


def has_fid(series: Mapping[str, Sequence[dict]]) -> bool:
    """Whether any record of any run carries an FID score."""
    return any("fid" in r for records in series.values() for r in records)


def plot_curves(
    series: Mapping[str, Sequence[dict]], path: str | os.PathLike, floor: dict | None = None
) -> None:
    """A PNG of fd_attr (and FID) against training minutes, one line per run (PIL only).

    Args:
      series: run name -> scored records (mark_s, fd_attr, optionally fid), in legend order.
      path: the PNG to write.
      floor: the real-data floor's scores, drawn as a grey line.
    """
    from PIL import Image, ImageDraw

    metrics = ["fd_attr"] + (["fid"] if has_fid(series) else [])
    width, panel = 640, 360
    img = Image.new("RGB", (width, panel * len(metrics)), "white")
    draw = ImageDraw.Draw(img)
    marks = sorted({r["mark_s"] for records in series.values() for r in records})
    x_max = max([m / 60.0 for m in marks] or [1.0])
    for p, metric in enumerate(metrics):
        points = {
            name: [(r["mark_s"] / 60.0, r[metric]) for r in records if metric in r]
            for name, records in series.items()
        }
        values = [y for pts in points.values() for _, y in pts]
        values += [floor[metric]] if floor and metric in floor else []
        y_max = max(values or [1.0]) * 1.1 or 1.0
        left, top, right, bottom = 56, p * panel + 30, width - 20, p * panel + panel - 46

        def xy(x: float, y: float, box=(left, top, right, bottom), y_max=y_max) -> tuple:
            return (
                box[0] + (box[2] - box[0]) * x / x_max,
                box[3] - (box[3] - box[1]) * y / y_max,
            )

        draw.rectangle((left, top, right, bottom), outline="black")
        draw.text((left, top - 22), f"{metric} (lower is better) vs training minutes", "black")
        for frac in (0.0, 0.5, 1.0):
            value = y_max / 1.1 * frac
            draw.text((4, xy(0, value)[1] - 6), f"{value:.3g}", "black")
        for m in marks:
            draw.text((xy(m / 60.0, 0)[0] - 10, bottom + 4), f"{m / 60.0:g}", "black")
        if floor and metric in floor:
            y = xy(0, floor[metric])[1]
            draw.line((left, y, right, y), fill=(128, 128, 128))
            draw.text((left + 4, y - 14), "real-data floor", (128, 128, 128))
        colours = [_COLOURS[i % len(_COLOURS)] for i in range(len(points))]
        for colour, pts in zip(colours, points.values(), strict=True):
            xys = [xy(x, y) for x, y in pts]
            if len(xys) > 1:
                draw.line(xys, fill=colour, width=3)
            for px, py in xys:
                draw.ellipse((px - 4, py - 4, px + 4, py + 4), fill=colour)
        # The legend last, on a white box, so no curve hides a name.
        box = (right - 156, top + 6, right - 4, top + 10 + 14 * len(points))
        draw.rectangle(box, fill="white", outline=(200, 200, 200))
        for i, (colour, name) in enumerate(zip(colours, points, strict=True)):
            draw.text((right - 150, top + 8 + 14 * i), f"-- {name}", colour)
    img.save(path)


# ----------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    """`--config=SPEC [--config.x=v ...] --data NPY --out DIR --minutes M --every E`: one run."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = args_lib.Parser("wallclock", allow_abbrev=False)
    parser.add_argument("--config", required=True)
    parser.add_argument("--data", required=True, help="uint8 [N, 64, 64, 3] .npy")
    parser.add_argument("--out", required=True)
    parser.add_argument("--minutes", type=float, required=True)
    parser.add_argument("--every", type=float, required=True)
    args, overrides = args_lib.parse_with_overrides(parser, argv)

    def run() -> None:
        from facegan_jax import runtime

        runtime.setup(tensorflow=False)
        config = load_config(args.config, overrides)
        check_config(config)
        data = np.load(args.data)
        print(f"ours: {' '.join([args.config, *overrides])} on {len(data)} images", flush=True)
        train_for_marks(
            config,
            data,
            args.out,
            interval_marks(args.minutes, args.every),
            log=lambda line: print(line, flush=True),
        )

    return errors.run_command("wallclock", run)


if __name__ == "__main__":
    sys.exit(main())
