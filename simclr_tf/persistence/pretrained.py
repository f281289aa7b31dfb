"""Loading a trained model from any format simclr_tf reads, for fine-tuning, distillation and export.

`load_trained_model(path)` accepts:
- a `.keras` file (our `model.keras` / `encoder.keras` is not enough: the whole model is needed);
- one of our SavedModel exports (a directory with `model.keras` beside `saved_model.pb`), or the
  `saved_model/` directory of a run (its newest export is read);
- one of our checkpoints, `ckpt-<step>.weights.h5`, or a run's model_dir (its newest checkpoint is read):
  the model is rebuilt from `model_config.json`, which every training run writes beside its checkpoints;
- a checkpoint of the reference (TF1 or TF2 checkpoint, TF-Hub module, TF2 SavedModel), by variable name
  (`simclr_tf.persistence.reference.checkpoints`).

It returns the Keras model: a `SimCLRModel` (pretraining), a `SimCLRClassifier` (fine-tuning), or the
student of a distillation run.
"""
import json
import os

import keras
import tensorflow as tf
from absl import logging

from simclr_tf.config import ConfigError
from simclr_tf.persistence import atomic
from simclr_tf.persistence import checkpoints
from simclr_tf.persistence import run_dir
from simclr_tf.persistence.reference import checkpoints as reference_checkpoints

MODEL_CONFIG_FILE = run_dir.MODEL_CONFIG_FILE
KERAS_MODEL_FILE = run_dir.KERAS_MODEL_FILE


def write_model_config(model, model_dir, image_size):
    """Writes `model_dir/model_config.json`: what is needed to rebuild `model` for its checkpoints."""
    payload = {"image_size": int(image_size), "model": keras.saving.serialize_keras_object(model)}
    return atomic.write_json(run_dir.model_config_path(model_dir), payload)


def model_from_config_file(path, compile=True):
    """(unbuilt-weights model, image_size) from a `model_config.json`; the model is built on zeros.

    With `compile=False` the model has no optimizer: loading a checkpoint into it reads the weights and
    leaves the saved optimizer state aside (without Keras's warning that it does not fit).
    """
    with open(path) as f:
        payload = json.load(f)
    config = payload["model"] if compile else {k: v for k, v in payload["model"].items()
                                                if k != "compile_config"}
    model = keras.saving.deserialize_keras_object(config)
    size = payload["image_size"]
    model(tf.zeros([1, size, size, 3]), training=False)
    return model, size


def _unwrap(model):
    """The model that holds the trained encoder: a distillation run's student, else the model itself."""
    return getattr(model, "student", model)


def _newest_export(directory):
    """The newest export in a run's model_dir, or in its `saved_model/` directory itself."""
    parent = os.path.dirname(directory.rstrip(os.sep))
    return run_dir.latest_export(directory) or (
        run_dir.latest_export(parent) if os.path.basename(directory.rstrip(os.sep)) == run_dir.EXPORTS_DIR
        else None)


def _load_h5_checkpoint(path):
    config_file = run_dir.model_config_path(os.path.dirname(path))
    if not os.path.isfile(config_file):
        raise FileNotFoundError(
            f"{path} is a simclr_tf checkpoint but {config_file} is missing, so the model it belongs to "
            "cannot be rebuilt. Keep the checkpoint in its run's model_dir (every run writes "
            f"{MODEL_CONFIG_FILE} there), or pass the run's exported SavedModel or a .keras file.")
    model, _ = model_from_config_file(config_file, compile=False)
    checkpoints.restore(model, path)  # a damaged or misfitting file gets a message naming it
    return model


def load_trained_model(path):
    """The trained Keras model stored at `path` (see the module docstring for the formats).

    Example:
      >>> import tempfile
      >>> from simclr_tf.models.heads import ProjectionHead
      >>> from simclr_tf.models.resnet import ResNet
      >>> from simclr_tf.models.simclr import SimCLRModel
      >>> model = SimCLRModel(ResNet(depth=18, width_multiplier=0.125, cifar_stem=True),
      ...                     ProjectionHead(num_layers=2, out_dim=8), num_classes=10)
      >>> images = tf.random.uniform([2, 16, 16, 3])
      >>> features = model(images)["final_avg_pool"]
      >>> path = os.path.join(tempfile.mkdtemp(), "pretrained.keras")
      >>> model.save(path)
      >>> loaded = load_trained_model(path)
      >>> type(loaded).__name__, loaded.supervised_head.num_classes
      ('SimCLRModel', 10)
      >>> float(tf.reduce_max(tf.abs(loaded(images)["final_avg_pool"] - features)))
      0.0
      >>> load_trained_model(os.path.join(tempfile.mkdtemp(), "no_such_run"))
      Traceback (most recent call last):
      ...
      FileNotFoundError: --checkpoint .../no_such_run does not exist. Pass a run's model_dir, a
      ckpt-*.weights.h5 file, an exported SavedModel directory, a .keras file, or a reference checkpoint
      prefix.
    """
    path = os.path.expanduser(path)
    if not tf.io.gfile.exists(path) and not tf.io.gfile.exists(path + ".index"):
        raise FileNotFoundError(
            f"--checkpoint {path} does not exist. Pass a run's model_dir, a ckpt-*.weights.h5 file, an "
            "exported SavedModel directory, a .keras file, or a reference checkpoint prefix.")
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, KERAS_MODEL_FILE)):
            return _unwrap(keras.saving.load_model(os.path.join(path, KERAS_MODEL_FILE), compile=False))
        latest = run_dir.latest_checkpoint(path)
        if latest:
            return _unwrap(_load_h5_checkpoint(latest[1]))
        newest = _newest_export(path)
        if newest:
            return _unwrap(keras.saving.load_model(os.path.join(newest, KERAS_MODEL_FILE), compile=False))
    elif path.endswith(".keras"):
        return _unwrap(keras.saving.load_model(path, compile=False))
    elif path.endswith(run_dir.CHECKPOINT_SUFFIX):
        return _unwrap(_load_h5_checkpoint(path))
    return _load_reference(path)


def _load_reference(path):
    try:
        model, report = reference_checkpoints.load_reference_checkpoint(path)
    except ValueError as error:
        raise ConfigError(str(error)) from error
    logging.info("%s", report.summary())
    return model


def load_teacher(path, num_classes):
    """A trained model with a supervised head of `num_classes` classes, to distill from."""
    teacher = load_trained_model(path)
    head = getattr(teacher, "supervised_head", None)
    if head is None:
        raise ConfigError(
            f"The teacher {path} has no classifier (it is a pretraining checkpoint without a linear "
            "probe). Distill from a fine-tuned model: run --train_mode=finetune first and pass its "
            "model_dir or export as --teacher_checkpoint.")
    if head.num_classes != num_classes:
        raise ConfigError(
            f"The teacher {path} predicts {head.num_classes} classes but the dataset has {num_classes}; "
            "distill on the data the teacher was fine-tuned for.")
    return teacher
