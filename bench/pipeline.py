"""Input-pipeline throughput alone (views/s): two augmented views per image, as pretraining feeds them.

    python bench/pipeline.py --sizes=32,224
    python bench/pipeline.py --sizes=32,224 --reference=/path/to/google-research/simclr

With `--reference` (a checkout of the public SimCLR code, outside this repository; nothing of it is
copied here) the reference's own augmentation is timed in the same run, interleaved with ours
(ours, reference, ours, reference, ...), on the same in-memory images: its `tf2/data_util.py`
`preprocess_for_train` mapped over single images twice (as its `tf2/data.py` does) with tf.data
AUTOTUNE, then batched. With blur, two variants of the reference are timed: the per-image blur of the
paper (`random_blur` with probability 0.5 on each view, in the per-image map) and what its training
code runs (`batch_random_blur` on each batch of views: one sigma per batch, applied to each image with
probability 0.5). The ratio column divides our median by the faster reference variant's median.
"""
import argparse
import importlib.util
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

    def dataset(self, split, shuffle_files=False, seed=None, input_context=None):  # one input pipeline
        labels = np.zeros(len(self.images), np.int64)
        return tf.data.Dataset.from_tensor_slices(
            {"image": self.images, "label": labels, "id": np.arange(len(labels))})


def ours(source, size, blur, strength, batch):
    data = DataConfig(dataset="random", image_size=size, color_jitter_strength=strength, use_blur=blur,
                      shuffle_buffer=256)
    return pipelines.build_pretrain_dataset(source, "train", data, batch, seed=0)


def load_reference(checkout):
    """The reference's `tf2/data_util.py` module, imported from its checkout."""
    path = os.path.join(checkout, "tf2", "data_util.py")
    spec = importlib.util.spec_from_file_location("reference_data_util", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reference(data_util, source, size, blur, strength, batch, blur_per_image):
    """The reference's pretraining augmentation (see the module docstring) on `source`'s images."""
    options = tf.data.Options()
    options.deterministic = False  # as the reference's input function
    ds = source.dataset("train").map(lambda example: example["image"]).shuffle(256, seed=0).repeat()

    def two_views(image):
        image = tf.image.convert_image_dtype(image, tf.float32)
        views = []
        for _ in range(2):
            view = data_util.preprocess_for_train(image, size, size, color_jitter_strength=strength)
            if blur and blur_per_image:
                view = data_util.random_blur(view, size, size, p=0.5)
            views.append(view)
        return tuple(views)

    ds = ds.with_options(options).map(two_views, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch, drop_remainder=True)
    if blur and not blur_per_image:
        ds = ds.map(lambda *views: tuple(data_util.batch_random_blur(list(views), size, size)),
                    num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def views_per_second(dataset, batch, batches, warmup):
    """Views per second over `batches` batches, after `warmup` batches (tracing, XLA compiling)."""
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return 2 * batch * batches / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="32,224")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reference", default="", help="checkout of google-research/simclr to time too")
    args = parser.parse_args()
    data_util = load_reference(args.reference) if args.reference else None
    settings = []
    for size in (int(s) for s in args.sizes.split(",")):
        strength = 0.5 if size <= 32 else 1.0
        batch = 256 if size <= 32 else 64
        batches = 20 if size <= 32 else 8
        settings += [(size, False, strength, batch, batches), (size, True, strength, batch, batches)]
    load_at_start = os.getloadavg()[0]
    rows = []
    for size, blur, strength, batch, batches in settings:
        source = RandomImages(size, count=max(256, batch * 2))
        pipelines_to_time = {"ours": lambda: ours(source, size, blur, strength, batch)}
        if data_util is not None:
            pipelines_to_time["reference"] = lambda: reference(
                data_util, source, size, blur, strength, batch, blur_per_image=True)
            if blur:
                pipelines_to_time["reference, batch blur"] = lambda: reference(
                    data_util, source, size, blur, strength, batch, blur_per_image=False)
        rates = {name: [] for name in pipelines_to_time}
        for _ in range(args.repeats):  # interleaved: every pipeline once per repeat
            for name, make in pipelines_to_time.items():
                rates[name].append(views_per_second(make(), batch, batches, warmup=4))
        medians = {name: common.summarize(values)[0] for name, values in rates.items()}
        median, low, high = common.summarize(rates["ours"])
        row = [f"{size}x{size}", "yes" if blur else "no", strength, batch, f"{median:.0f}", f"{low:.0f}",
               f"{high:.0f}"]
        if data_util is not None:
            best_reference = max(value for name, value in medians.items() if name != "ours")
            batch_blur = medians.get("reference, batch blur")
            row += [f"{medians['reference']:.0f}", "" if batch_blur is None else f"{batch_blur:.0f}",
                    f"{median / best_reference:.2f}"]
        rows.append(row)
    header = ["image", "blur", "colour strength", "batch", "ours median views/s", "min", "max"]
    if data_util is not None:
        header += ["reference median", "reference, batch blur", "ours / faster reference"]
    common.print_table("Input pipeline (PretrainAugment, two views per image, tf.data AUTOTUNE)",
                       header, rows)
    print(f"\n{args.repeats} interleaved repeats per row; load average {load_at_start:.2f} at start, "
          f"{os.getloadavg()[0]:.2f} at the end.")


if __name__ == "__main__":
    main()
