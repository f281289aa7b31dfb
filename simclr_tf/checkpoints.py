"""Step-numbered checkpoints in `model_dir`: atomic writes, pruning, finding the latest, restoring;
checking model_dir before training; saving when interrupted.

A checkpoint is `ckpt-<step>.weights.h5`, written by `model.save_weights` (weights and optimizer state,
iterations included) to a temporary name, flushed to disk and then renamed, so a kill (or a power cut)
during a write never leaves a truncated file under a checkpoint's name.

Under a multi-worker strategy only the chief writes (see `distribute.is_chief`); the other workers write
nothing, not even to a temporary directory. That is safe because an h5 save only reads each variable's
local copy: model and optimizer variables are mirrored (identical on every worker after a synchronous
step) and metric variables, the only on-read ones, are not saved. A TF checkpoint or SavedModel save is
different: it may read on-read variables, which is a collective every worker must join, hence TF's recipe
of every worker saving, the non-chief ones to temporary directories they then delete.
"""
import contextlib
import glob
import itertools
import math
import os
import re
import shutil

import keras
import numpy as np
from absl import logging

from simclr_tf import distribute
from simclr_tf.config import ConfigError

_NAME = re.compile(r"ckpt-(\d+)\.weights\.h5$")
_save_attempts = itertools.count()
# Before the optimizer is built its slots are estimated as two per trainable weight (LARS and momentum
# have one, Adam two); the h5 file adds its metadata on top (~3% for small models, measured).
UNBUILT_SLOTS_PER_WEIGHT = 2
H5_OVERHEAD = 1.1


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


def _fsync(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(model, model_dir, step, keep_max):
    """Writes the checkpoint of `step` atomically and keeps only the newest `keep_max`."""
    os.makedirs(model_dir, exist_ok=True)
    final = checkpoint_path(model_dir, step)
    # A name of its own per attempt: an interrupted save may still hold its file open.
    partial = final.replace(".weights.h5", f".partial-{os.getpid()}-{next(_save_attempts)}.weights.h5")
    try:
        model.save_weights(partial)
        _fsync(partial)  # The data reaches the disk before the name does.
        os.replace(partial, final)
    except BaseException:  # Ctrl-C or an error mid-write: leave no partial file behind.
        with contextlib.suppress(OSError):
            os.remove(partial)
        raise
    _fsync(model_dir)  # And the rename itself.
    for _, old in list_checkpoints(model_dir)[:-keep_max]:
        os.remove(old)
    return final


def remove_partial_files(model_dir):
    """Deletes the unfinished `ckpt-*.partial*.weights.h5` a killed run left; returns their paths."""
    leftovers = glob.glob(os.path.join(model_dir, "ckpt-*.partial*.weights.h5"))
    for path in leftovers:
        os.remove(path)
    return leftovers


def save_on_interrupt(model, model_dir, keep_max, chief=True):
    """Saves the model's current step when training is interrupted (Ctrl-C); returns the path or None.

    Safe because the state is at a step boundary: a step is one call of the compiled train function,
    which updates the weights, the optimizer slots and `iterations` together, and the interruption comes
    between two calls (`interrupts.StopOnSignal` at the end of a step; even a second Ctrl-C is raised by
    Python only once the running call has returned). Nothing is saved on non-chief workers, when the
    newest checkpoint already has this step, or when a weight is NaN/Inf (the interrupted step may have
    diverged before the callback that stops on a non-finite loss ran).
    """
    step = int(model.optimizer.iterations.numpy())
    latest = latest_checkpoint(model_dir)
    if not chief or step == 0 or (latest and latest[0] >= step):
        return None
    if not all(np.all(np.isfinite(keras.ops.convert_to_numpy(w))) for w in model.weights):
        logging.warning("Not saving step %d on interrupt: the weights are not finite.", step)
        return None
    return save(model, model_dir, step, keep_max)


def _bytes(variables):
    return sum(math.prod(v.shape) * np.dtype(v.dtype).itemsize for v in variables)


def estimated_checkpoint_bytes(model):
    """An upper estimate of one checkpoint's size: the model's weights plus the optimizer's variables
    (their exact size once the optimizer is built, else two slots per trainable weight), plus 10%."""
    optimizer = model.optimizer
    if optimizer is not None and optimizer.built:
        slot_bytes = _bytes(optimizer.variables)
    else:
        slot_bytes = UNBUILT_SLOTS_PER_WEIGHT * _bytes(model.trainable_weights)
    return int(H5_OVERHEAD * (_bytes(model.weights) + slot_bytes))


def check_writable(model_dir, needed_bytes=0):
    """Raises ConfigError, naming the directory and the fix, unless files can be written to `model_dir`
    (created if missing) and its filesystem has `needed_bytes` free.

    A probe file is written, flushed and removed, which catches read-only directories and filesystems,
    paths under a regular file and permission problems before any training time is spent.
    """
    try:
        os.makedirs(model_dir, exist_ok=True)
        probe = os.path.join(model_dir, f".write_probe-{os.getpid()}")
        with open(probe, "wb") as f:
            f.write(b"simclr_tf")
            f.flush()
            os.fsync(f.fileno())
        os.remove(probe)
    except OSError as error:
        raise ConfigError(
            f"Cannot write to --model_dir={model_dir} ({error.strerror or error}). Point --model_dir at a "
            "directory you can write to (an existing path that is not a file), or fix its permissions."
        ) from error
    free = shutil.disk_usage(model_dir).free
    if free < needed_bytes:
        raise ConfigError(
            f"--model_dir={model_dir} has {free / 2**20:.1f} MiB free, but this run's checkpoints need "
            f"about {needed_bytes / 2**20:.1f} MiB. Free some space there, point --model_dir at a larger "
            "disk, or keep fewer checkpoints (--keep_checkpoint_max).")


def needed_bytes(model, model_dir, keep_max):
    """Free space a run still needs in `model_dir`: room for the checkpoints it will add before pruning
    starts (up to `keep_max`, plus the one being written) at `estimated_checkpoint_bytes` each."""
    existing = len(list_checkpoints(model_dir)) if os.path.isdir(model_dir) else 0
    return max(1, keep_max + 1 - existing) * estimated_checkpoint_bytes(model)


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
    """Saves a checkpoint at the end of every Keras epoch (one epoch = one checkpoint interval).

    Only the chief saves (`chief=None` asks `distribute.is_chief` about the model's strategy); it also
    deletes the partial files of a killed run when training begins.
    """

    def __init__(self, model_dir, keep_max, chief=None):
        super().__init__()
        self.model_dir = model_dir
        self.keep_max = keep_max
        self.chief = chief

    @property
    def is_chief(self):
        if self.chief is None:
            self.chief = distribute.is_chief(self.model.distribute_strategy)
        return self.chief

    def on_train_begin(self, logs=None):
        if self.is_chief:
            for path in remove_partial_files(self.model_dir):
                logging.info("Removed the unfinished checkpoint %s of an interrupted run.", path)

    def on_epoch_end(self, epoch, logs=None):
        if not self.is_chief:
            return
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
