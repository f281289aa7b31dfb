"""Input-pipeline throughput alone (views/s): two augmented views per image, as pretraining feeds them.

    python bench/pipeline.py --sizes=32,224
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from simclr_tf.config import DataConfig  # noqa: E402
from simclr_tf.data import pipelines  # noqa: E402
from simclr_tf.data.sources import ImageSource, SourceInfo  # noqa: E402


class RandomImages(ImageSource):
    """Random uint8 images of one size, held in memory (so decoding is not what is measured)."""

    def __init__(self, size, count):
        self.images = np.random.default_rng(0).integers(0, 255, (count, size, size, 3), dtype=np.uint8)
        self.info = SourceInfo(name="random", num_classes=10, num_examples={"train": count},
                               image_shape=(size, size, 3))

    def dataset(self, split, shuffle_files=False, seed=None):
        labels = np.zeros(len(self.images), np.int64)
        return tf.data.Dataset.from_tensor_slices(
            {"image": self.images, "label": labels, "id": np.arange(len(labels))})


def views_per_second(size, blur, strength, batch, batches):
    data = DataConfig(dataset="random", image_size=size, color_jitter_strength=strength, use_blur=blur,
                      shuffle_buffer=256)
    source = RandomImages(size, count=max(256, batch * 2))
    iterator = iter(pipelines.build_pretrain_dataset(source, "train", data, batch, seed=0))
    for _ in range(3):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return 2 * batch * batches / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="32,224")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    settings = []
    for size in (int(s) for s in args.sizes.split(",")):
        strength = 0.5 if size <= 32 else 1.0
        batch = 256 if size <= 32 else 64
        batches = 20 if size <= 32 else 5
        settings += [(size, False, strength, batch, batches), (size, True, strength, batch, batches)]
    rows = []
    for size, blur, strength, batch, batches in settings:
        rates = [views_per_second(size, blur, strength, batch, batches) for _ in range(args.repeats)]
        median, low, high = common.summarize(rates)
        rows.append([f"{size}x{size}", "yes" if blur else "no", strength, batch, f"{median:.0f}",
                     f"{low:.0f}", f"{high:.0f}"])
    common.print_table("Input pipeline (PretrainAugment, two views per image, tf.data AUTOTUNE)",
                       ["image", "blur", "colour strength", "batch", "median views/s", "min", "max"], rows)


if __name__ == "__main__":
    main()
