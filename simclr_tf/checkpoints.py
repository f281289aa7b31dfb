"""Step-numbered checkpoints in `model_dir`: atomic writes, pruning, finding the latest, restoring.

A checkpoint is `ckpt-<step>.weights.h5`, written by `model.save_weights` (weights and optimizer state,
iterations included) to a temporary name and then renamed, so a kill during a write never leaves a
truncated file under a checkpoint's name.
"""
import glob
import os
import re

import keras
from absl import logging

from simclr_tf.config import ConfigError

_NAME = re.compile(r"ckpt-(\d+)\.weights\.h5$")


def checkpoint_path(model_dir, step):
    return os.path.join(model_dir, f"ckpt-{int(step):08d}.weights.h5")


def list_checkpoints(model_dir):
    """`[(step, path), ...]` of the complete checkpoints in `model_dir`, oldest first."""
    found = []
    for path in glob.glob(os.path.join(model_dir, "ckpt-*.weights.h5")):
        match = _NAME.search(os.path.basename(path))
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(model_dir):
    """`(step, path)` of the newest checkpoint, or None."""
    found = list_checkpoints(model_dir) if model_dir and os.path.isdir(model_dir) else []
    return found[-1] if found else None


def save(model, model_dir, step, keep_max):
    """Writes the checkpoint of `step` atomically and keeps only the newest `keep_max`."""
    final = checkpoint_path(model_dir, step)
    partial = final.replace(".weights.h5", ".partial.weights.h5")
    model.save_weights(partial)
    os.replace(partial, final)
    for _, old in list_checkpoints(model_dir)[:-keep_max]:
        os.remove(old)
    return final


def restore(model, path):
    """Loads weights and optimizer state from `path` into a built, compiled model."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Checkpoint {path} does not exist. Pass an existing ckpt-*.weights.h5 file to "
            "--checkpoint, or leave it unset to start from scratch.")
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    model.load_weights(path)
    _check_optimizer_restored(model, path)
    logging.info("Restored %s", path)


def _check_optimizer_restored(model, path):
    """Keras only warns when the saved optimizer state does not fit; resuming then restarts at step 0."""
    match = _NAME.search(os.path.basename(path))
    if model.optimizer is None or not match or int(match.group(1)) == 0:
        return
    if int(model.optimizer.iterations.numpy()) == 0:
        raise ConfigError(
            f"The optimizer state in {path} does not fit this run's optimizer, so training would restart "
            "at step 0. The checkpoint was written with another --optimizer or --precision "
            "(mixed_float16 adds loss-scale variables); resume with the settings it was written with.")


class PeriodicCheckpoint(keras.callbacks.Callback):
    """Saves a checkpoint at the end of every Keras epoch (one epoch = one checkpoint interval)."""

    def __init__(self, model_dir, keep_max):
        super().__init__()
        self.model_dir = model_dir
        self.keep_max = keep_max

    def on_epoch_end(self, epoch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        path = save(self.model, self.model_dir, step, self.keep_max)
        logging.info("Saved checkpoint %s", path)


class StopAtStep(keras.callbacks.Callback):
    """Stops `fit` once the optimizer has taken `total_steps` steps (the last epoch may be short)."""

    def __init__(self, total_steps):
        super().__init__()
        self.total_steps = total_steps

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) >= self.total_steps:
            self.model.stop_training = True
