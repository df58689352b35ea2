"""DCGAN model: output shapes, ranges, widths and the config contract."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from facegan_jax.models import build_models, dcgan
from tests.helpers import tiny_config


@pytest.mark.parametrize("size", [32, 64])
def test_generator_and_discriminator_shapes_and_range(size):
    config = tiny_config(**{"data.image_size": size})
    g, d = build_models(config)
    z = jax.random.normal(jax.random.PRNGKey(0), (3, config.model.z_dim))
    g_vars = g.init(jax.random.PRNGKey(1), z, None, train=False)
    images = g.apply(g_vars, z, None, train=False)
    assert images.shape == (3, size, size, 3)
    assert images.dtype == jnp.float32
    assert float(jnp.max(jnp.abs(images))) <= 1.0
    assert float(jnp.std(images)) > 0  # not a constant output
    d_vars = d.init(jax.random.PRNGKey(2), images, train=False)
    logits, attr_logits = d.apply(d_vars, images, train=False)
    assert logits.shape == (3,) and attr_logits is None


def test_dcgan64_widths_match_the_pytorch_dcgan():
    config = tiny_config(**{"data.image_size": 64, "model.g_dim": 64, "model.d_dim": 64})
    g, d = build_models(config)
    z = jnp.zeros((2, 100))
    g_shapes = jax.eval_shape(lambda: g.init(jax.random.PRNGKey(0), z, None, train=False))
    kernels = [
        v.shape
        for k, v in jax.tree_util.tree_flatten_with_path(g_shapes["params"])[0]
        if "kernel" in jax.tree_util.keystr(k)
    ]
    # nz -> 512 -> 256 -> 128 -> 64 -> 3, all 4x4 kernels (PyTorch DCGAN, ngf = 64).
    assert [s[-1] for s in kernels] == [512, 256, 128, 64, 3]
    assert all(s[:2] == (4, 4) for s in kernels)
    x = jnp.zeros((2, 64, 64, 3))
    d_shapes = jax.eval_shape(lambda: d.init(jax.random.PRNGKey(0), x, train=False))
    n_params = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(d_shapes["params"]))
    assert n_params == 2_763_776 + 1_792  # conv weights + BN scale/bias of the PyTorch netD


def test_bad_image_size_is_a_clear_error():
    with pytest.raises(ValueError, match="config.data.image_size=48"):
        dcgan.num_resolution_steps(48)


def test_unknown_model_name_names_the_field():
    config = tiny_config(**{"model.name": "stylegan9"})
    with pytest.raises(ValueError, match="config.model.name='stylegan9'"):
        build_models(config)


def test_project4x4_is_the_1x1_to_4x4_transposed_conv_with_the_same_parameter():
    import flax.linen as nn

    from facegan_jax.models.dcgan import Project4x4

    z = jax.random.normal(jax.random.PRNGKey(0), (8, 100))
    conv = nn.ConvTranspose(64, (4, 4), padding="VALID", use_bias=False)
    params = conv.init(jax.random.PRNGKey(1), z[:, None, None, :])
    want = conv.apply(params, z[:, None, None, :])
    got = Project4x4(64).apply(params, z)  # the ConvTranspose's own variables load
    assert got.shape == want.shape == (8, 4, 4, 64)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
