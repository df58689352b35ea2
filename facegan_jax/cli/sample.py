r"""Sampling CLI: images, walks and attribute edits from a training workdir's (EMA) generator.

  python -m facegan_jax.sample --workdir runs/default --seeds 0-63,100,200-210 --out grid.png
  python -m facegan_jax.sample --workdir runs/default --seeds 0-15 --truncation 0.7 --out-dir faces/
  python -m facegan_jax.sample --workdir runs/default --interpolate 3,17,42 --frames 60 \
      --out walk.gif
  python -m facegan_jax.sample --workdir runs/acgan64 --seeds 0-15 --attrs Smiling=1,Eyeglasses=0 \
      --out smiling.png
  python -m facegan_jax.sample --workdir runs/acgan64 --seeds 0-7 --edit Smiling --out edit.png
  python -m facegan_jax.sample --workdir runs/celeba64_control --seeds 0-7 \
      --attribute-grid Smiling,Eyeglasses,Male --out grid.png
  python -m facegan_jax.sample --workdir runs/default --fit-directions --classifier attr_synth32
  python -m facegan_jax.sample --workdir runs/default --seeds 0-7 --edit Eyeglasses \
      --strength -3:3:7 --out glasses.png

The image of a seed depends only on the seed and the weights, not on
`--batch-size` or the device count (see sampling.py); the first and last
frames of `--interpolate` and the strength-0 column of `--edit` are the seeds'
own images, bit for bit.

Conditional models draw each seed's attribute vector from the workdir's pool
of real vectors; `--attrs Name=value,...` sets attributes on top of it, and the
older `--attributes A,B` switches A and B on, also on top of the real vector
(it used to start from an all-zero vector). What the real vector holds against
the request is resolved (`--consistent-requests 0.02`, the default; 0: the vector
as it is): asked for Male on a woman's vector, her lipstick and makeup go.
`--edit NAME` writes a row per seed with NAME's input set to each `--strength`
value (default `0,1`: off, on; values in [0, 1]). Unconditional models edit
along latent directions fitted by `--fit-directions` with an attribute
classifier (InterFaceGAN; saved in `<workdir>/directions.npz`, see
facegan_jax/editing.py); `--strength` is then the distance walked along the
unit direction (default `-3:3:7`). With a classifier (`--classifier`, or the
one the directions were fitted with), an edit prints how the attribute's
probability moves along the row.

Exit status: 0 done; 2 bad input (one line on stderr, nothing written).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from facegan_jax import errors, fileio, runtime
from facegan_jax import workdir as workdir_lib
from facegan_jax.cli import args as args_lib
from facegan_jax.data import celeba_attributes
from facegan_jax.data.celeba_attributes import CELEBA_ATTRIBUTES
from facegan_jax.generation import editing, sampling
from facegan_jax.training import components

DEFAULT_SEEDS = "0-63"
DEFAULT_EDIT_SEEDS = "0-7"
DEFAULT_CONDITIONAL_STRENGTHS = "0,1"
DEFAULT_DIRECTION_STRENGTHS = "-3:3:7"
# Options whose value may start with '-' (argparse would take '-3:3:7' for a flag).
_SIGNED_OPTIONS = ("--strength", "--truncation")


def parse_strengths(spec: str) -> list[float]:
    """'-3:3:7' (start:stop:count, both ends included) or '0,0.5,1' -> a list of floats."""
    try:
        if ":" in spec:
            start, stop, count = spec.split(":")
            n = int(count)
            if n < 1:
                raise ValueError
            values = np.linspace(float(start), float(stop), n).tolist()
        else:
            values = [float(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        raise ValueError(
            f"--strength={spec!r} is not like '-3:3:7' (start:stop:count) or '0,0.5,1'"
        ) from None
    if not values or not all(np.isfinite(values)):
        raise ValueError(f"--strength={spec!r} names no finite values")
    return [float(v) for v in values]


def _join_signed_values(argv: Sequence[str]) -> list[str]:
    """['--strength', '-3:3:7'] -> ['--strength=-3:3:7'] (argparse reads '-3:3:7' as a flag)."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in _SIGNED_OPTIONS and i + 1 < len(argv):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def build_parser() -> argparse.ArgumentParser:
    """The command line (see the module docstring)."""
    parser = args_lib.Parser("sample", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="training workdir (config + checkpoints)")
    parser.add_argument(
        "--seeds",
        default=None,
        help=f"e.g. 0-63,100,200-210 (default {DEFAULT_SEEDS}; {DEFAULT_EDIT_SEEDS} with --edit)",
    )
    parser.add_argument(
        "--out",
        help="output: PNG grid; with --interpolate also .gif (256 colours a frame) or .mp4 "
        "(needs imageio-ffmpeg); --out-dir keeps the exact frames as PNGs",
    )
    parser.add_argument(
        "--out-dir", help="one PNG per image here (seed_00042.png, frame_00000.png, ...)"
    )
    parser.add_argument("--batch-size", type=int, default=64, help="generation batch size")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default latest)")
    parser.add_argument("--no-ema", action="store_true", help="use the live generator, not EMA")
    parser.add_argument("--ncols", type=int, default=None, help="grid columns")
    parser.add_argument(
        "--truncation",
        type=float,
        default=1.0,
        metavar="PSI",
        help="z' = PSI * z (the mean latent is 0; conditional models keep their attribute "
        "vector): 1 = off, 0 = the mean-latent image",
    )
    parser.add_argument(
        "--attrs",
        default=None,
        help="conditional models: e.g. Smiling=1,Eyeglasses=0, set on top of real attribute "
        "vectors from the workdir's pool",
    )
    parser.add_argument(
        "--attributes",
        default=None,
        help="conditional models: e.g. Eyeglasses,Smiling = --attrs Eyeglasses=1,Smiling=1",
    )
    parser.add_argument(
        "--consistent-requests",
        type=float,
        default=sampling.DEFAULT_CONSISTENT,
        metavar="RATE",
        help="conditional models: entries of the pool vector that contradict what you ask "
        "for (probability < RATE among real vectors with that value: lipstick when you ask "
        "for Male) are set to their likely value; 0: the pool vector as it is "
        f"(default {sampling.DEFAULT_CONSISTENT})",
    )
    walk = parser.add_argument_group("interpolation")
    walk.add_argument("--interpolate", metavar="SEEDS", help="walk through these seeds: 3,17,42")
    walk.add_argument("--frames", type=int, default=60, help="frames in the whole walk")
    walk.add_argument("--lerp", action="store_true", help="straight lines instead of slerp")
    walk.add_argument("--fps", type=float, default=20.0, help="animation frames per second")
    edit = parser.add_argument_group("attribute editing")
    edit.add_argument("--edit", metavar="ATTRIBUTE", help="edit this attribute, a row per seed")
    edit.add_argument(
        "--attribute-grid",
        metavar="A,B,...",
        help="conditional models: for each attribute a row with it off, then a row with it on; "
        "a column per seed (the other attributes from each seed's real vector)",
    )
    edit.add_argument(
        "--strength",
        default=None,
        help="columns of --edit: start:stop:count or a list. Conditional models: attribute "
        f"input values in [0, 1] (default {DEFAULT_CONDITIONAL_STRENGTHS}); unconditional: "
        f"steps along the unit direction (default {DEFAULT_DIRECTION_STRENGTHS})",
    )
    edit.add_argument(
        "--fit-directions",
        action="store_true",
        help="unconditional models: fit latent attribute directions with --classifier and "
        "save them in <workdir>/directions.npz",
    )
    edit.add_argument(
        "--classifier", help="attribute classifier folder (facegan_jax.metrics.attributes)"
    )
    edit.add_argument("--num", type=int, default=2000, help="samples --fit-directions labels")
    errors.add_verbose_flag(parser)
    return parser


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Argument combinations, before anything is loaded (argparse's usage error, exit 2)."""
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    if sum(bool(x) for x in (args.interpolate, args.edit, args.attribute_grid)) > 1:
        parser.error("give one of --interpolate, --edit and --attribute-grid")
    if args.interpolate and args.seeds is not None:
        parser.error("--interpolate names its own seeds; drop --seeds")
    if args.fit_directions and not args.classifier:
        parser.error("--fit-directions needs --classifier FOLDER (an attribute classifier)")
    if args.fit_directions and args.num < 2 * editing.MIN_PER_CLASS:
        parser.error(f"--num must be >= {2 * editing.MIN_PER_CLASS}")
    if args.strength is not None and not args.edit:
        parser.error("--strength goes with --edit")
    if args.frames < 2:
        parser.error("--frames must be >= 2")
    if not (args.out or args.out_dir) and not (args.fit_directions and not args.edit):
        parser.error("give --out FILE and/or --out-dir DIR")


def main(argv: list[str] | None = None) -> int:
    """Parses the command line, writes the requested files; returns the exit code."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    args = args_lib.parse_args(parser, _join_signed_values(argv))
    _check_args(parser, args)
    # ClassifierFileError is a ValueError: one line too.
    return errors.run_command("sample", lambda: _run(args), verbose=args.verbose)


def _run(args: argparse.Namespace) -> None:
    # Everything that can be checked without the model, first.
    values = sampling.parse_attribute_values(args.attributes, flag="--attributes")
    values.update(sampling.parse_attribute_values(args.attrs))
    if not np.isfinite(args.truncation):
        raise ValueError(f"--truncation={args.truncation} must be a finite number")
    celeba_attributes.check_rate(args.consistent_requests, "--consistent-requests")
    keys = sampling.parse_seeds(args.interpolate, "--interpolate") if args.interpolate else None
    if keys is not None:
        sampling.interpolation_schedule(len(keys), args.frames)
        if args.out and not args.out.lower().endswith(".png"):
            sampling.check_animation_path(args.out)
    editing_seeds = args.edit or args.attribute_grid
    seeds = sampling.parse_seeds(
        args.seeds or (DEFAULT_EDIT_SEEDS if editing_seeds else DEFAULT_SEEDS)
    )
    edit_index = sampling.resolve_attribute(args.edit) if args.edit else None
    grid_indices = (
        [sampling.resolve_attribute(a.strip()) for a in args.attribute_grid.split(",")]
        if args.attribute_grid
        else None
    )
    strengths = parse_strengths(args.strength) if args.strength else None

    runtime.setup(tensorflow=False)
    generate, variables, config = components.load_generator(
        args.workdir, step=args.step, use_ema=not args.no_ema
    )
    conditional = generate.conditional
    if values and not conditional:
        raise ValueError(
            f"{args.workdir}'s generator ({config.model.name}) is unconditional: --attrs and "
            "--attributes need a conditional model; edit attributes with --fit-directions "
            "and --edit instead"
        )
    if args.fit_directions:
        if conditional:
            raise ValueError(
                f"{args.workdir}'s generator is conditional: --edit changes the attribute "
                "input directly, no directions to fit"
            )
        _fit_directions(args, generate, variables)
    if keys is not None:
        _interpolate(args, generate, variables, keys, values)
    elif edit_index is not None:
        _edit(args, generate, variables, seeds, values, edit_index, strengths)
    elif grid_indices is not None:
        if not conditional:
            raise ValueError(
                f"{args.workdir}'s generator is unconditional: --attribute-grid needs a "
                "conditional model (unconditional ones: --fit-directions, then --edit)"
            )
        _attribute_grid(args, generate, variables, seeds, values, grid_indices)
    elif args.out or args.out_dir:
        z, attrs = _inputs(generate, seeds, values, args.truncation, args.consistent_requests)
        images = sampling.generate_latents_in_batches(
            generate, variables, z, args.batch_size, attrs
        )
        _write_images(args, images, [f"seed_{s:05d}.png" for s in seeds], "samples")


def _inputs(
    generate: sampling.SeededGenerator,
    seeds: Sequence[int],
    values: dict[int, float],
    psi: float,
    consistent: float = 0.0,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Latents [N, Z] (truncated) and attribute vectors [N, 40] (None: unconditional) of seeds.

    `consistent` > 0: what contradicts `values` in the pool vectors is resolved
    (`sampling.consistent_attributes`).
    """
    idx = np.asarray(seeds, np.int64)
    z = np.asarray(sampling.truncate(generate.latents(idx), psi))
    if not generate.conditional:
        return z, None
    attrs = sampling.apply_attribute_values(np.asarray(generate.attributes(idx)), values)
    return z, sampling.consistent_attributes(attrs, values, generate.pool, consistent)


def _render(args: argparse.Namespace, generate: sampling.SeededGenerator, variables: Any):
    """`render(z, attributes) -> images` on the deterministic path."""

    def render(z: np.ndarray, attrs: np.ndarray | None) -> np.ndarray:
        return sampling.generate_latents_in_batches(generate, variables, z, args.batch_size, attrs)

    return render


def _write_images(
    args: argparse.Namespace,
    images: np.ndarray,
    names: Sequence[str],
    what: str,
    ncols: int | None = None,
) -> None:
    if args.out:
        sampling.save_grid(images, args.out, args.ncols or ncols)
        print(f"wrote {len(images)} {what} as a grid to {args.out}")
    if args.out_dir:
        for name, img in zip(names, sampling.to_uint8(images), strict=True):
            sampling.save_png(img, fileio.join(args.out_dir, name))
        print(f"wrote {len(images)} PNGs to {args.out_dir}")


def _interpolate(args, generate, variables, keys, values) -> None:
    z_keys, attr_keys = _inputs(generate, keys, values, args.truncation, args.consistent_requests)
    z, attrs = sampling.interpolate(z_keys, args.frames, not args.lerp, attr_keys)
    images = _render(args, generate, variables)(z, attrs)
    names = [f"frame_{f:05d}.png" for f in range(len(images))]
    if args.out and not args.out.lower().endswith(".png"):
        sampling.save_animation(sampling.to_uint8(images), args.out, args.fps)
        kind = "slerp" if not args.lerp else "lerp"
        print(
            f"wrote a {len(images)}-frame {kind} walk through seeds "
            f"{','.join(map(str, keys))} to {args.out}"
        )
        args = argparse.Namespace(**{**vars(args), "out": None})
    _write_images(args, images, names, "frames")


def _edit(args, generate, variables, seeds, values, index, strengths) -> None:
    name = CELEBA_ATTRIBUTES[index]
    render = _render(args, generate, variables)
    z, attrs = _inputs(generate, seeds, values, args.truncation, args.consistent_requests)
    if generate.conditional:
        strengths = strengths or parse_strengths(DEFAULT_CONDITIONAL_STRENGTHS)
        bad = [s for s in strengths if not 0.0 <= s <= 1.0]
        if bad:
            raise ValueError(
                f"--strength: a conditional model's attribute input is in [0, 1]; got {bad}"
            )
        if set(strengths) <= {0.0, 1.0}:  # off / on: each column a consistent request
            render = _consistent_render(render, args, generate, values, index)
        images = editing.conditional_edit(render, z, attrs, index, strengths)
        classifier_folder = args.classifier
    else:
        strengths = strengths or parse_strengths(DEFAULT_DIRECTION_STRENGTHS)
        directions = editing.load_directions(
            workdir_lib.directions_path(args.workdir), args.workdir
        )
        if directions.z_dim != generate.z_dim:
            raise ValueError(
                f"{workdir_lib.directions_path(args.workdir)} has {directions.z_dim}-d "
                f"directions for a {generate.z_dim}-d latent; refit with --fit-directions"
            )
        normal = directions.normal(name)
        acc = directions.accuracy[index]
        print(f"{name} direction: boundary balanced accuracy {acc:.3f} on held-out latents")
        images = editing.walk(render, z, normal, strengths)
        classifier_folder = args.classifier or directions.classifier or None
        if classifier_folder and not fileio.isdir(classifier_folder):
            classifier_folder = None
    n, s = images.shape[:2]
    flat = images.reshape(n * s, *images.shape[2:])
    names = [f"seed_{seed:05d}_{name}_{v:+.2f}.png" for seed in seeds for v in strengths]
    _write_images(args, flat, names, f"{name} edits ({n} seeds x {s})", ncols=s)
    if classifier_folder:
        from facegan_jax.metrics import attributes

        classifier = attributes.load(classifier_folder)
        for line in editing.walk_report(classifier, images, name, strengths).lines():
            print(line)


def _consistent_render(render, args, generate, values, index):
    """`render` whose requests resolve what contradicts `values` and attribute `index`."""
    asked = {*values, index}

    def consistent(z: np.ndarray, attrs: np.ndarray) -> np.ndarray:
        attrs = sampling.consistent_attributes(
            attrs, asked, generate.pool, args.consistent_requests
        )
        return render(z, attrs)

    return consistent


def _attribute_grid(args, generate, variables, seeds, values, indices) -> None:
    """Rows: each attribute off, then on; columns: the seeds (same latent down a column)."""
    render = _render(args, generate, variables)
    z, attrs = _inputs(generate, seeds, values, args.truncation, args.consistent_requests)
    rows, names = [], []
    for index in indices:
        consistent = _consistent_render(render, args, generate, values, index)
        images = editing.conditional_edit(consistent, z, attrs, index, [0.0, 1.0])  # [N, 2, ...]
        rows.append(np.swapaxes(images, 0, 1))  # [2, N, ...]
        name = CELEBA_ATTRIBUTES[index]
        names += [f"{name}_{v}_seed_{s:05d}.png" for v in ("off", "on") for s in seeds]
    grid = np.concatenate(rows).reshape(-1, *rows[0].shape[2:])
    what = f"images ({len(indices)} attributes off/on x {len(seeds)} seeds)"
    _write_images(args, grid, names, what, ncols=len(seeds))


def _fit_directions(args, generate, variables) -> None:
    from facegan_jax.metrics import attributes

    classifier = attributes.load(args.classifier)
    fast = generate.as_batched()  # thousands of images, labelled in bulk: the fast path

    def render(z: np.ndarray, attrs: np.ndarray | None) -> np.ndarray:
        return sampling.generate_latents_in_batches(fast, variables, z, args.batch_size, attrs)

    start = time.perf_counter()
    z = np.asarray(sampling.latents(editing.FIT_SEED, np.arange(args.num), generate.z_dim))
    probs = editing.label_samples(render, classifier, z)
    labelled = time.perf_counter() - start
    directions = editing.fit_directions(
        z, probs, classifier.thresholds, classifier=fileio.resolve(args.classifier)
    )
    path = directions.save(workdir_lib.directions_path(args.workdir))
    for line in editing.format_directions(directions, classifier.balanced_accuracy):
        print(line)
    print(
        f"labelled {args.num} samples in {labelled:.1f} s, fitted in "
        f"{time.perf_counter() - start - labelled:.1f} s; wrote {path}"
    )


if __name__ == "__main__":
    sys.exit(main())
