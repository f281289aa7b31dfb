"""Peak memory and time per step of plain and cached-gradient (--contrastive_chunks) SimCLR steps.

Each (precision, batch, chunks) setting runs in a fresh process: one warm-up step (tracing), then `--steps`
timed steps; the peak resident memory covers them all. Prints one table (rows as they finish, then the table).

    python bench/large_batch.py --settings=256:1,2048:8,4096:16 --precisions=float32,mixed_bfloat16
"""
import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402

_CHILD = """
import json, os, resource, sys, time
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
sys.path.insert(0, {repo!r})
import keras, tensorflow as tf
from simclr_tf.models.heads import ProjectionHead
from simclr_tf.models.resnet import ResNet
from simclr_tf.models.simclr import SimCLRModel
from simclr_tf.optimizers import DEFAULT_LARS_EXCLUDE, LARS
keras.mixed_precision.set_global_policy({precision!r})
model = SimCLRModel(ResNet(depth={depth}, width_multiplier={width}, cifar_stem={size} <= 32),
                    ProjectionHead(num_layers=2), num_classes=10, temperature=0.5, contrastive_chunks={chunks})
model.compile(optimizer=LARS(0.1, weight_decay=1e-6, exclude_from_weight_decay=list(DEFAULT_LARS_EXCLUDE)))
shape = [{batch}, {size}, {size}, 3]
views = (tf.random.uniform(shape), tf.random.uniform(shape))
labels = tf.zeros([{batch}], tf.int64)
model.train_on_batch(views, labels)
start = time.perf_counter()
for _ in range({steps}):
    logs = model.train_on_batch(views, labels, return_dict=True)
seconds = (time.perf_counter() - start) / {steps}
print(json.dumps({{"rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                  "seconds": seconds, "loss": float(logs["loss"])}}))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--resnet_depth", type=int, default=18)
    parser.add_argument("--width_multiplier", type=float, default=1.0)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--settings", default="256:1,2048:8,4096:16", help="global batch:chunks, ...")
    parser.add_argument("--precisions", default="float32,mixed_bfloat16")
    parser.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up step")
    args = parser.parse_args()
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    rows = []
    for precision in args.precisions.split(","):
        plain_per_image = None
        for setting in args.settings.split(","):
            batch, chunks = (int(x) for x in setting.split(":"))
            code = _CHILD.format(repo=repo, precision=precision, depth=args.resnet_depth,
                                 width=args.width_multiplier, size=args.image_size, batch=batch,
                                 chunks=chunks, steps=args.steps)
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            per_image = result["seconds"] / batch
            if chunks == 1:
                plain_per_image = per_image
            ratio = f"{per_image / plain_per_image:.2f}" if plain_per_image else "-"
            rows.append([precision, batch, chunks, batch // chunks, f"{result['rss_gib']:.2f}",
                         f"{result['seconds']:.1f}", f"{1e3 * per_image:.1f}", ratio])
            print(rows[-1], flush=True)
    common.print_table(
        f"Plain vs cached-gradient steps, ResNet-{args.resnet_depth} width {args.width_multiplier}, "
        f"{args.image_size}px, 1 replica, {args.steps} timed steps after a warm-up",
        ["precision", "global batch", "chunks", "images per chunk", "peak RSS GiB", "s/step",
         "ms/image", "time per image vs plain"], rows)


if __name__ == "__main__":
    main()
