"""Tests for simclr_tf.data.sources: the TFDS source and get_source's dispatch and checks.

TFDS data comes from `tfds.testing.mock_data` (no download). Its split sizes come from metadata files the
fixture writes, as `tfds` would after `download_and_prepare()`.
"""
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from simclr_tf.data import builtin, folders, sources, subsets

SPLIT_SIZES = {"train": 20, "test": 10}
# The real sizes of the SimCLR 1% ImageNet subset (12,811 lines in the reference's imagenet_subsets/
# 1percent.txt) and of the ImageNet validation set.
IMAGENET_1PCT_SIZES = {"train": 12811, "validation": 50000}
MOCK_EXAMPLES = 6


@pytest.fixture(scope="module")
def tfds_data_dir(tmp_path_factory):
    """A TFDS data_dir holding metadata (no records): cifar10 and mnist with SPLIT_SIZES, and
    imagenet2012_subset/1pct with IMAGENET_1PCT_SIZES."""
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    for name, sizes in (("cifar10", SPLIT_SIZES), ("mnist", SPLIT_SIZES),
                        ("imagenet2012_subset/1pct", IMAGENET_1PCT_SIZES)):
        builder = tfds.builder(name, data_dir=data_dir)
        template = tfds.core.ShardedFileTemplate(data_dir=builder.data_dir, dataset_name=builder.name,
                                                 filetype_suffix="tfrecord")
        builder.info.set_splits(tfds.core.SplitDict([
            tfds.core.SplitInfo(name=split, shard_lengths=[size], num_bytes=0, filename_template=template)
            for split, size in sizes.items()]))
        os.makedirs(builder.data_dir, exist_ok=True)
        builder.info.write_to_directory(builder.data_dir)
    return data_dir


@pytest.fixture
def mock_tfds(tfds_data_dir):
    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES, policy=tfds.testing.MockPolicy.USE_FILES,
                                data_dir=tfds_data_dir):
        yield tfds_data_dir


def test_tfds_cifar10_yields_standard_examples(mock_tfds):
    source = sources.get_source("cifar10", data_dir=mock_tfds)
    assert isinstance(source, sources.TfdsSource)
    assert source.info == sources.SourceInfo(name="cifar10", num_classes=10, num_examples=SPLIT_SIZES,
                                             image_shape=(32, 32, 3))
    assert len(source.class_names) == 10
    examples = list(source.dataset("train", shuffle_files=True, seed=0))
    assert len(examples) == MOCK_EXAMPLES
    for example in examples:
        assert set(example) == {"image", "label", "id"}
        assert example["image"].dtype == tf.uint8 and example["image"].shape == (32, 32, 3)
        assert example["label"].dtype == tf.int64 and example["label"].shape == ()
        assert 0 <= int(example["label"]) < 10
        assert example["id"].dtype == tf.string and example["id"].shape == ()


def test_tfds_grayscale_images_become_rgb(mock_tfds):
    source = sources.get_source("mnist", data_dir=mock_tfds)
    assert source.info.image_shape == (28, 28, 3)
    example = next(iter(source.dataset("test")))
    image = example["image"].numpy()
    assert image.shape == (28, 28, 3)
    assert (image[..., 0] == image[..., 1]).all() and (image[..., 0] == image[..., 2]).all()
    # mnist has no id feature of its own: the TFDS record id stands in.
    assert "mnist-test" in example["id"].numpy().decode()


def test_tfds_split_slicing_counts_examples(mock_tfds):
    source = sources.get_source("cifar10", data_dir=mock_tfds, train_split="train[:50%]")
    assert source.num_examples("train[:50%]") == 10
    assert source.num_examples("test") == 10


def test_tfds_unknown_split_names_the_available_ones(mock_tfds):
    with pytest.raises(ValueError, match=r"no split 'validation'.*\['test', 'train'\]"):
        sources.get_source("cifar10", data_dir=mock_tfds, eval_split="validation")


def test_unknown_dataset_name_says_what_is_accepted():
    with pytest.raises(ValueError) as error:
        sources.get_source("cifar1O")
    message = str(error.value)
    assert "Unknown dataset 'cifar1O'" in message
    assert "builtin_shapes" in message and "folder" in message and "tfds.list_builders()" in message
    assert "'cifar10'" in message  # the close match is suggested


def test_missing_folder_path_is_reported_as_such():
    with pytest.raises(ValueError, match="No folder '/no/such/images' exists"):
        sources.get_source("/no/such/images")


def test_get_source_dispatches_builtin_and_folder_names(tmp_path):
    source = sources.get_source("builtin_shapes", builtin_num_examples={"train": 10, "test": 10})
    assert isinstance(source, builtin.BuiltinShapesSource)
    assert source.info.num_examples == {"train": 10, "test": 10}
    tf.io.write_file(f"{tmp_path}/a.png", tf.io.encode_png(tf.zeros([2, 2, 3], tf.uint8)))
    source = sources.get_source(str(tmp_path), eval_split="validation", corrupt_images="fail")
    assert isinstance(source, folders.ImageFolderSource)
    assert source.corrupt_images == "fail"


def test_get_source_checks_splits_and_policies():
    with pytest.raises(ValueError, match=r"no split 'validation'.*\['test', 'train'\]"):
        sources.get_source("builtin_shapes", eval_split="validation")
    with pytest.raises(ValueError, match="corrupt_images='ignore'"):
        sources.get_source("builtin_shapes", corrupt_images="ignore")
    assert sources.get_source("builtin_shapes", eval_split=None).info.name == "builtin_shapes"


def ids_and_labels_read(ds):
    """(ids, labels) of a dataset's examples in order, string ids decoded."""
    ids, labels = [], []
    for example in ds:
        example_id = example["id"].numpy()
        ids.append(example_id.decode() if isinstance(example_id, bytes) else int(example_id))
        labels.append(int(example["label"]))
    return ids, labels


def check_listing_matches_the_data(source, split):
    """labels_and_ids(split) lists the examples dataset(split) yields, in the same order."""
    ids, labels = source.labels_and_ids(split)
    assert labels.dtype == np.int64 and ids.dtype.kind in "iU"
    assert (ids.tolist(), labels.tolist()) == ids_and_labels_read(source.dataset(split))
    return ids, labels


def check_subset_dataset(source, split, ids, labels):
    """subset_dataset yields exactly the chosen examples, with their labels."""
    chosen = subsets.choose_labelled_subset(ids, labels, per_class=1, seed=0)
    got_ids, got_labels = ids_and_labels_read(source.subset_dataset(split, chosen.ids))
    assert sorted(got_ids) == list(chosen.ids)
    label_of = dict(zip(ids.tolist(), labels.tolist()))
    assert got_labels == [label_of[i] for i in got_ids]


def test_builtin_labels_and_ids_without_drawing_images():
    source = builtin.BuiltinShapesSource({"train": 30, "test": 10})
    ids, labels = source.labels_and_ids("train")
    assert source._arrays == {}  # listing did not render the images
    np.testing.assert_array_equal(ids, np.arange(30))
    check_listing_matches_the_data(source, "train")
    check_subset_dataset(source, "train", ids, labels)


def test_folder_labels_and_ids_come_from_the_listing(tmp_path):
    for index, name in enumerate(["cat/a.png", "cat/b.png", "dog/c.png", "dog/x/d.png", "emu/e.png"]):
        path = os.path.join(tmp_path, *name.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tf.io.write_file(path, tf.io.encode_png(tf.fill([4, 3, 3], tf.constant(40 * index, tf.uint8))))
    (tmp_path / "emu" / "broken.png").write_bytes(b"not a png")
    source = folders.ImageFolderSource(str(tmp_path), corrupt_images="fail", holdout_fraction=0.0)
    ids, labels = source.labels_and_ids("train")
    assert ids.tolist() == ["cat/a.png", "cat/b.png", "dog/c.png", "dog/x/d.png", "emu/broken.png",
                            "emu/e.png"]
    assert labels.tolist() == [0, 0, 1, 1, 2, 2]  # no file was decoded, the broken one is listed
    keep = ids != "emu/broken.png"
    # subset_dataset never opens files outside the subset, so the broken file does not stop it.
    check_subset_dataset(source, "train", ids[keep], labels[keep])
    got, _ = ids_and_labels_read(source.subset_dataset("train", ["dog/x/d.png", "cat/a.png"]))
    assert sorted(got) == ["cat/a.png", "dog/x/d.png"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="broken.png"):
        list(source.dataset("train"))


def test_tfds_labels_and_ids_match_the_data(mock_tfds):
    source = sources.get_source("cifar10", data_dir=mock_tfds)
    ids, labels = check_listing_matches_the_data(source, "train")
    assert len(ids) == MOCK_EXAMPLES and ids.dtype.kind == "U"
    check_subset_dataset(source, "train", ids, labels)


def test_tfds_imagenet_1pct_subset_by_name(mock_tfds):
    source = sources.get_source("imagenet2012_subset/1pct", data_dir=mock_tfds, eval_split="validation")
    assert isinstance(source, sources.TfdsSource)
    assert source.info.num_examples == IMAGENET_1PCT_SIZES
    assert source.num_examples("train") == 12811 and source.num_examples("validation") == 50000
    assert source.info.num_classes == 1000 and source.class_names[0] == "n01440764"
    ids, labels = check_listing_matches_the_data(source, "train")
    assert len(ids) == MOCK_EXAMPLES  # mock records, ids from the dataset's file_name feature
    check_subset_dataset(source, "train", ids, labels)
    example = next(iter(source.subset_dataset("train", ids[:1])))
    assert example["image"].dtype == tf.uint8 and example["image"].shape[-1] == 3


class StringIdSource(sources.ImageSource):
    """A source that only implements dataset(), to exercise the base class's listing and subset."""

    info = sources.SourceInfo(name="strings", num_classes=2, num_examples={"train": 5}, image_shape=(2, 2, 3))

    def dataset(self, split, shuffle_files=False, seed=None, input_context=None):  # one input pipeline
        return tf.data.Dataset.from_tensor_slices({
            "image": np.zeros([5, 2, 2, 3], np.uint8), "label": np.array([0, 1, -1, 1, 0], np.int64),
            "id": np.array(["e", "d", "c", "b", "a"])})


def test_base_source_lists_and_filters_through_its_dataset():
    source = StringIdSource()
    ids, labels = check_listing_matches_the_data(source, "train")
    assert ids.tolist() == ["e", "d", "c", "b", "a"] and labels.tolist() == [0, 1, -1, 1, 0]
    check_subset_dataset(source, "train", ids, labels)


def _ids_per_pipeline(read, count):
    """[ids of pipeline 0, ..., ids of pipeline count-1], each read with its own InputContext."""
    return [[example["id"].numpy() for example in read(tf.distribute.InputContext(
        num_input_pipelines=count, input_pipeline_id=index, num_replicas_in_sync=count))]
        for index in range(count)]


def test_tfds_workers_read_their_own_files_and_together_every_example_once(tmp_path):
    from tests.tfds_records import write_tfds_records

    write_tfds_records(str(tmp_path), "cifar10", {"train": [3, 2, 2, 3]})
    source = sources.get_source("cifar10", data_dir=str(tmp_path), eval_split=None)
    shares = _ids_per_pipeline(lambda context: source.dataset(
        "train", shuffle_files=True, seed=5, input_context=context), 2)
    files = [{int(i[len("train_"):]) for i in share} for share in shares]
    # TFDS deals the files out in order: files 0 and 2 (examples 0-2, 5-6) to worker 0, 1 and 3 to worker 1.
    assert files == [{0, 1, 2, 5, 6}, {3, 4, 7, 8, 9}]
    assert all(len(share) == 5 for share in shares)
    ids, _ = source.labels_and_ids("train")  # the subset reader shards the same way
    subset = _ids_per_pipeline(lambda context: source.subset_dataset(
        "train", ids[::2], shuffle_files=True, seed=5, input_context=context), 2)
    assert sorted(subset[0] + subset[1]) == sorted(i.encode() for i in ids[::2])
    assert {int(i[len("train_"):]) for i in subset[0]} <= files[0]


def test_tfds_split_of_fewer_files_than_workers_is_dealt_out_by_example(tmp_path):
    from tests.tfds_records import write_tfds_records

    write_tfds_records(str(tmp_path), "cifar10", {"train": [4, 4, 4]})
    source = sources.get_source("cifar10", data_dir=str(tmp_path), eval_split=None)
    # Four workers, three files: each reads every file, in the shuffled order the shared seed gives.
    shares = _ids_per_pipeline(lambda context: source.dataset(
        "train", shuffle_files=True, seed=3, input_context=context), 4)
    assert sorted(sum(shares, [])) == sorted(f"train_{j:05d}".encode() for j in range(12))
    assert [len(share) for share in shares] == [3, 3, 3, 3]
    example = next(iter(source.dataset("train", seed=3, input_context=tf.distribute.InputContext(4, 1, 4))))
    assert example["image"].shape == (32, 32, 3) and example["image"].dtype == tf.uint8  # decoded after
    with pytest.raises(ValueError, match="needs a file order they agree on: pass the seed they share"):
        source.dataset("train", shuffle_files=True, seed=None, input_context=tf.distribute.InputContext(4, 0, 4))


def test_too_few_examples_for_the_workers_is_refused():
    with pytest.raises(ValueError, match="has 3 examples, fewer than the 4 workers"):
        sources.worker_share([1, 2, 3], tf.distribute.InputContext(4, 0, 4), "Split 'train'")
    assert sources.worker_share([1, 2, 3], None, "unused") == [1, 2, 3]
