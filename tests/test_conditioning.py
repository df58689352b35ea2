"""The conditioning levers of issue 19: conditional DCGAN, conditional normalisation,
balanced requests, classifier guidance, and the wall-clock clock of the training loop."""

from __future__ import annotations

import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import celeba64_control, default
from facegan_jax import errors, sharding
from facegan_jax.data import celeba_attributes
from facegan_jax.data.celeba_attributes import CELEBA_ATTRIBUTES
from facegan_jax.metrics import attributes
from facegan_jax.models import build_models
from facegan_jax.training import augment, components, train_step
from facegan_jax.training import train as train_lib
from tests.helpers import fake_batch, first_step_metrics, tiny_config


def _control_config(**model):
    config = celeba64_control.get_config("runlocal")
    config.model.update(model)
    return config


def _init(config, attrs):
    g, d = build_models(config)
    z = jax.random.normal(jax.random.PRNGKey(0), (attrs.shape[0], config.model.z_dim))
    g_vars = g.init(jax.random.PRNGKey(1), z, attrs, train=False)
    images = g.apply(g_vars, z, attrs, train=False)
    d_vars = d.init(jax.random.PRNGKey(2), images, attrs, train=False)
    return g, d, z, g_vars, d_vars


def test_unconditional_dcgan_keeps_its_parameter_tree_and_returns_no_attribute_logits():
    config = default.get_config("runlocal")
    g, d = build_models(config)
    z = jnp.zeros((2, config.model.z_dim))
    g_vars = g.init(jax.random.PRNGKey(0), z, None, train=False)
    assert sorted(g_vars["params"]) == [
        "BatchNorm_0",
        "BatchNorm_1",
        "BatchNorm_2",
        "ConvTranspose_0",
        "FastConvTranspose2x_0",
        "FastConvTranspose2x_1",
        "FastConvTranspose2x_2",
    ]
    images = g.apply(g_vars, z, None, train=False)
    d_vars = d.init(jax.random.PRNGKey(1), images, train=False)
    assert "embed" not in d_vars["params"] and "attr_head" not in d_vars["params"]
    assert d.apply(d_vars, images, train=False)[1] is None


@pytest.mark.parametrize("g_cond", ["input", "modulate"])
def test_conditional_dcgan_generator_depends_on_the_attributes(g_cond):
    config = _control_config(g_cond=g_cond)
    a0 = jnp.zeros((3, 40))
    a1 = a0.at[:, 15].set(1.0)  # Eyeglasses
    g, _, z, g_vars, _ = _init(config, a0)
    if g_cond == "modulate":
        # The affine maps start at zero: conditional BN begins as plain BN.
        affine = g_vars["params"]["Modulate_0"]["Dense_0"]["kernel"]
        assert float(jnp.abs(affine).max()) == 0.0
        g_vars = jax.tree.map(lambda x: x, g_vars)
        g_vars["params"]["Modulate_0"]["Dense_0"]["kernel"] = 0.1 * jnp.ones_like(affine)
    else:
        assert not any(k.startswith("Modulate") for k in g_vars["params"])
    x0 = g.apply(g_vars, z, a0, train=False)
    x1 = g.apply(g_vars, z, a1, train=False)
    assert x0.shape == (3, 32, 32, 3)
    assert float(jnp.abs(x0 - x1).max()) > 1e-4
    with pytest.raises(ValueError, match="attributes of shape"):
        g.apply(g_vars, z, None, train=False)


def test_conditional_dcgan_discriminator_projection_and_separate_head():
    config = _control_config(d_dim=32)
    a0, a1 = jnp.zeros((4, 40)), jnp.ones((4, 40))
    _, d, _, _, d_vars = _init(config, a0)
    images = jax.random.normal(jax.random.PRNGKey(3), (4, 32, 32, 3))
    logits0, attr0 = d.apply(d_vars, images, a0, train=False)
    logits1, attr1 = d.apply(d_vars, images, a1, train=False)
    assert attr0.shape == (4, 40)
    np.testing.assert_array_equal(attr0, attr1)  # the attribute head never sees the labels
    assert not np.allclose(logits0, logits1)  # projection: realism judged per condition
    # 'separate': the head reads its own tower at half D's width (16 -> 32 -> 64 channels).
    assert d_vars["params"]["attr_head"]["kernel"].shape == (4 * 4 * 64, 40)
    config = _control_config(d_dim=32, projection=False, attr_head="shared")
    _, d, _, _, d_vars = _init(config, a0)
    assert "embed" not in d_vars["params"]
    # 'shared': D's own 4x4 map (32 -> 64 -> 128 channels).
    assert d_vars["params"]["attr_head"]["kernel"].shape == (4 * 4 * 128, 40)


def test_balanced_requests_force_one_attribute_per_picked_row_half_on():
    key = jax.random.PRNGKey(0)
    attrs = (jax.random.uniform(jax.random.PRNGKey(1), (4000, 40)) < 0.1).astype(jnp.float32)
    np.testing.assert_array_equal(train_step.balance_requests(key, attrs, 0.0)[0], attrs)
    out, forced = train_step.balance_requests(key, attrs, 1.0)
    out, forced = np.asarray(out), np.asarray(forced)
    assert (forced.sum(axis=1) == 1).all()  # one forced entry per picked row
    np.testing.assert_array_equal(out[~forced], np.asarray(attrs)[~forced])
    changed = (out != np.asarray(attrs)).sum(axis=1)
    assert changed.max() == 1  # at most the one forced attribute differs
    # Each row forces one attribute on or off with equal odds: with 10 % priors, 45 % of
    # rows turn a 0 into a 1 and 5 % a 1 into a 0.
    turned_on = ((out - np.asarray(attrs)) > 0).any(axis=1).mean()
    turned_off = ((out - np.asarray(attrs)) < 0).any(axis=1).mean()
    assert 0.42 < turned_on < 0.48 and 0.035 < turned_off < 0.065
    half = np.asarray(train_step.balance_requests(key, attrs, 0.5)[0])
    assert 0.22 < ((half != np.asarray(attrs)).sum(axis=1) == 1).mean() < 0.28


def test_forced_attributes_restrict_which_attribute_a_request_forces(saved_folder):
    attrs = jnp.zeros((3000, 40), jnp.float32)
    _, forced = train_step.balance_requests(jax.random.PRNGKey(0), attrs, 1.0, (3, 15, 31))
    counts = np.asarray(forced).sum(axis=0)
    assert set(np.flatnonzero(counts)) == {3, 15, 31}  # only the candidates, each ~1/3
    assert all(900 < counts[j] < 1100 for j in (3, 15, 31))
    config = _control_config()
    config.train.forced_attributes = " Male, Smiling,Eyeglasses"
    assert train_step.forced_candidates(config) == (15, 20, 31)
    config.train.forced_attributes = ""
    assert train_step.forced_candidates(config) == ()
    config.train.forced_attributes = "guide"
    assert train_step.forced_candidates(config) == ()  # no guide classifier: all 40
    config.loss.guide_classifier = str(saved_folder)
    reliable = attributes.load(saved_folder).reliable_attributes()
    expected = tuple(sorted(CELEBA_ATTRIBUTES.index(n) for n in reliable))
    assert train_step.forced_candidates(config) == expected and expected
    # Wired into the step: with forced_weight != 1 the forced entries are the weighted
    # ones, and every request forces Male or Smiling only.
    config.loss.guide_classifier = None
    config.train.forced_attributes = "Male,Smiling"
    g, d = build_models(config)
    spec = train_step.StepSpec.from_config(config, g, d, optax.adam(1e-3), optax.adam(1e-3))
    assert spec.forced_candidates == (20, 31) and spec.forced_weight != 1.0
    real = (jax.random.uniform(jax.random.PRNGKey(2), (256, 40)) < 0.3).astype(jnp.float32)
    requests = train_step.sample_inputs(spec, jax.random.PRNGKey(3), 256, real)
    weighted = np.asarray(requests.weights) != 1.0  # [B, 40]
    assert weighted.sum(axis=1).max() == 1 and weighted.any(axis=0).nonzero()[0].tolist() == [
        20,
        31,
    ]
    config.loss.guide_classifier = str(saved_folder)
    config.train.forced_attributes = "Male,Smilling"
    with pytest.raises(ValueError, match=r"forced_attributes='Male,Smilling'.*\['Smilling'\]"):
        train_step.forced_candidates(config)


def test_forced_conflicts_skip_the_entries_the_data_never_shows_with_the_forced_value():
    male, lipstick, beard, smiling = 20, 36, 24, 31  # Male, Wearing_Lipstick, No_Beard, Smiling
    # A pool where lipstick goes with women only (1 of 200 men), No_Beard with every
    # woman, and Smiling with half of everyone.
    pool = np.zeros((400, 40), np.float32)
    pool[:200, male] = 1
    pool[200:300, lipstick] = 1
    pool[0, lipstick] = 1
    pool[200:, beard] = 1
    pool[:100, beard] = 1
    pool[::2, smiling] = 1
    table = celeba_attributes.conflict_table(pool)
    assert table.shape == (2, 40, 40)
    np.testing.assert_allclose(table[1, male, [lipstick, beard, smiling]], [0.005, 0.5, 0.5])
    np.testing.assert_allclose(table[0, male, [lipstick, beard, smiling]], [0.5, 1.0, 0.5])
    assert table[1, 0, 0] == 0.5  # attribute 0 is never on: no evidence, no conflict
    # Requests: Male forced on a vector with lipstick and a smile; forced off on one
    # without No_Beard; a row with nothing forced; Smiling forced.
    attrs = np.zeros((4, 40), np.float32)
    attrs[0, [male, lipstick, smiling]] = 1
    attrs[2, [lipstick, beard]] = 1
    attrs[3, [male, lipstick, smiling]] = 1
    forced = np.zeros((4, 40), bool)
    forced[0, male] = forced[1, male] = forced[3, smiling] = True
    skip = np.asarray(celeba_attributes.conflicts(jnp.asarray(table), 0.02, attrs, forced))
    assert skip[0].nonzero()[0].tolist() == [lipstick]  # P(lipstick | man) = 0.005
    assert skip[1].nonzero()[0].tolist() == [beard]  # P(No_Beard off | woman) = 0
    assert not skip[2].any() and not skip[3].any()  # nothing forced; no conflict
    assert not np.asarray(celeba_attributes.conflicts(jnp.asarray(table), 0.004, attrs, forced))[
        0
    ].any()
    # Wired into the step: the conflicting entries weigh 0 in G's attribute terms.
    config = _control_config()
    config.train.forced_conflicts = 0.02
    config.train.forced_attributes = "Male"
    g, d = build_models(config)
    spec = train_step.StepSpec.from_config(config, g, d, optax.adam(1e-3), optax.adam(1e-3))
    assert spec.conflict_rate == 0.02 and spec.conflict_table.shape == (2, 40, 40)
    spec = dataclasses.replace(spec, conflict_table=table)
    real = jnp.asarray(pool[np.r_[0:64, 200:264]])  # 64 men with lipstick on one, 64 women
    requests = train_step.sample_inputs(spec, jax.random.PRNGKey(3), 128, real)
    w, a = np.asarray(requests.weights), np.asarray(requests.attrs)
    every_row_forces_male = np.zeros((128, 40), bool)
    every_row_forces_male[:, male] = True  # forced_attributes='Male', balanced_requests=1
    expected = np.asarray(
        celeba_attributes.conflicts(jnp.asarray(table), 0.02, a, every_row_forces_male)
    )
    assert (w[expected] == 0).all() and (w[~expected] > 0).all() and expected.sum() >= 32
    np.testing.assert_array_equal(np.asarray(requests.guide_weights), w)
    # Consistent requests instead: those entries are set to their likely value (the same
    # draws otherwise), and then nothing is left to skip.
    spec = dataclasses.replace(spec, conflict_rate=0.0, consistent_rate=0.02)
    resolved = train_step.sample_inputs(spec, jax.random.PRNGKey(3), 128, real)
    r = np.asarray(resolved.attrs)
    np.testing.assert_array_equal(r, np.where(expected, 1 - a, a))
    assert resolved.weights is not None and (np.asarray(resolved.weights) > 0).all()
    again = celeba_attributes.conflicts(jnp.asarray(table), 0.02, r, every_row_forces_male)
    assert not np.asarray(again).any()
    for field in ("forced_conflicts", "consistent_requests"):
        for bad in (0.5, -0.1):
            config.train[field] = bad
            with pytest.raises(ValueError, match=rf"{field}={bad} must be in \[0, 0.5\)"):
                train_step.validate_schedule(config)
        config.train[field] = 0.0
    config.train.forced_conflicts = 0.02
    config.train.balanced_requests = 0.0
    with pytest.raises(ValueError, match="needs config.train.balanced_requests > 0"):
        train_step.validate_schedule(config)


def test_forced_emphasis_sets_how_often_each_attribute_is_forced():
    attrs = jnp.zeros((6000, 40), jnp.float32)
    key = jax.random.PRNGKey(0)
    # Odds 3 : 1 : 2 over three candidates: forced 1/2, 1/6 and 1/3 of the time.
    _, forced = train_step.balance_requests(key, attrs, 1.0, (3, 15, 31), (3.0, 1.0, 2.0))
    counts = np.asarray(forced).sum(axis=0)
    assert set(np.flatnonzero(counts)) == {3, 15, 31}
    assert 2850 < counts[3] < 3150 and 900 < counts[15] < 1100 and 1850 < counts[31] < 2150
    # No odds: the uniform draw, unchanged from before the field existed.
    uniform = train_step.balance_requests(key, attrs, 1.0, (3, 15, 31))[1]
    assert 1850 < np.asarray(uniform)[:, 15].sum() < 2150
    config = _control_config()
    assert train_step.forced_odds(config, ()) == ()  # '' : uniform
    config.train.forced_emphasis = "Male:3, Smiling:2"
    odds = train_step.forced_odds(config, ())
    assert len(odds) == 40 and odds[20] == 3.0 and odds[31] == 2.0 and sum(odds) == 43.0
    assert train_step.forced_odds(config, (15, 20, 31)) == (1.0, 3.0, 2.0)
    # Wired into the step: Male is forced three times as often as each other attribute.
    config.train.forced_attributes = "Eyeglasses,Male,Smiling"
    g, d = build_models(config)
    spec = train_step.StepSpec.from_config(config, g, d, optax.adam(1e-3), optax.adam(1e-3))
    assert spec.forced_odds == (1.0, 3.0, 2.0)
    real = (jax.random.uniform(jax.random.PRNGKey(2), (3000, 40)) < 0.3).astype(jnp.float32)
    requests = train_step.sample_inputs(spec, jax.random.PRNGKey(3), 3000, real)
    per_attribute = (np.asarray(requests.weights) != 1.0).sum(axis=0)
    assert 1350 < per_attribute[20] < 1650 and 400 < per_attribute[15] < 600
    for bad, message in [
        ("Male", "not 'Name:factor'"),
        ("Male:0", "not 'Name:factor'"),
        ("Male:x", "not 'Name:factor'"),
        ("Smilling:2", "unknown attribute 'Smilling'"),
        ("Bald:2", "Bald is not one of the attributes a request may force"),
    ]:
        config.train.forced_emphasis = bad
        with pytest.raises(ValueError, match=rf"forced_emphasis='{bad}': .*{message}"):
            train_step.forced_odds(config, (15, 20, 31))


def test_classifier_guidance_is_the_calibrated_bce_and_trains(saved_folder):
    classifier = attributes.load(saved_folder)
    config = _control_config()
    config.loss.guide_classifier = str(saved_folder)
    config.loss.guide_weight = 2.0
    guide = train_step.make_guidance(config)
    images = jax.random.uniform(jax.random.PRNGKey(0), (5, 32, 32, 3), minval=-1, maxval=1)
    attrs = (jax.random.uniform(jax.random.PRNGKey(1), (5, 40)) < 0.5).astype(jnp.float32)
    z = classifier.logits(np.asarray(images)) - classifier.threshold_logits
    per = np.asarray(attrs) * np.logaddexp(0, -z) + (1 - np.asarray(attrs)) * np.logaddexp(0, z)
    mask = np.isin(
        np.arange(40), [attributes.attribute_index(n) for n in classifier.reliable_attributes()]
    )
    expected = 2.0 * (per * mask).sum(axis=1).mean()
    assert mask.sum() > 0
    np.testing.assert_allclose(float(guide(images, attrs)), expected, rtol=1e-4)
    # With a margin: the hinge, zero for the attributes read beyond the margin.
    config.loss.guide_margin = 1.5
    a = np.asarray(attrs)
    hinge = a * np.maximum(1.5 - z, 0) + (1 - a) * np.maximum(1.5 + z, 0)
    assert 0 < ((hinge == 0) & mask).sum() < mask.sum() * 5  # some satisfied, some not
    np.testing.assert_allclose(
        float(train_step.make_guidance(config)(images, attrs)),
        2.0 * (hinge * mask).sum(axis=1).mean(),
        rtol=1e-4,
    )
    config.loss.guide_margin = 0.0
    # guide_resolution: the guide sees the 2x2 area means; guide_augment: the augmented copy.
    config.loss.guide_resolution = 16
    small = np.asarray(images).reshape(5, 16, 2, 16, 2, 3).mean(axis=(2, 4))
    up = jax.image.resize(small, (5, 32, 32, 3), "linear", antialias=True)  # as the guide does
    z16 = classifier.logits(np.asarray(up)) - classifier.threshold_logits
    per16 = a * np.logaddexp(0, -z16) + (1 - a) * np.logaddexp(0, z16)
    np.testing.assert_allclose(
        float(train_step.make_guidance(config)(images, attrs)),
        2.0 * (per16 * mask).sum(axis=1).mean(),
        rtol=1e-4,
    )
    config.loss.guide_resolution = 0
    config.loss.guide_augment = "translation"
    key = jax.random.PRNGKey(7)
    moved = augment.diff_augment(key, images, "translation")
    assert not np.allclose(moved, images)
    np.testing.assert_allclose(
        float(train_step.make_guidance(config)(images, attrs, None, key)),
        float(guide(moved, attrs)),
        rtol=1e-5,
    )
    config.loss.guide_augment = ""
    # The step: finite, logs the guide term, and the weight only enters G's loss.
    results = {}
    for weight in (0.0, 2.0):
        config.loss.guide_weight = weight
        results[weight] = first_step_metrics(config)
    assert "g_guide" not in results[0.0] and results[2.0]["g_guide"] > 0
    np.testing.assert_allclose(results[0.0]["d_loss"], results[2.0]["d_loss"], rtol=1e-6)
    np.testing.assert_allclose(
        results[2.0]["g_loss"], results[0.0]["g_loss"] + results[2.0]["g_guide"], rtol=1e-5
    )
    # guide_decay_steps=4: the weight falls linearly to 0 at step 4, after which the step
    # is the unguided one; compared with constant weight at the same step (same keys).
    config.loss.guide_weight = 2.0

    def metrics_at(decay: int, step: int) -> dict:
        config.loss.guide_decay_steps = decay
        run = components.build(config)
        batch = jax.device_put(fake_batch(config), sharding.batch_sharded(run.mesh))
        state = run.create_state()
        state = state.replace(step=jnp.full_like(state.step, step))
        return jax.device_get(jax.jit(run.train_step_fn())(state, batch)[1])

    constant, halfway = metrics_at(0, 2), metrics_at(4, 2)
    np.testing.assert_allclose(halfway["g_guide"], 0.5 * constant["g_guide"], rtol=1e-5)
    constant, after = metrics_at(0, 4), metrics_at(4, 4)
    assert after["g_guide"] == 0 and constant["g_guide"] > 0
    np.testing.assert_allclose(after["g_loss"], constant["g_loss"] - constant["g_guide"], rtol=1e-5)
    np.testing.assert_allclose(after["d_loss"], constant["d_loss"], rtol=1e-6)
    # The run switches to the step compiled without the guide at step 4 (also on resume).
    run = components.build(config)  # guide_decay_steps=4
    batch = jax.device_put(fake_batch(config), sharding.batch_sharded(run.mesh))
    step, state = run.scheduled_train_step(3), run.create_state()
    state, metrics = step(state, batch)  # the 4th step: guided, factor 1/4
    assert "g_guide" in metrics
    state, metrics = step(state, batch)
    assert "g_guide" not in metrics and np.isfinite(float(metrics["g_loss"]))
    # Resumed past the decay: unguided from its first step.
    _, metrics = run.scheduled_train_step(7)(run.create_state(), batch)
    assert "g_guide" not in metrics
    config.loss.guide_decay_steps = 0
    constant_run = components.build(config)
    assert constant_run.scheduled_train_step(7) is constant_run.train_step
    scales = [float(train_step.guide_scale(4, jnp.asarray(s))) for s in (0, 1, 4, 9)]
    assert scales == [1.0, 0.75, 0.0, 0.0]
    assert float(train_step.guide_scale(0, jnp.asarray(9))) == 1.0


def test_guide_classifier_that_is_not_a_folder_is_a_config_error(tmp_path):
    config = _control_config()
    config.loss.guide_classifier = str(tmp_path / "nothing")
    with pytest.raises(ValueError, match="config.loss.guide_classifier=.* is not an attribute"):
        train_step.validate_schedule(config)
    # In a list of guides, the one that is not a folder is named.
    config.loss.guide_classifier = f"{tmp_path / 'nothing'}, "
    with pytest.raises(ValueError, match="guide_classifier='.*nothing' is not an attribute"):
        train_step.validate_schedule(config)


def test_several_guides_average_their_losses_each_over_its_own_attributes(saved_folder, tmp_path):
    # A second guide: the same weights with other thresholds and other reliable attributes.
    other = tmp_path / "other"
    shutil.copytree(saved_folder, other)
    meta = json.loads((other / "classifier.json").read_text())
    meta["threshold_logits"] = [t + 0.7 for t in meta["threshold_logits"]]
    meta["balanced_accuracy"] = {
        n: 0.9 if n in ("Eyeglasses", "Smiling") else 0.5 for n in CELEBA_ATTRIBUTES
    }
    (other / "classifier.json").write_text(json.dumps(meta))
    assert attributes.load(other).reliable_attributes() == ("Eyeglasses", "Smiling")
    config = _control_config()
    config.loss.guide_weight = 2.0
    images = jax.random.uniform(jax.random.PRNGKey(0), (5, 32, 32, 3), minval=-1, maxval=1)
    attrs = (jax.random.uniform(jax.random.PRNGKey(1), (5, 40)) < 0.5).astype(jnp.float32)
    single = {}
    for folder in (saved_folder, other):
        config.loss.guide_classifier = str(folder)
        single[folder] = float(train_step.make_guidance(config)(images, attrs))
    assert abs(single[saved_folder] - single[other]) > 0.1  # two different guides
    config.loss.guide_classifier = f"{saved_folder}, {other}"
    assert train_step.guide_folders(config) == (str(saved_folder), str(other))
    np.testing.assert_allclose(
        float(train_step.make_guidance(config)(images, attrs)),
        (single[saved_folder] + single[other]) / 2,
        rtol=1e-5,
    )
    # The attributes a request may force: those any of the guides reads reliably.
    config.train.forced_attributes = "guide"
    first = set(attributes.load(saved_folder).reliable_attributes())
    names = {CELEBA_ATTRIBUTES[i] for i in train_step.forced_candidates(config)}
    assert names == first | {"Eyeglasses", "Smiling"} and names != first


def test_clock_marks_every_interval_and_stops_at_the_deadline(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(train_lib.time, "perf_counter", lambda: now[0])
    clock = train_lib.Clock(train_minutes=1.0, every_minutes=0.25, check_every=10)
    assert clock.due(1) == (False, False)  # not started: compilation does not count
    clock.start()
    seen = []
    for step in range(1, 200):
        now[0] += 0.5  # half a second per step
        mark, stop = clock.due(step)
        if mark:
            seen.append(step)
        if stop:
            break
    # Marks at 15, 30, 45 s and the deadline at 60 s (step 120), where it also marks.
    assert seen == [30, 60, 90, 120] and step == 120
    assert train_lib.Clock(0.0, 0.0, 10).active is False


@pytest.mark.parametrize(
    ("field", "value"),
    [("loss.aux_weight", 2.0), ("train.balanced_requests", 1.0), ("loss.guide_weight", 0.3)],
)
def test_unconditional_model_refuses_a_field_only_conditional_models_read(field, value):
    config = tiny_config(**{field: value})
    assert config.model.num_attributes == 0
    with pytest.raises(errors.ConfigError, match=rf"config\.{field}={value!r} is read only by"):
        train_step.validate_schedule(config)
    train_step.validate_schedule(tiny_config())  # the defaults mean "off": accepted


def test_forced_only_guidance_weighs_only_the_forced_attribute():
    config = _control_config()
    assert config.train.balanced_requests == 1.0 and config.train.forced_weight == 10.0
    real = (jax.random.uniform(jax.random.PRNGKey(3), (64, 40)) < 0.3).astype(jnp.float32)
    key = jax.random.PRNGKey(4)
    both = {}
    for forced_only in (False, True):
        config.loss.guide_forced_only = forced_only
        run = components.build(config)
        spec = train_step.StepSpec.from_config(
            config, run.generator, run.discriminator, run.g_tx, run.d_tx
        )
        both[forced_only] = jax.device_get(train_step.sample_inputs(spec, key, 64, real))
    every, only = both[False], both[True]
    # The same requests and D-term weights either way; one forced entry (10) per row.
    np.testing.assert_array_equal(every.attrs, only.attrs)
    np.testing.assert_array_equal(every.weights, only.weights)
    np.testing.assert_array_equal(every.guide_weights, every.weights)
    assert ((every.weights == 10.0).sum(axis=1) == 1).all()
    # Forced-only guidance: the forced entry keeps its weight, every other entry is 0.
    np.testing.assert_array_equal(only.guide_weights, np.where(every.weights == 10.0, 10.0, 0.0))
    config.train.balanced_requests = 0.0
    with pytest.raises(ValueError, match="guide_forced_only=True .*balanced_requests > 0"):
        train_step.validate_schedule(config)


def test_guide_decay_steps_must_not_be_negative():
    config = _control_config()
    config.loss.guide_decay_steps = -1
    with pytest.raises(ValueError, match=r"config.loss.guide_decay_steps=.* integer >= 0"):
        train_step.validate_schedule(config)
