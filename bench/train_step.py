"""Training-step throughput of the SimCLR model, against the machine's matrix-product peak.

    python bench/train_step.py --resnet_depth=18 --image_size=32 --batch=256 --precisions=float32
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

    peak = {"float32": common.matmul_peak_gflops(tf.float32),
            "bfloat16": common.matmul_peak_gflops(tf.bfloat16)}
    rows = []
    for precision in args.precisions.split(","):
        for jit in [j.strip() == "true" for j in args.jit.split(",")]:
            model, optimizer = build(args, precision)
            model.compile(optimizer=optimizer, jit_compile=jit)
            flops = step_flops(model, args.batch, args.image_size)
            rng = tf.random.Generator.from_seed(0)
            shape = [args.batch, args.image_size, args.image_size, 3]
            views = (rng.uniform(shape), rng.uniform(shape))
            labels = tf.zeros([args.batch], tf.int64)
            times = common.time_repeats(lambda: model.train_on_batch(views, labels), args.repeats)
            median, fastest, slowest = common.summarize(times)
            matching_peak = peak["bfloat16" if "bfloat16" in precision else "float32"]
            achieved = flops / median / 1e9
            rows.append([precision, jit, f"{median:.3f}", f"{fastest:.3f}", f"{slowest:.3f}",
                         f"{2 * args.batch / median:.0f}", f"{achieved:.0f}",
                         f"{100 * achieved / matching_peak:.0f}%"])
            keras.mixed_precision.set_global_policy("float32")
    print_config = (f"ResNet-{args.resnet_depth} width {args.width_multiplier}, {args.image_size}px, batch "
                    f"{args.batch} ({2 * args.batch} views), LARS; matmul peak float32 {peak['float32']:.0f} "
                    f"GFLOP/s, bfloat16 {peak['bfloat16']:.0f} GFLOP/s")
    common.print_table(f"Training step: {print_config}",
                       ["precision", "jit", "median s", "min s", "max s", "views/s", "GFLOP/s",
                        "of matmul peak"], rows)


if __name__ == "__main__":
    main()
