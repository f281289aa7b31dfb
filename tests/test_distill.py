"""Distillation: the loss formula, labelled examples only in the labelled term, the teacher never trains,
and a student moves toward its teacher's predictions."""
import keras
import numpy as np
import tensorflow as tf

from simclr_tf.models.classifier import build_classifier
from simclr_tf.models.distill import DistillationModel, distillation_loss, labelled_loss
from simclr_tf.models.heads import ProjectionHead
from simclr_tf.models.resnet import ResNet
from simclr_tf.models.simclr import SimCLRModel
from tests import layer_checks

SIZE = 16
NUM_CLASSES = 4


def classifier(seed, width=0.125):
    keras.utils.set_random_seed(seed)
    base = SimCLRModel(ResNet(depth=18, width_multiplier=width, cifar_stem=True),
                       ProjectionHead(num_layers=2, out_dim=8))
    base(tf.zeros([1, SIZE, SIZE, 3]))
    layer_checks.perturb_weights(base, seed)
    return build_classifier(base, NUM_CLASSES, SIZE, ft_proj_selector=1, optimizer_name="momentum")


def test_distillation_loss_is_the_softened_cross_entropy():
    rng = np.random.default_rng(0)
    teacher, student = rng.normal(size=(2, 6, 5))
    for temperature in (1.0, 2.5):
        t = np.exp(teacher / temperature)
        t /= t.sum(-1, keepdims=True)
        s = student / temperature
        log_s = s - np.log(np.exp(s).sum(-1, keepdims=True))
        expected = np.mean(-(t * log_s).sum(-1))
        np.testing.assert_allclose(distillation_loss(teacher, student, temperature), expected, rtol=1e-5)
    # Minimal when the student predicts what the teacher does: the teacher's entropy.
    same = distillation_loss(teacher, teacher, 1.0)
    assert same < distillation_loss(teacher, student, 1.0)


def test_labelled_loss_ignores_unknown_labels():
    logits = tf.constant([[2.0, 0.0], [0.0, 2.0], [5.0, -5.0]])
    labels = tf.constant([0, -1, 1], tf.int64)
    expected = np.mean([np.log(1 + np.exp(-2.0)), np.log(1 + np.exp(10.0))])
    np.testing.assert_allclose(labelled_loss(labels, logits), expected, rtol=1e-5)
    assert float(labelled_loss(tf.constant([-1, -1], tf.int64), logits[:2])) == 0.0


def tinted_images(count, seed):
    """Noise images tinted by their class (red, green, blue, grey): a task a tiny ResNet learns fast."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, count)
    tints = np.array([[1, .3, .3], [.3, 1, .3], [.3, .3, 1], [.6, .6, .6]], np.float32)[labels]
    images = 0.5 * rng.random((count, SIZE, SIZE, 3)) + 0.5 * tints[:, None, None, :]
    return images.astype(np.float32), labels


def test_student_moves_toward_the_teacher_and_the_teacher_does_not_change():
    teacher = classifier(seed=1)
    teacher.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    teacher.fit(*tinted_images(64, seed=0), epochs=15, batch_size=32, verbose=0)
    images, _ = tinted_images(64, seed=1)  # unlabelled images the teacher has not seen
    teacher_labels = teacher.predict(images, verbose=0)["logits_sup"].argmax(-1)
    assert len(set(teacher_labels)) == NUM_CLASSES  # a teacher worth distilling
    teacher_before = [np.array(v) for v in teacher.weights]
    model = DistillationModel(classifier(seed=2), teacher, temperature=1.0)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    start = model.evaluate(images, teacher_labels, verbose=0, return_dict=True)["teacher_agreement"]
    history = model.fit(images, -np.ones(64, np.int64), epochs=15, batch_size=32, verbose=0).history
    end = model.evaluate(images, teacher_labels, verbose=0, return_dict=True)["teacher_agreement"]
    losses = history["distill_loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.5 * losses[0]
    assert end > max(start, 1.0 / NUM_CLASSES) + 0.25, (start, end)  # chance is 0.25
    assert not teacher.trainable_variables and not [v for v in model.trainable_variables
                                                     if any(v is w for w in teacher.weights)]
    for before, after in zip(teacher_before, teacher.weights):  # BN statistics included
        np.testing.assert_array_equal(before, after)


def test_label_weight_mixes_in_the_labelled_loss():
    teacher, student = classifier(seed=1), classifier(seed=2)
    model = DistillationModel(student, teacher, temperature=2.0, label_weight=0.3)
    model.compile(optimizer=keras.optimizers.SGD(0.0))  # no update: the logs are the loss at these weights
    images = np.random.default_rng(1).random((8, SIZE, SIZE, 3), dtype=np.float32)
    labels = np.array([0, 1, 2, 3, -1, -1, 0, 1], np.int64)
    logs = model.train_on_batch(images, labels, return_dict=True)
    student_logits = student(images, training=True)["logits_sup"]
    teacher_logits = teacher(images)["logits_sup"]
    distill = distillation_loss(teacher_logits, student_logits, 2.0)
    supervised = labelled_loss(labels, student_logits)
    np.testing.assert_allclose(logs["distill_loss"], distill, rtol=1e-4)
    np.testing.assert_allclose(logs["supervised_loss"], supervised, rtol=1e-4)
    np.testing.assert_allclose(logs["loss"], 0.7 * distill + 0.3 * supervised, rtol=1e-4)


def test_config_and_save_load(tmp_path):
    model = DistillationModel(classifier(1), classifier(2), temperature=2.0, label_weight=0.5)
    layer_checks.assert_config_covers_init(model)
    images = np.random.default_rng(2).random((4, SIZE, SIZE, 3), dtype=np.float32)
    loaded = layer_checks.assert_save_load_equal(model, images, str(tmp_path / "d.keras"), atol=1e-5)
    assert loaded.temperature == 2.0 and loaded.label_weight == 0.5
