"""Cost of the kNN monitor against the quick start's training time.

    python bench/knn.py                      # the quick start's model and data, bank 5,000, 2,000 queries

Times, in one process and interleaved (train, kNN, train, kNN, ...): training steps of the quick start's
model (ResNet-18 width 0.25, CIFAR stem, 32 px, batch 128, LARS, on the built-in shapes through the real
input pipeline) and whole kNN evaluations (bank embedding, query embedding, scoring). Then the monitor's
share of a quick start: evaluations per run at an interval of --every_epochs (plus the one at the end)
times one evaluation, over the run's training steps times one step.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402

import tensorflow as tf  # noqa: E402

from simclr_tf import knn  # noqa: E402
from simclr_tf.config import DataConfig, ModelConfig  # noqa: E402
from simclr_tf.data import pipelines  # noqa: E402
from simclr_tf.data.builtin import BuiltinShapesSource  # noqa: E402
from simclr_tf.models.simclr import build_simclr_model  # noqa: E402
from simclr_tf.optimizers import DEFAULT_LARS_EXCLUDE, LARS, total_train_steps  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--width_multiplier", type=float, default=0.25)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--train_examples", type=int, default=10000)
    parser.add_argument("--test_examples", type=int, default=2000)
    parser.add_argument("--bank_size", type=int, default=5000, help="the quick start's --knn_bank_size")
    parser.add_argument("--eval_batch", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=8, help="the quick start's training epochs")
    parser.add_argument("--every_epochs", type=int, default=4, help="kNN interval in epochs")
    parser.add_argument("--steps", type=int, default=8, help="training steps timed per round")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    source = BuiltinShapesSource({"train": args.train_examples, "test": args.test_examples})
    data = DataConfig(dataset="builtin_shapes", image_size=32, color_jitter_strength=1.0, use_blur=False,
                      seed=0)
    model = build_simclr_model(ModelConfig(resnet_depth=18, width_multiplier=args.width_multiplier,
                                           num_proj_layers=2, proj_out_dim=64),
                               32, num_classes=10, temperature=0.2, hidden_norm=True, weight_decay=1e-4,
                               optimizer_name="lars", seed=0)
    model.compile(optimizer=LARS(0.1, weight_decay=1e-4,
                                 exclude_from_weight_decay=list(DEFAULT_LARS_EXCLUDE)))
    iterator = iter(pipelines.build_pretrain_dataset(source, "train", data, args.batch, seed=0))
    evaluator = knn.KnnEvaluator(tf.distribute.get_strategy(), source, data, "train", "test",
                                 bank_size=args.bank_size, batch_size=args.eval_batch)

    def train():
        for _ in range(args.steps):
            model.train_on_batch(*next(iterator))

    train()
    evaluator(model.encoder)  # warm-up: traces, first pass of the data
    times = {"step": [], "bank": [], "queries": [], "scoring": [], "knn": []}
    for _ in range(args.rounds):
        start = time.perf_counter()
        train()
        times["step"].append((time.perf_counter() - start) / args.steps)
        start = time.perf_counter()
        bank = evaluator.features(model.encoder, "bank")
        times["bank"].append(time.perf_counter() - start)
        start = time.perf_counter()
        queries = evaluator.features(model.encoder, "query")
        times["queries"].append(time.perf_counter() - start)
        start = time.perf_counter()
        knn.knn_accuracy(*bank, *queries, num_classes=10)
        times["scoring"].append(time.perf_counter() - start)
        times["knn"].append(times["bank"][-1] + times["queries"][-1] + times["scoring"][-1])
    median = {name: common.summarize(values)[0] for name, values in times.items()}

    total_steps = total_train_steps(args.train_examples, args.batch, args.epochs)
    every = knn.steps_between(args.every_epochs, args.train_examples, args.batch)
    evaluations = len(set(range(every, total_steps + 1, every)) | {total_steps})
    train_seconds = total_steps * median["step"]
    knn_seconds = evaluations * median["knn"]
    common.print_table(
        f"kNN monitor: ResNet-18 width {args.width_multiplier}, 32 px, bank {args.bank_size}, "
        f"{args.test_examples} queries, medians of {args.rounds} interleaved rounds",
        ["measure", "seconds"],
        [["training step (batch %d)" % args.batch, f"{median['step']:.3f}"],
         ["embed the bank", f"{median['bank']:.2f}"], ["embed the queries", f"{median['queries']:.2f}"],
         ["score (k=200)", f"{median['scoring']:.2f}"], ["one kNN evaluation", f"{median['knn']:.2f}"],
         [f"quick start: {total_steps} steps", f"{train_seconds:.0f}"],
         [f"kNN every {args.every_epochs} epochs and at the end: {evaluations} evaluations",
          f"{knn_seconds:.0f} ({100 * knn_seconds / train_seconds:.1f}% of training)"]])


if __name__ == "__main__":
    main()
