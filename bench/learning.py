"""Learning benchmark: pretrain for a fixed wall-clock budget on real images, then linear probes.

Uses ../shared/data/cifar10_dev.npz (10,000 real CIFAR-10 images) when present, else `--npz`. The last
`--held_out` images are kept out of pretraining and probed; the probe is the offline logistic regression of
simclr_tf.linear_probe on frozen features, for the pretrained encoder and for a random one.

    python bench/learning.py --minutes=10
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from simclr_tf import linear_probe  # noqa: E402
from simclr_tf.config import DataConfig, ModelConfig  # noqa: E402
from simclr_tf.data import pipelines  # noqa: E402
from simclr_tf.data.sources import ImageSource, SourceInfo  # noqa: E402
from simclr_tf.models.simclr import build_simclr_model  # noqa: E402
from simclr_tf.optimizers import DEFAULT_LARS_EXCLUDE, LARS, WarmUpAndCosineDecay  # noqa: E402

DEFAULT_NPZ = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data",
                           "cifar10_dev.npz")


class NpzSource(ImageSource):
    def __init__(self, path, held_out):
        arrays = np.load(path)
        images, labels = arrays["x_train"], arrays["y_train"].astype(np.int64)
        self.splits = {"train": (images[:-held_out], labels[:-held_out]),
                       "test": (images[-held_out:], labels[-held_out:])}
        self.info = SourceInfo(name=os.path.basename(path), num_classes=int(labels.max()) + 1,
                               num_examples={k: len(v[1]) for k, v in self.splits.items()},
                               image_shape=images.shape[1:])

    def dataset(self, split, shuffle_files=False, seed=None, input_context=None):  # one input pipeline
        images, labels = self.splits[split]
        return tf.data.Dataset.from_tensor_slices(
            {"image": images, "label": labels, "id": np.arange(len(labels))})


class WallClockBudget(keras.callbacks.Callback):
    """Stops training after `seconds`, or after `max_steps` steps (0: no step limit), whichever comes first."""

    def __init__(self, seconds, max_steps=0):
        super().__init__()
        self.deadline = time.time() + seconds
        self.max_steps = max_steps

    def on_train_batch_end(self, batch, logs=None):
        steps = int(self.model.optimizer.iterations.numpy())
        if time.time() > self.deadline or (self.max_steps and steps >= self.max_steps):
            self.model.stop_training = True


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--npz", default=DEFAULT_NPZ)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--held_out", type=int, default=2000)
    parser.add_argument("--width_multiplier", type=float, default=0.25)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--epochs_for_schedule", type=int, default=15)
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--crop_impl", default="reference", help="reference or uniform_area (--crop_impl)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the pretrained model and its input pipeline")
    parser.add_argument("--max_steps", type=int, default=0,
                        help="also stop after this many steps (0: the wall-clock budget only); an equal step "
                             "budget compares runs on a loaded machine")
    args = parser.parse_args()
    if not os.path.exists(args.npz):
        sys.exit(f"{args.npz} not found: pass --npz=PATH of an npz with x_train [N,32,32,3] and y_train.")
    keras.mixed_precision.set_global_policy(args.precision)
    source = NpzSource(args.npz, args.held_out)
    data = DataConfig(dataset="npz", image_size=32, eval_split="test", color_jitter_strength=0.5,
                      use_blur=False, seed=args.seed, crop_impl=args.crop_impl)
    model_cfg = ModelConfig(resnet_depth=18, width_multiplier=args.width_multiplier, num_proj_layers=2,
                            proj_out_dim=64)
    model = build_simclr_model(model_cfg, 32, num_classes=source.info.num_classes, temperature=0.2,
                               hidden_norm=True, weight_decay=1e-4, optimizer_name="lars", seed=args.seed)
    num_train = source.info.num_examples["train"]
    schedule = WarmUpAndCosineDecay(1.0, num_train, args.batch, warmup_epochs=1,
                                    train_epochs=args.epochs_for_schedule)
    model.compile(optimizer=LARS(schedule, weight_decay=1e-4,
                                 exclude_from_weight_decay=list(DEFAULT_LARS_EXCLUDE)))
    train = pipelines.build_pretrain_dataset(source, "train", data, args.batch, seed=args.seed)
    steps_per_epoch = num_train // args.batch
    start = time.time()
    model.fit(train, epochs=args.epochs_for_schedule, steps_per_epoch=steps_per_epoch, verbose=2,
              callbacks=[WallClockBudget(60 * args.minutes, args.max_steps)])
    elapsed = time.time() - start
    probe_sets = [pipelines.build_eval_dataset(source, split, data, 256) for split in ("train", "test")]
    trained = linear_probe.probe_encoder(model.encoder, *probe_sets, source.info.num_classes)
    random_model = build_simclr_model(model_cfg, 32, num_classes=0, temperature=0.2, hidden_norm=True,
                                      weight_decay=0.0, optimizer_name="lars", seed=1)
    untrained = linear_probe.probe_encoder(random_model.encoder, *probe_sets, source.info.num_classes)
    steps = int(model.optimizer.iterations.numpy())
    common.print_table(
        f"Learning: ResNet-18 width {args.width_multiplier}, {num_train} images of "
        f"{source.info.name}, batch {args.batch}, {args.precision}, crop {args.crop_impl}, budget {args.minutes} min",
        ["encoder", "pretraining", "probe top-1 on held-out", "probe top-5"],
        [["SimCLR-pretrained", f"{steps} steps in {elapsed / 60:.1f} min", f"{trained['top_1']:.3f}",
          f"{trained['top_5']:.3f}"],
         ["randomly initialized", "none", f"{untrained['top_1']:.3f}", f"{untrained['top_5']:.3f}"]])


if __name__ == "__main__":
    main()
