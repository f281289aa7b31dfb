"""Run by .ci/wheel_test.sh with the fresh virtualenv's Python, outside the checkout: the installed package
is the one imported, and its API pretrains, exports and reloads a model with equal outputs.

Usage: python installed_api_check.py VENV_DIR MODEL_DIR (a run the `simclr-tf` command trained and exported)
"""
import os
import sys
import tempfile

import keras
import numpy as np
import tensorflow as tf

import simclr_tf

venv_dir, model_dir = sys.argv[1:]
assert os.path.realpath(simclr_tf.__file__).startswith(os.path.realpath(venv_dir)), simclr_tf.__file__
images = tf.random.stateless_uniform([4, 16, 16, 3], seed=[1, 2])

# The command's run: its export and its checkpoint give the same features.
export_dir = os.path.join(model_dir, "saved_model", "1")
exported = simclr_tf.load_exported(export_dir)(images, training=False)["final_avg_pool"]
reloaded = simclr_tf.load_trained_model(model_dir)
np.testing.assert_allclose(reloaded(images, training=False)["final_avg_pool"], exported, rtol=1e-5, atol=1e-5)

# The API alone: one pretraining step, an export and a reload.
model = simclr_tf.SimCLRModel(simclr_tf.ResNet(depth=18, width_multiplier=0.125, cifar_stem=True),
                              simclr_tf.ProjectionHead(num_layers=2, out_dim=8), num_classes=10)
model.compile(optimizer=simclr_tf.LARS(0.1))
logs = model.train_on_batch((images, images[::-1]), tf.constant([0, 1, 2, 3]), return_dict=True)
assert np.isfinite(logs["loss"]), logs
api_export = tempfile.mkdtemp()
simclr_tf.export_saved_model(model, api_export, image_size=16)
expected = model(images, training=False)
for name, value in simclr_tf.load_exported(api_export)(images, training=False).items():
    if name in expected:
        np.testing.assert_allclose(value, expected[name], rtol=1e-5, atol=1e-5, err_msg=name)

# Any keras.Model as the encoder: its feature map is average-pooled.
inputs = keras.Input((16, 16, 3))
backbone = keras.Model(inputs, keras.layers.Conv2D(4, 3, strides=2)(inputs))
other = simclr_tf.SimCLRModel(backbone, simclr_tf.ProjectionHead(num_layers=1, out_dim=4))
np.testing.assert_allclose(other(images)["final_avg_pool"], np.asarray(backbone(images)).mean(axis=(1, 2)),
                           rtol=1e-5, atol=1e-6)
print(f"installed API check passed: simclr_tf {simclr_tf.__file__}, pretraining loss {float(logs['loss']):.4f}")
