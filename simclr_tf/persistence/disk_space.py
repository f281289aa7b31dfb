"""Telling a full disk apart from other write errors, and the error that says how much space is missing."""
import errno
import os
import shutil

from simclr_tf.config import ConfigError


class DiskFullError(ConfigError):
    """The filesystem of model_dir ran out of space; the message names the directory and the space needed."""


def is_disk_full(error):
    """Whether `error` (an OSError, h5py's OSError or a TensorFlow error) says the disk is full."""
    if getattr(error, "errno", None) == errno.ENOSPC:
        return True
    return "No space left on device" in str(error) or type(error).__name__ == "ResourceExhaustedError"


def disk_full_error(directory, needed, what, keep_flag="--keep_checkpoint_max"):
    """The DiskFullError for writing `what` (about `needed` bytes) to `directory`, naming the fix."""
    free = shutil.disk_usage(directory).free if os.path.isdir(directory) else 0
    return DiskFullError(
        f"No space left in {directory} for {what}: it needs about {needed / 2**20:.1f} MiB, "
        f"{free / 2**20:.1f} MiB are free. The previous files there are intact; free some space (or point "
        f"--model_dir at a larger disk, or lower {keep_flag}) and run the same command again.")
