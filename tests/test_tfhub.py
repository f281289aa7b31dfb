"""The TF Hub route for real: `tensorflow_hub.KerasLayer(export, trainable=True)` under tf-keras, in a
process of its own (simclr_tf never imports tf-keras or tensorflow_hub), computes our outputs and fine-tunes."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import simclr_tf

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def run_python(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_simclr_tf_imports_neither_tf_keras_nor_tensorflow_hub():
    out = run_python("-c", "import sys, simclr_tf, simclr_tf.cli; "
                           "print(sorted(m for m in ('tf_keras', 'tensorflow_hub') if m in sys.modules))")
    assert out.strip().splitlines()[-1] == "[]"


@pytest.mark.slow
def test_tensorflow_hub_keras_layer_computes_our_outputs_and_fine_tunes_an_export(tmp_path):
    pretrained = simclr_tf.SimCLRModel(simclr_tf.ResNet(depth=18, width_multiplier=0.125, cifar_stem=True),
                                       simclr_tf.ProjectionHead(num_layers=2, out_dim=8))
    pretrained(tf.zeros([1, 16, 16, 3]))
    classifier = simclr_tf.build_classifier(pretrained, num_classes=3, image_size=16, ft_proj_selector=1,
                                            fine_tune_after_block=2)  # stem and groups 1-2 frozen
    export_dir = str(tmp_path / "export")
    simclr_tf.export_saved_model(classifier, export_dir, image_size=16)
    images = tf.random.stateless_uniform([4, 16, 16, 3], seed=[1, 2])
    expected = {name: value.numpy() for name, value in classifier(images, training=False).items()}
    expected_file = str(tmp_path / "expected.npz")
    np.savez(expected_file, images=images.numpy(), labels=np.array([0, 1, 2, 0]), **expected)

    report = json.loads(run_python(os.path.join(HERE, "tfhub_check.py"), export_dir, expected_file)
                        .strip().splitlines()[-1])
    assert report["modules"] == ["tf_keras"]  # it really ran under tf-keras
    assert set(report["differences"]) == set(expected)
    assert max(report["differences"].values()) < 1e-5, report["differences"]

    changed, trainable = set(report["changed"]), set(report["trainable"])
    assert "head_supervised/linear_layer/dense/kernel:0" in changed & trainable
    assert any(name.startswith("resnet18/block_group4/") for name in changed & trainable)
    frozen = ("resnet18/stem/", "resnet18/block_group1/", "resnet18/block_group2/")
    assert not [name for name in changed if name.startswith(frozen)], "frozen layers stay frozen"
    assert not [name for name in trainable if name.startswith(frozen)]
    # What changed without being trainable: the batch-norm moving averages of the layers that train.
    assert changed - trainable and all("moving_" in name for name in changed - trainable)
