"""ResNet encoder tests: reference parameter counts, shapes, init, BN settings, names, serialization."""
import gc
import json
import os
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.models import resnet_blocks
from simclr_tf.models.resnet import ResNet, scaled_channels
from tests import layer_checks
from tests.layer_checks import assert_config_covers_init, assert_config_round_trip, assert_save_load_equal
from tests.subprocess_runner import run_with_devices

# Parameter counts of the reference encoder; the file's "how" says how they were obtained.
GOLDEN = json.load(open(os.path.join(os.path.dirname(__file__), "data", "resnet_param_counts.json")))
FAST_CONFIGS = {(18, 1, 0.0), (34, 1, 0.0), (50, 1, 0.0), (50, 1, 0.0625)}
LARS_EXCLUDED = re.compile("batch_normalization|bias")  # what the LARS optimizer keeps out of weight decay


def golden(fast):
    """Parametrizes over the golden configs that are (fast=True) or are not in FAST_CONFIGS."""
    rows = [r for r in GOLDEN["configs"]
            if ((r["depth"], r["width_multiplier"], r["sk_ratio"]) in FAST_CONFIGS) == fast]
    return pytest.mark.parametrize(
            "row", rows, ids=lambda r: f"R{r['depth']}_{r['width_multiplier']}x_sk{r['sk_ratio']}")


def images(size, batch=2, seed=0):
    return np.random.default_rng(seed).uniform(size=(batch, size, size, 3)).astype("float32")


def all_layers(model):
    return model._flatten_layers(include_self=False, recursive=True)


def bn_layers(model):
    return [layer for layer in all_layers(model) if isinstance(layer, keras.layers.BatchNormalization)]


def count(variables):
    return int(sum(np.prod(v.shape) for v in variables))


def tiny_cifar_resnet18(**kwargs):
    return ResNet(18, 0.25, cifar_stem=True, global_bn=False, **kwargs)


@golden(fast=True)
def test_param_counts_match_reference(row):
    model = ResNet(row["depth"], row["width_multiplier"], sk_ratio=row["sk_ratio"], global_bn=False)
    model.build((None, 32, 32, 3))
    assert model.count_params() == row["params"]
    assert count(model.trainable_weights) == row["trainable_params"]
    assert model.feature_dim == row["feature_dim"]


@pytest.mark.slow
@golden(fast=False)
def test_param_counts_match_reference_large(row):
    # Our build() creates every variable with its real shape, but deferred (not filled): the 16 configs
    # (4.1G parameters, up to 795M) take ~15 s instead of ~3 min of random init and ~4 GB of memory.
    with keras.StatelessScope(initialize_variables=False):
        model = ResNet(row["depth"], row["width_multiplier"], sk_ratio=row["sk_ratio"], global_bn=False)
        model.build((None, 32, 32, 3))
        assert count(model.weights) == row["params"]
        assert count(model.trainable_weights) == row["trainable_params"]
        assert model.feature_dim == row["feature_dim"]
    del model
    keras.backend.clear_session()
    gc.collect()


def test_golden_counts_agree_with_readme():
    for row in GOLDEN["configs"]:
        if "readme_params_millions" in row:
            assert round(row["params"] / 1e6) == row["readme_params_millions"], row


def test_cifar_stem_endpoint_shapes():
    model = tiny_cifar_resnet18()
    endpoints = model.call_with_endpoints(images(32))
    shapes = {name: tuple(value.shape) for name, value in endpoints.items()}
    assert shapes == {
            "initial_conv": (2, 32, 32, 16),
            "block_group1": (2, 32, 32, 16),
            "block_group2": (2, 16, 16, 32),
            "block_group3": (2, 8, 8, 64),
            "block_group4": (2, 4, 4, 128),
            "final_avg_pool": (2, 128),
    }
    assert model.feature_dim == 128
    np.testing.assert_allclose(model(images(32)), endpoints["final_avg_pool"], atol=1e-6)


def test_imagenet_stem_endpoint_shapes():
    model = ResNet(50, 0.25, global_bn=False)
    shapes = {name: tuple(value.shape) for name, value in model.call_with_endpoints(images(64)).items()}
    assert shapes == {
            "initial_conv": (2, 32, 32, 16),
            "initial_max_pool": (2, 16, 16, 16),
            "block_group1": (2, 16, 16, 64),
            "block_group2": (2, 8, 8, 128),
            "block_group3": (2, 4, 4, 256),
            "block_group4": (2, 2, 2, 512),
            "final_avg_pool": (2, 512),
    }
    assert model.feature_dim == 512


def test_imagenet_stem_max_pool_by_hand():
    # Fresh BN in inference mode is x / sqrt(1 + eps); then ReLU and a 3x3 stride-2 SAME max-pool.
    model = ResNet(18, 0.25, global_bn=False)
    endpoints = model.call_with_endpoints(images(33))
    activated = np.maximum(np.asarray(endpoints["initial_conv"]) / np.sqrt(1 + 1e-5), 0)
    assert activated.shape == (2, 17, 17, 16)
    padded = np.pad(activated, [(0, 0), (1, 1), (1, 1), (0, 0)])  # SAME for 17 -> 9: one on each side
    expected = np.stack([np.stack([padded[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3].max(axis=(1, 2))
                                   for j in range(9)], axis=1) for i in range(9)], axis=1)
    np.testing.assert_allclose(endpoints["initial_max_pool"], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sk_ratio", [0.0, 0.0625])
def test_imagenet_stem_takes_small_and_odd_sizes(sk_ratio):
    model = ResNet(18, 0.25, sk_ratio=sk_ratio, global_bn=False)  # sk_ratio: ResNet-D stem and shortcuts
    for size in (32, 33):  # 33 px gives odd sizes (17, 9, 5, 3) in every stage
        assert tuple(model(images(size)).shape) == (2, 128)


def test_strided_conv_pads_symmetrically():
    # 3x3 stride 2 on 4x4: fixed padding puts one zero row/column on each side, so the top-left output
    # sees 2x2 ones; SAME padding would pad only bottom/right and see 3x3 ones.
    conv = resnet_blocks.FixedPaddingConv2D(1, 3, strides=2)
    conv.build((1, 4, 4, 1))
    conv.kernel.assign(np.ones((3, 3, 1, 1), "float32"))
    out = np.asarray(conv(np.ones((1, 4, 4, 1), "float32")))[0, :, :, 0]
    np.testing.assert_allclose(out, [[4, 6], [6, 9]])


def test_conv_init_is_fan_in_truncated_normal():
    model = ResNet(18, 0.25, global_bn=False)  # stem kernel 7x7x3x16: fan_in 147, fan_out 784
    model.build((None, 32, 32, 3))
    kernel = np.asarray(model.stem.convs[0].kernel)
    assert kernel.shape == (7, 7, 3, 16)
    assert abs(kernel.std() / np.sqrt(1.0 / 147) - 1) < 0.1
    assert np.abs(kernel).max() <= 2 * np.sqrt(1.0 / 147) / 0.87962566 + 1e-6  # truncated at 2 stddev


def test_selective_kernel_and_squeeze_excite_variants_run():
    model = ResNet(50, 0.25, sk_ratio=0.0625, se_ratio=0.25, global_bn=False)
    features = model(images(64), training=True)
    assert tuple(features.shape) == (2, 512) and np.isfinite(features).all()
    assert [conv.filters for conv in model.stem.convs] == [8, 8, 16]  # ResNet-D stem: w/2, w/2, w
    for group in model.block_groups:
        for block in group.blocks:
            assert isinstance(block.selective_kernel, resnet_blocks.SelectiveKernelConv2D)
            assert block.selective_kernel.attention_reduce.filters == 32  # max(filters * sk_ratio, 32)
            assert block.squeeze_excite.reduce.filters == max(1, int(block.filters * 0.25))
        shortcut = group.blocks[0].shortcut
        assert shortcut.resnet_d and shortcut.conv.strides == 1
    basic = ResNet(18, 0.25, sk_ratio=0.0625, se_ratio=0.25, global_bn=False)
    assert tuple(basic(images(32)).shape) == (2, 128)
    assert basic.block_groups[1].blocks[0].shortcut.resnet_d


def test_fractional_width():
    assert [scaled_channels(c, w) for c in (64, 512) for w in (1, 2, 3)] == [64, 128, 192, 512, 1024, 1536]
    model = ResNet(18, 0.3, cifar_stem=True, global_bn=False)
    assert [group.filters for group in model.block_groups] == [19, 38, 77, 154]
    assert model.stem.filters == 19 and model.feature_dim == 154
    assert tuple(model(images(32)).shape) == (2, 154)
    assert ResNet(50, 0.5, global_bn=False).feature_dim == 1024


def test_invalid_depth_names_allowed_depths():
    with pytest.raises(ValueError, match="18, 34, 50, 101, 152, 200"):
        ResNet(depth=42)


def test_last_bn_of_each_block_starts_at_zero_so_block_is_its_shortcut():
    model = ResNet(50, 0.25, global_bn=False)
    model.build((None, 32, 32, 3))
    for group in model.block_groups:
        for block in group.blocks:
            np.testing.assert_array_equal(block.bn_3.gamma, 0.0)
            other_bns = [block.bn_1, block.bn_2] + ([block.shortcut.bn] if block.shortcut else [])
            for bn in other_bns:
                np.testing.assert_array_equal(bn.gamma, 1.0)
    small = tiny_cifar_resnet18()
    small.build((None, 32, 32, 3))
    block = small.block_groups[1].blocks[1]  # identity shortcut
    np.testing.assert_array_equal(block.bn_2.gamma, 0.0)
    x = np.random.default_rng(1).normal(size=(2, 16, 16, 32)).astype("float32")
    np.testing.assert_allclose(block(x, training=False), np.maximum(x, 0), atol=1e-6)


@pytest.mark.parametrize("global_bn", [True, False])
def test_global_bn_gives_synchronized_batch_norm(global_bn):
    model = ResNet(50, 0.25, sk_ratio=0.0625, global_bn=global_bn, bn_momentum=0.99, bn_epsilon=1e-3)
    model.build((None, 32, 32, 3))
    layers = bn_layers(model)
    assert len(layers) == 3 + 16 * 4 + 4  # ResNet-D stem, 16 blocks x (2 convs + 2 in SK), 4 shortcuts
    settings = {(layer.synchronized, layer.momentum, layer.epsilon) for layer in layers}
    assert settings == {(global_bn, 0.99, 1e-3)}


@pytest.mark.parametrize("kwargs", [dict(depth=50, sk_ratio=0.0625, se_ratio=0.25),
                                    dict(depth=18, cifar_stem=True)])
def test_batch_norm_and_bias_naming_for_lars(kwargs):
    model = ResNet(width_multiplier=0.25, global_bn=False, **kwargs)
    model.build((None, 32, 32, 3))
    bn_paths = {v.path for layer in bn_layers(model) for v in layer.weights}
    kernel_paths = {v.path for v in model.weights if v.path.endswith("/kernel")}
    bias_paths = {v.path for v in model.weights if v.path.endswith("/bias")}
    assert bn_paths and kernel_paths
    assert all("batch_normalization" in path for path in bn_paths)
    assert not any(LARS_EXCLUDED.search(path) for path in kernel_paths)
    assert {v.path for v in model.weights if LARS_EXCLUDED.search(v.path)} == bn_paths | bias_paths
    assert bool(bias_paths) == bool(kwargs.get("se_ratio"))  # only squeeze-excite convs have biases
    assert len({v.path for v in model.weights}) == len(model.weights)  # paths are unique


def test_stable_names_and_layers_up_to_block():
    model = tiny_cifar_resnet18()
    model.build((None, 32, 32, 3))
    assert [group.name for group in model.block_groups] == [f"block_group{i}" for i in range(1, 5)]
    assert model.weights[0].path == "resnet18/stem/initial_conv/kernel"
    assert model.layers_up_to_block(-1) == []
    assert model.layers_up_to_block(0) == [model.stem]
    assert model.layers_up_to_block(2) == [model.stem] + model.block_groups[:2]
    assert model.layers_up_to_block(4) == [model.stem] + model.block_groups
    with pytest.raises(ValueError, match="-1..4"):
        model.layers_up_to_block(5)


def test_config_covers_init_and_round_trips():
    model = ResNet(50, 0.25, sk_ratio=0.0625, se_ratio=0.25, global_bn=False, bn_momentum=0.99)
    sublayers = [model.stem, model.block_groups[0], model.block_groups[0].blocks[0],
                 model.block_groups[0].blocks[0].shortcut, model.block_groups[0].blocks[0].selective_kernel,
                 model.block_groups[0].blocks[0].squeeze_excite, model.stem.convs[0],
                 tiny_cifar_resnet18().block_groups[0].blocks[1]]
    for obj in [model] + sublayers:
        assert_config_covers_init(obj)
        assert_config_round_trip(obj)
    assert not ResNet.from_config(model.get_config()).weights  # unbuilt; builds on first call


def test_save_load_gives_equal_outputs(tmp_path):
    model = tiny_cifar_resnet18(se_ratio=0.25)
    model.build((None, 32, 32, 3))
    layer_checks.perturb_weights(model, seed=2)
    loaded = assert_save_load_equal(model, images(32), str(tmp_path / "resnet.keras"), atol=1e-5)
    assert [v.path for v in loaded.weights] == [v.path for v in model.weights]
    endpoints = loaded.call_with_endpoints(images(32))
    expected = model.call_with_endpoints(images(32))["block_group2"]
    np.testing.assert_allclose(endpoints["block_group2"], expected, rtol=1e-5, atol=1e-5)


SYNC_BN_SNIPPET = """
import keras
from simclr_tf.models.resnet import ResNet
x = np.random.default_rng(0).uniform(size=(8, 32, 32, 3)).astype("float32")
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
result = {}
for global_bn in (True, False):
    reference = ResNet(18, 0.25, cifar_stem=True, global_bn=global_bn, name="reference")
    reference.build((None, 32, 32, 3))
    rng = np.random.default_rng(1)
    for v in reference.weights:  # non-zero last gammas, so every BN of the network matters
        v.assign(np.asarray(v) + rng.normal(scale=0.1, size=v.shape).astype("float32"))
    full_batch = reference(x, training=True)
    with strategy.scope():
        model = ResNet(18, 0.25, cifar_stem=True, global_bn=global_bn)
        model.build((None, 32, 32, 3))
    model.set_weights(reference.get_weights())
    halves = strategy.experimental_distribute_values_from_function(
            lambda ctx: x[4 * ctx.replica_id_in_sync_group:4 * (ctx.replica_id_in_sync_group + 1)])
    per_replica = strategy.run(lambda images: model(images, training=True), args=(halves,))
    split = np.concatenate([t.numpy() for t in strategy.experimental_local_results(per_replica)])
    result[str(global_bn)] = float(np.abs(split - full_batch.numpy()).max())
report(result)
"""


def test_global_bn_under_mirrored_strategy_uses_the_global_batch():
    # Two replicas with half the batch each: synchronized BN normalizes with the statistics of the whole
    # batch, so outputs equal the single-device full-batch ones; per-replica BN does not.
    max_diff = run_with_devices(SYNC_BN_SNIPPET, num_devices=2)
    assert max_diff["True"] < 1e-4
    assert max_diff["False"] > 1e-3


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
@pytest.mark.parametrize("synchronized", [True, False])
def test_fused_batch_norm_matches_keras_batch_norm(policy, synchronized):
    # The fused kernel (one replica: a synchronized layer's statistics are this replica's) against the
    # Keras layer: outputs, gradients and moving statistics, training and inference.
    x = tf.constant(np.random.default_rng(3).normal(1.0, 2.0, size=(6, 5, 4, 7)).astype("float32"))
    layers = [resnet_blocks.BatchNormalization(momentum=0.9, epsilon=1e-5, synchronized=synchronized,
                                                    dtype=policy),
              keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, synchronized=synchronized,
                                              dtype=policy)]
    results = []
    for layer in layers:
        layer.build(x.shape)
        layer.gamma.assign(np.linspace(0.5, 1.5, 7))
        layer.beta.assign(np.linspace(-1.0, 1.0, 7))
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(tf.cast(y, tf.float32) * tf.sin(x))
        gradients = tape.gradient(loss, [x, layer.gamma, layer.beta])
        assert y.dtype == layer.compute_dtype
        results.append([y, *gradients, layer.moving_mean, layer.moving_variance, layer(x, training=False)])
    tolerance = 1e-5 if policy == "float32" else 2e-2  # bfloat16 outputs carry 8 bits
    for fused, plain in zip(*results):
        np.testing.assert_allclose(np.asarray(tf.cast(fused, tf.float32)),
                                   np.asarray(tf.cast(plain, tf.float32)), rtol=tolerance, atol=tolerance)
    # Moving statistics moved from (0, 1) towards the biased float32 moments of the layer's input (which
    # under mixed_bfloat16 is x rounded to bfloat16).
    seen = np.asarray(tf.cast(tf.cast(x, layers[0].compute_dtype), tf.float32)).astype(np.float64)
    np.testing.assert_allclose(results[0][4], 0.1 * seen.mean(axis=(0, 1, 2)), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(results[0][5], 0.9 + 0.1 * seen.var(axis=(0, 1, 2)), rtol=1e-5)


def test_resnet_batch_norms_are_the_fused_layer():
    layers = bn_layers(tiny_cifar_resnet18())
    assert layers and all(isinstance(layer, resnet_blocks.BatchNormalization) for layer in layers)
    assert_config_covers_init(layers[0])
    assert_config_round_trip(layers[0])
