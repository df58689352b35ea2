"""Seeded sampling: the same seed gives the same image whatever the batch size; truncation,
interpolation, attribute values, the batched (metrics) path and animations."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from PIL import Image

from configs import acgan64
from facegan_jax.data.celeba_attributes import CELEBA_ATTRIBUTES, attribute_index
from facegan_jax.generation import sampling
from facegan_jax.training import components
from tests.helpers import tiny_config


@functools.cache
def _dcgan():
    """(generate, variables) of the tiny DCGAN at initialisation (shared by the tests)."""
    config = tiny_config()
    run = components.build(config)
    state = run.create_state()
    variables = {"params": state.ema_params, **state.ema_vars}
    return sampling.make_generate_fn(run.generator, config, seed=0), variables, config, run


@functools.cache
def _acgan():
    config = acgan64.get_config("runlocal")
    run = components.build(config)
    state = run.create_state()
    variables = {"params": state.ema_params, **state.ema_vars}
    return run.generator, variables, config


def test_latents_depend_only_on_seed_and_index():
    a = sampling.latents(0, np.arange(8), 100)
    b = sampling.latents(0, np.asarray([5, 6, 7]), 100)
    np.testing.assert_array_equal(np.asarray(a[5:]), np.asarray(b))
    c = sampling.latents(1, np.arange(8), 100)
    assert not np.allclose(np.asarray(a), np.asarray(c))


def test_seeded_images_identical_across_batch_sizes():
    generate, variables, _, _ = _dcgan()
    seeds = list(range(10, 17))
    by_batch = {
        bs: sampling.generate_in_batches(generate, variables, seeds, bs) for bs in (1, 3, 8)
    }
    for bs in (3, 8):
        np.testing.assert_array_equal(by_batch[1], by_batch[bs])
        np.testing.assert_array_equal(
            sampling.to_uint8(by_batch[1]), sampling.to_uint8(by_batch[bs])
        )
    assert by_batch[1].shape == (7, 32, 32, 3)
    assert not np.array_equal(by_batch[1][0], by_batch[1][1])
    # The latent path (what truncation, walks and edits use) gives the same bits.
    z = np.asarray(generate.latents(np.asarray(seeds)))
    np.testing.assert_array_equal(
        sampling.generate_latents_in_batches(generate, variables, z, 4), by_batch[1]
    )


def test_batched_path_matches_the_deterministic_one_up_to_float_noise():
    generate, variables, config, run = _dcgan()
    fast = sampling.make_batched_generate_fn(run.generator, config, seed=0)
    assert fast.batched and not generate.batched
    seeds = np.arange(9)
    exact = sampling.generate_in_batches(generate, variables, seeds, 9)
    for bs in (4, 9):
        got = sampling.generate_in_batches(fast, variables, seeds, bs)
        np.testing.assert_allclose(got, exact, atol=1e-5)
    assert generate.as_batched().batched and fast.as_batched(False).z_dim == generate.z_dim


def test_parse_seeds():
    assert sampling.parse_seeds("0-3,10") == [0, 1, 2, 3, 10]
    assert sampling.parse_seeds("7") == [7]
    seeds = sampling.parse_seeds("0-63,100,200-210")
    assert len(seeds) == 64 + 1 + 11 and seeds[64] == 100 and seeds[-1] == 210
    for bad in ("", "3-1", "a-b", "-2", ",", "0-3,x", "1-2-3"):
        with pytest.raises(ValueError, match="--seeds"):
            sampling.parse_seeds(bad)


@pytest.mark.parametrize(
    "spec, part", [("0-63,a-b,5", "'a-b'"), ("0-3,9-4", "'9-4' ends before"), ("1,-2", "'-2'")]
)
def test_bad_seed_errors_name_the_bad_part(spec, part):
    with pytest.raises(ValueError, match=part):
        sampling.parse_seeds(spec)
    with pytest.raises(ValueError, match="past the largest seed"):
        sampling.parse_seeds(f"0-{2**32}")


def test_grid_layout():
    images = np.stack([np.full((4, 4, 3), i, np.uint8) for i in range(5)])
    grid = sampling.make_grid(images, ncols=3, pad=1)
    assert grid.shape == (2 * 5 + 1, 3 * 5 + 1, 3)
    assert grid[1, 1, 0] == 0 and grid[1, 6, 0] == 1 and grid[6, 1, 0] == 3
    assert grid[0, 0, 0] == 128  # padding


def test_conditional_generate_defaults_to_pool_attributes():
    generator, variables, config = _acgan()
    pool = np.eye(40, dtype=np.float32)[:5]  # 5 distinct one-hot attribute vectors
    indices = np.arange(6)
    with_pool = sampling.make_generate_fn(generator, config, seed=3, pool=pool)
    explicit = sampling.make_generate_fn(generator, config, seed=3)
    chosen = np.asarray(sampling.pool_attributes(3, indices, pool))
    assert {tuple(row) for row in chosen} <= {tuple(row) for row in pool}
    np.testing.assert_array_equal(np.asarray(with_pool.attributes(indices)), chosen)
    pooled = np.asarray(with_pool.jitted(variables, indices))
    np.testing.assert_array_equal(pooled, np.asarray(explicit.jitted(variables, indices, chosen)))
    zeros = np.asarray(explicit.jitted(variables, indices))  # no pool: all-zero attributes
    assert not np.array_equal(zeros, pooled)


def test_truncation_zero_gives_the_mean_latent_image_for_every_seed():
    generate, variables, _, _ = _dcgan()
    z = np.asarray(generate.latents(np.arange(5)))
    np.testing.assert_array_equal(np.asarray(sampling.truncate(z, 1.0)), z)
    np.testing.assert_allclose(np.asarray(sampling.truncate(z, 0.5)), 0.5 * z)
    images = sampling.generate_latents_in_batches(generate, variables, sampling.truncate(z, 0.0), 5)
    for img in images[1:]:
        np.testing.assert_array_equal(img, images[0])
    plain = sampling.generate_latents_in_batches(generate, variables, z, 5)
    assert not np.array_equal(plain[0], images[0])
    with pytest.raises(ValueError, match="--truncation"):
        sampling.truncate(z, float("nan"))


def test_truncation_zero_is_one_image_per_condition():
    generator, variables, config = _acgan()
    generate = sampling.make_generate_fn(generator, config, seed=0)
    z0 = np.zeros((4, config.model.z_dim), np.float32)  # truncate(z, 0) for 4 seeds
    z = np.asarray(sampling.truncate(generate.latents(np.arange(4)), 0.0))
    np.testing.assert_array_equal(z, z0)
    a, b = np.zeros(40, np.float32), np.zeros(40, np.float32)
    a[attribute_index("Smiling")] = 1.0
    b[attribute_index("Eyeglasses")] = 1.0
    attrs = np.stack([a, a, b, b])  # two seeds per condition
    images = sampling.generate_latents_in_batches(generate, variables, z, 4, attrs)
    np.testing.assert_array_equal(images[0], images[1])
    np.testing.assert_array_equal(images[2], images[3])
    assert not np.array_equal(images[0], images[2])


def test_interpolation_hits_every_keyframe_exactly():
    segment, t = sampling.interpolation_schedule(3, 8)
    assert segment.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert t[0] == 0 and t[4] == 0 and t[-1] == 1  # keyframes on frames 0, 4 (rounded), 7
    keys = np.asarray(sampling.latents(0, np.array([3, 17, 42]), 16))
    for spherical in (True, False):
        z, attrs = sampling.interpolate(keys, 8, spherical, attributes=np.eye(3, 40))
        assert z.shape == (8, 16) and attrs.shape == (8, 40)
        for frame, k in ((0, 0), (4, 1), (7, 2)):
            np.testing.assert_array_equal(z[frame], keys[k])
            np.testing.assert_array_equal(attrs[frame], np.eye(3, 40)[k])
        assert np.all(attrs[1:4, 0] < 1) and np.all(attrs[1:4, 1] > 0)
    # slerp keeps the in-between latents near the keyframes' norm; lerp shrinks them.
    mid_s = np.linalg.norm(np.asarray(sampling.slerp(keys[0], keys[1], 0.5)))
    mid_l = np.linalg.norm(np.asarray(sampling.lerp(keys[0], keys[1], 0.5)))
    norms = np.linalg.norm(keys[:2], axis=1)
    assert mid_s > mid_l and mid_s == pytest.approx(norms.mean(), rel=0.1)
    with pytest.raises(ValueError, match="--frames"):
        sampling.interpolation_schedule(3, 2)
    with pytest.raises(ValueError, match="at least 2"):
        sampling.interpolation_schedule(1, 10)


def test_attribute_values_parse_on_top_of_vectors_and_name_close_matches():
    smiling, glasses = attribute_index("Smiling"), attribute_index("Eyeglasses")
    assert sampling.parse_attribute_values("Smiling=1, Eyeglasses=0") == {smiling: 1, glasses: 0}
    assert sampling.parse_attribute_values("Smiling,eyeglasses") == {smiling: 1, glasses: 1}
    base = np.full((2, 40), 0.5, np.float32)
    out = sampling.apply_attribute_values(base, {smiling: 1.0, glasses: 0.0})
    assert np.all(out[:, smiling] == 1) and np.all(out[:, glasses] == 0)
    assert np.all(np.delete(out, [smiling, glasses], axis=1) == 0.5) and np.all(base == 0.5)
    with pytest.raises(ValueError, match="did you mean Eyeglasses"):
        sampling.parse_attribute_values("Smiling=1,Eyeglases=0")
    with pytest.raises(ValueError, match="valid names: 5_o_Clock_Shadow"):
        sampling.parse_attribute_values("Qwxz=1")
    with pytest.raises(ValueError, match="'Smiling=2'"):
        sampling.parse_attribute_values("Smiling=2")


def test_animations_gif_with_imageio_or_pillow_and_mp4_needs_ffmpeg(tmp_path, monkeypatch):
    frames = np.stack([np.full((8, 8, 3), 40 * i, np.uint8) for i in range(5)])
    sampling.save_animation(frames, str(tmp_path / "a.gif"), fps=10)
    real_has = sampling._has_module
    monkeypatch.setattr(sampling, "_has_module", lambda name: name != "imageio" and real_has(name))
    sampling.save_animation(frames, str(tmp_path / "b.gif"), fps=10)
    for name in ("a.gif", "b.gif"):
        with Image.open(tmp_path / name) as gif:
            assert gif.n_frames == 5 and gif.info["duration"] == 100 and gif.info["loop"] == 0
            gif.seek(4)
            assert np.asarray(gif.convert("RGB"))[0, 0, 0] == 160
    monkeypatch.setattr(sampling, "_has_module", lambda name: name != "imageio_ffmpeg")
    with pytest.raises(ValueError, match="needs imageio-ffmpeg; pip install imageio-ffmpeg"):
        sampling.save_animation(frames, str(tmp_path / "c.mp4"))
    with pytest.raises(ValueError, match=".gif or .mp4"):
        sampling.check_animation_path(str(tmp_path / "c.avi"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gif", "b.gif"]


def test_mp4_walk_has_the_frames_and_fps_asked_for(tmp_path):
    # imageio-ffmpeg is in the test extra (setup.cfg), so this runs in CI.
    import imageio.v2 as imageio

    frames = np.stack([np.full((16, 16, 3), 50 * i, np.uint8) for i in range(4)])
    sampling.save_animation(frames, str(tmp_path / "walk.mp4"), fps=5)
    with imageio.get_reader(str(tmp_path / "walk.mp4")) as reader:
        got = np.stack([frame for frame in reader])  # not list(): its len() is inf
        assert got.shape == (4, 16, 16, 3) and reader.get_meta_data()["fps"] == 5
    np.testing.assert_allclose(got.mean(axis=(1, 2, 3)), [0, 50, 100, 150], atol=4)


def test_consistent_attributes_resolve_what_contradicts_the_asked_entries():
    male, lipstick, beard, smiling = (
        CELEBA_ATTRIBUTES.index(n) for n in ("Male", "Wearing_Lipstick", "No_Beard", "Smiling")
    )
    pool = np.zeros((100, 40), np.float32)
    pool[:50, male] = 1  # men: no lipstick, half bearded
    pool[50:, lipstick] = 1  # women: lipstick, never a beard
    pool[50:, beard] = 1
    pool[:25, beard] = 1
    pool[::2, smiling] = 1
    woman = pool[50:51].copy()
    asked = sampling.apply_attribute_values(woman, {male: 1.0})
    got = sampling.consistent_attributes(asked, [male], pool, 0.02)
    want = asked.copy()
    want[0, lipstick] = 0  # a man is asked for without lipstick; the rest stays
    np.testing.assert_array_equal(got, want)
    # Asked for both, both stay: the user's word wins over the data.
    both = sampling.apply_attribute_values(woman, {male: 1.0, lipstick: 1.0})
    np.testing.assert_array_equal(
        sampling.consistent_attributes(both, [male, lipstick], pool), both
    )
    # A bearded man asked to be a woman loses the beard; rate 0 changes nothing.
    man = sampling.apply_attribute_values(pool[30:31], {male: 0.0})
    assert man[0, beard] == 0 and sampling.consistent_attributes(man, [male], pool)[0, beard] == 1
    np.testing.assert_array_equal(sampling.consistent_attributes(asked, [male], pool, 0.0), asked)
