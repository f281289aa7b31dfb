"""Config validation: each refused combination names the problem and the fix."""
import dataclasses
import json

import pytest

from simclr_tf import config as config_lib


def make(**sections):
    base = config_lib.Config(train=config_lib.TrainConfig(model_dir="/tmp/x"))
    return dataclasses.replace(base, **{
        name: dataclasses.replace(getattr(base, name), **values) for name, values in sections.items()})


def test_defaults_are_valid_and_match_reference_defaults():
    cfg = config_lib.validate(make())
    assert cfg.optim.learning_rate == 0.3 and cfg.train.train_batch_size == 512
    assert cfg.train.temperature == 0.1 and cfg.model.num_proj_layers == 3
    assert cfg.distribute.use_tpu is False  # Deliberate difference from the reference.


@pytest.mark.parametrize("sections, fragment", [
    ({"model": {"fine_tune_after_block": 2}}, "--train_mode=finetune"),
    ({"data": {"image_size": 4}}, "--image_size=8 or more"),
    ({"model": {"resnet_depth": 42}}, "--resnet_depth=42"),
    ({"model": {"proj_head_mode": "linear", "ft_proj_selector": 2}}, "from -1 to 1"),
    ({"train": {"model_dir": None}}, "--model_dir is required"),
    ({"train": {"model_dir": "gs://bucket/run"}}, "mount the bucket"),
    ({"train": {"model_dir": "/tmp/x", "train_steps": 0, "train_epochs": 0}}, "--train_steps"),
    ({"distribute": {"tpu_name": "my-tpu"}}, "--use_tpu"),
    ({"train": {"model_dir": "/tmp/x", "train_mode": "finetune", "random_encoder_baseline": True}},
     "Remove the flag"),
    ({"train": {"model_dir": "/tmp/x", "mode": "export", "keep_hub_module_max": 0}}, "set it to 1 or more"),
    ({"optim": {"optimizer": "sgd"}}, "one of ['lars', 'momentum', 'adam']"),
    ({"train": {"precision": "half"}}, "--precision='half' is not one of ['float32', 'mixed_bfloat16', "
                                       "'mixed_float16', 'auto']"),
])
def test_invalid_combinations_are_refused_with_the_fix(sections, fragment):
    with pytest.raises(config_lib.ConfigError, match=None) as error:
        config_lib.validate(make(**sections))
    assert fragment in str(error.value)


def test_no_export_is_a_valid_choice_for_training():
    cfg = config_lib.validate(make(train={"model_dir": "/tmp/x", "keep_hub_module_max": 0}))
    assert cfg.train.keep_hub_module_max == 0


def test_batch_must_divide_over_replicas():
    config_lib.check_batch_divides(512, 4)
    with pytest.raises(config_lib.ConfigError, match="use a multiple of 3, e.g. 510 or 513"):
        config_lib.check_batch_divides(512, 3)


def test_blur_default_follows_image_size():
    assert config_lib.DataConfig(image_size=224).blur
    assert not config_lib.DataConfig(image_size=32).blur
    assert config_lib.DataConfig(image_size=32, use_blur=True).blur


def test_json_round_trip():
    cfg = make(model={"width_multiplier": 0.5}, data={"use_blur": False})
    assert config_lib.Config.from_dict(json.loads(cfg.to_json())) == cfg


def test_checkpoint_interval():
    train = config_lib.TrainConfig(train_batch_size=256, train_epochs=10)
    assert config_lib.steps_per_checkpoint(train, 1000) == 4
    assert config_lib.steps_per_checkpoint(dataclasses.replace(train, checkpoint_steps=3), 1000) == 3


@pytest.mark.parametrize("sections, fragment", [
    ({"optim": {"learning_rate": 0.0}}, "--learning_rate=0.0 must be positive"),
    ({"optim": {"learning_rate": -0.1}}, "--learning_rate=-0.1 must be positive"),
    ({"optim": {"learning_rate": float("nan")}}, "--learning_rate=nan must be positive"),
    # Before: --checkpoint_steps=-1 --train_steps=50 trained nothing and exported an untrained model.
    ({"train": {"model_dir": "/tmp/x", "checkpoint_steps": -1, "train_steps": 50}},
     "--checkpoint_steps=-1 is negative; use a positive number, or 0 to leave it unset (then "
     "--checkpoint_epochs decides)"),
    ({"train": {"model_dir": "/tmp/x", "checkpoint_epochs": -2}}, "--checkpoint_epochs=-2 is negative"),
    ({"train": {"model_dir": "/tmp/x", "train_steps": -5}}, "--train_steps=-5 is negative"),
    ({"train": {"model_dir": "/tmp/x", "train_epochs": -1, "train_steps": 10}},
     "--train_epochs=-1 is negative"),
    ({"train": {"model_dir": "/tmp/x", "log_every_secs": -1.0}}, "--log_every_secs"),
])
def test_values_that_would_train_nothing_are_refused(sections, fragment):
    with pytest.raises(config_lib.ConfigError) as error:
        config_lib.validate(make(**sections))
    assert fragment in str(error.value)
