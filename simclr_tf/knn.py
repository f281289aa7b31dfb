"""Weighted k-nearest-neighbour evaluation of an encoder (Wu et al. 2018), the monitor of SSL libraries.

Every image of the eval split (the queries) is compared, by cosine similarity of L2-normalized features,
with a labelled bank of training images; its `k` most similar bank images vote for their classes with
weight `exp(similarity / temperature)`, and the classes ranked by their summed votes give top-1 and top-5.
Images get the evaluation preprocessing (no augmentation); the encoder runs in inference mode.

Under a `tf.distribute` strategy every replica embeds its share of the images and the features are gathered
from all replicas of all workers, so every worker scores the same whole bank and query set and the result
is the one a single process computes.

- `knn_scores` / `knn_accuracy`: the classifier on given features (numbers in, numbers out).
- `KnnEvaluator`: builds the bank and query inputs once and evaluates any encoder (or raw pixels) on them.
- `KnnMonitor`: a Keras callback that runs an evaluator every so many steps and at the end of training.
"""
import math

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from simclr_tf.data import pipelines
from simclr_tf.persistence import run_dir

QUERY_CHUNK = 512  # queries scored at once: bounds the [queries, bank] similarity matrix in memory.


def knn_scores(bank_features, bank_labels, query_features, num_classes, k=200, temperature=0.1):
    """Summed neighbour votes `[num_queries, num_classes]` of the weighted kNN classifier.

    Features are L2-normalized here; `k` is capped at the bank's size. Ties between equal similarities
    go to the lower bank index (as `tf.math.top_k` breaks them).

    Example:
      >>> bank = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]], np.float32)
      >>> scores = knn_scores(bank, np.array([0, 0, 1]), np.array([[1.0, 0.05]], np.float32),
      ...                     num_classes=2, k=2, temperature=0.1)
      >>> int(np.argmax(scores[0])), bool(scores[0, 1] == 0.0)  # both nearest neighbours are class 0
      (0, True)
    """
    bank = tf.math.l2_normalize(tf.convert_to_tensor(bank_features, tf.float32), axis=-1)
    bank_labels = tf.convert_to_tensor(bank_labels, tf.int64)
    queries = tf.math.l2_normalize(tf.convert_to_tensor(query_features, tf.float32), axis=-1)
    k = int(min(k, bank.shape[0]))
    scores = [_chunk_scores(bank, bank_labels, queries[start:start + QUERY_CHUNK], num_classes, k,
                            temperature)
              for start in range(0, int(queries.shape[0]), QUERY_CHUNK)]
    return np.concatenate(scores) if scores else np.zeros([0, num_classes], np.float32)


def _chunk_scores(bank, bank_labels, queries, num_classes, k, temperature):
    similarity = tf.matmul(queries, bank, transpose_b=True)  # [q, bank]
    top_similarity, top_index = tf.math.top_k(similarity, k=k)
    weights = tf.exp(top_similarity / temperature)
    votes = tf.one_hot(tf.gather(bank_labels, top_index), num_classes) * weights[..., None]
    return tf.reduce_sum(votes, axis=1).numpy()


def knn_accuracy(bank_features, bank_labels, query_features, query_labels, num_classes, k=200,
                 temperature=0.1):
    """`{"top_1": ..., "top_5": ...}` of the weighted kNN classifier (top-5 is top-k below 5 classes).

    Example:
      >>> rng = np.random.default_rng(0)
      >>> centers = rng.normal(size=(3, 8)).astype(np.float32)
      >>> labels = np.arange(30) % 3
      >>> bank = centers[labels] + 0.1 * rng.normal(size=(30, 8)).astype(np.float32)
      >>> knn_accuracy(bank, labels, centers, np.arange(3), num_classes=3, k=5)
      {'top_1': 1.0, 'top_5': 1.0}
    """
    scores = knn_scores(bank_features, bank_labels, query_features, num_classes, k, temperature)
    query_labels = np.asarray(query_labels).astype(np.int64)
    if len(query_labels) == 0:
        raise ValueError("The kNN evaluation has no queries: the eval split gave no labelled images.")
    # Ranks by score, ties to the lower class index, as tf.math.top_k does.
    ranked = tf.math.top_k(scores, k=min(5, num_classes)).indices.numpy()
    hits = ranked == query_labels[:, None]
    return {"top_1": float(np.mean(hits[:, 0])), "top_5": float(np.mean(hits.any(axis=1)))}


def _flatten_pixels(images):
    return tf.reshape(images, [tf.shape(images)[0], -1])


class KnnEvaluator:
    """kNN top-1/top-5 of an encoder on `query_split` against a bank from `bank_split`, under `strategy`.

    Args:
      strategy: the run's strategy; features are gathered from all its replicas and workers.
      source, data: the image source and the `DataConfig` (evaluation preprocessing).
      bank_split, query_split: splits of the bank (its first `bank_size` examples, unlabelled ones left
        out) and of the queries (the first `query_batches` global batches; None: all of them).
      batch_size: the global batch size for embedding.
      k, temperature: of the classifier.

    Call it with an encoder (any Keras model mapping images to features), or `None` for raw pixels.
    """

    def __init__(self, strategy, source, data, bank_split, query_split, bank_size, batch_size, k=200,
                 temperature=0.1, query_batches=None):
        self.strategy = strategy
        self.num_classes = source.info.num_classes
        if self.num_classes < 1:
            raise ValueError(f"{source.info.name} has no labels: a kNN evaluation needs labelled images.")
        self.k, self.temperature, self.query_batches = k, temperature, query_batches
        self.bank_split, self.query_split = bank_split, query_split
        self.bank_size = bank_size
        self._steps = []
        self.per_replica_batch = batch_size // strategy.num_replicas_in_sync
        self._datasets = {
            name: pipelines.distributed(strategy, pipelines.build_eval_dataset, batch_size, source=source,
                                        split=split, data=data, max_examples=limit)
            for name, split, limit in (("bank", bank_split, bank_size), ("query", query_split, None))}

    def _step(self, encoder):
        """The traced embedding step for `encoder`, made once per encoder."""
        for known, step in self._steps:
            if known is encoder:
                return step
        embed = _flatten_pixels if encoder is None else (lambda images: encoder(images, training=False))
        strategy, per_replica = self.strategy, self.per_replica_batch

        def padded_embed(images, labels):
            # Every replica embeds a full batch: the short last one is padded (inference is per image)
            # and a replica left without images gets only padding, labelled -1 and dropped afterwards.
            missing = per_replica - tf.shape(images)[0]
            images = tf.pad(images, [[0, missing], [0, 0], [0, 0], [0, 0]])
            labels = tf.pad(tf.cast(labels, tf.int64), [[0, missing]], constant_values=-1)
            return tf.cast(embed(images), tf.float32), labels

        @tf.function
        def step(images, labels):
            if strategy.num_replicas_in_sync == 1:
                return padded_embed(images, labels)
            features, labels = strategy.run(padded_embed, args=(images, labels))
            return strategy.gather(features, axis=0), strategy.gather(labels, axis=0)

        self._steps.append((encoder, step))
        return step

    def features(self, encoder, which):
        """`(features, labels)` numpy arrays of the bank or the queries, gathered from every replica."""
        step = self._step(encoder)
        limit = self.query_batches if which == "query" else None
        features, labels = [], []
        for index, (images, batch_labels) in enumerate(self._datasets[which]):
            if limit is not None and index >= limit:
                break
            batch_features, batch_labels = step(images, batch_labels)
            features.append(batch_features.numpy())
            labels.append(batch_labels.numpy())
        if not features:
            raise ValueError(f"The kNN {which} split ({getattr(self, which + '_split')}) gave no images.")
        features, labels = np.concatenate(features), np.concatenate(labels).astype(np.int64)
        keep = labels >= 0  # padding, and unlabelled bank images (label -1), which cannot vote
        return features[keep], labels[keep]

    def __call__(self, encoder):
        """`{"top_1": ..., "top_5": ..., "bank_size": ..., "num_queries": ...}` for `encoder` (None: pixels)."""
        bank_x, bank_y = self.features(encoder, "bank")
        query_x, query_y = self.features(encoder, "query")
        result = knn_accuracy(bank_x, bank_y, query_x, query_y, self.num_classes, self.k, self.temperature)
        result.update(bank_size=len(bank_y), num_queries=len(query_y))
        return result


class KnnMonitor(keras.callbacks.Callback):
    """Runs `evaluator` on the model's encoder every `every_steps` steps and at `total_steps`.

    An interval's evaluation less than half an interval before `total_steps` is left to the final one.

    Every worker must run it (the features are gathered with collectives); only the one given a `log_dir`
    (the chief) writes TensorBoard scalars `knn_top_1` and `knn_top_5` under `log_dir/train`. The newest
    result is kept in `last` as `(step, {"knn_top_1": ..., "knn_top_5": ...})`.
    """

    def __init__(self, evaluator, every_steps, total_steps, log_dir=None):
        super().__init__()
        self.evaluator = evaluator
        self.every_steps = every_steps
        self.total_steps = total_steps
        self.log_dir = log_dir
        self.last = None

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        if step >= self.total_steps:
            self.evaluate(step)
        # Not when a signal stops training early (that stop should be quick), nor less than half an
        # interval before the end, whose evaluation comes soon (16 epochs of 10,000 images at batch 128
        # end at step 1251: every 8 epochs is step 625, then 1251, not 1250 as well).
        elif (step % self.every_steps == 0 and not self.model.stop_training
              and 2 * (self.total_steps - step) >= self.every_steps):
            self.evaluate(step)

    def evaluate(self, step):
        if self.last is not None and self.last[0] == step:
            return self.last[1]
        result = self.evaluator(self.model.encoder)
        values = {"knn_top_1": result["top_1"], "knn_top_5": result["top_5"]}
        logging.info("kNN (k=%d, temperature %g, bank of %d) on %d %s images at step %d: top-1 %.1f%%, "
                     "top-5 %.1f%%", self.evaluator.k, self.evaluator.temperature, result["bank_size"],
                     result["num_queries"], self.evaluator.query_split, step, 100 * result["top_1"],
                     100 * result["top_5"])
        if self.log_dir:
            writer = tf.summary.create_file_writer(run_dir.train_summaries_dir(self.log_dir))
            with writer.as_default():
                for name, value in values.items():
                    tf.summary.scalar(name, value, step=step)
            writer.close()
        self.last = (step, values)
        return values


def steps_between(every_epochs, num_train_examples, train_batch_size):
    """Training steps in `every_epochs` epochs (at least 1)."""
    return max(1, math.ceil(every_epochs * num_train_examples / train_batch_size))


def comparison_table(result):
    """Lines of a table of the kNN and offline-probe top-1 in an evaluation `result`, encoder by encoder.

    Example:
      >>> for line in comparison_table({"knn_top_1": 0.62, "offline_probe_top_1": 0.7,
      ...                               "raw_pixels_knn_top_1": 0.3}):
      ...     print(line)
      top-1 on the eval split    kNN      linear probe
      pretrained encoder         62.0%    70.0%
      raw pixels                 30.0%    -
    """
    rows = (("pretrained encoder", "knn_top_1", "offline_probe_top_1"),
            ("random encoder", "random_encoder_knn_top_1", "random_encoder_probe_top_1"),
            ("raw pixels", "raw_pixels_knn_top_1", None))

    def cell(key):
        return f"{result[key]:.1%}" if key in result else "-"

    lines = [f"{'top-1 on the eval split':<27}{'kNN':<9}linear probe"]
    for name, knn_key, probe_key in rows:
        if knn_key in result or probe_key in result:
            lines.append(f"{name:<27}{cell(knn_key):<9}{cell(probe_key)}".rstrip())
    return lines
