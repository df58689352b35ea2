"""The fast recipe's ingredients, each a config field of the one train step, and its config.

DiffAugment in the step, lazy R1 (value, scaling, laziness), spectral norm in
the DCGAN discriminator, two-timescale learning rates with Adam betas (0, 0.99),
everything at once staying finite in both schedules, and
configs/celeba64_fast.py training on the embedded synthetic faces.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from facegan_jax import sharding
from facegan_jax.models import dcgan
from facegan_jax.training import components, losses, train
from tests.conftest import REPO_ROOT
from tests.helpers import fake_batch, load_config_file, tiny_config

# A discriminator that scores each image on its own (no BatchNorm), so R1 can be
# checked image by image.
SN = {"model.d_spectral_norm": True}
EVERYTHING = {
    **SN,
    "train.diffaugment": "color,translation,cutout",
    "loss.r1_gamma": 1.0,
    "loss.r1_every": 2,
    "loss.name": "hinge",
    "g_optimizer.learning_rate": 1e-4,
    "d_optimizer.learning_rate": 4e-4,
    "g_optimizer.b1": 0.0,
    "g_optimizer.b2": 0.99,
    "d_optimizer.b1": 0.0,
    "d_optimizer.b2": 0.99,
}


@pytest.fixture(scope="module", autouse=True)
def _quick_compiles():
    """XLA's cheap compile mode for this module: compile time dominates tiny steps."""
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", before)


@functools.cache
def _compiled(items: tuple[tuple[str, object], ...]):
    """(components, jitted pure step without donation, initial state, batch) of a tiny config."""
    config = tiny_config(**dict(items))
    run = components.build(config)
    batch = jax.device_put(fake_batch(config), sharding.batch_sharded(run.mesh))
    return run, jax.jit(run.train_step_fn()), run.create_state(), batch


def _setup(**overrides):
    # 8x8 images: one resolution step in G and D, the cheapest step that has every layer kind.
    return _compiled(tuple(sorted({"data.image_size": 8, **overrides}.items())))


def _leaves_equal(a, b) -> bool:
    return all(
        np.array_equal(x, y)
        for x, y in zip(jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b)))
    )


# ------------------------------------------------------------------------------ R1
def test_r1_penalty_is_half_gamma_times_mean_squared_input_gradient():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(5, 4, 4, 3)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(4, 4, 3)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(4, 4, 3)), jnp.float32)

    def tiny_d(images):  # [B, 4, 4, 3] -> [B]: sum(w x^2) + tanh(sum(v x)), per image
        return (w * images**2).sum(axis=(1, 2, 3)) + jnp.tanh((v * images).sum(axis=(1, 2, 3)))

    # By hand: grad_x D = 2 w x + (1 - tanh(s)^2) v, per image.
    xn, wn, vn = (np.asarray(a, np.float64) for a in (x, w, v))
    s = (vn * xn).sum(axis=(1, 2, 3))
    grads = 2 * wn * xn + (1 - np.tanh(s) ** 2)[:, None, None, None] * vn
    expected = 3.0 / 2 * np.mean(np.sum(grads**2, axis=(1, 2, 3)))
    got = float(losses.r1_penalty(tiny_d, x, gamma=3.0))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_r1_penalty_is_differentiable_in_the_discriminator_parameters():
    # Linear D(x) = <w, x>: grad_x D = w for every image, so R1 = gamma/2 |w|^2, d/dw = gamma w.
    x = jnp.asarray(np.random.default_rng(1).normal(size=(3, 2, 2, 1)), jnp.float32)
    w = jnp.asarray([[[0.5], [-1.0]], [[2.0], [0.25]]], jnp.float32)

    def r1(weights):
        return losses.r1_penalty(lambda im: (weights * im).sum(axis=(1, 2, 3)), x, gamma=0.2)

    np.testing.assert_allclose(float(r1(w)), 0.1 * float((w**2).sum()), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(jax.grad(r1)(w)), 0.2 * np.asarray(w), rtol=1e-6)


def _independent_r1(run, state, batch, gamma: float) -> float:
    """gamma/2 * mean_i |grad_x D(x_i)|^2, one image at a time through the module itself."""
    variables = {"params": state.d_params, **state.d_vars}

    def one_logit(image):  # [H, W, C] -> scalar; train=True advances u as the step does
        (logits, _), _ = run.discriminator.apply(
            variables, image[None], train=True, mutable=["spectral"]
        )
        return logits[0]

    grads = jax.jit(jax.vmap(jax.grad(one_logit)))(batch["image"])  # [B, H, W, C]
    return gamma / 2 * float(jnp.mean(jnp.sum(grads**2, axis=(1, 2, 3))))


def test_lazy_r1_adds_every_times_r1_on_every_kth_step_and_nothing_between():
    gamma, every = 2.0, 4
    run, step, state, batch = _setup(**SN, **{"loss.r1_gamma": gamma, "loss.r1_every": every})
    _, plain_step, _, _ = _setup(**SN)
    r1 = _independent_r1(run, state, batch, gamma)
    assert r1 > 0

    with_r1, metrics = step(state, batch)  # step 0: an R1 step
    np.testing.assert_allclose(float(metrics["d_r1"]), every * r1, rtol=1e-4)
    without_r1, _ = plain_step(state, batch)
    assert not _leaves_equal(with_r1.d_params, without_r1.d_params)  # it reached D's update

    for k in (1, 2, 3):  # between R1 steps: no penalty, D's update is the plain one
        at_k = state.replace(step=jnp.asarray(k, jnp.int32))
        lazy, metrics = step(at_k, batch)
        assert float(metrics["d_r1"]) == 0.0
        plain, _ = plain_step(at_k, batch)
        for a, b in zip(jax.tree.leaves(lazy.d_params), jax.tree.leaves(plain.d_params)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-7)
    _, metrics = step(state.replace(step=jnp.asarray(every, jnp.int32)), batch)
    assert float(metrics["d_r1"]) > 0


def test_r1_fields_are_validated_naming_the_field():
    for field, value in (("loss.r1_gamma", -1.0), ("loss.r1_every", 0)):
        with pytest.raises(ValueError, match=field.replace(".", r"\.")):
            components.build(tiny_config(**{field: value})).train_step_fn()


# ------------------------------------------------------------------------------ DiffAugment
def test_step_feeds_augmented_reals_and_fakes_to_d_and_g_learns_through_them():
    _, plain_step, state, batch = _setup(**SN)
    _, aug_step, _, _ = _setup(**SN, **{"train.diffaugment": "translation,cutout"})
    plain, m0 = jax.device_get(plain_step(state, batch))
    aug, m1 = jax.device_get(aug_step(state, batch))
    assert all(np.isfinite(v) for v in m1.values())
    # D scored other images (real and fake), so its scores and its update differ.
    assert m0["d_real"] != m1["d_real"] and m0["d_fake"] != m1["d_fake"]
    assert not _leaves_equal(plain.d_params, aug.d_params)
    # G's gradient comes back through the augmentation of its fake batch.
    assert 0 < m1["g_grad_norm"] != m0["g_grad_norm"]


# ------------------------------------------------------------------------------ spectral norm
def test_spectral_norm_discriminator_has_no_batchnorm_and_ignores_kernel_scale():
    run, _, state, batch = _setup(**SN)
    assert "batch_stats" not in state.d_vars and "spectral" in state.d_vars
    variables = {"params": state.d_params, **state.d_vars}
    scaled = {"params": jax.tree.map(lambda p: 3.0 * p, state.d_params), **state.d_vars}
    apply = jax.jit(lambda v, x: run.discriminator.apply(v, x, train=False)[0])
    # Every kernel is divided by its spectral norm, so scaling kernels changes nothing.
    np.testing.assert_allclose(
        np.asarray(apply(variables, batch["image"])),
        np.asarray(apply(scaled, batch["image"])),
        rtol=1e-5,
        atol=1e-6,
    )


def test_spectral_norm_stride2_conv_fast_path_equals_the_plain_conv():
    x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 8, 8, 3)), jnp.float32)
    fast, plain = dcgan.SNConvStride2(5, fast=True), dcgan.SNConvStride2(5, fast=False)
    variables = fast.init(jax.random.PRNGKey(0), x, update_stats=False)
    outs = [m.apply(variables, x, update_stats=True, mutable=["spectral"]) for m in (fast, plain)]
    np.testing.assert_allclose(np.asarray(outs[0][0]), np.asarray(outs[1][0]), atol=1e-5)
    assert outs[0][0].shape == (2, 4, 4, 5)
    # The power iteration advanced u (training), identically on both paths.
    assert not np.array_equal(outs[0][1]["spectral"]["u"], variables["spectral"]["u"])


# ------------------------------------------------------------------------------ everything on
@pytest.mark.parametrize("schedule", ["alternating", "simultaneous"])
def test_step_with_every_ingredient_on_stays_finite(schedule):
    _, step, state, batch = _setup(**EVERYTHING, **{"train.schedule": schedule})
    for k in range(3):
        state, metrics = step(state, batch)
        metrics = jax.device_get(metrics)
        assert all(np.isfinite(v) for v in metrics.values()), (k, metrics)
        assert (metrics["d_r1"] > 0) == (k % 2 == 0), (k, metrics["d_r1"])
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(state)))


def test_two_timescale_learning_rates_and_adam_betas_are_each_nets_own():
    # Adam's first update with b1 = 0 is lr * g / (|g| + eps): every parameter moves by
    # at most its net's learning rate, and the largest moves reach it.
    _, step, state, batch = _setup(**EVERYTHING, **{"train.schedule": "alternating"})
    new, _ = step(state, batch)
    for old, updated, lr in (
        (state.g_params, new.g_params, 1e-4),
        (state.d_params, new.d_params, 4e-4),
    ):
        moves = np.concatenate(
            [
                np.abs(np.asarray(a) - np.asarray(b)).ravel()
                for a, b in zip(jax.tree.leaves(old), jax.tree.leaves(updated))
            ]
        )
        assert lr * 0.9 < moves.max() <= lr * 1.001, (lr, moves.max())


# ------------------------------------------------------------------------------ the recipe
def test_celeba64_fast_config_is_the_documented_recipe():
    path = REPO_ROOT / "configs" / "celeba64_fast.py"
    config = load_config_file(str(path))
    assert (config.data.name, config.data.crop, config.data.image_size) == (
        "celeba_local",
        "celeba_178",
        64,
    )
    assert config.train.diffaugment == ""  # measured: it slowed the 30-minute runs 2.4-3x
    assert 0 < config.train.ema_decay < 1
    doc = path.read_text()
    assert "python -m facegan_jax.main --config=configs/celeba64_fast.py" in doc
    assert "python -m data_prep.prepare_celeba --manual-dir" in doc
    assert "python -m tools.race" in doc and "python -m tools.ablate" in doc
    train.validate_config(config)


def test_celeba64_fast_runlocal_trains_two_steps_on_synthetic_faces(tmp_path):
    config = load_config_file(
        str(REPO_ROOT / "configs" / "celeba64_fast.py") + ":runlocal",
        "--config.total_steps=2",
        f"--config.data.tfds_data_dir={tmp_path / 'tfds'}",
        "--config.checkpoint_every_steps=2",
        "--config.sample_every_steps=2",
        "--config.log_every_steps=1",
    )
    assert config.data.name == "synthetic_faces" and config.train.ema_decay > 0
    state = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert int(state.step) == 2
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(state.ema_params)))
