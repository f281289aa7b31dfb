"""Batched image ops with per-image parameters, used by the augmentation layers.

Every op takes a batch of float32 images in [0, 1] (`[B, H, W, 3]`; the color ops take the
channels-first `[B, 3, H, W]` of `to_planes`) and one parameter per image (shape `[B]`), so a
whole batch is transformed at once with no Python loop over images. Nothing here draws random
numbers except `sample_crop_boxes` and `sample_distorted_boxes`, which are stateless (same seed, same boxes).

`fused_loop.fused_augment` computes the same formulas in one XLA-compiled loop over the images
(the fast path of the augmentation layers for batches); `crop_taps` and `mirror_taps` prepare its
crop argument.
"""
import math

import tensorflow as tf

# tf.image.resize "bicubic" (half-pixel centers, no antialias) looks the Keys kernel up in a table
# of this many steps per pixel; quantizing the same way makes our resize match it to float rounding.
_CUBIC_TABLE_STEPS = 1024.0
_KEYS_A = -0.5
LUMA_WEIGHTS = (0.2989, 0.5870, 0.1140)  # as tf.image.rgb_to_grayscale


def to_batch(images):
    """Returns `(images [B, H, W, C], was_single)`; a single `[H, W, C]` image gets B=1."""
    rank = images.shape.rank
    if rank == 3:
        return images[tf.newaxis], True
    if rank == 4:
        return images, False
    raise ValueError(f"Expected an image [H, W, C] or a batch [B, H, W, C], got shape {images.shape}.")


def from_batch(images, was_single):
    """Undoes `to_batch`."""
    return images[0] if was_single else images


def _per_image(values):
    """Reshapes per-image values `[B]` to broadcast against `[B, H, W, C]`."""
    return tf.reshape(tf.cast(values, tf.float32), [-1, 1, 1, 1])


# ----------------------------------------------------------------------------- crop and resize

def sample_crop_boxes(seed, batch_size, image_height, image_width,
                      area_range=(0.08, 1.0), aspect_ratio_range=(3 / 4, 4 / 3), attempts=10):
    """Samples one random crop box per image, as int32 `[B, 4]` rows `(top, left, height, width)`.

    Each image gets `attempts` candidates: area fraction uniform in `area_range`, aspect ratio
    (width / height) log-uniform in `aspect_ratio_range`, sides rounded to whole pixels. The first
    candidate whose rounded box fits in the image and still satisfies both ranges is kept; if none
    does, the box is the whole image. The offset is uniform over the positions where the box fits.
    """
    seed = tf.cast(seed, tf.int64)
    draw_seeds = [tf.random.experimental.stateless_fold_in(seed, i) for i in range(4)]
    shape = tf.stack([batch_size, attempts])
    full_h = tf.cast(image_height, tf.float32)
    full_w = tf.cast(image_width, tf.float32)

    area_fraction = tf.random.stateless_uniform(shape, draw_seeds[0], area_range[0], area_range[1])
    log_ratio = tf.random.stateless_uniform(
        shape, draw_seeds[1], math.log(aspect_ratio_range[0]), math.log(aspect_ratio_range[1]))
    area = area_fraction * full_h * full_w
    ratio = tf.exp(log_ratio)
    crop_h = tf.math.rint(tf.sqrt(area / ratio))
    crop_w = tf.math.rint(tf.sqrt(area * ratio))

    kept_area = crop_h * crop_w / (full_h * full_w)
    kept_ratio = crop_w / tf.maximum(crop_h, 1.0)
    fits = ((crop_h >= 1.0) & (crop_h <= full_h) & (crop_w >= 1.0) & (crop_w <= full_w)
            & (kept_area >= area_range[0]) & (kept_area <= area_range[1])
            & (kept_ratio >= aspect_ratio_range[0]) & (kept_ratio <= aspect_ratio_range[1]))
    first_fit = tf.argmax(tf.cast(fits, tf.int32), axis=1, output_type=tf.int32)
    any_fit = tf.reduce_any(fits, axis=1)
    crop_h = tf.where(any_fit, tf.gather(crop_h, first_fit, batch_dims=1), full_h)
    crop_w = tf.where(any_fit, tf.gather(crop_w, first_fit, batch_dims=1), full_w)

    top = tf.floor(tf.random.stateless_uniform([batch_size], draw_seeds[2]) * (full_h - crop_h + 1.0))
    left = tf.floor(tf.random.stateless_uniform([batch_size], draw_seeds[3]) * (full_w - crop_w + 1.0))
    top = tf.minimum(top, full_h - crop_h)
    left = tf.minimum(left, full_w - crop_w)
    return tf.cast(tf.stack([top, left, crop_h, crop_w], axis=1), tf.int32)


CROP_IMPLS = ("reference", "uniform_area")


def sample_distorted_boxes(seed, batch_size, image_height, image_width, area_range=(0.08, 1.0),
                           aspect_ratio_range=(3 / 4, 4 / 3), min_object_covered=0.1, max_attempts=100):
    """Crop boxes drawn as `tf.image.sample_distorted_bounding_box` draws them, int32 `[B, 4]`.

    The reference crops with that op (whole-image bounding box, `min_object_covered=0.1`, 100
    attempts); this is the same distribution, computed for a whole batch at once from stateless
    draws (the op itself takes one image and no per-image seed). Each attempt draws the aspect ratio
    (width / height) *uniformly* in `aspect_ratio_range`, then the height as a uniform integer between
    the heights of the smallest and largest allowed areas (so the side, not the area, is uniform);
    the width is the rounded height times the ratio, grown by one row (twice at most) when rounding
    fell under the smallest area. An attempt is kept if its box fits, its area fraction lies in
    `area_range` and covers at least `min_object_covered` of the image; the first kept one wins,
    else the box is the whole image. The offset is uniform in `[0, image - box)` on each axis, so a
    box smaller than the image never touches its bottom or right edge (as the op). Rows are
    `(top, left, height, width)`; all arithmetic is float32 with round-half-to-even, as the op.
    """
    seed = tf.cast(seed, tf.int64)
    shape = tf.stack([batch_size, max_attempts])
    draws = [tf.random.stateless_uniform(shape, tf.random.experimental.stateless_fold_in(seed, i))
             for i in range(4)]
    full_h = tf.cast(image_height, tf.float32)
    full_w = tf.cast(image_width, tf.float32)
    min_area = tf.constant(area_range[0], tf.float32) * full_w * full_h
    max_area = tf.constant(area_range[1], tf.float32) * full_w * full_h
    low_ratio = tf.constant(aspect_ratio_range[0], tf.float32)
    ratio = draws[0] * (tf.constant(aspect_ratio_range[1], tf.float32) - low_ratio) + low_ratio

    height = tf.math.rint(tf.sqrt(min_area / ratio))
    max_height = tf.math.rint(tf.sqrt(max_area / ratio))
    # Tallest box whose rounded width still fits the image.
    capped = tf.floor((full_w + 0.5 - 1e-7) / ratio)
    capped = tf.where(tf.math.rint(capped * ratio) > full_w, capped - 1.0, capped)
    max_height = tf.where(tf.math.rint(max_height * ratio) > full_w, capped, max_height)
    max_height = tf.minimum(max_height, full_h)
    height = tf.minimum(height, max_height)
    spread = max_height - height + 1.0
    height = height + tf.minimum(tf.floor(draws[1] * spread), spread - 1.0)
    width = tf.math.rint(height * ratio)
    for _ in range(2):  # rounding may leave the area just under the minimum: one row taller, twice
        small = width * height < min_area
        height = tf.where(small, height + 1.0, height)
        width = tf.where(small, tf.math.rint(height * ratio), width)
    area = width * height
    fits = ((area >= min_area) & (area <= max_area) & (width <= full_w) & (height <= full_h)
            & (width > 0.0) & (height > 0.0)
            & (area / (full_h * full_w) >= tf.constant(min_object_covered, tf.float32)))
    first_fit = tf.argmax(tf.cast(fits, tf.int32), axis=1, output_type=tf.int32)
    any_fit = tf.reduce_any(fits, axis=1)

    def first(values):
        return tf.gather(values, first_fit, batch_dims=1)

    crop_h = tf.where(any_fit, first(height), full_h)
    crop_w = tf.where(any_fit, first(width), full_w)
    # The op's offset is uniform in [0, size - box), and 0 when the box spans the axis.
    top = tf.minimum(tf.floor(first(draws[2]) * (full_h - crop_h)), tf.maximum(full_h - crop_h - 1.0, 0.0))
    left = tf.minimum(tf.floor(first(draws[3]) * (full_w - crop_w)), tf.maximum(full_w - crop_w - 1.0, 0.0))
    return tf.cast(tf.stack([top, left, crop_h, crop_w], axis=1), tf.int32)


def keys_cubic(distance):
    """Keys cubic convolution kernel with a = -0.5 (the kernel of tf.image.resize "bicubic")."""
    x = tf.abs(distance)
    a = _KEYS_A
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    return tf.where(x <= 1.0, near, tf.where(x < 2.0, far, tf.zeros_like(x)))


def resize_taps(starts, sizes, output_size, method="bicubic"):
    """Input pixel and weight of each tap of each output pixel, both `[B, output_size, taps]`.

    Output pixel o of image b is `sum_t weights[b, o, t] * input[taps[b, o, t]]`, resampling the
    crop of image b that covers input pixels `starts[b] .. starts[b] + sizes[b] - 1` (see
    `crop_taps`). Bicubic has 4 taps, bilinear 2. Taps clamped onto the crop's edge weigh 0.
    """
    starts = tf.cast(starts, tf.float32)[:, tf.newaxis, tf.newaxis]
    sizes = tf.cast(sizes, tf.float32)[:, tf.newaxis, tf.newaxis]
    out_pos = tf.range(output_size, dtype=tf.float32)[tf.newaxis, :, tf.newaxis]
    sample = (out_pos + 0.5) * (sizes / float(output_size)) - 0.5  # in crop coordinates
    if method == "bicubic":
        whole = tf.floor(sample)
        fraction = tf.math.rint((sample - whole) * _CUBIC_TABLE_STEPS) / _CUBIC_TABLE_STEPS
        taps = whole + tf.constant([-1.0, 0.0, 1.0, 2.0])
        inside = (taps >= 0.0) & (taps <= sizes - 1.0)
        weights = tf.where(inside, keys_cubic(taps - whole - fraction), 0.0)
        weights = weights / tf.reduce_sum(weights, axis=2, keepdims=True)
    elif method == "bilinear":
        sample = tf.clip_by_value(sample, 0.0, sizes - 1.0)
        whole = tf.floor(sample)
        fraction = sample - whole
        taps = whole + tf.constant([0.0, 1.0])
        weights = tf.concat([1.0 - fraction, fraction], axis=2)
    else:
        raise ValueError(f"interpolation must be 'bicubic' or 'bilinear', got {method!r}.")
    # Taps clamped onto the crop's edge all carry weight 0, so the clamping changes no sum.
    return tf.cast(tf.clip_by_value(taps, 0.0, sizes - 1.0) + starts, tf.int32), weights


def crop_taps(boxes, height, width, method="bicubic", flips=None):
    """The `crop` argument of `fused_augment`: box b of image b resized to (height, width).

    Boxes are `(top, left, height, width)` rows. The crop is resized as tf.image.resize (half-pixel
    centers, no antialias) would resize it: "bicubic" (Keys, a = -0.5) drops the taps outside the
    crop and renormalizes the rest; "bilinear" clamps the sample position to the crop. `flips`
    `[B]` mirrors those outputs left-right.
    """
    boxes = tf.convert_to_tensor(boxes)
    rows = resize_taps(boxes[:, 0], boxes[:, 2], height, method)
    cols = resize_taps(boxes[:, 1], boxes[:, 3], width, method)
    if flips is not None:
        cols = mirror_taps(*cols, flips)
    return (*rows, *cols)


def resize(images, height, width, method="bicubic"):
    """Resizes a batch to (height, width); a no-op when the static size already matches."""
    if tuple(images.shape[1:3]) == (height, width):
        return images
    return tf.image.resize(images, (height, width), method=method)


def center_crop_box(image_height, image_width, height, width, crop_proportion):
    """Central box `(top, left, crop_h, crop_w)` with the target aspect ratio width / height.

    The side that is cropped most keeps `crop_proportion` of its length (sizes rounded to whole
    pixels, the odd pixel left over goes to the top/left margin), as in the SimCLR eval transform.
    """
    full_h = tf.cast(image_height, tf.float32)
    full_w = tf.cast(image_width, tf.float32)
    aspect = width / height
    wider_than_image = aspect > full_w / full_h
    crop_h = tf.where(wider_than_image, crop_proportion / aspect * full_w, crop_proportion * full_h)
    crop_w = tf.where(wider_than_image, crop_proportion * full_w, crop_proportion * aspect * full_h)
    crop_h = tf.cast(tf.math.rint(crop_h), tf.int32)
    crop_w = tf.cast(tf.math.rint(crop_w), tf.int32)
    top = (tf.cast(image_height, tf.int32) - crop_h + 1) // 2
    left = (tf.cast(image_width, tf.int32) - crop_w + 1) // 2
    return top, left, crop_h, crop_w


# ----------------------------------------------------------------------------- color
# The color ops take channels-first batches [B, 3, H, W] ("planes"): on CPU, per-pixel work across
# the three channels is several times faster on whole planes than on the interleaved last axis.

def to_planes(images):
    """[B, H, W, 3] -> [B, 3, H, W]."""
    return tf.transpose(images, [0, 3, 1, 2])


def from_planes(planes):
    """[B, 3, H, W] -> [B, H, W, 3]."""
    return tf.transpose(planes, [0, 2, 3, 1])


def scale_brightness(planes, factors):
    """Multiplies image b by `factors[b]` (SimCLR v2 brightness)."""
    return planes * _per_image(factors)


def shift_brightness(planes, deltas):
    """Adds `deltas[b]` to image b (SimCLR v1 brightness, as tf.image.adjust_brightness)."""
    return planes + _per_image(deltas)


def adjust_contrast(planes, factors):
    """As tf.image.adjust_contrast, per image: `(x - mean) * factor + mean`, mean per channel."""
    # The mean as a matrix-vector product: XLA on CPU runs reduce_mean over a plane as scalar
    # code, several times slower than the (vectorized) product.
    shape = tf.shape(planes)
    pixels = shape[2] * shape[3]
    sums = tf.linalg.matvec(tf.reshape(planes, tf.stack([-1, pixels])), tf.ones(tf.expand_dims(pixels, 0)))
    mean = tf.reshape(sums / tf.cast(pixels, tf.float32), tf.stack([shape[0], shape[1], 1, 1]))
    return (planes - mean) * _per_image(factors) + mean


def adjust_saturation(planes, factors):
    """As tf.image.adjust_saturation, per image: HSV saturation times factor, clipped to [0, 1].

    Done in RGB: keeping hue and value while scaling saturation by k moves every channel c to
    `v - (v - c) * k` (v = max channel); the clip at saturation 1 caps k at `v / (v - min)`.
    """
    red, green, blue = tf.unstack(planes, axis=1)
    value = tf.maximum(tf.maximum(red, green), blue)
    spread = value - tf.minimum(tf.minimum(red, green), blue)
    factors = tf.reshape(tf.cast(factors, tf.float32), [-1, 1, 1])
    scale = tf.minimum(factors, tf.math.divide_no_nan(value, spread))
    return tf.stack([value - (value - channel) * scale for channel in (red, green, blue)], axis=1)


def adjust_hue(planes, deltas):
    """As tf.image.adjust_hue, per image: rotates the HSV hue by `deltas[b]` (in turns).

    Computed in RGB with hue in sixths: v = max, chroma = max - min, and channel n (5, 3, 1 for
    R, G, B) is `v - chroma * clip(min(k, 4 - k), 0, 1)` with `k = (n + hue) mod 6`.
    """
    red, green, blue = tf.unstack(planes, axis=1)
    value = tf.maximum(tf.maximum(red, green), blue)
    chroma = value - tf.minimum(tf.minimum(red, green), blue)
    hue = tf.where(
            value == red, tf.math.divide_no_nan(green - blue, chroma),
            tf.where(value == green, tf.math.divide_no_nan(blue - red, chroma) + 2.0,
                     tf.math.divide_no_nan(red - green, chroma) + 4.0))
    hue = hue + 6.0 * tf.reshape(tf.cast(deltas, tf.float32), [-1, 1, 1])
    channels = []
    for offset in (5.0, 3.0, 1.0):
        k = offset + hue
        k = k - 6.0 * tf.floor(k / 6.0)
        channels.append(value - chroma * tf.clip_by_value(tf.minimum(k, 4.0 - k), 0.0, 1.0))
    return tf.stack(channels, axis=1)


def grayscale(images):
    """Luma (tf.image.rgb_to_grayscale weights) of [B, H, W, 3] images, copied to 3 channels."""
    shape = tf.shape(images)
    luma = tf.matmul(tf.reshape(images, [-1, 3]), tf.constant(LUMA_WEIGHTS, tf.float32)[:, tf.newaxis])
    return tf.reshape(tf.tile(luma, [1, 3]), shape)


# ----------------------------------------------------------------------------- blur

def gaussian_kernels(sigmas, radius):
    """Normalized 1-D Gaussian kernels `[B, 2 * radius + 1]`, one per sigma."""
    offsets = tf.cast(tf.range(-radius, radius + 1), tf.float32)
    sigmas = tf.cast(sigmas, tf.float32)[:, tf.newaxis]
    kernels = tf.exp(-tf.square(offsets)[tf.newaxis] / (2.0 * tf.square(sigmas)))
    return kernels / tf.reduce_sum(kernels, axis=1, keepdims=True)


def gaussian_blur(images, sigmas, radius):
    """Separable Gaussian blur of image b with `sigmas[b]`, SAME size with zero padding.

    Zero padding (as the SimCLR reference) darkens a border `radius` pixels wide. The batch is
    folded into the channels so one depthwise convolution applies every image's own kernel. Both
    passes run along the width (the columns pass on the transposed images): on CPU a depthwise
    convolution along the height is about three times slower than the same along the width.
    """
    def blur():
        shape = tf.shape(images)
        batch, height, width, channels = shape[0], shape[1], shape[2], shape[3]
        kernels = tf.repeat(gaussian_kernels(sigmas, radius), channels, axis=0)  # [B*C, K]
        kernel = tf.transpose(kernels)[tf.newaxis, :, :, tf.newaxis]  # [1, K, B*C, 1], b-major
        folded = tf.reshape(tf.transpose(images, [1, 2, 0, 3]), [1, height, width, batch * channels])
        folded = tf.nn.depthwise_conv2d(folded, kernel, [1, 1, 1, 1], "SAME")  # along rows
        folded = tf.transpose(folded, [0, 2, 1, 3])  # [1, W, H, B*C]
        folded = tf.nn.depthwise_conv2d(folded, kernel, [1, 1, 1, 1], "SAME")  # along columns
        return tf.transpose(tf.reshape(folded, [width, height, batch, channels]), [2, 1, 0, 3])

    # A convolution over zero folded channels fails, so an empty batch skips it.
    blurred = tf.cond(tf.shape(images)[0] > 0, blur, lambda: images)
    return tf.ensure_shape(blurred, images.shape)


def mirror_taps(taps, weights, flips):
    """`resize_taps` output reversed along the output axis where `flips[b]` (a mirrored output)."""
    flips = tf.reshape(tf.convert_to_tensor(flips, tf.bool), [-1, 1, 1])
    return (tf.where(flips, tf.reverse(taps, [1]), taps),
            tf.where(flips, tf.reverse(weights, [1]), weights))
