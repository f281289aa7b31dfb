"""Tests for simclr_tf.optimizers: LARS vs NumPy, checkpoints, schedule values, weight decay."""
import contextlib
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.optimizers import (
    DEFAULT_LARS_EXCLUDE,
    LARS,
    WarmUpAndCosineDecay,
    build_optimizer,
    l2_weight_decay_loss,
    total_train_steps,
    warmup_steps,
)
from tests.layer_checks import assert_config_covers_init, assert_config_round_trip
from tests.subprocess_runner import run_with_devices

# ---- LARS against NumPy ----------------------------------------------------------------------
# Variable paths and shapes; the projection kernel starts at zero (||w|| = 0 gives trust 1).
VARIABLE_SHAPES = {
    "encoder/conv2d/kernel": (3, 3, 2, 4),
    "encoder/batch_normalization/gamma": (4,),
    "encoder/dense/bias": (4,),
    "projection/kernel": (4, 3),
    "head_supervised/kernel": (4, 3),
}
ALL_PATHS = set(VARIABLE_SHAPES)
# What DEFAULT_LARS_EXCLUDE leaves in, written out by hand.
DEFAULT_INCLUDED = {"encoder/conv2d/kernel", "projection/kernel"}
NUM_STEPS = 5


def variable_at(path, value):
    """A keras.Variable whose `path` is `path` (nested name scopes, one per folder)."""
    *scopes, name = path.split("/")
    with contextlib.ExitStack() as stack:
        for scope in scopes:
            stack.enter_context(keras.name_scope(scope))
        return keras.Variable(np.asarray(value, np.float32), name=name)


def make_variables(seed=0):
    """Keras variables at the paths of VARIABLE_SHAPES, and per-step gradients for them."""
    rng = np.random.default_rng(seed)
    initial = {
        path: (np.zeros(shape) if path == "projection/kernel" else rng.normal(size=shape))
        for path, shape in VARIABLE_SHAPES.items()
    }
    gradients = [
        {path: rng.normal(size=shape) for path, shape in VARIABLE_SHAPES.items()}
        for _ in range(NUM_STEPS)
    ]
    gradients[2]["encoder/conv2d/kernel"][...] = 0.0  # a zero gradient (trust 1 without decay)
    variables = [variable_at(path, value) for path, value in initial.items()]
    assert [v.path for v in variables] == list(VARIABLE_SHAPES)
    return variables, initial, gradients


def numpy_lars(initial, gradients, learning_rates, momentum, use_nesterov, weight_decay,
               decayed, adapted, classic_momentum, eeta):
    """LARS written from its definition, in float64; `decayed`/`adapted` are sets of paths."""
    weights = {path: value.copy() for path, value in initial.items()}
    velocities = {path: np.zeros_like(value) for path, value in initial.items()}

    def trust(path, w, direction):
        w_norm, d_norm = np.linalg.norm(w), np.linalg.norm(direction)
        if path in adapted and w_norm > 0 and d_norm > 0:
            return eeta * w_norm / d_norm
        return 1.0

    for step_gradients, lr in zip(gradients, learning_rates):
        for path, g in step_gradients.items():
            w, v = weights[path], velocities[path]
            if path in decayed:
                g = g + weight_decay * w
            if classic_momentum:
                scaled = lr * trust(path, w, g) * g
                v = momentum * v + scaled
                update = momentum * v + scaled if use_nesterov else v
            else:
                v = momentum * v + g
                update = momentum * v + g if use_nesterov else v
                update = lr * trust(path, w, update) * update
            weights[path], velocities[path] = w - update, v
    return weights


def run_lars(optimizer, variables, gradients):
    """Applies the per-step gradients inside a tf.function, as training does."""
    optimizer.build(variables)

    @tf.function
    def apply(step_gradients):
        optimizer.apply_gradients(zip(step_gradients, variables))

    for step_gradients in gradients:
        apply([tf.constant(step_gradients[v.path], tf.float32) for v in variables])
    return {v.path: v.numpy() for v in variables}


LARS_CASES = {
    # name: (LARS kwargs, decayed paths, adapted paths)
    "classic": (dict(), DEFAULT_INCLUDED, DEFAULT_INCLUDED),
    "classic_nesterov": (dict(use_nesterov=True), DEFAULT_INCLUDED, DEFAULT_INCLUDED),
    "popular": (dict(classic_momentum=False), DEFAULT_INCLUDED, DEFAULT_INCLUDED),
    "popular_nesterov": (
        dict(classic_momentum=False, use_nesterov=True), DEFAULT_INCLUDED, DEFAULT_INCLUDED),
    "no_exclusions": (dict(exclude_from_weight_decay=None), ALL_PATHS, ALL_PATHS),
    "separate_lists": (
        dict(exclude_from_weight_decay=["bias"],
             exclude_from_layer_adaptation=["batch_normalization", "^head"]),
        ALL_PATHS - {"encoder/dense/bias"},
        ALL_PATHS - {"encoder/batch_normalization/gamma", "head_supervised/kernel"}),
    "no_weight_decay": (dict(weight_decay=0.0), set(), DEFAULT_INCLUDED),
    "reference_defaults": (dict(momentum=0.9, eeta=0.001), DEFAULT_INCLUDED, DEFAULT_INCLUDED),
}


@pytest.mark.parametrize("case", sorted(LARS_CASES))
def test_lars_matches_numpy(case):
    overrides, decayed, adapted = LARS_CASES[case]
    # A large eeta and weight decay make the trust ratio and decay visible at 1e-5.
    kwargs = dict(momentum=0.8, weight_decay=0.05, eeta=0.2,
                  exclude_from_weight_decay=DEFAULT_LARS_EXCLUDE)
    kwargs.update(overrides)
    variables, initial, gradients = make_variables(seed=len(case))
    got = run_lars(LARS(0.3, **kwargs), variables, gradients)
    expected = numpy_lars(
        initial, gradients, [0.3] * NUM_STEPS,
        momentum=kwargs["momentum"], use_nesterov=kwargs.get("use_nesterov", False),
        weight_decay=kwargs["weight_decay"], decayed=decayed, adapted=adapted,
        classic_momentum=kwargs.get("classic_momentum", True), eeta=kwargs["eeta"])
    for path in VARIABLE_SHAPES:
        np.testing.assert_allclose(got[path], expected[path], rtol=1e-5, atol=1e-6, err_msg=path)


def test_lars_follows_schedule():
    # 256 examples at batch 64: 4 warmup steps at rates 0, 1/16, 2/16, 3/16, then 4/16.
    schedule = WarmUpAndCosineDecay(1.0, 256, 64, warmup_epochs=1, train_epochs=2)
    rates = [float(schedule(step)) for step in range(NUM_STEPS)]
    np.testing.assert_allclose(rates, [0.0, 0.0625, 0.125, 0.1875, 0.25], rtol=1e-6)
    variables, initial, gradients = make_variables(seed=3)
    optimizer = LARS(schedule, weight_decay=0.05, eeta=0.2,
                     exclude_from_weight_decay=DEFAULT_LARS_EXCLUDE)
    got = run_lars(optimizer, variables, gradients)
    expected = numpy_lars(initial, gradients, rates, momentum=0.9, use_nesterov=False,
                          weight_decay=0.05, decayed=DEFAULT_INCLUDED, adapted=DEFAULT_INCLUDED,
                          classic_momentum=True, eeta=0.2)
    for path in VARIABLE_SHAPES:
        np.testing.assert_allclose(got[path], expected[path], rtol=1e-5, atol=1e-6, err_msg=path)


def test_lars_has_one_momentum_slot_per_variable():
    variables, _, _ = make_variables()
    optimizer = LARS(0.1)
    optimizer.build(variables)
    slot_paths = [v.path for v in optimizer.variables if v.path.endswith("_momentum")]
    assert slot_paths == [f"LARS/{v.path.replace('/', '_')}_momentum" for v in variables]


# ---- Checkpoints -----------------------------------------------------------------------------
def make_compiled_model(initial_weights=None):
    model = keras.Sequential([
        keras.Input((4,)),
        keras.layers.Dense(3, name="dense"),
        keras.layers.Dense(2, name="head_supervised"),
    ])
    if initial_weights is not None:
        model.set_weights(initial_weights)
    model.compile(
        optimizer=LARS(0.5, weight_decay=0.05, eeta=0.2,
                       exclude_from_weight_decay=DEFAULT_LARS_EXCLUDE),
        loss="mse",
    )
    return model


@pytest.mark.parametrize("saver", ["keras_weights", "tf_checkpoint"])
def test_momentum_survives_checkpoint(saver, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 4)).astype(np.float32)
    y = rng.normal(size=(8, 2)).astype(np.float32)
    fit_kwargs = dict(batch_size=8, shuffle=False, verbose=0)

    uninterrupted = make_compiled_model()
    initial_weights = uninterrupted.get_weights()
    uninterrupted.fit(x, y, epochs=5, **fit_kwargs)

    first = make_compiled_model(initial_weights)
    first.fit(x, y, epochs=3, **fit_kwargs)
    resumed = make_compiled_model()
    resumed.optimizer.build(resumed.trainable_variables)
    if saver == "keras_weights":
        first.save_weights(str(tmp_path / "run.weights.h5"))
        resumed.load_weights(str(tmp_path / "run.weights.h5"))
    else:
        saved = tf.train.Checkpoint(model=first, optimizer=first.optimizer)
        path = saved.write(str(tmp_path / "ckpt"))
        tf.train.Checkpoint(model=resumed, optimizer=resumed.optimizer).read(path).assert_consumed()
    for saved, restored in zip(first.optimizer.variables, resumed.optimizer.variables):
        np.testing.assert_array_equal(saved.numpy(), restored.numpy())
    resumed.fit(x, y, epochs=2, **fit_kwargs)

    for want, got in zip(uninterrupted.get_weights(), resumed.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


# ---- Multi-replica fit -----------------------------------------------------------------------
def fit_tiny_model(strategy):
    """Fits a tiny Dense model with LARS for 3 steps of global batch 8; returns its weights."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(24, 4)).astype(np.float32)
    y = rng.normal(size=(24, 2)).astype(np.float32)
    initial = [rng.normal(size=s).astype(np.float32) for s in [(4, 3), (3,), (3, 2), (2,)]]
    with strategy.scope():
        model = make_compiled_model(initial)
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    return [np.asarray(w) for w in model.get_weights()]


def test_lars_fit_on_two_replicas_matches_one():
    snippet = """
from tests.test_optimizers import fit_tiny_model
report(fit_tiny_model(tf.distribute.MirroredStrategy()))
"""
    two_replicas = run_with_devices(snippet, 2)
    one_replica = fit_tiny_model(tf.distribute.get_strategy())
    for want, got in zip(one_replica, two_replicas):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# ---- Configs ---------------------------------------------------------------------------------
def test_lars_config_round_trip():
    schedule = WarmUpAndCosineDecay(0.3, 1000, 64, warmup_epochs=2, train_epochs=10,
                                    learning_rate_scaling="sqrt")
    optimizer = LARS(schedule, momentum=0.8, use_nesterov=True, weight_decay=1e-6,
                     exclude_from_weight_decay=DEFAULT_LARS_EXCLUDE,
                     exclude_from_layer_adaptation=["bias"], classic_momentum=False, eeta=0.01)
    assert_config_covers_init(optimizer)
    rebuilt = assert_config_round_trip(optimizer)
    assert rebuilt.exclude_from_weight_decay == list(DEFAULT_LARS_EXCLUDE)
    assert_config_round_trip(LARS(0.1))


def test_schedule_config_round_trip():
    schedule = WarmUpAndCosineDecay(0.3, 1000, 64, warmup_epochs=2, train_epochs=10,
                                    train_steps=50, learning_rate_scaling="sqrt")
    assert_config_covers_init(schedule)
    rebuilt = assert_config_round_trip(schedule)
    assert float(rebuilt(20)) == pytest.approx(float(schedule(20)))


def test_build_optimizer():
    lars = build_optimizer("lars", 0.1, momentum=0.8, weight_decay=1e-6)
    assert isinstance(lars, LARS)
    assert (lars.momentum, lars.weight_decay) == (0.8, 1e-6)
    assert lars.exclude_from_weight_decay == list(DEFAULT_LARS_EXCLUDE)
    assert lars.exclude_from_layer_adaptation is None
    sgd = build_optimizer("momentum", 0.1, momentum=0.8)
    assert isinstance(sgd, keras.optimizers.SGD) and sgd.nesterov and sgd.momentum == 0.8
    assert isinstance(build_optimizer("adam", 0.1), keras.optimizers.Adam)
    with pytest.raises(ValueError, match="Unknown optimizer"):
        build_optimizer("rmsprop", 0.1)


# ---- Schedule --------------------------------------------------------------------------------
def expected_learning_rate(step, base, num_examples, batch, warmup_epochs, train_epochs,
                           train_steps, scaling):
    """The reference schedule written from its definition."""
    peak = base * batch / 256 if scaling == "linear" else base * math.sqrt(batch)
    warmup = int(round(warmup_epochs * num_examples // batch))
    total = train_steps or num_examples * train_epochs // batch + 1
    if step < warmup:
        return step / warmup * peak
    progress = min(step - warmup, total - warmup) / (total - warmup)
    return 0.5 * peak * (1 + math.cos(math.pi * progress))


SCHEDULE_CASES = {
    # name: (base, num_examples, batch, warmup_epochs, train_epochs, train_steps, scaling)
    "linear": (0.3, 10000, 512, 10, 100, 0, "linear"),
    "sqrt": (0.075, 10000, 512, 10, 100, 0, "sqrt"),
    "no_warmup": (0.3, 10000, 512, 0, 100, 0, "linear"),
    "train_steps": (1.0, 5000, 256, 2, 100, 300, "linear"),
}


@pytest.mark.parametrize("case", sorted(SCHEDULE_CASES))
def test_schedule_values(case):
    base, num_examples, batch, warmup_epochs, train_epochs, train_steps, scaling = (
        SCHEDULE_CASES[case])
    schedule = WarmUpAndCosineDecay(base, num_examples, batch, warmup_epochs, train_epochs,
                                    train_steps, scaling)
    warmup = warmup_steps(num_examples, batch, warmup_epochs)
    total = total_train_steps(num_examples, batch, train_epochs, train_steps)
    steps = [0, warmup // 2, warmup, (warmup + total) // 2, total - 1, total, total + 10]
    step_variable = tf.Variable(0, dtype=tf.int64)
    in_graph = tf.function(lambda: schedule(step_variable))
    for step in steps:
        want = expected_learning_rate(step, base, num_examples, batch, warmup_epochs,
                                      train_epochs, train_steps, scaling)
        step_variable.assign(step)
        assert float(schedule(step)) == pytest.approx(want, rel=1e-5, abs=1e-7), step
        assert float(in_graph()) == pytest.approx(want, rel=1e-5, abs=1e-7), step


def test_schedule_peak_and_ends():
    # Linear scaling: 0.3 * 4096 / 256 = 4.8; sqrt scaling: 0.075 * sqrt(4096) = 4.8.
    for base, scaling in [(0.3, "linear"), (0.075, "sqrt")]:
        schedule = WarmUpAndCosineDecay(base, 1281167, 4096, 10, 100, 0, scaling)
        assert float(schedule(3127)) == pytest.approx(4.8, rel=1e-6)
        assert float(schedule(0)) == 0.0
        assert float(schedule(31279)) == pytest.approx(0.0, abs=1e-6)
    assert float(WarmUpAndCosineDecay(0.3, 1000, 256, warmup_epochs=0)(0)) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="learning_rate_scaling"):
        WarmUpAndCosineDecay(0.3, 1000, 256, learning_rate_scaling="cubic")


def test_step_helpers():
    # ImageNet at batch 4096: 1281167 * 100 // 4096 + 1 = 31279 steps; 12811670 // 4096 = 3127.
    assert total_train_steps(1281167, 4096, 100) == 31279
    assert total_train_steps(1281167, 4096, 100, train_steps=500) == 500
    assert warmup_steps(1281167, 4096, 10) == 3127
    assert warmup_steps(1000, 256, 0) == 0
    assert warmup_steps(1000, 100, 0.5) == 5


# ---- L2 weight decay loss --------------------------------------------------------------------
def test_l2_weight_decay_loss_selects_variables():
    variables, initial, _ = make_variables(seed=4)
    variables.append(variable_at("head_supervised/bias", np.ones(3)))
    initial["head_supervised/bias"] = np.ones(3)

    def half_squared_norm(paths):
        return sum(0.5 * np.sum(initial[p] ** 2) for p in paths)

    lars_loss = l2_weight_decay_loss(variables, 1e-3, "lars")
    np.testing.assert_allclose(
        float(lars_loss), 1e-3 * half_squared_norm(["head_supervised/kernel"]), rtol=1e-5)
    not_bn = [p for p in initial if "batch_normalization" not in p]
    for name in ("momentum", "adam"):
        loss = l2_weight_decay_loss(variables, 1e-3, name)
        np.testing.assert_allclose(float(loss), 1e-3 * half_squared_norm(not_bn), rtol=1e-5)
    assert float(l2_weight_decay_loss(variables[:2], 1e-3, "lars")) == 0.0
