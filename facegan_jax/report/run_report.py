"""Pictures of a run: loss/metric curves, a progress GIF, an HTML page, the memorisation check.

  report.write_report(workdir) -> {'curves': ..., 'progress': ..., 'index': ...}
  report.check_memorization(workdir, num=500, ...) -> memorization.json/.png + histogram

Everything goes into `workdir.report_dir(workdir)` (`<workdir>/report/`):

  curves.png              one panel per group of logged scalars: D/G losses,
                          D(x)/D(G(z)), gradient norms, images/s, each eval metric
  progress.gif            the control grids `samples/step_*.png` in step order,
                          captioned with their step
  index.html              the above, the final metrics table and config.json
  memorization.png        a few samples, each beside its 3 nearest training images
  memorization_hist.png   sample-to-train against held-out-to-train nearest distances
  memorization.json       the numbers (see memorization.py for their definitions)

Scalars are read from the workdir's TensorBoard event files as clu writes
them: TF2 summaries, where a scalar is a 0-d float tensor whose tag's first
event carries the 'scalars' plugin metadata (legacy `simple_value`s are
accepted too). A resumed run appends a new event file; values of an older file
at or after the step a newer file starts from are dropped for that tag (what
TensorBoard calls orphaned data), so a restarted stretch is drawn once.

The command line (argument parsing only) is `report_cli.py`;
`python -m facegan_jax.report --workdir DIR` runs it too.
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from absl import logging

from facegan_jax import fileio
from facegan_jax import workdir as workdir_lib
from facegan_jax.metrics import memorization as mem
from facegan_jax.metrics.attributes import as_rgb

CURVES_FILE = "curves.png"
PROGRESS_FILE = "progress.gif"
INDEX_FILE = "index.html"
MEMORIZATION_FILE = "memorization.png"
MEMORIZATION_HIST_FILE = "memorization_hist.png"
MEMORIZATION_JSON = "memorization.json"

# GIF limits: long runs keep every k-th grid (first and last always), big grids are shrunk.
MAX_GIF_FRAMES = 120
MAX_GIF_SIDE = 768
GIF_FPS = 4.0
# Rows of memorization.png and neighbours shown per row.
MEMORIZATION_ROWS = 8
NEIGHBOURS = 3

_GRID_RE = re.compile(r"^step_(\d+)\.png$")
_EVENTS_RE = re.compile(r"events\.out\.tfevents\.(\d+)")


def report_path(workdir: str | os.PathLike, name: str) -> str:
    """`<workdir>/report/<name>`."""
    return fileio.join(workdir_lib.report_dir(workdir), name)


# ------------------------------------------------------------------------------ scalars
@dataclasses.dataclass
class Series:
    """One scalar tag over training: steps (int64, ascending) and values (float64)."""

    steps: np.ndarray
    values: np.ndarray


def event_files(workdir: str | os.PathLike) -> list[str]:
    """The workdir's TensorBoard event files, oldest first (by the timestamp in the name)."""
    folder = fileio.resolve(workdir)
    names = [n for n in fileio.listdir(folder) if _EVENTS_RE.match(n)]

    def order(name: str) -> tuple[int, int, str]:
        # events.out.tfevents.<seconds>.<host>.<pid>.<uid>.v2: two writers may share a second
        uid = re.search(r"\.(\d+)(?:\.v2)?$", name)
        return int(_EVENTS_RE.match(name).group(1)), int(uid.group(1)) if uid else 0, name

    names.sort(key=order)
    return [fileio.join(folder, n) for n in names]


def _file_scalars(path: str) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} of one event file, read with TensorBoard's `EventAccumulator`.

    Every value is kept (no reservoir sampling); a damaged record (a killed run,
    a full disk) ends the reading with a warning and what was read is kept.
    """
    from tensorboard.backend.event_processing import event_accumulator as ea
    from tensorboard.util import tensor_util

    accumulator = ea.EventAccumulator(path, size_guidance={ea.SCALARS: 0, ea.TENSORS: 0})
    try:
        accumulator.Reload()
    except Exception as e:
        logging.warning("report: could not read all of %s (%s)", path, e)
    tags = accumulator.Tags()
    out: dict[str, dict[int, float]] = {}
    for tag in tags.get(ea.SCALARS, []):  # TF1-style simple values
        out[tag] = {int(e.step): float(e.value) for e in accumulator.Scalars(tag)}
    for tag in tags.get(ea.TENSORS, []):  # TF2 summaries (clu's writers)
        if accumulator.SummaryMetadata(tag).plugin_data.plugin_name != "scalars":
            continue
        for event in accumulator.Tensors(tag):
            array = tensor_util.make_ndarray(event.tensor_proto)
            if array.size == 1 and np.issubdtype(array.dtype, np.number):
                out.setdefault(tag, {})[int(event.step)] = float(array.reshape(()))
    return out


def read_scalars(workdir: str | os.PathLike) -> dict[str, Series]:
    """Every scalar logged in `workdir` (e.g. 'train/d_loss', 'eval/fid'), by tag.

    Event files are merged oldest first; a newer file's values replace an older
    file's from that tag's first step in the newer file on (a resumed run logs
    the steps after its checkpoint again). TensorBoard's own purge of such steps
    needs a `SessionLog.START` event, which TF2 summary writers do not write.
    """
    merged: dict[str, dict[int, float]] = {}
    for path in event_files(workdir):
        for tag, values in _file_scalars(path).items():
            first = min(values)
            kept = {s: v for s, v in merged.get(tag, {}).items() if s < first}
            kept.update(values)
            merged[tag] = kept
    out = {}
    for tag, values in sorted(merged.items()):
        steps = np.array(sorted(values), np.int64)
        out[tag] = Series(steps, np.array([values[s] for s in steps], np.float64))
    return out


# ------------------------------------------------------------------------------- curves
@dataclasses.dataclass
class Panel:
    """One subplot: a title, a y label and (tag, legend label) lines."""

    title: str
    ylabel: str
    lines: list[tuple[str, str]]


_LABELS = {
    "train/d_loss": "D loss",
    "train/g_loss": "G loss",
    "train/d_real": "D(x)",
    "train/d_fake": "D(G(z))",
    "train/d_grad_norm": "|grad D|",
    "train/g_grad_norm": "|grad G|",
    "train/images_per_sec": "images/s",
}


def group_panels(tags: Sequence[str]) -> list[Panel]:
    """Panels for the logged tags: losses, D outputs, gradient norms, images/s, each eval tag.

    Train tags not named here get an "other" panel each; `train/steps_per_sec`
    is left out (images/s says the same).
    """
    tags = list(tags)
    used = {"train/steps_per_sec"}
    panels = []

    def add(title: str, ylabel: str, chosen: list[str]) -> None:
        chosen = [t for t in dict.fromkeys(chosen) if t in tags and t not in used]
        if chosen:
            used.update(chosen)
            panels.append(Panel(title, ylabel, [(t, _LABELS.get(t, t)) for t in chosen]))

    losses = ["train/d_loss", "train/g_loss"] + [
        t for t in tags if t.startswith("train/") and "loss" in t
    ]
    add("Losses", "loss", losses)
    add("Discriminator outputs", "mean sigmoid(D)", ["train/d_real", "train/d_fake"])
    add("Gradient norms", "global norm", [t for t in tags if t.endswith("grad_norm")])
    add("Throughput", "images/s", ["train/images_per_sec"])
    for tag in tags:
        if tag.startswith("eval/"):
            add(tag[len("eval/") :], tag, [tag])
    for tag in tags:
        add(tag, tag, [tag])
    return panels


def smooth(values: np.ndarray, weight: float = 0.8) -> np.ndarray:
    """TensorBoard's debiased exponential moving average."""
    out = np.empty_like(values, np.float64)
    last, norm = 0.0, 0.0
    for i, v in enumerate(values):
        last = weight * last + (1 - weight) * v
        norm = weight * norm + (1 - weight)
        out[i] = last / norm
    return out


def plot_curves(scalars: dict[str, Series], path: str) -> str | None:
    """Draws `scalars` grouped by `group_panels` into the PNG `path`; None if there is nothing."""
    panels = group_panels(list(scalars))
    if not panels:
        return None
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    ncols = 2 if len(panels) > 1 else 1
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(6.0 * ncols, 3.4 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, panel in zip(axes, panels):
        for i, (tag, label) in enumerate(panel.lines):
            series = scalars[tag]
            color = f"C{i}"
            if len(series.steps) > 20 and not tag.startswith("eval/"):
                ax.plot(series.steps, series.values, color=color, alpha=0.25, linewidth=0.8)
                ax.plot(series.steps, smooth(series.values), color=color, label=label)
            else:
                ax.plot(series.steps, series.values, color=color, label=label, marker=".")
        if panel.title == "Discriminator outputs":
            ax.set_ylim(-0.02, 1.02)
            ax.axhline(0.5, color="grey", linewidth=0.6, linestyle=":")
        ax.set_title(panel.title)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
        ax.set_ylabel(panel.ylabel)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize="small")
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    fileio.save_figure(path, fig)
    return path


# ------------------------------------------------------------------------------ progress
def control_grids(workdir: str | os.PathLike) -> list[tuple[int, str]]:
    """(step, path) of the control grids `samples/step_*.png`, in step order."""
    folder = workdir_lib.samples_dir(workdir)
    found = []
    for name in fileio.listdir(folder):
        match = _GRID_RE.match(name)
        if match:
            found.append((int(match.group(1)), fileio.join(folder, name)))
    return sorted(found)


def _thin(items: list[Any], max_items: int) -> list[Any]:
    """At most `max_items` of `items`, evenly spread, first and last kept."""
    if len(items) <= max_items:
        return items
    keep = np.unique(np.linspace(0, len(items) - 1, max_items).round().astype(int))
    return [items[i] for i in keep]


def _captioned(path: str, caption: str, size: tuple[int, int] | None) -> np.ndarray:
    """The grid at `path` as RGB uint8, resized to `size` if given, with a caption strip on top."""
    from PIL import Image, ImageDraw, ImageFont

    image = fileio.load_image(path).convert("RGB")
    if size is not None and image.size != size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    font_size = max(12, min(28, image.width // 14))
    try:
        font = ImageFont.load_default(size=font_size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        font = ImageFont.load_default()
    strip = font_size + 8
    canvas = Image.new("RGB", (image.width, image.height + strip), (255, 255, 255))
    canvas.paste(image, (0, strip))
    ImageDraw.Draw(canvas).text((4, 3), caption, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


def write_progress_gif(
    grids: list[tuple[int, str]],
    path: str,
    *,
    max_frames: int = MAX_GIF_FRAMES,
    max_side: int = MAX_GIF_SIDE,
    fps: float = GIF_FPS,
) -> str | None:
    """The control grids as a looping GIF, one frame per grid, captioned 'step N'.

    More than `max_frames` grids are thinned evenly (first and last kept); grids
    larger than `max_side` pixels are shrunk, and all frames take the first
    grid's size. Written with imageio through
    `sampling.save_animation`. None when there are no grids.
    """
    if not grids:
        return None

    from facegan_jax.generation import sampling

    grids = _thin(grids, max_frames)
    w, h = fileio.load_image(grids[0][1]).size
    scale = min(1.0, max_side / max(w, h))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    frames = np.stack([_captioned(p, f"step {s}", size) for s, p in grids])
    sampling.save_animation(frames, path, fps=fps)
    return path


# ---------------------------------------------------------------------------------- html
def _metrics_rows(scalars: dict[str, Series]) -> list[tuple[str, int, float, float, float]]:
    """(tag, last step, last value, min, max) per tag, eval tags first."""
    tags = sorted(scalars, key=lambda t: (not t.startswith("eval/"), t))
    return [
        (
            t,
            int(scalars[t].steps[-1]),
            float(scalars[t].values[-1]),
            float(scalars[t].values.min()),
            float(scalars[t].values.max()),
        )
        for t in tags
    ]


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def write_html(
    workdir: str | os.PathLike,
    scalars: dict[str, Series],
    grids: list[tuple[int, str]],
    written: dict[str, str],
) -> str:
    """Writes `index.html`: curves, progress GIF, last grid, metrics, memorisation, config."""
    path = report_path(workdir, INDEX_FILE)
    esc = html.escape
    name = fileio.resolve(workdir).rstrip("/").rsplit("/", 1)[-1]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>facegan_jax report: {esc(name)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1300px}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;"
        "text-align:right}td:first-child,th:first-child{text-align:left}"
        "pre{background:#f6f6f6;padding:1em;overflow:auto}img{max-width:100%}</style>",
        "</head><body>",
        f"<h1>Run {esc(fileio.resolve(workdir))}</h1>",
    ]
    if "curves" in written:
        parts += ["<h2>Training curves</h2>", f"<img src='{CURVES_FILE}' alt='curves'>"]
    else:
        parts.append("<p>No scalars logged yet (no TensorBoard event files).</p>")
    if "progress" in written:
        last_step, last_grid = grids[-1]
        rel = "../" + workdir_lib.SAMPLES_DIR + "/" + last_grid.rsplit("/", 1)[-1]
        parts += [
            "<h2>Control samples</h2>",
            f"<p>{len(grids)} grids, steps {grids[0][0]} to {last_step}.</p>",
            f"<img src='{PROGRESS_FILE}' alt='progress'> ",
            f"<p>Last grid (step {last_step}):</p><img src='{esc(rel)}' alt='last grid'>",
        ]
    if scalars:
        parts += [
            "<h2>Final metrics</h2><table><tr><th>metric</th><th>last step</th>"
            "<th>last</th><th>min</th><th>max</th></tr>"
        ]
        for tag, step, last, lo, hi in _metrics_rows(scalars):
            parts.append(
                f"<tr><td>{esc(tag)}</td><td>{step}</td><td>{_fmt(last)}</td>"
                f"<td>{_fmt(lo)}</td><td>{_fmt(hi)}</td></tr>"
            )
        parts.append("</table>")
    parts += _memorization_html(workdir)
    config_file = workdir_lib.config_path(workdir)
    try:
        config_text = json.dumps(fileio.read_json(config_file), indent=2, sort_keys=True)
    except (OSError, json.JSONDecodeError) as e:
        config_text = f"(cannot read {config_file}: {e})"
    parts += ["<h2>Config (config.json)</h2>", f"<pre>{esc(config_text)}</pre>", "</body></html>"]
    fileio.write_text(path, "\n".join(parts) + "\n")
    return path


def _memorization_html(workdir: str | os.PathLike) -> list[str]:
    path = report_path(workdir, MEMORIZATION_JSON)
    if not fileio.exists(path):
        return []
    try:
        data = fileio.read_json(path)
    except (OSError, json.JSONDecodeError):
        return []
    try:
        return _memorization_rows(workdir, data)
    except (KeyError, TypeError, ValueError, AttributeError):  # a foreign or older file
        return [f"<p>Memorisation check: {html.escape(path)} is not readable.</p>"]


def _memorization_rows(workdir: str | os.PathLike, data: dict[str, Any]) -> list[str]:
    esc = html.escape
    expected = data.get("expected_if_like_heldout", {})
    rows = [
        ("feature space", data.get("feature_space", "?")),
        ("checkpoint step", data.get("step", "?")),
        ("samples / training / held-out images",
         f"{data.get('num_generated')} / {data.get('num_train')} / {data.get('num_heldout')}"),
        ("fraction of samples closer to a training image than any held-out image",
         f"{_fmt(data['fraction_closer_than_heldout'])} "
         f"(like held-out: {_fmt(expected.get('fraction_closer_than_heldout', float('nan')))})"),
        ("fraction of samples closer than the held-out median",
         f"{_fmt(data['fraction_below_heldout_median'])} "
         f"(like held-out: {_fmt(expected.get('fraction_below_heldout_median', 0.5))})"),
    ]  # fmt: skip
    parts = ["<h2>Memorisation check</h2><table>"]
    parts += [f"<tr><td>{esc(str(k))}</td><td>{esc(str(v))}</td></tr>" for k, v in rows]
    parts.append("</table>")
    for name in (MEMORIZATION_HIST_FILE, MEMORIZATION_FILE):
        if fileio.exists(report_path(workdir, name)):
            parts.append(f"<p><img src='{name}' alt='{name}'></p>")
    return parts


# --------------------------------------------------------------------------------- report
def write_report(workdir: str | os.PathLike) -> dict[str, str]:
    """Writes curves.png, progress.gif and index.html into `<workdir>/report`.

    Parts without data (no event files yet, no grids yet) are skipped; the HTML
    page is always written. Call on one process only.

    Returns:
      {'curves': path, 'progress': path, 'index': path} for the files written.
    """
    workdir = fileio.resolve(workdir)
    scalars = read_scalars(workdir)
    grids = control_grids(workdir)
    written: dict[str, str] = {}
    curves = plot_curves(scalars, report_path(workdir, CURVES_FILE))
    if curves:
        written["curves"] = curves
    progress = write_progress_gif(grids, report_path(workdir, PROGRESS_FILE))
    if progress:
        written["progress"] = progress
    written["index"] = write_html(workdir, scalars, grids, written)
    logging.info("Report of %s written to %s", workdir, workdir_lib.report_dir(workdir))
    return written


# --------------------------------------------------------------------------- memorisation
FeatureFn = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass
class FeatureSpace:
    """Where distances are measured: `fn(images [B, H, W, C] in [-1, 1]) -> [B, F]`."""

    name: str
    description: str
    fn: FeatureFn


def feature_space(
    kind: str = "auto",
    weights: str | None = None,
    classifier: str | None = None,
    batch_size: int = 50,
) -> FeatureSpace:
    """The feature space of the memorisation check.

    Args:
      kind: 'inception' (pytorch-fid's pool3, 2048-d), 'classifier' (the attribute
        classifier's penultimate layer) or 'auto': Inception when its weights load,
        else the classifier.
      weights: the Inception .pth (None: the cache, else a download).
      classifier: an attribute-classifier folder (`facegan_jax.metrics.attributes`).
      batch_size: images per Inception call.

    Raises:
      ValueError: no usable feature space, saying what to pass.
    """
    if kind not in ("auto", "inception", "classifier"):
        raise ValueError(f"--features={kind!r}: use auto, inception or classifier")
    why = None
    if kind in ("auto", "inception"):
        from facegan_jax.metrics import fid, inception_weights

        try:
            resolved = inception_weights.resolve_weights_path(weights)
            params = inception_weights.load_inception_params(resolved)
        except (
            inception_weights.InceptionWeightsUnavailableError,
            inception_weights.InceptionWeightsError,
        ) as e:
            if kind == "inception":
                raise ValueError(str(e)) from None
            why = str(e)
        else:

            def inception_fn(images: np.ndarray) -> np.ndarray:
                return fid.features_from_images([images], params, batch_size)

            return FeatureSpace("inception", f"Inception pool3 ({resolved})", inception_fn)
    if not classifier:
        hint = f" (Inception unavailable: {why})" if why else ""
        raise ValueError(
            "no feature space for the memorisation check: pass --classifier FOLDER (an "
            "attribute classifier, python -m data_prep.train_attribute_classifier) or "
            f"--weights pt_inception-2015-12-05-6726825d.pth{hint}"
        )
    from facegan_jax.metrics import attributes

    clf = attributes.load(classifier)
    desc = f"attribute classifier {fileio.resolve(classifier)} ({clf.feature_dim}-d penultimate)"
    if why:
        desc += "; Inception weights unavailable"
        logging.info("memorisation: Inception weights unavailable (%s); using %s", why, classifier)
    return FeatureSpace("classifier", desc, lambda images: clf.features(as_rgb(images)))


def _dataset_batches(config: Any, split: str, batch_size: int) -> Any:
    """Batches of `split` in file order (no shuffle, one pass, one process's view of all)."""
    from facegan_jax.data import input_pipeline

    dataset = input_pipeline.ordered_dataset(config, split, batch_size)
    for batch in dataset.as_numpy_iterator():
        yield np.asarray(batch["image"], np.float32)


def dataset_features(
    config: Any, split: str, space: FeatureSpace, max_images: int | None, batch_size: int
) -> np.ndarray:
    """Features [n, F] of the first `max_images` images of `split` (all when None) in order."""
    chunks, count = [], 0
    for images in _dataset_batches(config, split, batch_size):
        if max_images is not None:
            images = images[: max_images - count]
        if len(images):
            chunks.append(np.asarray(space.fn(images), np.float32))
            count += len(images)
        if max_images is not None and count >= max_images:
            break
    if not chunks:
        raise ValueError(f"split {split!r} of {config.data.name} holds no images")
    return np.concatenate(chunks)


def dataset_images(config: Any, split: str, indices: Sequence[int], batch_size: int) -> np.ndarray:
    """The images at `indices` of `split` (the order of `dataset_features`), uint8."""
    from facegan_jax.generation import sampling

    wanted = sorted(set(int(i) for i in indices))
    found: dict[int, np.ndarray] = {}
    start = 0
    for images in _dataset_batches(config, split, batch_size):
        for i in wanted:
            if start <= i < start + len(images):
                found[i] = sampling.to_uint8(images[i - start])
        start += len(images)
        if start > wanted[-1]:
            break
    return np.stack([found[int(i)] for i in indices])


def _generated(
    generate: Callable[..., Any], variables: Any, num: int, batch_size: int
) -> np.ndarray:
    """Images 0..num-1 of the generator, float32 in [-1, 1]."""
    from facegan_jax.generation import sampling

    return np.asarray(
        sampling.generate_in_batches(generate, variables, np.arange(num), batch_size), np.float32
    )


def check_memorization(
    workdir: str | os.PathLike,
    *,
    num: int = 500,
    num_train: int | None = 10_000,
    num_heldout: int | None = None,
    features: str = "auto",
    weights: str | None = None,
    classifier: str | None = None,
    batch_size: int = 64,
    step: int | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Nearest training images of generated samples, against held-out real images.

    Generates images 0..num-1 of the workdir's EMA generator
    (`components.load_generator`), embeds them, the first `num_train` images of
    the training split and the first `num_heldout` (default `num`) of the eval
    split (`config.data.eval_split`), and writes memorization.json,
    memorization.png and memorization_hist.png into `<workdir>/report`.

    Args:
      workdir: a training workdir with a checkpoint.
      num: generated samples.
      num_train: training images searched (None: the whole split).
      num_heldout: held-out real images (None: `num`).
      features: see `feature_space` ('auto', 'inception', 'classifier').
      weights: Inception weights file.
      classifier: attribute-classifier folder; default: the run's
        `config.attr_eval.classifier` when it has one.
      batch_size: images per generator / feature call.
      step: checkpoint step (None: latest).
      log: where progress lines go.

    Returns:
      memorization.json's content, plus 'paths' of the files written.
    """
    from facegan_jax.training import components

    workdir = fileio.resolve(workdir)
    if num < 1 or batch_size < 1:
        raise ValueError(f"--num={num} and --batch-size={batch_size} must be >= 1")
    if num_heldout is not None and num_heldout < 1:
        raise ValueError(f"--num-heldout={num_heldout} must be >= 1")
    config = components.read_run_config(workdir)
    if classifier is None:
        classifier = (config.get("attr_eval") or {}).get("classifier") or None
    space = feature_space(features, weights, classifier)
    log(f"memorisation: feature space {space.description}")

    generate, variables, config = components.load_generator(workdir, step=step)
    generated = _generated(generate, variables, num, batch_size)
    gen_feats = np.concatenate(
        [np.asarray(space.fn(generated[i : i + batch_size])) for i in range(0, num, batch_size)]
    )
    log(f"memorisation: {num} generated samples embedded")
    train_split, eval_split = config.data.train_split, config.data.eval_split
    train_feats = dataset_features(config, train_split, space, num_train, batch_size)
    log(f"memorisation: {len(train_feats)} training images ({train_split}) embedded")
    held_feats = dataset_features(config, eval_split, space, num_heldout or num, batch_size)
    log(f"memorisation: {len(held_feats)} held-out images ({eval_split}) embedded")

    result = mem.memorization(gen_feats, train_feats, held_feats, k=NEIGHBOURS)
    ckpt_step = _checkpoint_step(workdir, step)
    data = {
        "feature_space": space.name,
        "feature_space_description": space.description,
        "workdir": workdir,
        "step": ckpt_step,
        "train_split": train_split,
        "heldout_split": eval_split,
        "num_train": len(train_feats),
        **result.summary(),
        "definition": (
            "fraction_closer_than_heldout: share of generated samples whose nearest-training-"
            "image distance is smaller than the smallest nearest-training-image distance of any "
            "held-out real image; fraction_below_heldout_median: smaller than the held-out "
            "median (see facegan_jax/memorization.py)"
        ),
    }
    rows = mem.select_examples(result.nearest, MEMORIZATION_ROWS)
    neighbours = result.generated_neighbours[rows]
    train_images = dataset_images(config, train_split, neighbours.ravel(), batch_size)
    train_images = train_images.reshape(*neighbours.shape, *train_images.shape[1:])
    from facegan_jax.generation import sampling

    paths = {
        "memorization": _plot_neighbours(
            sampling.to_uint8(generated[rows]),
            rows,
            train_images,
            result.generated_distances[rows],
            result.heldout_min,
            result.heldout_median,
            report_path(workdir, MEMORIZATION_FILE),
        ),
        "histogram": _plot_histogram(result, space, report_path(workdir, MEMORIZATION_HIST_FILE)),
        "json": report_path(workdir, MEMORIZATION_JSON),
    }
    _write_json(paths["json"], data)
    log(
        f"memorisation ({space.name} features, step {ckpt_step}): "
        f"{data['fraction_closer_than_heldout']:.3f} of {num} samples are closer to a training "
        f"image than any of {data['num_heldout']} held-out images is "
        f"(like held-out: {1.0 / (data['num_heldout'] + 1):.3f}); "
        f"{data['fraction_below_heldout_median']:.3f} are closer than the held-out median "
        "(like held-out: 0.5)"
    )
    return {**data, "paths": paths}


def _checkpoint_step(workdir: str, step: int | None) -> int | None:
    if step is not None:
        return step
    from facegan_jax.training import checkpointing

    try:
        return checkpointing.create_manager(workdir).latest_step()
    except Exception:  # informative only
        return None


def _write_json(path: str, data: dict[str, Any]) -> None:
    fileio.write_json(path, data)


def _show(ax: Any, image: np.ndarray) -> None:
    ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=255)
    ax.set_xticks([])
    ax.set_yticks([])


def _plot_neighbours(
    samples: np.ndarray,
    sample_ids: np.ndarray,
    neighbours: np.ndarray,
    distances: np.ndarray,
    heldout_min: float,
    heldout_median: float,
    path: str,
) -> str:
    """Rows of [sample | its nearest training images], each neighbour with its distance."""
    from matplotlib.figure import Figure

    rows, k = neighbours.shape[:2]
    fig = Figure(figsize=(1.6 * (k + 1), 1.75 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, k + 1, squeeze=False)
    for r in range(rows):
        _show(axes[r, 0], samples[r])
        axes[r, 0].set_title(f"sample {int(sample_ids[r])}", fontsize=8)
        for j in range(k):
            d = distances[r, j]
            flag = " (!)" if d < heldout_min else ""
            _show(axes[r, j + 1], neighbours[r, j])
            axes[r, j + 1].set_title(f"train #{j + 1}: d={d:.3g}{flag}", fontsize=8)
    fig.suptitle(
        f"samples (closest to the training set first) and their {k} nearest training images\n"
        f"held-out nearest-train distance: min {heldout_min:.3g}, median {heldout_median:.3g}",
        fontsize=9,
    )
    fileio.save_figure(path, fig)
    return path


def _plot_histogram(result: mem.MemorizationResult, space: FeatureSpace, path: str) -> str:
    """Histogram of sample-to-train against held-out-to-train nearest distances."""
    from matplotlib.figure import Figure

    gen, held = result.nearest, result.heldout_distances
    both = np.concatenate([gen, held])
    bins = np.linspace(both.min(), both.max(), 41) if both.max() > both.min() else 10
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    ax.hist(held, bins=bins, alpha=0.55, density=True, label=f"held-out real (n={len(held)})")
    ax.hist(gen, bins=bins, alpha=0.55, density=True, label=f"generated (n={len(gen)})")
    ax.axvline(result.heldout_min, color="k", linestyle="--", linewidth=1, label="held-out min")
    ax.axvline(
        result.heldout_median, color="k", linestyle=":", linewidth=1, label="held-out median"
    )
    ax.set_xlabel(f"distance to the nearest training image ({space.name} features)")
    ax.set_ylabel("density")
    ax.set_title(
        f"closer than any held-out: {result.fraction_closer_than_heldout:.3f}   "
        f"below held-out median: {result.fraction_below_heldout_median:.3f}",
        fontsize=10,
    )
    ax.legend(fontsize="small")
    fileio.save_figure(path, fig)
    return path
