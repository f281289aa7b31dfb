"""Checkpoints: atomic, pruned, found by step, and restoring them restores the optimizer too."""
import os

import keras
import numpy as np
import pytest

from simclr_tf import checkpoints


def tiny_model():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
    return model


def test_save_prunes_and_finds_latest(tmp_path):
    model = tiny_model()
    x, y = np.ones((4, 3), "float32"), np.zeros((4, 2), "float32")
    for step in range(1, 5):
        model.train_on_batch(x, y)
        checkpoints.save(model, str(tmp_path), step, keep_max=2)
    assert [s for s, _ in checkpoints.list_checkpoints(str(tmp_path))] == [3, 4]
    assert checkpoints.latest_checkpoint(str(tmp_path))[0] == 4
    assert not [p for p in os.listdir(tmp_path) if "partial" in p]


def test_partial_file_is_not_a_checkpoint(tmp_path):
    (tmp_path / "ckpt-00000009.partial.weights.h5").write_bytes(b"truncated")
    assert checkpoints.latest_checkpoint(str(tmp_path)) is None


def test_restore_brings_back_weights_and_optimizer_state(tmp_path):
    model = tiny_model()
    x, y = np.random.rand(4, 3).astype("float32"), np.random.rand(4, 2).astype("float32")
    for _ in range(3):
        model.train_on_batch(x, y)
    path = checkpoints.save(model, str(tmp_path), 3, keep_max=1)
    model.train_on_batch(x, y)
    expected = [w.numpy() for w in model.weights]

    restored = tiny_model()
    checkpoints.restore(restored, path)
    assert int(restored.optimizer.iterations.numpy()) == 3
    restored.train_on_batch(x, y)  # Same momentum slots, so the same next step.
    for e, a in zip(expected, restored.weights):
        np.testing.assert_allclose(e, a.numpy(), rtol=1e-6)


def test_missing_checkpoint_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="--checkpoint"):
        checkpoints.restore(tiny_model(), str(tmp_path / "nope.weights.h5"))
