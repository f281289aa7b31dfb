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


def test_partial_files_are_not_checkpoints_and_are_cleaned(tmp_path):
    model = tiny_model()
    checkpoints.save(model, str(tmp_path), 4, keep_max=3)
    leftovers = ["ckpt-00000006.partial.weights.h5", "ckpt-00000006.partial-123-0.weights.h5"]
    for name in leftovers:
        (tmp_path / name).write_bytes(b"truncated")
    assert [step for step, _ in checkpoints.list_checkpoints(str(tmp_path))] == [4]
    removed = checkpoints.remove_partial_files(str(tmp_path))
    assert sorted(os.path.basename(path) for path in removed) == sorted(leftovers)
    assert sorted(os.listdir(tmp_path)) == ["ckpt-00000004.weights.h5"]


def test_a_save_interrupted_mid_write_leaves_no_file(tmp_path, monkeypatch):
    model = tiny_model()
    real_save = model.save_weights

    def save_then_interrupt(path):
        real_save(path)
        raise KeyboardInterrupt

    monkeypatch.setattr(model, "save_weights", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        checkpoints.save(model, str(tmp_path), 2, keep_max=3)
    assert os.listdir(tmp_path) == []


def test_save_on_interrupt_saves_a_new_finite_step_on_the_chief_only(tmp_path):
    model = tiny_model()
    x, y = np.ones((4, 3), "float32"), np.zeros((4, 2), "float32")
    model.train_on_batch(x, y)
    model_dir = str(tmp_path)
    assert checkpoints.save_on_interrupt(model, model_dir, keep_max=3, chief=False) is None
    path = checkpoints.save_on_interrupt(model, model_dir, keep_max=3)
    assert path == checkpoints.checkpoint_path(model_dir, 1)
    assert checkpoints.save_on_interrupt(model, model_dir, keep_max=3) is None  # Already saved.
    model.train_on_batch(x, y)
    model.weights[0].assign(np.full(model.weights[0].shape, np.nan, "float32"))
    assert checkpoints.save_on_interrupt(model, model_dir, keep_max=3) is None  # Never a diverged state.
    assert [step for step, _ in checkpoints.list_checkpoints(model_dir)] == [1]


@pytest.mark.parametrize("chief, expected", [(None, [1, 2]), (True, [1, 2]), (False, [])])
def test_periodic_checkpoint_writes_on_the_chief_only(tmp_path, chief, expected):
    model = tiny_model()
    x, y = np.ones((4, 3), "float32"), np.zeros((4, 2), "float32")
    (tmp_path / "ckpt-00000001.partial.weights.h5").write_bytes(b"left by a killed run")
    callback = checkpoints.PeriodicCheckpoint(str(tmp_path), keep_max=5, chief=chief)
    model.fit(x, y, batch_size=4, epochs=2, callbacks=[callback], verbose=0)
    assert [step for step, _ in checkpoints.list_checkpoints(str(tmp_path))] == expected
    # The chief (the default strategy's process is one) removed the leftover; a non-chief touched nothing.
    assert any("partial" in name for name in os.listdir(tmp_path)) == (chief is False)


def test_estimated_checkpoint_bytes_bounds_the_real_size(tmp_path):
    model = keras.Sequential([keras.Input((256,)), keras.layers.Dense(256), keras.layers.Dense(10)])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")  # Two slots per weight: the worst case.
    before_build = checkpoints.estimated_checkpoint_bytes(model)
    model.train_on_batch(np.ones((2, 256), "float32"), np.zeros((2, 10), "float32"))
    path = checkpoints.save(model, str(tmp_path), 1, keep_max=1)
    size = os.path.getsize(path)
    estimate = checkpoints.estimated_checkpoint_bytes(model)
    assert size <= estimate < 1.2 * size
    assert size <= before_build < 1.2 * size
    assert checkpoints.needed_bytes(model, str(tmp_path), keep_max=3) == 3 * estimate  # 1 of 3 exists, +1.
