"""First-step figures of the untrained model: NT-Xent loss and contrastive top-1 before any update.

The reference recipe (ResNet-18 CIFAR stem, width 1, 3-layer head of 128, batch 256, temperature 0.5, colour
strength 0.5, no blur, float32) on `--batch` real CIFAR-10 images of ../shared/data/cifar10_dev.npz, drawn per
seed as `np.random.default_rng(seed).choice(len, batch, replace=False)`, in one forward pass with
training=True (batch statistics), as the first training step computes them.

With `--ref_dir` (written outside the project by a side-by-side run of the reference, one
`ref_seed<S>.json` with its loss/accuracy, `ref_views_seed<S>.npz` with its two views and `ref_init_seed<S>/`
with its initial weights, a tf.train.Checkpoint prefix `ckpt`), it also prints the reference's own figures,
ours with the reference's initial weights transplanted (simclr_tf.persistence.reference.checkpoints), ours on
the reference's views, and per-group statistics of the initial weights of both.

    python bench/first_step.py --seeds=0,1,2 [--ref_dir=DIR]
"""
import argparse
import collections
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from simclr_tf import losses  # noqa: E402
from simclr_tf.config import ModelConfig  # noqa: E402
from simclr_tf.data import augment  # noqa: E402
from simclr_tf.models.simclr import build_simclr_model  # noqa: E402
from simclr_tf.persistence.reference.checkpoints import load_reference_checkpoint  # noqa: E402

DEFAULT_NPZ = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data",
                           "cifar10_dev.npz")


def first_step(model, view_1, view_2, temperature):
    outputs = model(tf.concat([view_1, view_2], axis=0), training=True)
    proj_1, proj_2 = tf.split(outputs["proj_head_output"], 2, axis=0)
    loss, logits_ab, labels = losses.contrastive_loss(proj_1, proj_2, temperature=temperature)
    return float(loss), float(losses.contrastive_metrics(logits_ab, labels)["contrast_acc"])


def our_views(images, seed, crop_impl, strength):
    augmenter = augment.PretrainAugment(32, 32, color_jitter_strength=strength, use_blur=False,
                                        crop_impl=crop_impl)
    return augment.two_views(augmenter, images, seed=[seed, 2026])


def weight_group(path):
    if "projection_head" in path or "head_contrastive" in path:
        part = "head"
    elif "supervised" in path:
        part = "probe"
    else:
        part = "encoder"
    leaf = path.split("/")[-1]
    if leaf == "kernel":
        return f"{part} {'dense' if part != 'encoder' else 'conv'} kernel"
    if leaf == "gamma":
        return f"{part} BN gamma"
    return f"{part} {leaf}"


def weight_arrays(model):
    """[(path, array)] of the weights, in the model's order (the same for two models of one architecture)."""
    return [(w.path.split("/", 1)[1], w.numpy()) for w in model.weights]


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--npz", default=DEFAULT_NPZ)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--ref_dir", default=None)
    parser.add_argument("--stats_out", default=None, help="write the per-weight init statistics (JSON) here")
    args = parser.parse_args()
    temperature, strength = 0.5, 0.5
    train = np.load(args.npz)["x_train"]
    model_cfg = ModelConfig(resnet_depth=18, width_multiplier=1, proj_head_mode="nonlinear", num_proj_layers=3,
                            proj_out_dim=128, global_bn=False)
    rows = collections.defaultdict(list)
    per_weight = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        index = np.random.default_rng(seed).choice(len(train), args.batch, replace=False)
        images = tf.constant(train[index])
        ours = build_simclr_model(model_cfg, image_size=32, num_classes=10, temperature=temperature,
                                  hidden_norm=True, weight_decay=0.0, optimizer_name="lars", seed=seed)
        our_init = weight_arrays(ours)
        for crop_impl in ("reference", "uniform_area"):
            rows[f"ours: our init, our views (crop {crop_impl})"].append(
                    first_step(ours, *our_views(images, seed, crop_impl, strength), temperature))
        if not args.ref_dir:
            continue
        ref = json.load(open(os.path.join(args.ref_dir, f"ref_seed{seed}.json")))
        if ref["idx"] != index.tolist():
            raise ValueError(f"{args.ref_dir}: the reference run for seed {seed} used other images.")
        rows["reference: its init, its views"].append((ref["loss"], ref["acc"]))
        ref_views = np.load(os.path.join(args.ref_dir, f"ref_views_seed{seed}.npz"))
        ref_views = tf.constant(ref_views["v1"]), tf.constant(ref_views["v2"])
        rows["ours: our init, reference views"].append(first_step(ours, *ref_views, temperature))
        transplanted, _ = load_reference_checkpoint(os.path.join(args.ref_dir, f"ref_init_seed{seed}", "ckpt"))
        ref_init = weight_arrays(transplanted)
        rows["ours: reference init, reference views"].append(first_step(transplanted, *ref_views, temperature))
        for crop_impl in ("reference", "uniform_area"):
            rows[f"ours: reference init, our views (crop {crop_impl})"].append(
                    first_step(transplanted, *our_views(images, seed, crop_impl, strength), temperature))
        for (path, mine), (_, theirs) in zip(our_init, ref_init):
            if "moving" not in path:  # the reference's were saved after its training-mode forward pass
                per_weight.setdefault(path, []).append((mine, theirs))

    print(common.machine_description())
    table = [(name, f"{np.mean([r[0] for r in values]):.3f} ± {np.std([r[0] for r in values]):.3f}",
              f"{np.mean([r[1] for r in values]):.3f} ± {np.std([r[1] for r in values]):.3f}",
              " ".join(f"{r[0]:.2f}/{r[1]:.3f}" for r in values)) for name, values in rows.items()]
    common.print_table(f"First step, batch {args.batch}, seeds {args.seeds}",
                       ["inputs", "loss (mean ± sd)", "contrast top-1", "per seed loss/top-1"], table)
    if per_weight:
        groups = collections.defaultdict(list)
        for path, pairs in per_weight.items():
            groups[weight_group(path)].extend(pairs)
        table = [(group, len(pairs) // len(args.seeds.split(",")),
                  f"{np.mean([m.mean() for m, _ in pairs]):+.5f} / {np.mean([t.mean() for _, t in pairs]):+.5f}",
                  f"{np.mean([m.std() for m, _ in pairs]):.5f} / {np.mean([t.std() for _, t in pairs]):.5f}",
                  f"{max(float(np.max(np.abs(m - t))) for m, t in pairs):.2g}")
                 for group, pairs in sorted(groups.items())]
        common.print_table("Initial weights, ours / reference at the same seed (averaged over weights and seeds)",
                           ["group", "weights", "mean", "std", "max abs difference"], table)
        if args.stats_out:
            with open(args.stats_out, "w") as f:
                json.dump({path: [[float(m.mean()), float(m.std()), float(t.mean()), float(t.std())]
                                  for m, t in pairs] for path, pairs in per_weight.items()}, f, indent=0)


if __name__ == "__main__":
    main()
