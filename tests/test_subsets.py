"""Tests for simclr_tf.data.subsets: class-balanced seeded label subsets, their file, resume, id filters."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.config import ConfigError, DataConfig
from simclr_tf.data import builtin, subsets
from simclr_tf.persistence import label_subset

# 30, 20, 10 and 1 labelled examples of classes 0..3, and 15 unlabelled ones, ids 0..75 interleaved.
CLASS_SIZES = {0: 30, 1: 20, 2: 10, 3: 1, -1: 15}
LABELS = np.random.default_rng(0).permutation(
    np.concatenate([np.full(size, label) for label, size in CLASS_SIZES.items()])).astype(np.int64)
IDS = np.arange(len(LABELS), dtype=np.int64) * 7 + 3  # not 0..n-1, so ids are not mistaken for indices


def labels_of(ids):
    return [int(LABELS[IDS == i][0]) for i in ids]


def test_per_class_takes_the_same_count_from_every_class():
    subset = subsets.choose_labelled_subset(IDS[LABELS != 3], LABELS[LABELS != 3], per_class=5, seed=0)
    assert subset.counts_per_class == {0: 5, 1: 5, 2: 5}
    assert sorted(labels_of(subset.ids)) == [0] * 5 + [1] * 5 + [2] * 5
    assert list(subset.ids) == sorted(subset.ids) and len(set(subset.ids)) == 15
    assert subset.per_class == 5 and subset.fraction is None and subset.seed == 0


def test_per_class_larger_than_a_class_names_the_class_and_the_fix():
    with pytest.raises(ConfigError, match=r"Class 2 has only 10 labelled example\(s\).*--labels_per_class=11"
                                          r".*at most 10"):
        subsets.choose_labelled_subset(IDS[LABELS != 3], LABELS[LABELS != 3], per_class=11)


def test_fraction_is_proportional_per_class_rounded_half_up_with_at_least_one():
    subset = subsets.choose_labelled_subset(IDS, LABELS, fraction=0.25, seed=1)
    # 30 * 0.25 = 7.5 -> 8, 20 * 0.25 = 5, 10 * 0.25 = 2.5 -> 3, 1 * 0.25 -> at least 1.
    assert subset.counts_per_class == {0: 8, 1: 5, 2: 3, 3: 1}
    assert sorted(labels_of(subset.ids)) == [0] * 8 + [1] * 5 + [2] * 3 + [3]
    everything = subsets.choose_labelled_subset(IDS, LABELS, fraction=1.0)
    assert sorted(everything.ids) == sorted(IDS[LABELS >= 0].tolist())


def test_unlabelled_examples_are_never_chosen():
    for seed in range(5):
        subset = subsets.choose_labelled_subset(IDS, LABELS, fraction=1.0 if seed == 0 else 0.5, seed=seed)
        assert -1 not in labels_of(subset.ids)
    with pytest.raises(ConfigError, match="no labelled examples"):
        subsets.choose_labelled_subset(IDS[:3], [-1, -1, -1], per_class=1)


def test_subset_is_reproducible_for_a_seed_and_independent_of_input_order():
    first = subsets.choose_labelled_subset(IDS, LABELS, fraction=0.3, seed=7)
    assert subsets.choose_labelled_subset(IDS, LABELS, fraction=0.3, seed=7) == first
    order = np.random.default_rng(1).permutation(len(IDS))
    shuffled = subsets.choose_labelled_subset(IDS[order], LABELS[order], fraction=0.3, seed=7)
    assert shuffled.ids == first.ids
    other_seed = subsets.choose_labelled_subset(IDS, LABELS, fraction=0.3, seed=8)
    assert other_seed.ids != first.ids and other_seed.counts_per_class == first.counts_per_class


def test_string_ids_given_as_bytes_or_str_choose_the_same_subset():
    names = np.array([f"n{label}_{i}.JPEG" for i, label in enumerate(LABELS)])
    as_str = subsets.choose_labelled_subset(names, LABELS, per_class=1, seed=3)
    as_bytes = subsets.choose_labelled_subset(np.char.encode(names, "utf-8"), LABELS, per_class=1, seed=3)
    assert as_str.ids == as_bytes.ids and all(isinstance(i, str) for i in as_str.ids)
    assert sorted(int(i[1]) for i in as_str.ids) == [0, 1, 2, 3]


def test_duplicate_ids_and_two_size_settings_are_refused():
    with pytest.raises(ConfigError, match="not unique"):
        subsets.choose_labelled_subset([1, 1, 2], [0, 0, 1], per_class=1)
    with pytest.raises(ConfigError, match="exactly one"):
        subsets.choose_labelled_subset(IDS, LABELS, fraction=0.5, per_class=2)


@pytest.mark.parametrize("string_ids", [False, True])
def test_subset_file_round_trip(tmp_path, string_ids):
    ids = np.array([f"img{i}" for i in IDS]) if string_ids else IDS
    subset = subsets.choose_labelled_subset(ids, LABELS, fraction=0.2, seed=4, dataset="toy", split="train")
    path = label_subset.write_subset(subset, str(tmp_path / "run"))
    assert path == str(tmp_path / "run" / "label_subset.json")
    assert os.listdir(tmp_path / "run") == ["label_subset.json"]  # no temporary file left behind
    assert label_subset.read_subset(path) == subset
    contents = json.loads(open(path).read())
    assert contents["ids"] == list(subset.ids)
    assert contents["counts_per_class"] == {"0": 6, "1": 4, "2": 2, "3": 1}
    assert contents["seed"] == 4 and contents["label_fraction"] == 0.2
    assert contents["labels_per_class"] is None
    assert "default_rng([4, class])" in contents["how_chosen"]


def test_unreadable_subset_file_names_the_file(tmp_path):
    (tmp_path / "label_subset.json").write_text("{not json")
    with pytest.raises(ConfigError, match="label_subset.json is not a readable label subset"):
        label_subset.read_subset(str(tmp_path / "label_subset.json"))


class CountingSource(builtin.BuiltinShapesSource):
    """builtin_shapes that counts how often the split is listed."""

    def __init__(self):
        super().__init__({"train": 60, "test": 10})
        self.listings = 0

    def labels_and_ids(self, split):
        self.listings += 1
        return super().labels_and_ids(split)


def test_a_restarted_run_reuses_its_subset_and_refuses_other_settings(tmp_path):
    model_dir = str(tmp_path)
    data = DataConfig(dataset="builtin_shapes", labels_per_class=2, seed=5)
    source = CountingSource()
    first = label_subset.subset_for_run(source, "train", data, model_dir)
    assert first.counts_per_class == {label: 2 for label in range(10)} and first.seed == 5
    assert label_subset.read_subset(os.path.join(model_dir, "label_subset.json")) == first
    again = label_subset.subset_for_run(source, "train", data, model_dir)
    assert again == first and source.listings == 1  # read back from the file, the data is not listed again
    for changed in (DataConfig(labels_per_class=3, seed=5), DataConfig(labels_per_class=2, seed=6),
                    DataConfig(label_fraction=0.5, seed=5), DataConfig()):
        with pytest.raises(ConfigError, match=r"label_subset.json holds the labelled subset of an earlier "
                                              r"run.*new --model_dir"):
            label_subset.subset_for_run(source, "train", changed, model_dir)
    with pytest.raises(ConfigError, match="label_subset.json"):
        label_subset.subset_for_run(source, "test", data, model_dir)


def test_every_label_needs_no_subset_and_no_file(tmp_path):
    assert label_subset.subset_for_run(CountingSource(), "train", DataConfig(), str(tmp_path)) is None
    assert os.listdir(tmp_path) == []
    unseeded = label_subset.subset_for_run(CountingSource(), "train", DataConfig(label_fraction=0.1), None)
    assert unseeded.seed == 0 and unseeded.counts_per_class == {label: 1 for label in range(10)}


@pytest.mark.parametrize("ids", [np.arange(6, dtype=np.int64), np.array([c.encode() for c in "abcdef"])],
                         ids=["int_ids", "string_ids"])
def test_filter_to_ids_and_unlabel_outside(ids):
    ds = tf.data.Dataset.from_tensor_slices({"id": ids, "label": np.arange(6, dtype=np.int64)})
    keep = [ids[1], ids[4]] if ids.dtype.kind == "i" else ["b", "e"]
    kept = [int(example["label"]) for example in subsets.filter_to_ids(ds, keep)]
    assert kept == [1, 4]
    labels = [int(example["label"]) for example in subsets.unlabel_outside(ds, keep)]
    assert labels == [-1, 1, -1, -1, 4, -1]
    assert list(subsets.filter_to_ids(ds, [])) == []


def test_string_subset_ids_on_integer_ids_are_refused():
    ds = tf.data.Dataset.from_tensor_slices({"id": np.arange(3, dtype=np.int64)})
    with pytest.raises(ConfigError, match="chosen from another dataset"):
        subsets.filter_to_ids(ds, ["a"])
