"""SimCLR augmentations as Keras layers, vectorized over the batch with per-image randomness.

Every layer takes one image `[H, W, 3]` or a batch `[B, H, W, 3]` (float32 in [0, 1]; integer
images are scaled by tf.image.convert_image_dtype) and returns float32 clipped to [0, 1].

Randomness: random layers are called as `layer(images, training=True, seed=None)`. `seed` is a
shape-[2] int tensor for TF stateless random ops, so the same (images, seed) gives the same output
eagerly, in tf.function and in tf.data. Without `seed`, the layer draws one from its own
`keras.random.SeedGenerator(seed)`. That also works inside tf.data.Dataset.map, but the draws then
follow the pipeline's scheduling, and parallel calls may read the generator at the same time:
reproducible pipelines pass explicit seeds (e.g. from `Dataset.enumerate()` or
`Dataset.random()`). Composite layers hand each part a sub-seed folded from their seed.
With `training=False` random layers return their input (the crop layer resizes it instead, so
the output size is the same in both modes).

Speed: a batch (static batch size other than 1) runs through `fused_loop.fused_augment`, an
XLA-compiled loop that takes one image at a time through crop-resize, flip, jitter, grayscale and
blur (compiled once per input shape, about a second); a single image, or a batch of one, runs the
separate batched ops, which suit one image of any size. Both compute the same formulas from the
same draws and agree to float rounding (about 1e-6); a given input always takes the same path,
eagerly and in tf.data.
"""
import keras
import tensorflow as tf

from simclr_tf.data import fused_loop, image_ops

_register = keras.saving.register_keras_serializable(package="simclr_tf")


def _fold(seed, index):
    return tf.random.experimental.stateless_fold_in(seed, index)


def _coins(seed, batch_size, probability):
    """Per-image booleans, True with `probability`."""
    return tf.random.stateless_uniform([batch_size], seed) < probability


def _fused(images):
    """Whether a batch takes the fused per-image loop: any batch but a (static) single image."""
    return images.shape[0] != 1


def _select(condition, if_true, if_false):
    """Per-image choice; `condition` is [B] (Select with a vector condition avoids a broadcast)."""
    return tf.raw_ops.Select(condition=condition, x=if_true, y=if_false)


def _apply_to_selected(function, images, selected, *per_image_args):
    """`function` run on the selected images only (with their per-image args); others unchanged."""
    split = tf.cast(selected, tf.int32)
    kept, chosen = tf.dynamic_partition(images, split, 2)
    kept_at, chosen_at = tf.dynamic_partition(tf.range(tf.shape(images)[0]), split, 2)
    changed = function(chosen, *[tf.gather(arg, chosen_at) for arg in per_image_args])
    return tf.ensure_shape(tf.dynamic_stitch([kept_at, chosen_at], [kept, changed]), images.shape)


class _ImageLayer(keras.layers.Layer):
    """Base: single image or batch in, float32 in [0, 1] out; subclasses implement `_transform`."""

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")  # augmentation stays float32 under mixed precision
        super().__init__(**kwargs)

    def build(self, input_shape=None):
        pass  # no weights; sublayers build themselves when called

    def call(self, images, training=True, seed=None):
        batch, was_single = image_ops.to_batch(tf.convert_to_tensor(images))
        return image_ops.from_batch(self._transform_batch(batch, training, seed), was_single)

    def _transform_batch(self, images, training, seed):
        """Float32 result in [0, 1] of a batch of any image dtype (a fused path overrides this)."""
        images = tf.image.convert_image_dtype(images, tf.float32)
        return tf.clip_by_value(self._transform(images, training, seed), 0.0, 1.0)

    def _transform(self, images, training, seed):
        raise NotImplementedError


class _RandomImageLayer(_ImageLayer):
    """Base of the random layers: resolves the seed, identity when not training."""

    def __init__(self, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def draw_seed(self, seed=None):
        """`seed` as an int64 [2] tensor, or a fresh one from the layer's SeedGenerator."""
        if seed is None:
            seed = self.seed_generator.next()
        return tf.cast(seed, tf.int64)

    def _transform(self, images, training, seed):
        if not training:
            return self._inference(images)
        return self._augment(images, self.draw_seed(seed))

    def _inference(self, images):
        return images

    def _augment(self, images, seed):
        raise NotImplementedError

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


@_register
class RandomResizedCrop(_RandomImageLayer):
    """Random crop (area fraction and aspect ratio w/h in range) resized to (height, width).

    Two samplers of the box, chosen by `impl`:
    - "reference" (default): the distribution of `tf.image.sample_distorted_bounding_box` as the
      reference calls it (whole-image box, `min_object_covered=0.1`, 100 attempts), drawn per image
      by `image_ops.sample_distorted_boxes`: aspect uniform, box height a uniform integer (so small
      areas are more frequent than with a uniform area: median area 0.40 on 32 px images), the
      whole image when no attempt fits.
    - "uniform_area": the crop as the paper's text describes it, `image_ops.sample_crop_boxes`:
      10 candidates per image (area uniform, aspect log-uniform, sides rounded to pixels), the first
      that fits and stays in both ranges, else the whole image (median area 0.46 on 32 px images).
    `interpolation` is "bicubic" or "bilinear", matching tf.image.resize. A batch is resampled from
    each crop's taps (`resize_taps`) in the fused loop; a single image is sliced and resized. With
    `training=False` the whole image is resized.
    """

    def __init__(self, height, width, area_range=(0.08, 1.0), aspect_ratio_range=(3 / 4, 4 / 3),
                 interpolation="bicubic", impl="reference", seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        if interpolation not in ("bicubic", "bilinear"):
            raise ValueError(f"interpolation must be 'bicubic' or 'bilinear', got {interpolation!r}.")
        if impl not in image_ops.CROP_IMPLS:
            raise ValueError(f"impl must be one of {image_ops.CROP_IMPLS}, got {impl!r}.")
        self.impl = impl
        self.height = height
        self.width = width
        self.area_range = tuple(area_range)
        self.aspect_ratio_range = tuple(aspect_ratio_range)
        self.interpolation = interpolation

    def sample_boxes(self, batch_size, image_height, image_width, seed):
        """The `(top, left, height, width)` boxes `call` uses for this seed, int32 [B, 4]."""
        sampler = (image_ops.sample_distorted_boxes if self.impl == "reference"
                   else image_ops.sample_crop_boxes)
        return sampler(self.draw_seed(seed), batch_size, image_height, image_width,
                       self.area_range, self.aspect_ratio_range)

    def crop_taps(self, boxes, flips=None):
        """`fused_augment`'s `crop` argument for these boxes; `flips` [B] mirrors those outputs."""
        return image_ops.crop_taps(boxes, self.height, self.width, self.interpolation, flips)

    def _augment(self, images, seed):
        shape = tf.shape(images)
        boxes = self.sample_boxes(shape[0], shape[1], shape[2], seed)
        if _fused(images):
            crops = fused_loop.fused_augment(images, self.crop_taps(boxes))
        else:  # one image, any size: slicing then resizing is much cheaper
            crop = tf.image.crop_to_bounding_box(images, *tf.unstack(boxes[0]))
            crops = tf.image.resize(crop, (self.height, self.width), method=self.interpolation)
        return tf.ensure_shape(crops, [images.shape[0], self.height, self.width, images.shape[3]])

    def _inference(self, images):
        return image_ops.resize(images, self.height, self.width, self.interpolation)

    def get_config(self):
        return {**super().get_config(), "height": self.height, "width": self.width,
                "area_range": self.area_range, "aspect_ratio_range": self.aspect_ratio_range,
                "interpolation": self.interpolation, "impl": self.impl}


@_register
class RandomFlip(_RandomImageLayer):
    """Flips each image left-right with `probability`."""

    def __init__(self, probability=0.5, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.probability = probability

    def sample_flips(self, batch_size, seed):
        """Per-image booleans `[B]`: which images `call` flips for this seed."""
        return _coins(self.draw_seed(seed), batch_size, self.probability)

    def _augment(self, images, seed):
        flip = self.sample_flips(tf.shape(images)[0], seed)
        return _select(flip, tf.reverse(images, axis=[2]), images)

    def get_config(self):
        return {**super().get_config(), "probability": self.probability}


@_register
class ColorJitter(_RandomImageLayer):
    """SimCLR color jitter, applied to each image with `probability`.

    Ranges for strength s: brightness 0.8s (v2: factor in [max(0, 1-0.8s), 1+0.8s]; v1: added
    delta in [-0.8s, 0.8s]), contrast and saturation factor in [max(0, 1-0.8s), 1+0.8s], hue delta
    in [-0.2s, 0.2s]. The four ops run in a random order per image (`random_order`, else brightness,
    contrast, saturation, hue), clipping to [0, 1] after each. The reference errors for s > 1.25;
    here the lower factors are floored at 0.
    """

    OPS = ("brightness", "contrast", "saturation", "hue")

    def __init__(self, strength=1.0, probability=0.8, impl="simclrv2", random_order=True, seed=None,
                 **kwargs):
        super().__init__(seed=seed, **kwargs)
        if impl not in ("simclrv1", "simclrv2"):
            raise ValueError(f"impl must be 'simclrv1' or 'simclrv2', got {impl!r}.")
        self.strength = strength
        self.probability = probability
        self.impl = impl
        self.random_order = random_order

    def sample_factors(self, batch_size, seed):
        """Per-image draws for this seed: `apply` [B] bool, one [B] factor per op, `order` [B, 4]."""
        seed = self.draw_seed(seed)
        spread = 0.8 * self.strength
        low = max(0.0, 1.0 - spread)

        def uniform(index, minval, maxval):
            return tf.random.stateless_uniform([batch_size], _fold(seed, index), minval, maxval)

        if self.impl == "simclrv2":
            brightness = uniform(1, low, 1.0 + spread)
        else:
            brightness = uniform(1, -spread, spread)
        keys = tf.random.stateless_uniform(tf.stack([batch_size, 4]), _fold(seed, 5))
        return {
                "apply": _coins(_fold(seed, 0), batch_size, self.probability),
                "brightness": brightness,
                "contrast": uniform(2, low, 1.0 + spread),
                "saturation": uniform(3, low, 1.0 + spread),
                "hue": uniform(4, -0.2 * self.strength, 0.2 * self.strength),
                "order": tf.argsort(keys, axis=1, stable=True),
        }

    def fused_jitter(self, factors):
        """`fused_augment`'s `jitter` argument for factors of `sample_factors`."""
        order = factors["order"]
        if not self.random_order:
            order = tf.broadcast_to(tf.range(4, dtype=order.dtype), tf.shape(order))
        values = tf.stack([factors[name] for name in self.OPS], axis=1)
        return factors["apply"], values, order

    @property
    def brightness_op(self):
        """`fused_augment`'s `brightness` argument: "scale" (SimCLR v2) or "shift" (v1)."""
        return "scale" if self.impl == "simclrv2" else "shift"

    def apply_factors(self, images, factors):
        """Jitters the images where `factors["apply"]`, with their factors, in their op order."""
        if _fused(images):
            return fused_loop.fused_augment(images, jitter=self.fused_jitter(factors),
                                           brightness=self.brightness_op)
        planes = image_ops.to_planes(images)
        brightness = (image_ops.scale_brightness if self.impl == "simclrv2"
                      else image_ops.shift_brightness)
        functions = (brightness, image_ops.adjust_contrast, image_ops.adjust_saturation,
                     image_ops.adjust_hue)
        if not self.random_order:
            for name, function in zip(self.OPS, functions):
                planes = tf.clip_by_value(function(planes, factors[name]), 0.0, 1.0)
            return _select(factors["apply"], image_ops.from_planes(planes), images)
        # Round r: split the batch by the op each image runs r-th (part 4: images left alone),
        # so every op runs on its own images only.
        positions = tf.range(tf.shape(planes)[0])
        for step in range(4):
            op_index = tf.where(factors["apply"], factors["order"][:, step], 4)
            image_parts = tf.dynamic_partition(planes, op_index, 5)
            position_parts = tf.dynamic_partition(positions, op_index, 5)
            results = [
                    tf.clip_by_value(function(part, tf.gather(factors[name], where)), 0.0, 1.0)
                    for name, function, part, where
                    in zip(self.OPS, functions, image_parts, position_parts)
            ]
            results.append(image_parts[4])
            planes = tf.ensure_shape(tf.dynamic_stitch(position_parts, results), planes.shape)
        return image_ops.from_planes(planes)

    def _augment(self, images, seed):
        if self.strength == 0 or self.probability == 0:
            return images
        return self.apply_factors(images, self.sample_factors(tf.shape(images)[0], seed))

    def get_config(self):
        return {**super().get_config(), "strength": self.strength, "probability": self.probability,
                "impl": self.impl, "random_order": self.random_order}


@_register
class RandomGrayscale(_RandomImageLayer):
    """Replaces each image, with `probability`, by its luma copied to the three channels."""

    def __init__(self, probability=0.2, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.probability = probability

    def sample_grays(self, batch_size, seed):
        """Per-image booleans `[B]`: which images `call` turns gray for this seed."""
        return _coins(self.draw_seed(seed), batch_size, self.probability)

    def _augment(self, images, seed):
        gray = self.sample_grays(tf.shape(images)[0], seed)
        return _select(gray, image_ops.grayscale(images), images)

    def get_config(self):
        return {**super().get_config(), "probability": self.probability}


@_register
class RandomGaussianBlur(_RandomImageLayer):
    """Gaussian blur with sigma uniform in `sigma_range`, per image, applied with `probability`.

    The kernel has radius `kernel_size // 2` (size 2 * radius + 1); `kernel_size=None` means a tenth
    of the image height, as the reference. Separable, SAME size with zero padding (as the
    reference), so a border `radius` pixels wide gets darker.
    """

    def __init__(self, probability=0.5, sigma_range=(0.1, 2.0), kernel_size=None, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.probability = probability
        self.sigma_range = tuple(sigma_range)
        self.kernel_size = kernel_size

    def radius(self, image_height):
        """Kernel radius for images of this (static) height."""
        if image_height is None and self.kernel_size is None:
            raise ValueError("RandomGaussianBlur needs a static image height or a kernel_size.")
        kernel_size = self.kernel_size if self.kernel_size is not None else image_height // 10
        return kernel_size // 2

    def sample_sigmas(self, batch_size, seed):
        """`(apply [B] bool, sigma [B])` that `call` draws for this seed."""
        seed = self.draw_seed(seed)
        sigmas = tf.random.stateless_uniform([batch_size], _fold(seed, 1), *self.sigma_range)
        return _coins(_fold(seed, 0), batch_size, self.probability), sigmas

    def fused_blurs(self, batch_size, image_height, seed):
        """`fused_augment`'s `blurs` argument for this seed and (static) image height."""
        radius = self.radius(image_height)
        blur, sigmas = self.sample_sigmas(batch_size, seed)
        return blur, image_ops.gaussian_kernels(sigmas, radius)

    def _augment(self, images, seed):
        if _fused(images):
            blurs = self.fused_blurs(tf.shape(images)[0], images.shape[1], seed)
            return fused_loop.fused_augment(images, blurs=blurs)
        radius = self.radius(images.shape[1])
        blur, sigmas = self.sample_sigmas(tf.shape(images)[0], seed)
        return _apply_to_selected(
                lambda chosen, chosen_sigmas: image_ops.gaussian_blur(chosen, chosen_sigmas, radius),
                images, blur, sigmas)

    def get_config(self):
        return {**super().get_config(), "probability": self.probability,
                "sigma_range": self.sigma_range, "kernel_size": self.kernel_size}


@_register
class CenterCropResize(_ImageLayer):
    """Eval transform: central crop keeping `crop_proportion` of the more-cropped side at the
    target aspect ratio, then bicubic resize to (height, width). `crop=False` only resizes.
    Deterministic: `training` and `seed` are accepted and ignored.

    Example:
      >>> preprocess = CenterCropResize(32, 32)
      >>> images = tf.random.stateless_uniform([2, 64, 48, 3], seed=[0, 1])
      >>> print(preprocess(images).shape)  # central 42x42 of each image, resized to 32x32
      (2, 32, 32, 3)
      >>> bool(tf.reduce_all(preprocess(images, training=True) == preprocess(images)))
      True
      >>> image = tf.zeros([20, 24, 3], tf.uint8)  # one integer image, upsampled
      >>> resized = CenterCropResize(32, 32, crop=False)(image)
      >>> print(resized.shape, resized.dtype.name)
      (32, 32, 3) float32
    """

    def __init__(self, height, width, crop_proportion=0.875, crop=True, **kwargs):
        super().__init__(**kwargs)
        self.height = height
        self.width = width
        self.crop_proportion = crop_proportion
        self.crop = crop

    def _transform(self, images, training, seed):
        if self.crop:
            shape = tf.shape(images)
            box = image_ops.center_crop_box(shape[1], shape[2], self.height, self.width,
                                            self.crop_proportion)
            images = tf.image.crop_to_bounding_box(images, *box)
        resized = tf.image.resize(images, (self.height, self.width), method="bicubic")
        return tf.ensure_shape(resized, [images.shape[0], self.height, self.width, images.shape[3]])

    def get_config(self):
        return {**super().get_config(), "height": self.height, "width": self.width,
                "crop_proportion": self.crop_proportion, "crop": self.crop}


@_register
class PretrainAugment(_RandomImageLayer):
    """One SimCLR pretraining view: crop, flip, color jitter (p 0.8), grayscale (p 0.2), blur (p 0.5).

    As the reference: the crop's aspect-ratio range is (3/4, 4/3) times width / height;
    `color_jitter_strength <= 0` turns off jitter and grayscale; `crop=False` resizes to
    (height, width) (no-op if already that size); `use_blur` adds the blur (ImageNet setting);
    `crop_impl` picks the crop's box sampler (`RandomResizedCrop`'s `impl`: "reference" or
    "uniform_area").

    Example:
      >>> augmenter = PretrainAugment(height=32, width=32, use_blur=False)
      >>> images = tf.random.stateless_uniform([4, 40, 48, 3], seed=[0, 1], maxval=256, dtype=tf.int32)
      >>> images = tf.cast(images, tf.uint8)
      >>> views = augmenter(images, training=True, seed=[1, 2])
      >>> print(views.shape, views.dtype.name)
      (4, 32, 32, 3) float32
      >>> print(float(tf.reduce_min(views)) >= 0.0, float(tf.reduce_max(views)) <= 1.0)
      True True
      >>> bool(tf.reduce_all(augmenter(images, seed=[1, 2]) == views))  # same seed, same views
      True
      >>> print(augmenter(images[0], seed=[1, 2]).shape)  # a single image
      (32, 32, 3)
      >>> print(augmenter(images, training=False).shape)  # inference: resized only
      (4, 32, 32, 3)
    """

    def __init__(self, height, width, color_jitter_strength=1.0, color_jitter_impl="simclrv2",
                 use_blur=True, crop=True, flip=True, crop_impl="reference", seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.crop_impl = crop_impl
        self.height = height
        self.width = width
        self.color_jitter_strength = color_jitter_strength
        self.color_jitter_impl = color_jitter_impl
        self.use_blur = use_blur
        self.crop = crop
        self.flip = flip
        aspect = width / height
        self.crop_layer = RandomResizedCrop(height, width,
                                            aspect_ratio_range=(3 / 4 * aspect, 4 / 3 * aspect),
                                            impl=crop_impl)
        self.flip_layer = RandomFlip(0.5)
        self.jitter_layer = ColorJitter(color_jitter_strength, 0.8, impl=color_jitter_impl)
        self.grayscale_layer = RandomGrayscale(0.2)
        self.blur_layer = RandomGaussianBlur(0.5)

    def _transform_batch(self, images, training, seed):
        if not training or not _fused(images):
            return super()._transform_batch(images, training, seed)
        # The same draws as `_augment`, run through the fused loop: the flip is folded into the
        # crop's column taps, integer images are converted inside the loop.
        seed = self.draw_seed(seed)
        shape = tf.shape(images)
        crop_taps = jitter = grays = blurs = None
        flips = self.flip_layer.sample_flips(shape[0], _fold(seed, 1)) if self.flip else None
        if self.crop:
            boxes = self.crop_layer.sample_boxes(shape[0], shape[1], shape[2], _fold(seed, 0))
            crop_taps, flips = self.crop_layer.crop_taps(boxes, flips), None
        elif tuple(images.shape[1:3]) != (self.height, self.width):
            images = image_ops.resize(tf.image.convert_image_dtype(images, tf.float32),
                                      self.height, self.width)
        if self.color_jitter_strength > 0:
            if self.jitter_layer.probability > 0:
                factors = self.jitter_layer.sample_factors(shape[0], _fold(seed, 2))
                jitter = self.jitter_layer.fused_jitter(factors)
            grays = self.grayscale_layer.sample_grays(shape[0], _fold(seed, 3))
        if self.use_blur:
            blurs = self.blur_layer.fused_blurs(shape[0], self.height, _fold(seed, 4))
        views = fused_loop.fused_augment(images, crop_taps, flips, jitter, grays, blurs, clip=True,
                                        brightness=self.jitter_layer.brightness_op)
        return tf.ensure_shape(views, [images.shape[0], self.height, self.width, images.shape[3]])

    def _augment(self, images, seed):
        # The parts run on the batch without their own input conversion and clipping; the view is
        # clipped once at the end (jitter also clips after each of its ops), as in the reference.
        # Batches take the same steps in `_transform_batch`; this path serves single images.
        if self.crop:
            images = self.crop_layer._augment(images, _fold(seed, 0))
        else:
            images = image_ops.resize(images, self.height, self.width)
        if self.flip:
            images = self.flip_layer._augment(images, _fold(seed, 1))
        if self.color_jitter_strength > 0:
            images = self.jitter_layer._augment(images, _fold(seed, 2))
            images = self.grayscale_layer._augment(images, _fold(seed, 3))
        if self.use_blur:
            images = self.blur_layer._augment(images, _fold(seed, 4))
        return images

    def _inference(self, images):
        if self.crop:
            return self.crop_layer._inference(images)
        return image_ops.resize(images, self.height, self.width)

    def get_config(self):
        return {**super().get_config(), "height": self.height, "width": self.width,
                "color_jitter_strength": self.color_jitter_strength,
                "color_jitter_impl": self.color_jitter_impl, "use_blur": self.use_blur,
                "crop": self.crop, "flip": self.flip, "crop_impl": self.crop_impl}


@_register
class FineTuneAugment(PretrainAugment):
    """Fine-tuning input: random resized crop and flip, no color distortion or blur.

    Example:
      >>> augmenter = FineTuneAugment(height=32, width=32)
      >>> images = tf.random.stateless_uniform([2, 40, 40, 3], seed=[0, 1])
      >>> crops = augmenter(images, seed=[3, 4])
      >>> print(crops.shape, crops.dtype.name)
      (2, 32, 32, 3) float32
      >>> gray = tf.fill([2, 40, 40, 3], 0.5)  # colors are kept: a gray image stays gray
      >>> print(round(float(tf.reduce_max(tf.abs(augmenter(gray, seed=[3, 4]) - 0.5))), 4))
      0.0
    """

    def __init__(self, height, width, crop=True, flip=True, crop_impl="reference", seed=None, **kwargs):
        super().__init__(height, width, color_jitter_strength=0.0, use_blur=False, crop=crop,
                         flip=flip, crop_impl=crop_impl, seed=seed, **kwargs)

    def get_config(self):
        config = super().get_config()
        for key in ("color_jitter_strength", "color_jitter_impl", "use_blur"):
            del config[key]
        return config


def two_views(augment_layer, images, seed=None):
    """Two views `(view1, view2)` of `images`, augmented with two independent sub-seeds of `seed`.

    Without `seed`, each view draws a seed from the layer's own seed generator.

    Example:
      >>> augmenter = PretrainAugment(height=32, width=32, use_blur=False)
      >>> images = tf.random.stateless_uniform([4, 32, 32, 3], seed=[0, 1])
      >>> view1, view2 = two_views(augmenter, images, seed=[0, 7])
      >>> print(view1.shape, view2.shape)
      (4, 32, 32, 3) (4, 32, 32, 3)
      >>> bool(tf.reduce_any(view1 != view2))  # two different augmentations of each image
      True
      >>> again1, again2 = two_views(augmenter, images, seed=[0, 7])  # same seed, same pair
      >>> bool(tf.reduce_all(again1 == view1) and tf.reduce_all(again2 == view2))
      True
    """
    if seed is None:
        return augment_layer(images), augment_layer(images)
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 2)
    return augment_layer(images, seed=seeds[0]), augment_layer(images, seed=seeds[1])
