"""`model_dir/label_subset.json`: the labelled subset a fine-tuning or distillation run trains on.

`simclr_tf.data.subsets` chooses the subset and turns it into a JSON record and back; this module names
the file, writes it atomically on a run's first start and reads it back, checked, on every restart.
"""
import json

import tensorflow as tf

from simclr_tf.config import ConfigError, DataConfig
from simclr_tf.data import subsets
from simclr_tf.data.subsets import LabelSubset
from simclr_tf.persistence import atomic
from simclr_tf.persistence import run_dir

SUBSET_FILE = run_dir.SUBSET_FILE


def write_subset(subset: LabelSubset, model_dir: str) -> str:
    """Writes `model_dir/label_subset.json` atomically (temporary file, then rename); returns its path."""
    return atomic.write_json(run_dir.subset_path(model_dir), subsets.to_record(subset))


def read_subset(path: str) -> LabelSubset:
    """The subset a `write_subset` file holds; ConfigError naming the file if it cannot be read."""
    try:
        with tf.io.gfile.GFile(path) as f:
            return subsets.from_record(json.load(f))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise ConfigError(f"{path} is not a readable label subset ({error!r}). Delete it to draw the subset "
                          "again, or use a new --model_dir.") from None


def subset_for_run(source, split: str, data: DataConfig, model_dir: str | None) -> LabelSubset | None:
    """The run's labelled subset, or None for every label; reused from `model_dir` on a restart.

    The subset is seeded with `data.seed` (0 when unset). If `model_dir/label_subset.json` exists it must
    come from the same dataset, split, fraction or count per class, and seed: then it is read back without
    listing the dataset again; otherwise ConfigError names the file. A new subset is written there.

    Example:
      >>> import tempfile
      >>> from simclr_tf.data.sources import get_source
      >>> source = get_source("builtin_shapes", builtin_num_examples={"train": 40, "test": 8})
      >>> model_dir = tempfile.mkdtemp()
      >>> subset = subset_for_run(source, "train", DataConfig(labels_per_class=2, seed=0), model_dir)  # 10 classes
      >>> len(subset.ids), tf.io.gfile.listdir(model_dir)
      (20, ['label_subset.json'])
      >>> subset_for_run(source, "train", DataConfig(labels_per_class=2, seed=0), model_dir) == subset
      True
    """
    wanted = subsets.subset_settings(data, source.info.name, split)
    path = run_dir.subset_path(model_dir) if model_dir else None
    if path and tf.io.gfile.exists(path):
        recorded = read_subset(path)
        subsets.check_reusable(recorded, wanted, path)
        return recorded
    if wanted is None:
        return None
    subset = subsets.choose_for_run(source, split, wanted)
    if path:
        write_subset(subset, model_dir)
    return subset
