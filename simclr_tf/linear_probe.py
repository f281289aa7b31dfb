"""Offline linear probe: logistic regression on frozen, precomputed encoder features.

Used to compare encoders on equal terms (for example a pretrained encoder against a randomly initialized
one): features are extracted once in inference mode, standardized with the training set's statistics, and
a softmax classifier is fitted on them with Adam. Cheap enough to run after every pretraining.
"""
import keras
import numpy as np
import tensorflow as tf

from simclr_tf.models.encoders import as_encoder


def extract_features(encoder, dataset, max_batches=None):
    """`(features [N, D], labels [N])` of `(images, labels)` batches, encoder in inference mode."""
    encoder = as_encoder(encoder)  # any keras.Model mapping images to a feature vector or map
    image_spec = dataset.element_spec[0]  # any batch size: one trace, the short last batch included

    @tf.function(input_signature=[tf.TensorSpec([None, *image_spec.shape[1:]], image_spec.dtype)])
    def embed(images):
        return encoder(images, training=False)

    features, labels = [], []
    for step, (images, batch_labels) in enumerate(dataset):
        if max_batches is not None and step >= max_batches:
            break
        features.append(embed(images).numpy())
        labels.append(batch_labels.numpy())
    return np.concatenate(features).astype(np.float32), np.concatenate(labels).astype(np.int64)


def fit_linear_probe(train_features, train_labels, eval_features, eval_labels, num_classes,
                     epochs=100, batch_size=256, learning_rate=1e-3, l2=1e-4, seed=0):
    """Fits softmax regression on standardized features; returns `{"top_1": ..., "top_5": ...}`."""
    mean = train_features.mean(axis=0)
    std = train_features.std(axis=0) + 1e-6
    keras.utils.set_random_seed(seed)
    classifier = keras.Sequential([
        keras.Input((train_features.shape[1],)),
        # float32 whatever the run's precision: under a mixed policy the logits would be 16-bit, which
        # the top-k metric refuses (and a probe this small gains nothing from 16 bits).
        keras.layers.Dense(num_classes, kernel_regularizer=keras.regularizers.L2(l2), dtype="float32"),
    ])
    classifier.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="top_1"),
                 keras.metrics.SparseTopKCategoricalAccuracy(k=min(5, num_classes), name="top_5")])
    classifier.fit((train_features - mean) / std, train_labels, epochs=epochs, batch_size=batch_size,
                   verbose=0)
    result = classifier.evaluate((eval_features - mean) / std, eval_labels, return_dict=True, verbose=0)
    return {"top_1": float(result["top_1"]), "top_5": float(result["top_5"])}


def probe_encoder(encoder, train_dataset, eval_dataset, num_classes, **probe_kwargs):
    """Extracts features of both datasets with `encoder` and fits the probe."""
    train_x, train_y = extract_features(encoder, train_dataset)
    eval_x, eval_y = extract_features(encoder, eval_dataset)
    return fit_linear_probe(train_x, train_y, eval_x, eval_y, num_classes, **probe_kwargs)
