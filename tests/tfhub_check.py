"""Run by tests/test_tfhub.py in a process of its own: an export used the TF Hub way, through tf-keras.

  python tests/tfhub_check.py EXPORT_DIR EXPECTED.npz

Prints one JSON line: the largest difference from simclr_tf's outputs, and which variables one training
step of a tf-keras model around `tensorflow_hub.KerasLayer(EXPORT_DIR, trainable=True)` changed.
"""
import json
import sys

import numpy as np
import tensorflow_hub as hub
import tf_keras

export_dir, expected_file = sys.argv[1:]
expected = np.load(expected_file)
images, labels = expected["images"], expected["labels"]

layer = hub.KerasLayer(export_dir, trainable=True)
outputs = layer(images, training=False)
differences = {name: float(np.max(np.abs(outputs[name].numpy() - expected[name])))
               for name in expected.files if name not in ("images", "labels")}

inputs = tf_keras.Input(images.shape[1:])
model = tf_keras.Model(inputs, hub.KerasLayer(export_dir, trainable=True, output_key="logits_sup")(inputs))
model.compile(optimizer=tf_keras.optimizers.SGD(0.1),
              loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
before = {w.name: w.numpy() for w in model.weights}
trainable = [w.name for w in model.trainable_weights]
model.fit(images, labels, epochs=1, batch_size=len(images), verbose=0)
changed = [w.name for w in model.weights if not np.array_equal(before[w.name], w.numpy())]
keras_modules = sorted(name for name in sys.modules if name.startswith("tf_keras"))[:1]
print(json.dumps({"differences": differences, "trainable": trainable, "changed": changed,
                  "num_weights": len(before), "modules": keras_modules}))
