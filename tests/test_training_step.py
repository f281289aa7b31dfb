"""Tests for simclr_tf.models.training_step: a model stating only its loss gets accumulation, replica scaling,
cached chunks and metric plumbing right; and the models' weight-decay declarations."""
import keras
import numpy as np
import pytest
import tensorflow as tf

import simclr_tf
from simclr_tf import optimizers
from simclr_tf.models import encoders
from simclr_tf.models.classifier import build_classifier
from simclr_tf.models.distill import DistillationModel
from simclr_tf.models.training_step import TrainingModel, accumulated_gradients
from tests.subprocess_runner import run_with_devices

BATCH = 8
STEPS = 3


class TinyRegressor(TrainingModel):
    """Dense layers without batch norm and a mean squared error: it states its loss and nothing else."""

    def __init__(self, grad_accum_steps=1, **kwargs):
        super().__init__(**kwargs)
        self.grad_accum_steps = grad_accum_steps
        self.hidden = keras.layers.Dense(6, activation="tanh")
        self.out = keras.layers.Dense(3)
        self.track_metrics(["loss", "mse"])

    def call(self, x):
        return self.out(self.hidden(x))

    def loss_and_metrics(self, batch):
        x, y = batch
        mse = tf.reduce_mean(tf.square(self(x) - y))
        return mse, {"mse": mse}


def fit_regressor(grad_accum_steps, strategy=None):
    """Weights and logged loss after STEPS steps of global batch BATCH from the same start."""
    strategy = strategy or tf.distribute.get_strategy()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH * STEPS, 5)).astype("float32")
    y = rng.standard_normal((BATCH * STEPS, 3)).astype("float32")
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = TinyRegressor(grad_accum_steps)
        model(tf.zeros([1, 5]))
        model.compile(optimizer=keras.optimizers.SGD(0.3, momentum=0.9))
    history = model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    return [np.asarray(w) for w in model.get_weights()], history.history


@pytest.mark.parametrize("grad_accum_steps", [2, 4])
def test_micro_batches_make_the_update_of_the_whole_batch(grad_accum_steps):
    whole, whole_logs = fit_regressor(1)
    accumulated, logs = fit_regressor(grad_accum_steps)
    for want, got in zip(whole, accumulated):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # The logged loss is the mean over micro-batches: the whole batch's mean squared error.
    np.testing.assert_allclose(logs["loss"], whole_logs["loss"], rtol=1e-5)
    np.testing.assert_allclose(logs["mse"], whole_logs["loss"], rtol=1e-5)
    assert sorted(logs) == ["learning_rate", "loss", "mse"]


def test_two_replicas_make_the_update_of_one():
    snippet = """
from tests.test_training_step import fit_regressor
weights, _ = fit_regressor(2, tf.distribute.MirroredStrategy())
report(weights)
"""
    two_replicas = run_with_devices(snippet, 2)
    one_replica, _ = fit_regressor(1)
    for want, got in zip(one_replica, two_replicas):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


class TinyCoupled(TrainingModel):
    """A loss that couples the examples (the squared norm of the batch's mean embedding) plus a per-example
    mean term; with `cached_chunks > 1` it states the chunk embedding and the batch loss."""

    def __init__(self, cached_chunks=1, **kwargs):
        super().__init__(**kwargs)
        self.cached_chunks = cached_chunks
        self.embed = keras.layers.Dense(4, activation="tanh")
        self.regress = keras.layers.Dense(3)
        self.track_metrics(["loss", "coupled", "mse"])

    def call(self, x):
        return self.embed(x), self.regress(x)

    def _coupled(self, embeddings):
        return tf.reduce_sum(tf.square(tf.reduce_mean(embeddings, axis=0)))

    def loss_and_metrics(self, batch):
        x, y = batch
        embeddings, predictions = self(x)
        coupled, mse = self._coupled(embeddings), tf.reduce_mean(tf.square(predictions - y))
        return coupled + mse, {"coupled": coupled, "mse": mse}

    def chunk_embeddings(self, chunk):
        x, y = chunk
        embeddings, predictions = self(x)
        mse = tf.reduce_mean(tf.square(predictions - y))
        return embeddings, mse, {"mse": mse}

    def batch_loss_and_metrics(self, embeddings):
        coupled = self._coupled(tf.concat(embeddings, axis=0))
        return coupled, {"coupled": coupled}


def test_cached_chunks_give_the_gradient_and_metrics_of_the_whole_batch():
    rng = np.random.default_rng(1)
    x = tf.constant(rng.standard_normal((BATCH, 5)), tf.float32)
    y = tf.constant(rng.standard_normal((BATCH, 3)), tf.float32)
    results = {}
    for chunks in (1, 4):
        keras.utils.set_random_seed(0)
        model = TinyCoupled(cached_chunks=chunks)
        model(x[:1])
        model.compile(optimizer=keras.optimizers.SGD(0.1))
        gradients, updates = tf.function(model.gradients_and_updates)(x, y)
        assert len(updates) == 1  # one set of values for the whole batch
        results[chunks] = gradients, updates[0]
    (plain_gradients, plain), (cached_gradients, cached) = results[1], results[4]
    for want, got in zip(plain_gradients, cached_gradients):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)
    assert sorted(cached) == sorted(plain) == ["coupled", "loss", "mse"]
    for name in plain:
        np.testing.assert_allclose(float(cached[name]), float(plain[name]), rtol=1e-5)


def test_the_deprecated_optimizers_alias_warns_and_accumulates():
    weight = tf.Variable(1.0)
    batch = tf.range(4.0)

    def loss_fn(micro_batch):
        return tf.reduce_sum(weight * micro_batch), None

    with pytest.warns(DeprecationWarning, match="models.training_step.accumulated_gradients"):
        old, _ = optimizers.accumulated_gradients(loss_fn, batch, [weight], 2)
    new, _ = accumulated_gradients(loss_fn, batch, [weight], 2)
    assert float(old[0]) == float(new[0]) == 3.0  # (0 + 1 + 2 + 3) / 2 micro-batches


def test_a_model_without_a_loss_says_so():
    model = TrainingModel()
    with pytest.raises(NotImplementedError, match="TrainingModel must implement loss_and_metrics"):
        model.loss_and_metrics((tf.zeros([1]),))


# ---- Weight decay: what each model declares -------------------------------------------------------------
# The patterns optimizers.py held before the models declared them, written out.
OLD_LARS_EXCLUDE = ("batch_normalization", r"/gamma$", r"/beta$", "bias", "head_supervised")


def old_l2_selection(variables, optimizer_name):
    """The L2 term's variables as optimizers.l2_weight_decay_loss chose them by name."""
    if optimizer_name == "lars":
        return [v for v in variables if "head_supervised" in v.path and "bias" not in v.path]
    return [v for v in variables if not optimizers._matches_any(OLD_LARS_EXCLUDE[:3], v.path)]


def declaring_models():
    keras.utils.set_random_seed(0)
    resnet = simclr_tf.SimCLRModel(simclr_tf.ResNet(depth=18, width_multiplier=0.125, cifar_stem=True, se_ratio=0.25),
                                   simclr_tf.ProjectionHead(num_layers=3, out_dim=8), num_classes=3)
    resnet(tf.zeros([1, 32, 32, 3]))
    mobilenet = simclr_tf.SimCLRModel(
        encoders.KerasEncoder(encoders.build_backbone("MobileNetV3Small", {"alpha": 0.25, "minimalistic": True},
                                                      32)),
        simclr_tf.ProjectionHead(num_layers=2, out_dim=8))
    mobilenet(tf.zeros([1, 32, 32, 3]))
    classifier = build_classifier(resnet, num_classes=3, image_size=32, ft_proj_selector=1)
    student = build_classifier(resnet, num_classes=3, image_size=32, fine_tune_after_block=2)
    teacher = build_classifier(resnet, num_classes=3, image_size=32)
    distiller = DistillationModel(student, teacher)
    return {"simclr_resnet": resnet, "simclr_mobilenet": mobilenet, "classifier": classifier,
            "distill": distiller}


def test_models_declare_the_variables_lars_excluded_before():
    for name, model in declaring_models().items():
        paths = [v.path for v in model.trainable_variables]
        exempt = {v.path for v in model.weight_decay_exempt_variables()}
        want = {path for path in paths if optimizers._matches_any(OLD_LARS_EXCLUDE, path)}
        assert exempt == want, name
        assert 0 < len(exempt) < len(paths), name
        optimizer = optimizers.build_optimizer("lars", 0.1, weight_decay=1e-4,
                                               exclude_from_weight_decay=model.weight_decay_exempt_patterns())
        optimizer.build(model.trainable_variables)
        assert optimizer._decays_weight == [path not in want for path in paths], name
        assert optimizer._adapts_rate == [path not in want for path in paths], name


@pytest.mark.parametrize("optimizer_name", ["lars", "momentum"])
def test_models_add_the_l2_term_of_before(optimizer_name):
    for name, model in declaring_models().items():
        variables = old_l2_selection(model.trainable_variables, optimizer_name)
        want = 1e-3 * sum(0.5 * np.sum(np.square(v.numpy())) for v in variables)
        got = float(model.weight_decay_loss(1e-3, optimizer_name))
        np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=name)
        assert (got > 0) == (name != "simclr_mobilenet" or optimizer_name != "lars"), name
