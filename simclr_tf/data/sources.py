"""Image sources: one interface over TFDS datasets, folders of images and the built-in synthetic data.

A source knows its splits and yields one epoch of unbatched examples
`{"image": uint8 [H, W, 3], "label": int64 scalar (-1 when unlabeled), "id": string or int64 scalar}`.
The input pipelines shuffle, augment and batch them; `get_source` picks the source for `--dataset`:

    source = get_source("cifar10", train_split="train", eval_split="test")
    source.info.num_classes          # 10
    source.dataset("train", shuffle_files=True, seed=0)
    ids, labels = source.labels_and_ids("train")        # without decoding images, for label subsets
    source.subset_dataset("train", ids[:100])           # only those examples, dropped before decoding

This module holds the TFDS source and `get_source`; the interface the sources share (`ImageSource`,
`SourceInfo`, `worker_share`, ...) is in `source_base`, re-exported here, and the built-in data and image
folders are in `builtin` and `folders`.

Under several workers (`input_context` of more than one input pipeline) each source gives a worker only its
share of a split, chosen before anything is read or decoded: TFDS shards its record files over the workers
(`tfds.ReadConfig(input_context=...)`), an image folder its file list, the built-in data its array indices.
A split of fewer TFDS files than workers is read whole by every worker in an order they agree on (shuffled
with the `seed` they share) and split by element after that, before decoding. Over one epoch the workers
together read each example once.
"""
import difflib
import os

from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from simclr_tf.config import ConfigError
from simclr_tf.data import builtin, folders, subsets
# The shared types, exported here too: `sources.ImageSource`, `sources.worker_share`, ...
from simclr_tf.data.source_base import (CORRUPT_IMAGE_POLICIES, UNLABELED, ImageSource, SourceInfo,
                                        ids_and_labels, pipeline_share, worker_share)

__all__ = ["BUILTIN_DATASETS", "CORRUPT_IMAGE_POLICIES", "UNLABELED", "ImageSource", "SourceInfo", "TfdsSource",
           "check_tfds_name", "get_source", "pipeline_share", "worker_share"]

BUILTIN_DATASETS = ("builtin_shapes",)


def _to_rgb(image):
    """[H, W, C] uint8 with C in {1, 3, 4} -> [H, W, 3]."""
    channels = image.shape[-1]
    if channels == 1:
        return tf.image.grayscale_to_rgb(image)
    if channels == 4:
        return image[..., :3]
    return image


class TfdsSource(ImageSource):
    """Any TFDS image-classification dataset (`cifar10`, `imagenet2012`, `imagenet2012_subset/1pct`, ...).

    The dataset is prepared with `download_and_prepare()` in `data_dir`. Splits accept TFDS slicing
    (`train[:10%]`). Grayscale images become 3-channel. The id is the dataset's own "id" or "file_name"
    feature when it has one, else the TFDS record id (`tfds_id`).
    """

    def __init__(self, name: str, data_dir: str | None = None):
        check_tfds_name(name)
        self.builder = tfds.builder(name, data_dir=data_dir)
        self.builder.download_and_prepare()
        info = self.builder.info
        features = info.features
        if "image" not in features:
            raise ConfigError(f"TFDS dataset {name!r} has no 'image' feature (features: {sorted(features)}); "
                             "only image-classification datasets can be used.")
        label = features["label"] if "label" in features else None
        self._has_label = isinstance(label, tfds.features.ClassLabel)
        self.class_names = tuple(label.names) if self._has_label else ()
        self._id_key = next((key for key in ("id", "file_name") if key in features), "tfds_id")
        height, width, _ = features["image"].shape
        self.info = SourceInfo(
            name=name,
            num_classes=label.num_classes if self._has_label else 0,
            num_examples={split: split_info.num_examples for split, split_info in info.splits.items()},
            image_shape=(height, width, 3) if height and width else None,
        )

    def num_examples(self, split: str) -> int:
        """Examples in `split`, TFDS slicing included (`train[:10%]`)."""
        try:
            return self.builder.info.splits[split].num_examples
        except (KeyError, ValueError) as error:
            raise ConfigError(
                f"Dataset {self.info.name!r} has no split {split!r} ({error}). Available splits: "
                f"{sorted(self.info.num_examples)}, optionally sliced like 'train[:10%]'; pass one as "
                "--train_split/--eval_split.") from None

    def check_split(self, split: str) -> None:
        self.num_examples(split)

    def dataset(self, split: str, shuffle_files: bool = False, seed: int | None = None,
                input_context=None) -> tf.data.Dataset:
        ds = self._records(split, shuffle_files, seed, input_context=input_context)
        return ds.map(self._standardize, num_parallel_calls=tf.data.AUTOTUNE)

    def subset_dataset(self, split: str, example_ids, shuffle_files: bool = False,
                       seed: int | None = None, input_context=None) -> tf.data.Dataset:
        """Examples whose id is in `example_ids`; the others are dropped before their image is decoded."""
        ds = self._records(split, shuffle_files, seed, decode_images=False, input_context=input_context)
        ds = subsets.filter_to_ids(ds, example_ids, id_key=self._id_key)
        return self._decode_images(ds).map(self._standardize, num_parallel_calls=tf.data.AUTOTUNE)

    def _decode_images(self, ds):
        image_feature = self.builder.info.features["image"]
        return ds.map(lambda example: {**example, "image": image_feature.decode_example(example["image"])},
                      num_parallel_calls=tf.data.AUTOTUNE)

    def labels_and_ids(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """`(ids, labels)` in record order, read without decoding the images."""
        ds = self._records(split, shuffle_files=False, seed=None, decode_images=False)
        ds = ds.map(lambda example: (example[self._id_key], self._label(example)),
                    num_parallel_calls=tf.data.AUTOTUNE)
        return ids_and_labels(ds)

    def _records(self, split, shuffle_files, seed, decode_images=True, input_context=None):
        """The TFDS examples of `split` (this input pipeline's share of them, see the module docstring);
        with `decode_images=False` the images stay encoded bytes."""
        self.check_split(split)
        count, index = pipeline_share(input_context)
        by_element = count > 1 and len(self.builder.info.splits[split].file_instructions) < count
        if by_element and shuffle_files and seed is None:
            raise ValueError(f"Split {split!r} of {self.info.name} has fewer files than the {count} workers, "
                             "so they split it by example, which needs a file order they agree on: pass "
                             "the seed they share.")
        if by_element:
            logging.info("Split %r of %s has fewer files than the %d workers: every worker reads it and "
                         "keeps every %d-th example.", split, self.info.name, count, count)
        by_file = count > 1 and not by_element
        read_config = tfds.ReadConfig(add_tfds_id=True, shuffle_seed=seed,
                                      input_context=input_context if by_file else None)
        skip_decoding = by_element or not decode_images
        ds = self.builder.as_dataset(split=split, shuffle_files=shuffle_files, read_config=read_config,
                                     decoders={"image": tfds.decode.SkipDecoding()} if skip_decoding else None)
        if by_element:
            ds = ds.shard(count, index)
            if decode_images:
                ds = self._decode_images(ds)
        return ds

    def _label(self, example):
        return tf.cast(example["label"], tf.int64) if self._has_label else tf.constant(UNLABELED, tf.int64)

    def _standardize(self, example):
        return {"image": _to_rgb(example["image"]), "label": self._label(example),
                "id": example[self._id_key]}


def _builder_name(name: str) -> str:
    """'imagenet2012_subset/1pct:1.0.0' -> 'imagenet2012_subset'."""
    return name.split("/")[0].split(":")[0]


def check_tfds_name(name: str) -> None:
    """Raises ValueError saying what `--dataset` accepts when `name` is not a TFDS dataset."""
    known = tfds.list_builders()
    if _builder_name(name) in known:
        return
    close = difflib.get_close_matches(_builder_name(name), known + list(BUILTIN_DATASETS), n=3)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    looks_like_path = name.startswith((os.sep, ".", "~")) or os.sep in name.rstrip(os.sep)
    folder = f" No folder {name!r} exists either." if looks_like_path else ""
    raise ConfigError(
        f"Unknown dataset {name!r}: it is not a built-in dataset {list(BUILTIN_DATASETS)} nor a TFDS "
        f"dataset.{folder}{hint} Pass a built-in name, a TFDS name (see tfds.list_builders(), e.g. "
        "'cifar10', 'imagenet2012'), or the path of an existing folder of images.")


def get_source(dataset: str, data_dir: str | None = None, train_split: str | None = "train",
               eval_split: str | None = "test", corrupt_images: str = "skip", holdout_fraction: float = 0.1,
               builtin_num_examples: dict | None = None) -> ImageSource:
    """The source for `dataset`: a built-in name, an existing folder of images, or a TFDS name.

    `train_split` and `eval_split` are checked to exist (None skips a check). `data_dir` is where TFDS
    keeps its data; `corrupt_images` ("skip" or "fail") and `holdout_fraction` apply to image folders;
    `builtin_num_examples` ({"train": n, "test": m}) sizes the built-in dataset.

    Example:
      >>> source = get_source("builtin_shapes", builtin_num_examples={"train": 20, "test": 10})
      >>> print(source.info.num_classes, source.info.num_examples, source.info.image_shape)
      10 {'train': 20, 'test': 10} (32, 32, 3)
      >>> source.class_names[:3]
      ('disk', 'ring', 'square')
      >>> example = next(iter(source.dataset("train")))
      >>> print(sorted(example), example["image"].shape, example["image"].dtype.name)
      ['id', 'image', 'label'] (32, 32, 3) uint8

      A folder with one subfolder per class; without split subfolders, a fixed share of the files
      (chosen by a hash of their paths) is held out as the "validation" split:

      >>> import tempfile
      >>> folder = tempfile.mkdtemp()
      >>> for class_name in ("cat", "dog"):
      ...     os.makedirs(os.path.join(folder, class_name))
      ...     for index in range(3):
      ...         image = tf.fill([24, 20 + 4 * index, 3], tf.constant(40 * index, tf.uint8))
      ...         tf.io.write_file(os.path.join(folder, class_name, f"{index}.png"), tf.io.encode_png(image))
      >>> source = get_source(folder, eval_split="validation", holdout_fraction=0.3)
      >>> print(source.class_names, source.info.num_examples, source.info.image_shape)
      ('cat', 'dog') {'train': 5, 'validation': 1} None
      >>> for example in source.dataset("validation"):  # images keep their own size
      ...     print(example["id"].numpy().decode(), example["label"].numpy(), example["image"].shape)
      cat/0.png 0 (24, 20, 3)
    """
    if corrupt_images not in CORRUPT_IMAGE_POLICIES:
        raise ConfigError(f"corrupt_images={corrupt_images!r} is not one of {list(CORRUPT_IMAGE_POLICIES)}.")
    if dataset in BUILTIN_DATASETS:
        source = builtin.BuiltinShapesSource(builtin_num_examples)
    elif os.path.isdir(os.path.expanduser(dataset)):
        source = folders.ImageFolderSource(dataset, corrupt_images=corrupt_images,
                                           holdout_fraction=holdout_fraction)
    else:
        source = TfdsSource(dataset, data_dir=data_dir)
    for split in (train_split, eval_split):
        if split is not None:
            source.check_split(split)
    return source
