"""Seeded sampling: latents, attribute vectors, generator application, interpolation, pictures.

The latent of image `i` under seed `s` is `normal(fold_in(PRNGKey(s), i))`, so
an image depends only on (seed, index) and the weights, never on the batch size
or device count. The sampling CLI (`facegan_jax.cli.sample`) uses seed 0 and the
requested seeds as indices; the training loop's control grid uses
`config.seed` and indices `0..num_control_samples-1`.

Two ways to run a generator, both built from the same module and config:

* `make_generate_fn`: deterministic. Images are generated one at a time inside
  the graph (`lax.map` over a batch-1 generator), so an image is bit-identical
  whatever the batch size; this is what `sample` writes (grids, walks, edits).
* `make_batched_generate_fn`: one generator call on the whole batch, several
  times faster, equal to the deterministic path only up to float rounding
  (XLA picks different kernels for different batch shapes). For metrics
  (FID, attribute statistics), where thousands of images are averaged.

Both return a `SeededGenerator`: `generate(variables, indices[, attributes])`
and `generate.from_latents(variables, z[, attributes])`, which is how
truncation, interpolation and latent editing feed their own latents.

Truncation (`truncate`): `z' = psi * z`. Our generators take `z ~ N(0, I)`
directly, whose mean is 0; for conditional models the attribute vector is a
separate input, independent of `z`, so the mean latent of every condition is
also 0 and truncation scales `z` only, keeping the attribute vector. `psi = 0`
gives the mean-latent image: one image per condition, the same for every seed.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib.util
import math
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from facegan_jax import fileio, models
from facegan_jax.data import celeba_attributes
from facegan_jax.data.celeba_attributes import CELEBA_ATTRIBUTES, NUM_ATTRIBUTES

PyTree = Any

# Largest seed: latents fold the index in as a uint32.
MAX_SEED = 2**32 - 1
# The sample command's default `--consistent-requests` (`consistent_attributes`).
DEFAULT_CONSISTENT = 0.02
# Extensions `save_animation` writes.
ANIMATION_FORMATS = (".gif", ".mp4")
VIDEO_INSTALL_HINT = "pip install imageio-ffmpeg (or pip install 'facegan_jax[video]')"


# ----------------------------------------------------------------------------- latents
def latents(seed: int, indices: jax.Array, z_dim: int) -> jax.Array:
    """Latents [N, z_dim] for image `indices` [N] under `seed` (batch-size independent)."""
    key = jax.random.PRNGKey(seed)
    return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), (z_dim,)))(
        jnp.asarray(indices, jnp.uint32)
    )


def truncate(z: jax.Array, psi: float) -> jax.Array:
    """The truncation trick for `z ~ N(0, I)`: `mean + psi * (z - mean)` with mean 0.

    `psi = 1` returns `z` unchanged (bit for bit), `psi = 0` the mean latent.
    Conditional models keep their attribute vector: the latent mean of every
    condition is 0 because `z` is drawn independently of it.
    """
    if not math.isfinite(psi):
        raise ValueError(f"--truncation={psi} must be a finite number")
    if psi == 1.0:
        return z
    return jnp.asarray(z) * jnp.float32(psi)


def slerp(z0: jax.Array, z1: jax.Array, t: jax.Array) -> jax.Array:
    """Spherical interpolation of Gaussian latents [..., Z] at `t` [...] in [0, 1].

    Follows the great circle between the directions of `z0` and `z1` (norms are
    interpolated along with it), which keeps intermediate latents at the typical
    norm of N(0, I) samples where a straight line would pass closer to 0. Nearly
    parallel latents fall back to `lerp`. `t = 0` and `t = 1` return `z0`, `z1`
    exactly.
    """
    z0, z1 = jnp.asarray(z0, jnp.float32), jnp.asarray(z1, jnp.float32)
    t = jnp.asarray(t, jnp.float32)[..., None]
    n0 = jnp.linalg.norm(z0, axis=-1, keepdims=True)
    n1 = jnp.linalg.norm(z1, axis=-1, keepdims=True)
    cos = jnp.sum(z0 * z1, axis=-1, keepdims=True) / jnp.maximum(n0 * n1, 1e-12)
    omega = jnp.arccos(jnp.clip(cos, -1.0, 1.0))
    sin = jnp.sin(omega)
    small = sin < 1e-4
    safe = jnp.where(small, 1.0, sin)
    w0 = jnp.where(small, 1.0 - t, jnp.sin((1.0 - t) * omega) / safe)
    w1 = jnp.where(small, t, jnp.sin(t * omega) / safe)
    out = w0 * z0 + w1 * z1
    return jnp.where(t <= 0.0, z0, jnp.where(t >= 1.0, z1, out))


def lerp(z0: jax.Array, z1: jax.Array, t: jax.Array) -> jax.Array:
    """Straight-line interpolation [..., Z] at `t` [...]; `t = 0, 1` give `z0`, `z1` exactly."""
    z0, z1 = jnp.asarray(z0, jnp.float32), jnp.asarray(z1, jnp.float32)
    t = jnp.asarray(t, jnp.float32)[..., None]
    out = z0 + t * (z1 - z0)
    return jnp.where(t <= 0.0, z0, jnp.where(t >= 1.0, z1, out))


def interpolation_schedule(num_keys: int, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Where each frame of a walk through `num_keys` keyframes lies.

    Keyframe k sits exactly on frame `round(k * (frames - 1) / (num_keys - 1))`
    (so the first and last frames are the first and last keyframes, and every
    keyframe is shown exactly); the frames between two keyframes are evenly
    spaced in `t`.

    Returns:
      (segment int [frames], t float32 [frames]): frame f interpolates keyframes
      `segment[f]` and `segment[f] + 1` at `t[f]` in [0, 1].

    Raises:
      ValueError: fewer than 2 keyframes or fewer frames than keyframes.
    """
    if num_keys < 2:
        raise ValueError(f"--interpolate needs at least 2 seeds, got {num_keys}")
    if frames < num_keys:
        raise ValueError(f"--frames={frames} must be at least the number of seeds ({num_keys})")
    key_frames = [round(k * (frames - 1) / (num_keys - 1)) for k in range(num_keys)]
    segment = np.zeros(frames, np.int64)
    t = np.zeros(frames, np.float32)
    for k in range(num_keys - 1):
        lo, hi = key_frames[k], key_frames[k + 1]
        for f in range(lo, hi + 1):
            segment[f] = k
            t[f] = (f - lo) / (hi - lo)
    return segment, t


def interpolate(
    keys: Any, frames: int, spherical: bool = True, attributes: Any = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Latents (and attribute vectors) of a walk through keyframes.

    Args:
      keys: keyframe latents [K, Z].
      frames: total frames (>= K), keyframes included.
      spherical: `slerp` (default) or `lerp` between consecutive latents.
      attributes: keyframe attribute vectors [K, A] (conditional models), blended
        linearly, or None.

    Returns:
      (latents float32 [frames, Z], attributes float32 [frames, A] or None).
      Frames on a keyframe hold exactly that keyframe's latent and vector.
    """
    keys = np.asarray(keys, np.float32)
    segment, t = interpolation_schedule(len(keys), frames)
    blend = slerp if spherical else lerp
    z = np.asarray(blend(keys[segment], keys[segment + 1], t))
    attrs = None
    if attributes is not None:
        a = np.asarray(attributes, np.float32)
        attrs = np.asarray(lerp(a[segment], a[segment + 1], t))
    return z, attrs


# ----------------------------------------------------------------------------- attributes
def pool_attributes(seed: int, indices: jax.Array, pool: jax.Array) -> jax.Array:
    """Attribute vectors [N, 40] for `indices`, drawn from a pool of real vectors [P, 40]."""
    key = jax.random.fold_in(jax.random.PRNGKey(seed), 0x5EED)
    idx = jax.vmap(lambda i: jax.random.randint(jax.random.fold_in(key, i), (), 0, pool.shape[0]))(
        jnp.asarray(indices, jnp.uint32)
    )
    return jnp.asarray(pool)[idx]


def resolve_attribute(name: str) -> int:
    """Index of a CelebA attribute name; a wrong one is an error listing the closest names.

    Case and `-`/space for `_` are forgiven (`smiling`, `wearing hat`).
    """
    name = name.strip()
    if name in CELEBA_ATTRIBUTES:
        return CELEBA_ATTRIBUTES.index(name)
    folded = {a.lower(): i for i, a in enumerate(CELEBA_ATTRIBUTES)}
    key = name.lower().replace("-", "_").replace(" ", "_")
    if key in folded:
        return folded[key]
    close = difflib.get_close_matches(key, list(folded), n=4, cutoff=0.5)
    if close:
        hint = "did you mean " + ", ".join(CELEBA_ATTRIBUTES[folded[c]] for c in close) + "?"
    else:
        hint = "valid names: " + ", ".join(CELEBA_ATTRIBUTES)
    raise ValueError(f"unknown CelebA attribute {name!r}; {hint}")


def parse_attribute_values(spec: str | None, *, flag: str = "--attrs") -> dict[int, float]:
    """'Smiling=1,Eyeglasses=0' -> {attribute index: value in [0, 1]}.

    A bare name means `=1` (so the older `--attributes Eyeglasses,Smiling` parses too).

    Raises:
      ValueError: naming the bad part (unknown name with the closest valid ones,
        a value that is not a number in [0, 1]).
    """
    out: dict[int, float] = {}
    for part in filter(None, (s.strip() for s in (spec or "").split(","))):
        name, sep, value = part.partition("=")
        index = resolve_attribute(name)
        if not sep:
            out[index] = 1.0
            continue
        try:
            v = float(value)
        except ValueError:
            v = float("nan")
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{flag}: {part!r} needs a value in [0, 1] (like Smiling=1)")
        out[index] = v
    return out


def apply_attribute_values(vectors: Any, values: Mapping[int, float]) -> np.ndarray:
    """Attribute vectors [N, 40] with `values` ({index: value}) set on top; a copy."""
    out = np.array(vectors, np.float32, copy=True)
    for index, value in values.items():
        out[:, index] = value
    return out


def consistent_attributes(
    vectors: Any, asked: Iterable[int], pool: Any, rate: float = DEFAULT_CONSISTENT
) -> np.ndarray:
    """Attribute vectors [N, 40] with what contradicts the asked-for entries resolved; a copy.

    A pool vector is a real person's: asked for Male on a woman's vector, the request
    would also hold her Wearing_Lipstick, which the data never shows on a man (and a
    classifier then reads as a woman). Each entry not in `asked` whose value has
    probability below `rate` among the pool's vectors with an asked entry's value is
    set to its likely value (`celeba_attributes.conflicts`); `rate=0` changes nothing.

    Args:
      vectors: attribute vectors {0, 1} [N, 40] with the asked values already set.
      asked: indices the user set (kept whatever they are).
      pool: real attribute vectors [P, 40] the probabilities come from.
      rate: the probability below which an entry contradicts an asked one.
    """
    out = np.array(vectors, np.float32, copy=True)
    asked = sorted(set(asked))
    if rate <= 0 or not asked or pool is None:
        return out
    forced = np.zeros(out.shape, bool)
    forced[:, asked] = True
    table = celeba_attributes.conflict_table(np.asarray(pool))
    return np.asarray(celeba_attributes.resolve_conflicts(table, rate, out, forced), np.float32)


# ----------------------------------------------------------------------------- generators
@dataclasses.dataclass(frozen=True, eq=False)
class SeededGenerator:
    """A generator module bound to its config, latent seed and attribute pool.

    Call it as `generate(variables, indices[, attributes]) -> images [N, H, W, C]`
    in [-1, 1]; `from_latents(variables, z[, attributes])` takes latents directly.
    Pure and traceable (jit it, or use `generate_in_batches`). Built by
    `make_generate_fn` (deterministic) or `make_batched_generate_fn` (fast).

    Attributes:
      generator: the Flax generator; run in eval mode (BatchNorm running
        statistics, frozen spectral-norm vectors).
      z_dim: latent size.
      conditional: whether the generator takes attribute vectors [N, 40].
      seed: the latent seed (`latents(seed, indices)`).
      pool: real attribute vectors [P, 40] conditional models draw from, or None.
      batched: one generator call per batch (True) or `lax.map` over batch-1
        calls (False, bit-identical whatever the batch size).
    """

    generator: nn.Module
    z_dim: int
    conditional: bool
    seed: int
    pool: np.ndarray | None = None
    batched: bool = False

    def latents(self, indices: Any) -> jax.Array:
        """Latents [N, z_dim] of image `indices` [N]."""
        return latents(self.seed, indices, self.z_dim)

    def attributes(self, indices: Any) -> jax.Array:
        """The default attribute vectors [N, 40] of `indices` for a conditional model.

        Real vectors from the pool (`pool_attributes`), or all-zero without a pool
        (unconditional models: [N, 0]).
        """
        n = jnp.shape(indices)[0]
        if not self.conditional:
            return jnp.zeros((n, 0), jnp.float32)
        if self.pool is None:
            return jnp.zeros((n, NUM_ATTRIBUTES), jnp.float32)
        return pool_attributes(self.seed, indices, jnp.asarray(self.pool, jnp.float32))

    def __call__(
        self, variables: PyTree, indices: jax.Array, attributes: jax.Array | None = None
    ) -> jax.Array:
        """Images [N, H, W, C] of `indices`; `attributes` [N, 40] default to `self.attributes`."""
        if attributes is None:
            attributes = self.attributes(indices)
        return self.from_latents(variables, self.latents(indices), attributes)

    def from_latents(
        self, variables: PyTree, z: jax.Array, attributes: jax.Array | None = None
    ) -> jax.Array:
        """Images [N, H, W, C] of latents `z` [N, Z] (and attribute vectors [N, 40])."""
        z = jnp.asarray(z, jnp.float32)
        if not self.conditional:
            attributes = jnp.zeros((z.shape[0], 0), jnp.float32)  # unused
        elif attributes is None:
            attributes = jnp.zeros((z.shape[0], NUM_ATTRIBUTES), jnp.float32)
        attributes = jnp.asarray(attributes, jnp.float32)

        if self.batched:
            a = attributes if self.conditional else None
            return self.generator.apply(variables, z, a, train=False)

        def one(args: tuple[jax.Array, jax.Array]) -> jax.Array:
            z_i, a_i = args
            a = a_i[None] if self.conditional else None
            return self.generator.apply(variables, z_i[None], a, train=False)[0]  # [H, W, C]

        return jax.lax.map(one, (z, attributes))  # [N, H, W, C]

    def as_batched(self, batched: bool = True) -> SeededGenerator:
        """The same generator with the other application path."""
        return dataclasses.replace(self, batched=batched)

    @functools.cached_property
    def jitted(self) -> Callable[..., jax.Array]:
        """`jax.jit(self)`, compiled once per input shape for this object."""
        return jax.jit(self.__call__)

    @functools.cached_property
    def jitted_from_latents(self) -> Callable[..., jax.Array]:
        """`jax.jit(self.from_latents)`, compiled once per input shape for this object."""
        return jax.jit(self.from_latents)


def _seeded_generator(
    generator: nn.Module, config: Any, seed: int, pool: np.ndarray | None, batched: bool
) -> SeededGenerator:
    conditional = models.is_conditional(config)
    return SeededGenerator(
        generator=generator,
        z_dim=int(config.model.z_dim),
        conditional=conditional,
        seed=int(seed),
        pool=None if pool is None or not conditional else np.asarray(pool, np.float32),
        batched=batched,
    )


def make_generate_fn(
    generator: nn.Module, config: Any, seed: int, pool: np.ndarray | None = None
) -> SeededGenerator:
    """Returns the deterministic `generate(variables, indices, attributes) -> images` in [-1, 1].

    The generator runs in eval mode (BatchNorm running statistics, frozen
    spectral-norm vectors), so each image depends on its own latent only.
    `attributes` is `[N, 40]` for conditional models and ignored otherwise; when it
    is omitted, a conditional model gets `pool_attributes(seed, indices, pool)`
    (real attribute vectors) or, without a pool, all-zero attributes.

    Images are generated one at a time inside the graph (`lax.map` over a
    batch-1 generator): XLA picks different convolution kernels for different
    batch shapes, whose float results differ in the last bits, so this is what
    makes an image bit-identical whatever the batch size. The result also has
    `from_latents(variables, z, attributes)` (see `SeededGenerator`).
    """
    return _seeded_generator(generator, config, seed, pool, batched=False)


def make_batched_generate_fn(
    generator: nn.Module, config: Any, seed: int, pool: np.ndarray | None = None
) -> SeededGenerator:
    """Like `make_generate_fn`, with one generator call on the whole batch: for metrics.

    Same latents and attribute vectors, several times faster (no per-image
    loop), but an image can differ from the deterministic path's in the last
    float bits, and between batch sizes (about 1e-6; rarely one PNG level).
    Use it where thousands of images are averaged (FID, attribute statistics),
    not where an image must be reproduced exactly.
    """
    return _seeded_generator(generator, config, seed, pool, batched=True)


def _run_in_batches(
    fn: Callable[..., jax.Array], variables: PyTree, arrays: Sequence[Any], batch_size: int
) -> np.ndarray:
    """`fn(variables, *chunks)` over the leading axis of `arrays` in padded batches."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    n = len(arrays[0])
    out = []
    for start in range(0, n, batch_size):
        chunks = []
        for a in arrays:
            if a is None:
                chunks.append(None)
                continue
            c = np.asarray(a[start : start + batch_size])
            pad = batch_size - len(c)
            if pad:  # one compiled shape serves every batch
                c = np.concatenate([c, np.zeros((pad, *c.shape[1:]), c.dtype)])
            chunks.append(c)
        images = np.asarray(fn(variables, *chunks))
        out.append(images[: min(batch_size, n - start)])
    return np.concatenate(out, axis=0)


def generate_in_batches(
    generate: Callable[..., jax.Array],
    variables: PyTree,
    indices: Sequence[int],
    batch_size: int,
    attributes: np.ndarray | None = None,
) -> np.ndarray:
    """Runs `generate` over `indices` in batches of `batch_size`; returns images [N, H, W, C].

    The last batch is padded to `batch_size` so one compiled shape serves all.
    """
    gen = generate.jitted if isinstance(generate, SeededGenerator) else jax.jit(generate)
    idx = np.asarray(indices, np.int64)
    return _run_in_batches(gen, variables, [idx, attributes], batch_size)


def generate_latents_in_batches(
    generate: SeededGenerator,
    variables: PyTree,
    z: Any,
    batch_size: int,
    attributes: Any = None,
) -> np.ndarray:
    """`generate.from_latents` over latents `z` [N, Z] in padded batches; images [N, H, W, C]."""
    z = np.asarray(z, np.float32)
    attrs = None if attributes is None else np.asarray(attributes, np.float32)
    return _run_in_batches(generate.jitted_from_latents, variables, [z, attrs], batch_size)


# ----------------------------------------------------------------------------- pictures
def to_uint8(images: np.ndarray) -> np.ndarray:
    """[-1, 1] floats -> uint8, the quantisation of a saved PNG."""
    return np.clip(np.round((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(
        np.uint8
    )


def make_grid(images: np.ndarray, ncols: int | None = None, pad: int = 2) -> np.ndarray:
    """Tiles uint8 images [N, H, W, C] into one grid image on a grey background."""
    n, h, w, c = images.shape
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), 128, np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, ncols)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y : y + h, x : x + w] = img
    return grid


def save_png(image: np.ndarray, path: str) -> None:
    """Writes a uint8 [H, W, C] image (C = 1 or 3) as PNG, atomically."""
    fileio.save_image(path, image)


def save_grid(images: np.ndarray, path: str, ncols: int | None = None) -> None:
    """Saves images in [-1, 1] [N, H, W, C] as one PNG grid."""
    save_png(make_grid(to_uint8(images), ncols), path)


def check_animation_path(path: str) -> str:
    """The format ('.gif' or '.mp4') `save_animation` will write to `path`.

    Checked before anything is generated, so a missing video writer fails fast.

    Raises:
      ValueError: another extension, or `.mp4` without imageio-ffmpeg (saying what
        to install).
    """
    ext = os.path.splitext(path)[1].lower()
    if ext not in ANIMATION_FORMATS:
        raise ValueError(f"{path}: an animation is written as .gif or .mp4, not {ext or 'no'!r}")
    if ext == ".mp4" and not (_has_module("imageio") and _has_module("imageio_ffmpeg")):
        raise ValueError(f"{path}: writing MP4 needs imageio-ffmpeg; {VIDEO_INSTALL_HINT}")
    return ext


def _has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def save_animation(frames: np.ndarray, path: str, fps: float = 20.0) -> None:
    """Writes uint8 frames [F, H, W, C] as an animated GIF (looping) or an MP4.

    GIFs go through imageio; a GIF
    holds 256 colours per frame, so its pixels are a palette approximation of
    the frames (write PNGs for exact pixels). MP4s (H.264, lossy) need
    imageio-ffmpeg. The file appears whole (fileio.write_bytes).

    Raises:
      ValueError: see `check_animation_path`.
    """
    ext = check_animation_path(path)
    if fps <= 0:
        raise ValueError(f"--fps={fps} must be > 0")
    frames = np.asarray(frames, np.uint8)
    if frames.shape[-1] == 1:
        frames = frames[..., 0]
    if ext == ".mp4":
        import imageio.v2 as imageio

        with warnings.catch_warnings():
            # imageio-ffmpeg starts ffmpeg with subprocess (fork + exec at once, in C);
            # Python's warning about forking a multithreaded (JAX) process does not apply.
            warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called")
            # Even sizes only for yuv420p; every resolution we generate is even.
            with fileio.local_file(path, suffix=ext) as tmp:  # ffmpeg writes a local file
                imageio.mimwrite(tmp, list(frames), fps=fps, macro_block_size=1, format="FFMPEG")
    else:
        import imageio.v3 as iio

        gif = iio.imwrite("<bytes>", frames, extension=".gif", duration=1000.0 / fps, loop=0)
        fileio.write_bytes(path, gif)


# ----------------------------------------------------------------------------- seeds
def parse_seeds(spec: str, flag: str = "--seeds") -> list[int]:
    """Parses '0-63', '1,5,9' or '0-63,100,200-210' into a list of seeds (order kept).

    Raises:
      ValueError: naming the first bad part (not a number or range, a range that
        ends before it starts, a seed outside [0, 2**32 - 1]).
    """
    seeds: list[int] = []
    for raw in spec.split(","):
        part = raw.strip()
        if not part:
            continue
        lo_s, dash, hi_s = part.partition("-")
        try:
            lo = int(lo_s)
            hi = int(hi_s) if dash else lo
        except ValueError:
            raise ValueError(
                f"{flag}={spec!r}: {part!r} is not a seed or a range like '0-63' "
                "(seeds are integers >= 0)"
            ) from None
        if hi < lo:
            raise ValueError(f"{flag}={spec!r}: the range {part!r} ends before it starts")
        if hi > MAX_SEED:
            raise ValueError(f"{flag}={spec!r}: {part!r} goes past the largest seed {MAX_SEED}")
        seeds.extend(range(lo, hi + 1))
    if not seeds:
        raise ValueError(f"{flag}={spec!r} names no seeds (give e.g. '0-63' or '1,5,9')")
    return seeds
