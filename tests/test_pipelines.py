"""Input pipelines: two views per image, seeded, batched per replica; fine-tuning batches; eval batches."""
import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.config import DataConfig
from simclr_tf.data import builtin, pipelines
from simclr_tf.data.sources import ImageSource, SourceInfo
from simclr_tf.persistence import label_subset


class ArraySource(ImageSource):
    """A tiny in-memory source; `sizes` gives each image its own (H, W) to exercise the per-image path."""

    def __init__(self, num_examples=12, sizes=None):
        rng = np.random.default_rng(0)
        sizes = sizes or [(24, 24)] * num_examples
        self.images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in sizes]
        self.labels = np.arange(len(sizes)) % 3
        same_size = len(set(sizes)) == 1
        self.info = SourceInfo(name="arrays", num_classes=3, num_examples={"train": len(sizes)},
                               image_shape=sizes[0] + (3,) if same_size else None)

    def dataset(self, split, shuffle_files=False, seed=None, input_context=None):  # one input pipeline
        def gen():
            for i, (image, label) in enumerate(zip(self.images, self.labels)):
                yield {"image": image, "label": np.int64(label), "id": np.int64(i)}
        signature = {"image": tf.TensorSpec([None, None, 3], tf.uint8),
                     "label": tf.TensorSpec([], tf.int64), "id": tf.TensorSpec([], tf.int64)}
        return tf.data.Dataset.from_generator(gen, output_signature=signature)


DATA = DataConfig(dataset="arrays", image_size=16, color_jitter_strength=0.5, use_blur=False,
                  shuffle_buffer=1)


@pytest.mark.parametrize("sizes", [None, [(20 + i, 30 - i) for i in range(12)]])
def test_pretrain_batches_hold_two_different_views(sizes):
    source = ArraySource(sizes=sizes)
    (view_1, view_2), labels = next(iter(
        pipelines.build_pretrain_dataset(source, "train", DATA, batch_size=4, seed=3)))
    assert view_1.shape == view_2.shape == (4, 16, 16, 3)
    assert labels.shape == (4,)
    assert 0.0 <= float(tf.reduce_min(view_1)) and float(tf.reduce_max(view_1)) <= 1.0
    assert float(tf.reduce_mean(tf.abs(view_1 - view_2))) > 0.01


def test_pretrain_pipeline_is_reproducible_for_a_seed():
    def first_batch(seed):
        ds = pipelines.build_pretrain_dataset(ArraySource(), "train", DATA, batch_size=4, seed=seed)
        (view_1, _), _ = next(iter(ds))
        return view_1.numpy()

    np.testing.assert_array_equal(first_batch(5), first_batch(5))
    assert np.abs(first_batch(5) - first_batch(6)).mean() > 0.01


def test_eval_batches_are_deterministic_and_keep_the_last_short_batch():
    source = ArraySource(num_examples=10)
    batches = list(pipelines.build_eval_dataset(source, "train", DATA, batch_size=4))
    assert [b[0].shape[0] for b in batches] == [4, 4, 2]
    again = list(pipelines.build_eval_dataset(source, "train", DATA, batch_size=4))
    np.testing.assert_array_equal(batches[0][0].numpy(), again[0][0].numpy())


def test_distributed_single_replica_returns_the_plain_dataset():
    ds = pipelines.distributed(tf.distribute.get_strategy(), pipelines.build_eval_dataset, 4,
                               source=ArraySource(), split="train", data=DATA)
    images, _ = next(iter(ds))
    assert images.shape == (4, 16, 16, 3)


@pytest.mark.slow
def test_two_replicas_each_receive_half_the_global_batch_for_pretraining_and_finetuning():
    from tests.subprocess_runner import run_with_devices
    result = run_with_devices("""
from simclr_tf.config import DataConfig
from simclr_tf.data import builtin, pipelines, subsets
from simclr_tf.data.builtin import BuiltinShapesSource
strategy = tf.distribute.MirroredStrategy()
data = DataConfig(dataset="builtin_shapes", image_size=16, use_blur=False, shuffle_buffer=10)
source = BuiltinShapesSource({"train": 40, "test": 10})
ds = pipelines.distributed(strategy, pipelines.build_pretrain_dataset, 8, source=source, split="train",
                           data=data, seed=0)
(view_1, view_2), labels = next(iter(ds))
ds = pipelines.distributed(strategy, pipelines.build_finetune_dataset, 8, source=source, split="train",
                           data=data, seed=0, example_ids=[3, 5, 8])
images, finetune_labels = next(iter(ds))
report([[list(v.shape) for v in strategy.experimental_local_results(view_1)],
        [list(v.shape) for v in strategy.experimental_local_results(images)],
        sorted(set(np.concatenate(strategy.experimental_local_results(finetune_labels)).tolist())),
        source.arrays("train")[1][[3, 5, 8]].tolist()])
""", num_devices=2)
    views_shapes, finetune_shapes, finetune_labels, subset_labels = result
    assert views_shapes == finetune_shapes == [[4, 16, 16, 3], [4, 16, 16, 3]]
    assert finetune_labels == sorted(set(subset_labels))


@pytest.mark.parametrize("sizes", [None, [(20 + i, 30 - i) for i in range(12)]])
def test_sample_views_for_summaries(sizes):
    view_1, view_2 = pipelines.sample_views(ArraySource(sizes=sizes), "train", DATA, 3)
    assert view_1.shape == view_2.shape == (3, 16, 16, 3)
    assert float(tf.reduce_mean(tf.abs(view_1 - view_2))) > 0.01


class ConstantImageSource(ImageSource):
    """Image i is constant with value 10 * i + 5, so the image itself tells which example it is."""

    def __init__(self, labels, sizes=None, num_classes=4):
        self.labels = np.asarray(labels, np.int64)
        self.sizes = sizes or [(20, 20)] * len(self.labels)
        same_size = len(set(self.sizes)) == 1
        self.info = SourceInfo(name="constant", num_classes=num_classes,
                               num_examples={"train": len(self.labels)},
                               image_shape=self.sizes[0] + (3,) if same_size else None)

    def dataset(self, split, shuffle_files=False, seed=None, input_context=None):  # one input pipeline
        def gen():
            for i, ((h, w), label) in enumerate(zip(self.sizes, self.labels)):
                yield {"image": np.full((h, w, 3), 10 * i + 5, np.uint8), "label": label, "id": np.int64(i)}
        signature = {"image": tf.TensorSpec([None, None, 3], tf.uint8),
                     "label": tf.TensorSpec([], tf.int64), "id": tf.TensorSpec([], tf.int64)}
        return tf.data.Dataset.from_generator(gen, output_signature=signature)


# Labels of the 12 constant images: classes 0..3, and examples 3 and 7 unlabelled.
CONSTANT_LABELS = [0, 1, 2, -1, 0, 1, 2, -1, 0, 1, 2, 3]


def finetune_examples(ds, num_batches):
    """[(example index read back from the image, label)] of the first batches; checks shapes and range."""
    pairs = []
    for images, labels in ds.take(num_batches):
        assert images.shape == (8, 16, 16, 3) and images.dtype == tf.float32
        assert labels.shape == (8,) and labels.dtype == tf.int64
        images = images.numpy()
        assert images.min() >= 0.0 and images.max() <= 1.0
        # Crop and flip only: a constant image stays constant (colour distortion would change it).
        np.testing.assert_allclose(images.max(axis=(1, 2, 3)), images.min(axis=(1, 2, 3)), atol=1e-3)
        indices = np.round((images[:, 0, 0, 0] * 255 - 5) / 10).astype(int)
        pairs += list(zip(indices.tolist(), labels.numpy().tolist()))
    return pairs


@pytest.mark.parametrize("sizes", [None, [(20 + i, 30 - i) for i in range(12)]])
def test_finetune_batches_hold_only_the_subset_with_its_labels(sizes):
    source = ConstantImageSource(CONSTANT_LABELS, sizes=sizes)
    ds = pipelines.build_finetune_dataset(source, "train", DATA, batch_size=8, seed=1, example_ids=[1, 2, 6])
    pairs = finetune_examples(ds, 3)  # 3 examples fill batches of 8: the data repeats before batching
    assert {index for index, _ in pairs} == {1, 2, 6}
    assert all(label == CONSTANT_LABELS[index] for index, label in pairs)


def test_finetune_without_a_subset_drops_unlabelled_examples():
    ds = pipelines.build_finetune_dataset(ConstantImageSource(CONSTANT_LABELS), "train", DATA, 8, seed=0)
    pairs = finetune_examples(ds, 4)
    assert {index for index, _ in pairs} == {0, 1, 2, 4, 5, 6, 8, 9, 10, 11}
    assert all(label == CONSTANT_LABELS[index] for index, label in pairs)


def test_keep_unlabelled_keeps_every_image_and_unlabels_those_outside_the_subset():
    source = ConstantImageSource(CONSTANT_LABELS)
    ds = pipelines.build_finetune_dataset(source, "train", DATA, 8, seed=0, keep_unlabelled=True)
    pairs = finetune_examples(ds, 6)
    assert {index for index, _ in pairs} == set(range(12))
    assert all(label == CONSTANT_LABELS[index] for index, label in pairs)
    ds = pipelines.build_finetune_dataset(source, "train", DATA, 8, seed=0, example_ids=[0, 5, 11],
                                          keep_unlabelled=True)
    pairs = finetune_examples(ds, 6)
    assert {index for index, _ in pairs} == set(range(12))
    assert all(label == (CONSTANT_LABELS[index] if index in (0, 5, 11) else -1) for index, label in pairs)


def test_finetune_pipeline_is_reproducible_for_a_seed_and_crops_randomly():
    def first_batch(seed):
        ds = pipelines.build_finetune_dataset(ArraySource(), "train", DATA, batch_size=4, seed=seed,
                                              example_ids=[0, 1, 2, 3])
        images, labels = next(iter(ds))
        assert labels.numpy().tolist() == [0, 1, 2, 0]  # shuffle_buffer 1 keeps the file order
        return images.numpy()

    np.testing.assert_array_equal(first_batch(5), first_batch(5))
    assert np.abs(first_batch(5) - first_batch(6)).mean() > 0.01


def test_finetuning_an_unlabelled_dataset_says_what_to_do():
    source = ConstantImageSource([-1] * 4, num_classes=0)
    with pytest.raises(ValueError, match="has no labels.*labelled dataset"):
        pipelines.build_finetune_dataset(source, "train", DATA, 2)
    ds = pipelines.build_finetune_dataset(source, "train", DATA, 2, keep_unlabelled=True)
    assert next(iter(ds))[1].numpy().tolist() == [-1, -1]


def test_finetune_on_a_builtin_label_subset(tmp_path):
    source = builtin.BuiltinShapesSource({"train": 40, "test": 10})
    data = DataConfig(dataset="builtin_shapes", image_size=16, labels_per_class=1, seed=2, shuffle_buffer=20)
    subset = label_subset.subset_for_run(source, "train", data, str(tmp_path))
    ds = pipelines.distributed(tf.distribute.get_strategy(), pipelines.build_finetune_dataset, 16,
                               source=source, split="train", data=data, seed=0, example_ids=subset.ids)
    _, all_labels = source.arrays("train")
    labels = np.concatenate([labels.numpy() for _, labels in ds.take(3)])
    # 10 examples, one per class; each of the 48 labels is one of them.
    assert sorted(all_labels[list(subset.ids)].tolist()) == list(range(10))
    assert set(labels.tolist()) <= set(range(10)) and len(set(labels.tolist())) >= 8


def test_each_worker_draws_its_own_augmentations_from_the_shared_seed():
    contexts = [tf.distribute.InputContext(2, index, 2) for index in range(2)]
    seeds = [pipelines.worker_seed(7, context) for context in contexts]
    assert seeds[0] != seeds[1] and seeds == [pipelines.worker_seed(7, context) for context in contexts]
    assert all(0 <= seed < 2**31 for seed in seeds)
    # One input pipeline keeps the seed as given (single-process runs are unchanged); None stays None.
    assert pipelines.worker_seed(7, tf.distribute.InputContext()) == 7
    assert pipelines.worker_seed(None, contexts[1]) is None
