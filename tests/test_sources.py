"""Tests for simclr_tf.data.sources: the TFDS source and get_source's dispatch and checks.

TFDS data comes from `tfds.testing.mock_data` (no download). Its split sizes come from metadata files the
fixture writes, as `tfds` would after `download_and_prepare()`.
"""
import os

import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from simclr_tf.data import builtin, folders, sources

SPLIT_SIZES = {"train": 20, "test": 10}
MOCK_EXAMPLES = 6


@pytest.fixture(scope="module")
def tfds_data_dir(tmp_path_factory):
    """A TFDS data_dir holding metadata (no records) for cifar10 and mnist, with SPLIT_SIZES."""
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    for name in ("cifar10", "mnist"):
        builder = tfds.builder(name, data_dir=data_dir)
        template = tfds.core.ShardedFileTemplate(data_dir=builder.data_dir, dataset_name=name,
                                                 filetype_suffix="tfrecord")
        builder.info.set_splits(tfds.core.SplitDict([
            tfds.core.SplitInfo(name=split, shard_lengths=[size], num_bytes=0, filename_template=template)
            for split, size in SPLIT_SIZES.items()]))
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
