"""Gradient accumulation (--grad_accum_steps): k micro-batches make the update of one full batch when the loss
is a per-example mean; under 2 replicas too; the SimCLR model accumulates with NT-Xent per micro-batch; and
what Keras's own `gradient_accumulation_steps` does instead (why it is not used)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from simclr_tf import losses
from simclr_tf import optimizers
from simclr_tf.config import ConfigError
from simclr_tf.models import training_step
from simclr_tf.models.heads import ProjectionHead
from simclr_tf.models.resnet import ResNet
from simclr_tf.models.simclr import SimCLRModel
from tests.subprocess_runner import run_with_devices

BATCH = 16
STEPS = 3


class DenseRegressor(keras.Model):
    """Two Dense layers, mean squared error (a per-example mean, nothing couples the examples), and a
    train_step that accumulates `grad_accum_steps` micro-batches with `training_step.accumulated_gradients`."""

    def __init__(self, grad_accum_steps=1, **kwargs):
        super().__init__(**kwargs)
        self.grad_accum_steps = grad_accum_steps
        self.hidden = keras.layers.Dense(6, activation="tanh")
        self.out = keras.layers.Dense(3)
        self.loss_tracker = keras.metrics.Mean(name="loss")

    def call(self, x):
        return self.out(self.hidden(x))

    def _loss(self, batch):
        x, y = batch
        loss = tf.reduce_mean(tf.square(self(x) - y))
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        return self.optimizer.scale_loss(loss / replicas), loss

    def train_step(self, data):
        gradients, micro_losses = training_step.accumulated_gradients(
            self._loss, data, self.trainable_variables, self.grad_accum_steps)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_variables))
        for loss in micro_losses:
            self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}


def regression_data(seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((BATCH * STEPS, 5)).astype("float32"),
            rng.standard_normal((BATCH * STEPS, 3)).astype("float32"))


def train_regressor(optimizer_name, grad_accum_steps):
    keras.utils.set_random_seed(0)
    model = DenseRegressor(grad_accum_steps)
    model(tf.zeros([1, 5]))
    schedule = optimizers.WarmUpAndCosineDecay(0.5, BATCH * STEPS, BATCH, warmup_epochs=0.4,
                                               train_steps=STEPS)
    model.compile(optimizer=optimizers.build_optimizer(optimizer_name, schedule, weight_decay=1e-3))
    x, y = regression_data()
    history = model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    return model, history.history["loss"][0]


@pytest.mark.parametrize("optimizer_name", ["momentum", "lars"])
def test_accumulated_micro_batches_make_the_full_batch_update(optimizer_name):
    full, full_loss = train_regressor(optimizer_name, grad_accum_steps=1)
    accumulated, accumulated_loss = train_regressor(optimizer_name, grad_accum_steps=4)
    # Both took STEPS optimizer steps (the schedule, warmup included, saw the same step numbers).
    assert int(full.optimizer.iterations.numpy()) == int(accumulated.optimizer.iterations.numpy()) == STEPS
    keras.utils.set_random_seed(0)
    initial = DenseRegressor()
    initial(tf.zeros([1, 5]))
    # Compare the updates (LARS moves weights by ~1e-4 here: its trust ratio is eeta * |w| / |g|).
    for start, a, b in zip(initial.weights, full.weights, accumulated.weights):
        update_full, update_accumulated = a.numpy() - start.numpy(), b.numpy() - start.numpy()
        assert np.max(np.abs(update_full)) > 1e-5
        np.testing.assert_allclose(update_accumulated, update_full, rtol=1e-4,
                                   atol=1e-4 * np.max(np.abs(update_full)))
    np.testing.assert_allclose(full_loss, accumulated_loss, rtol=1e-5)


ACCUMULATION_SNIPPET = """
import keras
from tests.test_grad_accum import DenseRegressor, regression_data
from simclr_tf import optimizers
strategy = tf.distribute.MirroredStrategy() if len(tf.config.list_logical_devices("CPU")) > 1 \\
    else tf.distribute.get_strategy()
with strategy.scope():
    keras.utils.set_random_seed(0)
    model = DenseRegressor(GRAD_ACCUM_STEPS)
    model(tf.zeros([1, 5]))
    model.compile(optimizer=optimizers.build_optimizer("lars", 0.5, weight_decay=1e-3))
x, y = regression_data()
model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(16), epochs=1, verbose=0)
report({"iterations": model.optimizer.iterations, "weights": [w.numpy() for w in model.weights]})
"""


@pytest.mark.slow
def test_two_replicas_accumulating_match_one_device_on_the_full_batch():
    """Each replica splits its 8 examples into 2 micro-batches of 4; Keras's built-in accumulation cannot
    run here at all (its conditional update calls merge_call inside a cond)."""
    one = run_with_devices(ACCUMULATION_SNIPPET.replace("GRAD_ACCUM_STEPS", "1"), num_devices=1)
    two = run_with_devices(ACCUMULATION_SNIPPET.replace("GRAD_ACCUM_STEPS", "2"), num_devices=2)
    assert one["iterations"] == two["iterations"] == STEPS
    for a, b in zip(one["weights"], two["weights"]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _ancestors(op):
    """Every op `op` depends on, through data or control edges."""
    seen, stack = set(), [op]
    while stack:
        current = stack.pop()
        for parent in [t.op for t in current.inputs] + list(current.control_inputs):
            if parent not in seen:
                seen.add(parent)
                stack.append(parent)
    return seen


def test_micro_batches_run_one_after_the_other():
    """In the traced step, micro-batch i+1 cannot start before micro-batch i's gradients exist (so only one
    micro-batch's activations are alive at a time), and the gradient is the mean over micro-batches."""
    weight = tf.Variable(1.0)
    inputs = []  # The op that hands each micro-batch to the loss, in call order.

    def loss_fn(batch):
        inputs.append(batch.op)
        return tf.reduce_sum(weight * batch), batch[0, 0]

    @tf.function
    def step(batch):
        return training_step.accumulated_gradients(loss_fn, batch, [weight], num_micro_batches=4)

    gradients, firsts = step(tf.repeat(tf.range(4.0), 2)[:, None] * tf.ones([8, 3]))
    assert [float(x) for x in firsts] == [0.0, 1.0, 2.0, 3.0]  # Equal slices, in order.
    np.testing.assert_allclose(gradients[0].numpy(), 9.0)  # Mean over i of d/dw sum(w * batch_i) = 6 i.
    for previous, current in zip(inputs, inputs[1:]):
        assert previous in _ancestors(current)  # ... through the control dependency on its gradients.


def test_micro_batch_size_must_divide_each_replica_batch():
    optimizers.check_micro_batches(64, 2, 4)
    with pytest.raises(ConfigError, match="--grad_accum_steps=3.*multiple of 6"):
        optimizers.check_micro_batches(64, 2, 3)
    with pytest.raises(ConfigError, match="8 per replica.*multiple of 12"):
        optimizers.check_micro_batches(32, 4, 3)


def test_keras_builtin_accumulation_counts_micro_steps_in_the_schedule():
    """What keras.optimizers' `gradient_accumulation_steps` does (Keras 3.15): `iterations` counts updates,
    but the learning-rate schedule is evaluated at the micro-step count, k times too fast for a schedule
    written in updates; and under MirroredStrategy it fails (merge_call inside a cond). Hence
    `accumulated_gradients`. If this test fails, Keras changed: reconsider using its accumulation."""
    schedule = keras.optimizers.schedules.PolynomialDecay(1.0, decay_steps=10, end_learning_rate=0.0)
    optimizer = keras.optimizers.SGD(schedule, gradient_accumulation_steps=2)
    variable = keras.Variable(np.zeros(3, np.float32))
    optimizer.build([variable])
    for _ in range(4):  # Two updates of two micro-steps each.
        optimizer.apply([tf.ones(3)], [variable])
    assert int(optimizer.iterations.numpy()) == 2
    assert int(optimizer._iterations.numpy()) == 4
    np.testing.assert_allclose(float(optimizer.learning_rate), float(schedule(4)))  # not schedule(2)


def tiny_simclr(grad_accum_steps):
    keras.utils.set_random_seed(0)
    model = SimCLRModel(ResNet(depth=18, width_multiplier=0.125, cifar_stem=True),
                        ProjectionHead(num_layers=2, out_dim=8), num_classes=4, temperature=0.5,
                        grad_accum_steps=grad_accum_steps)
    model(tf.zeros([1, 16, 16, 3]))
    return model


def views_and_labels(batch=8, seed=0):
    rng = np.random.default_rng(seed)
    view_1 = rng.random((batch, 16, 16, 3), dtype=np.float32)
    view_2 = np.clip(view_1 + 0.1 * rng.standard_normal(view_1.shape), 0, 1).astype(np.float32)
    return (view_1, view_2), rng.integers(0, 4, batch)


def test_simclr_accumulates_micro_batches_with_their_own_negatives():
    """A step's logged contrast loss is the mean over micro-batches of NT-Xent computed on each micro-batch
    alone (its negatives come from within the micro-batch); training runs with finite losses and
    `iterations` counts optimizer updates, one per batch."""
    model = tiny_simclr(grad_accum_steps=2)
    assert model.get_config()["grad_accum_steps"] == 2
    model.compile(optimizer=optimizers.build_optimizer("lars", 0.5, weight_decay=1e-4))
    (view_1, view_2), labels = views_and_labels()
    expected = []  # Computed before the step, at the weights the step's loss sees (BN in training mode).
    for half in (slice(0, 4), slice(4, 8)):
        projections = model(tf.concat([view_1[half], view_2[half]], 0), training=True)["proj_head_output"]
        loss, _, _ = losses.contrastive_loss(*tf.split(projections, 2), temperature=0.5, hidden_norm=True)
        expected.append(float(loss))
    whole = model(tf.concat([view_1, view_2], 0), training=True)["proj_head_output"]
    whole_loss = float(losses.contrastive_loss(*tf.split(whole, 2), temperature=0.5, hidden_norm=True)[0])
    assert abs(whole_loss - np.mean(expected)) > 1e-3  # 8 pairs have more negatives than 4: not the same
    before = [w.numpy() for w in model.trainable_weights]

    logs = model.train_on_batch((view_1, view_2), labels, return_dict=True)
    np.testing.assert_allclose(logs["contrast_loss"], np.mean(expected), rtol=1e-5)
    for _ in range(2):
        logs = model.train_on_batch((view_1, view_2), labels, return_dict=True)
        assert np.isfinite(logs["loss"])
    assert int(model.optimizer.iterations.numpy()) == 3
    assert any(np.max(np.abs(b - a.numpy())) > 1e-4 for b, a in zip(before, model.trainable_weights))


def frozen_encoder_classifier(grad_accum_steps, width_multiplier=0.125, seed=0):
    """A classifier whose only trainable layer is the linear head: nothing couples the examples (the encoder's
    batch norms run in inference mode), so k micro-batches must make exactly the full batch's update."""
    from simclr_tf.models.classifier import SimCLRClassifier

    keras.utils.set_random_seed(seed)
    encoder = ResNet(depth=18, width_multiplier=width_multiplier, cifar_stem=True)
    model = SimCLRClassifier(encoder, ProjectionHead(num_layers=2, out_dim=8).truncated(0), num_classes=4,
                             fine_tune_after_block=4, grad_accum_steps=grad_accum_steps)
    model(tf.zeros([1, 16, 16, 3]))
    return model


def images_and_labels(batch=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((batch, 16, 16, 3), dtype=np.float32), rng.integers(0, 4, batch)


def trained_head(make_model, grad_accum_steps):
    model = make_model(grad_accum_steps)
    model.compile(optimizer=optimizers.build_optimizer("momentum", 0.5))
    images, labels = images_and_labels()
    logs = [model.train_on_batch(images, labels, return_dict=True) for _ in range(STEPS)]
    return [w.numpy() for w in model.trainable_weights], logs[-1]


def test_fine_tuning_accumulates_to_the_full_batch_update():
    full, full_logs = trained_head(frozen_encoder_classifier, 1)
    accumulated, logs = trained_head(frozen_encoder_classifier, 4)
    assert frozen_encoder_classifier(4).get_config()["grad_accum_steps"] == 4
    assert np.max(np.abs(full[0] - frozen_encoder_classifier(1).trainable_weights[0].numpy())) > 1e-3
    for a, b in zip(accumulated, full):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logs["supervised_loss"], full_logs["supervised_loss"], rtol=1e-5)


def test_distillation_accumulates_to_the_full_batch_update():
    from simclr_tf.models.distill import DistillationModel

    teacher = frozen_encoder_classifier(1, width_multiplier=0.25, seed=1)

    def distiller(grad_accum_steps):
        return DistillationModel(frozen_encoder_classifier(1), teacher, temperature=2.0,
                                 grad_accum_steps=grad_accum_steps)

    full, full_logs = trained_head(distiller, 1)
    accumulated, logs = trained_head(distiller, 2)
    assert distiller(2).get_config()["grad_accum_steps"] == 2
    for a, b in zip(accumulated, full):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logs["distill_loss"], full_logs["distill_loss"], rtol=1e-5)
