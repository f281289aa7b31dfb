"""Tests of simclr_tf.persistence.export: outputs through every loading route, fine-tuning, batch norm modes, runs."""
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.persistence import export
from simclr_tf.config import ConfigError
from simclr_tf.models.heads import ProjectionHead
from simclr_tf.models.resnet import ResNet
from simclr_tf.models.simclr import SimCLRModel
from tests.layer_checks import perturb_weights

SIZE = 16
NUM_CLASSES = 5
ATOL = 1e-5
KINDS = ("probe", "no_head", "truncated")


def tiny_model(kind, seed=0):
    """A perturbed SimCLRModel: with a probe and a frozen stem, without a supervised head, or with a
    projection head truncated to its first layer (the shape of the fine-tuning classifier)."""
    keras.utils.set_random_seed(seed)
    global_bn = kind == "truncated"  # synchronized BN, the command line's default, in one of them
    encoder = ResNet(depth=18, width_multiplier=0.125, cifar_stem=True, global_bn=global_bn)
    head = ProjectionHead(num_layers=2, out_dim=8, global_bn=global_bn)
    if kind == "truncated":
        head = head.truncated(1)
    model = SimCLRModel(encoder, head, num_classes=0 if kind == "no_head" else NUM_CLASSES)
    model(tf.zeros([1, SIZE, SIZE, 3]))
    perturb_weights(model, seed)
    if kind == "probe":
        model.encoder.stem.trainable = False
    return model


def images(seed, batch=4):
    return tf.random.stateless_uniform([batch, SIZE, SIZE, 3], seed=[seed, 0])


def max_abs_difference(actual, expected):
    assert sorted(actual) == sorted(expected)
    return max(float(np.max(np.abs(np.asarray(actual[k]) - np.asarray(expected[k])))) for k in expected)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """kind -> (model, export path); the "probe" model goes through export_run into a run directory."""
    result = {}
    for kind in KINDS:
        model = tiny_model(kind)
        if kind == "probe":
            model_dir = str(tmp_path_factory.mktemp("run"))
            path = export.export_run(model, model_dir, step=7, image_size=SIZE, keep_max=2)
        else:
            path = str(tmp_path_factory.mktemp(kind) / "export")
            export.export_saved_model(model, path, SIZE)
        result[kind] = (model, path)
    return result


def variable_key(variable, model=None):
    """The exported name of a model's Keras variable, or of a loaded variable (model=None)."""
    if model is None:
        return variable.name.removesuffix(":0")
    return variable.path.removeprefix(f"{model.name}/")


@pytest.mark.parametrize("kind", KINDS)
def test_named_outputs_match_the_model_and_run_the_encoder_once(kind, monkeypatch):
    model = tiny_model(kind)
    x = images(1)
    expected = model(x, training=False)
    stem_calls = []
    stem_call = model.encoder.stem.call

    def counting_stem_call(*args, **kwargs):
        stem_calls.append(1)
        return stem_call(*args, **kwargs)

    monkeypatch.setattr(model.encoder.stem, "call", counting_stem_call)
    outputs = export.named_outputs(model, x)
    assert len(stem_calls) == 1
    names = {"initial_conv", "block_group1", "block_group2", "block_group3", "block_group4", "final_avg_pool",
             "proj_head_input", "proj_head_output"} | ({"logits_sup"} if kind != "no_head" else set())
    assert set(outputs) == names  # the CIFAR stem has no max-pool
    assert all(value.dtype == tf.float32 for value in outputs.values())
    np.testing.assert_array_equal(outputs["proj_head_input"], outputs["final_avg_pool"])
    for name in expected:
        np.testing.assert_allclose(outputs[name], expected[name], atol=ATOL)
    if kind == "truncated":  # the supervised input of a truncated head is its own output
        np.testing.assert_allclose(outputs["logits_sup"], model.supervised_head(outputs["proj_head_output"]),
                                   atol=ATOL)


@pytest.mark.parametrize("kind", KINDS)
def test_every_loading_route_gives_the_model_outputs(exported, kind, caplog):
    model, path = exported[kind]
    x = images(2)
    expected = export.named_outputs(model, x)
    loaded = export.load_exported(path)
    assert "custom gradients" not in caplog.text  # no cross-replica ops traced from global BN
    serving = loaded.signatures[export.SERVING_SIGNATURE]
    (spec,) = serving.structured_input_signature[1].values()
    assert (spec.shape.as_list(), spec.dtype) == ([None, SIZE, SIZE, 3], tf.float32)
    routes = {
        "call": loaded(x),
        "call_inference": loaded(x, training=False),
        "signature": serving(images=x),
        "tfsm_layer": export.keras_layer(path)(x),
    }
    for route, outputs in routes.items():
        assert max_abs_difference(outputs, expected) <= ATOL, route
    with open(os.path.join(path, export.METADATA_FILE)) as f:
        metadata = json.load(f)
    assert metadata["image_size"] == SIZE
    assert metadata["output_names"] == [n for n in export.OUTPUT_NAMES if n in expected]
    assert metadata["keras_version"] == keras.__version__


def test_selective_kernel_and_squeeze_excite_encoders_export(tmp_path):
    """SimCLR v2's selective kernels and squeeze-excitation, with the ImageNet (ResNet-D) stem."""
    keras.utils.set_random_seed(0)
    encoder = ResNet(depth=18, width_multiplier=0.125, sk_ratio=0.0625, se_ratio=0.25, global_bn=False)
    model = SimCLRModel(encoder, ProjectionHead(num_layers=2, out_dim=8), num_classes=NUM_CLASSES)
    model(tf.zeros([1, SIZE, SIZE, 3]))
    perturb_weights(model, 0)
    path = str(tmp_path / "export")
    export.export_saved_model(model, path, SIZE)
    x = images(4)
    loaded = export.load_exported(path)
    assert max_abs_difference(loaded(x, training=False), export.named_outputs(model, x)) <= ATOL


def test_keras_files_reload_with_equal_outputs(exported):
    model, path = exported["probe"]
    x = images(3)
    expected = export.named_outputs(model, x)
    encoder = keras.saving.load_model(os.path.join(path, export.ENCODER_FILE))
    endpoints = encoder.call_with_endpoints(x, training=False)
    for name, value in endpoints.items():
        np.testing.assert_allclose(value, expected[name], atol=ATOL)
    reloaded = keras.saving.load_model(os.path.join(path, export.MODEL_FILE))
    assert type(reloaded) is SimCLRModel
    assert max_abs_difference(export.named_outputs(reloaded, x), expected) <= ATOL


def test_frozen_weights_are_not_trainable_in_any_route(exported):
    model, path = exported["probe"]
    parts = (model.encoder, model.projection_head, model.supervised_head)
    trainable = {variable_key(v, model) for part in parts for v in part.trainable_variables}
    stem = {variable_key(v, model) for v in model.encoder.stem.weights}
    assert stem and not stem & trainable
    loaded = export.load_exported(path)
    assert {variable_key(v) for v in loaded.trainable_variables} == trainable
    assert stem < {variable_key(v) for v in loaded.variables}
    assert list(loaded.regularization_losses) == []
    layer = export.keras_layer(path)
    assert len(layer.trainable_weights) == len(trainable)
    assert len(layer.weights) == len(loaded.variables)


def test_training_mode_updates_moving_statistics_as_keras_does(exported):
    _, path = exported["probe"]
    loaded = export.load_exported(path)
    names = [variable_key(v) for v in loaded.variables]
    before = [v.numpy() for v in loaded.variables]
    x = images(4, batch=8)
    loaded(x, training=False)
    export.keras_layer(path, trainable=False)(x, training=True)  # frozen: inference mode
    for variable, value in zip(loaded.variables, before):
        np.testing.assert_array_equal(variable.numpy(), value)

    # The same training step on an identical Keras model (rebuilt, since the fixture's must stay as
    # exported; model.keras would not do: it does not keep the stem frozen): equal outputs and equal
    # new moving averages.
    keras_model = tiny_model("probe")
    assert max_abs_difference(loaded(x), export.named_outputs(keras_model, x)) <= ATOL
    expected = export.named_outputs(keras_model, x, training=True)
    assert max_abs_difference(loaded(x, training=True), expected) <= ATOL
    keras_variables, _ = export._state_variables(keras_model)
    assert [variable_key(v, keras_model) for v in keras_variables] == names
    moved = []
    for name, variable, keras_variable, value in zip(names, loaded.variables, keras_variables, before):
        np.testing.assert_allclose(variable.numpy(), keras_variable.numpy(), atol=ATOL, err_msg=name)
        if not np.array_equal(variable.numpy(), value):
            moved.append(name)
    statistics = [n for n in names if "moving_" in n]
    assert sorted(moved) == sorted(n for n in statistics if "/stem/" not in n)  # frozen BN stays put


def _changed(variables, before):
    return [not np.array_equal(v.numpy(), b) for v, b in zip(variables, before)]


def test_tfsm_layer_model_fine_tunes_with_fit(exported):
    _, path = exported["probe"]
    layer = export.keras_layer(path, trainable=True)
    inputs = keras.Input([SIZE, SIZE, 3])
    logits = keras.layers.Dense(3)(layer(inputs)["proj_head_output"])
    classifier = keras.Model(inputs, logits)
    classifier.compile(optimizer=keras.optimizers.SGD(0.05),
                       loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    trainable_before = [v.numpy() for v in layer.trainable_weights]
    frozen_before = [v.numpy() for v in layer.non_trainable_weights]
    x, y = images(5, batch=16), np.arange(16) % 3
    history = classifier.fit(x, y, batch_size=8, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    # Every weight the loss depends on moves; the probe (head_supervised) is not in this loss.
    changed = _changed(layer.trainable_weights, trainable_before)
    in_loss = ["head_supervised" not in v.name for v in layer.trainable_weights]
    assert changed == in_loss and sum(in_loss) > 60
    frozen_changed = {v.name for v, c in zip(layer.non_trainable_weights,
                                             _changed(layer.non_trainable_weights, frozen_before)) if c}
    assert frozen_changed and all("moving_" in name and "stem" not in name for name in frozen_changed)


def test_reusable_saved_model_fine_tunes_with_gradient_tape(exported):
    _, path = exported["truncated"]
    loaded = export.load_exported(path)
    assert callable(loaded)
    trainable = list(loaded.trainable_variables)
    before = [v.numpy() for v in trainable]
    x, y = images(6, batch=8), tf.constant(np.arange(8) % NUM_CLASSES)
    losses = []
    for _ in range(3):  # plain SGD on the loaded variables, as a model around hub.KerasLayer would do
        with tf.GradientTape() as tape:
            logits = loaded(x, training=True)["logits_sup"]
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))
        gradients = tape.gradient(loss, trainable)
        assert all(g is not None for g in gradients)
        for variable, gradient in zip(trainable, gradients):
            variable.assign_sub(0.1 * gradient)
        losses.append(float(loss))
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert all(_changed(trainable, before))


def fake_export(model, export_dir, image_size):
    """Stands in for export_saved_model: a directory holding only the metadata file, naming `model`."""
    os.makedirs(export_dir)
    with open(os.path.join(export_dir, export.METADATA_FILE), "w") as f:
        json.dump({"model": model}, f)


def test_export_run_keeps_newest_and_leaves_no_partial_directory(tmp_path, monkeypatch):
    monkeypatch.setattr(export, "export_saved_model", fake_export)
    model_dir = str(tmp_path)
    for step in (10, 2, 30, 30):
        assert export.export_run(f"model{step}", model_dir, step, SIZE, keep_max=2) == os.path.join(
            model_dir, "saved_model", str(step))
    assert [s for s, _ in export.list_exports(model_dir)] == [10, 30]
    assert export.latest_export(model_dir) == os.path.join(model_dir, "saved_model", "30")
    assert sorted(os.listdir(os.path.join(model_dir, "saved_model"))) == ["10", "30"]

    def failing_export(model, export_dir, image_size):
        fake_export(model, export_dir, image_size)
        raise RuntimeError("disk full")

    monkeypatch.setattr(export, "export_saved_model", failing_export)
    with pytest.raises(RuntimeError):
        export.export_run("model40", model_dir, 40, SIZE, keep_max=2)
    assert sorted(os.listdir(os.path.join(model_dir, "saved_model"))) == ["10", "30"]
    with pytest.raises(ConfigError, match="keep_hub_module_max"):
        export.export_run("model50", model_dir, 50, SIZE, keep_max=0)


def test_real_export_run_leaves_only_the_step_directory(exported):
    _, path = exported["probe"]
    root = os.path.dirname(path)
    assert os.listdir(root) == ["7"]
    assert export.latest_export(os.path.dirname(root)) == path


def test_loading_something_else_names_the_fix(exported, tmp_path):
    _, path = exported["probe"]
    with pytest.raises(FileNotFoundError, match="latest_export"):
        export.load_exported(str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="not a simclr_tf export.*newest export there is"):
        export.keras_layer(os.path.dirname(path))


def test_mixed_precision_export_takes_and_returns_float32(tmp_path):
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = tiny_model("no_head", seed=1)
        path = str(tmp_path / "export")
        export.export_saved_model(model, path, SIZE)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    x = images(7)
    expected = export.named_outputs(model, x)
    outputs = export.load_exported(path).signatures[export.SERVING_SIGNATURE](images=x)
    assert all(v.dtype == tf.float32 for v in list(outputs.values()) + list(expected.values()))
    assert max_abs_difference(outputs, expected) <= ATOL


def test_export_run_cleans_every_stale_partial_and_reports_a_full_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(export, "export_saved_model", fake_export)
    model_dir = str(tmp_path)
    root = os.path.join(model_dir, "saved_model")
    export.export_run("model3", model_dir, 3, SIZE, keep_max=2)
    for leftover in (".partial-5", ".replaced-3"):  # exports killed midway, at other steps than the next
        os.makedirs(os.path.join(root, leftover, "variables"))
    export.export_run("model7", model_dir, 7, SIZE, keep_max=2)
    assert sorted(os.listdir(root)) == ["3", "7"]

    def export_to_a_full_disk(model, export_dir, image_size):
        fake_export(model, export_dir, image_size)
        raise tf.errors.ResourceExhaustedError(None, None, "saved_model.pb; No space left on device")

    monkeypatch.setattr(export, "export_saved_model", export_to_a_full_disk)
    with pytest.raises(export.disk_space.DiskFullError,
                       match=f"No space left in {root} for the SavedModel export of step 9: it needs "
                             "about .*--keep_hub_module_max"):
        export.export_run("model9", model_dir, 9, SIZE, keep_max=2)
    assert sorted(os.listdir(root)) == ["3", "7"]
