"""Tests of the projection head, the linear layer and the supervised head."""
import keras
import numpy as np
import pytest

from simclr_tf.models.heads import LinearLayer, ProjectionHead, SupervisedHead
from simclr_tf.models.resnet import ResNet
from tests import layer_checks
from tests.layer_checks import assert_config_covers_init, assert_config_round_trip, assert_save_load_equal


def features(batch=8, dim=16, seed=0):
    return np.random.default_rng(seed).normal(size=(batch, dim)).astype("float32")


@pytest.mark.parametrize("mode, num_layers, expected_layers, projection_dim", [
        ("none", 3, 0, 16), ("linear", 3, 1, 8), ("nonlinear", 2, 2, 8), ("nonlinear", 3, 3, 8)])
def test_output_shapes_and_number_of_layers(mode, num_layers, expected_layers, projection_dim):
    head = ProjectionHead(mode, num_layers=num_layers, out_dim=8, ft_proj_selector=-1, global_bn=False)
    projection, supervised_input = head(features(), training=True)
    assert len(head.linear_layers) == expected_layers
    assert tuple(projection.shape) == (8, projection_dim)
    np.testing.assert_array_equal(supervised_input, projection)  # selector -1: the projection itself
    assert head.compute_output_shape((8, 16)) == ((8, projection_dim), (8, projection_dim))


@pytest.mark.parametrize("mode", ["none", "linear", "nonlinear"])
def test_selector_zero_gives_the_encoder_features(mode):
    head = ProjectionHead(mode, out_dim=8, ft_proj_selector=0, global_bn=False)
    x = features()
    projection, supervised_input = head(x, training=False)
    np.testing.assert_array_equal(supervised_input, x)
    if mode == "none":
        np.testing.assert_array_equal(projection, x)


def test_nonlinear_forward_pass_by_hand():
    head = ProjectionHead("nonlinear", num_layers=3, out_dim=8, ft_proj_selector=2, global_bn=False)
    x = features()
    projection, supervised_input = head(x, training=False)
    relu = keras.ops.relu
    hidden_1 = relu(head.linear_layers[0](x))
    hidden_2 = relu(head.linear_layers[1](hidden_1))
    np.testing.assert_allclose(supervised_input, hidden_2, atol=1e-6)
    np.testing.assert_allclose(projection, head.linear_layers[2](hidden_2), atol=1e-6)
    assert (np.asarray(projection) < 0).any()  # no ReLU after the last layer


def test_selector_one_gives_the_first_layer_after_relu():
    head = ProjectionHead("nonlinear", num_layers=3, out_dim=8, ft_proj_selector=1, global_bn=False)
    x = features()
    _, supervised_input = head(x, training=True)
    first = keras.ops.relu(head.linear_layers[0](x, training=True))
    np.testing.assert_allclose(supervised_input, first, atol=1e-6)
    assert tuple(supervised_input.shape) == (8, 16)  # middle layers keep the input size
    assert (np.asarray(supervised_input) >= 0).all()


def test_layer_structure_middle_with_beta_and_relu_last_without():
    head = ProjectionHead("nonlinear", num_layers=3, out_dim=8, global_bn=False)
    head.build((None, 16))
    middle, last = head.linear_layers[:-1], head.linear_layers[-1]
    assert [layer.name for layer in head.linear_layers] == ["nl_0", "nl_1", "nl_2"]
    for layer in head.linear_layers:
        assert layer.use_bn and layer.dense.bias is None  # BN replaces the dense bias
    for layer in middle:
        assert layer.bn.center and layer.dense.units == 16
    assert not last.bn.center and last.dense.units == 8
    linear = ProjectionHead("linear", out_dim=8, global_bn=False)
    linear.build((None, 16))
    assert not linear.linear_layers[0].bn.center and linear.linear_layers[0].dense.bias is None


def test_num_layers_kept():
    head = ProjectionHead("nonlinear", num_layers=3)
    assert [head.num_layers_kept(s) for s in (0, 1, 2, 3, -1, -2, -4)] == [0, 1, 2, 3, 3, 2, 0]
    assert ProjectionHead("linear").num_layers_kept(-1) == 1
    assert ProjectionHead("none").num_layers_kept(-1) == 0
    with pytest.raises(ValueError, match="ft_proj_selector"):
        head.num_layers_kept(4)
    with pytest.raises(ValueError, match="ft_proj_selector"):
        ProjectionHead("linear", ft_proj_selector=2)


def test_invalid_mode():
    with pytest.raises(ValueError, match="none.*linear.*nonlinear"):
        ProjectionHead("mlp")


@pytest.mark.parametrize("kept", [0, 1, 2])
def test_truncated_head_keeps_first_layers_and_their_weights(kept):
    head = ProjectionHead("nonlinear", num_layers=3, out_dim=8, ft_proj_selector=kept, global_bn=False)
    x = features()
    _, expected = head(x, training=False)
    truncated = head.truncated(kept)
    assert len(truncated.linear_layers) == kept and truncated.ft_proj_selector == -1
    assert [layer.name for layer in truncated.linear_layers] == [f"nl_{j}" for j in range(kept)]
    projection, supervised_input = truncated(x, training=False)
    np.testing.assert_allclose(projection, expected, atol=1e-6)
    np.testing.assert_allclose(supervised_input, expected, atol=1e-6)
    assert_config_round_trip(truncated)
    with pytest.raises(ValueError, match="0..3"):
        head.truncated(4)


def test_linear_layer_units_bias_bn_and_init():
    x = features(batch=64, dim=32)
    same = LinearLayer(None, global_bn=False)
    assert tuple(same(x).shape) == (64, 32) and same.dense.bias is not None and same.bn is None
    kernel = np.asarray(same.dense.kernel)
    assert abs(kernel.std() - 0.01) < 0.001 and abs(kernel.mean()) < 0.001
    zero = LinearLayer(5, zero_init=True, global_bn=False)
    np.testing.assert_array_equal(zero(x), 0.0)
    with_bn = LinearLayer(5, use_bias=False, use_bn=True, global_bn=True, bn_momentum=0.99, bn_epsilon=1e-3)
    with_bn.build((None, 32))
    assert with_bn.dense.bias is None and not with_bn.bn.center
    assert (with_bn.bn.synchronized, with_bn.bn.momentum, with_bn.bn.epsilon) == (True, 0.99, 1e-3)
    assert not LinearLayer(5, use_bn=True, global_bn=False).bn  # made in build()
    with pytest.raises(ValueError, match="batch, features"):
        LinearLayer(5)(np.zeros((2, 3, 4), "float32"))


def test_batch_norm_paths_for_lars():
    head = ProjectionHead("nonlinear", num_layers=3, out_dim=8, global_bn=False)
    head.build((None, 16))
    for v in head.weights:
        is_bn = any(name in v.path for name in ("gamma", "beta", "moving_"))
        assert ("batch_normalization" in v.path) == is_bn, v.path
        assert "bias" not in v.path


def test_supervised_head():
    head = SupervisedHead(10)
    logits = head(features())
    assert head.name == "head_supervised" and tuple(logits.shape) == (8, 10)
    assert sorted(v.path for v in head.weights) == ["head_supervised/linear_layer/dense/bias",
                                                     "head_supervised/linear_layer/dense/kernel"]
    np.testing.assert_array_equal(SupervisedHead(3, zero_init=True)(features()), 0.0)


def test_configs_cover_init_and_round_trip():
    for obj in (LinearLayer(None, use_bias=False, use_bn=True, zero_init=True, global_bn=False),
                ProjectionHead("linear", out_dim=64, ft_proj_selector=-1, bn_momentum=0.99, global_bn=False),
                ProjectionHead("nonlinear", num_layers=2, layers_kept=1),
                SupervisedHead(7, zero_init=True)):
        assert_config_covers_init(obj)
        assert_config_round_trip(obj)


def test_save_load_resnet_with_heads(tmp_path):
    inputs = keras.Input((32, 32, 3))
    encoder_features = ResNet(18, 0.25, cifar_stem=True, global_bn=False)(inputs)
    head = ProjectionHead(out_dim=8, ft_proj_selector=1, global_bn=False)
    projection, supervised_input = head(encoder_features)
    logits = SupervisedHead(10)(supervised_input)
    model = keras.Model(inputs, [projection, logits])
    layer_checks.perturb_weights(model, seed=3)
    x = np.random.default_rng(4).uniform(size=(2, 32, 32, 3)).astype("float32")
    loaded = assert_save_load_equal(model, x, str(tmp_path / "model.keras"), atol=1e-5)
    assert sorted(v.path for v in loaded.weights) == sorted(v.path for v in model.weights)
