"""Input pipelines: two independent views per image, seeded, batched per replica; eval batches."""
import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.config import DataConfig
from simclr_tf.data import pipelines
from simclr_tf.data.sources import ImageSource, SourceInfo


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

    def dataset(self, split, shuffle_files=False, seed=None):
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
def test_two_replicas_each_receive_half_the_global_batch():
    from tests.subprocess_runner import run_with_devices
    result = run_with_devices("""
from simclr_tf.config import DataConfig
from simclr_tf.data import pipelines
from simclr_tf.data.builtin import BuiltinShapesSource
strategy = tf.distribute.MirroredStrategy()
data = DataConfig(dataset="builtin_shapes", image_size=16, use_blur=False, shuffle_buffer=10)
source = BuiltinShapesSource({"train": 40, "test": 10})
ds = pipelines.distributed(strategy, pipelines.build_pretrain_dataset, 8, source=source, split="train",
                           data=data, seed=0)
(view_1, view_2), labels = next(iter(ds))
report([list(v.shape) for v in strategy.experimental_local_results(view_1)])
""", num_devices=2)
    assert result == [[4, 16, 16, 3], [4, 16, 16, 3]]


@pytest.mark.parametrize("sizes", [None, [(20 + i, 30 - i) for i in range(12)]])
def test_sample_views_for_summaries(sizes):
    view_1, view_2 = pipelines.sample_views(ArraySource(sizes=sizes), "train", DATA, 3)
    assert view_1.shape == view_2.shape == (3, 16, 16, 3)
    assert float(tf.reduce_mean(tf.abs(view_1 - view_2))) > 0.01
