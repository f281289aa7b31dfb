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
import gc
import itertools
import math
import os
import shutil
import sys

import keras
import numpy as np
from absl import logging

from simclr_tf import distribute
from simclr_tf.config import ConfigError
from simclr_tf.persistence import run_dir
from simclr_tf.persistence.disk_space import DiskFullError, disk_full_error, is_disk_full  # noqa: F401 (API)
from simclr_tf.persistence.run_dir import checkpoint_path, latest_checkpoint, list_checkpoints  # noqa: F401

DAMAGED_INFIX = run_dir.DAMAGED_INFIX
_save_attempts = itertools.count()
# Before the optimizer is built its slots are estimated as two per trainable weight (LARS and momentum
# have one, Adam two); the h5 file adds its metadata on top (~3% for small models, measured).
UNBUILT_SLOTS_PER_WEIGHT = 2
H5_OVERHEAD = 1.1


def _fsync(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _filter_disk_full_reports():
    """Makes Python drop its reports of exceptions that say the disk is full and that it ignores (h5py's
    finalizers raise dozens of them after a failed write); returns the previous hooks."""
    hooks = sys.excepthook, sys.unraisablehook

    def excepthook(kind, value, traceback):
        if not is_disk_full(value):
            hooks[0](kind, value, traceback)

    def unraisablehook(unraisable):
        if not is_disk_full(unraisable.exc_value):
            hooks[1](unraisable)

    sys.excepthook, sys.unraisablehook = excepthook, unraisablehook
    return hooks


@contextlib.contextmanager
def _quiet_disk_full_reports():
    hooks = _filter_disk_full_reports()
    try:
        yield
    finally:
        sys.excepthook, sys.unraisablehook = hooks


def save(model, model_dir, step, keep_max):
    """Writes the checkpoint of `step` atomically and keeps only the newest `keep_max`.

    Raises DiskFullError, with the previous checkpoints untouched, when the disk has too little space for
    it (checked before writing, and when the write itself fails for lack of space).
    """
    os.makedirs(model_dir, exist_ok=True)
    final = checkpoint_path(model_dir, step)
    needed = estimated_checkpoint_bytes(model)
    if shutil.disk_usage(model_dir).free < needed:
        raise disk_full_error(model_dir, needed, f"the checkpoint of step {int(step)}")
    # A name of its own per attempt: an interrupted save may still hold its file open.
    partial = run_dir.partial_checkpoint_path(final, f"{os.getpid()}-{next(_save_attempts)}")
    disk_full = False
    try:
        with _quiet_disk_full_reports():
            model.save_weights(partial)
        _fsync(partial)  # The data reaches the disk before the name does.
        os.replace(partial, final)
    except BaseException as error:  # Ctrl-C or an error mid-write: leave no partial file behind.
        if not isinstance(error, OSError) or not is_disk_full(error):
            with contextlib.suppress(OSError):
                os.remove(partial)
            raise
        # The traceback holds h5py's open file, whose close fails too and is reported when the traceback
        # is released, as the except block ends: filter those reports until it is collected.
        hooks = _filter_disk_full_reports()
        disk_full = True
    if disk_full:
        try:
            gc.collect()
        finally:
            sys.excepthook, sys.unraisablehook = hooks
        with contextlib.suppress(OSError):
            os.remove(partial)
        raise disk_full_error(model_dir, needed, f"the checkpoint of step {int(step)}")
    _fsync(model_dir)  # And the rename itself.
    for _, old in list_checkpoints(model_dir)[:-keep_max]:
        os.remove(old)
    return final


def remove_partial_files(model_dir):
    """Deletes the unfinished `ckpt-*.partial*.weights.h5` a killed run left; returns their paths."""
    leftovers = run_dir.partial_checkpoints(model_dir)
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


class DamagedCheckpointError(ConfigError):
    """A checkpoint file that cannot be read (truncated, or not HDF5); the message names it."""


def damage(path):
    """Why `path` is not a readable checkpoint file (h5py's reason), or None when it opens."""
    import h5py

    try:
        with h5py.File(path, "r"):
            return None
    except OSError as error:
        return str(error)


def restore(model, path):
    """Loads weights and optimizer state from `path` into a built, compiled model.

    Raises DamagedCheckpointError for a file that cannot be read, ConfigError for one written by a model
    of another architecture (both naming the file).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Checkpoint {path} does not exist. Pass an existing ckpt-*.weights.h5 file to "
            "--checkpoint, or leave it unset to start from scratch.")
    problem = damage(path)
    if problem:
        raise DamagedCheckpointError(
            f"The checkpoint {path} is damaged and cannot be read ({problem}); it was truncated or "
            "overwritten, e.g. by an interrupted copy. Copy it again, or use another checkpoint.")
    optimizer = getattr(model, "optimizer", None)  # None, or no attribute at all, when not compiled
    if optimizer is not None and not optimizer.built:
        optimizer.build(model.trainable_variables)
    try:
        model.load_weights(path)
    except ValueError as error:
        summary = str(error).strip().splitlines()[0]
        raise ConfigError(
            f"The checkpoint {path} does not fit this run's model ({summary}): it was written by a model of "
            "another architecture. Set the model flags (--resnet_depth, --width_multiplier, --sk_ratio, "
            "--se_ratio, --proj_head_mode, --num_proj_layers, --proj_out_dim) to those it was trained "
            "with (its run's config.json has them).") from None
    _check_optimizer_restored(model, path)
    logging.info("Restored %s", path)


def restore_latest(model, model_dir, set_aside=False):
    """Restores the newest checkpoint of `model_dir` that loads; returns its `(step, path)`, or None.

    A damaged newer checkpoint is skipped with a warning naming it, never deleted. With `set_aside`
    (the run that holds model_dir's lock and will write new checkpoints) it is renamed to
    `ckpt-<step>.damaged.weights.h5`, so that it is neither retried nor overwritten by a new save.
    """
    found = list_checkpoints(model_dir) if os.path.isdir(model_dir) else []
    skipped = []
    for step, path in reversed(found):
        try:
            restore(model, path)
        except DamagedCheckpointError as error:
            kept = path
            if set_aside:
                kept = _set_aside(path)
            logging.warning("%s Skipping it and resuming from the newest checkpoint that loads; it is "
                            "kept as %s.", error, kept)
            skipped.append(kept)
            continue
        if skipped:
            logging.warning("Resumed from %s (step %d), skipping the damaged %s.", path, step,
                            ", ".join(skipped))
        return step, path
    if skipped:
        raise DamagedCheckpointError(
            f"No checkpoint in {model_dir} can be read: {', '.join(skipped)} are damaged. Copy them "
            "again, or move them away to start the run from scratch.")
    return None


def _set_aside(path):
    target = run_dir.damaged_checkpoint_path(path)
    for attempt in itertools.count(1):
        if not os.path.exists(target):
            break
        target = run_dir.damaged_checkpoint_path(path, attempt)
    os.replace(path, target)
    return target


def _check_optimizer_restored(model, path):
    """Keras only warns when the saved optimizer state does not fit; resuming then restarts at step 0."""
    step = run_dir.checkpoint_step(path)
    if getattr(model, "optimizer", None) is None or not step:
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
