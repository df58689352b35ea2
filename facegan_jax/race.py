r"""The race: our recipe against the PyTorch DCGAN peer at equal wall-clock, one CPU core each.

  python -m facegan_jax.race --minutes 30 --every 5 --out runs/race30 \
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
   array (ours through `race train-ours`, a wall-clock driver around the
   library's jitted train step: same model, step, optimisers and EMA as
   `facegan_jax.main`, without the TFDS pipeline, so preprocessing is identical
   on both sides). Each side times itself from just before its first training
   step (ours includes compiling the step) and, at each `--every` mark, saves
   1,000 samples from fixed latents (ours: the EMA generator) on its own core
   and clock, as the peer script does.
3. After both finished (so the evaluation never competes with training),
   scores every mark on all cores: `fd_attr` (Fréchet distance in the
   attribute classifier's feature space, `facegan_jax.attributes`) against the
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
the final checkpoint for `facegan_jax.sample`), `peer/` (train.log,
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
import io
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from facegan_jax import errors

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = str(REPO_ROOT / "configs" / "celeba64_fast.py")
DEFAULT_PEER = str(REPO_ROOT.parent / "shared" / "peers" / "torch_dcgan_train.py")
DEFAULT_PEER_PYTHON = str(REPO_ROOT / ".venv-peers" / "bin" / "python")
DEFAULT_CELEBA = str(REPO_ROOT.parent / "shared" / "data" / "celeba")
DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "facegan_jax", "race")

PEER_SETUP = (
    "python3 -m venv .venv-peers && .venv-peers/bin/pip install "
    "-r ../shared/peers/requirements-peer.txt (see ../shared/peers/README.md)"
)
CLASSIFIER_COMMAND = (
    "python -m data_prep.prepare_celeba --manual_dir ../shared/data/celeba "
    "--data_dir ~/tensorflow_datasets && python -m data_prep.train_attribute_classifier "
    "--data=celeba_local --tfds_data_dir ~/tensorflow_datasets --image_size 64 --steps 3000 "
    "--out {folder}"
)

IMAGE_SIZE = 64
# PIL box (left, upper, right, lower) of rows 20..198 of a 178x218 aligned CelebA image.
CROP_BOX = (0, 20, 178, 198)
SPLITS = {"train": 0, "validation": 1}  # list_eval_partition.txt codes
ZIP_FOLDER = "img_align_celeba/"
NUM_SAMPLES = 1000  # what the peer script saves per mark; ours matches it
SAMPLE_BATCH = 100
SIDES = ("ours", "peer")
SINGLE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
_PEER_LINE = re.compile(r"min=([0-9.]+) step=(\d+) imgs=(\d+) d=(\S+) g=(\S+)")


class RaceError(errors.UsageError):
    """Input the race cannot start with (missing data, venv, classifier, used --out)."""


class SideFailedError(errors.RunError):
    """One side of the race exited with an error (its log is named)."""


# ----------------------------------------------------------------------------- schedule
def interval_marks(minutes: float, every: float) -> list[float]:
    """The seconds at which both sides save samples: every `every` minutes, and at the end.

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


# ----------------------------------------------------------------------------- data
def read_partition(path: str | os.PathLike) -> dict[str, int]:
    """`list_eval_partition.txt` -> {'000001.jpg': 0, ...}."""
    out = {}
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 2:
                out[parts[0]] = int(parts[1])
    return out


def split_members(zip_names: Sequence[str], partition: dict[str, int], split: str) -> list[str]:
    """The zip members of `split` ('train' or 'validation'), sorted by image id."""
    code = SPLITS[split]
    names = [
        n
        for n in zip_names
        if n.startswith(ZIP_FOLDER) and partition.get(n[len(ZIP_FOLDER) :]) == code
    ]
    return sorted(names)


def face64(jpeg: bytes) -> np.ndarray:
    """One aligned CelebA JPEG -> uint8 [64, 64, 3]: rows 20..198, PIL bicubic to 64."""
    from PIL import Image

    with Image.open(io.BytesIO(jpeg)) as img:
        img = img.convert("RGB").crop(CROP_BOX)
        return np.asarray(img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC), np.uint8)


def check_celeba_dir(celeba_dir: str | os.PathLike) -> tuple[Path, Path]:
    """(zip, partition file) of `celeba_dir`; RaceError naming what is missing."""
    folder = Path(celeba_dir)
    archive, partition = folder / "img_align_celeba.zip", folder / "list_eval_partition.txt"
    missing = [p.name for p in (archive, partition) if not p.is_file()]
    if missing:
        raise RaceError(
            f"--celeba-dir {folder}: {', '.join(missing)} not found; it needs CelebA's "
            "img_align_celeba.zip and list_eval_partition.txt (README 'CelebA'; the shared "
            "subset is ../shared/data/celeba)"
        )
    return archive, partition


def prepare_split(
    celeba_dir: str | os.PathLike, split: str, limit: int | None = None
) -> tuple[np.ndarray, list[str]]:
    """Decodes `split`'s images of the CelebA folder into uint8 [N, 64, 64, 3].

    Args:
      celeba_dir: folder with img_align_celeba.zip and list_eval_partition.txt.
      split: 'train' or 'validation'.
      limit: the first `limit` images by id only (None: all in the zip).

    Returns:
      (images, file names such as '000001.jpg'), in id order.
    """
    archive, partition_file = check_celeba_dir(celeba_dir)
    partition = read_partition(partition_file)
    with zipfile.ZipFile(archive) as zf:
        members = split_members(zf.namelist(), partition, split)[:limit]
        images = np.zeros((len(members), IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
        for i, name in enumerate(members):
            images[i] = face64(zf.read(name))
    return images, [m[len(ZIP_FOLDER) :] for m in members]


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


def cached_arrays(
    celeba_dir: str | os.PathLike, cache_dir: str | os.PathLike, log: Callable[[str], None] = print
) -> dict[str, Path]:
    """The train and validation arrays (.npy), prepared once per CelebA folder and cached.

    The cache is keyed by the zip's and partition file's size and mtime; a
    changed folder is prepared again.

    Returns:
      {'train': path, 'validation': path}.
    """
    archive, partition = check_celeba_dir(celeba_dir)
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    key = {
        "celeba_dir": str(Path(celeba_dir).resolve()),
        "zip": [archive.stat().st_size, archive.stat().st_mtime_ns],
        "partition": [partition.stat().st_size, partition.stat().st_mtime_ns],
        "crop_box": list(CROP_BOX),
        "size": IMAGE_SIZE,
        "resample": "PIL bicubic",
    }
    meta_path = cache / "celeba64_meta.json"
    paths = {split: cache / f"celeba64_{split}.npy" for split in SPLITS}
    if meta_path.is_file() and all(p.is_file() for p in paths.values()):
        with open(meta_path) as f:
            if json.load(f).get("key") == key:
                return paths
    meta: dict[str, Any] = {"key": key}
    for split, path in paths.items():
        start = time.perf_counter()
        images, names = prepare_split(celeba_dir, split)
        _save_npy_atomic(path, images)
        meta[split] = {"count": len(names), "first": names[:1], "last": names[-1:]}
        log(f"prepared {len(names)} {split} images -> {path} ({time.perf_counter() - start:.0f} s)")
    with open(meta_path, "w") as f:
        json.dump(meta, f, indent=2)
    return paths


def to_float(images: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, C] -> float32 in [-1, 1] (x / 127.5 - 1, as the peer scales)."""
    return images.astype(np.float32) / 127.5 - 1.0


# ----------------------------------------------------------------------------- config
def load_config(spec: str, overrides: Sequence[str] = ()) -> Any:
    """Loads `configs/x.py[:variant]` with `--config.a.b=v` overrides, exactly as main does.

    Raises:
      RaceError: the file or an override cannot be loaded (names it).
    """
    from absl import flags
    from ml_collections import config_flags

    argv = ["race", f"--config={spec}", *overrides]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", flag_values=flag_values, lock_config=True, sys_argv=argv
    )
    try:
        flag_values(argv)
        config = flag_values.config
        config.get("seed")  # ml_collections defers file load errors to first access
    except Exception as e:  # anything raised while parsing is about the command line
        raise RaceError(errors.one_line(errors.flag_error(e, argv))) from None
    return config


def check_config(config: Any) -> None:
    """What the race needs of a config: a valid, unconditional 64x64 RGB recipe.

    Raises:
      RaceError: naming the field.
    """
    from facegan_jax import train

    try:
        train.validate_config(config)
    except ValueError as e:
        raise RaceError(str(e)) from None
    if config.data.image_size != IMAGE_SIZE or config.data.channels != 3:
        raise RaceError(
            f"config.data.image_size={config.data.image_size}, channels="
            f"{config.data.channels}: the race trains on 64x64 RGB (the peer's data)"
        )
    if config.model.num_attributes:
        raise RaceError("config.model.num_attributes must be 0: the peer is unconditional")


# ----------------------------------------------------------------------------- our side
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

    The wall-clock twin of the peer script's loop: `epoch_batches`, one jitted
    (donated) `train_step` per batch, and after a step that ends at or past the
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

    from facegan_jax import components, sampling

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
    start = clock()
    for step, batch in enumerate(epoch_batches(train_images, per_step, config.seed), start=1):
        images = jax.device_put(to_float(batch), run.batch_sharding)
        state, metrics = run.train_step(state, {"image": images})
        jax.block_until_ready(metrics)  # the clock must see finished steps
        elapsed = clock() - start
        if elapsed < marks[len(records)]:
            continue
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
        if final:
            break
    _write_json(out / "marks.json", records)
    _save_checkpoint(out / "workdir", config, state)
    return records


def _save_checkpoint(workdir: Path, config: Any, state: Any) -> None:
    """The final state as a training workdir (`facegan_jax.sample --workdir` reads it)."""
    from facegan_jax import checkpointing
    from facegan_jax import workdir as workdir_lib

    workdir_lib.write_config(workdir, config)
    manager = checkpointing.create_manager(str(workdir))
    checkpointing.save(manager, state, force=True)
    manager.wait_until_finished()


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


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


# ----------------------------------------------------------------------------- launching
def single_thread_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of one racer: one thread for XLA, TensorFlow, torch/OpenMP and BLAS."""
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


def ours_command(
    config_spec: str,
    overrides: Sequence[str],
    train_npy: Path,
    out: Path,
    minutes: float,
    every: float,
) -> list[str]:
    """The `race train-ours` command of our side."""
    return [
        sys.executable,
        "-m",
        "facegan_jax.race",
        "train-ours",
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


def check_cores(cores: Sequence[int]) -> None:
    """RaceError unless taskset exists and both cores are distinct and usable here."""
    if shutil.which("taskset") is None:
        raise RaceError("taskset not found (util-linux): the race pins each side to a core")
    allowed = os.sched_getaffinity(0)
    if len(set(cores)) != 2 or not set(cores) <= allowed:
        raise RaceError(
            f"--cores {','.join(map(str, cores))}: need two distinct cores of {sorted(allowed)}"
        )


def load_classifier(folder: str | None) -> Any:
    """The attribute classifier, or RaceError saying how to train one."""
    if not folder:
        raise RaceError(
            "--classifier FOLDER is required (the fd_attr judge); train one with: "
            + CLASSIFIER_COMMAND.format(folder="attr_celeba64")
        )
    from facegan_jax import attributes

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
    from facegan_jax.models import inception_weights

    cached = inception_weights.cache_dir() / inception_weights.FID_WEIGHTS_FILENAME
    return str(cached) if cached.is_file() else None


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
    marks = interval_marks(minutes, every)
    raw_dir = out / "peer" / "raw"
    for d in (out / "ours", raw_dir):
        d.mkdir(parents=True, exist_ok=True)
    commands = {
        "ours": ours_command(config_spec, overrides, train_npy, out / "ours", minutes, every),
        "peer": peer_command(peer_python, peer_script, train_npy, raw_dir, minutes, every),
    }
    log(
        f"race: marks at {', '.join(mark_label(m) for m in marks)}; ours on core {cores[0]}, "
        f"peer on core {cores[1]}; logs: {out / 'ours' / 'train.log'}, "
        f"{out / 'peer' / 'train.log'}"
    )
    env = single_thread_env()
    racers: list[_Racer] = []
    try:
        for (name, command), core in zip(commands.items(), cores, strict=True):
            log_path = out / name / "train.log"
            with open(log_path, "w") as f:
                proc = subprocess.Popen(
                    pinned(command, core), stdout=f, stderr=subprocess.STDOUT, env=env
                )
            racers.append(_Racer(name, proc, log_path))
        peer_records = _follow(racers, raw_dir, marks, log)
    finally:
        _stop(racers)
    # The peer's last save is the one at the end of its budget, even when one long
    # step jumped over the marks before it (the peer then saved once, and stopped).
    peer_records[-1]["mark_s"] = marks[-1]
    _write_json(out / "peer" / "marks.json", peer_records)
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


# ----------------------------------------------------------------------------- scoring
def score_marks(
    out: Path,
    classifier: Any,
    validation: np.ndarray,
    fid_params: Any = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """fd_attr (and FID with `fid_params`) of every saved mark of both sides.

    Returns:
      {'ours': [record + scores], 'peer': [...], 'floor': {...}}: 'floor' is
      the score of 1,000 real training images, the best a sample set of that size can get.
    """
    from facegan_jax import attributes, fid

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
    for side in SIDES:
        with open(out / side / "marks.json") as f:
            records = json.load(f)
        for record in records:
            record.update(score(np.load(out / side / record["file"])))
            log(f"{side} {mark_label(record['mark_s'])}: fd_attr {record['fd_attr']:.2f}")
        scored[side] = records
    train_npy = out / "train_floor.npy"
    if train_npy.is_file():
        scored["floor"] = score(np.load(train_npy))
    return scored


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


def _has_fid(rows: Sequence[dict]) -> bool:
    return any("fid" in (r[side] or {}) for r in rows for side in SIDES)


def format_table(rows: Sequence[dict], floor: dict | None = None) -> list[str]:
    """The race table: per mark, steps, images and scores of each side, and peer / ours."""
    fid = _has_fid(rows)
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


_COLOURS = {"ours": (31, 119, 180), "peer": (214, 39, 40)}


def plot_curves(rows: Sequence[dict], path: str | os.PathLike, floor: dict | None = None) -> None:
    """A PNG of fd_attr (and FID) against training minutes for both sides (PIL only)."""
    from PIL import Image, ImageDraw

    metrics = ["fd_attr"] + (["fid"] if _has_fid(rows) else [])
    width, panel = 640, 360
    img = Image.new("RGB", (width, panel * len(metrics)), "white")
    draw = ImageDraw.Draw(img)
    x_max = max([r["mark_s"] / 60.0 for r in rows] or [1.0])
    for p, metric in enumerate(metrics):
        points = {
            side: [(r["mark_s"] / 60.0, r[side][metric]) for r in rows if r[side] is not None]
            for side in SIDES
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
        for r in rows:
            x = r["mark_s"] / 60.0
            draw.text((xy(x, 0)[0] - 10, bottom + 4), f"{x:g}", "black")
        if floor and metric in floor:
            y = xy(0, floor[metric])[1]
            draw.line((left, y, right, y), fill=(128, 128, 128))
            draw.text((left + 4, y - 14), "real-data floor", (128, 128, 128))
        for i, side in enumerate(SIDES):
            pts = [xy(x, y) for x, y in points[side]]
            if len(pts) > 1:
                draw.line(pts, fill=_COLOURS[side], width=3)
            for px, py in pts:
                draw.ellipse((px - 4, py - 4, px + 4, py + 4), fill=_COLOURS[side])
            draw.text((right - 80, top + 8 + 14 * i), f"-- {side}", _COLOURS[side])
    img.save(path)


def write_report(out: Path, scored: dict[str, Any], meta: dict[str, Any], log=print) -> None:
    """Prints the table and writes race.json, race.png and last-mark sample grids."""
    from facegan_jax import sampling

    rows = summarize(scored["ours"], scored["peer"])
    floor = scored.get("floor")
    for line in format_table(rows, floor):
        log(line)
    _write_json(out / "race.json", {**meta, "rows": rows, "floor": floor})
    plot_curves(rows, out / "race.png", floor)
    for side in SIDES:
        last = scored[side][-1]
        images = to_float(np.load(out / side / last["file"])[:64])  # marks are uint8
        sampling.save_grid(images, str(out / f"{side}_{mark_label(last['mark_s'])}.png"))
    log(f"wrote {out / 'race.json'}, {out / 'race.png'} and the last marks' sample grids")


# ----------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    """The race's command line (unknown `--config.x=v` arguments are config overrides)."""
    parser = argparse.ArgumentParser(
        prog="python -m facegan_jax.race",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--minutes", type=float, default=30.0, help="training budget per side")
    parser.add_argument("--every", type=float, default=5.0, help="minutes between sample marks")
    parser.add_argument("--out", required=True, help="new folder for everything the race writes")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="our recipe (configs/*.py)")
    parser.add_argument("--classifier", help="attribute classifier folder (the fd_attr judge)")
    parser.add_argument("--peer", default=DEFAULT_PEER, help="the peer training script")
    parser.add_argument("--peer-python", default=DEFAULT_PEER_PYTHON, help="the peer venv python")
    parser.add_argument(
        "--celeba-dir", default=DEFAULT_CELEBA, help="CelebA manual-download folder"
    )
    parser.add_argument("--cache-dir", default=DEFAULT_CACHE, help="where prepared arrays are kept")
    parser.add_argument("--fid-weights", help="pytorch-fid Inception weights (default: the cache)")
    parser.add_argument("--cores", default="0,1", help="cores for ours,peer (default 0,1)")
    parser.add_argument(
        "--evaluate-only", action="store_true", help="score an existing --out again"
    )
    return parser


def parse_args(
    parser: argparse.ArgumentParser, argv: Sequence[str]
) -> tuple[argparse.Namespace, list[str]]:
    """(arguments, `--config.a.b=v` overrides); any other unknown argument is a usage error."""
    args, rest = parser.parse_known_args(argv)
    overrides = [a for a in rest if a.startswith("--config.")]
    unknown = [a for a in rest if not a.startswith("--config.")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args, overrides


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the race (or `train-ours`, one side); errors are one line, exit 2 / 1."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in argv
    argv = [a for a in argv if a != "--verbose"]
    try:
        if argv[:1] == ["train-ours"]:
            _train_ours_main(argv[1:])
        else:
            _race_main(*parse_args(build_parser(), argv))
    except errors.FaceganError as e:
        return errors.report(e, verbose=verbose)
    return 0


def _race_main(args: argparse.Namespace, overrides: list[str]) -> None:
    from facegan_jax import runtime

    runtime.setup(tensorflow=False)
    out = Path(args.out)
    marks = interval_marks(args.minutes, args.every)
    try:
        cores = [int(c) for c in args.cores.split(",")]
    except ValueError:
        raise RaceError(f"--cores {args.cores!r} must be two core numbers, e.g. 0,1") from None
    # Every input is checked before anything runs, cheapest first.
    check_celeba_dir(args.celeba_dir)
    classifier = load_classifier(args.classifier)
    fid_weights = find_fid_weights(args.fid_weights)
    if args.evaluate_only:
        if not all((out / side / "marks.json").is_file() for side in SIDES):
            raise RaceError(f"--evaluate-only: {out} holds no finished race (*/marks.json)")
    else:
        if out.exists() and any(out.iterdir()):
            raise RaceError(f"--out {out} is not empty: give the race a new folder")
        check_cores(cores)
        check_config(load_config(args.config, overrides))
        check_peer(args.peer_python, args.peer)
    arrays = cached_arrays(args.celeba_dir, args.cache_dir)
    if not args.evaluate_only:
        out.mkdir(parents=True, exist_ok=True)
        floor = np.load(arrays["train"], mmap_mode="r")
        pick = np.random.default_rng(0).choice(len(floor), NUM_SAMPLES, replace=False)
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
        from facegan_jax import evaluation

        print(f"FID with {fid_weights} (Inception on CPU: minutes per mark)")
        fid_params = evaluation.try_load_inception(fid_weights)
    scored = score_marks(out, classifier, np.load(arrays["validation"]), fid_params)
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


def _train_ours_main(argv: Sequence[str]) -> None:
    """`race train-ours --config=SPEC [--config.x=v ...] --data NPY --out DIR --minutes --every`."""
    parser = argparse.ArgumentParser(
        prog="python -m facegan_jax.race train-ours", allow_abbrev=False
    )
    parser.add_argument("--config", required=True)
    parser.add_argument("--data", required=True, help="uint8 [N, 64, 64, 3] .npy")
    parser.add_argument("--out", required=True)
    parser.add_argument("--minutes", type=float, required=True)
    parser.add_argument("--every", type=float, required=True)
    args, overrides = parse_args(parser, argv)
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
        log=lambda s: print(s, flush=True),
    )


if __name__ == "__main__":
    sys.exit(main())
