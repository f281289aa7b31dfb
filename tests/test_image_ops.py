"""Tests for simclr_tf.data.image_ops: each batched op against tf.image or a numpy formula."""
import json
import math
import os
import sys

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.data import fused_loop, image_ops

RNG = np.random.default_rng(0)
# Three random images plus a gray one (zero chroma is an edge case of the HSV ops).
IMAGES = np.concatenate([
        RNG.uniform(size=(3, 23, 31, 3)),
        np.repeat(RNG.uniform(size=(1, 23, 31, 1)), 3, axis=-1),
]).astype("float32")


def per_image(function, images, values):
    """Applies a single-image tf.image op with a scalar per image."""
    return np.stack([function(image, value).numpy() for image, value in zip(images, values)])


def through_planes(function, images, values):
    planes = image_ops.to_planes(tf.constant(images))
    return image_ops.from_planes(function(planes, tf.constant(values, tf.float32))).numpy()


# ----------------------------------------------------------------------------- crop and resize

@pytest.mark.parametrize("method", ["bicubic", "bilinear"])
@pytest.mark.parametrize("size", [(32, 32), (7, 40), (50, 12)])
def test_crop_and_resize_matches_tf_image_resize(method, size):
    boxes = np.array([[0, 0, 23, 31], [3, 5, 11, 17], [20, 28, 3, 3], [4, 0, 19, 1]], np.int32)
    got = fused_loop.crop_and_resize(tf.constant(IMAGES), boxes, *size, method=method).numpy()
    want = np.stack([
            tf.image.resize(tf.image.crop_to_bounding_box(image, *box), size, method=method).numpy()
            for image, box in zip(IMAGES, boxes)
    ])
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_resize_taps_sum_to_one_and_stay_inside_the_crop():
    taps, weights = (t.numpy() for t in image_ops.resize_taps([2, 0], [5, 9], 13))
    np.testing.assert_allclose(weights.sum(axis=2), 1.0, atol=1e-6)
    assert taps.shape == weights.shape == (2, 13, 4)
    assert np.all((taps[0] >= 2) & (taps[0] <= 6)) and np.all((taps[1] >= 0) & (taps[1] <= 8))


def test_unknown_interpolation_is_rejected():
    with pytest.raises(ValueError, match="bicubic"):
        image_ops.resize_taps([0], [4], 4, method="nearest")


@pytest.mark.parametrize("image_size", [(32, 32), (37, 53)])
def test_crop_boxes_fit_and_respect_the_ranges(image_size):
    height, width = image_size
    boxes = image_ops.sample_crop_boxes(tf.constant([3, 4]), 2000, height, width).numpy()
    top, left, crop_h, crop_w = boxes.T
    assert np.all(top >= 0) and np.all(left >= 0)
    assert np.all(top + crop_h <= height) and np.all(left + crop_w <= width)
    area = crop_h * crop_w / (height * width)
    aspect = crop_w / crop_h
    whole = (crop_h == height) & (crop_w == width)
    assert whole.mean() < 0.02  # the whole-image fallback is rare
    assert np.all(area[~whole] >= 0.08 - 1e-6) and np.all(area <= 1.0)
    assert np.all(aspect[~whole] >= 0.75 - 1e-6) and np.all(aspect[~whole] <= 4 / 3 + 1e-6)
    # The draws cover the ranges, and offsets vary.
    assert area.min() < 0.12 and area.max() > 0.9
    assert aspect.min() < 0.8 and aspect.max() > 1.25
    assert len(np.unique(top)) > 5 and len(np.unique(left)) > 5


def test_crop_boxes_fall_back_to_the_whole_image():
    boxes = image_ops.sample_crop_boxes(tf.constant([0, 1]), 50, 32, 32, area_range=(0.5, 1.0),
                                        aspect_ratio_range=(10.0, 12.0)).numpy()
    np.testing.assert_array_equal(boxes, np.tile([[0, 0, 32, 32]], (50, 1)))


def test_crop_boxes_are_deterministic_per_seed():
    first = image_ops.sample_crop_boxes(tf.constant([5, 6]), 16, 40, 40).numpy()
    again = image_ops.sample_crop_boxes(tf.constant([5, 6]), 16, 40, 40).numpy()
    other = image_ops.sample_crop_boxes(tf.constant([5, 7]), 16, 40, 40).numpy()
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


# Quantiles of the boxes tf.image.sample_distorted_bounding_box returns with the reference's arguments
# (tests/data/make_crop_quantiles.py wrote them by calling that op; its "how" field says how).
CROP_GOLDEN = json.load(open(os.path.join(os.path.dirname(__file__), "data", "crop_quantiles.json")))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "data"))
from make_crop_quantiles import box_statistics  # noqa: E402


def crop_statistic_gaps(boxes, case):
    """Largest |ours - golden| per statistic, and the tolerance each may take (sampling noise plus one
    pixel step, as small images give discrete quantiles)."""
    height, width = case["image_height"], case["image_width"]
    ours = box_statistics(boxes, height, width)
    pixel = 1.0 / min(height, width)
    tolerances = {"area": 0.02 + pixel, "aspect": 0.02, "center_y": 0.01 + pixel, "center_x": 0.01 + pixel,
                  "whole_image_fraction": 0.01, "touches_far_edge_fraction": 0.005}
    gaps = {name: float(np.max(np.abs(np.array(ours[name]) - np.array(case[name])))) for name in tolerances}
    return gaps, tolerances


@pytest.mark.parametrize("case_name", sorted(CROP_GOLDEN["cases"]))
def test_reference_crop_matches_sample_distorted_bounding_box_quantiles(case_name):
    case = CROP_GOLDEN["cases"][case_name]
    boxes = image_ops.sample_distorted_boxes(
            tf.constant([7, 11]), CROP_GOLDEN["draws"], case["image_height"], case["image_width"],
            case["area_range"], case["aspect_ratio_range"], max_attempts=case["max_attempts"]).numpy()
    gaps, tolerances = crop_statistic_gaps(boxes, case)
    assert all(gaps[name] <= tolerances[name] for name in gaps), (gaps, tolerances)


def test_uniform_area_crop_is_told_apart_by_the_golden_quantiles():
    # The comparison above can fail: the paper-text crop (area uniform, aspect log-uniform, offsets
    # reaching the far edge) is outside the tolerances on area, aspect and edge contact.
    case = CROP_GOLDEN["cases"]["cifar_32x32"]
    boxes = image_ops.sample_crop_boxes(tf.constant([7, 11]), CROP_GOLDEN["draws"], 32, 32).numpy()
    gaps, tolerances = crop_statistic_gaps(boxes, case)
    for name in ("area", "aspect", "touches_far_edge_fraction"):
        assert gaps[name] > 1.5 * tolerances[name], (name, gaps, tolerances)


def test_reference_crop_falls_back_to_the_whole_image_when_no_box_fits():
    # A 2x2 image has box areas 1/4, 2/4 and 1 only: none lies in (0.3, 0.45).
    boxes = image_ops.sample_distorted_boxes(tf.constant([0, 1]), 64, 2, 2, area_range=(0.3, 0.45)).numpy()
    np.testing.assert_array_equal(boxes, np.tile([[0, 0, 2, 2]], (64, 1)))
    # So does the op itself (here with one seed).
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            [2, 2, 3], tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=[0, 1], min_object_covered=0.1,
            aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.3, 0.45), max_attempts=100)
    assert begin.numpy()[:2].tolist() == [0, 0] and size.numpy()[:2].tolist() == [2, 2]


@pytest.mark.parametrize("image_size", [(32, 32), (37, 53)])
def test_reference_crop_boxes_fit_and_respect_the_ranges(image_size):
    height, width = image_size
    boxes = image_ops.sample_distorted_boxes(tf.constant([3, 4]), 2000, height, width).numpy()
    top, left, crop_h, crop_w = boxes.T
    assert np.all(top >= 0) and np.all(left >= 0)
    assert np.all(top + crop_h <= height) and np.all(left + crop_w <= width)
    area = crop_h * crop_w / (height * width)
    assert np.all(area >= 0.1 - 1e-6) and np.all(area <= 1.0)  # min_object_covered=0.1 binds before 0.08
    aspect = (crop_w / crop_h)[area < 1]
    # The width is the rounded height times the ratio: the aspect is within half a pixel of the range.
    assert np.all(aspect >= 0.75 - 0.5 / crop_h[area < 1]) and np.all(aspect <= 4 / 3 + 0.5 / crop_h[area < 1])
    first = image_ops.sample_distorted_boxes(tf.constant([5, 6]), 16, height, width).numpy()
    np.testing.assert_array_equal(first, image_ops.sample_distorted_boxes(tf.constant([5, 6]), 16, height,
                                                                          width).numpy())
    assert not np.array_equal(first, image_ops.sample_distorted_boxes(tf.constant([5, 7]), 16, height,
                                                                      width).numpy())


@pytest.mark.parametrize("image_size, target, expected", [
        # (top, left, h, w) from the reference formula, worked by hand:
        ((256, 320), (224, 224), (16, 48, 224, 224)),  # rint(0.875 * 256) = 224 on both sides
        ((300, 200), (100, 200), (106, 13, 88, 175)),  # wider target: w = rint(175), h = rint(87.5) = 88
        ((32, 32), (32, 32), (2, 2, 28, 28)),  # rint(28.0); margins (32 - 28 + 1) // 2
])
def test_center_crop_box(image_size, target, expected):
    box = image_ops.center_crop_box(*image_size, *target, crop_proportion=0.875)
    assert tuple(int(v) for v in box) == expected


# ----------------------------------------------------------------------------- color

def test_brightness_ops():
    factors = np.array([0.5, 1.0, 1.5, 2.0], np.float32)
    np.testing.assert_allclose(through_planes(image_ops.scale_brightness, IMAGES, factors),
                               IMAGES * factors[:, None, None, None], atol=1e-6)
    deltas = np.array([-0.3, 0.0, 0.1, 0.5], np.float32)
    np.testing.assert_allclose(through_planes(image_ops.shift_brightness, IMAGES, deltas),
                               per_image(tf.image.adjust_brightness, IMAGES, deltas), atol=1e-6)


def test_contrast_matches_tf_image():
    factors = np.array([0.2, 1.0, 1.8, 0.6], np.float32)
    np.testing.assert_allclose(through_planes(image_ops.adjust_contrast, IMAGES, factors),
                               per_image(tf.image.adjust_contrast, IMAGES, factors), atol=1e-5)


def test_saturation_matches_tf_image():
    factors = np.array([0.0, 0.4, 1.8, 3.0], np.float32)
    np.testing.assert_allclose(through_planes(image_ops.adjust_saturation, IMAGES, factors),
                               per_image(tf.image.adjust_saturation, IMAGES, factors), atol=1e-5)


def test_hue_matches_tf_image():
    deltas = np.array([-0.2, 0.05, 0.5, 0.13], np.float32)
    np.testing.assert_allclose(through_planes(image_ops.adjust_hue, IMAGES, deltas),
                               per_image(tf.image.adjust_hue, IMAGES, deltas), atol=1e-5)


def test_grayscale_matches_tf_image():
    got = image_ops.grayscale(tf.constant(IMAGES)).numpy()
    np.testing.assert_allclose(got, np.repeat(tf.image.rgb_to_grayscale(IMAGES).numpy(), 3, -1), atol=1e-6)


# ----------------------------------------------------------------------------- blur

def test_gaussian_kernels_match_the_formula():
    sigmas = np.array([0.1, 0.7, 2.0], np.float32)
    offsets = np.arange(-3, 4)
    want = np.exp(-offsets[None] ** 2 / (2 * sigmas[:, None].astype(np.float64) ** 2))
    want /= want.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(image_ops.gaussian_kernels(sigmas, 3).numpy(), want, atol=1e-6)


def test_blurred_delta_is_the_outer_product_of_kernels():
    sigmas = np.array([0.5, 1.5], np.float32)
    delta = np.zeros((2, 15, 15, 3), np.float32)
    delta[:, 7, 7, :] = 1.0
    blurred = image_ops.gaussian_blur(tf.constant(delta), sigmas, 3).numpy()
    for image, sigma in zip(blurred, sigmas):
        kernel = np.exp(-np.arange(-3, 4) ** 2 / (2 * float(sigma) ** 2))
        kernel /= kernel.sum()
        expected = np.zeros((15, 15))
        expected[4:11, 4:11] = np.outer(kernel, kernel)
        for channel in range(3):
            np.testing.assert_allclose(image[..., channel], expected, atol=1e-6)
        assert math.isclose(image.sum(), 3.0, rel_tol=1e-5)


def test_blur_pads_with_zeros():
    blurred = image_ops.gaussian_blur(tf.ones([1, 9, 9, 3]), [1.0], 2).numpy()[0]
    np.testing.assert_allclose(blurred[4, 4], 1.0, atol=1e-6)
    assert np.all(blurred[0] < 0.95)


def test_rank_is_checked():
    with pytest.raises(ValueError, match="Expected an image"):
        image_ops.to_batch(tf.zeros([4, 4]))


def test_blur_of_an_empty_batch_is_empty():
    assert image_ops.gaussian_blur(tf.zeros([0, 8, 8, 3]), tf.zeros([0]), 2).shape == (0, 8, 8, 3)


def test_blur_equals_the_previous_height_then_width_formulation():
    # Until the speed-up the second pass was a [K, 1] depthwise convolution along the height; both passes
    # now run along the width (the second on transposed images). Same products, same sums: equal.
    sigmas = np.array([0.3, 1.0, 1.7, 2.0], np.float32)
    kernels = np.repeat(image_ops.gaussian_kernels(sigmas, 4).numpy(), 3, axis=0).T  # [K, B*C]
    folded = tf.reshape(tf.transpose(IMAGES, [1, 2, 0, 3]), [1, 23, 31, 12])
    folded = tf.nn.depthwise_conv2d(folded, kernels[None, :, :, None], [1, 1, 1, 1], "SAME")
    folded = tf.nn.depthwise_conv2d(folded, kernels[:, None, :, None], [1, 1, 1, 1], "SAME")
    previous = tf.transpose(tf.reshape(folded, [23, 31, 4, 3]), [2, 0, 1, 3]).numpy()
    np.testing.assert_allclose(image_ops.gaussian_blur(tf.constant(IMAGES), sigmas, 4), previous, atol=1e-7)


# ----------------------------------------------------------------------------- fused per-image loop

JITTER_OPS = (image_ops.scale_brightness, image_ops.adjust_contrast, image_ops.adjust_saturation,
              image_ops.adjust_hue)
FACTORS = np.array([[1.3, 0.5, 1.6, 0.1], [0.7, 1.7, 0.3, -0.15], [1.1, 1.2, 1.9, 0.45],
                    [0.6, 0.9, 1.4, -0.3]], np.float32)
ORDERS = np.array([[0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2], [2, 0, 3, 1]], np.int32)


def jitter_with_separate_ops(images, apply, factors, orders, brightness=image_ops.scale_brightness):
    """Each applied image through its ops in its order, one image at a time, clipping after each op."""
    out = []
    for image, applied, values, order in zip(images, apply, factors, orders):
        planes = image_ops.to_planes(image[None])
        for op in order if applied else []:
            function = brightness if op == 0 else JITTER_OPS[op]
            planes = tf.clip_by_value(function(planes, values[op:op + 1]), 0.0, 1.0)
        out.append(image_ops.from_planes(planes)[0].numpy())
    return np.stack(out)


def test_fused_jitter_runs_each_images_ops_in_its_order():
    apply = np.array([True, True, False, True])
    got = fused_loop.fused_augment(IMAGES, jitter=(apply, FACTORS, ORDERS)).numpy()
    np.testing.assert_allclose(got, jitter_with_separate_ops(IMAGES, apply, FACTORS, ORDERS), atol=1e-5)
    np.testing.assert_array_equal(got[2], IMAGES[2])  # not applied: untouched
    shifted = fused_loop.fused_augment(IMAGES, jitter=(apply, FACTORS - [1, 0, 0, 0], ORDERS),
                                      brightness="shift").numpy()
    want = jitter_with_separate_ops(IMAGES, apply, FACTORS - [1, 0, 0, 0], ORDERS, image_ops.shift_brightness)
    np.testing.assert_allclose(shifted, want, atol=1e-5)


def test_fused_crop_flip_gray_blur_and_clip_equal_the_separate_ops():
    boxes = np.array([[0, 0, 23, 31], [3, 5, 11, 17], [20, 28, 3, 3], [4, 0, 19, 1]], np.int32)
    flips = np.array([True, False, True, False])
    grays = np.array([False, True, True, False])
    blurs = (np.array([True, True, False, True]), image_ops.gaussian_kernels([0.5, 1.0, 1.5, 2.0], 2))
    got = fused_loop.fused_augment(IMAGES, image_ops.crop_taps(boxes, 16, 20), flips, grays=grays,
                                  blurs=blurs, clip=True).numpy()
    want = np.stack([
            tf.image.resize(tf.image.crop_to_bounding_box(image, *box), (16, 20), method="bicubic").numpy()
            for image, box in zip(IMAGES, boxes)])
    want = np.where(flips[:, None, None, None], want[:, :, ::-1], want)
    want = np.where(grays[:, None, None, None], image_ops.grayscale(want), want)
    blurred = image_ops.gaussian_blur(tf.constant(want), [0.5, 1.0, 1.5, 2.0], 2).numpy()
    want = np.clip(np.where(blurs[0][:, None, None, None], blurred, want), 0.0, 1.0)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_mirrored_taps_flip_the_output_exactly():
    boxes = np.array([[0, 0, 23, 31], [3, 5, 11, 17], [2, 8, 13, 3], [4, 0, 19, 2]], np.int32)
    flips = np.array([True, False, True, True])
    plain = fused_loop.fused_augment(IMAGES, image_ops.crop_taps(boxes, 9, 14)).numpy()
    mirrored = fused_loop.fused_augment(IMAGES, image_ops.crop_taps(boxes, 9, 14, flips=flips)).numpy()
    np.testing.assert_array_equal(mirrored, np.where(flips[:, None, None, None], plain[:, :, ::-1], plain))


def test_fused_takes_integer_images_and_gives_float32():
    as_uint8 = (IMAGES * 255).astype(np.uint8)
    got = fused_loop.fused_augment(as_uint8)
    assert got.dtype == tf.float32
    np.testing.assert_array_equal(got, tf.image.convert_image_dtype(as_uint8, tf.float32))


def test_fused_is_the_same_eagerly_and_in_tf_data():
    arguments = dict(crop=image_ops.crop_taps([[1, 2, 15, 20]] * 4, 12, 12),
                     jitter=(np.ones(4, bool), FACTORS, ORDERS), grays=[True, False, False, True],
                     blurs=([True, False, True, True], image_ops.gaussian_kernels([0.5, 1, 1.5, 2], 1)),
                     clip=True)
    eager = fused_loop.fused_augment(IMAGES, **arguments).numpy()
    dataset = tf.data.Dataset.from_tensors(IMAGES).map(lambda x: fused_loop.fused_augment(x, **arguments))
    np.testing.assert_array_equal(next(iter(dataset)).numpy(), eager)
    # A batch size unknown while tracing is compiled for each size met (here 3, then 1).
    unbatched = tf.data.Dataset.from_tensor_slices(IMAGES).batch(3)
    mapped = [x.numpy() for x in unbatched.map(lambda x: fused_loop.fused_augment(x, clip=True))]
    np.testing.assert_array_equal(np.concatenate(mapped), np.clip(IMAGES, 0, 1))


def test_fused_rejects_an_unknown_brightness_op():
    with pytest.raises(ValueError, match="scale"):
        fused_loop.fused_augment(IMAGES, brightness="add")
