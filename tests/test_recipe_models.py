"""The non-DCGAN recipe families (acgan, gan128, hrdcgan) and the recipe configs we own.

Forward passes run the `runlocal` configs (32x32, tiny widths) with jit; full-size
architectures are checked through `jax.eval_shape` (no compute) against the seeds'
parameter counts. Forward tests fill the variables from numpy instead of calling the
initialisers: on XLA:CPU a 4-D `jax.random` draw takes seconds to compile, and these
tests are about the forward maths (the initialisers are tested once, on ACGAN).
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import acgan64, gan128, hrdcgan256, hrdcgan256_gray, improved_dcgan64
from facegan_jax.models import build_models
from tests.conftest import REPO_ROOT

RECIPES = {
    "acgan64": acgan64,
    "gan128": gan128,
    "hrdcgan256_gray": hrdcgan256_gray,
    "hrdcgan256": hrdcgan256,
}
OUR_CONFIGS = [*RECIPES, "improved_dcgan64"]
MUTABLE = ["spectral", "batch_stats"]
BATCH = 8


def _inputs(config, batch: int = BATCH, seed: int = 0):
    rng = np.random.default_rng(seed)
    z = jnp.asarray(rng.standard_normal((batch, config.model.z_dim)), jnp.float32)
    attrs = None
    if config.model.num_attributes:
        attrs = jnp.asarray(rng.integers(0, 2, (batch, 40)), jnp.float32)
    return z, attrs


def _numpy_variables(shapes, seed: int):
    """Variables with the shapes of `shapes`: 1/sqrt(fan_in) kernels, zero biases, unit u."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = jax.tree_util.keystr(path)
        if name.endswith("['kernel']"):
            value = rng.standard_normal(leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
        elif name.endswith("['u']"):
            value = rng.standard_normal(leaf.shape)
            value /= np.linalg.norm(value)
        elif name.endswith(("['scale']", "['var']")):
            value = np.ones(leaf.shape)
        else:
            value = np.zeros(leaf.shape)
        return jnp.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


@functools.cache
def _family(recipe: str):
    """(config, G, D, G vars, D vars, jitted G apply, jitted D apply) of a runlocal recipe."""
    config = RECIPES[recipe].get_config("runlocal")
    g, d = build_models(config)
    z, attrs = _inputs(config)
    g_vars = _numpy_variables(
        jax.eval_shape(lambda: g.init(jax.random.key(0), z, attrs, train=False)), seed=1
    )
    s, c = config.data.image_size, config.data.channels
    images = jax.ShapeDtypeStruct((BATCH, s, s, c), jnp.float32)
    d_vars = _numpy_variables(
        jax.eval_shape(lambda x: d.init(jax.random.key(0), x, train=False), images), seed=2
    )
    g_apply = jax.jit(
        lambda v, z, a, train: g.apply(v, z, a, train=train, mutable=MUTABLE),
        static_argnames="train",
    )
    d_apply = jax.jit(
        lambda v, x, train: d.apply(
            v, x, train=train, mutable=MUTABLE, rngs={"dropout": jax.random.key(3)}
        ),
        static_argnames="train",
    )
    return config, g, d, g_vars, d_vars, g_apply, d_apply


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_runlocal_models_give_contract_shapes_and_ranges(recipe):
    config, _, _, g_vars, d_vars, g_apply, d_apply = _family(recipe)
    z, attrs = _inputs(config)
    images, _ = g_apply(g_vars, z, attrs, train=True)
    s, c = config.data.image_size, config.data.channels
    assert images.shape == (BATCH, s, s, c) and images.dtype == jnp.float32
    assert float(jnp.max(jnp.abs(images))) <= 1.0
    assert float(jnp.std(images)) > 1e-3  # not a constant image
    (logits, attr_logits), _ = d_apply(d_vars, images, train=True)
    assert logits.shape == (BATCH,) and logits.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(logits)))
    if config.model.num_attributes:
        assert attr_logits.shape == (BATCH, 40) and attr_logits.dtype == jnp.float32
    else:
        assert attr_logits is None


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_mixed_precision_keeps_float32_params_and_outputs(recipe):
    config = RECIPES[recipe].get_config("runlocal")
    config.train.mixed_precision = True
    g, d = build_models(config)
    z, attrs = _inputs(config)
    g_shapes = jax.eval_shape(lambda: g.init(jax.random.key(0), z, attrs, train=False))
    images = jax.eval_shape(lambda v: g.apply(v, z, attrs, train=False), g_shapes)
    d_shapes = jax.eval_shape(lambda x: d.init(jax.random.key(0), x, train=False), images)
    logits, attr_logits = jax.eval_shape(lambda v, x: d.apply(v, x, train=False), d_shapes, images)
    leaves = jax.tree.leaves(g_shapes["params"]) + jax.tree.leaves(d_shapes["params"])
    assert {leaf.dtype for leaf in leaves} == {jnp.dtype(jnp.float32)}
    assert images.dtype == jnp.float32 and logits.dtype == jnp.float32
    assert attr_logits is None or attr_logits.dtype == jnp.float32


def test_acgan_generator_output_depends_on_the_attributes():
    config, _, _, g_vars, _, g_apply, _ = _family("acgan64")
    z, attrs = _inputs(config)
    base, _ = g_apply(g_vars, z, attrs, train=False)
    again, _ = g_apply(g_vars, z, attrs, train=False)
    np.testing.assert_array_equal(base, again)
    flipped = attrs.at[:, 20].set(1.0 - attrs[:, 20])  # only attribute 20 ('Male') changes
    other, _ = g_apply(g_vars, z, flipped, train=False)
    per_image = np.abs(np.asarray(other) - np.asarray(base)).max(axis=(1, 2, 3))
    assert np.all(per_image > 1e-4)


def test_acgan_sn_vectors_advance_in_train_and_freeze_in_eval():
    config, _, _, g_vars, d_vars, g_apply, d_apply = _family("acgan64")
    z, attrs = _inputs(config)
    images, g_train = g_apply(g_vars, z, attrs, train=True)
    _, g_eval = g_apply(g_vars, z, attrs, train=False)
    (_, _), d_train = d_apply(d_vars, images, train=True)
    (_, _), d_eval = d_apply(d_vars, images, train=False)
    for before, train, evaluated in ((g_vars, g_train, g_eval), (d_vars, d_train, d_eval)):
        old = jax.tree.leaves(before["spectral"])
        assert len(old) >= 3  # one u per SN conv (32x32: 3 in D, 4 in G)
        for u0, u1 in zip(old, jax.tree.leaves(train["spectral"]), strict=True):
            assert np.abs(np.asarray(u1) - np.asarray(u0)).max() > 1e-4
        for u0, u2 in zip(old, jax.tree.leaves(evaluated["spectral"]), strict=True):
            np.testing.assert_array_equal(u2, u0)


def test_acgan_initialisers_are_orthogonal_convs():
    config = acgan64.get_config("runlocal")
    g, _ = build_models(config)
    z, attrs = _inputs(config, batch=2)
    variables = jax.jit(lambda k: g.init(k, z, attrs, train=False))(jax.random.key(0))
    kernel = np.asarray(variables["params"]["SNConv_1"]["kernel"])  # [4, 4, 16, 8]
    w = kernel.reshape(-1, kernel.shape[-1])  # [256, 8]: orthonormal columns
    np.testing.assert_allclose(w.T @ w, np.eye(w.shape[1]), atol=1e-5)
    u = np.asarray(variables["spectral"]["SNConv_1"]["u"])
    assert u.shape == (8,) and abs(np.linalg.norm(u) - 1) < 1e-5


def test_acgan_minibatch_stddev_needs_a_batch_divisible_by_the_group():
    _, _, d, _, d_vars, _, _ = _family("acgan64")
    images = jnp.zeros((6, 32, 32, 3))  # group size 4 does not divide 6
    with pytest.raises(ValueError, match=r"mbstd_group_size=4 .* batch of 6"):
        jax.eval_shape(lambda v: d.apply(v, images, train=False), d_vars)


def _param_count(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def _full_size_shapes(recipe: str):
    config = RECIPES[recipe].get_config()
    g, d = build_models(config)
    z, attrs = _inputs(config, batch=2)
    g_shapes = jax.eval_shape(lambda: g.init(jax.random.key(0), z, attrs, train=False))
    images = jax.eval_shape(lambda v: g.apply(v, z, attrs, train=False), g_shapes)
    d_shapes = jax.eval_shape(lambda x: d.init(jax.random.key(0), x, train=False), images)
    return config, g_shapes, images, d_shapes


def _kernel_shapes(params) -> dict[str, tuple[int, ...]]:
    """{layer name: kernel shape}."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return {
        jax.tree_util.keystr(path[:-1])[2:-2]: leaf.shape
        for path, leaf in flat
        if jax.tree_util.keystr(path).endswith("['kernel']")
    }


def _sorted_kernel_shapes(params) -> list[tuple[int, ...]]:
    """Kernel shapes as a sorted list (layer names depend on `config.model.fast_convs`)."""
    return sorted(_kernel_shapes(params).values())


def test_acgan64_full_size_is_the_seed_network():
    _, g_shapes, images, d_shapes = _full_size_shapes("acgan64")
    assert images.shape == (2, 64, 64, 3)
    assert _kernel_shapes(g_shapes["params"]) == {
        "Dense_0": (168, 16384),  # Dense(4*4*1024) on z(128) ++ 40 attributes
        "SNConv_0": (4, 4, 1024, 512),
        "SNConv_1": (4, 4, 512, 256),
        "SNConv_2": (4, 4, 256, 128),
        "SNConv_3": (4, 4, 128, 64),
        "SNConv_4": (4, 4, 64, 3),
    }
    assert _kernel_shapes(d_shapes["params"]) == {
        "SNConv_0": (3, 3, 3, 128),
        "SNConv_1": (3, 3, 129, 256),  # +1 channel from MinibatchStdDev
        "SNConv_2": (3, 3, 256, 512),
        "SNConv_3": (3, 3, 512, 1024),
        "Dense_0": (1024, 1),
        "Dense_1": (1024, 40),
    }
    # Trainable parameters of the Keras seed / peer (kernels + biases).
    assert _param_count(g_shapes["params"]) == 13_914_051
    assert _param_count(d_shapes["params"]) == 6_242_857
    assert _param_count(g_shapes["spectral"]) == 512 + 256 + 128 + 64 + 3
    assert _param_count(d_shapes["spectral"]) == 128 + 256 + 512 + 1024


def test_gan128_full_size_is_the_seed_network():
    _, g_shapes, images, d_shapes = _full_size_shapes("gan128")
    assert images.shape == (2, 128, 128, 3)
    assert _sorted_kernel_shapes(g_shapes["params"]) == sorted(
        [
            (32, 16 * 16 * 128),
            (5, 5, 128, 256),
            (4, 4, 256, 256),
            (4, 4, 256, 256),
            (4, 4, 256, 256),
            (5, 5, 256, 512),
            (5, 5, 512, 512),
            (7, 7, 512, 3),
        ]
    )
    # Conv 3 valid: 126x126; Conv 4 s2 valid: 62x62; Flatten -> Dense(1).
    d_kernels = [(3, 3, 3, 256), (4, 4, 256, 256), (62 * 62 * 256, 1)]
    assert _sorted_kernel_shapes(d_shapes["params"]) == sorted(d_kernels)
    assert _param_count(g_shapes["params"]) == 14_953_987
    assert _param_count(d_shapes["params"]) == 2_040_065


@pytest.mark.parametrize("recipe,channels", [("hrdcgan256_gray", 1), ("hrdcgan256", 3)])
def test_hrdcgan256_full_size_has_the_extra_stride1_convs(recipe, channels):
    _, g_shapes, images, d_shapes = _full_size_shapes(recipe)
    assert images.shape == (2, 256, 256, channels)
    assert _sorted_kernel_shapes(g_shapes["params"]) == sorted(
        [
            (100, 8 * 8 * 512),
            (4, 4, 512, 512),  # the extra stride-1 conv at 8x8
            (4, 4, 512, 256),
            (4, 4, 256, 128),
            (4, 4, 128, 64),
            (4, 4, 64, 32),
            (4, 4, 32, channels),
        ]
    )
    assert _sorted_kernel_shapes(d_shapes["params"]) == sorted(
        [
            (4, 4, channels, 32),
            (4, 4, 32, 64),
            (4, 4, 64, 128),
            (4, 4, 128, 256),
            (4, 4, 256, 512),
            (4, 4, 512, 512),  # the extra stride-1 conv at 8x8
            (8 * 8 * 512, 1),
        ]
    )


_LOAD_BY_PATH = """
import json, sys
from facegan_jax import recipes
out = {}
root, names = sys.argv[1], sys.argv[2:]
for name in names:
    for variant in ("", ":runlocal"):
        spec = root + "/configs/" + name + ".py" + variant
        c = recipes.load_config(spec)  # what --config does
        out[name + variant] = [c.model.name, c.data.image_size, c.data.channels]
print(json.dumps(out))
"""


def test_recipe_configs_load_by_path_from_outside_the_repo(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", _LOAD_BY_PATH, str(REPO_ROOT), *OUR_CONFIGS],
        cwd=tmp_path,  # repo root not on sys.path: `configs` must come from the installed package
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": ""},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout)
    assert loaded["acgan64"] == ["acgan", 64, 3]
    assert loaded["gan128"] == ["gan128", 128, 3]
    assert loaded["hrdcgan256_gray"] == ["hrdcgan", 256, 1]
    assert loaded["hrdcgan256:runlocal"] == ["hrdcgan", 32, 3]
    assert loaded["improved_dcgan64"] == ["dcgan", 64, 3]


def test_recipe_configs_carry_the_seeds_hyperparameters():
    c = acgan64.get_config()
    assert (c.model.z_dim, c.model.num_attributes, c.train.batch_size) == (128, 40, 16)
    assert c.loss.aux_on_fake and c.g_optimizer.name == c.d_optimizer.name == "adam"
    c = gan128.get_config()
    for opt in (c.g_optimizer, c.d_optimizer):
        assert (opt.name, opt.learning_rate, opt.clip_value) == ("rmsprop", 1e-4, 1.0)
    assert (c.loss.label_noise, c.sample_every_steps, c.num_control_samples) == (0.05, 50, 36)
    assert (c.model.leaky_slope, c.model.d_dropout) == (0.3, 0.4)
    c = improved_dcgan64.get_config()
    assert (c.model.name, c.model.g_activation) == ("dcgan", "leaky_relu")
    assert c.model.d_dropout > 0
    assert (c.loss.real_label_low, c.loss.real_label_high) == (0.7, 1.2)
    for recipe, channels in (("hrdcgan256_gray", 1), ("hrdcgan256", 3)):
        c = RECIPES[recipe].get_config()
        assert (c.data.image_size, c.data.channels) == (256, channels)
        assert c.train.schedule == "simultaneous"
        assert c.model.g_activation == c.model.d_activation == "selu"
    with pytest.raises(ValueError, match=r"unknown variant 'huge' for configs/gan128\.py"):
        gan128.get_config("huge")
