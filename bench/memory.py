"""Peak resident memory of SimCLR training steps for a given model and batch, each setting in a fresh process.

    python bench/memory.py --resnet_depth=18 --image_size=32 --batches=64,256
"""
import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402

_CHILD = """
import json, os, resource, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
sys.path.insert(0, {repo!r})
import keras, tensorflow as tf
from simclr_tf.models.heads import ProjectionHead
from simclr_tf.models.resnet import ResNet
from simclr_tf.models.simclr import SimCLRModel
from simclr_tf.optimizers import DEFAULT_LARS_EXCLUDE, LARS
keras.mixed_precision.set_global_policy({precision!r})
model = SimCLRModel(ResNet(depth={depth}, width_multiplier={width}, cifar_stem={size} <= 32),
                    ProjectionHead(num_layers=2), num_classes=10, temperature=0.5)
model.compile(optimizer=LARS(0.1, weight_decay=1e-6, exclude_from_weight_decay=list(DEFAULT_LARS_EXCLUDE)))
shape = [{batch}, {size}, {size}, 3]
views = (tf.random.uniform(shape), tf.random.uniform(shape))
for _ in range(3):
    model.train_on_batch(views, tf.zeros([{batch}], tf.int64))
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--resnet_depth", type=int, default=18)
    parser.add_argument("--width_multiplier", type=float, default=1.0)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--batches", default="256")
    parser.add_argument("--precisions", default="float32")
    args = parser.parse_args()
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    rows = []
    for precision in args.precisions.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            code = _CHILD.format(repo=repo, precision=precision, depth=args.resnet_depth,
                                 width=args.width_multiplier, size=args.image_size, batch=batch)
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            peak_gib = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append([precision, batch, 2 * batch, f"{peak_gib:.2f}"])
    common.print_table(
        f"Peak resident memory, ResNet-{args.resnet_depth} width {args.width_multiplier}, "
        f"{args.image_size}px, 3 training steps", ["precision", "batch", "views", "peak RSS GiB"], rows)


if __name__ == "__main__":
    main()
