"""The fast path of the augmentation layers for batches: one XLA-compiled loop over the images.

Batched element-wise ops stream the whole batch through memory once per op (a 224 px batch of
64 is 38 MB), and the jitter ops are dozens of element-wise ops each. XLA fuses each op into one
loop, and a loop over the images keeps each one in the CPU cache through all its steps; each
image also runs only the jitter op it draws in each round, and only the images drawn for the
blur are blurred. The formulas are those of `image_ops` (equal to float rounding).
"""
import tensorflow as tf

from simclr_tf.data import image_ops


def fused_augment(images, crop=None, flips=None, jitter=None, grays=None, blurs=None, clip=False,
                  brightness="scale"):
    """Crop-resize, flip, color jitter, grayscale and blur of each image, in that order.

    Args:
      images: `[B, H, W, C]`, float or integer (integers are scaled to [0, 1] as
        tf.image.convert_image_dtype does).
      crop: `(row_taps, row_weights, col_taps, col_weights)`, the `image_ops.resize_taps` of the rows and the
        columns of each image's crop (from `image_ops.crop_taps`, which can fold a left-right flip in), or
        None for no resize.
      flips: `[B]` bool, left-right flip after the resize (None: no flips).
      jitter: `(apply [B] bool, factors [B, 4], order [B, 4] int)`, factors in the order
        brightness, contrast, saturation, hue: image b, if `apply[b]`, goes through the ops
        `order[b]` (0..3 in that list), each followed by a clip to [0, 1]. C must be 3.
      grays: `[B]` bool, replace the image by its luma (as `grayscale`); C must be 3.
      blurs: `(apply [B] bool, kernels [B, K])`, separable blur of image b with the 1-D kernel
        `kernels[b]` (odd K; SAME size, zero padding, as `gaussian_blur`) where `apply[b]`.
      clip: clip the result to [0, 1].
      brightness: "scale" (`scale_brightness`, SimCLR v2) or "shift" (`shift_brightness`).

    Returns float32 `[B, out_H, out_W, C]`, equal to the separate ops to float rounding. Compiled
    with XLA once per input shape and set of arguments given (about a second); the loop runs on
    one core, so tf.data's parallel calls keep the others busy.
    """
    if brightness not in ("scale", "shift"):
        raise ValueError(f"brightness must be 'scale' or 'shift', got {brightness!r}.")

    def tensors(parts, *dtypes):
        return None if parts is None else tuple(tf.cast(p, d) for p, d in zip(parts, dtypes))

    flips = None if flips is None else tf.cast(flips, tf.bool)
    grays = None if grays is None else tf.cast(grays, tf.bool)
    return _fused_loop(tf.convert_to_tensor(images),
                       tensors(crop, tf.int32, tf.float32, tf.int32, tf.float32), flips,
                       tensors(jitter, tf.bool, tf.float32, tf.int32), grays,
                       tensors(blurs, tf.bool, tf.float32), clip, brightness)


def crop_and_resize(images, boxes, height, width, method="bicubic"):
    """Crops box b (`(top, left, height, width)` in pixels) out of image b and resizes it.

    Equals `tf.image.resize(tf.image.crop_to_bounding_box(image, *box), (height, width), method)`
    for every image (to float rounding), computed from each crop's taps in `fused_augment`.
    """
    return fused_augment(images, image_ops.crop_taps(boxes, height, width, method))


@tf.function(jit_compile=True, autograph=False)
def _fused_loop(images, crop, flips, jitter, grays, blurs, clip, brightness):
    shape = tf.shape(images)
    out_height, out_width = shape[1], shape[2]
    if crop is not None:
        out_height, out_width = tf.shape(crop[0])[1], tf.shape(crop[2])[1]

    def one_image(index):
        def pick(tensor):
            return tf.gather(tensor, index)

        image = pick(images)
        if image.dtype.is_integer:
            image = tf.cast(image, tf.float32) * (1.0 / image.dtype.max)
        image = tf.cast(image, tf.float32)
        if crop is not None:
            planes = _resized_planes(image, *map(pick, crop), index)
        else:
            planes = tf.transpose(image, [2, 0, 1])
        if flips is not None:
            planes = tf.cond(pick(flips), lambda: tf.reverse(planes, [2]), lambda: planes)
        if jitter is not None:
            planes = _jitter_one(planes, *map(pick, jitter), brightness)
        if grays is not None:
            planes = tf.cond(pick(grays), lambda: _luma_planes(planes), lambda: planes)
        if blurs is not None:
            kernel = pick(blurs[1])
            planes = tf.cond(pick(blurs[0]), lambda: _blur_planes(planes, kernel, index), lambda: planes)
        if clip:
            planes = tf.clip_by_value(planes, 0.0, 1.0)
        return tf.transpose(planes, [1, 2, 0])

    def body(index, result):
        return index + 1, tf.tensor_scatter_nd_update(result, [[index]], one_image(index)[tf.newaxis])

    result = tf.zeros(tf.stack([shape[0], out_height, out_width, shape[3]]), tf.float32)
    return tf.while_loop(lambda index, _: index < shape[0], body, (0, result))[1]


def _materialized(tensor, index):
    """`tensor`, computed into its own buffer: a conditional is a boundary XLA does not fuse across.

    Used after a transpose: fused into the gather that reads it, the transpose turns that gather's
    contiguous row reads into one element at a time (about three times slower in all).
    """
    return tf.cond(index >= 0, lambda: tensor, lambda: tf.zeros_like(tensor))


def _resample_rows(image, taps, weights):
    """Resize along the first axis: output row o is `sum_t weights[o, t] * image[taps[o, t]]`."""
    return tf.add_n([weights[:, t, tf.newaxis, tf.newaxis] * tf.gather(image, taps[:, t])
                     for t in range(taps.shape[1])])


def _resized_planes(image, row_taps, row_weights, col_taps, col_weights, index):
    """One `[H, W, C]` image's crop-resize, as planes `[C, out_H, out_W]`.

    Both passes gather whole rows (contiguous), the second on the transposed first result.
    """
    rows = _resample_rows(image, row_taps, row_weights)  # [out_H, W, C]
    columns = _materialized(tf.transpose(rows, [1, 0, 2]), index)  # [W, out_H, C]
    columns = _materialized(_resample_rows(columns, col_taps, col_weights), index)  # [out_W, out_H, C]
    return tf.transpose(columns, [2, 1, 0])


def _jitter_one(planes, apply, factors, order, brightness):
    """One image's jitter (planes `[3, H, W]`): four rounds, each running the op `order[round]`."""
    functions = (image_ops.scale_brightness if brightness == "scale" else image_ops.shift_brightness,
                 image_ops.adjust_contrast, image_ops.adjust_saturation, image_ops.adjust_hue)

    def one_round(step, planes):
        branches = [
                lambda function=function, op=op: tf.clip_by_value(
                        function(planes[tf.newaxis], factors[op:op + 1])[0], 0.0, 1.0)
                for op, function in enumerate(functions)
        ]
        return step + 1, tf.switch_case(tf.gather(order, step), branches)

    def all_rounds():
        return tf.while_loop(lambda step, _: step < 4, one_round, (0, planes))[1]

    return tf.cond(apply, all_rounds, lambda: planes)


def _luma_planes(planes):
    red_weight, green_weight, blue_weight = image_ops.LUMA_WEIGHTS
    red, green, blue = tf.unstack(planes)
    luma = red_weight * red + green_weight * green + blue_weight * blue
    return tf.stack([luma] * 3)


def _blur_planes(planes, kernel, index):
    """Separable blur of planes `[C, H, W]` with the 1-D `kernel` (odd size), zero padded."""
    radius = (kernel.shape[0] - 1) // 2
    for axis in (2, 1):  # along the rows first, as gaussian_blur
        size = planes.shape[axis] if planes.shape[axis] is not None else tf.shape(planes)[axis]
        padding = [[0, 0], [0, 0], [0, 0]]
        padding[axis] = [radius, radius]
        # Padded in its own buffer, so the sum below reads plain slices (no bounds test per tap).
        padded = _materialized(tf.pad(planes, padding), index)
        begin, sizes = [0, 0, 0], [-1, -1, -1]
        sizes[axis] = size
        taps = []
        for offset in range(2 * radius + 1):
            begin[axis] = offset
            taps.append(kernel[offset] * tf.slice(padded, begin, sizes))
        planes = _materialized(tf.add_n(taps), index)
    return planes
