"""TensorBoard Projector export: the encoder's embedding of eval images, their labels and thumbnails.

`export_projector(encoder, dataset, log_dir, ...)` writes, for `tensorboard --logdir=MODEL_DIR` to show
under "Projector" (run `train`):

  log_dir/projector_config.pbtxt     the plugin's config (a `ProjectorConfig` in text format), which
                                     names the files below by paths relative to it
  log_dir/projector/embeddings.tsv   one row per image: its L2-normalized `final_avg_pool` features
  log_dir/projector/metadata.tsv     a header, then the label and class name of every image
  log_dir/projector/sprite.png       the images side by side in a square grid, in the same order

TensorBoard 2.21's projector plugin reads `projector_config.pbtxt` from each run's directory, takes a
`tensor_path` TSV file instead of a checkpoint variable, and refuses asset paths outside the config's folder
(checked in its `projector_plugin.py`), hence the layout. A sprite may be at most 8192 px wide, so
thumbnails shrink when there are many images.
"""
import math
import os

import numpy as np
import tensorflow as tf
from tensorboard.plugins import projector as tb_projector

CONFIG_FILE = "projector_config.pbtxt"
FOLDER = "projector"
EMBEDDINGS_FILE = "embeddings.tsv"
METADATA_FILE = "metadata.tsv"
SPRITE_FILE = "sprite.png"
MAX_SPRITE_SIDE = 8192
TENSOR_NAME = "final_avg_pool"


def collect(encoder, dataset, max_examples):
    """`(normalized features, labels, images)` of the first `max_examples` of `(images, labels)` batches."""
    @tf.function(reduce_retracing=True)
    def embed(images):
        return tf.math.l2_normalize(tf.cast(encoder(images, training=False), tf.float32), axis=-1)

    features, labels, images = [], [], []
    count = 0
    for batch_images, batch_labels in dataset:
        if count >= max_examples:
            break
        batch_images, batch_labels = batch_images[:max_examples - count], batch_labels[:max_examples - count]
        features.append(embed(batch_images).numpy())
        labels.append(batch_labels.numpy())
        images.append(batch_images.numpy())
        count += len(batch_labels)
    return np.concatenate(features), np.concatenate(labels), np.concatenate(images)


def sprite(images, max_side=MAX_SPRITE_SIDE):
    """`(grid, (h, w))`: `images` [N, H, W, 3] in [0, 1] as a uint8 [S*h, S*w, 3] grid, S = ceil(sqrt(N)).

    Thumbnails keep the images' size (h, w) = (H, W) unless the grid would pass `max_side` pixels.
    """
    side = math.ceil(math.sqrt(len(images)))
    height, width = images.shape[1:3]
    scale = min(1.0, max_side / (side * max(height, width)))
    thumb = (max(1, int(height * scale)), max(1, int(width * scale)))
    if thumb != (height, width):
        images = tf.image.resize(images, thumb, antialias=True).numpy()
    grid = np.ones((side * side, *thumb, 3), np.float32)  # white where the grid has no image
    grid[:len(images)] = np.clip(images, 0.0, 1.0)
    grid = grid.reshape(side, side, *thumb, 3).transpose(0, 2, 1, 3, 4).reshape(side * thumb[0],
                                                                              side * thumb[1], 3)
    return np.round(grid * 255).astype(np.uint8), thumb


def export_projector(encoder, dataset, log_dir, max_examples, class_names=()):
    """Writes the projector files for up to `max_examples` images of `dataset`; returns the config's path.

    Example:
      >>> import tempfile, keras
      >>> encoder = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(4)])
      >>> images = tf.random.stateless_uniform([5, 8, 8, 3], seed=[0, 1])
      >>> dataset = tf.data.Dataset.from_tensor_slices((images, tf.range(5) % 2)).batch(2)
      >>> log_dir = tempfile.mkdtemp()
      >>> path = export_projector(encoder, dataset, log_dir, max_examples=4, class_names=("even", "odd"))
      >>> sorted(os.listdir(os.path.join(log_dir, FOLDER)))
      ['embeddings.tsv', 'metadata.tsv', 'sprite.png']
      >>> open(os.path.join(log_dir, FOLDER, METADATA_FILE)).read().splitlines()
      ['label\\tclass', '0\\teven', '1\\todd', '0\\teven', '1\\todd']
    """
    features, labels, images = collect(encoder, dataset, max_examples)
    folder = os.path.join(log_dir, FOLDER)
    os.makedirs(folder, exist_ok=True)
    np.savetxt(os.path.join(folder, EMBEDDINGS_FILE), features, fmt="%.6g", delimiter="\t")
    with open(os.path.join(folder, METADATA_FILE), "w") as f:
        f.write("label\tclass\n")
        for label in labels:
            name = class_names[label] if 0 <= label < len(class_names) else ("unlabelled" if label < 0
                                                                            else str(label))
            f.write(f"{label}\t{name}\n")
    grid, thumb = sprite(images)
    tf.io.write_file(os.path.join(folder, SPRITE_FILE), tf.io.encode_png(grid))

    config = tb_projector.ProjectorConfig()
    embedding = config.embeddings.add()
    embedding.tensor_name = TENSOR_NAME
    embedding.tensor_path = f"{FOLDER}/{EMBEDDINGS_FILE}"
    embedding.tensor_shape.extend(features.shape)
    embedding.metadata_path = f"{FOLDER}/{METADATA_FILE}"
    embedding.sprite.image_path = f"{FOLDER}/{SPRITE_FILE}"
    embedding.sprite.single_image_dim.extend([thumb[1], thumb[0]])  # width, height
    tb_projector.visualize_embeddings(log_dir, config)
    return os.path.join(log_dir, CONFIG_FILE)
