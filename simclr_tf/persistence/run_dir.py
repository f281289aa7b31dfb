"""The names of everything a run keeps in its `model_dir`, and finding what is there.

Every file or directory simclr_tf writes in a run directory is named here and nowhere else:

    model_dir/
      ckpt-<step:08d>.weights.h5      checkpoints (weights and optimizer state)        persistence.checkpoints
      ckpt-<step>.partial-*.weights.h5  a checkpoint being written (renamed when done)
      ckpt-<step>.damaged.weights.h5  an unreadable checkpoint set aside on resume
      model_config.json               how to rebuild the model of the checkpoints      persistence.pretrained
      config.json                     the run's settings                               run_record
      result.json, result_<name>.json an evaluation's result                           train.evaluate
      label_subset.json               the labelled subset of a fine-tuning run         persistence.label_subset
      conversion.json, model.keras, encoder.keras   a --mode=convert run               persistence.modes
      saved_model/<step>/             SavedModel exports                               persistence.export
      saved_model/.partial-<step>     an export being written (renamed when done)
      run.lock                        the process writing the run                      run_lock
      train/                          TensorBoard summaries (Keras's TensorBoard callback names it)

JSON files are written with `persistence.atomic.write_json`.

Example:
  >>> checkpoint_path("/runs/a", 1200)
  '/runs/a/ckpt-00001200.weights.h5'
  >>> checkpoint_step("/runs/a/ckpt-00001200.weights.h5"), checkpoint_step("/runs/a/model.keras")
  (1200, None)
  >>> result_path("/runs/a"), result_path("/runs/a", eval_name="v2")
  ('/runs/a/result.json', '/runs/a/result_v2.json')
  >>> export_path("/runs/a", 1200)
  '/runs/a/saved_model/1200'
"""
import glob
import os
import re

CHECKPOINT_SUFFIX = ".weights.h5"
CHECKPOINT_GLOB = f"ckpt-*{CHECKPOINT_SUFFIX}"
PARTIAL_CHECKPOINT_GLOB = f"ckpt-*.partial*{CHECKPOINT_SUFFIX}"
DAMAGED_INFIX = ".damaged"
_CHECKPOINT_NAME = re.compile(r"ckpt-(\d+)\.weights\.h5$")

CONFIG_FILE = "config.json"
MODEL_CONFIG_FILE = "model_config.json"
RESULT_FILE = "result.json"
CONVERSION_FILE = "conversion.json"
SUBSET_FILE = "label_subset.json"
LOCK_FILE = "run.lock"
TRAIN_SUMMARIES_DIR = "train"  # Keras's TensorBoard callback writes here; our own summaries join it

# Exports: model_dir/saved_model/<step>/, each holding a SavedModel and these files beside it.
EXPORTS_DIR = "saved_model"
EXPORT_METADATA_FILE = "simclr_tf_export.json"
KERAS_MODEL_FILE = "model.keras"  # also written to model_dir by --mode=convert
ENCODER_FILE = "encoder.keras"
PARTIAL_EXPORT_PREFIX = ".partial-"
REPLACED_EXPORT_PREFIX = ".replaced-"


def checkpoint_path(model_dir, step):
    return os.path.join(model_dir, f"ckpt-{int(step):08d}{CHECKPOINT_SUFFIX}")


def checkpoint_step(path):
    """The step in a checkpoint's file name, or None when `path` is not named as a complete checkpoint."""
    match = _CHECKPOINT_NAME.search(os.path.basename(path))
    return int(match.group(1)) if match else None


def partial_checkpoint_path(final_path, tag):
    """Where the checkpoint `final_path` is written before it is renamed; `tag` makes it unique."""
    return final_path.replace(CHECKPOINT_SUFFIX, f".partial-{tag}{CHECKPOINT_SUFFIX}")


def damaged_checkpoint_path(path, attempt=0):
    """The name an unreadable checkpoint is set aside under (`attempt` > 0 when that name is taken)."""
    infix = f"{DAMAGED_INFIX}-{attempt}" if attempt else DAMAGED_INFIX
    return path.replace(CHECKPOINT_SUFFIX, f"{infix}{CHECKPOINT_SUFFIX}")


def partial_checkpoints(model_dir):
    """The unfinished checkpoint files in `model_dir` (left by a killed run)."""
    return glob.glob(os.path.join(model_dir, PARTIAL_CHECKPOINT_GLOB))


def list_checkpoints(model_dir):
    """`[(step, path), ...]` of the complete checkpoints in `model_dir`, oldest first."""
    found = []
    for path in glob.glob(os.path.join(model_dir, CHECKPOINT_GLOB)):
        step = checkpoint_step(path)
        if step is not None:
            found.append((step, path))
    return sorted(found)


def latest_checkpoint(model_dir):
    """`(step, path)` of the newest checkpoint, or None."""
    found = list_checkpoints(model_dir) if model_dir and os.path.isdir(model_dir) else []
    return found[-1] if found else None


def config_path(model_dir):
    return os.path.join(model_dir, CONFIG_FILE)


def model_config_path(model_dir):
    return os.path.join(model_dir, MODEL_CONFIG_FILE)


def result_path(model_dir, eval_name=""):
    """`result.json`, or `result_<eval_name>.json` for a named evaluation (--eval_name)."""
    return os.path.join(model_dir, f"result_{eval_name}.json" if eval_name else RESULT_FILE)


def conversion_path(model_dir):
    return os.path.join(model_dir, CONVERSION_FILE)


def subset_path(model_dir):
    return os.path.join(model_dir, SUBSET_FILE)


def lock_path(model_dir):
    return os.path.join(model_dir, LOCK_FILE)


def train_summaries_dir(model_dir):
    return os.path.join(model_dir, TRAIN_SUMMARIES_DIR)


def exports_root(model_dir):
    return os.path.join(model_dir, EXPORTS_DIR)


def export_path(model_dir, step):
    return os.path.join(exports_root(model_dir), str(int(step)))


def partial_export_path(model_dir, step):
    return os.path.join(exports_root(model_dir), f"{PARTIAL_EXPORT_PREFIX}{int(step)}")


def replaced_export_path(model_dir, step):
    return os.path.join(exports_root(model_dir), f"{REPLACED_EXPORT_PREFIX}{int(step)}")


def stale_exports(model_dir):
    """The unfinished exports (`saved_model/.partial-<step>`, `.replaced-<step>`) in `model_dir`."""
    root = exports_root(model_dir)
    if not os.path.isdir(root):
        return []
    return [os.path.join(root, name) for name in sorted(os.listdir(root))
            if name.startswith((PARTIAL_EXPORT_PREFIX, REPLACED_EXPORT_PREFIX))]


def list_exports(model_dir):
    """`[(step, path), ...]` of the complete exports in `model_dir/saved_model/`, oldest first."""
    root = exports_root(model_dir)
    if not os.path.isdir(root):
        return []
    return sorted((int(name), os.path.join(root, name)) for name in os.listdir(root)
                  if name.isdigit() and os.path.isfile(os.path.join(root, name, EXPORT_METADATA_FILE)))


def latest_export(model_dir):
    """Path of the newest export of the run in `model_dir`, or None."""
    exports = list_exports(model_dir)
    return exports[-1][1] if exports else None
