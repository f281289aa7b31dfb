"""What every image source shares: `ImageSource` (the interface), `SourceInfo`, and each worker's share.

A source knows its splits and yields one epoch of unbatched examples
`{"image": uint8 [H, W, 3], "label": int64 scalar (-1 when unlabeled), "id": string or int64 scalar}`.
The sources themselves (TFDS in `sources`, image folders in `folders`, the built-in data in `builtin`) build
on this module, and `sources.get_source` picks one of them; this module imports none of them.

Under several workers (`input_context` of more than one input pipeline) `worker_share` gives a worker every
n-th item of a list (files, array indices) before anything is read or decoded.

Example ids: `filter_to_ids` keeps the examples whose id is in a set (a labelled subset), `unlabel_outside`
keeps every example but sets the label of the others to `UNLABELED` (distillation). `data.subsets`, which
chooses the subsets, re-exports them.
"""
import dataclasses

import numpy as np
import tensorflow as tf

from simclr_tf import config as config_lib
from simclr_tf.config import ConfigError

CORRUPT_IMAGE_POLICIES = config_lib.CORRUPT_IMAGE_POLICIES
UNLABELED = -1  # the label of an unlabeled example


@dataclasses.dataclass(frozen=True)
class SourceInfo:
    """What the pipelines need to know about a source before reading it."""
    name: str
    num_classes: int  # 0 for unlabeled data
    num_examples: dict  # split name -> number of examples
    image_shape: tuple | None  # (H, W, 3) when every image has the same size, else None


def pipeline_share(input_context) -> tuple[int, int]:
    """`(number of input pipelines, this one's index)` of a `tf.distribute.InputContext` (or None: (1, 0))."""
    if input_context is None:
        return 1, 0
    return int(input_context.num_input_pipelines), int(input_context.input_pipeline_id)


def worker_share(items, input_context, what):
    """This input pipeline's share of a sequence: every n-th item from its index (all of them for one).

    The shares of the n pipelines are disjoint and together hold every item once. Raises ConfigError when
    there are fewer items than pipelines, since a worker without data would stall the others.
    """
    count, index = pipeline_share(input_context)
    if count == 1:
        return items
    if len(items) < count:
        raise ConfigError(f"{what} has {len(items)} examples, fewer than the {count} workers reading it, so "
                          "some workers would get none. Use more data or fewer workers.")
    return items[index::count]


class ImageSource:
    """Base class of the sources: `info`, `class_names` and one epoch of examples per split."""

    info: SourceInfo
    class_names: tuple = ()

    def dataset(self, split: str, shuffle_files: bool = False, seed: int | None = None,
                input_context=None) -> tf.data.Dataset:
        """Unbatched examples {"image", "label", "id"} of one epoch of `split`.

        With a `tf.distribute.InputContext` of several input pipelines, only this pipeline's share, chosen
        before reading (see the module docstring).
        """
        raise NotImplementedError

    def subset_dataset(self, split: str, example_ids, shuffle_files: bool = False,
                       seed: int | None = None, input_context=None) -> tf.data.Dataset:
        """Like `dataset`, with only the examples whose id is in `example_ids`.

        This default filters `dataset(split)`; sources that can drop examples before decoding them
        override it.
        """
        return filter_to_ids(
            self.dataset(split, shuffle_files=shuffle_files, seed=seed, input_context=input_context),
            example_ids)

    def labels_and_ids(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """`(ids, labels)` of every example of `split` in a fixed order: ids int64 or str, labels int64.

        This default reads `dataset(split)`, decoding every image; the sources override it with a listing
        that does not decode images.
        """
        ds = self.dataset(split).map(lambda example: (example["id"], example["label"]))
        return ids_and_labels(ds)

    def num_examples(self, split: str) -> int:
        """Number of examples in `split`; raises ValueError naming the available splits."""
        self.check_split(split)
        return self.info.num_examples[split]

    def check_split(self, split: str) -> None:
        if split not in self.info.num_examples:
            raise ConfigError(
                f"Dataset {self.info.name!r} has no split {split!r}. Available splits: "
                f"{sorted(self.info.num_examples)}; pass one of them as --train_split/--eval_split.")


def ids_and_labels(id_label_dataset, batch_size=8192):
    """`(ids, labels)` numpy arrays from a dataset of `(id, label)` scalars; string ids become str."""
    ids, labels = [np.zeros([0], np.int64)], [np.zeros([0], np.int64)]
    for id_batch, label_batch in id_label_dataset.batch(batch_size).prefetch(2).as_numpy_iterator():
        ids.append(id_batch)
        labels.append(label_batch.astype(np.int64))
    if id_label_dataset.element_spec[0].dtype == tf.string:
        ids = [np.array([i.decode("utf-8") for i in batch.tolist()], dtype=str) for batch in ids[1:]]
        ids = ids or [np.zeros([0], str)]
    return np.concatenate(ids), np.concatenate(labels)


def as_id_array(ids) -> np.ndarray:
    """Ids as an int64 array, or a unicode string array (bytes are decoded as UTF-8)."""
    ids = np.asarray(ids)
    if ids.dtype.kind in "iu" or (ids.size == 0 and ids.dtype.kind == "f"):  # np.asarray([]) is float
        return ids.astype(np.int64)
    if ids.dtype.kind == "S" or ids.dtype == object:
        return np.array([i.decode("utf-8") if isinstance(i, bytes) else str(i) for i in ids.tolist()],
                        dtype=str)
    if ids.dtype.kind == "U":
        return ids
    raise ConfigError(f"Example ids must be integers or strings, got dtype {ids.dtype}.")


def id_membership(ids, id_dtype: tf.DType):
    """A function mapping an id tensor (int or string, of dtype `id_dtype`) to whether it is in `ids`.

    Backed by a `tf.lookup.StaticHashTable`, usable inside `tf.data` functions.
    """
    ids = as_id_array(ids)
    if id_dtype == tf.string:
        keys = tf.constant(ids.astype(str), tf.string)
    elif id_dtype.is_integer:
        if ids.size and ids.dtype.kind != "i":
            raise ConfigError(f"The dataset's ids are integers but the subset's ids are strings "
                              f"({ids[0]!r}, ...): the subset was chosen from another dataset. Use its "
                              "dataset or choose a new subset.")
        keys = tf.constant(ids, tf.int64)
    else:
        raise ConfigError(f"Example ids must be integers or strings, not {id_dtype.name}.")
    if not ids.size:  # a lookup table cannot be empty
        return lambda example_id: tf.zeros_like(example_id, tf.bool)
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(keys, tf.ones_like(keys, tf.int64)), default_value=0)
    return lambda example_id: table.lookup(tf.cast(example_id, keys.dtype)) > 0


def filter_to_ids(dataset: tf.data.Dataset, ids, id_key: str = "id") -> tf.data.Dataset:
    """Only the examples (dicts) of `dataset` whose `id_key` is one of `ids` (ints or strings)."""
    is_member = id_membership(ids, dataset.element_spec[id_key].dtype)
    return dataset.filter(lambda example: is_member(example[id_key]))


def unlabel_outside(dataset: tf.data.Dataset, ids, id_key: str = "id") -> tf.data.Dataset:
    """Every example of `dataset`, with label -1 unless its id is one of `ids` (for distillation)."""
    is_member = id_membership(ids, dataset.element_spec[id_key].dtype)

    def unlabel(example):
        label = tf.where(is_member(example[id_key]), example["label"],
                         tf.constant(UNLABELED, example["label"].dtype))
        return {**example, "label": label}

    return dataset.map(unlabel, num_parallel_calls=tf.data.AUTOTUNE)
