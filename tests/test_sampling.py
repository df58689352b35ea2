"""Seeded sampling: the same seed gives the same image whatever the batch size."""

from __future__ import annotations

import numpy as np
import pytest

from facegan_jax import components, sampling
from tests.helpers import tiny_config


def test_latents_depend_only_on_seed_and_index():
    a = sampling.latents(0, np.arange(8), 100)
    b = sampling.latents(0, np.asarray([5, 6, 7]), 100)
    np.testing.assert_array_equal(np.asarray(a[5:]), np.asarray(b))
    c = sampling.latents(1, np.arange(8), 100)
    assert not np.allclose(np.asarray(a), np.asarray(c))


def test_seeded_images_identical_across_batch_sizes():
    config = tiny_config()
    run = components.build(config)
    g, state = run.generator, run.create_state()
    variables = {"params": state.ema_params, **state.ema_vars}
    generate = sampling.make_generate_fn(g, config, seed=0)
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


def test_parse_seeds():
    assert sampling.parse_seeds("0-3,10") == [0, 1, 2, 3, 10]
    assert sampling.parse_seeds("7") == [7]
    for bad in ("", "3-1", "a-b", "-2"):
        with pytest.raises(ValueError, match="--seeds"):
            sampling.parse_seeds(bad)


def test_grid_layout():
    images = np.stack([np.full((4, 4, 3), i, np.uint8) for i in range(5)])
    grid = sampling.make_grid(images, ncols=3, pad=1)
    assert grid.shape == (2 * 5 + 1, 3 * 5 + 1, 3)
    assert grid[1, 1, 0] == 0 and grid[1, 6, 0] == 1 and grid[6, 1, 0] == 3
    assert grid[0, 0, 0] == 128  # padding


def test_conditional_generate_defaults_to_pool_attributes():
    from configs import acgan64

    config = acgan64.get_config("runlocal")
    run = components.build(config)
    g, state = run.generator, run.create_state()
    variables = {"params": state.ema_params, **state.ema_vars}
    pool = np.eye(40, dtype=np.float32)[:5]  # 5 distinct one-hot attribute vectors
    indices = np.arange(6)
    with_pool = sampling.make_generate_fn(g, config, seed=3, pool=pool)
    explicit = sampling.make_generate_fn(g, config, seed=3)
    chosen = np.asarray(sampling.pool_attributes(3, indices, pool))
    assert {tuple(row) for row in chosen} <= {tuple(row) for row in pool}
    np.testing.assert_array_equal(
        np.asarray(with_pool(variables, indices)), np.asarray(explicit(variables, indices, chosen))
    )
    zeros = np.asarray(explicit(variables, indices))  # no pool: all-zero attributes
    assert not np.array_equal(zeros, np.asarray(with_pool(variables, indices)))
