r"""The seeded procedural face renderer behind the `synthetic_faces` dataset (pure numpy).

This module owns drawing the faces: their parameters, their CelebA labels and
the vectorised rasteriser. The TFDS builder that stores them lives in
`facegan_jax.data.synthetic_faces`, the preview command line in
`data_prep.render_synthetic_faces`. Nothing here imports TensorFlow.

Every image is a pure function of `(seed, index)`: its parameters are drawn from
`np.random.default_rng([seed, index])` and rendered with vectorised numpy
(signed distances, coverage over a supersampled grid, box-downsampled, so edges
are anti-aliased). Each image carries CelebA's 40-attribute vector under
CelebA's names: the attributes the renderer draws are set truthfully, all the
others are False.

Drawn attributes: Arched_Eyebrows, Bald, Bangs, Black_Hair, Blond_Hair,
Brown_Hair, Bushy_Eyebrows, Eyeglasses, Goatee, Gray_Hair, Male,
Mouth_Slightly_Open, Mustache, Narrow_Eyes, No_Beard, Pale_Skin, Rosy_Cheeks,
Smiling, Wearing_Hat, Wearing_Lipstick, Wearing_Necktie.
"""

from __future__ import annotations

import bisect
import colorsys
import math
from collections.abc import Sequence

import numpy as np

from facegan_jax.data.celeba_attributes import CELEBA_ATTRIBUTES

RESOLUTIONS: tuple[int, ...] = (32, 64, 128)
# Supersampling factor per output resolution. Edges already get analytic coverage
# from their signed distance; 2x2 subpixels add it where thin parts meet.
_SUPERSAMPLE: dict[int, int] = {32: 2, 64: 2, 128: 2}
# Subpixels rendered together: few enough faces per batch that the union of their
# feature windows stays tight (measured fastest on one core), at least one face.
_SUBPIXELS_PER_BATCH = 65_536

# Attributes the renderer draws; every other CelebA attribute is always False.
DRAWN_ATTRIBUTES: tuple[str, ...] = (
    "Arched_Eyebrows",
    "Bald",
    "Bangs",
    "Black_Hair",
    "Blond_Hair",
    "Brown_Hair",
    "Bushy_Eyebrows",
    "Eyeglasses",
    "Goatee",
    "Gray_Hair",
    "Male",
    "Mouth_Slightly_Open",
    "Mustache",
    "Narrow_Eyes",
    "No_Beard",
    "Pale_Skin",
    "Rosy_Cheeks",
    "Smiling",
    "Wearing_Hat",
    "Wearing_Lipstick",
    "Wearing_Necktie",
)
assert set(DRAWN_ATTRIBUTES) <= set(CELEBA_ATTRIBUTES)

# Parts whose visible coverage `render_face_layers` reports.
MASK_NAMES: tuple[str, ...] = (
    "face",
    "hair",
    "bangs",
    "hat",
    "eyeglasses",
    "beard",
    "goatee",
    "mustache",
    "mouth",
    "mouth_interior",
    "eyes",
    "eyebrows",
    "nose",
    "cheeks",
    "necktie",
)

# ------------------------------------------------------------------ palettes (RGB in [0, 1])
# Skin tones from pale to dark; index 0 is the one labelled Pale_Skin.
_SKIN_TONES = np.array(
    [
        (0.99, 0.89, 0.83),
        (0.96, 0.80, 0.68),
        (0.92, 0.72, 0.58),
        (0.83, 0.61, 0.45),
        (0.70, 0.49, 0.33),
        (0.53, 0.35, 0.23),
        (0.38, 0.25, 0.17),
    ],
    np.float32,
)
_SKIN_PROBS = np.array([0.14, 0.22, 0.2, 0.16, 0.12, 0.09, 0.07])
# Hair colours; 'auburn' is drawn but has no CelebA attribute (all four stay False).
_HAIR_NAMES = ("black", "brown", "blond", "gray", "auburn")
_HAIR_ATTRIBUTE = {
    "black": "Black_Hair",
    "brown": "Brown_Hair",
    "blond": "Blond_Hair",
    "gray": "Gray_Hair",
}
_HAIR_COLOURS = np.array(
    [
        (0.07, 0.06, 0.06),
        (0.38, 0.22, 0.11),
        (0.93, 0.78, 0.45),
        (0.74, 0.74, 0.74),
        (0.62, 0.24, 0.10),
    ],
    np.float32,
)
_HAIR_PROBS = np.array([0.3, 0.3, 0.2, 0.12, 0.08])
_IRIS_COLOURS = np.array(
    [(0.36, 0.2, 0.1), (0.25, 0.45, 0.75), (0.3, 0.48, 0.28), (0.14, 0.09, 0.07)], np.float32
)
_TEETH = np.array((0.97, 0.96, 0.9), np.float32)
_MOUTH_DARK = np.array((0.28, 0.05, 0.07), np.float32)
_SCLERA = np.array((0.98, 0.98, 0.96), np.float32)


# ------------------------------------------------------------------ face parameters
def _check_seed_index(seed: int, index: int) -> None:
    if int(seed) < 0 or int(index) < 0:
        raise ValueError(f"synthetic_faces: seed and index must be >= 0, got {seed}, {index}")


def check_resolution(resolution: int) -> None:
    """Raises ValueError unless `resolution` is one of `RESOLUTIONS`."""
    if resolution not in RESOLUTIONS:
        raise ValueError(
            f"config.data.image_size={resolution} is not supported by synthetic_faces; "
            f"use one of {RESOLUTIONS}"
        )


def _hsv(h: float, s: float, v: float) -> tuple[float, float, float]:
    return colorsys.hsv_to_rgb(h % 1.0, s, v)


def sample_face_params(seed: int, index: int) -> dict[str, float | np.ndarray]:
    """Draws the parameters of one face from `np.random.default_rng([seed, index])`.

    Args:
      seed: non-negative dataset seed.
      index: non-negative image index.

    Returns:
      A flat dict of floats (flags are 0.0/1.0) and RGB colours (float32 [3]),
      in head-frame units where the canvas spans [-1, 1] (y points down).
    """
    _check_seed_index(seed, index)
    rng = np.random.default_rng([int(seed), int(index)])
    # One vector of uniforms, consumed in order: much faster than one call per draw.
    draws = iter(rng.random(128).tolist())

    def u() -> float:
        return next(draws)

    def choose(probs: Sequence[float]) -> int:
        return min(bisect.bisect_right(np.cumsum(probs).tolist(), u()), len(probs) - 1)

    male = u() < 0.45

    # Hair style: bald only for men (and never under a hat, which would hide it).
    if male:
        style = choose([0.16, 0.74, 0.10])  # bald, short, long
    else:
        style = choose([0.0, 0.22, 0.78])
    bald, long_hair = style == 0, style == 2
    hair_idx = choose(_HAIR_PROBS)
    hat = (not bald) and u() < 0.22
    bangs = (not bald) and u() < (0.18 if male else 0.38)

    beard_roll = u()
    if male:
        beard = 0 if beard_roll < 0.5 else (1 if beard_roll < 0.75 else 2)  # none, full, goatee
    else:
        beard = 0
    mustache = beard == 1 or (beard == 2 and u() < 0.5) or (male and beard == 0 and u() < 0.12)

    smiling = u() < 0.5
    mouth_open = u() < (0.72 if smiling else 0.3)
    glasses = u() < 0.42
    sunglasses = glasses and u() < 0.2
    lipstick = (not male) and u() < 0.6
    rosy = u() < 0.2
    arched = u() < (0.15 if male else 0.55)
    bushy = u() < (0.45 if male else 0.1)
    narrow_eyes = u() < 0.15
    necktie = male and u() < 0.3

    skin_idx = choose(_SKIN_PROBS)
    skin = _SKIN_TONES[skin_idx] * np.float32(u() * 0.08 + 0.96)
    hair = _HAIR_COLOURS[hair_idx] * np.float32(u() * 0.2 + 0.9)
    if _HAIR_NAMES[hair_idx] == "gray":
        hair = np.full(3, 0.55 + 0.33 * u(), np.float32) + np.float32((0.0, 0.0, 0.02))
    # Facial hair of a bald man is dark or grey; it is not a hair-colour attribute.
    beard_col = hair if not bald else _HAIR_COLOURS[(0, 1, 3)[choose([0.4, 0.3, 0.3])]].copy()
    brow_col = beard_col * np.float32(0.75 if _HAIR_NAMES[hair_idx] in ("blond", "gray") else 1.0)
    if lipstick:
        lip_col = np.array(_hsv(0.97 + 0.04 * u(), 0.75 + 0.2 * u(), 0.6 + 0.25 * u()))
    else:
        lip_col = skin * np.float32((0.78, 0.52, 0.52))
    bg_top = np.array(_hsv(u(), 0.1 + 0.45 * u(), 0.55 + 0.4 * u()))
    bg_bottom = bg_top * (0.75 + 0.2 * u())
    clothes = np.array(_hsv(u(), 0.2 + 0.6 * u(), 0.2 + 0.65 * u()))
    hat_col = np.array(_hsv(u(), 0.45 + 0.45 * u(), 0.3 + 0.55 * u()))
    tie_col = np.array(_hsv(u(), 0.5 + 0.4 * u(), 0.3 + 0.5 * u()))
    rim_col = np.array(_hsv(u(), 0.5 * u(), 0.04 + 0.2 * u()))
    iris = _IRIS_COLOURS[choose([0.4, 0.25, 0.15, 0.2])]

    scale = 0.86 + 0.14 * u()
    a = scale * (0.45 + 0.06 * u() + (0.02 if male else 0.0))  # face half-width
    b = scale * (0.60 + 0.07 * u())  # face half-height
    p: dict[str, float | np.ndarray] = dict(
        male=male,
        bald=bald,
        long_hair=long_hair,
        short_hair=style == 1,
        hair_idx=hair_idx,
        hat=hat,
        hat_brim=u() < 0.5,
        bangs=bangs,
        full_beard=beard == 1,
        goatee=beard == 2,
        mustache=mustache,
        smiling=smiling,
        mouth_open=mouth_open,
        glasses=glasses,
        sunglasses=sunglasses,
        round_glasses=u() < 0.4,
        lipstick=lipstick,
        rosy=rosy,
        arched=arched,
        bushy=bushy,
        narrow_eyes=narrow_eyes,
        necktie=necktie,
        pale=skin_idx == 0,
        # Pose: head centre, in-plane tilt, and a small turn that shifts the features.
        hx=0.14 * u() - 0.07,
        hy=-0.1 + 0.1 * u(),
        tilt=0.24 * u() - 0.12,
        turn=(0.12 * u() - 0.06) * a,
        a=a,
        b=b,
        taper=0.12 + 0.2 * u() - (0.06 if male else 0.0),
        hair_volume=0.02 + 0.08 * u(),
        hairline=-0.55 + 0.12 * u(),
        hair_part=0.3 * u() - 0.15,
        hair_length=1.15 + 0.35 * u(),
        bangs_phase=u(),
        eye_spacing=0.36 + 0.06 * u(),
        eye_y=0.06 * u() - 0.03,
        eye_rx=0.18 + 0.04 * u(),
        eye_ry=(0.05 if narrow_eyes else 0.09) + 0.02 * u(),
        gaze=0.5 * u() - 0.25,
        brow_gap=0.2 + 0.04 * u(),
        mouth_y=0.54 + 0.06 * u(),
        mouth_w=(0.48 + 0.08 * u()) if smiling else (0.2 + 0.07 * u()),
        smile_depth=0.17 + 0.05 * u(),
        body_w=(0.95 if male else 0.85) + 0.1 * u(),
        skin=skin,
        hair=hair,
        beard_col=beard_col,
        brow_col=brow_col,
        lip_col=lip_col,
        bg_top=bg_top,
        bg_bottom=bg_bottom,
        clothes=clothes,
        hat_col=hat_col,
        tie_col=tie_col,
        rim_col=rim_col,
        iris=iris,
    )
    return {k: (np.asarray(v, np.float32) if np.ndim(v) else float(v)) for k, v in p.items()}


_FLAGS = (
    "arched",
    "bald",
    "bangs",
    "bushy",
    "glasses",
    "goatee",
    "male",
    "mouth_open",
    "mustache",
    "narrow_eyes",
    "full_beard",
    "pale",
    "rosy",
    "smiling",
    "hat",
    "lipstick",
    "necktie",
)


def face_attributes(params: dict[str, float | np.ndarray]) -> dict[str, bool]:
    """Returns the 40 CelebA attributes (name -> bool) of a face drawn from `params`.

    Args:
      params: the output of `sample_face_params`.

    Returns:
      Every CelebA attribute name; those not in `DRAWN_ATTRIBUTES` are False.
    """
    attrs = dict.fromkeys(CELEBA_ATTRIBUTES, False)
    flag = {k: bool(params[k]) for k in _FLAGS}
    hair_name = _HAIR_NAMES[int(params["hair_idx"])]
    if not flag["bald"] and hair_name in _HAIR_ATTRIBUTE:
        attrs[_HAIR_ATTRIBUTE[hair_name]] = True
    attrs.update(
        Arched_Eyebrows=flag["arched"],
        Bald=flag["bald"],
        Bangs=flag["bangs"],
        Bushy_Eyebrows=flag["bushy"],
        Eyeglasses=flag["glasses"],
        Goatee=flag["goatee"],
        Male=flag["male"],
        Mouth_Slightly_Open=flag["mouth_open"],
        Mustache=flag["mustache"],
        Narrow_Eyes=flag["narrow_eyes"],
        No_Beard=not (flag["full_beard"] or flag["goatee"]),
        Pale_Skin=flag["pale"],
        Rosy_Cheeks=flag["rosy"],
        Smiling=flag["smiling"],
        Wearing_Hat=flag["hat"],
        Wearing_Lipstick=flag["lipstick"],
        Wearing_Necktie=flag["necktie"],
    )
    return attrs


# ------------------------------------------------------------------ signed distances
# All take coordinate arrays [N, h, w] and per-image parameters [N, 1, 1]; negative inside.
def _ellipse(x, y, cx, cy, rx, ry):
    """Approximate signed distance to an axis-aligned ellipse (exact on circles)."""
    inv_rx, inv_ry = 1.0 / np.float32(rx), 1.0 / np.float32(ry)  # per image, cheap
    px, py = (x - cx) * inv_rx, (y - cy) * inv_ry
    k0 = np.sqrt(px * px + py * py)
    qx, qy = px * inv_rx, py * inv_ry
    # k0 - 1 over the gradient norm of k0 (= k1 / k0): distance to first order.
    return k0 * (k0 - 1.0) / np.maximum(np.sqrt(qx * qx + qy * qy), 1e-6)


def _blob(x, y, cx, cy, rx, ry):
    """Cheaper ellipse distance, scaled by the smaller radius; for near-round shapes."""
    px, py = (x - cx) * (1.0 / np.float32(rx)), (y - cy) * (1.0 / np.float32(ry))
    return (np.sqrt(px * px + py * py) - 1.0) * np.minimum(np.float32(rx), np.float32(ry))


def _box(x, y, cx, cy, hw, hh, r):
    """Signed distance to a rounded box with half-sizes (hw, hh) and corner radius r."""
    qx = np.abs(x - cx) - hw + r
    qy = np.abs(y - cy) - hh + r
    outside = np.sqrt(np.maximum(qx, 0.0) ** 2 + np.maximum(qy, 0.0) ** 2)
    return outside + np.minimum(np.maximum(qx, qy), 0.0) - r


class _Canvas:
    """A batch of supersampled RGB canvases with per-part visible-coverage masks."""

    def __init__(self, params: dict[str, np.ndarray], resolution: int, with_masks: bool):
        self.p = params
        self.size = resolution * _SUPERSAMPLE[resolution]
        self.n = params["a"].shape[0]
        # Soft-edge width: one subpixel, in canvas units.
        self.inv_px = np.float32(self.size / 2.0)
        coords = ((np.arange(self.size, dtype=np.float32) + 0.5) * (2.0 / self.size) - 1.0).astype(
            np.float32
        )
        self.u = coords[None, None, :]  # [1, 1, W] image x
        self.v = coords[None, :, None]  # [1, H, 1] image y
        self.cos = np.cos(params["tilt"]).astype(np.float32)  # [N, 1, 1]
        self.sin = np.sin(params["tilt"]).astype(np.float32)
        du, dv = self.u - params["hx"], self.v - params["hy"]
        # Head-frame coordinates: the canvas rotated by -tilt about the head centre.
        self.X = self.cos * du + self.sin * dv  # [N, H, W]
        self.Y = self.cos * dv - self.sin * du  # [N, H, W]
        # Channel-first, so each channel's window is one strided block.
        self.rgb = np.empty((3, self.n, self.size, self.size), np.float32)  # [3, N, H, W]
        self.masks: dict[str, np.ndarray] | None = None
        if with_masks:
            shape = (self.n, self.size, self.size)
            self.masks = {name: np.zeros(shape, np.float32) for name in MASK_NAMES}

    # -------------------------------------------------------------- windows
    def _slices(self, x0, x1, y0, y1) -> tuple[slice, slice]:
        """Pixel slices covering the union over the batch of image-frame boxes."""
        margin = 3.0 / self.inv_px

        def span(lo, hi):
            lo_i = math.floor((float(np.min(lo)) - margin + 1.0) * self.inv_px)
            hi_i = math.ceil((float(np.max(hi)) + margin + 1.0) * self.inv_px)
            return slice(min(max(lo_i, 0), self.size), min(max(hi_i, 0), self.size))

        return span(y0, y1), span(x0, x1)

    def head_window(self, cx, cy, radius) -> tuple[slice, slice]:
        """Window around a head-frame point (cx, cy) [N,1,1] with a bounding radius."""
        ix = self.p["hx"] + self.cos * cx - self.sin * cy
        iy = self.p["hy"] + self.sin * cx + self.cos * cy
        return self._slices(ix - radius, ix + radius, iy - radius, iy + radius)

    def image_window(self, x0, x1, y0, y1) -> tuple[slice, slice]:
        """Window around image-frame boxes [N,1,1]."""
        return self._slices(x0, x1, y0, y1)

    def image_xy(self, win: tuple[slice, slice]) -> tuple[np.ndarray, np.ndarray]:
        rows, cols = win
        return self.u[:, :, cols], self.v[:, rows, :]

    def head_xy(self, win: tuple[slice, slice]) -> tuple[np.ndarray, np.ndarray]:
        rows, cols = win
        return self.X[:, rows, cols], self.Y[:, rows, cols]

    def coverage(self, sd: np.ndarray) -> np.ndarray:
        """Pixel coverage in [0, 1] from a signed distance (one-subpixel soft edge)."""
        return np.clip(0.5 - sd * self.inv_px, 0.0, 1.0)

    # -------------------------------------------------------------- painting
    def any(self, flag: np.ndarray) -> bool:
        """Whether any face of the batch draws a part (skipping it is exact otherwise)."""
        return bool(np.any(flag > 0))

    def paint(self, win, sd, colour, name: str | None = None, opacity=None) -> None:
        """Composites `colour` over the window where `sd` < 0.

        Args:
          win: (rows, cols) slices of the canvas.
          sd: signed distance [N, h, w] on that window.
          colour: [N, 1, 1, 3] or [N, h, w, 3].
          name: the mask this part adds to (visible coverage), if any.
          opacity: optional per-image or per-pixel factor (0 means not drawn).
        """
        alpha = self.coverage(sd)  # [N, h, w]
        if opacity is not None:
            alpha = alpha * opacity
        rows, cols = win
        colour = np.asarray(colour, np.float32)
        for ch in range(3):
            view = self.rgb[ch, :, rows, cols]  # [N, h, w]
            view += alpha * (colour[..., ch] - view)
        if self.masks is not None:
            for mask in self.masks.values():
                mask[:, rows, cols] *= 1.0 - alpha
            if name is not None:
                self.masks[name][:, rows, cols] += alpha


def _pick(flag: np.ndarray, on: float, off: float) -> np.ndarray:
    """`on` where a 0/1 flag [N,1,1] is set, else `off` (float32)."""
    return (off + (on - off) * flag).astype(np.float32)


def _col(params: dict[str, np.ndarray], name: str) -> np.ndarray:
    return params[name][:, None, None, :]  # [N, 1, 1, 3]


# ------------------------------------------------------------------ the drawing program
# Each step paints every face of the batch; a part a face does not have is painted
# with opacity 0 (an exact no-op), and skipped when no face of the batch has it.
def _draw_background_and_body(c: _Canvas) -> None:
    p = c.p
    t = (c.v + 1.0) * 0.5  # [1, H, 1]
    top, bottom = _col(p, "bg_top"), _col(p, "bg_bottom")  # [N, 1, 1, 3]
    for ch in range(3):
        c.rgb[ch] = top[..., ch] + (bottom[..., ch] - top[..., ch]) * t
    # Shoulders: image frame, below the head; they do not tilt.
    by = p["hy"] + p["b"] + 0.7
    win = c.image_window(p["hx"] - 1.2, p["hx"] + 1.2, by - 0.6, by + 0.6)
    x, y = c.image_xy(win)
    c.paint(win, _blob(x, y, p["hx"] * 0.6, by, p["body_w"], 0.58), _col(p, "clothes"))
    # Neck, with a rounded bottom that reads as the neckline.
    a, b = p["a"], p["b"]
    neck_w, neck_bottom = a * _pick(p["male"], 0.5, 0.42), b + 0.22
    win = c.head_window(0.0, (0.5 * b + neck_bottom) * 0.5, np.float32(0.5))
    x, y = c.head_xy(win)
    sd = np.minimum(
        np.maximum(np.maximum(np.abs(x) - neck_w, 0.5 * b - y), y - neck_bottom),
        _ellipse(x, y, 0.0, neck_bottom, neck_w, np.float32(0.12)),
    )
    c.paint(win, sd, _col(p, "skin") * 0.8)
    if c.any(p["necktie"]):
        # Necktie: a knot and a long kite below the neckline.
        tie_top = neck_bottom + 0.06
        win = c.head_window(0.0, tie_top + 0.3, np.float32(0.4))
        x, y = c.head_xy(win)
        knot = _box(x, y, 0.0, tie_top, 0.05, 0.05, 0.02)
        blade = np.maximum(np.abs(x) * 3.2 + np.abs(y - tie_top - 0.28) - 0.3, y - tie_top - 0.55)
        c.paint(win, np.minimum(knot, blade), _col(p, "tie_col"), "necktie", p["necktie"])


def _long_hair_sd(x, y, p) -> np.ndarray:
    """Signed distance to the mass of long hair around and below the head."""
    a, b = p["a"], p["b"]
    return np.maximum(_blob(x, y, 0.0, 0.2 * b, a * 1.35, b * 1.3), y - b * p["hair_length"])


def _draw_back_hair(c: _Canvas) -> None:
    p = c.p
    if not c.any(p["long_hair"]):
        return
    win = c.head_window(0.0, 0.2 * p["b"], np.maximum(p["a"] * 1.4, p["b"] * 1.35))
    x, y = c.head_xy(win)
    c.paint(win, _long_hair_sd(x, y, p), _col(p, "hair") * 0.72, "hair", p["long_hair"])


def _face_sd(x, y, p, grow_x: float, grow_y: float) -> tuple[np.ndarray, np.ndarray]:
    """Signed distance to the (grown) egg-shaped face and its normalised radius."""
    a, b = p["a"] * grow_x, p["b"] * grow_y
    below = np.clip(y / b, 0.0, 1.0)
    half_w = a * (1.0 - p["taper"] * below * below)
    px, py = x / half_w, y / b
    k = np.sqrt(px * px + py * py)
    return (k - 1.0) * np.minimum(half_w, b), k


def _draw_head(c: _Canvas) -> None:
    p = c.p
    a, b, skin = p["a"], p["b"], _col(p, "skin")
    short = 1.0 - p["long_hair"]
    if c.any(short):
        # Ears; long hair hides them.
        for side in (-1.0, 1.0):
            win = c.head_window(side * a * 0.97, 0.05 * b, b * 0.22)
            x, y = c.head_xy(win)
            ear = _blob(x, y, side * a * 0.97, 0.05 * b, a * 0.14, b * 0.2)
            c.paint(win, ear, skin * 0.9, "face", short)
            inner = _ellipse(x, y, side * a * 0.99, 0.06 * b, a * 0.06, b * 0.11)
            c.paint(win, inner, skin * 0.72, "face", short)
    # Face: an egg (narrower at the chin), shaded darker toward its rim.
    win = c.head_window(0.0, 0.0, np.maximum(a, b) * 1.02)
    x, y = c.head_xy(win)
    sd, k = _face_sd(x, y, p, 1.0, 1.0)
    shade = 1.0 - 0.16 * np.minimum(k, 1.0) ** 4
    c.paint(win, sd, skin * shade[..., None], "face")
    if c.any(p["rosy"]):
        # Rosy cheeks: soft pink patches.
        for side in (-1.0, 1.0):
            cx, cy = p["turn"] + side * a * 0.55, 0.33 * b
            win = c.head_window(cx, cy, a * 0.19)
            x, y = c.head_xy(win)
            cheek = _blob(x, y, cx, cy, a * 0.17, b * 0.1)
            c.paint(win, cheek, (0.93, 0.36, 0.42), "cheeks", p["rosy"] * 0.55)


def _draw_facial_hair(c: _Canvas) -> None:
    p = c.p
    a, b, turn, col = p["a"], p["b"], p["turn"], _col(p, "beard_col") * 0.92
    if c.any(p["full_beard"]):
        # Full beard: the jaw below a line rising from the mustache to the sideburns.
        win = c.head_window(0.0, 0.5 * b, np.maximum(a * 1.05, b * 0.6))
        x, y = c.head_xy(win)
        top = 0.42 * b - 0.42 * b * ((x - turn) / a) ** 2
        beard = np.maximum(_face_sd(x, y, p, 1.03, 1.05)[0], top - y)
        c.paint(win, beard, col, "beard", p["full_beard"])
    if c.any(p["goatee"]):
        # Goatee: a patch on the chin under the mouth.
        cy = p["mouth_y"] * b + 0.3 * b
        win = c.head_window(turn, cy, b * 0.3)
        x, y = c.head_xy(win)
        goatee = np.maximum(_blob(x, y, turn, cy, a * 0.22, b * 0.24), cy - 0.2 * b - y)
        goatee = np.maximum(goatee, _face_sd(x, y, p, 1.0, 1.07)[0])
        c.paint(win, goatee, col, "goatee", p["goatee"])


def _draw_nose(c: _Canvas) -> None:
    p = c.p
    a, b, turn, skin = p["a"], p["b"], p["turn"], _col(p, "skin")
    win = c.head_window(turn, 0.2 * b, b * 0.22)
    x, y = c.head_xy(win)
    bridge = _ellipse(x, y, turn + 0.05 * a, 0.12 * b, 0.03 * a, 0.17 * b)
    c.paint(win, bridge, skin * 0.8, "nose", 0.45)
    tip = _ellipse(x, y, turn, 0.31 * b, 0.12 * a, 0.065 * b)
    c.paint(win, tip, skin * 0.78, "nose", 0.6)
    for side in (-1.0, 1.0):
        nostril = _ellipse(x, y, turn + side * 0.06 * a, 0.33 * b, 0.035 * a, 0.025 * b)
        c.paint(win, nostril, skin * 0.45, "nose", 0.8)


def _draw_mouth(c: _Canvas) -> None:
    p = c.p
    a, b, turn = p["a"], p["b"], p["turn"]
    my, w, lip = p["mouth_y"] * b, p["mouth_w"] * a, _col(p, "lip_col")
    smile, open_ = p["smiling"], p["mouth_open"]
    if c.any(p["mustache"]):
        # Mustache first, so that the upper lip sits on top of it.
        win = c.head_window(turn, my - 0.1 * b, a * 0.36)
        x, y = c.head_xy(win)
        stache = np.maximum(
            _ellipse(x, y, turn, my - 0.1 * b, a * 0.34, b * 0.1),
            -_ellipse(x, y, turn, my + 0.04 * b, a * 0.3, b * 0.1),
        )
        c.paint(win, stache, _col(p, "beard_col") * 0.85, "mustache", p["mustache"])

    depth = p["smile_depth"] * b
    win = c.head_window(turn, my + 0.05 * b, np.maximum(w * 1.1, depth * 1.2))
    x, y = c.head_xy(win)
    top = my - 0.05 * b
    laugh = smile * open_
    if c.any(laugh):
        # Open smile: a 'D' whose upper edge curves up toward the corners, teeth on top.
        upper = top + 0.08 * b * (1.0 - ((x - turn) / w) ** 2)
        d_shape = np.maximum(_ellipse(x, y, turn, top, w, depth), upper - y)
        c.paint(win, d_shape - 0.035 * b, lip, "mouth", laugh)
        c.paint(win, d_shape, _MOUTH_DARK, "mouth_interior", laugh)
        teeth = np.maximum(d_shape, y - (upper + 0.38 * depth))
        c.paint(win, teeth, _TEETH, "mouth_interior", laugh)
    grin = smile * (1.0 - open_)
    if c.any(grin):
        # Closed smile: a crescent, thick in the middle and pointed at the corners.
        crescent = np.maximum(
            np.maximum(_ellipse(x, y, turn, top, w, depth * 0.85), top - y),
            -_ellipse(x, y, turn, top - 0.5 * depth, w * 1.08, depth * 0.92),
        )
        c.paint(win, crescent, lip * 0.7, "mouth", grin)
    closed = (1.0 - smile) * (1.0 - open_)
    if c.any(closed):
        # Neutral closed: straight lips with a dark line between them.
        c.paint(win, _ellipse(x, y, turn, my, w, 0.05 * b), lip, "mouth", closed)
        c.paint(win, _ellipse(x, y, turn, my, w * 0.95, 0.012 * b), lip * 0.5, "mouth", closed)
    ajar = (1.0 - smile) * open_
    if c.any(ajar):
        # Neutral open: an 'o' of dark inside the lips.
        c.paint(win, _ellipse(x, y, turn, my, w * 0.75, 0.12 * b), lip, "mouth", ajar)
        inside = _ellipse(x, y, turn, my, w * 0.5, 0.075 * b)
        c.paint(win, inside, _MOUTH_DARK, "mouth_interior", ajar)


def _draw_eyes(c: _Canvas) -> None:
    p = c.p
    a, b, turn = p["a"], p["b"], p["turn"]
    ey, rx, ry = p["eye_y"] * b, p["eye_rx"] * a, p["eye_ry"] * b
    iris_r = np.minimum(0.65 * rx, 0.11 * b)
    liner = _pick(p["male"], 0.012, 0.02) * b
    brow_t = _pick(p["bushy"], 0.055, 0.03) * b
    arch = _pick(p["arched"], 0.1, 0.03) * b
    for side in (-1.0, 1.0):
        ex = turn + side * p["eye_spacing"] * a
        win = c.head_window(ex, ey - 0.1 * b, np.maximum(rx * 1.2, 0.22 * b))
        x, y = c.head_xy(win)
        sclera = _ellipse(x, y, ex, ey, rx, ry)
        c.paint(win, sclera, _SCLERA, "eyes")
        gx = ex + p["gaze"] * rx * 0.4
        iris = np.maximum(_blob(x, y, gx, ey, iris_r, iris_r), sclera)
        c.paint(win, iris, _col(p, "iris"), "eyes")
        pupil = np.maximum(_blob(x, y, gx, ey, iris_r * 0.5, iris_r * 0.5), sclera)
        c.paint(win, pupil, (0.03, 0.03, 0.04), "eyes")
        glint = _blob(x, y, gx - iris_r * 0.35, ey - iris_r * 0.35, iris_r * 0.25, iris_r * 0.25)
        c.paint(win, glint, (1.0, 1.0, 1.0), "eyes", 0.8)
        # Upper lid line: the top half of the sclera's outline.
        lid = np.maximum(np.abs(sclera) - liner, y - ey)
        c.paint(win, lid, (0.12, 0.07, 0.06), "eyes")
        # Eyebrow: a tapered band along a parabola, higher in the middle when arched.
        q = (x - ex) / (rx * 1.15)
        centre = ey - p["brow_gap"] * b + arch * q * q - side * 0.015 * b * q
        thickness = brow_t * (1.0 - 0.45 * q * q)
        brow = np.maximum(np.abs(x - ex) - rx * 1.15, np.abs(y - centre) - thickness)
        c.paint(win, brow, _col(p, "brow_col"), "eyebrows")


def _draw_front_hair(c: _Canvas) -> None:
    p = c.p
    a, b, vol = p["a"], p["b"], p["hair_volume"]
    has_hair = 1.0 - p["bald"]
    if not c.any(has_hair):
        return
    hair = _col(p, "hair")
    win = c.head_window(0.0, -0.45 * b, np.maximum(a * 1.2, b * 0.75) + vol)
    x, y = c.head_xy(win)
    # Cap: a slightly larger head above a hairline that drops toward the temples.
    shell = _blob(x, y, 0.0, -0.04 * b, a * 1.07 + vol, b * 1.02 + vol)
    hairline = p["hairline"] * b + 0.5 * b * (x / a) ** 2 + p["hair_part"] * (x - p["turn"]) * 0.4
    cap = np.maximum(shell, y - hairline)
    c.paint(win, cap, hair, "hair", has_hair)
    # Sheen: a lighter arc across the crown, inside the cap, so the hair reads as a volume.
    arc = _blob(x, y, 0.0, -0.1 * b, a * 0.8, b * 0.75)
    sheen = np.maximum(np.abs(arc) - 0.03, cap + 0.05)
    c.paint(win, sheen, hair * 0.7 + 0.3, "hair", has_hair * 0.35)
    if c.any(p["bangs"]):
        # Bangs: a fringe over the forehead whose lower edge is scalloped into strands.
        period = a * 0.24
        frac = np.mod((x - p["bangs_phase"] * period) / period, 1.0)
        edge = -0.3 * b + 0.07 * b * (2.0 * frac - 1.0) ** 2
        shell = _blob(x, y, 0.0, -0.1 * b, a * 1.03 + vol, b * 0.98 + vol)
        c.paint(win, np.maximum(shell, y - edge), hair * 0.96, "bangs", p["bangs"])
    if c.any(p["long_hair"]):
        # Long hair also frames the face: locks over the ears and the cheek edges.
        win = c.head_window(0.0, 0.2 * b, np.maximum(a * 1.4, b * 1.35))
        x, y = c.head_xy(win)
        inner = _blob(x, y, p["turn"] * 0.5, 0.2 * b, a * 0.84, b * 1.25)
        locks = np.maximum(
            np.maximum(_long_hair_sd(x, y, p), y - b * p["hair_length"] * 0.92), -inner
        )
        c.paint(win, locks, hair * 0.92, "hair", p["long_hair"])


def _draw_hat(c: _Canvas) -> None:
    p = c.p
    if not c.any(p["hat"]):
        return
    a, b, col = p["a"], p["b"], _col(p, "hat_col")
    brim_y = -0.45 * b
    win = c.head_window(0.0, -0.9 * b, np.maximum(a * 1.65, b * 0.95))
    x, y = c.head_xy(win)
    beanie, brimmed = p["hat"] * (1.0 - p["hat_brim"]), p["hat"] * p["hat_brim"]
    # Beanie: a dome down to the brow line with a folded band.
    dome = np.maximum(_blob(x, y, 0.0, brim_y, a * 1.16, b * 0.7), y - brim_y)
    c.paint(win, dome, col, "hat", beanie)
    band = _box(x, y, 0.0, brim_y - 0.07 * b, a * 1.17, 0.09 * b, 0.03 * b)
    c.paint(win, band, col * 0.75, "hat", beanie)
    # Brimmed hat: a rounded crown, a ribbon and a wide flat brim.
    crown = _box(x, y, 0.0, brim_y - 0.45 * b, a * 0.98, 0.45 * b, 0.12 * b)
    c.paint(win, crown, col, "hat", brimmed)
    ribbon = _box(x, y, 0.0, brim_y - 0.12 * b, a * 0.98, 0.07 * b, 0.0)
    c.paint(win, ribbon, col * 0.55, "hat", brimmed)
    ledge = _ellipse(x, y, 0.0, brim_y, a * 1.6, b * 0.09)
    c.paint(win, ledge, col * 0.85, "hat", brimmed)


def _draw_glasses(c: _Canvas) -> None:
    p = c.p
    on = p["glasses"]
    if not c.any(on):
        return
    a, b, turn = p["a"], p["b"], p["turn"]
    ey = p["eye_y"] * b + 0.01 * b
    half_w, half_h = 0.29 * a, 0.17 * b
    rim_t = 0.07  # thick dark rims: ~1.1 px at 32x32, ~2.2 px at 64x64
    lens_col = _pick(p["sunglasses"], 0.08, 0.85)[..., None] * np.ones(3, np.float32)
    lens_opacity = _pick(p["sunglasses"], 0.92, 0.18)
    corner = half_h * (0.45 + 0.55 * p["round_glasses"])
    left, right = (turn + side * p["eye_spacing"] * a for side in (-1.0, 1.0))
    win = c.head_window(turn, ey, a * 1.05)
    x, y = c.head_xy(win)
    lenses = np.minimum(
        _box(x, y, left, ey, half_w, half_h, corner), _box(x, y, right, ey, half_w, half_h, corner)
    )
    c.paint(win, lenses, lens_col, "eyeglasses", on * lens_opacity)
    rims = np.abs(lenses) - rim_t * 0.5
    gap_l, gap_r = left + half_w, right - half_w
    bridge_y = ey - 0.2 * half_h
    bridge = _box(
        x, y, (gap_l + gap_r) * 0.5, bridge_y, (gap_r - gap_l) * 0.5 + 0.01, rim_t * 0.4, 0.0
    )
    # Temple arms from the outer rims back to the edges of the face.
    arm_y, arm_t = ey - 0.5 * half_h, rim_t * 0.35
    out_l, out_r = left - half_w, right + half_w
    arms = np.minimum(
        _box(x, y, (out_l - a) * 0.5, arm_y, (out_l + a) * 0.5, arm_t, 0.0),
        _box(x, y, (out_r + a) * 0.5, arm_y, (a - out_r) * 0.5, arm_t, 0.0),
    )
    c.paint(win, np.minimum(np.minimum(rims, bridge), arms), _col(p, "rim_col"), "eyeglasses", on)


def _downsample(x: np.ndarray, factor: int) -> np.ndarray:
    """Box filter over factor x factor blocks, summed in a fixed order (batch-independent)."""
    total = x[:, 0::factor, 0::factor].copy()
    for i in range(factor):
        for j in range(factor):
            if i or j:
                total += x[:, i::factor, j::factor]
    return total * np.float32(1.0 / (factor * factor))


def _stack(params_list: Sequence[dict[str, float | np.ndarray]]) -> dict[str, np.ndarray]:
    out = {}
    for key, value in params_list[0].items():
        values = np.stack([np.asarray(p[key], np.float32) for p in params_list])
        out[key] = values[:, None, None] if np.ndim(value) == 0 else values  # [N,1,1] / [N,3]
    return out


def _render_batch(
    params_list: Sequence[dict[str, float | np.ndarray]], resolution: int, with_masks: bool
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Renders faces; returns uint8 images [N, R, R, 3] and masks name -> [N, R, R]."""
    canvas = _Canvas(_stack(params_list), resolution, with_masks)
    _draw_background_and_body(canvas)
    _draw_back_hair(canvas)
    _draw_head(canvas)
    _draw_facial_hair(canvas)
    _draw_nose(canvas)
    _draw_mouth(canvas)
    _draw_eyes(canvas)
    _draw_front_hair(canvas)
    _draw_hat(canvas)
    _draw_glasses(canvas)
    factor = _SUPERSAMPLE[resolution]
    rgb = np.stack([_downsample(canvas.rgb[ch], factor) for ch in range(3)], -1)  # [N, R, R, 3]
    images = np.rint(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)
    masks = {k: np.clip(_downsample(m, factor), 0, 1) for k, m in (canvas.masks or {}).items()}
    if masks:
        # The fringe is hair too: its visible share adds to the rest of the hair's.
        masks["hair"] = np.clip(masks["hair"] + masks["bangs"], 0.0, 1.0)
    return images, masks


# ------------------------------------------------------------------ public rendering API
def render_faces(
    seed: int, indices: Sequence[int], resolution: int
) -> tuple[np.ndarray, np.ndarray]:
    """Renders faces `(seed, index)` for each index; an image does not depend on its batch.

    Args:
      seed: non-negative dataset seed.
      indices: non-negative image indices.
      resolution: 32, 64 or 128.

    Returns:
      (images uint8 [N, R, R, 3], attributes bool [N, 40] in CELEBA_ATTRIBUTES order).
    """
    check_resolution(resolution)
    params = [sample_face_params(seed, i) for i in indices]
    attrs = np.array([list(face_attributes(p).values()) for p in params], bool).reshape(
        len(params), len(CELEBA_ATTRIBUTES)
    )  # [N, 40], dicts keep CelebA order
    chunk = max(1, _SUBPIXELS_PER_BATCH // (resolution * _SUPERSAMPLE[resolution]) ** 2)
    images = np.zeros((len(params), resolution, resolution, 3), np.uint8)
    for start in range(0, len(params), chunk):
        images[start : start + chunk] = _render_batch(
            params[start : start + chunk], resolution, False
        )[0]
    return images, attrs


def render_face_layers(
    seed: int, index: int, resolution: int
) -> tuple[np.ndarray, dict[str, bool], dict[str, np.ndarray]]:
    """Renders one face plus the visible coverage of each drawn part.

    Args:
      seed: non-negative dataset seed.
      index: non-negative image index.
      resolution: 32, 64 or 128.

    Returns:
      (image uint8 [R, R, 3], attributes, masks): `masks` maps a part name
      ('face', 'hair', 'bangs', 'hat', 'eyeglasses', 'beard', 'goatee',
      'mustache', 'mouth', 'mouth_interior', 'eyes', 'eyebrows', 'nose',
      'cheeks', 'necktie') to float32 [R, R] coverage in [0, 1] of what stays
      visible after everything drawn later (0 where the part is not drawn).
    """
    check_resolution(resolution)
    params = sample_face_params(seed, index)
    images, masks = _render_batch([params], resolution, True)
    return images[0], face_attributes(params), {k: m[0] for k, m in masks.items()}
