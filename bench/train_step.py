"""Training-step throughput of the SimCLR model, against the machine's matrix-product peak.

    python bench/train_step.py --resnet_depth=18 --image_size=32 --batch=256 --precisions=float32

Every configuration is built and run once first; the timed steps are then interleaved (one step of
each configuration per repeat). The loss of the first step (same weights, same data) shows how far
a mixed precision moves the loss from float32.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from simclr_tf.models.heads import ProjectionHead  # noqa: E402
from simclr_tf.models.resnet import ResNet  # noqa: E402
from simclr_tf.models.simclr import SimCLRModel  # noqa: E402
from simclr_tf.optimizers import DEFAULT_LARS_EXCLUDE, LARS  # noqa: E402


def step_flops(model, batch, image_size):
    """FLOPs of one training step, from TensorFlow's profiler on the forward pass (x3 for backward)."""
    images = tf.zeros([2 * batch, image_size, image_size, 3])
    forward = tf.function(lambda x: model(x, training=False)).get_concrete_function(images)
    from tensorflow.python.profiler import model_analyzer, option_builder
    options = option_builder.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    profile = model_analyzer.profile(forward.graph, options=options)
    return 3 * profile.total_float_ops


def build(args, precision):
    keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(0)
    model = SimCLRModel(
        ResNet(depth=args.resnet_depth, width_multiplier=args.width_multiplier,
               cifar_stem=args.image_size <= 32),
        ProjectionHead(num_layers=args.num_proj_layers, out_dim=128), num_classes=10, temperature=0.5)
    model(tf.zeros([1, args.image_size, args.image_size, 3]))
    optimizer = LARS(0.1, weight_decay=1e-6, exclude_from_weight_decay=list(DEFAULT_LARS_EXCLUDE))
    if precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return model, optimizer


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--resnet_depth", type=int, default=18)
    parser.add_argument("--width_multiplier", type=float, default=1.0)
    parser.add_argument("--num_proj_layers", type=int, default=2)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=256, help="images per step (two views each)")
    parser.add_argument("--precisions", default="float32,mixed_bfloat16")
    parser.add_argument("--jit", default="false", help="comma list of true/false")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    rng = tf.random.Generator.from_seed(0)
    shape = [args.batch, args.image_size, args.image_size, 3]
    views = (rng.uniform(shape), rng.uniform(shape))
    labels = tf.zeros([args.batch], tf.int64)
    runs = {}  # (precision, jit) -> (model, flops, first loss)
    for precision in args.precisions.split(","):
        for jit in [j.strip() == "true" for j in args.jit.split(",")]:
            model, optimizer = build(args, precision)
            keras.mixed_precision.set_global_policy("float32")
            model.compile(optimizer=optimizer, jit_compile=jit)
            flops = step_flops(model, args.batch, args.image_size)
            first = model.train_on_batch(views, labels, return_dict=True)  # builds, traces, compiles
            runs[precision, jit] = (model, flops, float(first["contrast_loss"]))
    # Interleaved: each repeat times one step of every configuration, so load changes hit all alike. Just
    # before each step the matching matrix-product peak is measured, so each step is held to the peak the
    # machine gave at that moment (on a shared machine both move with the load); the table gives the
    # median of those fractions, and the best peak seen.
    times = {key: [] for key in runs}
    fractions = {key: [] for key in runs}
    peak = {"float32": 0.0, "bfloat16": 0.0}
    for _ in range(args.repeats):
        for key, (model, flops, _) in runs.items():
            dtype = "bfloat16" if "bfloat16" in key[0] else "float32"
            now = common.matmul_peak_gflops(tf.as_dtype(dtype), repeats=3)
            peak[dtype] = max(peak[dtype], now)
            times[key] += common.time_repeats(lambda: model.train_on_batch(views, labels), 1, warmup=0)
            fractions[key].append(flops / times[key][-1] / 1e9 / now)
    rows = []
    for (precision, jit), (model, flops, first_loss) in runs.items():
        median, fastest, slowest = common.summarize(times[precision, jit])
        achieved = flops / median / 1e9
        fraction = common.summarize(fractions[precision, jit])[0]
        baseline = common.summarize(times[next(iter(runs))])[0]
        rows.append([precision, jit, f"{median:.3f}", f"{fastest:.3f}", f"{slowest:.3f}",
                     f"{2 * args.batch / median:.0f}", f"{achieved:.0f}",
                     f"{100 * fraction:.0f}%", f"{baseline / median:.2f}",
                     f"{first_loss:.5f}"])
    print_config = (f"ResNet-{args.resnet_depth} width {args.width_multiplier}, {args.image_size}px, batch "
                    f"{args.batch} ({2 * args.batch} views), LARS; best matmul peak float32 "
                    f"{peak['float32']:.0f} GFLOP/s, bfloat16 {peak['bfloat16']:.0f} GFLOP/s")
    common.print_table(f"Training step: {print_config}",
                       ["precision", "jit", "median s", "min s", "max s", "views/s", "GFLOP/s",
                        "of the matmul peak just before", "speed vs first row", "first step loss"], rows)
    print(f"\n{args.repeats} interleaved repeats; load average {os.getloadavg()[0]:.2f} at the end.")


if __name__ == "__main__":
    main()
