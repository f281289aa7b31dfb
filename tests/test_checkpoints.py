"""Checkpoints: atomic, pruned, found by step, and restoring them restores the optimizer too."""
import os

import keras
import numpy as np
import pytest

from simclr_tf.persistence import checkpoints


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


def truncate(path, size=100):
    with open(path, "r+b") as f:
        f.truncate(size)


def test_a_damaged_newest_checkpoint_is_named_skipped_and_kept(tmp_path, caplog):
    model_dir = str(tmp_path)
    model = tiny_model()
    x, y = np.ones((4, 3), "float32"), np.zeros((4, 2), "float32")
    for step in (1, 2, 3):
        model.train_on_batch(x, y)
        checkpoints.save(model, model_dir, step, keep_max=3)
    newest = checkpoints.checkpoint_path(model_dir, 3)
    truncate(newest)  # as an interrupted copy leaves it
    with pytest.raises(checkpoints.DamagedCheckpointError, match=f"The checkpoint {newest} is damaged"):
        checkpoints.restore(tiny_model(), newest)

    # Read-only (eval, export): falls back to step 2 and leaves the damaged file where it is.
    restored = tiny_model()
    with caplog.at_level("WARNING"):
        latest = checkpoints.restore_latest(restored, model_dir)
    assert latest == (2, checkpoints.checkpoint_path(model_dir, 2))
    assert int(restored.optimizer.iterations.numpy()) == 2
    assert f"The checkpoint {newest} is damaged" in caplog.text and "kept as" in caplog.text
    assert os.path.getsize(newest) == 100

    # The training run sets it aside under a name no save overwrites and no listing picks up.
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert checkpoints.restore_latest(tiny_model(), model_dir, set_aside=True)[0] == 2
    kept = os.path.join(model_dir, "ckpt-00000003.damaged.weights.h5")
    assert f"kept as {kept}" in caplog.text and os.path.getsize(kept) == 100
    assert [s for s, _ in checkpoints.list_checkpoints(model_dir)] == [1, 2]
    checkpoints.save(model, model_dir, 3, keep_max=1)  # the step trained again; pruning keeps the damaged
    assert sorted(os.listdir(model_dir)) == ["ckpt-00000003.damaged.weights.h5", "ckpt-00000003.weights.h5"]

    for _, path in checkpoints.list_checkpoints(model_dir):
        truncate(path)
    with pytest.raises(checkpoints.DamagedCheckpointError, match="No checkpoint in .* can be read"):
        checkpoints.restore_latest(tiny_model(), model_dir)


def test_a_checkpoint_of_another_architecture_is_named(tmp_path):
    path = checkpoints.save(tiny_model(), str(tmp_path), 1, keep_max=1)
    other = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2), keras.layers.Dense(2)])
    other.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
    with pytest.raises(checkpoints.ConfigError, match=f"The checkpoint {path} does not fit this run's model"):
        checkpoints.restore(other, path)


def test_no_space_for_a_checkpoint_is_one_error_and_the_previous_one_stays(tmp_path, monkeypatch):
    import errno
    import shutil

    model_dir = str(tmp_path)
    model = tiny_model()
    previous = checkpoints.save(model, model_dir, 1, keep_max=1)
    with open(previous, "rb") as f:
        content = f.read()
    real_save = model.save_weights

    def save_until_the_disk_is_full(path):  # what h5py raises when a write fails for lack of space
        real_save(path)
        raise OSError(errno.ENOSPC, "Can't synchronously write data (file write failed: errno = 28, "
                                    "error message = 'No space left on device')")

    monkeypatch.setattr(model, "save_weights", save_until_the_disk_is_full)
    needed = checkpoints.estimated_checkpoint_bytes(model) / 2**20
    with pytest.raises(checkpoints.DiskFullError,
                       match=f"No space left in {model_dir} for the checkpoint of step 2: it needs about "
                             f"{needed:.1f} MiB"):
        checkpoints.save(model, model_dir, 2, keep_max=1)
    assert os.listdir(model_dir) == [os.path.basename(previous)]  # no partial file, nothing pruned
    with open(previous, "rb") as f:
        assert f.read() == content

    # Too little free space is found before writing anything.
    usage = shutil.disk_usage(model_dir)
    monkeypatch.setattr(checkpoints.shutil, "disk_usage",
                        lambda path: usage._replace(free=checkpoints.estimated_checkpoint_bytes(model) - 1))
    monkeypatch.setattr(model, "save_weights", lambda path: pytest.fail("wrote to a full disk"))
    with pytest.raises(checkpoints.DiskFullError, match="for the checkpoint of step 3"):
        checkpoints.save(model, model_dir, 3, keep_max=1)
    assert os.listdir(model_dir) == [os.path.basename(previous)]


def test_an_uncompiled_model_restores_the_weights(tmp_path):  # how fine-tuning and export read a run
    model = tiny_model()
    model.train_on_batch(np.ones((4, 3), "float32"), np.zeros((4, 2), "float32"))
    checkpoints.save(model, str(tmp_path), 1, keep_max=1)
    uncompiled = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    assert checkpoints.restore_latest(uncompiled, str(tmp_path))[0] == 1
    for expected, restored in zip(model.weights, uncompiled.weights):
        np.testing.assert_array_equal(expected.numpy(), restored.numpy())
