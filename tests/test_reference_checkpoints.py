"""Loading reference SimCLR tf2 checkpoints by name: names, detection, golden outputs, refusal when partial.

The golden files tests/data/reference_tf{1,2}_*.json hold the reference's checkpoint keys and shapes, the rule that
sets every variable from its key, and the reference model's outputs under that rule (their "how" says how
they were produced). Here a checkpoint with exactly those keys is written with the same rule, loaded with
`load_reference_checkpoint`, and our outputs are compared with the reference's.
"""
import hashlib
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.persistence.reference.checkpoints import build_model_for, load_reference_checkpoint
from simclr_tf.persistence.reference.names import detect_architecture, reference_weight_names

DATA = os.path.join(os.path.dirname(__file__), "data")
CONFIGS = ["r18_cifar", "r50_1x", "r50_1x_sk1"]


def golden(name, version="tf2"):
    with open(os.path.join(DATA, f"reference_{version}_{name}.json")) as f:
        return json.load(f)


def rule_value(key, shape):
    """The golden files' rule (their "rule" field): a value from the key alone."""
    seed = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)
    value = np.random.default_rng(seed).standard_normal(shape)
    leaf = key.rsplit("/", 1)[-1]
    if leaf == "kernel":
        value = value / np.sqrt(np.prod(shape[:-1]))
    elif leaf == "gamma":
        value = 1.0 + 0.1 * value
    elif leaf == "moving_variance":
        value = 0.5 + 0.5 * np.abs(value)
    else:
        value = 0.1 * value
    return value.astype(np.float32)


def write_checkpoint(prefix, tensors):
    """Writes {key: array} as a TF checkpoint under exactly these keys (as tf.train.Checkpoint names them)."""
    keys = sorted(tensors)
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=keys, shape_and_slices=[""] * len(keys),
                      tensors=[tf.constant(tensors[key]) for key in keys])
    return prefix


def reference_tensors(data, drop=()):
    """{checkpoint key with suffix: rule value} for every key of the reference checkpoint."""
    suffix = data["key_suffix"]
    tensors = {}
    for key, shape in data["checkpoint_shapes"].items():
        if key in drop:
            continue
        tensors[key + suffix] = (np.int64(7) if key == "global_step" else rule_value(key, tuple(shape)))
    return tensors


def golden_input(data):
    size = data["config"]["image_size"]
    return np.random.default_rng(0).uniform(size=(2, size, size, 3)).astype(np.float32)


def assert_matches_golden(outputs, expected):
    for name, summary in expected.items():
        ours = np.asarray(outputs[name], np.float64)
        scale = max(1.0, float(np.max(np.abs(summary["first16"]))))
        np.testing.assert_allclose(ours[:, :16], summary["first16"], rtol=0, atol=1e-4 * scale,
                                   err_msg=f"{name}: first 16 values")
        width = ours.shape[1]
        np.testing.assert_allclose(ours.sum(1), summary["row_sums"], rtol=0, atol=1e-4 * scale * np.sqrt(width),
                                   err_msg=f"{name}: row sums")
        np.testing.assert_allclose(np.sqrt((ours ** 2).sum(1)), summary["row_l2"], rtol=1e-5,
                                   err_msg=f"{name}: row L2 norms")


@pytest.mark.parametrize("name", CONFIGS)
def test_detect_architecture(name):
    data = golden(name)
    config = data["config"]
    arch = detect_architecture(data["checkpoint_shapes"])
    assert {key: arch[key] for key in ("depth", "width_multiplier", "cifar_stem", "num_proj_layers",
                                       "proj_out_dim", "num_classes")} == {
            key: config[key] for key in ("depth", "width_multiplier", "cifar_stem", "num_proj_layers",
                                         "proj_out_dim", "num_classes")}
    assert arch["sk_ratio"] == config["sk_ratio"] and arch["se_ratio"] == 0.0
    saved_model_shapes = {key: data["checkpoint_shapes"][name] for key, name in data["saved_model_keys"].items()}
    assert {k: v for k, v in detect_architecture(saved_model_shapes).items() if k != "assumed"} == {
            k: v for k, v in arch.items() if k != "assumed"}


@pytest.mark.parametrize("name", CONFIGS)
def test_tf2_checkpoint_loads_and_matches_reference_outputs(tmp_path, name):
    data = golden(name)
    prefix = write_checkpoint(str(tmp_path / "ckpt-7"), reference_tensors(data))
    model, report = load_reference_checkpoint(prefix)
    assert report.complete and report.layout == "tf2_checkpoint", report.summary()
    assert report.assigned == len(data["checkpoint_shapes"]) - 1  # all but global_step
    assert report.ignored == ["global_step" + data["key_suffix"]]
    assert_matches_golden(model(golden_input(data), training=False), data["outputs"])


@pytest.mark.parametrize("name", CONFIGS)
def test_saved_model_variables_load_and_match_reference_outputs(tmp_path, name):
    data = golden(name)
    suffix = data["key_suffix"]
    tensors = {saved_key + suffix: rule_value(key, tuple(data["checkpoint_shapes"][key]))
               for saved_key, key in data["saved_model_keys"].items()}
    os.makedirs(tmp_path / "saved_model" / "variables")
    write_checkpoint(str(tmp_path / "saved_model" / "variables" / "variables"), tensors)
    model, report = load_reference_checkpoint(str(tmp_path / "saved_model"))
    assert report.complete and report.layout == "tf2_saved_model", report.summary()
    assert report.assigned == len(data["saved_model_keys"])
    assert_matches_golden(model(golden_input(data), training=False), data["outputs"])


def test_names_cover_the_reference_checkpoint_exactly():
    data = golden("r50_1x_sk1")
    model = build_model_for(detect_architecture(data["checkpoint_shapes"]))
    ours = {key: list(variable.shape) for key, variable, _ in reference_weight_names(model)}
    theirs = {key: shape for key, shape in data["checkpoint_shapes"].items() if key != "global_step"}
    assert ours == theirs


def test_missing_variable_is_refused_by_name_and_allowed_when_partial(tmp_path):
    data = golden("r18_cifar")
    missing = "model/resnet_model/block_groups/1/layers/0/shortcut_layers/1/bn/moving_variance"
    prefix = write_checkpoint(str(tmp_path / "ckpt-1"), reference_tensors(data, drop={missing}))
    with pytest.raises(ValueError, match="allow_partial=True") as error:
        load_reference_checkpoint(prefix)
    assert missing in str(error.value)
    model, report = load_reference_checkpoint(prefix, allow_partial=True)
    assert not report.complete and report.unplaced == []
    assert len(report.unset) == 1 and missing in report.unset[0]
    assert report.assigned == len(data["checkpoint_shapes"]) - 2


def test_extra_and_misshapen_variables_are_reported(tmp_path):
    data = golden("r18_cifar")
    tensors = reference_tensors(data)
    suffix = data["key_suffix"]
    tensors["model/extra_layer/kernel" + suffix] = np.zeros([3], np.float32)
    bad = "model/supervised_head/linear_layer/dense/bias"
    tensors[bad + suffix] = np.zeros([11], np.float32)
    tensors["model/resnet_model/initial_conv_relu_max_pool/0/conv2d/kernel/.OPTIMIZER_SLOT/optimizer/Momentum"
            + suffix] = np.zeros([3, 3, 3, 64], np.float32)
    prefix = write_checkpoint(str(tmp_path / "ckpt-2"), tensors)
    with pytest.raises(ValueError, match="extra_layer"):
        load_reference_checkpoint(prefix)
    _, report = load_reference_checkpoint(prefix, allow_partial=True)
    assert report.unplaced == ["model/extra_layer/kernel" + suffix]
    assert report.shape_mismatches == [(bad + suffix, (11,), (10,))]
    assert len(report.ignored) == 2


def test_not_a_reference_checkpoint_names_the_problem(tmp_path):
    prefix = write_checkpoint(str(tmp_path / "ckpt-3"), {"encoder/kernel": np.zeros([2], np.float32)})
    with pytest.raises(ValueError, match="not a checkpoint of the reference"):
        load_reference_checkpoint(prefix)
    with pytest.raises(FileNotFoundError, match="no .*index"):
        load_reference_checkpoint(str(tmp_path / "nothing"))


@pytest.mark.parametrize("name", ["r18_cifar", "r50_1x_sk1"])
def test_tf1_checkpoint_loads_and_matches_reference_outputs(tmp_path, name):
    data = golden(name, "tf1")
    tensors = reference_tensors(data)
    tensors["global_step"] = np.int64(7)
    tensors["base_model/conv2d/kernel/Momentum"] = np.zeros(data["checkpoint_shapes"]["base_model/conv2d/kernel"],
                                                            np.float32)
    prefix = write_checkpoint(str(tmp_path / "model.ckpt-7"), tensors)
    model, report = load_reference_checkpoint(prefix)
    assert report.complete and report.layout == "tf1_checkpoint", report.summary()
    assert report.assigned == len(data["checkpoint_shapes"])
    assert report.ignored == ["base_model/conv2d/kernel/Momentum", "global_step"]
    config = data["config"]
    assert {key: report.architecture[key] for key in config if key != "image_size"} == {
            key: value for key, value in config.items() if key != "image_size"}
    assert_matches_golden(model(golden_input(data), training=False), data["outputs"])


def test_tf1_hub_module_variables_load(tmp_path):
    data = golden("r18_cifar", "tf1")
    os.makedirs(tmp_path / "hub" / "variables")
    write_checkpoint(str(tmp_path / "hub" / "variables" / "variables"), reference_tensors(data))
    missing = "base_model/batch_normalization_20/moving_mean"
    model, report = load_reference_checkpoint(str(tmp_path / "hub"))
    assert report.complete and report.layout == "tf1_checkpoint", report.summary()
    assert_matches_golden(model(golden_input(data), training=False), data["outputs"])
    write_checkpoint(str(tmp_path / "partial"), reference_tensors(data, drop={missing}))
    with pytest.raises(ValueError, match=missing):
        load_reference_checkpoint(str(tmp_path / "partial"))


@pytest.mark.slow
def test_run_py_converts_a_reference_checkpoint_into_keras_files(tmp_path):
    import keras

    from tests.test_cli import run_cli
    data = golden("r18_cifar")
    prefix = write_checkpoint(str(tmp_path / "ckpt-7"), reference_tensors(data))
    out = tmp_path / "converted"
    proc = run_cli("--mode=convert", f"--checkpoint={prefix}", f"--model_dir={out}",
                   f"--image_size={data['config']['image_size']}")
    assert "Converted" in proc.stdout and "tf2_checkpoint" in proc.stdout
    model = keras.saving.load_model(str(out / "model.keras"))
    assert_matches_golden(model(golden_input(data), training=False), data["outputs"])
    encoder = keras.saving.load_model(str(out / "encoder.keras"))
    np.testing.assert_allclose(encoder(golden_input(data), training=False),
                               model(golden_input(data), training=False)["final_avg_pool"], atol=1e-5)
    assert json.load(open(out / "conversion.json"))["architecture"]["depth"] == 18
    serving = tf.saved_model.load(str(out / "saved_model" / "0")).signatures["serving_default"]
    assert_matches_golden(serving(tf.constant(golden_input(data))), data["outputs"])


def test_convert_without_checkpoint_is_refused():
    from tests.test_cli import run_cli
    proc = run_cli("--mode=convert", "--model_dir=/tmp/unused_convert", check=False)
    assert proc.returncode != 0 and "--checkpoint=PATH" in proc.stderr


# The released SimCLR v2 models (depth, width, selective kernels) and SimCLR v1 ResNet-50 1x/2x/4x.
RELEASED_V2 = [(depth, width, sk) for depth in (50, 101, 152) for width in (1, 2) for sk in (False, True)]
RELEASED_V2.append((152, 3, True))
RELEASED_V1 = [(50, width, False) for width in (1, 2, 4)]


def _zeros(self, shape, dtype=None):
    return keras.ops.zeros(shape, dtype=dtype)


def names_and_shapes_of_release(depth, width, sk, with_projection_head):
    """{TF2 key: shape}, {TF1 key: shape} of a released model's layout, from our model's reference names.

    The weights are zeros (initializers patched): only names and shapes matter, and the largest model has
    795M parameters.
    """
    from unittest import mock

    from simclr_tf.models.heads import ProjectionHead
    from simclr_tf.models.resnet import ResNet
    from simclr_tf.models.simclr import SimCLRModel
    from simclr_tf.persistence.reference.names import VALUE_SUFFIX, reference_tf1_weight_names, reference_weight_names
    with mock.patch.object(keras.initializers.VarianceScaling, "__call__", _zeros), \
            mock.patch.object(keras.initializers.RandomNormal, "__call__", _zeros):
        encoder = ResNet(depth, width, sk_ratio=0.0625 if sk else 0.0, global_bn=False)
        head = ProjectionHead(num_layers=3, out_dim=128, global_bn=False)
        model = SimCLRModel(encoder, head, num_classes=1000)
        encoder.build((None, 224, 224, 3))
        head.build((None, encoder.feature_dim))
        model.supervised_head.build((None, encoder.feature_dim))
    keep = (lambda key: True) if with_projection_head else (
        lambda key: "projection_head" not in key and "head_contrastive" not in key)
    tf2 = {key + VALUE_SUFFIX: list(v.shape) for key, v, _ in reference_weight_names(model) if keep(key)}
    tf1 = {key: list(v.shape) for key, v, _ in reference_tf1_weight_names(model) if keep(key)}
    return tf2, tf1


@pytest.mark.slow
@pytest.mark.parametrize("depth, width, sk, version", [(*c, "v2") for c in RELEASED_V2]
                         + [(*c, "v1") for c in RELEASED_V1])
def test_every_released_layout_is_recognized(depth, width, sk, version):
    with_head = version == "v2"
    for shapes in names_and_shapes_of_release(depth, width, sk, with_head):
        arch = detect_architecture(shapes)
        assert (arch["depth"], arch["width_multiplier"], arch["sk_ratio"] > 0, arch["num_classes"],
                arch["cifar_stem"]) == (depth, width, sk, 1000, False)
        if with_head:
            assert (arch["num_proj_layers"], arch["proj_out_dim"]) == (3, 128)
        else:
            assert arch["num_proj_layers"] == 0 or arch["proj_head_mode"] == "none", arch


def test_initial_weights_follow_the_reference_initializers_layer_by_layer():
    # tests/data/reference_init_r18_cifar.json: mean and std of every initial weight of the reference's own
    # ResNet-18 (CIFAR stem) + 3-layer head + probe ("how" in the file). Ours, at another seed, must have
    # the same distribution per weight: conv kernels fan-in truncated normal, dense kernels N(0, 0.01),
    # biases and betas 0, gammas 1 except 0 for the last BN of every residual branch.
    from simclr_tf.config import ModelConfig
    from simclr_tf.models.simclr import build_simclr_model

    golden = json.load(open(os.path.join(DATA, "reference_init_r18_cifar.json")))["weights"]
    cfg = ModelConfig(resnet_depth=18, width_multiplier=1, proj_head_mode="nonlinear", num_proj_layers=3,
                      proj_out_dim=128, global_bn=False)
    model = build_simclr_model(cfg, image_size=32, num_classes=10, temperature=0.5, hidden_norm=True,
                               weight_decay=0.0, optimizer_name="lars", seed=1)
    ours = {w.path.split("/", 1)[1]: w.numpy().astype(np.float64) for w in model.weights if "moving" not in w.path}
    assert sorted(ours) == sorted(golden)
    for path, value in ours.items():
        want = golden[path]
        assert list(value.shape) == want["shape"], path
        if want["std"] == 0.0:  # a constant initializer: the same constant
            np.testing.assert_array_equal(value, want["mean"], err_msg=path)
            continue
        # Sampling noise of a std estimate from n draws is about std / sqrt(2n); the smallest kernel has 1728.
        assert abs(value.std() / want["std"] - 1.0) < 0.08, (path, value.std(), want["std"])
        assert abs(value.mean() - want["mean"]) < 6 * want["std"] / np.sqrt(value.size), path
