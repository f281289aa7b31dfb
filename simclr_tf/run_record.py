"""`model_dir/config.json`, the record of the settings a run's checkpoints were trained with, kept true.

- A resumed run must use the recorded settings: `check_resume_flags` lists, before any work, each flag that
  differs from the record (old and new value) with the fix. Settings that do not change what is trained
  (`OPERATIONAL_FIELDS`: where data lives, logging, evaluation, how long to train, hardware) may differ;
  a changed `--train_steps`/`--train_epochs` lengthens (or shortens) the schedule.
- Fine-tuning and distillation take the encoder and projection head from `--checkpoint`, whatever the
  architecture flags say: `architecture_of` reads the architecture off the model actually built, the run
  warns about each flag that contradicts it, and `config.json` records what was used.
- Only an invocation that trains writes the record (`write`); an eval, or a refused invocation, leaves it.
"""
import dataclasses
import json
import os

from absl import logging

from simclr_tf import config as config_lib
from simclr_tf.models import encoders
from simclr_tf.models.resnet import ResNet
from simclr_tf.persistence import atomic
from simclr_tf.persistence import run_dir

CONFIG_FILE = run_dir.CONFIG_FILE
# Fields a resumed run may change: they say where and how the run executes, not what it trains.
OPERATIONAL_FIELDS = {
    "data": {"data_dir", "eval_split", "cache_dataset", "corrupt_images", "shuffle_buffer", "seed"},
    "train": {"mode", "model_dir", "checkpoint", "train_epochs", "train_steps", "eval_batch_size",
              "eval_steps", "eval_wait_secs", "checkpoint_epochs", "checkpoint_steps", "keep_checkpoint_max",
              "train_summary_steps", "eval_name", "random_encoder_baseline", "seed", "verbose", "precision",
              "jit_compile", "keep_hub_module_max", "variable_schema", "log_every_steps", "log_every_secs",
              # Monitors: what the run reports, not what it trains.
              "knn_eval_epochs", "knn_k", "knn_temperature", "knn_bank_size", "projector_examples"},
    "model": {"zero_init_logits_layer"},  # initialization only
    "distribute": None,  # every field: a run may resume on other hardware.
}
# Model fields a fine-tuning or distillation run takes from --checkpoint rather than from its flags.
CHECKPOINT_ARCHITECTURE_FIELDS = ("backbone", "backbone_args", "resnet_depth", "width_multiplier", "sk_ratio",
                                  "se_ratio", "proj_head_mode", "num_proj_layers", "proj_out_dim")


config_path = run_dir.config_path


def read(model_dir):
    """The recorded `Config`, or None when there is none (fields unknown to this version are dropped)."""
    path = config_path(model_dir)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        values = json.load(f)
    known = {f.name: {g.name for g in dataclasses.fields(f.type)}
             for f in dataclasses.fields(config_lib.Config)}
    return config_lib.Config.from_dict({section: {k: v for k, v in values.get(section, {}).items()
                                                  if k in known[section]} for section in known})


def write(cfg, model_dir=None):
    return atomic.write_text(config_path(model_dir or cfg.train.model_dir), cfg.to_json())


def _takes_architecture_from_checkpoint(cfg):
    return cfg.train.train_mode in ("finetune", "distill") and bool(cfg.train.checkpoint)


def differences(recorded, cfg):
    """`[(flag, recorded value, new value), ...]` of the run-defining settings that differ."""
    found = []
    for section in dataclasses.fields(config_lib.Config):
        allowed = OPERATIONAL_FIELDS.get(section.name, set())
        if allowed is None:
            continue
        old, new = getattr(recorded, section.name), getattr(cfg, section.name)
        for field in dataclasses.fields(old):
            name = field.name
            if name in allowed:
                continue
            if (section.name == "model" and name in CHECKPOINT_ARCHITECTURE_FIELDS
                    and _takes_architecture_from_checkpoint(recorded)):
                continue  # Taken from --checkpoint when the run started; the flags were not used.
            if getattr(old, name) != getattr(new, name):
                found.append((name, getattr(old, name), getattr(new, name)))
    return found


def check_resume_flags(cfg):
    """Raises ConfigError listing every flag that contradicts the run already in model_dir (one with a
    checkpoint and a config.json), with the fix; does nothing for a new run."""
    model_dir = cfg.train.model_dir
    if not run_dir.latest_checkpoint(model_dir):
        return
    recorded = read(model_dir)
    if recorded is None:
        return
    found = differences(recorded, cfg)
    if not found:
        return
    lines = "; ".join(f"--{name}={new!r} (the run has {old!r})" for name, old, new in found)
    raise config_lib.ConfigError(
        f"--model_dir={model_dir} holds a run trained with other settings ({config_path(model_dir)}), and "
        f"resuming it would mix them: {lines}. Resume with the run's values (drop these flags or set them "
        "as recorded), or pass a new --model_dir to start another run. Only --train_steps/--train_epochs "
        "(the schedule's length) and settings such as logging, evaluation and hardware may change.")


def architecture_of(model):
    """The `ModelConfig` architecture fields of a built model (the student of a distillation model).

    Our ResNet gives its depth, width and SK/SE ratios; another encoder (a `KerasEncoder`) its
    `--backbone` name where the model tells it (a keras.applications model's name, a keras-hub class).
    """
    model = getattr(model, "student", model)
    encoder, head = model.encoder, model.projection_head
    used = {"proj_head_mode": head.mode, "num_proj_layers": head.num_layers, "proj_out_dim": head.out_dim}
    if isinstance(encoder, ResNet):
        used.update(backbone=encoders.RESNET, backbone_args="", resnet_depth=encoder.depth,
                    width_multiplier=encoder.width_multiplier, sk_ratio=encoder.sk_ratio,
                    se_ratio=encoder.se_ratio)
    elif isinstance(encoder, encoders.KerasEncoder):
        name = encoders.backbone_name_of(encoder.backbone)
        if name is not None:
            used["backbone"] = name
    return used


def with_architecture_used(cfg, model):
    """`cfg` with the architecture of a fine-tuning or distillation `model` (taken from --checkpoint, or
    from model_config.json when resuming); warns about each --checkpoint flag that said otherwise (the
    flags cannot change a trained encoder, so the checkpoint's architecture wins)."""
    if cfg.train.train_mode not in ("finetune", "distill"):
        return cfg  # Pretraining builds the model from its flags.
    used = architecture_of(model)
    ignored = [(name, getattr(cfg.model, name), value) for name, value in used.items()
               if getattr(cfg.model, name) != value]
    if ignored and cfg.train.checkpoint:
        logging.warning(
            "--checkpoint=%s fixes the architecture, so these flags are ignored: %s. %s records the "
            "architecture used; drop the flags or set them to the checkpoint's values to silence this.",
            cfg.train.checkpoint,
            ", ".join(f"--{name}={flag!r} (the checkpoint has {value!r})" for name, flag, value in ignored),
            CONFIG_FILE)
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **used))


def for_resume(cfg, model_dir):
    """The record of a resumed run: `cfg`, keeping the --checkpoint the run started from (a resume
    ignores --checkpoint, so its value there says nothing about the checkpoints)."""
    recorded = read(model_dir)
    if recorded is None:
        return cfg
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train,
                                                              checkpoint=recorded.train.checkpoint))
