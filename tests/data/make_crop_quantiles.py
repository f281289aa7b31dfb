"""Writes tests/data/crop_quantiles.json: the crop distribution of the reference's random crop.

The reference (google-research/simclr tf2/data_util.py, crop_and_resize) crops with
tf.image.sample_distorted_bounding_box on the whole-image box [0, 0, 1, 1] with min_object_covered=0.1,
area_range=(0.08, 1.0), aspect_ratio_range=(3/4, 4/3) times the output's width / height and
max_attempts=100. This script calls that op itself (its stateless twin, seeds [i, 17] for draw i) with
those arguments on each case's image size, and records quantiles of the boxes it returns.
Run from the repository root: python tests/data/make_crop_quantiles.py (TF 2.21, about a minute).
"""
import json
import os

import numpy as np
import tensorflow as tf

DRAWS = 20000
QUANTILES = [0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95]
# name: (image height, image width, area_range, aspect_ratio_range, max_attempts)
CASES = {
        "cifar_32x32": (32, 32, (0.08, 1.0), (3 / 4, 4 / 3), 100),
        "imagenet_224x224": (224, 224, (0.08, 1.0), (3 / 4, 4 / 3), 100),
        "wide_24x40": (24, 40, (0.08, 1.0), (3 / 4, 4 / 3), 100),
        "one_attempt_32x32": (32, 32, (0.08, 1.0), (3 / 4, 4 / 3), 1),
        "no_fit_2x2": (2, 2, (0.3, 0.45), (3 / 4, 4 / 3), 100),
}


def box_statistics(boxes, height, width):
    """Quantiles of one set of (top, left, box height, box width) rows, as the test computes them."""
    top, left, box_h, box_w = (boxes[:, i].astype(np.float64) for i in range(4))
    values = {"area": box_h * box_w / (height * width), "aspect": box_w / box_h,
              "center_y": (top + box_h / 2) / height, "center_x": (left + box_w / 2) / width}
    stats = {name: np.quantile(value, QUANTILES).tolist() for name, value in values.items()}
    stats["whole_image_fraction"] = float(np.mean((box_h == height) & (box_w == width)))
    stats["touches_far_edge_fraction"] = float(np.mean(((top + box_h == height) & (box_h < height))
                                                       | ((left + box_w == width) & (box_w < width))))
    return stats


def op_boxes(height, width, area_range, aspect_ratio_range, max_attempts):
    draw = tf.function(lambda seed: tf.image.stateless_sample_distorted_bounding_box(
            [height, width, 3], tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed, min_object_covered=0.1,
            aspect_ratio_range=aspect_ratio_range, area_range=area_range, max_attempts=max_attempts,
            use_image_if_no_bounding_boxes=True))
    rows = []
    for i in range(DRAWS):
        begin, size, _ = draw(tf.constant([i, 17]))
        rows.append([int(begin[0]), int(begin[1]), int(size[0]), int(size[1])])
    return np.array(rows)


def main():
    golden = {"how": __doc__.strip().replace("\n", " "), "tensorflow": tf.__version__, "draws": DRAWS,
              "quantiles": QUANTILES, "cases": {}}
    for name, (height, width, area_range, aspect_ratio_range, max_attempts) in CASES.items():
        boxes = op_boxes(height, width, area_range, aspect_ratio_range, max_attempts)
        golden["cases"][name] = {"image_height": height, "image_width": width, "area_range": area_range,
                                 "aspect_ratio_range": aspect_ratio_range, "max_attempts": max_attempts,
                                 **box_statistics(boxes, height, width)}
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "crop_quantiles.json")
    with open(path, "w") as f:
        json.dump(golden, f, indent=1)


if __name__ == "__main__":
    main()
