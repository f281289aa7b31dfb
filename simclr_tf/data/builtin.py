"""`builtin_shapes`: a synthetic 10-class image dataset generated in memory, no download.

Each 32x32 RGB image shows one object whose SHAPE is the class (disk, ring, square, ...). Everything a
SimCLR augmentation changes varies at random and independently of the class: object and background colours,
brightness, position, size, rotation, background gradient and texture, pixel noise and a few small
distractor dots. Every shape covers the same area, so the mean colour of an image says little about its
class. A linear probe on raw pixels or on colour statistics does poorly; features that encode shape, which
contrastive pretraining with colour jitter learns, do well.

Generation is vectorized numpy with a fixed seed per split: the same images on every machine and run.
"""
import numpy as np
import tensorflow as tf

from simclr_tf.data.sources import ImageSource, SourceInfo

NAME = "builtin_shapes"
IMAGE_SIZE = 32
DEFAULT_NUM_EXAMPLES = {"train": 10000, "test": 2000}
# Seeds that define each split; a different seed per split keeps train and test images apart.
SPLIT_SEEDS = {"train": 0, "test": 1}
_CHUNK = 2048  # images rendered at once; bounds peak memory to a few tens of MB.
_SHAPE_AREA = 2.4  # every shape is rescaled to this area in object units before sizing.


# Signed distance functions in object units: negative inside, about one unit across. x, y: [n, H, W].
def _box(x, y, half_w, half_h):
    dx, dy = np.abs(x) - half_w, np.abs(y) - half_h
    outside = np.hypot(np.maximum(dx, 0.0), np.maximum(dy, 0.0))
    return outside + np.minimum(np.maximum(dx, dy), 0.0)


def _regular_polygon(x, y, sides, radius):
    """Distance to a regular polygon with circumradius `radius` (exact inside, close outside)."""
    sector = 2 * np.pi / sides
    angle = np.mod(np.arctan2(y, x) + sector / 2, sector) - sector / 2
    return np.hypot(x, y) * np.cos(angle) - radius * np.cos(np.pi / sides)


def _star(x, y, points=5, outer=1.0, inner=0.45):
    """Distance to the edge line of a star, folded into one half-spike (good near the edges)."""
    sector = 2 * np.pi / points
    angle = np.abs(np.mod(np.arctan2(y, x) + np.pi / 2 + sector / 2, sector) - sector / 2)
    r = np.hypot(x, y)
    qx, qy = r * np.cos(angle), r * np.sin(angle)
    ax, ay = outer, 0.0
    bx, by = inner * np.cos(sector / 2), inner * np.sin(sector / 2)
    nx, ny = by - ay, ax - bx  # outward normal of the edge from the spike tip a to the notch b
    norm = np.hypot(nx, ny)
    return ((qx - ax) * nx + (qy - ay) * ny) / norm


def _disk(x, y):
    return np.hypot(x, y) - 1.0


def _ring(x, y):
    return np.abs(np.hypot(x, y) - 0.75) - 0.25


def _square(x, y):
    return _box(x, y, 0.8, 0.8)


def _triangle(x, y):
    return _regular_polygon(x, y + 0.0, 3, 1.0)


def _plus(x, y):
    return np.minimum(_box(x, y, 1.0, 0.3), _box(x, y, 0.3, 1.0))


def _crescent(x, y):
    return np.maximum(np.hypot(x, y) - 1.0, -(np.hypot(x - 0.55, y) - 0.8))


def _half_disk(x, y):
    y = y + 0.4  # centre the half disk's mass near the origin
    return np.maximum(np.hypot(x, y) - 1.0, -y)


def _bar(x, y):
    return _box(x, y, 1.0, 0.28)


def _two_dots(x, y):
    return np.minimum(np.hypot(x - 0.6, y) - 0.45, np.hypot(x + 0.6, y) - 0.45)


_SHAPES = {
    "disk": _disk, "ring": _ring, "square": _square, "triangle": _triangle, "plus": _plus,
    "star": _star, "crescent": _crescent, "half_disk": _half_disk, "bar": _bar, "two_dots": _two_dots,
}
class_names = tuple(_SHAPES)


def _unit_areas():
    """Area of each shape in object units, measured on a fine grid."""
    grid = np.linspace(-2, 2, 401)
    x, y = np.meshgrid(grid, grid)
    cell = (grid[1] - grid[0]) ** 2
    return np.array([np.sum(sdf(x[None], y[None]) < 0) * cell for sdf in _SHAPES.values()])


_SHAPE_SCALES = np.sqrt(_SHAPE_AREA / _unit_areas())


def _hsv_to_rgb(h, s, v):
    """Vectorized HSV -> RGB for arrays of equal shape with values in [0, 1]; returns [..., 3]."""
    k = np.mod(np.stack([5.0, 3.0, 1.0], -1) + h[..., None] * 6.0, 6.0)
    return v[..., None] - v[..., None] * s[..., None] * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def _random_colours(rng, n):
    """Object and background colours with random hues and a guaranteed brightness contrast."""
    bg_value = rng.uniform(0.1, 0.95, n)
    contrast = rng.uniform(0.3, 0.6, n)
    # Brighter object when there is room above the background, darker otherwise; else a coin flip.
    brighter = np.where(bg_value + contrast > 1.0, False,
                        np.where(bg_value - contrast < 0.0, True, rng.random(n) < 0.5))
    obj_value = np.clip(np.where(brighter, bg_value + contrast, bg_value - contrast), 0.0, 1.0)
    bg = _hsv_to_rgb(rng.random(n), rng.uniform(0.0, 0.9, n), bg_value)
    bg_far = _hsv_to_rgb(rng.random(n), rng.uniform(0.0, 0.9, n), np.clip(bg_value + rng.normal(0, 0.1, n), 0, 1))
    obj = _hsv_to_rgb(rng.random(n), rng.uniform(0.0, 1.0, n), obj_value)
    return obj, bg, bg_far


def _background(rng, n, x, y):
    """Two-colour linear gradient in a random direction, low-frequency texture and pixel noise."""
    _, bg, bg_far = _random_colours(rng, n)
    direction = rng.uniform(0, 2 * np.pi, n)[:, None, None]
    t = (np.cos(direction) * x + np.sin(direction) * y) / IMAGE_SIZE + 0.5  # 0..1 across the image
    image = bg[:, None, None] + (bg_far - bg)[:, None, None] * t[..., None]
    # Texture: a sum of two random plane waves with random strength.
    for _ in range(2):
        freq = rng.uniform(0.1, 0.6, (n, 1, 1))
        theta = rng.uniform(0, 2 * np.pi, (n, 1, 1))
        phase = rng.uniform(0, 2 * np.pi, (n, 1, 1))
        wave = np.sin(freq * (np.cos(theta) * x + np.sin(theta) * y) + phase)
        image += (rng.uniform(0.0, 0.08, (n, 1, 1)) * wave)[..., None]
    image += rng.normal(0.0, 1.0, image.shape) * rng.uniform(0.0, 0.05, (n, 1, 1, 1))
    return image


def _coverage(distance_px):
    """Anti-aliased coverage of a pixel whose centre lies `distance_px` from the edge."""
    return np.clip(0.5 - distance_px, 0.0, 1.0)[..., None]


def _render(rng, labels):
    n = len(labels)
    grid = np.arange(IMAGE_SIZE, dtype=np.float64) + 0.5
    y, x = np.meshgrid(grid, grid, indexing="ij")
    x, y = x[None], y[None]
    image = _background(rng, n, x, y)
    obj, bg, _ = _random_colours(rng, n)
    del bg
    # Object pose: radius 6-11 px, centre keeps most of the object in view, any rotation.
    radius = rng.uniform(6.0, 11.0, n)
    margin = IMAGE_SIZE / 2 - 0.6 * radius
    cx = IMAGE_SIZE / 2 + rng.uniform(-1, 1, n) * margin
    cy = IMAGE_SIZE / 2 + rng.uniform(-1, 1, n) * margin
    angle = rng.uniform(0, 2 * np.pi, n)
    dx, dy = x - cx[:, None, None], y - cy[:, None, None]
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    u = (cos * dx + sin * dy) / radius[:, None, None]
    v = (-sin * dx + cos * dy) / radius[:, None, None]
    distance = np.empty((n, IMAGE_SIZE, IMAGE_SIZE))
    for index, sdf in enumerate(_SHAPES.values()):
        rows = labels == index
        scale = _SHAPE_SCALES[index]
        distance[rows] = sdf(u[rows] / scale, v[rows] / scale) * scale
    # A soft shading across the object keeps it from being one flat colour.
    shade = 1.0 + rng.uniform(-0.15, 0.15, (n, 1, 1)) * u.clip(-1.5, 1.5)
    obj_pixels = obj[:, None, None] * shade[..., None]
    alpha = _coverage(distance * radius[:, None, None])
    image = image * (1 - alpha) + obj_pixels * alpha
    # Distractors: up to three small dots in random colours.
    for _ in range(3):
        present = (rng.random(n) < 0.5)[:, None, None]
        px, py = rng.uniform(0, IMAGE_SIZE, (2, n, 1, 1))
        dot = np.hypot(x - px, y - py) - rng.uniform(0.8, 1.8, (n, 1, 1))
        colour = _hsv_to_rgb(rng.random(n), rng.random(n), rng.random(n))[:, None, None]
        alpha = _coverage(dot) * present[..., None]
        image = image * (1 - alpha) + colour * alpha
    return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)


def generate_builtin_shapes(num_examples: int, seed: int):
    """(images uint8 [N, 32, 32, 3], labels int64 [N]): a class-balanced sample, the same for a seed."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(num_examples) % len(class_names)).astype(np.int64)
    images = np.empty((num_examples, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    for start in range(0, num_examples, _CHUNK):
        chunk_rng = np.random.default_rng([seed, start])
        images[start:start + _CHUNK] = _render(chunk_rng, labels[start:start + _CHUNK])
    return images, labels


class BuiltinShapesSource(ImageSource):
    """The `builtin_shapes` dataset: splits "train" and "test", generated on first use and kept in memory."""

    def __init__(self, num_examples: dict | None = None):
        num_examples = dict(DEFAULT_NUM_EXAMPLES if num_examples is None else num_examples)
        unknown = set(num_examples) - set(SPLIT_SEEDS)
        if unknown:
            raise ValueError(f"builtin_shapes has splits {sorted(SPLIT_SEEDS)}, not {sorted(unknown)}.")
        self.info = SourceInfo(name=NAME, num_classes=len(class_names), num_examples=num_examples,
                               image_shape=(IMAGE_SIZE, IMAGE_SIZE, 3))
        self.class_names = class_names
        self._arrays = {}

    def arrays(self, split: str):
        """The (images, labels) numpy arrays of a split."""
        self.check_split(split)
        if split not in self._arrays:
            self._arrays[split] = generate_builtin_shapes(self.info.num_examples[split], SPLIT_SEEDS[split])
        return self._arrays[split]

    def dataset(self, split: str, shuffle_files: bool = False, seed: int | None = None) -> tf.data.Dataset:
        images, labels = self.arrays(split)
        ds = tf.data.Dataset.from_tensor_slices(
            {"image": images, "label": labels, "id": np.arange(len(labels), dtype=np.int64)})
        if shuffle_files:
            ds = ds.shuffle(len(labels), seed=seed)
        return ds
