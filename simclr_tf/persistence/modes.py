"""--mode=convert and --mode=export: runs that only read and write run directories, with no training.

- convert: a reference checkpoint (--checkpoint) becomes `model.keras`, `encoder.keras`, a SavedModel export
  (`saved_model/0`) and `conversion.json` in model_dir.
- export: a SavedModel of the newest checkpoint in model_dir (rebuilt from its `model_config.json`), or
  else of --checkpoint in any format `pretrained.load_trained_model` reads.

Both hold model_dir's run lock while they write, and record `config.json` unless the run has one already.
"""
import os

from absl import logging

from simclr_tf import config as config_lib
from simclr_tf import run_lock
from simclr_tf import run_record
from simclr_tf.persistence import atomic
from simclr_tf.persistence import checkpoints
from simclr_tf.persistence import export as export_lib
from simclr_tf.persistence import pretrained
from simclr_tf.persistence import run_dir
from simclr_tf.persistence.reference import checkpoints as reference_checkpoints

MODES = ("convert", "export")


def run(cfg: config_lib.Config):
    """Runs --mode=convert or --mode=export under model_dir's run lock; returns its result dict."""
    if cfg.train.mode not in MODES:
        raise config_lib.ConfigError(f"persistence.modes runs --mode={' or '.join(MODES)}, not "
                                     f"--mode={cfg.train.mode}; use simclr_tf.train.run for that mode.")
    with run_lock.RunLock(cfg.train.model_dir):
        if run_record.read(cfg.train.model_dir) is None:  # An export keeps the record of its run.
            run_record.write(cfg)
        return convert(cfg) if cfg.train.mode == "convert" else export(cfg)


def convert(cfg: config_lib.Config):
    """Converts a reference checkpoint (--checkpoint) into `model.keras`, `encoder.keras` and a SavedModel
    export (`saved_model/0`) in model_dir."""
    try:
        model, report = reference_checkpoints.load_reference_checkpoint(cfg.train.checkpoint)
    except ValueError as error:
        raise config_lib.ConfigError(str(error)) from error
    logging.info("%s", report.summary())
    model_dir = cfg.train.model_dir
    outputs = [os.path.join(model_dir, name) for name in (run_dir.KERAS_MODEL_FILE, run_dir.ENCODER_FILE)]
    model.save(outputs[0])
    model.encoder.save(outputs[1])
    export_dir = export_lib.export_run(model, model_dir, 0, cfg.data.image_size, cfg.train.keep_hub_module_max)
    result = {"converted_from": cfg.train.checkpoint, "layout": report.layout,
              "architecture": report.architecture, "assigned_weights": report.assigned,
              "ignored_variables": report.ignored, "outputs": outputs + [export_dir]}
    atomic.write_json(run_dir.conversion_path(model_dir), result, indent=2, sort_keys=True)
    return result


def export(cfg: config_lib.Config):
    """--mode=export: a SavedModel of the newest checkpoint in model_dir, or else of --checkpoint."""
    model_dir = cfg.train.model_dir
    latest = run_dir.latest_checkpoint(model_dir)
    config_file = run_dir.model_config_path(model_dir)
    if latest and os.path.isfile(config_file):
        model, image_size = pretrained.model_from_config_file(config_file, compile=False)
        step, source = checkpoints.restore_latest(model, model_dir)  # skips (and names) damaged ones
    elif cfg.train.checkpoint:
        model, image_size, step = pretrained.load_trained_model(cfg.train.checkpoint), cfg.data.image_size, 0
        source = cfg.train.checkpoint
    else:
        raise FileNotFoundError(
            f"Nothing to export: {model_dir} has no checkpoint with its {run_dir.MODEL_CONFIG_FILE}, and "
            "--checkpoint is not set. Point --model_dir at a training run, or pass --checkpoint=PATH.")
    model = getattr(model, "student", model)
    path = export_lib.export_run(model, model_dir, step, image_size, cfg.train.keep_hub_module_max)
    logging.info("Exported %s to %s", source, path)
    return {"exported_from": source, "export_dir": path, "global_step": step}
