"""The TensorBoard Projector export: files the projector plugin of TensorBoard 2.21 reads, with the right content."""
import os

import keras
import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorboard.plugins.projector import projector_config_pb2, projector_plugin

from simclr_tf import projector


def test_export_writes_what_the_projector_plugin_reads(tmp_path):
    keras.utils.set_random_seed(0)
    encoder = keras.Sequential([keras.Input((6, 6, 3)), keras.layers.Flatten(), keras.layers.Dense(5)])
    images = tf.random.stateless_uniform([11, 6, 6, 3], seed=[0, 1])
    labels = tf.constant([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, -1])
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(4)
    config_path = projector.export_projector(encoder, dataset, str(tmp_path), max_examples=10,
                                             class_names=("a", "b", "c"))
    assert config_path == os.path.join(tmp_path, "projector_config.pbtxt")

    config = text_format.Parse(open(config_path).read(), projector_config_pb2.ProjectorConfig())
    (embedding,) = config.embeddings
    assert list(embedding.tensor_shape) == [10, 5]
    # The plugin resolves every asset path relative to the config and refuses paths outside its folder.
    paths = {name: projector_plugin._rel_to_abs_asset_path(path, config_path) for name, path in
             (("tensor", embedding.tensor_path), ("metadata", embedding.metadata_path),
              ("sprite", embedding.sprite.image_path))}
    features = projector_plugin._read_tensor_tsv_file(paths["tensor"])
    expected = encoder(images[:10]).numpy()
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-6)

    rows = open(paths["metadata"]).read().splitlines()
    assert rows[0] == "label\tclass" and len(rows) == 11  # header + one row per embedding
    assert rows[1:4] == ["0\ta", "1\tb", "2\tc"]

    sprite = tf.io.decode_png(tf.io.read_file(paths["sprite"])).numpy()
    assert list(embedding.sprite.single_image_dim) == [6, 6]
    assert sprite.shape == (4 * 6, 4 * 6, 3)  # ceil(sqrt(10)) = 4 thumbnails a side
    # Row-major order: image 5 is in row 1, column 1; the cells after the 10th are white.
    np.testing.assert_allclose(sprite[6:12, 6:12] / 255, images[5].numpy(), atol=0.5 / 255 + 1e-6)
    assert (sprite[12:, 12:] == 255).all() and (sprite[18:, 12:] == 255).all()


def test_many_images_shrink_the_thumbnails_to_fit_the_sprite_limit():
    images = np.full((10, 6, 6, 3), 0.5, np.float32)
    grid, thumb = projector.sprite(images, max_side=20)  # 4 thumbnails a side: 24 px would be too wide
    assert thumb == (5, 5) and grid.shape == (20, 20, 3)
    assert np.abs(grid[:5, :5].astype(int) - 128).max() <= 1 and (grid[15:, 10:] == 255).all()
