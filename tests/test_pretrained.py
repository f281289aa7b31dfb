"""load_trained_model reads every format (ours and the reference's) into the same model; the CLI starts
fine-tuning, distillation and export from a reference checkpoint."""
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.persistence import checkpoints, export, pretrained
from simclr_tf.config import ConfigError
from simclr_tf.models.classifier import SimCLRClassifier, build_classifier
from simclr_tf.models.heads import ProjectionHead
from simclr_tf.models.resnet import ResNet
from simclr_tf.models.simclr import SimCLRModel
from tests import layer_checks
from tests.test_reference_checkpoints import (assert_matches_golden, golden, golden_input, reference_tensors,
                                              write_checkpoint)

SIZE = 16


def trained_model(num_classes=3):
    keras.utils.set_random_seed(0)
    model = SimCLRModel(ResNet(depth=18, width_multiplier=0.125, cifar_stem=True),
                        ProjectionHead(num_layers=2, out_dim=8), num_classes=num_classes)
    model(tf.zeros([1, SIZE, SIZE, 3]))
    layer_checks.perturb_weights(model, 1)
    return model


def images():
    return np.random.default_rng(0).random((2, SIZE, SIZE, 3), dtype=np.float32)


def assert_same_outputs(expected_model, loaded):
    expected, actual = expected_model(images()), loaded(images())
    assert sorted(expected) == sorted(actual)
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], atol=1e-5, err_msg=name)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A model_dir as a training run leaves it: a checkpoint, model_config.json and an export."""
    model_dir = str(tmp_path_factory.mktemp("run"))
    model = trained_model()
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    model.optimizer.build(model.trainable_variables)
    checkpoints.save(model, model_dir, 5, keep_max=2)
    pretrained.write_model_config(model, model_dir, SIZE)
    export.export_run(model, model_dir, 5, SIZE, keep_max=1)
    return model_dir, model


def test_our_formats_all_give_the_trained_model(run_dir):
    model_dir, model = run_dir
    sources = [model_dir,  # newest checkpoint + model_config.json
               checkpoints.checkpoint_path(model_dir, 5),
               os.path.join(model_dir, "saved_model", "5"),  # an export
               os.path.join(model_dir, "saved_model"),  # a run's exports: the newest
               os.path.join(model_dir, "saved_model", "5", "model.keras")]
    for source in sources:
        loaded = pretrained.load_trained_model(source)
        assert isinstance(loaded, SimCLRModel), source
        assert_same_outputs(model, loaded)


def test_checkpoint_without_its_model_config_names_the_fix(run_dir, tmp_path):
    model_dir, _ = run_dir
    lonely = tmp_path / "ckpt-00000005.weights.h5"
    lonely.write_bytes(open(checkpoints.checkpoint_path(model_dir, 5), "rb").read())
    with pytest.raises(FileNotFoundError, match="model_config.json"):
        pretrained.load_trained_model(str(lonely))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pretrained.load_trained_model(str(tmp_path / "nothing_here"))


def test_distillation_runs_give_their_student(tmp_path):
    from simclr_tf.models.distill import DistillationModel
    student = build_classifier(trained_model(), 3, SIZE)
    model = DistillationModel(student, build_classifier(trained_model(), 3, SIZE))
    path = str(tmp_path / "distill.keras")
    model.save(path)
    loaded = pretrained.load_trained_model(path)
    assert isinstance(loaded, SimCLRClassifier)
    assert_same_outputs(student, loaded)


def test_teacher_needs_a_classifier_of_the_right_size(run_dir, tmp_path):
    model_dir, _ = run_dir
    assert pretrained.load_teacher(model_dir, 3).supervised_head.num_classes == 3
    with pytest.raises(ConfigError, match="predicts 3 classes but the dataset has 10"):
        pretrained.load_teacher(model_dir, 10)
    no_head = trained_model(num_classes=0)
    no_head.save(str(tmp_path / "no_head.keras"))
    with pytest.raises(ConfigError, match="--train_mode=finetune first"):
        pretrained.load_teacher(str(tmp_path / "no_head.keras"), 3)


@pytest.mark.parametrize("version", ["tf1", "tf2"])
def test_reference_checkpoints_load_with_the_reference_outputs(tmp_path, version):
    data = golden("r18_cifar", version)
    name = "model.ckpt-7" if version == "tf1" else "ckpt-7"
    prefix = write_checkpoint(str(tmp_path / name), reference_tensors(data))
    model = pretrained.load_trained_model(prefix)
    assert_matches_golden(model(golden_input(data), training=False), data["outputs"])


@pytest.mark.slow
def test_cli_fine_tunes_distills_and_exports_from_a_reference_checkpoint(tmp_path):
    from tests.test_cli import TINY, run_cli
    data = golden("r18_cifar", "tf1")
    prefix = write_checkpoint(str(tmp_path / "model.ckpt-7"), reference_tensors(data))
    size = data["config"]["image_size"]
    tiny = [arg for arg in TINY if not arg.startswith(("--image_size", "--width_multiplier"))]
    tiny.append(f"--image_size={size}")

    # Export of the released model as it is: the SavedModel gives the reference's outputs.
    run_cli("--mode=export", f"--checkpoint={prefix}", f"--model_dir={tmp_path / 'export'}", *tiny)
    loaded = export.load_exported(str(tmp_path / "export" / "saved_model" / "0"))
    outputs = loaded.signatures["serving_default"](tf.constant(golden_input(data)))
    assert_matches_golden(outputs, data["outputs"])

    # Linear evaluation from it: the frozen encoder keeps the released weights exactly.
    finetune_dir = tmp_path / "lineareval"
    run_cli("--mode=train_then_eval", "--train_mode=finetune", f"--checkpoint={prefix}",
            "--fine_tune_after_block=4", "--optimizer=momentum", "--train_steps=2",
            f"--model_dir={finetune_dir}", *tiny)
    classifier = pretrained.load_trained_model(str(finetune_dir))
    features = classifier(golden_input(data))["final_avg_pool"]
    assert_matches_golden({"final_avg_pool": features},
                          {"final_avg_pool": data["outputs"]["final_avg_pool"]})

    # The released fine-tuned head as a distillation teacher (10 classes, as the built-in data).
    assert data["config"]["num_classes"] == 10
    proc = run_cli("--mode=train_then_eval", "--train_mode=distill", f"--teacher_checkpoint={prefix}",
                   "--train_steps=2", f"--model_dir={tmp_path / 'distill'}", *tiny)
    assert "Classifier on test: top-1" in proc.stdout
    assert "teacher_agreement" in json.load(open(tmp_path / "distill" / "result.json"))
