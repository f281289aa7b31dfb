"""The command line: `simclr-tf` (installed by `pip install .`) and `python run.py` run this `main`.

  simclr-tf --mode=train_then_eval --flagfile=flags/builtin_quickstart.flags
"""
import gc
import os
import sys

from absl import app
from absl import flags
from absl import logging

from simclr_tf import config as config_lib
from simclr_tf import flags as simclr_flags

INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT, what shells report for Ctrl-C.


def run_main(argv):
    """The job of one command line (flags already parsed by absl)."""
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    import tensorflow as tf

    from simclr_tf import interrupts, train
    from simclr_tf.data import folders
    from simclr_tf.persistence import checkpoints

    # Ctrl-C and SIGTERM (a preemption notice, `kill`, a scheduler's stop) end the run at a step boundary.
    interrupts.install_handlers()
    exit_status = None  # set by the errors that end the run with a message
    try:
        cfg = simclr_flags.config_from_flags(flags.FLAGS)
        result = train.run(cfg)
    except KeyboardInterrupt:
        message = (f"Interrupted. Run the same command again to resume from the newest checkpoint in "
                   f"{flags.FLAGS.model_dir}.")
        logging.warning("%s", message)
        print(message)
        exit_status = INTERRUPTED_EXIT_CODE
    except checkpoints.DiskFullError as error:
        # One line and exit 1. Hard exit: after a write that failed for lack of space h5py may still hold
        # the file, and HDF5's cleanup at interpreter exit then crashes (SIGSEGV, exit 139).
        logging.error("%s", error)
        print(f"error: {error}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(1)
    except (config_lib.ConfigError, FileNotFoundError, train.NonFiniteLossError) as error:
        logging.error("%s", error)
        exit_status = f"error: {error}"
    except tf.errors.InvalidArgumentError as error:
        # A corrupt image under --corrupt_images=fail: the message names the file, why, and the fix.
        path = folders.corrupt_image_path(error.message)
        if path is None:
            raise
        message = folders.corrupt_image_message(path)
        logging.error("%s", message)
        exit_status = f"error: {message}"
    if exit_status is not None:
        # Raised here, not inside `except`, so that the error's traceback (which holds the input pipeline's
        # iterator) is freed now: freed at interpreter exit instead, an iterator still reading ahead can
        # wait forever for a Python that is shutting down.
        gc.collect()
        raise SystemExit(exit_status)
    if result is not None and "export_dir" in result:
        print(f"Exported {result['exported_from']} (step {result['global_step']}) to {result['export_dir']}")
    elif result is not None and "outputs" in result:
        print(f"Converted {result['converted_from']} ({result['layout']}, "
              f"{result['assigned_weights']} weights): {', '.join(result['outputs'])}")
    elif result is not None:
        if "knn_top_1" in result or "offline_probe_top_1" in result:  # the measures that mean most first
            from simclr_tf.knn import comparison_table

            print("\n".join(comparison_table(result)))
        from simclr_tf.tasks import task_class

        print(f"{task_class(cfg).evaluation_name} on {cfg.data.eval_split}: top-1 {result['top_1_accuracy']:.4f}, "
              f"top-5 {result['top_5_accuracy']:.4f} at step {result['global_step']}")
        if "random_encoder_probe_top_1" in result:
            print(f"Offline linear probe on frozen features, top-1: pretrained encoder "
                  f"{result['offline_probe_top_1']:.4f}, randomly initialized encoder "
                  f"{result['random_encoder_probe_top_1']:.4f}")


def main():
    """Entry point of `simclr-tf`: defines the flags, parses the command line and runs the job."""
    simclr_flags.define_flags()
    app.run(run_main)
