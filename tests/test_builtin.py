"""Tests for simclr_tf.data.builtin: the generated builtin_shapes dataset."""
import numpy as np
import tensorflow as tf

from simclr_tf.data import builtin


def test_images_and_labels_have_the_documented_shapes_and_dtypes():
    images, labels = builtin.generate_builtin_shapes(30, seed=0)
    assert images.shape == (30, 32, 32, 3) and images.dtype == np.uint8
    assert labels.shape == (30,) and labels.dtype == np.int64
    assert labels.min() >= 0 and labels.max() < len(builtin.class_names) == 10


def test_generation_is_deterministic_for_a_seed_and_differs_across_seeds():
    images_a, labels_a = builtin.generate_builtin_shapes(40, seed=5)
    images_b, labels_b = builtin.generate_builtin_shapes(40, seed=5)
    images_c, labels_c = builtin.generate_builtin_shapes(40, seed=6)
    np.testing.assert_array_equal(images_a, images_b)
    np.testing.assert_array_equal(labels_a, labels_b)
    assert not np.array_equal(images_a, images_c)
    assert not np.array_equal(labels_a, labels_c)


def test_classes_are_balanced():
    _, labels = builtin.generate_builtin_shapes(105, seed=0)
    counts = np.bincount(labels, minlength=10)
    assert counts.min() == 10 and counts.max() == 11


def test_images_are_not_blank():
    images, _ = builtin.generate_builtin_shapes(200, seed=0)
    # Every image has an object that stands out from its background, so its pixels spread widely.
    spread = images.reshape(200, -1).astype(np.float32).std(axis=1)
    assert spread.min() > 10


def test_mean_colour_does_not_give_away_the_class():
    # Share of the variance of each image's mean colour that the class explains (eta squared). With
    # colour independent of class it is about (classes - 1) / N = 0.0045; 0.008 at most when written.
    images, labels = builtin.generate_builtin_shapes(2000, seed=0)
    colour = images.mean(axis=(1, 2))
    class_means = np.stack([colour[labels == k].mean(0) for k in range(10)])
    explained = ((class_means[labels] - colour.mean(0)) ** 2).sum(0) / ((colour - colour.mean(0)) ** 2).sum(0)
    assert explained.max() < 0.02


def test_source_info_matches_the_datasets():
    source = builtin.BuiltinShapesSource({"train": 50, "test": 20})
    assert source.info.num_classes == 10
    assert source.info.image_shape == (32, 32, 3)
    assert source.class_names == builtin.class_names
    for split in ("train", "test"):
        examples = list(source.dataset(split))
        assert len(examples) == source.info.num_examples[split] == source.num_examples(split)
        first = examples[0]
        assert set(first) == {"image", "label", "id"}
        assert first["image"].dtype == tf.uint8 and first["image"].shape == (32, 32, 3)
        assert first["label"].dtype == tf.int64 and first["label"].shape == ()
        assert first["id"].dtype == tf.int64


def test_train_and_test_splits_hold_different_images():
    source = builtin.BuiltinShapesSource({"train": 20, "test": 20})
    train_images, _ = source.arrays("train")
    test_images, _ = source.arrays("test")
    assert not np.array_equal(train_images, test_images)


def test_shuffled_dataset_is_a_seeded_permutation():
    source = builtin.BuiltinShapesSource({"train": 30, "test": 10})

    def ids(**kwargs):
        return [int(example["id"]) for example in source.dataset("train", **kwargs)]

    assert ids() == list(range(30))
    shuffled = ids(shuffle_files=True, seed=1)
    assert sorted(shuffled) == list(range(30)) and shuffled != list(range(30))
    assert ids(shuffle_files=True, seed=1) == shuffled


def test_workers_get_disjoint_shares_of_the_indices():
    source = builtin.BuiltinShapesSource({"train": 7, "test": 2})
    images, labels = source.arrays("train")
    for index, expected in enumerate(([0, 2, 4, 6], [1, 3, 5])):
        context = tf.distribute.InputContext(2, index, 2)
        examples = list(source.dataset("train", shuffle_files=True, seed=0, input_context=context))
        assert sorted(int(e["id"]) for e in examples) == expected
        for example in examples:  # each id keeps its own image and label
            np.testing.assert_array_equal(example["image"], images[int(example["id"])])
            assert int(example["label"]) == labels[int(example["id"])]
        subset = source.subset_dataset("train", [1, 2, 3], input_context=context)
        assert sorted(int(e["id"]) for e in subset) == [[1, 3], [2]][index]  # every other id of the subset
