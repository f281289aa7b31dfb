"""config.json stays the record of what a run's checkpoints were trained with: a resume may not contradict
it (except the schedule's length and settings such as logging, evaluation and hardware), and a run that
takes its encoder from --checkpoint records the architecture it used, warning about flags that said
otherwise."""
import dataclasses
import os

import pytest
import tensorflow as tf

from simclr_tf import config as config_lib
from simclr_tf import run_record

TINY_MODEL = config_lib.ModelConfig(resnet_depth=18, width_multiplier=0.125, num_proj_layers=2,
                                    proj_out_dim=16)


def make(model_dir, **train):
    return config_lib.Config(
        data=config_lib.DataConfig(dataset="builtin_shapes", eval_split="test", image_size=16),
        model=TINY_MODEL, optim=config_lib.OptimConfig(optimizer="momentum", learning_rate=0.1),
        train=config_lib.TrainConfig(model_dir=model_dir, train_batch_size=16, train_steps=4,
                                     checkpoint_steps=2, **train))


def replace(cfg, section, **values):
    return dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **values)})


def test_a_resume_lists_each_contradicting_flag_and_allows_a_longer_schedule(tmp_path):
    model_dir = str(tmp_path)
    recorded = make(model_dir)
    run_record.write(recorded)
    assert run_record.read(model_dir) == recorded
    run_record.check_resume_flags(replace(recorded, "optim", optimizer="lars"))  # no checkpoint: a new run
    (tmp_path / "ckpt-00000002.weights.h5").write_bytes(b"")

    longer = replace(replace(recorded, "train", train_steps=10, mode="train_then_eval", verbose=2),
                     "distribute", cpu_replicas=2)
    run_record.check_resume_flags(longer)
    contradicting = replace(replace(replace(recorded, "train", train_batch_size=32), "optim",
                                    optimizer="lars"), "model", width_multiplier=0.25)
    with pytest.raises(config_lib.ConfigError) as error:
        run_record.check_resume_flags(contradicting)
    message = str(error.value)
    for part in ("--width_multiplier=0.25 (the run has 0.125)", "--optimizer='lars' (the run has 'momentum')",
                 "--train_batch_size=32 (the run has 16)", "pass a new --model_dir",
                 "Only --train_steps/--train_epochs"):
        assert part in message, part


def test_finetuning_records_the_architecture_of_its_checkpoint(tmp_path, caplog):
    from simclr_tf import train
    from simclr_tf.models.simclr import build_simclr_model

    pretrained = build_simclr_model(TINY_MODEL, 16, num_classes=0, temperature=0.5, hidden_norm=True,
                                    weight_decay=0.0, optimizer_name="momentum", seed=0)
    pretrained(tf.zeros([1, 16, 16, 3]))
    checkpoint = str(tmp_path / "pretrained.keras")
    pretrained.save(checkpoint)
    cfg = replace(make(str(tmp_path / "run"), train_mode="finetune", checkpoint=checkpoint), "model",
                  resnet_depth=50, width_multiplier=1.0)  # contradicts the checkpoint's 18 x 0.125
    with caplog.at_level("WARNING"):
        ctx = train.RunContext(cfg)
    ctx.release()
    assert ctx.model.encoder.depth == 18
    assert ("--resnet_depth=50 (the checkpoint has 18), --width_multiplier=1.0 (the checkpoint has 0.125)"
            in caplog.text)
    assert ctx.recorded_cfg.model == dataclasses.replace(cfg.model, resnet_depth=18, width_multiplier=0.125)
    assert not os.path.exists(run_record.config_path(cfg.train.model_dir))  # written when training starts


def test_a_resume_keeps_the_checkpoint_the_run_started_from_in_its_record(tmp_path):
    recorded = make(str(tmp_path), train_mode="finetune", checkpoint="/runs/pretrained")
    run_record.write(recorded)
    resumed = replace(recorded, "train", checkpoint=None, train_steps=8)
    assert run_record.for_resume(resumed, str(tmp_path)) == replace(recorded, "train", train_steps=8)


def test_finetuning_a_keras_applications_encoder_records_its_backbone(tmp_path):
    from simclr_tf import train
    from simclr_tf.models.simclr import build_simclr_model

    mobilenet = dataclasses.replace(TINY_MODEL, backbone="MobileNetV3Small",
                                    backbone_args='{"alpha": 0.25, "minimalistic": true}')
    pretrained = build_simclr_model(mobilenet, 32, num_classes=0, temperature=0.5, hidden_norm=True,
                                    weight_decay=0.0, optimizer_name="momentum", seed=0)
    checkpoint = str(tmp_path / "pretrained.keras")
    pretrained.save(checkpoint)
    cfg = replace(replace(make(str(tmp_path / "run"), train_mode="finetune", checkpoint=checkpoint),
                          "data", image_size=32), "model", resnet_depth=50, fine_tune_after_block=4)
    ctx = train.RunContext(cfg)  # the flags say our ResNet-50; the checkpoint holds a MobileNetV3Small
    ctx.release()
    assert ctx.model.encoder.backbone.name == "MobileNetV3Small"
    recorded = ctx.recorded_cfg.model
    assert recorded.backbone == "MobileNetV3Small" and recorded.resnet_depth == 50  # unused, left as given
    assert (recorded.num_proj_layers, recorded.proj_out_dim) == (2, 16)
