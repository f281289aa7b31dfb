"""Input pipelines: two-view pretraining batches, fine-tuning batches and center-cropped evaluation batches.

Each builder returns a `tf.data.Dataset` for one input pipeline; `distributed(...)` turns a builder into
per-replica datasets with `strategy.distribute_datasets_from_function`, so every replica receives
`global_batch // num_replicas` examples. Under several workers each worker reads only its own share of the
split, chosen by file before anything is decoded (see `sources`), so over an epoch the workers together
read every example once. What the workers must agree on (the order of the files when a split has fewer
files than workers) is seeded by the one seed they share: `--seed`, or when it is unset one the chief draws
and sends to the others (`distribute.shared_seed`). The shuffle buffer and the augmentations take a seed
derived from it and the worker's index, so each worker draws its own.

Augmentations are applied to whole batches when the source's images all have one size (vectorized, per-image
randomness), and to single images before batching otherwise. Randomness comes from a stateless seed stream,
so a pipeline built with a seed yields the same views every time.
"""
import random

import numpy as np
import tensorflow as tf

from simclr_tf import distribute
from simclr_tf.config import ConfigError, DataConfig
from simclr_tf.data import augment, sources, subsets

AUTOTUNE = tf.data.AUTOTUNE


def _to_float(images):
    return tf.image.convert_image_dtype(images, tf.float32)


def _seed_stream(seed):
    """An endless dataset of stateless seeds of shape [2]."""
    if seed is None:
        seed = random.SystemRandom().randrange(2**31)
    return tf.data.Dataset.random(seed=seed).batch(2, drop_remainder=True)


def worker_seed(seed, input_context):
    """The seed of this input pipeline's own randomness (shuffle buffer, augmentations): `seed` itself
    with one pipeline, else one derived from `seed` and the pipeline's index (None stays None)."""
    count, index = sources.pipeline_share(input_context)
    if seed is None or count == 1:
        return seed
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint32)[0] >> 1)


def pretrain_augmenter(data: DataConfig, seed=None) -> augment.PretrainAugment:
    return augment.PretrainAugment(
        height=data.image_size, width=data.image_size,
        color_jitter_strength=data.color_jitter_strength,
        color_jitter_impl=data.color_jitter_impl,
        use_blur=data.blur, crop_impl=data.crop_impl, seed=seed)


def finetune_augmenter(data: DataConfig) -> augment.FineTuneAugment:
    # Random resized crop and flip, for CIFAR-sized images too, as the paper fine-tunes.
    return augment.FineTuneAugment(height=data.image_size, width=data.image_size, crop_impl=data.crop_impl)


def eval_preprocessor(data: DataConfig) -> augment.CenterCropResize:
    # As in the paper, CIFAR-sized images are evaluated whole, larger ones center-cropped to 87.5%.
    return augment.CenterCropResize(data.image_size, data.image_size, crop=not data.cifar_stem)


def build_pretrain_dataset(source, split, data: DataConfig, batch_size, input_context=None, seed=None):
    """Endless `((view_1, view_2), label)` batches of `batch_size` images in [0, 1].

    Example:
      >>> from simclr_tf.data.sources import get_source
      >>> source = get_source("builtin_shapes", builtin_num_examples={"train": 8, "test": 4})
      >>> data = DataConfig(dataset="builtin_shapes", image_size=32, shuffle_buffer=8)
      >>> ds = build_pretrain_dataset(source, "train", data, batch_size=4, seed=0)
      >>> (view_1_spec, view_2_spec), label_spec = ds.element_spec
      >>> print(view_1_spec.shape, view_2_spec.shape, label_spec.shape, label_spec.dtype.name)
      (4, 32, 32, 3) (4, 32, 32, 3) (4,) int64
      >>> (view_1, view_2), labels = next(iter(ds))
      >>> bool(tf.reduce_any(view_1 != view_2))  # two different augmentations of each image
      True
    """
    ds = source.dataset(split, shuffle_files=True, seed=seed, input_context=input_context)
    seed = worker_seed(seed, input_context)
    if data.cache_dataset:
        ds = ds.cache()
    ds = ds.shuffle(data.shuffle_buffer, seed=seed).repeat()
    augmenter = pretrain_augmenter(data)

    def make_views(example, view_seed):  # uint8 in: the augmenter scales while it crops (less to copy)
        views = augment.two_views(augmenter, example["image"], view_seed)
        return views, example["label"]

    if source.info.image_shape is not None:
        ds = ds.batch(batch_size, drop_remainder=True)
        ds = tf.data.Dataset.zip((ds, _seed_stream(seed))).map(make_views, num_parallel_calls=AUTOTUNE)
    else:
        ds = tf.data.Dataset.zip((ds, _seed_stream(seed))).map(make_views, num_parallel_calls=AUTOTUNE)
        ds = ds.batch(batch_size, drop_remainder=True)
    return ds.prefetch(AUTOTUNE)


def _finetune_examples(source, split, seed, example_ids, keep_unlabelled, input_context):
    """One epoch of the examples fine-tuning reads (this worker's share), in shuffled file order (see
    build_finetune_dataset)."""
    read = dict(shuffle_files=True, seed=seed, input_context=input_context)
    if example_ids is None:
        ds = source.dataset(split, **read)
    elif keep_unlabelled:
        ds = subsets.unlabel_outside(source.dataset(split, **read), example_ids)
    else:
        if len(example_ids) == 0:
            raise ConfigError("The labelled subset is empty; raise --label_fraction or --labels_per_class.")
        ds = source.subset_dataset(split, example_ids, **read)
    if not keep_unlabelled:
        ds = ds.filter(lambda example: example["label"] != subsets.UNLABELED)
    return ds


def build_finetune_dataset(source, split, data: DataConfig, batch_size, input_context=None, seed=None,
                           example_ids=None, keep_unlabelled=False):
    """Endless, shuffled `(images, labels)` batches for fine-tuning: random resized crop and flip.

    Images are float32 [batch_size, S, S, 3] in [0, 1] with S = `data.image_size`; labels int64. With
    `example_ids` (a labelled subset's ids) only those examples are read, dropped before decoding where
    the source allows. Unlabelled examples (label -1) are left out, unless `keep_unlabelled` (distillation
    trains on every image): then every image is kept, and with `example_ids` the ones outside the subset
    get label -1. The data repeats before batching, so a subset smaller than a batch still fills batches.

    Example:
      >>> from simclr_tf.data.sources import get_source
      >>> source = get_source("builtin_shapes", builtin_num_examples={"train": 8, "test": 4})
      >>> data = DataConfig(dataset="builtin_shapes", image_size=32, shuffle_buffer=8)
      >>> ds = build_finetune_dataset(source, "train", data, batch_size=4, seed=0)
      >>> image_spec, label_spec = ds.element_spec
      >>> print(image_spec.shape, image_spec.dtype.name, label_spec.shape, label_spec.dtype.name)
      (4, 32, 32, 3) float32 (4,) int64
      >>> ids, labels = source.labels_and_ids("train")  # listed without decoding images
      >>> ds = build_finetune_dataset(source, "train", data, batch_size=4, seed=0, example_ids=ids[:2])
      >>> images, batch_labels = next(iter(ds))  # two labelled images fill batches of four
      >>> print(images.shape, set(batch_labels.numpy()) <= set(labels[:2]))
      (4, 32, 32, 3) True
    """
    if not keep_unlabelled and source.info.num_classes == 0:
        raise ConfigError(f"Dataset {source.info.name!r} has no labels, so it cannot be fine-tuned on; use a "
                          "labelled dataset (for an image folder: class subfolders), or distill instead.")
    ds = _finetune_examples(source, split, seed, example_ids, keep_unlabelled, input_context)
    seed = worker_seed(seed, input_context)
    if data.cache_dataset:
        ds = ds.cache()
    ds = ds.shuffle(data.shuffle_buffer, seed=seed).repeat()
    augmenter = finetune_augmenter(data)

    def augment_images(example, image_seed):
        return augmenter(example["image"], seed=image_seed), example["label"]

    if source.info.image_shape is not None:
        ds = ds.batch(batch_size, drop_remainder=True)
        ds = tf.data.Dataset.zip((ds, _seed_stream(seed))).map(augment_images, num_parallel_calls=AUTOTUNE)
    else:
        ds = tf.data.Dataset.zip((ds, _seed_stream(seed))).map(augment_images, num_parallel_calls=AUTOTUNE)
        ds = ds.batch(batch_size, drop_remainder=True)
    return ds.prefetch(AUTOTUNE)


def sample_views(source, split, data: DataConfig, count, seed=0):
    """Two views of each of the first `count` images of `split`, for summaries (no shuffle buffer)."""
    augmenter = pretrain_augmenter(data)
    pairs = [augment.two_views(augmenter, example["image"], tf.constant([seed, i], tf.int64))
             for i, example in enumerate(source.dataset(split).take(count))]
    return tuple(tf.stack(views) for views in zip(*pairs))


def build_eval_dataset(source, split, data: DataConfig, batch_size, input_context=None, max_examples=None):
    """One pass of `(images, label)` batches, center-cropped and resized; the last batch may be short.

    `max_examples` keeps only the split's first that many examples (in file order, before sharding).

    Images of at most 32 px (`data.cifar_stem`) are resized whole, larger ones center-cropped first.

    Example:
      >>> from simclr_tf.data.sources import get_source
      >>> source = get_source("builtin_shapes", builtin_num_examples={"train": 8, "test": 5})
      >>> data = DataConfig(dataset="builtin_shapes", image_size=24)
      >>> ds = build_eval_dataset(source, "test", data, batch_size=3)
      >>> image_spec, label_spec = ds.element_spec
      >>> print(image_spec.shape, image_spec.dtype.name, label_spec.shape)
      (None, 24, 24, 3) float32 (None,)
      >>> [images.shape[0] for images, labels in ds]  # every test image once
      [3, 2]
    """
    if max_examples:  # A capped split: the same first examples whatever the cluster, then split by example.
        count, index = sources.pipeline_share(input_context)
        ds = source.dataset(split, shuffle_files=False).take(max_examples).shard(count, index)
    else:
        ds = source.dataset(split, shuffle_files=False, input_context=input_context)
    if data.cache_dataset:
        ds = ds.cache()
    preprocess = eval_preprocessor(data)

    def prepare(example):
        return preprocess(_to_float(example["image"])), example["label"]

    if source.info.image_shape is not None:
        ds = ds.batch(batch_size).map(prepare, num_parallel_calls=AUTOTUNE)
    else:
        ds = ds.map(prepare, num_parallel_calls=AUTOTUNE).batch(batch_size)
    return ds.prefetch(AUTOTUNE)


def distributed(strategy, build_fn, global_batch_size, **kwargs):
    """Per-replica datasets from `build_fn(..., batch_size=per_replica, input_context=ctx)`.

    Under several workers a `seed=None` becomes the seed the chief draws (`distribute.shared_seed`), so
    that the workers agree on their shares of the data. Every worker must call this at the same point.
    """
    if "seed" in kwargs and kwargs["seed"] is None and distribute.is_multi_worker(strategy):
        kwargs["seed"] = distribute.shared_seed(strategy)

    def dataset_fn(input_context):
        per_replica = input_context.get_per_replica_batch_size(global_batch_size)
        return build_fn(batch_size=per_replica, input_context=input_context, **kwargs)

    if strategy.num_replicas_in_sync == 1:
        return dataset_fn(tf.distribute.InputContext())
    return strategy.distribute_datasets_from_function(dataset_fn)
