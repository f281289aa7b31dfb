"""Flags: the reference's names, defaults from the config dataclasses, and every flag file parses."""
import glob
import os

import pytest
from absl import flags

from simclr_tf import config as config_lib
from simclr_tf import flags as simclr_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Flags of the reference's tf2/run.py (its names must keep working here).
REFERENCE_FLAGS = """learning_rate learning_rate_scaling warmup_epochs weight_decay batch_norm_decay
train_batch_size train_split train_epochs train_steps eval_steps eval_batch_size checkpoint_epochs
checkpoint_steps eval_split dataset cache_dataset mode train_mode lineareval_while_pretraining checkpoint
zero_init_logits_layer fine_tune_after_block master model_dir data_dir use_tpu tpu_name tpu_zone
gcp_project optimizer momentum eval_name keep_checkpoint_max temperature hidden_norm proj_head_mode
proj_out_dim num_proj_layers ft_proj_selector global_bn width_multiplier resnet_depth sk_ratio se_ratio
image_size color_jitter_strength use_blur""".split()


def parse(argv):
    values = flags.FlagValues()
    simclr_flags.define_flags(values)
    values(["run.py"] + argv)
    return values


def test_every_reference_flag_exists():
    values = parse([])
    missing = [name for name in REFERENCE_FLAGS if name not in values]
    assert not missing


def test_defaults_come_from_the_config():
    cfg = simclr_flags.config_from_flags(parse(["--model_dir=/tmp/m"]))
    assert cfg == config_lib.Config(train=config_lib.TrainConfig(model_dir="/tmp/m"))


def test_reference_cifar_command_line():
    argv = ("--train_mode=pretrain --train_batch_size=512 --train_epochs=1000 --learning_rate=1.0 "
            "--weight_decay=1e-4 --temperature=0.5 --dataset=cifar10 --image_size=32 --eval_split=test "
            "--resnet_depth=18 --use_blur=False --color_jitter_strength=0.5 "
            "--model_dir=/tmp/simclr_test --use_tpu=False").split()
    cfg = simclr_flags.config_from_flags(parse(argv))
    assert cfg.data.dataset == "cifar10" and cfg.data.cifar_stem and not cfg.data.blur
    assert cfg.model.resnet_depth == 18 and cfg.optim.weight_decay == 1e-4


def test_precision_and_jit_flags():
    cfg = simclr_flags.config_from_flags(parse(["--model_dir=/tmp/m", "--precision=mixed_bfloat16",
                                                "--jit_compile"]))
    assert cfg.train.precision == "mixed_bfloat16" and cfg.train.jit_compile
    with pytest.raises(flags.IllegalFlagValueError, match="mixed_float16"):
        parse(["--precision=half"])


def test_invalid_flags_raise_config_error():
    with pytest.raises(config_lib.ConfigError, match="fine_tune_after_block"):
        simclr_flags.config_from_flags(parse(["--model_dir=/tmp/m", "--fine_tune_after_block=1"]))


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "flags", "*.flags"))))
def test_flag_files_parse_and_open_with_a_comment(path):
    with open(path) as f:
        first = f.readline()
    assert first.startswith("# ")
    with open(path) as f:
        distill = "--train_mode=distill\n" in f.read()
    teacher = ["--teacher_checkpoint=/tmp/teacher"] if distill else []  # a distillation needs one
    cfg = simclr_flags.config_from_flags(parse([f"--flagfile={path}", "--model_dir=/tmp/m", *teacher]))
    assert cfg.train.train_batch_size > 0
