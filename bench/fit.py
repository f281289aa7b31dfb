"""End-to-end `fit` throughput (input pipeline and training together) against the training step alone.

    python bench/fit.py --width_multiplier=0.25 --batch=128
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402

import keras  # noqa: E402

from simclr_tf.config import DataConfig, ModelConfig  # noqa: E402
from simclr_tf.data import pipelines  # noqa: E402
from simclr_tf.data.builtin import BuiltinShapesSource  # noqa: E402
from simclr_tf.models.simclr import build_simclr_model  # noqa: E402
from simclr_tf.optimizers import DEFAULT_LARS_EXCLUDE, LARS  # noqa: E402


class StepTimer(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.starts, self.ends = [], []

    def on_train_batch_begin(self, batch, logs=None):
        self.starts.append(time.perf_counter())

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.perf_counter())


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--resnet_depth", type=int, default=18)
    parser.add_argument("--width_multiplier", type=float, default=0.25)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    source = BuiltinShapesSource({"train": 4 * args.batch, "test": 10})
    data = DataConfig(dataset="builtin_shapes", image_size=32, color_jitter_strength=0.5, use_blur=False,
                      shuffle_buffer=1000, seed=0)
    model = build_simclr_model(ModelConfig(resnet_depth=args.resnet_depth,
                                           width_multiplier=args.width_multiplier, num_proj_layers=2),
                               32, num_classes=10, temperature=0.5, hidden_norm=True,
                               weight_decay=1e-6, optimizer_name="lars", seed=0)
    model.compile(optimizer=LARS(0.1, weight_decay=1e-6,
                                 exclude_from_weight_decay=list(DEFAULT_LARS_EXCLUDE)))
    dataset = pipelines.build_pretrain_dataset(source, "train", data, args.batch, seed=0)
    # Step alone: the same compiled train function on one fixed batch already in memory.
    fixed = next(iter(dataset))
    step_times = common.time_repeats(lambda: model.train_on_batch(*fixed), args.steps // 2)
    timer = StepTimer()
    model.fit(dataset, epochs=1, steps_per_epoch=args.steps, verbose=0, callbacks=[timer])
    fit_times = [b - a for a, b in zip(timer.starts[2:], timer.starts[3:])]  # Start to start, past warmup.
    step_median = common.summarize(step_times)[0]
    fit_median = common.summarize(fit_times)[0]
    common.print_table(
        f"fit vs step alone: ResNet-{args.resnet_depth} width {args.width_multiplier}, 32px, "
        f"batch {args.batch}, built-in data",
        ["measure", "median s/step", "views/s", "fit / step"],
        [["training step alone", f"{step_median:.3f}", f"{2 * args.batch / step_median:.0f}", ""],
         ["fit with the input pipeline", f"{fit_median:.3f}", f"{2 * args.batch / fit_median:.0f}",
          f"{fit_median / step_median:.2f}"]])


if __name__ == "__main__":
    main()
