"""DiffAugment: each operation changes images in its stated way, is differentiable, '' is identity.

How the train step uses it (real and fake images, G's gradient through it) is
tested with the other step ingredients in test_fast_recipe.py.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from facegan_jax.training import augment, components
from tests.helpers import tiny_config

KEY = jax.random.PRNGKey(7)


@functools.partial(jax.jit, static_argnums=2)
def _augment(key: jax.Array, x: jax.Array, policy: str) -> jax.Array:
    # Jitted: one small compile instead of one per primitive in eager mode.
    return augment.diff_augment(key, x, policy)


def _images(b: int = 16, s: int = 32, seed: int = 0) -> jax.Array:
    # Strictly positive pixels, so the zeros translation and cutout bring in are visible.
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.uniform(0.1, 1.0, (b, s, s, 3)), jnp.float32)


def _shifted(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """out[i, j] = image[i + dy, j + dx], zero outside."""
    s = image.shape[0]
    out = np.zeros_like(image)
    ys, xs = slice(max(0, -dy), min(s, s - dy)), slice(max(0, -dx), min(s, s - dx))
    yi, xi = slice(max(0, dy), min(s, s + dy)), slice(max(0, dx), min(s, s + dx))
    out[ys, xs] = image[yi, xi]
    return out


def test_translation_shifts_each_image_by_at_most_an_eighth_with_zero_fill():
    x = _images()
    out = np.asarray(_augment(KEY, x, "translation"))
    s, limit = x.shape[1], x.shape[1] // 8
    shifts = []
    for image, result in zip(np.asarray(x), out, strict=True):
        found = [
            (dy, dx)
            for dy in range(-limit, limit + 1)
            for dx in range(-limit, limit + 1)
            if np.array_equal(result, _shifted(image, dy, dx))
        ]
        assert len(found) == 1, "each output is exactly one zero-filled shift of its input"
        shifts.append(found[0])
    assert len(set(shifts)) > 4, shifts  # drawn per image
    assert any(dy or dx for dy, dx in shifts)
    assert out.shape == (16, s, s, 3)


def test_cutout_zeroes_one_clipped_half_size_square_and_keeps_the_rest():
    x = _images()
    out = np.asarray(_augment(KEY, x, "cutout"))
    s = x.shape[1]
    centres = set()
    for image, result in zip(np.asarray(x), out, strict=True):
        cut = np.all(result == 0, axis=-1)  # [S, S]
        np.testing.assert_array_equal(result[~cut], image[~cut])  # untouched elsewhere
        rows, cols = np.nonzero(cut.any(axis=1))[0], np.nonzero(cut.any(axis=0))[0]
        assert cut[np.ix_(rows, cols)].all() and cut.sum() == len(rows) * len(cols)  # a box
        # An S/2 square, clipped by the border to no less than a quarter of it.
        assert s // 4 <= len(rows) <= s // 2 and s // 4 <= len(cols) <= s // 2
        assert np.ptp(rows) == len(rows) - 1 and np.ptp(cols) == len(cols) - 1  # contiguous
        centres.add((rows[0], cols[0]))
    assert len(centres) > 4  # drawn per image


def test_color_scales_each_images_chroma_and_shifts_its_level():
    x = _images()
    out = np.asarray(_augment(KEY, x, "color"))
    xn = np.asarray(x)
    chroma_in = xn - xn.mean(axis=-1, keepdims=True)
    chroma_out = out - out.mean(axis=-1, keepdims=True)
    factors = []
    for a, b in zip(chroma_in, chroma_out, strict=True):
        # saturation x contrast: one scalar per image, in [0, 2) x [0.5, 1.5).
        k = float((a * b).sum() / (a * a).sum())
        np.testing.assert_allclose(b, k * a, atol=1e-5)
        assert 0.0 <= k < 3.0
        factors.append(k)
    assert np.std(factors) > 0.05  # drawn per image
    assert not np.allclose(out, xn)


@pytest.mark.parametrize("policy", ["color", "translation", "cutout", "color,translation,cutout"])
def test_augmentation_is_differentiable_with_the_transposed_map_as_gradient(policy):
    # For a fixed key every operation is affine in x: T(x) = A x + T(0). The gradient of
    # <w, T(x)> is A^T w, which must satisfy <A^T w, x> = <w, T(x) - T(0)> and be nonzero.
    x = _images(b=4, s=16, seed=1)
    w = jnp.asarray(np.random.default_rng(2).normal(size=x.shape), jnp.float32)
    grad = jax.jit(jax.grad(lambda v: (w * augment.diff_augment(KEY, v, policy)).sum()))(x)
    assert float(jnp.abs(grad).sum()) > 0
    linear_part = _augment(KEY, x, policy) - _augment(KEY, jnp.zeros_like(x), policy)
    np.testing.assert_allclose(
        float((grad * x).sum()), float((w * linear_part).sum()), rtol=1e-4, atol=1e-3
    )


def test_empty_policy_is_the_identity_and_no_op():
    x = _images(b=2)
    assert augment.diff_augment(KEY, x, "") is x
    assert augment.make_augment("") is None
    assert augment.make_augment(" , ") is None


def test_unknown_or_repeated_operation_is_an_error_naming_the_field():
    with pytest.raises(ValueError, match=r"config\.train\.diffaugment.*'colour'.*known: color"):
        augment.parse_policy("colour,cutout")
    with pytest.raises(ValueError, match="repeats"):
        augment.parse_policy("cutout,cutout")
    config = tiny_config(**{"train.diffaugment": "flip"})
    with pytest.raises(ValueError, match="config.train.diffaugment"):
        components.build(config).train_step_fn()
