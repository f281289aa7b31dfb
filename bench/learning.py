"""Learning benchmark: pretrain on real images for a fixed budget, then an offline linear probe and kNN.

Uses ../shared/data/cifar10_dev.npz (10,000 real CIFAR-10 images) when present, else `--npz`. The last
`--held_out` images are kept out of pretraining and probed; the probe is the offline logistic regression of
simclr_tf.linear_probe on frozen features, the kNN the weighted kNN monitor of simclr_tf.knn (the held-out
images against all training images as bank, k=200, temperature 0.1, the monitor's defaults; one feature
extraction serves both).

One run on a wall-clock budget (with a randomly initialized encoder's probe for comparison):

    python bench/learning.py --minutes=10

One run on a CPU-time budget (`time.process_time()` of the process: all its threads, the input pipeline
included), for a machine shared with other jobs, where wall-clock budgets give unequal compute. A few
warm-up steps of a throwaway copy of the model measure the CPU-seconds per step; the learning-rate
schedule is sized to the steps that fit the budget, and training stops at the budget or at the schedule's
end. The budget starts after the first step, whose tracing costs differ between rows:

    python bench/learning.py --cpu_seconds=180 --crop_impl=uniform_area --batch=1024 --contrastive_chunks=8

Issue 12, part 3, more negatives at equal compute: the four rows (batch 128 plain; batch 1024 in 8 cached
chunks of 128; batch 128 with a SimCLR v2 memory of 4096 at momentum 0.99, and at momentum 0), each in a
fresh process, one after the other, then one table (bench/RESULTS.md):

    python bench/learning.py --negatives_table --cpu_seconds=180 --calibration_cpu_seconds=5 --crop_impl=uniform_area

That command took 45 min on a 2-core machine shared with four other jobs (load average 5-12): each row's
calibration, first step and evaluation come on top of its budget.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from simclr_tf import knn, linear_probe  # noqa: E402
from simclr_tf.config import DataConfig, ModelConfig  # noqa: E402
from simclr_tf.data import pipelines  # noqa: E402
from simclr_tf.data.sources import ImageSource, SourceInfo  # noqa: E402
from simclr_tf.models.simclr import build_simclr_model  # noqa: E402
from simclr_tf.optimizers import DEFAULT_LARS_EXCLUDE, LARS, WarmUpAndCosineDecay  # noqa: E402

DEFAULT_NPZ = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data",
                           "cifar10_dev.npz")
RESULT_PREFIX = "RESULT "  # the line a child run prints for --negatives_table

# Issue 12, part 3: (row, batch, contrastive chunks, memory size, memory momentum).
NEGATIVES_ROWS = (
    ("batch 128, plain", 128, 1, 0, 0.0),
    ("batch 1024, 8 cached chunks of 128", 1024, 8, 0, 0.0),
    ("batch 128, memory 4096, momentum 0.99", 128, 1, 4096, 0.99),
    ("batch 128, memory 4096, momentum 0", 128, 1, 4096, 0.0),
)


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


class CpuBudget(keras.callbacks.Callback):
    """Stops training once the process has used `seconds` of CPU time after the first step (the one that
    traces), or after `max_steps` steps (0: no step limit). Keeps the CPU-seconds used and the last logs."""

    def __init__(self, seconds, max_steps=0):
        super().__init__()
        self.seconds = seconds
        self.max_steps = max_steps
        self.start = None  # process CPU time at the end of the first step
        self.used = 0.0
        self.steps_timed = 0
        self.logs = {}

    def on_train_batch_end(self, batch, logs=None):
        self.logs = dict(logs or {})
        now = time.process_time()
        if self.start is None:
            self.start = now
        else:
            self.used = now - self.start
            self.steps_timed += 1
        steps = int(self.model.optimizer.iterations.numpy())
        if self.used >= self.seconds or (self.max_steps and steps >= self.max_steps):
            self.model.stop_training = True


def _build_model(args, model_cfg, num_classes):
    return build_simclr_model(model_cfg, 32, num_classes=num_classes, temperature=0.2, hidden_norm=True,
                              weight_decay=1e-4, optimizer_name="lars", seed=args.seed,
                              contrastive_chunks=args.contrastive_chunks, memory_size=args.memory_size,
                              memory_momentum=args.memory_momentum)


def _compile(model, schedule):
    model.compile(optimizer=LARS(schedule, weight_decay=1e-4,
                                 exclude_from_weight_decay=list(DEFAULT_LARS_EXCLUDE)))


def calibrate_cpu_per_step(args, model_cfg, source, data, cpu_seconds):
    """CPU-seconds per training step (input pipeline included), measured on a throwaway model: one traced
    step, then steps until at least 2 of them and `cpu_seconds` of CPU time."""
    model = _build_model(args, model_cfg, source.info.num_classes)
    _compile(model, 0.0)  # the rate does not change the cost of a step
    budget = CpuBudget(cpu_seconds, max_steps=0)
    minimum = _MinimumSteps(budget, 2)
    train = pipelines.build_pretrain_dataset(source, "train", data, args.batch, seed=args.seed)
    model.fit(train, epochs=1, steps_per_epoch=10_000, verbose=0, callbacks=[budget, minimum])
    per_step = budget.used / budget.steps_timed
    del model
    keras.backend.clear_session()
    return per_step


class _MinimumSteps(keras.callbacks.Callback):
    """Keeps `budget` (a CpuBudget) from stopping before it has timed `steps` steps."""

    def __init__(self, budget, steps):
        super().__init__()
        self.budget, self.steps = budget, steps

    def on_train_batch_end(self, batch, logs=None):
        if self.budget.steps_timed < self.steps:
            self.model.stop_training = False


def pretrain_and_evaluate(args):
    """One row: pretrains on the budget, probes and kNN-evaluates the encoder; returns a dict of results."""
    keras.mixed_precision.set_global_policy(args.precision)
    source = NpzSource(args.npz, args.held_out)
    data = DataConfig(dataset="npz", image_size=32, eval_split="test", color_jitter_strength=0.5,
                      use_blur=False, seed=args.seed, crop_impl=args.crop_impl)
    model_cfg = ModelConfig(resnet_depth=18, width_multiplier=args.width_multiplier, num_proj_layers=2,
                            proj_out_dim=64)
    num_train = source.info.num_examples["train"]
    steps_per_epoch = num_train // args.batch
    result = {"batch": args.batch, "contrastive_chunks": args.contrastive_chunks,
              "memory_size": args.memory_size, "memory_momentum": args.memory_momentum}
    if args.cpu_seconds:
        cpu_per_step = calibrate_cpu_per_step(args, model_cfg, source, data, args.calibration_cpu_seconds)
        total_steps = 1 + int(args.cpu_seconds / cpu_per_step)  # the first step is outside the budget
        schedule = WarmUpAndCosineDecay(1.0, num_train, args.batch, warmup_epochs=1, train_steps=total_steps)
        budget = CpuBudget(args.cpu_seconds, max_steps=total_steps)
        result.update(calibrated_cpu_per_step=cpu_per_step, scheduled_steps=total_steps)
    else:
        schedule = WarmUpAndCosineDecay(1.0, num_train, args.batch, warmup_epochs=1,
                                        train_epochs=args.epochs_for_schedule)
        total_steps = schedule.total_steps
        # Not past the schedule's end, where the rate is 0.
        budget = WallClockBudget(60 * args.minutes, min(args.max_steps or total_steps, total_steps))
    model = _build_model(args, model_cfg, source.info.num_classes)
    _compile(model, schedule)
    train = pipelines.build_pretrain_dataset(source, "train", data, args.batch, seed=args.seed)
    start, cpu_start = time.time(), time.process_time()
    history = model.fit(train, epochs=math.ceil(total_steps / steps_per_epoch), steps_per_epoch=steps_per_epoch,
                        verbose=2, callbacks=[budget])
    steps = int(model.optimizer.iterations.numpy())
    last_logs = budget.logs if isinstance(budget, CpuBudget) else {k: v[-1] for k, v in history.history.items()}
    result.update(steps=steps, epochs=steps * args.batch / num_train, wall_seconds=time.time() - start,
                  cpu_seconds=time.process_time() - cpu_start,
                  budget_cpu_seconds=getattr(budget, "used", None), final_loss=float(last_logs["contrast_loss"]))
    probe_sets = [pipelines.build_eval_dataset(source, split, data, 256) for split in ("train", "test")]
    result.update(_evaluate(model.encoder, probe_sets, source.info.num_classes))
    if args.random_baseline:
        random_model = build_simclr_model(model_cfg, 32, num_classes=0, temperature=0.2, hidden_norm=True,
                                          weight_decay=0.0, optimizer_name="lars", seed=1)
        result.update({"random_" + key: value
                       for key, value in _evaluate(random_model.encoder, probe_sets, source.info.num_classes).items()})
    result.update(num_train=num_train, dataset=source.info.name, load_average=os.getloadavg()[0])
    return result


def _evaluate(encoder, probe_sets, num_classes):
    """Offline probe and weighted kNN (the run's monitor: k=200, temperature 0.1) of `encoder` on the same
    frozen features: the held-out images are the queries, all training images the bank."""
    train_x, train_y = linear_probe.extract_features(encoder, probe_sets[0])
    eval_x, eval_y = linear_probe.extract_features(encoder, probe_sets[1])
    probe = linear_probe.fit_linear_probe(train_x, train_y, eval_x, eval_y, num_classes)
    neighbours = knn.knn_accuracy(train_x, train_y, eval_x, eval_y, num_classes, k=200, temperature=0.1)
    return {"probe_top_1": probe["top_1"], "probe_top_5": probe["top_5"], "knn_top_1": neighbours["top_1"],
            "knn_top_5": neighbours["top_5"]}


def print_single_run(args, result):
    if args.cpu_seconds:
        pretraining = (f"{result['steps']} steps ({result['epochs']:.1f} epochs), {result['budget_cpu_seconds']:.0f} "
                       f"CPU-s after the first step, {result['wall_seconds'] / 60:.1f} min")
        budget = f"{args.cpu_seconds:.0f} CPU-s"
    else:
        pretraining = f"{result['steps']} steps in {result['wall_seconds'] / 60:.1f} min"
        budget = f"{args.minutes} min"
    rows = [["SimCLR-pretrained", pretraining, f"{result['probe_top_1']:.3f}", f"{result['probe_top_5']:.3f}",
             f"{result['knn_top_1']:.3f}"]]
    if args.random_baseline:
        rows.append(["randomly initialized", "none", f"{result['random_probe_top_1']:.3f}",
                     f"{result['random_probe_top_5']:.3f}", f"{result['random_knn_top_1']:.3f}"])
    common.print_table(
        f"Learning: ResNet-18 width {args.width_multiplier}, {result['num_train']} images of "
        f"{result['dataset']}, batch {args.batch}, {args.precision}, crop {args.crop_impl}, budget {budget}",
        ["encoder", "pretraining", "probe top-1 on held-out", "probe top-5", "kNN top-1"], rows)


def _negatives_row(name, result):
    return [name, f"{result['steps']} of {result['scheduled_steps']}", f"{result['epochs']:.1f}",
            f"{result['calibrated_cpu_per_step']:.2f}", f"{result['budget_cpu_seconds']:.0f}",
            f"{result['wall_seconds'] / 60:.1f}", f"{result['probe_top_1']:.3f}", f"{result['probe_top_5']:.3f}",
            f"{result['knn_top_1']:.3f}", f"{result['final_loss']:.2f}"]


def run_negatives_table(args):
    """The issue-12 rows, each in a fresh process (one after the other), then one table."""
    if not args.cpu_seconds:
        sys.exit("--negatives_table needs --cpu_seconds=S, the equal CPU-time budget of every row.")
    header = ["row", "steps (of scheduled)", "epochs", "CPU-s/step", "budget used (CPU-s)", "wall min",
              "probe top-1", "probe top-5", "kNN top-1", "final contrastive loss"]
    rows, random = [], None
    for index, (name, batch, chunks, memory_size, momentum) in enumerate(NEGATIVES_ROWS):
        command = [sys.executable, os.path.abspath(__file__), f"--npz={args.npz}", f"--held_out={args.held_out}",
                   f"--width_multiplier={args.width_multiplier}", f"--precision={args.precision}",
                   f"--crop_impl={args.crop_impl}", f"--seed={args.seed}", f"--cpu_seconds={args.cpu_seconds}",
                   f"--calibration_cpu_seconds={args.calibration_cpu_seconds}", f"--batch={batch}",
                   f"--contrastive_chunks={chunks}", f"--memory_size={memory_size}",
                   f"--memory_momentum={momentum}", "--result_line",
                   "--random_baseline" if index == 0 else "--no-random_baseline"]
        print(f"\n=== {name}: {' '.join(command[1:])}", flush=True)
        result = None
        with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as child:
            for line in child.stdout:
                if line.startswith(RESULT_PREFIX):
                    result = json.loads(line[len(RESULT_PREFIX):])
                print(line, end="", flush=True)
        if child.returncode or result is None:
            sys.exit(f"The row {name!r} failed (exit code {child.returncode}): see its output above.")
        rows.append(_negatives_row(name, result))
        random = random or result
        print("| " + " | ".join(rows[-1]) + " |", flush=True)
    rows.append(["randomly initialized encoder", "none", "-", "-", "-", "-", f"{random['random_probe_top_1']:.3f}",
                 f"{random['random_probe_top_5']:.3f}", f"{random['random_knn_top_1']:.3f}", "-"])
    common.print_table(
        f"More negatives at equal compute (issue 12): ResNet-18 width {args.width_multiplier}, "
        f"{random['num_train']} images of {random['dataset']}, {args.precision}, crop {args.crop_impl}; budget "
        f"{args.cpu_seconds:.0f} CPU-seconds per row (process CPU time, all threads and the input pipeline, "
        "after the traced first step), not wall-clock: the machine is shared, so equal wall time would give the "
        "rows unequal compute", header, rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--npz", default=DEFAULT_NPZ)
    parser.add_argument("--minutes", type=float, default=10, help="wall-clock budget (without --cpu_seconds)")
    parser.add_argument("--cpu_seconds", type=float, default=0,
                        help="CPU-time budget after the first step; sizes the schedule (0: --minutes instead)")
    parser.add_argument("--calibration_cpu_seconds", type=float, default=10,
                        help="CPU time of the warm-up steps that measure the cost of a step (--cpu_seconds)")
    parser.add_argument("--held_out", type=int, default=2000)
    parser.add_argument("--width_multiplier", type=float, default=0.25)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--contrastive_chunks", type=int, default=1, help="cached-gradient chunks per step")
    parser.add_argument("--memory_size", type=int, default=0, help="SimCLR v2 memory of negatives (0: off)")
    parser.add_argument("--memory_momentum", type=float, default=0.999)
    parser.add_argument("--epochs_for_schedule", type=int, default=15, help="schedule length (without "
                        "--cpu_seconds)")
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--crop_impl", default="reference", help="reference or uniform_area (--crop_impl)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the pretrained model and its input pipeline")
    parser.add_argument("--max_steps", type=int, default=0,
                        help="also stop after this many steps (0: the wall-clock budget only); an equal step "
                             "budget compares runs on a loaded machine")
    parser.add_argument("--random_baseline", action=argparse.BooleanOptionalAction, default=True,
                        help="also probe a randomly initialized encoder")
    parser.add_argument("--negatives_table", action="store_true",
                        help="run the issue-12 rows (batch, cached chunks, memory), each in a fresh process")
    parser.add_argument("--result_line", action="store_true", help=argparse.SUPPRESS)  # for --negatives_table
    args = parser.parse_args()
    if not os.path.exists(args.npz):
        sys.exit(f"{args.npz} not found: pass --npz=PATH of an npz with x_train [N,32,32,3] and y_train.")
    if args.negatives_table:
        run_negatives_table(args)
        return
    result = pretrain_and_evaluate(args)
    if args.result_line:
        print(RESULT_PREFIX + json.dumps(result), flush=True)
    else:
        print_single_run(args, result)


if __name__ == "__main__":
    main()
