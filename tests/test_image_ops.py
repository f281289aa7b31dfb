"""Tests for simclr_tf.data.image_ops: each batched op against tf.image or a numpy formula."""
import math

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.data import image_ops

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
    got = image_ops.crop_and_resize(tf.constant(IMAGES), boxes, *size, method=method).numpy()
    want = np.stack([
            tf.image.resize(tf.image.crop_to_bounding_box(image, *box), size, method=method).numpy()
            for image, box in zip(IMAGES, boxes)
    ])
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_interpolation_rows_sum_to_one_and_stay_inside_the_crop():
    matrix = image_ops.interpolation_matrix([2, 0], [5, 9], 9, 13).numpy()
    np.testing.assert_allclose(matrix.sum(axis=2), 1.0, atol=1e-6)
    assert np.all(matrix[0, :, :2] == 0) and np.all(matrix[0, :, 7:] == 0)


def test_unknown_interpolation_is_rejected():
    with pytest.raises(ValueError, match="bicubic"):
        image_ops.interpolation_matrix([0], [4], 4, 4, method="nearest")


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
