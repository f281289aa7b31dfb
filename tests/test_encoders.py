"""Any Keras encoder: our ResNet, a keras.applications model and a keras-hub backbone pretrain, fine-tune,
distill and export with equal outputs after reloading; bad backbones are refused before any work."""
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import simclr_tf
from simclr_tf.config import Config, ConfigError, ModelConfig, TrainConfig, validate
from simclr_tf.linear_probe import extract_features
from simclr_tf.models import encoders
from simclr_tf.models.simclr import build_simclr_model
from tests import layer_checks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 32
MOBILENET_ARGS = {"alpha": 0.25, "minimalistic": True}
# keras-hub's ResNetBackbone wants 64 filters in its first stage; one basic block keeps it small.
HUB_RESNET_ARGS = {"input_conv_filters": [64], "input_conv_kernel_sizes": [3], "stackwise_num_filters": [64],
                   "stackwise_num_blocks": [1], "stackwise_num_strides": [1], "block_type": "basic_block"}


def tiny_model(backbone, args, num_classes=4):
    model_cfg = ModelConfig(backbone=backbone, backbone_args=json.dumps(args) if args else "",
                            resnet_depth=18, width_multiplier=0.125, num_proj_layers=2, proj_out_dim=8)
    return build_simclr_model(model_cfg, SIZE, num_classes=num_classes, temperature=0.5, hidden_norm=True,
                              weight_decay=0.0, optimizer_name="lars", seed=0)


def images(seed, batch=4):
    return tf.random.stateless_uniform([batch, SIZE, SIZE, 3], seed=[seed, 0])


def values(variables):
    return [np.array(v) for v in variables]


def changed(before, variables):
    return [not np.array_equal(b, np.array(v)) for b, v in zip(before, variables)]


@pytest.mark.slow
@pytest.mark.parametrize("backbone, args, fine_tune_after_block", [
    ("resnet", {}, 2),
    ("MobileNetV3Small", MOBILENET_ARGS, 4),   # keras.applications; 4 freezes the whole encoder
    ("ResNetBackbone", HUB_RESNET_ARGS, -1),   # keras-hub; -1 trains it all
])
def test_pretrain_finetune_export_and_reload(backbone, args, fine_tune_after_block, tmp_path):
    labels = tf.constant([0, 1, 2, 3])
    model = tiny_model(backbone, args)
    assert model.encoder.feature_dim == model(images(0))["final_avg_pool"].shape[-1]
    encoder_before = values(model.encoder.trainable_variables)
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    view = images(1)
    logs = model.train_on_batch((view, tf.image.flip_left_right(view)), labels, return_dict=True)
    assert np.isfinite(logs["contrast_loss"]) and logs["contrast_loss"] > 0
    assert all(changed(encoder_before, model.encoder.trainable_variables)[-2:]), "pretraining trains the encoder"

    classifier = simclr_tf.build_classifier(model, num_classes=4, image_size=SIZE, ft_proj_selector=1,
                                            fine_tune_after_block=fine_tune_after_block)
    encoder_before = values(classifier.encoder.variables)
    head_before = values(classifier.supervised_head.variables)
    classifier.compile(optimizer=keras.optimizers.SGD(0.1))
    classifier.train_on_batch(images(2), labels)
    encoder_changed = changed(encoder_before, classifier.encoder.variables)
    if fine_tune_after_block == 4:  # frozen whole: no weight and no batch-norm statistic moves
        assert not any(encoder_changed)
    else:
        assert any(encoder_changed)
    assert all(changed(head_before, classifier.supervised_head.variables))

    export_dir = str(tmp_path / "export")
    names = simclr_tf.export_saved_model(classifier, export_dir, image_size=SIZE)
    assert names[-4:] == ["final_avg_pool", "proj_head_input", "proj_head_output", "logits_sup"]
    assert ("block_group4" in names) == (backbone == "resnet")
    x = images(3)
    expected = classifier(x, training=False)
    reloaded = {
        "load_exported": simclr_tf.load_exported(export_dir)(x, training=False),
        "keras_layer": simclr_tf.keras_layer(export_dir)(x),
        "load_trained_model": simclr_tf.load_trained_model(export_dir)(x, training=False),
    }
    for route, outputs in reloaded.items():
        for name, value in expected.items():
            # float32 sums in another order: relative 1e-4 (features of an untrained MobileNet reach 1e4)
            np.testing.assert_allclose(outputs[name], value, rtol=1e-4, atol=1e-5, err_msg=f"{route} {name}")
    encoder = keras.saving.load_model(os.path.join(export_dir, "encoder.keras"))
    np.testing.assert_allclose(encoder(x, training=False), expected["final_avg_pool"], rtol=1e-4, atol=1e-5)

    if backbone == "ResNetBackbone":  # a keras-hub student distilled from a ResNet teacher
        teacher = simclr_tf.build_classifier(tiny_model("resnet", {}), num_classes=4, image_size=SIZE)
        distiller = simclr_tf.DistillationModel(classifier, teacher, temperature=1.0)
        distiller.compile(optimizer=keras.optimizers.SGD(0.1))
        student_before = values(classifier.encoder.trainable_variables)
        logs = distiller.train_on_batch(images(4), tf.constant([-1, -1, -1, -1]), return_dict=True)
        assert np.isfinite(logs["distill_loss"])
        assert any(changed(student_before, classifier.encoder.trainable_variables))


def test_a_feature_map_is_average_pooled_and_the_encoder_round_trips(tmp_path):
    inputs = keras.Input((8, 8, 3))
    backbone = keras.Model(inputs, keras.layers.Conv2D(5, 3, strides=2)(inputs), name="tiny_conv")
    encoder = encoders.as_encoder(backbone)
    assert isinstance(encoder, encoders.KerasEncoder) and encoder.feature_dim == 5
    x = tf.random.stateless_uniform([2, 8, 8, 3], seed=[5, 0])
    # The reference value: the backbone's map averaged over its 3x3 positions, in numpy.
    np.testing.assert_allclose(encoder(x), np.asarray(backbone(x)).mean(axis=(1, 2)), rtol=1e-6, atol=1e-6)
    layer_checks.assert_config_covers_init(encoder)
    layer_checks.assert_config_round_trip(encoder)
    layer_checks.assert_save_load_equal(encoder, x, str(tmp_path / "encoder.keras"))
    # The linear probe takes the backbone itself and gets the pooled features.
    dataset = tf.data.Dataset.from_tensor_slices((x, tf.constant([0, 1]))).batch(2)
    features, _ = extract_features(backbone, dataset)
    np.testing.assert_allclose(features, encoder(x), rtol=1e-6, atol=1e-6)


def test_a_token_sequence_is_averaged_over_tokens():
    inputs = keras.Input((8, 8, 3))
    tokens = keras.layers.Reshape((16, 12))(keras.layers.Conv2D(12, 2, strides=2)(inputs))
    backbone = keras.Model(inputs, tokens)
    x = tf.random.stateless_uniform([2, 8, 8, 3], seed=[6, 0])
    np.testing.assert_allclose(encoders.KerasEncoder(backbone)(x), np.asarray(backbone(x)).mean(axis=1),
                               rtol=1e-6, atol=1e-6)


def test_encoders_without_a_feature_vector_are_refused_with_what_is_accepted():
    inputs = keras.Input((8, 8, 3))
    two_outputs = keras.Model(inputs, [keras.layers.Conv2D(2, 3)(inputs), keras.layers.Flatten()(inputs)])
    with pytest.raises(ConfigError, match=r"not a feature vector \[B, D\], a feature map"):
        encoders.KerasEncoder(two_outputs)
    image_and_mask = [keras.Input((8, 8, 3)), keras.Input((8, 8, 1))]
    two_inputs = keras.Model(image_and_mask, keras.layers.Concatenate()(image_and_mask))
    with pytest.raises(ConfigError, match="takes 2 inputs; an encoder takes one batch of images"):
        encoders.KerasEncoder(two_inputs)
    with pytest.raises(TypeError, match="keras.Model"):
        encoders.as_encoder(keras.layers.Dense(3))


def model_config_error(**fields):
    train = {key: fields.pop(key) for key in ("train_mode",) if key in fields}
    with pytest.raises(ConfigError) as error:
        validate(Config(model=ModelConfig(**fields), train=TrainConfig(model_dir="/tmp/unused", **train)))
    return str(error.value)


def test_bad_backbones_are_refused_by_validate_listing_what_is_accepted():
    message = model_config_error(backbone="ResNet51")
    assert "--backbone='ResNet51' is not a backbone" in message
    for accepted in ("'resnet'", "MobileNetV3Small", "EfficientNetB0", "ResNetBackbone", "ViTBackbone"):
        assert accepted in message
    assert "is not JSON" in model_config_error(backbone="MobileNetV3Small", backbone_args="{alpha: 1}")
    assert "must be a JSON object" in model_config_error(backbone="MobileNetV3Small", backbone_args="[1]")
    assert "--backbone_args is for a --backbone other than resnet" in model_config_error(
        backbone_args='{"alpha": 1}')
    message = model_config_error(backbone="MobileNetV3Small", train_mode="finetune", fine_tune_after_block=2)
    assert "Use -1 (train the whole encoder) or 4" in message
    validate(Config(model=ModelConfig(backbone="MobileNetV3Small", fine_tune_after_block=4),
                    train=TrainConfig(model_dir="/tmp/unused", train_mode="finetune")))


def test_build_backbone_refuses_downloads_and_bad_arguments():
    with pytest.raises(ConfigError, match="nothing may be downloaded"):
        encoders.build_backbone("MobileNetV3Small", {"weights": "imagenet"}, SIZE)
    with pytest.raises(ConfigError, match="could not be built with --backbone_args"):
        encoders.build_backbone("ResNetBackbone", {"no_such_argument": 1}, SIZE)


def test_block_wise_freezing_is_refused_for_other_encoders():
    encoder = encoders.KerasEncoder(keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(2, 3)]))
    assert encoder.layers_up_to_block(-1) == [] and encoder.layers_up_to_block(4) == [encoder.backbone]
    with pytest.raises(ConfigError, match="has no such blocks"):
        encoder.layers_up_to_block(1)


def run_cli(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "run.py", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)


TINY_CLI = ["--dataset=builtin_shapes", "--eval_split=test", f"--image_size={SIZE}", "--num_proj_layers=2",
            "--proj_out_dim=8", "--train_batch_size=8", "--temperature=0.5", "--learning_rate=0.5",
            "--warmup_epochs=0", "--train_steps=1", "--verbose=0", "--seed=0"]


def test_the_command_line_refuses_an_unknown_backbone_before_any_work(tmp_path):
    model_dir = tmp_path / "run"
    proc = run_cli("--mode=train", "--backbone=MobileNetV4", f"--model_dir={model_dir}", *TINY_CLI)
    assert proc.returncode != 0
    assert "--backbone='MobileNetV4' is not a backbone" in proc.stderr and "MobileNetV3Small" in proc.stderr
    assert not model_dir.exists() or not os.listdir(model_dir)


@pytest.mark.slow
def test_the_command_line_pretrains_and_exports_a_keras_hub_backbone(tmp_path):
    model_dir = tmp_path / "run"
    proc = run_cli("--mode=train", "--backbone=ResNetBackbone", f"--backbone_args={json.dumps(HUB_RESNET_ARGS)}",
                   f"--model_dir={model_dir}", *TINY_CLI)
    assert proc.returncode == 0, proc.stderr[-3000:]
    export_dir = model_dir / "saved_model" / "1"
    model = simclr_tf.load_trained_model(str(model_dir))  # rebuilt from model_config.json + checkpoint
    assert type(model.encoder.backbone).__name__ == "ResNetBackbone"
    x = images(7)
    np.testing.assert_allclose(simclr_tf.load_exported(str(export_dir))(x)["proj_head_output"],
                               model(x, training=False)["proj_head_output"], rtol=1e-5, atol=1e-5)


def test_normalization_layers_of_any_encoder_skip_lars_weight_decay():
    from simclr_tf.optimizers import DEFAULT_LARS_EXCLUDE, NORMALIZATION_PATTERNS, _matches_any

    backbones = [encoders.build_backbone("MobileNetV3Small", MOBILENET_ARGS, SIZE),
                 encoders.build_backbone("ViTBackbone", {"patch_size": 8, "num_layers": 1, "num_heads": 2,
                                                         "hidden_dim": 8, "mlp_dim": 8}, SIZE)]
    for backbone in backbones:
        normalization = {id(w) for layer in backbone._flatten_layers()
                         if isinstance(layer, (keras.layers.BatchNormalization, keras.layers.LayerNormalization))
                         for w in layer.trainable_weights}
        assert normalization
        for weight in backbone.trainable_weights:
            assert _matches_any(NORMALIZATION_PATTERNS, weight.path) == (id(weight) in normalization), weight.path
            if weight.path.endswith("kernel"):
                assert not _matches_any(DEFAULT_LARS_EXCLUDE, weight.path), weight.path
    # Our ResNet (selective kernels and squeeze-excite included) and heads: the same exclusions as before.
    encoder = simclr_tf.ResNet(depth=50, width_multiplier=0.0625, sk_ratio=0.0625, se_ratio=0.25)
    model = simclr_tf.SimCLRModel(encoder, simclr_tf.ProjectionHead(num_layers=3, out_dim=8), num_classes=3)
    model(tf.zeros([1, SIZE, SIZE, 3]))
    for weight in model.trainable_weights:
        old = any(pattern in weight.path for pattern in ("batch_normalization", "bias", "head_supervised"))
        assert _matches_any(DEFAULT_LARS_EXCLUDE, weight.path) == old, weight.path

