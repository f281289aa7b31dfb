"""The SimCLR keras.Model: fit works, the probe does not train the encoder, save/load, replicas agree."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.models.heads import ProjectionHead
from simclr_tf.models.resnet import ResNet
from simclr_tf.models.simclr import SimCLRModel
from tests import layer_checks
from tests.subprocess_runner import run_with_devices


def tiny_model(num_classes=4):
    keras.utils.set_random_seed(0)
    encoder = ResNet(depth=18, width_multiplier=0.125, cifar_stem=True)
    head = ProjectionHead(mode="nonlinear", num_layers=2, out_dim=8)
    model = SimCLRModel(encoder, head, num_classes=num_classes, temperature=0.5)
    model(tf.zeros([1, 16, 16, 3]))
    return model


def views_and_labels(batch=8, size=16, seed=0):
    rng = np.random.default_rng(seed)
    view_1 = rng.random((batch, size, size, 3), dtype=np.float32)
    view_2 = np.clip(view_1 + 0.05 * rng.standard_normal(view_1.shape), 0, 1).astype(np.float32)
    return (view_1, view_2), rng.integers(0, 4, batch)


def test_fit_gives_finite_decreasing_loss():
    model = tiny_model()
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    views, labels = views_and_labels()
    losses = [model.train_on_batch(views, labels, return_dict=True)["contrast_loss"] for _ in range(12)]
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    logs = model.train_on_batch(views, labels, return_dict=True)
    for name in ["contrast_acc", "contrast_entropy", "supervised_loss", "supervised_acc",
                 "weight_decay", "learning_rate", "loss"]:
        assert name in logs


def test_probe_gradient_does_not_reach_encoder_or_projection_head():
    model = tiny_model()
    images = tf.random.uniform([4, 16, 16, 3])
    with tf.GradientTape() as tape:
        logits = model(images, training=True)["logits_sup"]
        loss = tf.reduce_sum(logits ** 2)
    frozen = model.encoder.trainable_variables + model.projection_head.trainable_variables
    grads = tape.gradient(loss, frozen + model.supervised_head.trainable_variables)
    assert all(g is None for g in grads[:len(frozen)])
    assert all(g is not None for g in grads[len(frozen):])


def test_fit_over_a_dataset_reports_eval_metrics():
    model = tiny_model()
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    views, labels = views_and_labels(batch=16)
    train = tf.data.Dataset.from_tensor_slices((views, labels)).batch(8)
    evaluation = tf.data.Dataset.from_tensor_slices((views[0], labels)).batch(8)
    history = model.fit(train, epochs=2, validation_data=evaluation, verbose=0)
    assert {"val_top_1_accuracy", "val_top_5_accuracy", "contrast_loss"} <= set(history.history)


def test_config_and_keras_save_load(tmp_path):
    model = tiny_model()
    layer_checks.assert_config_covers_init(model)
    images = tf.random.uniform([2, 16, 16, 3])
    layer_checks.assert_save_load_equal(model, images, str(tmp_path / "simclr.keras"))


STEP_SNIPPET = """
import keras
from simclr_tf.models.heads import ProjectionHead
from simclr_tf.models.resnet import ResNet
from simclr_tf.models.simclr import SimCLRModel
from simclr_tf.optimizers import LARS

strategy = tf.distribute.MirroredStrategy() if len(tf.config.list_logical_devices("CPU")) > 1 \\
    else tf.distribute.get_strategy()
rng = np.random.default_rng(1)
v1 = rng.random((8, 16, 16, 3), dtype=np.float32)
v2 = rng.random((8, 16, 16, 3), dtype=np.float32)
labels = rng.integers(0, 4, 8)
with strategy.scope():
    keras.utils.set_random_seed(0)
    model = SimCLRModel(ResNet(depth=18, width_multiplier=0.125, cifar_stem=True, global_bn=True),
                        ProjectionHead(num_layers=2, out_dim=8), num_classes=4, temperature=0.5,
                        weight_decay=1e-4)
    model(tf.zeros([1, 16, 16, 3]))
    model.compile(optimizer=LARS(0.5, weight_decay=1e-4,
                                 exclude_from_weight_decay=["batch_normalization", "bias"]))
ds = tf.data.Dataset.from_tensor_slices(((v1, v2), labels)).batch(8)
history = model.fit(ds, epochs=1, verbose=0)
report({"loss": history.history["contrast_loss"][0],
        "weights": [w.numpy().ravel()[:50] for w in model.weights]})
"""


@pytest.mark.slow
def test_two_replicas_take_the_same_step_as_one():
    one = run_with_devices(STEP_SNIPPET, num_devices=1)
    two = run_with_devices(STEP_SNIPPET, num_devices=2)
    np.testing.assert_allclose(one["loss"], two["loss"], rtol=1e-4)
    for a, b in zip(one["weights"], two["weights"]):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


def test_zero_init_logits_layer_starts_the_probe_at_zero_logits():
    encoder = ResNet(depth=18, width_multiplier=0.125, cifar_stem=True)
    model = SimCLRModel(encoder, ProjectionHead(num_layers=2, out_dim=8), num_classes=4,
                        zero_init_logits_layer=True)
    logits = model(tf.random.uniform([2, 16, 16, 3]))["logits_sup"]
    np.testing.assert_array_equal(logits.numpy(), np.zeros((2, 4)))
    assert not np.all(tiny_model()(tf.random.uniform([2, 16, 16, 3]))["logits_sup"].numpy() == 0)


def test_online_probe_leaves_unlabelled_images_out_of_its_loss_and_accuracy():
    model = tiny_model()
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    (view_1, view_2), _ = views_and_labels(batch=6)
    labels = np.array([1, -1, 3, -1, -1, 0])  # -1: unlabelled (stl10 "unlabelled", ...)
    # Training-mode logits (batch-norm statistics of this batch), as the step computes them.
    logits = model(tf.concat([view_1, view_2], 0), training=True)["logits_sup"].numpy()
    both = np.concatenate([labels, labels])
    kept = both >= 0
    log_softmax = logits[kept] - np.log(np.exp(logits[kept]).sum(-1, keepdims=True))
    expected_loss = -np.mean(log_softmax[np.arange(kept.sum()), both[kept]])
    expected_accuracy = np.mean(np.argmax(logits[kept], -1) == both[kept])
    logs = model.train_on_batch((view_1, view_2), labels, return_dict=True)
    assert np.isfinite(logs["contrast_loss"]) and np.isfinite(logs["loss"])
    np.testing.assert_allclose(logs["supervised_loss"], expected_loss, rtol=1e-4)
    assert logs["supervised_acc"] == pytest.approx(expected_accuracy)
