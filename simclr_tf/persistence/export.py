"""SavedModel export of a trained simclr_tf model, for serving, reuse and fine-tuning outside simclr_tf.

An export directory holds a TF2 SavedModel and, beside its files, `model.keras` (the whole Keras model, so
simclr_tf can rebuild it exactly), `encoder.keras` (the encoder alone) and `simclr_tf_export.json`. The
SavedModel maps a float32 image batch [B, image_size, image_size, 3] with values in [0, 1] to a dict of
float32 tensors (`named_outputs`) and can be used four ways:

    serving = tf.saved_model.load(path).signatures["serving_default"]    # inference, TF Serving
    outputs = load_exported(path)(images, training=False)                  # a plain TF callable
    features = keras_layer(path, trainable=True)(images)["final_avg_pool"]  # Keras 3, fine-tunable
    layer = tensorflow_hub.KerasLayer(path, trainable=True)                # tf-keras, fine-tunable

The last follows TF Hub's "Reusable SavedModel" convention: a `__call__(images, training)` traced for both
modes and `variables`, `trainable_variables` and `regularization_losses` attributes. With `training=True`
the batch norms use batch statistics and update their moving averages. The exported variables are copies
of the model's, and those frozen in Keras (`layer.trainable = False`) are saved as non-trainable, so no
loader fine-tunes them. `regularization_losses` is empty: simclr_tf applies weight decay in its training
step, not as layer losses, so a fine-tuner adds its own.

A run exports to `model_dir/saved_model/<step>/` (`export_run`), keeping the newest `keep_hub_module_max`.
"""
import contextlib
import os
import shutil

import keras
import tensorflow as tf
from absl import logging as absl_logging

from simclr_tf.config import ConfigError
from simclr_tf.models.memory import online_network
from simclr_tf.models.resnet import ENDPOINT_NAMES
from simclr_tf.persistence import atomic
from simclr_tf.persistence import disk_space
from simclr_tf.persistence import run_dir
from simclr_tf.persistence.run_dir import latest_export, list_exports  # noqa: F401 (part of this module's API)

EXPORTS_DIR = run_dir.EXPORTS_DIR
METADATA_FILE = run_dir.EXPORT_METADATA_FILE
MODEL_FILE = run_dir.KERAS_MODEL_FILE
ENCODER_FILE = run_dir.ENCODER_FILE
SERVING_SIGNATURE = "serving_default"
CALL_ENDPOINT = "serve"  # inference mode; TFSMLayer's default call_endpoint
CALL_TRAINING_ENDPOINT = "call_training"  # training mode: batch statistics, moving averages updated
OUTPUT_NAMES = ENDPOINT_NAMES + ("proj_head_input", "proj_head_output", "logits_sup")


def named_outputs(model, images, training=False):
    """The named float32 outputs of `model` on `images`, from one forward pass of the encoder.

    `model` has `encoder` (our `ResNet` or any encoder of simclr_tf/models/encoders.py),
    `projection_head` (returning `(projection, supervised_input)`) and `supervised_head` (or None). Keys:
    the endpoints the encoder has (our ResNet: `initial_conv`, `initial_max_pool` without the CIFAR stem,
    `block_group1`..`block_group4`; every encoder: `final_avg_pool`),
    `proj_head_input` (the features fed to the projection head), `proj_head_output`, and `logits_sup`
    (the supervised head on the projection head's supervised input) when there is a supervised head.

    Example:
      >>> from simclr_tf.models.heads import ProjectionHead
      >>> from simclr_tf.models.resnet import ResNet
      >>> from simclr_tf.models.simclr import SimCLRModel
      >>> model = SimCLRModel(ResNet(depth=18, width_multiplier=0.125, cifar_stem=True),
      ...                     ProjectionHead(num_layers=2, out_dim=8))
      >>> outputs = named_outputs(model, tf.zeros([2, 16, 16, 3]))
      >>> for name, value in outputs.items():
      ...     print(name, value.shape)
      initial_conv (2, 16, 16, 8)
      block_group1 (2, 16, 16, 8)
      block_group2 (2, 8, 8, 16)
      block_group3 (2, 4, 4, 32)
      block_group4 (2, 2, 2, 64)
      final_avg_pool (2, 64)
      proj_head_input (2, 64)
      proj_head_output (2, 8)
    """
    outputs = dict(model.encoder.call_with_endpoints(images, training=training))
    features = outputs["final_avg_pool"]
    projection, supervised_input = model.projection_head(features, training=training)
    outputs["proj_head_input"] = features
    outputs["proj_head_output"] = projection
    if model.supervised_head is not None:
        outputs["logits_sup"] = model.supervised_head(supervised_input, training=training)
    # Under a mixed precision policy the layers compute in 16 bits; the outputs are float32 regardless.
    return {name: tf.cast(outputs[name], tf.float32) for name in OUTPUT_NAMES if name in outputs}


def _exported_parts(model):
    parts = [model.encoder, model.projection_head]
    if model.supervised_head is not None:
        parts.append(model.supervised_head)
    unbuilt = [part.name for part in parts if not part.built]
    if unbuilt:
        raise ConfigError(f"Cannot export: {unbuilt} are not built yet. Call the model on a batch of "
                          "images first (e.g. model(tf.zeros([1, size, size, 3]))), then export.")
    return parts


def _state_variables(model):
    """(the Keras variables `named_outputs` uses, each once; ids of those Keras trains)."""
    variables, trainable_ids, seen = [], set(), set()
    for part in _exported_parts(model):
        trainable_ids.update(id(v) for v in part.trainable_variables)
        for variable in part.variables:
            if id(variable) not in seen:
                seen.add(id(variable))
                variables.append(variable)
    return variables, trainable_ids


@contextlib.contextmanager
def _local_batch_norm(model):
    """Traces synchronized (global) batch norms as local ones while exporting.

    The export runs on one device, where the cross-replica sum is the identity; traced, it would only
    add ops whose custom gradients a SavedModel cannot keep (each load then warns about them).
    """
    synchronized = [layer for part in _exported_parts(model) for layer in part._flatten_layers()
                    if isinstance(layer, keras.layers.BatchNormalization) and layer.synchronized]
    for layer in synchronized:
        layer.synchronized = False
    try:
        yield
    finally:
        for layer in synchronized:
            layer.synchronized = True


@contextlib.contextmanager
def _absl_verbosity_kept():
    """tf.saved_model.save resets absl's verbosity to the `tensorflow` logger's level (WARNING), which would
    silence a run's INFO logs from then on; this puts it back."""
    absl_logger = absl_logging.get_absl_logger()
    level = absl_logger.level
    try:
        yield
    finally:
        absl_logger.setLevel(level)


def _exported_name(model, variable):
    """`variable.path` without the model's own (often automatic) name: `resnet18/stem/.../kernel`."""
    return variable.path.removeprefix(f"{model.name}/")


def _reusable_saved_model(model, image_size):
    """The object to save: the traced forward pass over copies of the model's variables.

    Copies, because Keras freezes a layer by flagging its Keras variables while the TF variables under
    them stay trainable, and the SavedModel (and so TFSMLayer) keeps the TF flag. The forward pass runs
    the Keras model in a `keras.StatelessScope` that reads the copies and collects what the batch norms
    write; those new moving averages are then assigned to the copies.
    """
    keras_variables, trainable_ids = _state_variables(model)
    copies = [tf.Variable(v.numpy(), trainable=id(v) in trainable_ids, name=_exported_name(model, v))
              for v in keras_variables]

    def forward(images, training):
        with keras.StatelessScope(state_mapping=list(zip(keras_variables, copies))) as scope:
            before = [scope.get_current_value(v) for v in keras_variables]
            outputs = named_outputs(model, images, training=training)
        for variable, copy, old_value in zip(keras_variables, copies, before):
            new_value = scope.get_current_value(variable)
            if new_value is not old_value:
                copy.assign(tf.cast(new_value, copy.dtype))
        return outputs

    spec = tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name="images")

    @tf.function(autograph=False)
    def call(images, training=False):
        return forward(images, training=bool(training))

    @tf.function(input_signature=[spec], autograph=False)
    def serve(images):
        return call(images, training=False)

    @tf.function(input_signature=[spec], autograph=False)
    def call_training(images):
        return call(images, training=True)

    for training in (False, True):
        call.get_concrete_function(spec, training=training)
    serve.get_concrete_function()
    call_training.get_concrete_function()
    exported = tf.__internal__.tracking.AutoTrackable()
    exported.__call__ = call
    setattr(exported, CALL_ENDPOINT, serve)
    setattr(exported, CALL_TRAINING_ENDPOINT, call_training)
    exported.variables = list(copies)
    exported.trainable_variables = [c for c in copies if c.trainable]
    exported.non_trainable_variables = [c for c in copies if not c.trainable]
    exported.regularization_losses = []
    return exported


def export_saved_model(model, export_dir, image_size):
    """Writes the SavedModel, `model.keras`, `encoder.keras` and `simclr_tf_export.json` to `export_dir`.

    Returns the names of the exported outputs.

    Example:
      >>> from simclr_tf.models.classifier import build_classifier
      >>> from simclr_tf.models.heads import ProjectionHead
      >>> from simclr_tf.models.resnet import ResNet
      >>> from simclr_tf.models.simclr import SimCLRModel
      >>> pretrained = SimCLRModel(ResNet(depth=18, width_multiplier=0.125, cifar_stem=True),
      ...                          ProjectionHead(num_layers=2, out_dim=8))
      >>> _ = pretrained(tf.zeros([1, 16, 16, 3]))  # builds the weights
      >>> classifier = build_classifier(pretrained, num_classes=10, image_size=16, ft_proj_selector=1)
      >>> import tempfile
      >>> export_dir = tempfile.mkdtemp()
      >>> export_saved_model(classifier, export_dir, image_size=16)
      ['initial_conv', 'block_group1', 'block_group2', 'block_group3', 'block_group4', 'final_avg_pool',
       'proj_head_input', 'proj_head_output', 'logits_sup']
      >>> sorted(os.listdir(export_dir))
      ['assets', 'encoder.keras', 'fingerprint.pb', 'model.keras', 'saved_model.pb', 'simclr_tf_export.json',
       'variables']
    """
    if int(image_size) < 1:
        raise ConfigError(f"image_size must be a positive number of pixels, got {image_size!r}.")
    image_size = int(image_size)
    model = online_network(model)  # A pretraining memory (queue, moving-average copy) serves nothing here.
    with _local_batch_norm(model), _absl_verbosity_kept():
        exported = _reusable_saved_model(model, image_size)
        serving = getattr(exported, CALL_ENDPOINT).get_concrete_function()
        tf.saved_model.save(exported, export_dir, signatures={SERVING_SIGNATURE: serving})
    output_names = [name for name in OUTPUT_NAMES if name in serving.structured_outputs]
    model.save(os.path.join(export_dir, MODEL_FILE))
    model.encoder.save(os.path.join(export_dir, ENCODER_FILE))
    metadata = {
        "image_size": image_size,
        "output_names": output_names,
        "model_class": type(model).__name__,
        "serving_signature": SERVING_SIGNATURE,
        "call_endpoint": CALL_ENDPOINT,
        "call_training_endpoint": CALL_TRAINING_ENDPOINT,
        "keras_version": keras.__version__,
        "tensorflow_version": tf.__version__,
    }
    atomic.write_json(os.path.join(export_dir, METADATA_FILE), metadata)
    return output_names


def export_run(model, model_dir, step, image_size, keep_max):
    """Exports to `model_dir/saved_model/<step>/` atomically, keeps the newest `keep_max`; returns the path.

    The export is written to a hidden sibling directory and renamed when complete, so a kill mid-way never
    leaves a partial export under a step's name. Exporting a step again replaces its export.

    Example:
      >>> from simclr_tf.models.heads import ProjectionHead
      >>> from simclr_tf.models.resnet import ResNet
      >>> from simclr_tf.models.simclr import SimCLRModel
      >>> model = SimCLRModel(ResNet(depth=18, width_multiplier=0.125, cifar_stem=True),
      ...                     ProjectionHead(num_layers=2, out_dim=8))
      >>> _ = model(tf.zeros([1, 16, 16, 3]))  # builds the weights
      >>> import tempfile
      >>> model_dir = tempfile.mkdtemp()
      >>> path = export_run(model, model_dir, step=100, image_size=16, keep_max=1)
      >>> os.path.relpath(path, model_dir)
      'saved_model/100'
      >>> path = export_run(model, model_dir, step=200, image_size=16, keep_max=1)  # replaces step 100
      >>> os.listdir(os.path.join(model_dir, "saved_model"))
      ['200']
    """
    if keep_max < 1:
        raise ConfigError(f"keep_max (--keep_hub_module_max) must be at least 1, got {keep_max}; set it to "
                          "the number of SavedModel exports to keep.")
    step = int(step)
    root = run_dir.exports_root(model_dir)
    final = run_dir.export_path(model_dir, step)
    partial = run_dir.partial_export_path(model_dir, step)
    replaced = run_dir.replaced_export_path(model_dir, step)
    os.makedirs(root, exist_ok=True)
    remove_stale_partials(model_dir)  # of runs killed while exporting (the run lock keeps others out)
    try:
        export_saved_model(model, partial, image_size)
    except BaseException as error:
        shutil.rmtree(partial, ignore_errors=True)
        if disk_space.is_disk_full(error):
            raise disk_space.disk_full_error(
                root, _estimated_export_bytes(model, model_dir), f"the SavedModel export of step {step}",
                keep_flag="--keep_hub_module_max") from None
        raise
    if os.path.exists(final):
        os.replace(final, replaced)
    os.replace(partial, final)
    shutil.rmtree(replaced, ignore_errors=True)
    for _, old in list_exports(model_dir)[:-keep_max]:
        shutil.rmtree(old)
    return final


def remove_stale_partials(model_dir):
    """Deletes every unfinished export (`saved_model/.partial-<step>`, `.replaced-<step>`) a killed run
    left, whatever its step; returns their paths. Only the process holding model_dir's lock calls it."""
    stale = run_dir.stale_exports(model_dir)
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
        absl_logging.info("Removed the unfinished export %s of an interrupted run.", path)
    return stale


def _tree_bytes(path):
    return sum(os.path.getsize(os.path.join(folder, name))
               for folder, _, names in os.walk(path) for name in names)


def _estimated_export_bytes(model, model_dir):
    """The size of the newest complete export, or else 6x the model's weights (the SavedModel's
    variables, model.keras, encoder.keras and the graph: 4.1 MB for a ResNet-18 x 0.125's 0.73 MB)."""
    exports = list_exports(model_dir)
    if exports:
        return _tree_bytes(exports[-1][1])
    return 6 * sum(int(v.numpy().nbytes) for v in model.weights)


def _check_export_dir(path):
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"No SavedModel export at {path}. Pass a directory written by simclr_tf.persistence.export "
            f"(model_dir/{EXPORTS_DIR}/<step>); `latest_export(model_dir)` finds a run's newest.")
    if not os.path.isfile(os.path.join(path, METADATA_FILE)):
        newest = latest_export(os.path.dirname(path.rstrip(os.sep))) or latest_export(path)
        hint = f" The newest export there is {newest}." if newest else ""
        raise ConfigError(
            f"{path} is not a simclr_tf export (it has no {METADATA_FILE}). Pass an export directory "
            f"(model_dir/{EXPORTS_DIR}/<step>), or export the model with export_run/export_saved_model."
            + hint)
    return path


def load_exported(path):
    """The `tf.saved_model.load` object of the export at `path`: `obj(images, training=False)` -> dict.

    Example:
      >>> from simclr_tf.models.classifier import build_classifier
      >>> from simclr_tf.models.heads import ProjectionHead
      >>> from simclr_tf.models.resnet import ResNet
      >>> from simclr_tf.models.simclr import SimCLRModel
      >>> pretrained = SimCLRModel(ResNet(depth=18, width_multiplier=0.125, cifar_stem=True),
      ...                          ProjectionHead(num_layers=2, out_dim=8))
      >>> _ = pretrained(tf.zeros([1, 16, 16, 3]))  # builds the weights
      >>> classifier = build_classifier(pretrained, num_classes=10, image_size=16, ft_proj_selector=1)
      >>> import tempfile
      >>> export_dir = tempfile.mkdtemp()
      >>> _ = export_saved_model(classifier, export_dir, image_size=16)
      >>> exported = load_exported(export_dir)
      >>> outputs = exported(tf.zeros([2, 16, 16, 3]), training=False)
      >>> for name in sorted(outputs):
      ...     print(name, outputs[name].shape)
      block_group1 (2, 16, 16, 8)
      block_group2 (2, 8, 8, 16)
      block_group3 (2, 4, 4, 32)
      block_group4 (2, 2, 2, 64)
      final_avg_pool (2, 64)
      initial_conv (2, 16, 16, 8)
      logits_sup (2, 10)
      proj_head_input (2, 64)
      proj_head_output (2, 64)
    """
    return tf.saved_model.load(_check_export_dir(path))


def keras_layer(path, trainable=True, name=None):
    """A Keras 3 `TFSMLayer` on the export at `path`, returning the dict of named outputs.

    Trainable: `fit` fine-tunes its weights (those not frozen at export) and, called with
    `training=True`, its batch norms use batch statistics and update their moving averages. Not
    trainable: it always runs in inference mode, as a frozen Keras layer does. It computes in float32
    whatever the global dtype policy is.

    Example:
      >>> from simclr_tf.models.heads import ProjectionHead
      >>> from simclr_tf.models.resnet import ResNet
      >>> from simclr_tf.models.simclr import SimCLRModel
      >>> pretrained = SimCLRModel(ResNet(depth=18, width_multiplier=0.125, cifar_stem=True),
      ...                          ProjectionHead(num_layers=2, out_dim=8))
      >>> _ = pretrained(tf.zeros([1, 16, 16, 3]))  # builds the weights
      >>> import tempfile
      >>> export_dir = tempfile.mkdtemp()
      >>> _ = export_saved_model(pretrained, export_dir, image_size=16)
      >>> inputs = keras.Input([16, 16, 3])
      >>> features = keras_layer(export_dir, trainable=False)(inputs)["final_avg_pool"]
      >>> classifier = keras.Model(inputs, keras.layers.Dense(3)(features))
      >>> classifier(tf.zeros([2, 16, 16, 3])).shape
      TensorShape([2, 3])
    """
    return keras.layers.TFSMLayer(
        _check_export_dir(path), call_endpoint=CALL_ENDPOINT,
        call_training_endpoint=CALL_TRAINING_ENDPOINT if trainable else None,
        trainable=trainable, name=name, dtype="float32")
