"""Tests for simclr_tf.data.augment: shapes, seeding, tf.data parity, per-image randomness."""
import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.data import augment, fused_loop, image_ops
from tests.layer_checks import assert_config_covers_init, assert_config_round_trip

RNG = np.random.default_rng(1)
BATCH = RNG.uniform(size=(6, 24, 36, 3)).astype("float32")  # non-square on purpose
SQUARE = RNG.uniform(size=(6, 32, 32, 3)).astype("float32")
SEED = tf.constant([12, 34], tf.int64)
OTHER_SEED = tf.constant([12, 35], tf.int64)


def random_layers():
    """One of each random layer, set so that every image is changed (where the layer allows)."""
    return {
            "crop": augment.RandomResizedCrop(20, 28),
            "crop_uniform_area": augment.RandomResizedCrop(20, 28, impl="uniform_area"),
            "flip": augment.RandomFlip(),
            "jitter": augment.ColorJitter(1.0, probability=1.0),
            "jitter_v1_fixed_order": augment.ColorJitter(0.5, impl="simclrv1", random_order=False),
            "grayscale": augment.RandomGrayscale(0.5),
            "blur": augment.RandomGaussianBlur(1.0, kernel_size=5),
            "pretrain": augment.PretrainAugment(20, 28, seed=3),
            "finetune": augment.FineTuneAugment(20, 28),
    }


LAYER_NAMES = sorted(random_layers())


def layer(name):
    return random_layers()[name]


def three_ways(aug, images, seed):
    """The layer's output eagerly, inside tf.function and inside tf.data.Dataset.map."""
    eager = aug(images, seed=seed).numpy()
    traced = tf.function(lambda x, s: aug(x, seed=s))(tf.constant(images), seed).numpy()
    dataset = tf.data.Dataset.from_tensors(images).map(lambda x: aug(x, seed=seed))
    return eager, traced, next(iter(dataset)).numpy()


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_shapes_dtype_and_range(name):
    aug = layer(name)
    expected = (20, 28) if name in ("crop", "crop_uniform_area", "pretrain", "finetune") else BATCH.shape[1:3]
    batch = aug(BATCH, seed=SEED)
    single = aug(BATCH[0], seed=SEED)
    assert batch.shape == (6, *expected, 3) and single.shape == (*expected, 3)
    for out in (batch, single):
        assert out.dtype == tf.float32
        assert 0.0 <= float(tf.reduce_min(out)) and float(tf.reduce_max(out)) <= 1.0


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_same_seed_same_output_other_seed_other_output(name):
    aug = layer(name)
    first = aug(BATCH, seed=SEED).numpy()
    np.testing.assert_array_equal(first, aug(BATCH, seed=SEED).numpy())
    assert not np.array_equal(first, aug(BATCH, seed=OTHER_SEED).numpy())


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_eager_tf_function_and_tf_data_agree(name):
    eager, traced, mapped = three_ways(layer(name), BATCH, SEED)
    np.testing.assert_allclose(traced, eager, atol=1e-6)
    np.testing.assert_allclose(mapped, eager, atol=1e-6)


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_each_image_of_a_batch_gets_its_own_draw(name):
    identical = np.repeat(BATCH[:1], 16, axis=0)
    out = layer(name)(identical, seed=SEED).numpy()
    assert len({view.tobytes() for view in out}) > 1


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_not_training_is_identity_or_resize(name):
    aug = layer(name)
    out = aug(BATCH, training=False).numpy()
    if name in ("crop", "crop_uniform_area", "pretrain", "finetune"):
        want = tf.image.resize(BATCH, (20, 28), method="bicubic")
        np.testing.assert_allclose(out, np.clip(want, 0, 1), atol=1e-6)
    else:
        np.testing.assert_array_equal(out, BATCH)


def test_unseeded_calls_use_the_layer_seed_generator_also_in_tf_data():
    first, second = augment.PretrainAugment(16, 16, seed=7), augment.PretrainAugment(16, 16, seed=7)
    draws = [first(SQUARE).numpy() for _ in range(2)]
    assert not np.array_equal(draws[0], draws[1])
    np.testing.assert_array_equal(draws[0], second(SQUARE).numpy())
    dataset = tf.data.Dataset.from_tensors(SQUARE).repeat(2).map(lambda x: first(x))
    mapped = list(dataset.as_numpy_iterator())
    assert mapped[0].shape == (6, 16, 16, 3) and not np.array_equal(mapped[0], mapped[1])


def test_single_images_of_unknown_size_in_tf_data():
    sizes = [(30, 45), (50, 20)]
    dataset = tf.data.Dataset.from_generator(
            lambda: (RNG.uniform(size=(*size, 3)).astype("float32") for size in sizes),
            output_signature=tf.TensorSpec([None, None, 3], tf.float32))
    pretrain, center = augment.PretrainAugment(24, 24), augment.CenterCropResize(24, 24)
    mapped = dataset.map(lambda image: (pretrain(image, seed=SEED), center(image)))
    for view, evaluated in mapped.as_numpy_iterator():
        assert view.shape == evaluated.shape == (24, 24, 3)


def test_integer_images_are_scaled_to_unit_range():
    as_uint8 = (SQUARE * 255).astype("uint8")
    out = augment.RandomFlip(0.0)(as_uint8, seed=SEED).numpy()
    np.testing.assert_allclose(out, as_uint8 / 255.0, atol=1e-6)


# ----------------------------------------------------------------------------- probabilities

@pytest.mark.parametrize("aug", [
        augment.RandomFlip(0.0), augment.RandomGrayscale(0.0), augment.ColorJitter(1.0, 0.0),
        augment.ColorJitter(0.0, 1.0), augment.RandomGaussianBlur(0.0),
])
def test_probability_zero_or_strength_zero_is_identity(aug):
    np.testing.assert_array_equal(aug(BATCH, seed=SEED).numpy(), BATCH)


def test_probability_one_always_applies():
    np.testing.assert_array_equal(augment.RandomFlip(1.0)(BATCH, seed=SEED), BATCH[:, :, ::-1])
    gray = augment.RandomGrayscale(1.0)(BATCH, seed=SEED).numpy()
    np.testing.assert_allclose(gray[..., 0], tf.image.rgb_to_grayscale(BATCH)[..., 0], atol=1e-6)
    assert np.all(gray[..., 0] == gray[..., 1]) and np.all(gray[..., 0] == gray[..., 2])
    for aug in (augment.ColorJitter(1.0, 1.0), augment.RandomGaussianBlur(1.0, sigma_range=(1.0, 2.0))):
        changed = np.abs(aug(SQUARE, seed=SEED).numpy() - SQUARE).max(axis=(1, 2, 3))
        assert np.all(changed > 1e-3)


def test_probability_is_per_image_and_about_right():
    coins = augment.RandomGrayscale(0.2)(np.repeat(SQUARE[:1], 500, axis=0), seed=SEED).numpy()
    fraction = np.mean(np.all(coins[..., 0] == coins[..., 1], axis=(1, 2)))
    assert 0.14 < fraction < 0.26


# ----------------------------------------------------------------------------- crop

def test_crop_uses_the_sampled_boxes():
    aug = augment.RandomResizedCrop(20, 28)
    boxes = aug.sample_boxes(6, 24, 36, SEED)
    want = fused_loop.crop_and_resize(tf.constant(BATCH), boxes, 20, 28)
    np.testing.assert_allclose(aug(BATCH, seed=SEED), np.clip(want, 0, 1), atol=1e-6)
    # A single image takes the slice-then-resize path: same result as the batch path.
    single = aug(BATCH[0], seed=SEED).numpy()
    box = aug.sample_boxes(1, 24, 36, SEED)
    want = fused_loop.crop_and_resize(BATCH[:1], box, 20, 28)[0]
    np.testing.assert_allclose(single, np.clip(want, 0, 1), atol=1e-5)


@pytest.mark.parametrize("impl, sampler", [("reference", image_ops.sample_distorted_boxes),
                                           ("uniform_area", image_ops.sample_crop_boxes)])
def test_crop_impl_picks_the_box_sampler(impl, sampler):
    layer_default = augment.PretrainAugment(20, 28).crop_layer
    assert layer_default.impl == "reference"  # the reference's distribution is the default
    aug = augment.PretrainAugment(20, 28, crop_impl=impl, use_blur=False)
    aspect = (3 / 4 * 28 / 20, 4 / 3 * 28 / 20)
    want = sampler(SEED, 6, 24, 36, (0.08, 1.0), aspect).numpy()
    np.testing.assert_array_equal(aug.crop_layer.sample_boxes(6, 24, 36, SEED), want)
    # The pretraining view crops those boxes (colour off: crop and flip only), in the fused loop.
    plain = augment.PretrainAugment(20, 28, color_jitter_strength=0.0, use_blur=False, flip=False,
                                    crop_impl=impl)
    boxes = plain.crop_layer.sample_boxes(6, 24, 36, augment._fold(SEED, 0))
    np.testing.assert_allclose(plain(BATCH, seed=SEED),
                               np.clip(fused_loop.crop_and_resize(BATCH, boxes, 20, 28), 0, 1), atol=1e-6)


def test_crop_of_a_coordinate_image_shows_area_and_aspect_in_range():
    rows, cols = np.meshgrid(np.arange(40.0), np.arange(60.0), indexing="ij")
    coords = np.stack([rows / 39, cols / 59, np.zeros_like(rows)], -1).astype("float32")
    aug = augment.RandomResizedCrop(16, 16, area_range=(0.2, 0.6), aspect_ratio_range=(0.5, 2.0),
                                    interpolation="bilinear")
    crops = aug(np.repeat(coords[None], 64, axis=0), seed=SEED).numpy()
    # Bilinear keeps a linear ramp linear: the corner samples give the crop's extent.
    height = (crops[:, -1, 0, 0] - crops[:, 0, 0, 0]) * 39 * 16 / 15
    width = (crops[:, 0, -1, 1] - crops[:, 0, 0, 1]) * 59 * 16 / 15
    area, aspect = height * width / (40 * 60), width / height
    assert np.all((area > 0.2 - 0.02) & (area < 0.6 + 0.02))
    assert np.all((aspect > 0.5 - 0.05) & (aspect < 2.0 + 0.05))


# ----------------------------------------------------------------------------- color jitter

@pytest.mark.parametrize("impl, low, high", [("simclrv2", 0.6, 1.4), ("simclrv1", -0.4, 0.4)])
def test_brightness_draws_and_behaviour(impl, low, high):
    jitter = augment.ColorJitter(0.5, impl=impl)
    factors = jitter.sample_factors(2000, SEED)
    brightness = factors["brightness"].numpy()
    assert brightness.min() >= low and brightness.max() <= high
    assert brightness.min() < low + 0.02 and brightness.max() > high - 0.02
    # With the other ops neutral, a flat 0.4 image shows the brightness op alone.
    factors = {**factors, "contrast": tf.ones([2000]), "saturation": tf.ones([2000]), "hue": tf.zeros([2000])}
    factors["apply"] = tf.ones([2000], tf.bool)
    out = jitter.apply_factors(tf.fill([2000, 2, 2, 3], 0.4), factors).numpy()[:, 0, 0, 0]
    want = 0.4 * brightness if impl == "simclrv2" else 0.4 + brightness
    np.testing.assert_allclose(out, np.clip(want, 0, 1), atol=1e-5)


def test_jitter_factor_ranges_floor_at_zero():
    factors = augment.ColorJitter(1.5).sample_factors(2000, SEED)
    for name in ("brightness", "contrast", "saturation"):
        assert factors[name].numpy().min() >= 0.0 and factors[name].numpy().max() <= 2.2
    assert np.abs(factors["hue"].numpy()).max() <= 0.3


def test_jitter_runs_the_ops_in_each_images_order():
    jitter = augment.ColorJitter(1.0, probability=1.0)
    factors = jitter.sample_factors(6, SEED)
    orders = factors["order"].numpy()
    assert len({tuple(order) for order in orders}) > 1
    assert all(sorted(order) == [0, 1, 2, 3] for order in orders)
    got = jitter.apply_factors(tf.constant(BATCH), factors).numpy()
    ops = (image_ops.scale_brightness, image_ops.adjust_contrast, image_ops.adjust_saturation,
           image_ops.adjust_hue)
    for index, order in enumerate(orders):
        planes = image_ops.to_planes(BATCH[index:index + 1])
        for op_index in order:
            value = factors[augment.ColorJitter.OPS[op_index]][index:index + 1]
            planes = tf.clip_by_value(ops[op_index](planes, value), 0.0, 1.0)
        # The batch runs the fused XLA loop, the reference here the separate ops: each op agrees to
        # 1 ulp, but hue divides by the chroma, so a 1-ulp change of its input moves its output by
        # up to about 1e-6 (the same tolerance as the ops against tf.image).
        np.testing.assert_allclose(got[index], image_ops.from_planes(planes)[0], atol=1e-5)


def test_jitter_fixed_order_follows_the_reference_order():
    jitter = augment.ColorJitter(1.0, probability=1.0, random_order=False)
    factors = jitter.sample_factors(6, SEED)
    image = BATCH[2]
    for name, function in [("brightness", lambda x, f: x * f), ("contrast", tf.image.adjust_contrast),
                           ("saturation", tf.image.adjust_saturation), ("hue", tf.image.adjust_hue)]:
        image = tf.clip_by_value(function(image, factors[name][2]), 0.0, 1.0)
    np.testing.assert_allclose(jitter.apply_factors(tf.constant(BATCH), factors)[2], image, atol=1e-5)


@pytest.mark.parametrize("random_order", [True, False])
def test_jitter_probability_selects_images(random_order):
    jitter = augment.ColorJitter(1.0, probability=0.5, random_order=random_order)
    apply = jitter.sample_factors(6, SEED)["apply"].numpy()
    assert 0 < apply.sum() < 6
    out = jitter(BATCH, seed=SEED).numpy()
    unchanged = np.all(out == BATCH, axis=(1, 2, 3))
    np.testing.assert_array_equal(unchanged, ~apply)


# ----------------------------------------------------------------------------- blur

def test_blur_of_a_delta_is_a_gaussian_with_the_drawn_sigma():
    blur = augment.RandomGaussianBlur(1.0)  # kernel 32 // 10 = 3: radius 1
    assert blur.radius(32) == 1 and blur.radius(224) == 11
    delta = np.zeros((8, 32, 32, 3), np.float32)
    delta[:, 16, 16] = 1.0
    out = blur(delta, seed=SEED).numpy()
    apply, sigmas = blur.sample_sigmas(8, SEED)
    assert np.all(apply.numpy())
    sigmas = sigmas.numpy()
    assert np.all((sigmas >= 0.1) & (sigmas <= 2.0)) and np.ptp(sigmas) > 0.3
    for image, sigma in zip(out, sigmas):
        kernel = np.exp(-np.arange(-1, 2) ** 2 / (2 * float(sigma) ** 2))
        kernel /= kernel.sum()
        np.testing.assert_allclose(image[15:18, 15:18, 1], np.outer(kernel, kernel), atol=1e-6)
        assert abs(image[..., 1].sum() - 1.0) < 1e-5


def test_blur_kernel_size_argument():
    blur = augment.RandomGaussianBlur(1.0, kernel_size=7)
    delta = np.zeros((1, 32, 32, 3), np.float32)
    delta[:, 16, 16] = 1.0
    out = blur(delta, seed=SEED).numpy()[0, ..., 0]
    assert out[16, 13] > 0 and np.all(out[16, :13] == 0) and np.all(out[16, 20:] == 0)


# ----------------------------------------------------------------------------- composites

def test_pretrain_parts_can_be_switched_off():
    plain = augment.PretrainAugment(32, 32, color_jitter_strength=0.0, use_blur=False, crop=False, flip=False)
    np.testing.assert_array_equal(plain(SQUARE, seed=SEED).numpy(), SQUARE)
    finetune = augment.FineTuneAugment(32, 32, crop=False)
    out = finetune(SQUARE, seed=SEED).numpy()
    assert all(np.array_equal(view, image) or np.array_equal(view, image[:, ::-1])
               for view, image in zip(out, SQUARE))


def test_pretrain_crop_follows_the_target_aspect_ratio():
    aug = augment.PretrainAugment(16, 32)
    assert aug.crop_layer.aspect_ratio_range == pytest.approx((1.5, 8 / 3))


def test_two_views_use_two_sub_seeds():
    aug = augment.PretrainAugment(16, 16)
    view1, view2 = augment.two_views(aug, SQUARE, SEED)
    assert not np.array_equal(view1.numpy(), view2.numpy())
    again1, again2 = augment.two_views(aug, SQUARE, SEED)
    np.testing.assert_array_equal(view1, again1)
    np.testing.assert_array_equal(view2, again2)
    dataset = tf.data.Dataset.from_tensors(SQUARE).map(lambda x: augment.two_views(aug, x, SEED))
    mapped1, mapped2 = next(iter(dataset))
    np.testing.assert_allclose(mapped1, view1, atol=1e-6)
    np.testing.assert_allclose(mapped2, view2, atol=1e-6)


def pretrain_view_with_separate_ops(aug, images, seed):
    """PretrainAugment's view of each image from the layer's own draws, one op and one image at a time."""
    seed = tf.cast(seed, tf.int64)
    count, height, width = images.shape[:3]
    fold = augment._fold
    boxes = aug.crop_layer.sample_boxes(count, height, width, fold(seed, 0)).numpy()
    flips = aug.flip_layer.sample_flips(count, fold(seed, 1)).numpy()
    factors = aug.jitter_layer.sample_factors(count, fold(seed, 2))
    grays = aug.grayscale_layer.sample_grays(count, fold(seed, 3)).numpy()
    blurs, sigmas = aug.blur_layer.sample_sigmas(count, fold(seed, 4))
    views = []
    for index, image in enumerate(images):
        view = tf.image.resize(tf.image.crop_to_bounding_box(image, *boxes[index]), (aug.height, aug.width),
                               method="bicubic")
        view = view[:, ::-1] if flips[index] else view
        planes = image_ops.to_planes(view[None])
        if factors["apply"][index]:
            for op in factors["order"][index].numpy():
                name = augment.ColorJitter.OPS[op]
                function = (image_ops.scale_brightness, image_ops.adjust_contrast,
                            image_ops.adjust_saturation, image_ops.adjust_hue)[op]
                planes = tf.clip_by_value(function(planes, factors[name][index:index + 1]), 0.0, 1.0)
        view = image_ops.from_planes(planes)
        view = image_ops.grayscale(view) if grays[index] else view
        if blurs[index]:
            view = image_ops.gaussian_blur(view, sigmas[index:index + 1], aug.blur_layer.radius(aug.height))
        views.append(tf.clip_by_value(view[0], 0.0, 1.0).numpy())
    return np.stack(views)


@pytest.mark.parametrize("seed", [[12, 34], [5, 6], [7, 8]])
def test_pretrain_batch_equals_its_draws_applied_op_by_op(seed):
    # A batch runs the fused XLA loop; this recomputes every view with the separate ops from the layer's
    # draws (crop box, flip, jitter factors and order, gray, blur sigma), so both paths share semantics.
    aug = augment.PretrainAugment(24, 24, use_blur=True)
    got = aug(SQUARE, seed=tf.constant(seed)).numpy()
    np.testing.assert_allclose(got, pretrain_view_with_separate_ops(aug, SQUARE, seed), atol=1e-5)


def test_pretrain_batch_of_one_takes_the_separate_ops_and_agrees_with_a_batch():
    # Stateless draws for a batch of B begin with those for a batch of 1, so image 0 gets the same view
    # from the separate ops (a batch of one) and from the fused loop (a batch), for any seed.
    aug = augment.PretrainAugment(24, 24, use_blur=True)
    for seed in range(8):
        batch = aug(SQUARE, seed=tf.constant([seed, 1])).numpy()
        np.testing.assert_allclose(aug(SQUARE[:1], seed=tf.constant([seed, 1]))[0], batch[0], atol=1e-5)


def test_pretrain_integer_images_give_the_same_views_as_their_float_conversion():
    as_uint8 = (SQUARE * 255).astype("uint8")
    aug = augment.PretrainAugment(24, 24, use_blur=True)
    np.testing.assert_array_equal(aug(as_uint8, seed=SEED),
                                  aug(tf.image.convert_image_dtype(as_uint8, tf.float32), seed=SEED))


@pytest.mark.parametrize("crop", [True, False])
def test_center_crop_resize_matches_the_reference_transform(crop):
    image = BATCH[0]  # 24 x 36
    out = augment.CenterCropResize(16, 16, crop=crop)(image).numpy()
    if crop:  # the image is wider than square: keep rint(0.875 * 24) = 21 rows, centered
        image = tf.image.crop_to_bounding_box(image, 2, 8, 21, 21)
    want = tf.clip_by_value(tf.image.resize(image, (16, 16), method="bicubic"), 0, 1)
    np.testing.assert_allclose(out, want, atol=1e-6)
    batch = augment.CenterCropResize(16, 16, crop=crop)(BATCH)
    np.testing.assert_allclose(batch[0], out, atol=1e-6)


# ----------------------------------------------------------------------------- config

ALL_LAYERS = [
        augment.RandomResizedCrop(20, 28, area_range=(0.2, 0.9), interpolation="bilinear", impl="uniform_area",
                                  seed=1),
        augment.RandomFlip(0.3, seed=2),
        augment.ColorJitter(0.5, 0.7, impl="simclrv1", random_order=False, seed=3),
        augment.RandomGrayscale(0.4, seed=4),
        augment.RandomGaussianBlur(0.6, sigma_range=(0.2, 1.0), kernel_size=9, seed=5),
        augment.PretrainAugment(20, 28, 0.5, "simclrv1", use_blur=False, crop=False, flip=False,
                                crop_impl="uniform_area", seed=6),
        augment.FineTuneAugment(20, 28, crop=False, seed=7),
        augment.CenterCropResize(20, 28, crop_proportion=0.9, crop=False),
]


@pytest.mark.parametrize("aug", ALL_LAYERS, ids=lambda aug: type(aug).__name__)
def test_config_covers_init_and_round_trips(aug):
    assert_config_covers_init(aug)
    rebuilt = assert_config_round_trip(aug)
    if hasattr(aug, "seed"):
        np.testing.assert_array_equal(rebuilt(BATCH, seed=SEED), aug(BATCH, seed=SEED))


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="interpolation"):
        augment.RandomResizedCrop(8, 8, interpolation="area")
    with pytest.raises(ValueError, match="uniform_area"):
        augment.RandomResizedCrop(8, 8, impl="torchvision")
    with pytest.raises(ValueError, match="impl"):
        augment.ColorJitter(impl="simclrv3")
