"""The collapse monitor: ~1/sqrt(d) for projections spread over the sphere, ~0 for collapsed ones."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.collapse import std_of_l2_normalized


def numpy_std_of_l2_normalized(z):
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    return np.mean(np.std(z, axis=0))  # population std (ddof=0), as tf.math.reduce_std


@pytest.mark.parametrize("dim", [16, 128])
def test_healthy_projections_give_one_over_sqrt_d(dim):
    z = np.random.default_rng(dim).normal(size=(8192, dim)).astype(np.float32)  # isotropic: uniform on sphere
    value = float(std_of_l2_normalized(z))
    assert value == pytest.approx(numpy_std_of_l2_normalized(z), rel=1e-5)
    assert value == pytest.approx(1 / np.sqrt(dim), rel=0.02)


def test_collapsed_projections_give_about_zero():
    rng = np.random.default_rng(0)
    direction = rng.normal(size=64)
    scales = rng.uniform(0.5, 5.0, size=(1024, 1))  # one direction at any length: still collapsed
    z = (scales * direction + 1e-3 * rng.normal(size=(1024, 64))).astype(np.float32)
    value = float(std_of_l2_normalized(z))
    assert value == pytest.approx(numpy_std_of_l2_normalized(z), rel=1e-4)
    assert value < 1e-3


def test_dimensional_collapse_lies_in_between():
    """Rows spread over 4 of 64 dimensions: std sqrt(1/4) on those, 0 elsewhere, mean 4/64 * 1/2."""
    z = np.zeros((8192, 64), np.float32)
    z[:, :4] = np.random.default_rng(1).normal(size=(8192, 4))
    assert float(std_of_l2_normalized(z)) == pytest.approx(4 / 64 * 0.5, rel=0.02)


def test_simclr_model_logs_it_each_step():
    from simclr_tf.models.heads import ProjectionHead
    from simclr_tf.models.resnet import ResNet
    from simclr_tf.models.simclr import SimCLRModel

    keras.utils.set_random_seed(0)
    model = SimCLRModel(ResNet(depth=18, width_multiplier=0.125, cifar_stem=True),
                        ProjectionHead(num_layers=2, out_dim=8))
    model.compile(optimizer=keras.optimizers.SGD(0.0))  # no update: the step's projections are reproducible
    views = tuple(tf.random.stateless_uniform([8, 16, 16, 3], [0, seed]) for seed in (1, 2))
    logs = model.train_on_batch(views, tf.zeros([8], tf.int64), return_dict=True)
    projections = model(tf.concat(views, axis=0), training=True)["proj_head_output"].numpy()
    assert logs["proj_std"] == pytest.approx(numpy_std_of_l2_normalized(projections), rel=1e-4)
