"""Command-line flags (the reference's names) and the one place they become a `Config`.

Defaults are not repeated here: each flag takes the default of its dataclass field in `config.py`.
"""
import dataclasses
import typing

from absl import flags
from absl import logging

from simclr_tf import config as config_lib

# (section, flag name, help). The flag's type and default come from the dataclass field.
_FLAG_HELP = [
    # Data.
    ("data", "dataset", "A TFDS name (cifar10, imagenet2012, stl10, ...), 'builtin_shapes' (generated, "
                        "no download), or a folder of images (class subfolders give labels)."),
    ("data", "data_dir", "Where TFDS keeps its data."),
    ("data", "train_split", "Split to train on (TFDS slicing such as train[:10%] works)."),
    ("data", "eval_split", "Split to evaluate on."),
    ("data", "image_size", "Input image size. 32 or less uses the CIFAR stem (3x3 conv, no max-pool)."),
    ("data", "color_jitter_strength", "Strength s of colour jitter (brightness/contrast/saturation 0.8s, "
                                      "hue 0.2s)."),
    ("data", "color_jitter_impl", "simclrv2: multiplicative brightness; simclrv1: additive."),
    ("data", "use_blur", "Gaussian blur in pretraining views. Default: on for images above 32 px, off for "
                         "CIFAR-sized images (the paper's CIFAR setup)."),
    ("data", "cache_dataset", "Cache the decoded dataset in memory (small datasets only)."),
    ("data", "corrupt_images", "What to do with an unreadable image in a folder: skip it (logged by path) "
                               "or fail."),
    ("data", "shuffle_buffer", "Examples in the shuffle buffer."),
    ("data", "seed", "Seed of the input pipeline (augmentations, shuffling). Unset: a fresh one per run."),
    ("data", "label_fraction", "Fine-tuning and distillation: train on this fraction of the labels, "
                               "drawn class-balanced and seeded (--seed, else 0); the chosen ids go to "
                               "model_dir/label_subset.json. 1 uses every label."),
    ("data", "labels_per_class", "Like --label_fraction, but this many labelled examples per class."),
    # Crop box sampler (issue 17).
    ("data", "crop_impl", "Random crop's box distribution. reference: as the reference's "
                          "tf.image.sample_distorted_bounding_box (aspect uniform, box height uniform, 100 "
                          "attempts, whole image if none fits); uniform_area: area uniform, aspect "
                          "log-uniform, 10 attempts (the paper's text)."),
    # Model.
    ("model", "resnet_depth", "Depth of the ResNet: 18, 34, 50, 101, 152 or 200."),
    ("model", "width_multiplier", "Width multiplier of the ResNet (fractions such as 0.5 work too)."),
    ("model", "sk_ratio", "Selective kernels when above 0 (SimCLR v2 uses 0.0625)."),
    ("model", "se_ratio", "Squeeze-and-excite when above 0."),
    ("model", "batch_norm_decay", "Batch norm moving-average decay (momentum)."),
    ("model", "batch_norm_epsilon", "Batch norm epsilon."),
    ("model", "global_bn", "Synchronize batch norm statistics across all replicas."),
    ("model", "proj_head_mode", "Projection head: none, linear or nonlinear."),
    ("model", "proj_out_dim", "Output dimension of the projection head."),
    ("model", "num_proj_layers", "Number of layers of the nonlinear projection head."),
    ("model", "ft_proj_selector", "Which projection layer feeds the classifier: 0 the encoder output, "
                                  "-1 the last layer."),
    ("model", "zero_init_logits_layer", "Zero-initialize the classifier."),
    ("model", "fine_tune_after_block", "When fine-tuning, train only what comes after this block: -1 "
                                       "everything, 0 after the stem, 4 the head only."),
    # Any Keras encoder (simclr_tf/models/encoders.py).
    ("model", "backbone", "The encoder: resnet (ours: --resnet_depth, --width_multiplier, ...), a "
                          "keras.applications model by name (MobileNetV3Small, ResNet50, EfficientNetB0, "
                          "...; random weights) or, with keras-hub installed, a keras-hub backbone class "
                          "(ResNetBackbone, ViTBackbone, ...) built from --backbone_args."),
    ("model", "backbone_args", "Keyword arguments of --backbone as a JSON object, e.g. "
                               "'{\"alpha\": 0.5}' for MobileNetV3Small."),
    # Optimization.
    ("optim", "optimizer", "lars, momentum or adam."),
    ("optim", "learning_rate", "Learning rate per 256 examples (linear scaling) or per sqrt(batch)."),
    ("optim", "learning_rate_scaling", "linear: lr x batch/256; sqrt: lr x sqrt(batch)."),
    ("optim", "warmup_epochs", "Epochs of linear warmup before the cosine decay."),
    ("optim", "momentum", "Momentum."),
    ("optim", "weight_decay", "Weight decay (added to the gradient inside LARS; an L2 loss otherwise)."),
    # Training.
    ("train", "mode", "train, eval (evaluate the newest checkpoint in model_dir), train_then_eval, "
                      "export (a SavedModel of the newest checkpoint, or of --checkpoint), or convert (a "
                      "reference TF1/TF2 checkpoint or SavedModel given by --checkpoint into "
                      "model_dir/model.keras and encoder.keras)."),
    ("train", "train_mode", "pretrain (SimCLR), finetune (a classifier on a pretrained encoder given by "
                            "--checkpoint; with --fine_tune_after_block=4 the linear evaluation "
                            "protocol), or distill (a student learns a teacher's predictions)."),
    ("train", "model_dir", "Where checkpoints, summaries, config.json and result.json are written."),
    ("train", "checkpoint", "A checkpoint to start from when model_dir has none yet."),
    ("train", "train_batch_size", "Global batch size (images; each gives two views), split over replicas."),
    ("train", "train_epochs", "Epochs to train for."),
    ("train", "train_steps", "Steps to train for; overrides train_epochs when set."),
    ("train", "eval_batch_size", "Batch size for evaluation."),
    ("train", "eval_steps", "Evaluation steps; 0 evaluates the whole split."),
    ("train", "eval_wait_secs", "With --mode=eval, keep watching model_dir and evaluate each new "
                                "checkpoint until one reaches the last training step or none arrives for "
                                "this many seconds (0: evaluate the newest checkpoint and stop)."),
    ("train", "checkpoint_epochs", "Epochs between checkpoints and summaries."),
    ("train", "checkpoint_steps", "Steps between checkpoints; overrides checkpoint_epochs when set."),
    ("train", "keep_checkpoint_max", "Checkpoints to keep."),
    ("train", "train_summary_steps", "Write training scalars to TensorBoard every this many steps; 0 "
                                     "writes them at each checkpoint."),
    ("train", "temperature", "Temperature of the NT-Xent loss."),
    ("train", "hidden_norm", "L2-normalize projections before the contrastive loss."),
    ("train", "lineareval_while_pretraining", "Train a linear classifier on frozen features while "
                                              "pretraining (its top-1 is the reported accuracy)."),
    ("train", "eval_name", "Name of the evaluation (its results go to result_<name>.json)."),
    ("train", "random_encoder_baseline", "After evaluation, also fit an offline linear probe on frozen "
                                         "features of the trained encoder and of a randomly initialized "
                                         "one (small datasets: it embeds the whole train split)."),
    ("train", "seed", "Seed of model initialization."),
    ("train", "verbose", "Training progress: 0 silent, 1 a progress bar on a terminal (elsewhere log "
                         "lines, see --log_every_secs), 2 log lines always. Both give the run's step "
                         "out of its total, time per step, steps/s and the time left."),
    ("train", "precision", "Numeric precision: float32, mixed_bfloat16 or mixed_float16 (computations in "
                           "16 bits, variables, batch norm statistics and losses in float32; float16 adds "
                           "dynamic loss scaling), or auto: mixed_float16 on GPUs of compute capability "
                           "7.0 or more, mixed_bfloat16 on a TPU or a CPU with avx512_bf16/amx_bf16, "
                           "float32 otherwise (the choice is logged)."),
    ("train", "jit_compile", "Compile the training step with XLA. Off by default: it can be slower on "
                             "CPUs (a ResNet-18 step took 2.1x as long on a 2-core CPU)."),
    ("train", "grad_accum_steps", "Split each replica's share of the batch into this many micro-batches, "
                                  "run them one after the other and apply the mean of their gradients in "
                                  "one step: the activation memory of a k times smaller batch, with steps, "
                                  "epochs and the schedule unchanged. NT-Xent negatives and batch-norm "
                                  "statistics come only from within a micro-batch, so it is not a bigger "
                                  "contrastive batch. Pretraining, fine-tuning and distillation."),
    ("train", "keep_hub_module_max", "SavedModel exports (model_dir/saved_model/<step>) to keep; training "
                                     "exports when it ends, unless this is 0."),
    ("train", "teacher_checkpoint", "Distillation: the fine-tuned teacher (a fine-tuning run's "
                                    "checkpoint, .keras file or exported SavedModel, or a released "
                                    "fine-tuned checkpoint)."),
    ("train", "distill_temperature", "Distillation: temperature of the teacher's and student's softmax."),
    ("train", "distill_label_weight", "Distillation: weight of the cross-entropy on true labels (the "
                                      "distillation loss gets 1 minus it); 0 uses no labels."),
    ("train", "variable_schema", "Accepted for the reference's command lines and otherwise unused: the "
                                 "encoder and kept projection layers are restored from --checkpoint, "
                                 "never a classifier or optimizer state."),
    # Progress reporting (issue 13).
    ("train", "log_every_steps", "Progress log lines (--verbose=2, or 1 off a terminal): one every this "
                                 "many steps (0: by time only)."),
    ("train", "log_every_secs", "Progress log lines: one every this many seconds (0: by step count only)."),
    # kNN monitor and embedding projector.
    ("train", "knn_eval_epochs", "Pretraining on labelled data: every this many epochs and at the end, the "
                                 "weighted kNN top-1/top-5 (Wu et al. 2018) of the eval split against a "
                                 "bank of training images, in the log, TensorBoard and result.json "
                                 "(--mode=eval too); 0 turns it off."),
    ("train", "knn_k", "kNN monitor: neighbours that vote."),
    ("train", "knn_temperature", "kNN monitor: a neighbour votes with weight exp(cosine similarity / this)."),
    ("train", "knn_bank_size", "kNN monitor: the first this many training images form the labelled bank "
                               "(0: all of them)."),
    ("train", "projector_examples", "At the end of pretraining, export the embeddings of this many eval "
                                    "images (with labels and a sprite) for TensorBoard's projector, in "
                                    "model_dir/projector; 0 turns it off."),
    # Large contrastive batches (issue 12).
    ("train", "contrastive_chunks", "Pretraining: compute each step in this many chunks of each replica's "
                                    "batch with cached gradients (GradCache): NT-Xent still sees the whole "
                                    "global batch's negatives, the activation memory is a chunk's, and a "
                                    "step costs one extra forward pass. Batch norm normalizes each chunk "
                                    "with its own statistics (ghost batch norm). 1: off. Not with "
                                    "--grad_accum_steps."),
    ("train", "memory_size", "Pretraining: the SimCLR v2 memory, a queue of the last this many projections "
                             "(both views of each global batch, gathered over replicas) of a moving-average "
                             "copy of encoder and projection head, used as extra NT-Xent negatives for both "
                             "views. Empty slots are masked until it fills. At least twice "
                             "--train_batch_size; 0: off. Costs one extra forward pass of the copy per step."),
    ("train", "memory_momentum", "Pretraining with --memory_size: the copy's weights follow the online "
                                 "network's as copy = m * copy + (1 - m) * online after each step; 0 copies "
                                 "it (a memory bank of recent projections)."),
    # Distribution.
    ("distribute", "use_tpu", "Train on a Cloud TPU (off by default: GPUs and CPUs need nothing)."),
    ("distribute", "tpu_name", "The Cloud TPU to use."),
    ("distribute", "tpu_zone", "GCE zone of the Cloud TPU."),
    ("distribute", "gcp_project", "GCP project of the Cloud TPU."),
    ("distribute", "master", "Address of the TPU master when tpu_name is not given."),
    ("distribute", "cpu_replicas", "Split the CPU into this many logical devices and train under "
                                   "MirroredStrategy over them: the multi-replica code path without "
                                   "GPUs (for testing; 0 leaves the CPU whole)."),
]

_ENUMS = {
    "mode": config_lib.MODES,
    "train_mode": config_lib.TRAIN_MODES,
    "optimizer": config_lib.OPTIMIZERS,
    "learning_rate_scaling": config_lib.LEARNING_RATE_SCALINGS,
    "proj_head_mode": config_lib.PROJ_HEAD_MODES,
    "corrupt_images": config_lib.CORRUPT_IMAGE_POLICIES,
    "color_jitter_impl": config_lib.COLOR_JITTER_IMPLS,
    "crop_impl": config_lib.CROP_IMPLS,  # issue 17
    "precision": config_lib.PRECISIONS,
}

_SECTION_TYPES = {f.name: f.type for f in dataclasses.fields(config_lib.Config)}


def _field(section, name):
    for field in dataclasses.fields(_SECTION_TYPES[section]):
        if field.name == name:
            return field
    raise KeyError(f"{section}.{name}")


def _base_type(annotation):
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if args else annotation


def define_flags(flag_values=flags.FLAGS):
    """Defines every flag of `_FLAG_HELP` on `flag_values` (idempotent)."""
    for section, name, help_text in _FLAG_HELP:
        if name in flag_values:
            continue
        field = _field(section, name)
        kind = _base_type(field.type)
        if name in _ENUMS:
            flags.DEFINE_enum(name, field.default, list(_ENUMS[name]), help_text, flag_values=flag_values)
        elif kind is bool:
            flags.DEFINE_bool(name, field.default, help_text, flag_values=flag_values)
        elif kind is int:
            flags.DEFINE_integer(name, field.default, help_text, flag_values=flag_values)
        elif kind is float:
            flags.DEFINE_float(name, field.default, help_text, flag_values=flag_values)
        else:
            flags.DEFINE_string(name, field.default, help_text, flag_values=flag_values)


def config_from_flags(flag_values=flags.FLAGS) -> config_lib.Config:
    """Builds, validates and logs the run's Config from parsed flags."""
    sections = {section: {} for section in _SECTION_TYPES}
    for section, name, _ in _FLAG_HELP:
        sections[section][name] = flag_values[name].value
    cfg = config_lib.Config(**{s: _SECTION_TYPES[s](**values) for s, values in sections.items()})
    config_lib.validate(cfg)
    logging.info("Configuration:\n%s", cfg.to_json())
    return cfg
