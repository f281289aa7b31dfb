"""Load checkpoints of the reference SimCLR (google-research/simclr, TF2 and TF1) into simclr_tf models.

Example:
    model, report = load_reference_checkpoint("/path/to/ckpt-1000")   # or a SavedModel directory
    print(report.summary())
    outputs = model(images, training=False)    # {"final_avg_pool", "proj_head_output", "logits_sup"}

Three layouts are read, all by variable name (`tf.train.load_checkpoint`):
- "tf2_checkpoint": what `tf2/run.py` writes with `tf.train.Checkpoint(model=..., global_step=...,
  optimizer=...)`; optimizer slots, `global_step` and `save_counter` are ignored.
- "tf2_saved_model": the `variables/` of a SavedModel written by `tf2/run.py` (`build_saved_model`), where
  the trainable weights are stored as `trainable_variables_list/<i>` and the BN moving statistics as
  `model/<part>/variables/<j>`; these indices follow the tf.keras 2 weight order that
  `reference_weight_names` reproduces.
- "tf1_checkpoint": what the TF1 reference (top-level run.py, tf.compat.v1.layers) writes, and the
  `variables/` of its TF-Hub modules: `base_model/conv2d_<n>/kernel`, `head_contrastive/nl_<j>/...`,
  `head_supervised/linear_layer/dense/...`; optimizer slots (`.../Momentum`) and `global_step` are ignored.
"""
import dataclasses
import os
import re

import numpy as np
import tensorflow as tf

from simclr_tf.models.heads import ProjectionHead
from simclr_tf.models.resnet import ResNet
from simclr_tf.models.simclr import SimCLRModel
from simclr_tf.persistence.reference.names import (VALUE_SUFFIX, detect_architecture,
                                                   detect_saved_model_architecture, detect_tf1_architecture,
                                                   detect_tf2_architecture, is_tf1_checkpoint,
                                                   reference_tf1_weight_names, reference_weight_names,
                                                   strip_suffix)

__all__ = ["LoadReport", "build_model_for", "detect_architecture", "load_reference_checkpoint"]
REFERENCE_BN_MOMENTUM = 0.9
REFERENCE_BN_EPSILON = 1e-5
_IGNORED = re.compile(r"(OPTIMIZER_SLOT|^optimizer/|^(global_step|save_counter|_CHECKPOINTABLE_OBJECT_GRAPH)$)")
_TF1_LEAVES = ("kernel", "bias", "gamma", "beta", "moving_mean", "moving_variance")
_SAVED_MODEL_TRAINABLE = re.compile(r"^trainable_variables_list/(\d+)$")
_SAVED_MODEL_PART = re.compile(r"^model/(resnet_model|_projection_head|supervised_head)/variables/(\d+)$")


@dataclasses.dataclass
class LoadReport:
    """What `load_reference_checkpoint` did: every checkpoint variable and every model weight is accounted for.

    unplaced: checkpoint keys that no model weight takes; unset: model weights (by path, with the key they
    expected) that no checkpoint variable filled; shape_mismatches: (key, checkpoint shape, model shape),
    not assigned; ignored: keys that are not model weights (optimizer slots, step counters).
    """

    path: str
    layout: str
    architecture: dict
    assigned: int = 0
    unplaced: list = dataclasses.field(default_factory=list)
    unset: list = dataclasses.field(default_factory=list)
    shape_mismatches: list = dataclasses.field(default_factory=list)
    ignored: list = dataclasses.field(default_factory=list)

    @property
    def complete(self):
        return not (self.unplaced or self.unset or self.shape_mismatches)

    def summary(self):
        lines = [f"{self.path} ({self.layout}): architecture {self.architecture}",
                 f"assigned {self.assigned} weights (BN moving statistics included), shapes checked; "
                 f"ignored {len(self.ignored)} non-model variables (optimizer slots, counters)."]
        for title, items in (("checkpoint variables not placed", self.unplaced),
                             ("model weights left unset", self.unset),
                             ("shape mismatches (not assigned)", self.shape_mismatches)):
            if items:
                shown = "\n  ".join(str(item) for item in items[:20])
                more = f"\n  ... and {len(items) - 20} more" if len(items) > 20 else ""
                lines.append(f"{len(items)} {title}:\n  {shown}{more}")
        return "\n".join(lines)


def _resolve(path):
    """(checkpoint prefix, layout guess) from a checkpoint prefix, a directory with checkpoints, or a SavedModel /
    TF-Hub module directory; the caller tells TF1 names from TF2 ones."""
    saved_model_variables = os.path.join(path, "variables", "variables")
    if tf.io.gfile.exists(saved_model_variables + ".index"):
        return saved_model_variables, "tf2_saved_model"
    if tf.io.gfile.isdir(path):
        latest = tf.train.latest_checkpoint(path)
        if latest is None:
            raise FileNotFoundError(f"No checkpoint in directory {path!r}: pass a checkpoint prefix such as "
                                    f"'{path}/ckpt-1000' or a SavedModel directory (with variables/).")
        return latest, "tf2_checkpoint"
    if not tf.io.gfile.exists(path + ".index"):
        raise FileNotFoundError(f"No checkpoint at {path!r} (no {path}.index): pass the checkpoint prefix, "
                                "its directory, or a SavedModel directory.")
    return path, "tf2_checkpoint"


def build_model_for(architecture, ft_proj_selector=0, image_size=None):
    """A built `SimCLRModel` with the detected architecture (reference BN settings, no global BN)."""
    bn = dict(bn_momentum=REFERENCE_BN_MOMENTUM, bn_epsilon=REFERENCE_BN_EPSILON, global_bn=False)
    encoder = ResNet(depth=architecture["depth"], width_multiplier=architecture["width_multiplier"],
                     cifar_stem=architecture["cifar_stem"], sk_ratio=architecture["sk_ratio"],
                     se_ratio=architecture["se_ratio"], **bn)
    head = ProjectionHead(mode=architecture["proj_head_mode"], num_layers=max(1, architecture["num_proj_layers"]),
                          out_dim=architecture["proj_out_dim"], ft_proj_selector=ft_proj_selector, **bn)
    model = SimCLRModel(encoder, head, num_classes=architecture["num_classes"])
    size = image_size or (32 if architecture["cifar_stem"] else 64)
    model(tf.zeros([1, size, size, 3]), training=False)
    return model


def _saved_model_names(model, shape_map):
    """{SavedModel key: reference key} from the tf.keras 2 order of the reference's weights."""
    named = reference_weight_names(model)
    trainable = [key for key, variable, _ in named if variable.trainable]
    by_part = {}
    for key, variable, part in named:
        by_part.setdefault(part, {True: [], False: []})[variable.trainable].append(key)
    translation = {}
    for key in shape_map:
        bare = strip_suffix(key)
        match = _SAVED_MODEL_TRAINABLE.match(bare)
        if match and int(match.group(1)) < len(trainable):
            translation[key] = trainable[int(match.group(1))]
            continue
        match = _SAVED_MODEL_PART.match(bare)
        if match:
            part, index = match.group(1), int(match.group(2))
            ordered = by_part.get(part, {True: [], False: []})
            ordered = ordered[True] + ordered[False]
            if index < len(ordered):
                translation[key] = ordered[index]
    return translation


def load_reference_checkpoint(path, allow_partial=False, architecture=None, ft_proj_selector=0,
                              image_size=None):
    """Builds the `SimCLRModel` a reference checkpoint (TF2 or TF1 layout) describes and assigns all its weights.

    Args:
        path: checkpoint prefix, directory of checkpoints (newest is read), or SavedModel / TF-Hub module
            directory (its variables/ are read).
        allow_partial: return the model even when some variables could not be placed or weights set.
        architecture: skip detection (a dict as `detect_architecture` returns; `assumed` may be left out).
        ft_proj_selector: which projection-head hidden feeds the supervised head (names cannot tell; the
            reference default 0 is the encoder output).
        image_size: size of the zeros batch the model is built on (default 32 for the CIFAR stem, else 64).

    Returns:
        (model, LoadReport).

    Raises:
        FileNotFoundError: `path` holds no checkpoint.
        ValueError: names what is missing, unless the load is complete or `allow_partial=True`.

    Example:
        A tiny checkpoint under the reference's TF2 names (what `tf2/run.py` would write for this
        architecture), made from a simclr_tf model's weights, is read back into an identical model:

        >>> import tempfile
        >>> source = SimCLRModel(ResNet(depth=18, width_multiplier=0.125, cifar_stem=True),
        ...                      ProjectionHead(num_layers=2, out_dim=8), num_classes=10)
        >>> images = tf.random.uniform([2, 16, 16, 3])
        >>> expected = source(images, training=False)
        >>> weights = {name + VALUE_SUFFIX: variable for name, variable, _ in reference_weight_names(source)}
        >>> prefix = os.path.join(tempfile.mkdtemp(), "ckpt-100")
        >>> tf.raw_ops.SaveV2(prefix=prefix, tensor_names=list(weights), shape_and_slices=[""] * len(weights),
        ...                   tensors=list(weights.values()))
        >>> model, report = load_reference_checkpoint(prefix, image_size=16)
        >>> report.layout, report.complete, report.assigned
        ('tf2_checkpoint', True, 116)
        >>> [report.architecture[key] for key in ("depth", "width_multiplier", "cifar_stem", "num_classes")]
        [18, 0.125, True, 10]
        >>> outputs = model(images, training=False)
        >>> all(np.allclose(outputs[name], expected[name], atol=1e-6) for name in expected)
        True
        >>> load_reference_checkpoint(os.path.join(tempfile.mkdtemp(), "ckpt-1"))
        Traceback (most recent call last):
        ...
        FileNotFoundError: No checkpoint at '.../ckpt-1' (no .../ckpt-1.index): pass the checkpoint prefix,
        its directory, or a SavedModel directory.
    """
    prefix, layout = _resolve(path)
    reader = tf.train.load_checkpoint(prefix)
    shape_map = reader.get_variable_to_shape_map()
    if is_tf1_checkpoint(shape_map):
        layout = "tf1_checkpoint"
        ignored = sorted(key for key in shape_map
                         if key == "global_step" or key.rsplit("/", 1)[-1] not in _TF1_LEAVES)
    else:
        ignored = sorted(key for key in shape_map if _IGNORED.search(strip_suffix(key)))
    candidates = {key: shape for key, shape in shape_map.items() if key not in set(ignored)}
    if architecture is None:
        detect = {"tf2_saved_model": detect_saved_model_architecture, "tf1_checkpoint": detect_tf1_architecture,
                  "tf2_checkpoint": detect_tf2_architecture}[layout]
        architecture = detect(candidates)
    model = build_model_for(architecture, ft_proj_selector=ft_proj_selector, image_size=image_size)
    if layout == "tf2_saved_model":
        translation = _saved_model_names(model, candidates)
    else:
        translation = {key: strip_suffix(key) for key in candidates}
    names = reference_tf1_weight_names(model) if layout == "tf1_checkpoint" else reference_weight_names(model)
    suffix = "" if layout == "tf1_checkpoint" else VALUE_SUFFIX
    by_reference_key = {reference: key for key, reference in translation.items()}
    report = LoadReport(path=path, layout=layout, architecture=architecture, ignored=ignored)
    placed = set()
    for reference_key, variable, _ in names:
        key = by_reference_key.get(reference_key)
        if key is None:
            report.unset.append(f"{variable.path} (expected checkpoint key {reference_key}{suffix})")
            continue
        placed.add(key)
        value = reader.get_tensor(key)
        if tuple(value.shape) != tuple(variable.shape):
            report.shape_mismatches.append((key, tuple(value.shape), tuple(variable.shape)))
            continue
        variable.assign(np.asarray(value, dtype=variable.dtype))
        report.assigned += 1
    report.unplaced = sorted(key for key in candidates if key not in placed)
    if not report.complete and not allow_partial:
        raise ValueError(f"Refusing to return a partly loaded model.\n{report.summary()}\n"
                         "Fix: check that the checkpoint is a reference SimCLR tf2 model of the detected "
                         "architecture (or pass architecture=...), or pass allow_partial=True to get the "
                         "model and this report anyway.")
    return model, report
