"""Run configuration: frozen dataclasses, one per concern, and the rules that span fields.

Field names are the reference's flag names, so `config.json` reads like the command line that made it.
Library code takes the slice it needs (`cfg.data`, `cfg.model`, ...) and never sees absl flags.
"""
import dataclasses
import json
import math
from typing import Optional

MODES = ("train", "eval", "train_then_eval", "convert")
TRAIN_MODES = ("pretrain",)
OPTIMIZERS = ("lars", "momentum", "adam")
LEARNING_RATE_SCALINGS = ("linear", "sqrt")
PROJ_HEAD_MODES = ("none", "linear", "nonlinear")
RESNET_DEPTHS = (18, 34, 50, 101, 152, 200)
CORRUPT_IMAGE_POLICIES = ("skip", "fail")
COLOR_JITTER_IMPLS = ("simclrv1", "simclrv2")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16", "auto")
CIFAR_STEM_MAX_SIZE = 32
MIN_IMAGE_SIZE = 8


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the problem and the fix."""


@dataclasses.dataclass(frozen=True)
class DataConfig:
    dataset: str = "imagenet2012"
    data_dir: Optional[str] = None
    train_split: str = "train"
    eval_split: str = "validation"
    image_size: int = 224
    color_jitter_strength: float = 1.0
    color_jitter_impl: str = "simclrv2"
    use_blur: Optional[bool] = None  # None: on for images larger than 32 px, as in the paper.
    cache_dataset: bool = False
    corrupt_images: str = "skip"
    shuffle_buffer: int = 10000
    seed: Optional[int] = None

    @property
    def blur(self) -> bool:
        """Whether pretraining views are blurred: the flag, or the paper's default for the image size."""
        if self.use_blur is None:
            return self.image_size > CIFAR_STEM_MAX_SIZE
        return self.use_blur

    @property
    def cifar_stem(self) -> bool:
        return self.image_size <= CIFAR_STEM_MAX_SIZE


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    resnet_depth: int = 50
    width_multiplier: float = 1.0
    sk_ratio: float = 0.0
    se_ratio: float = 0.0
    batch_norm_decay: float = 0.9
    batch_norm_epsilon: float = 1e-5
    global_bn: bool = True
    proj_head_mode: str = "nonlinear"
    proj_out_dim: int = 128
    num_proj_layers: int = 3
    ft_proj_selector: int = 0
    zero_init_logits_layer: bool = False
    fine_tune_after_block: int = -1


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    optimizer: str = "lars"
    learning_rate: float = 0.3
    learning_rate_scaling: str = "linear"
    warmup_epochs: float = 10
    momentum: float = 0.9
    weight_decay: float = 1e-6


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    mode: str = "train"
    train_mode: str = "pretrain"
    model_dir: Optional[str] = None
    checkpoint: Optional[str] = None
    train_batch_size: int = 512
    train_epochs: int = 100
    train_steps: int = 0
    eval_batch_size: int = 256
    eval_steps: int = 0
    eval_wait_secs: int = 0
    checkpoint_epochs: int = 1
    checkpoint_steps: int = 0
    keep_checkpoint_max: int = 5
    train_summary_steps: int = 0
    temperature: float = 0.1
    hidden_norm: bool = True
    lineareval_while_pretraining: bool = True
    eval_name: Optional[str] = None
    random_encoder_baseline: bool = False
    seed: Optional[int] = None
    verbose: int = 2
    precision: str = "float32"
    jit_compile: bool = False


@dataclasses.dataclass(frozen=True)
class DistributeConfig:
    use_tpu: bool = False
    tpu_name: Optional[str] = None
    tpu_zone: Optional[str] = None
    gcp_project: Optional[str] = None
    master: Optional[str] = None
    cpu_replicas: int = 0  # Split the CPU into this many devices under MirroredStrategy (testing).


@dataclasses.dataclass(frozen=True)
class Config:
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    distribute: DistributeConfig = DistributeConfig()

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict) -> "Config":
        sections = {f.name: f.type for f in dataclasses.fields(cls)}
        return cls(**{name: sections[name](**values.get(name, {})) for name in sections})


def _choice(value, allowed, flag):
    if value not in allowed:
        raise ConfigError(f"--{flag}={value!r} is not one of {list(allowed)}; pick one of them.")


def _positive(value, flag):
    if value <= 0:
        raise ConfigError(f"--{flag}={value} must be positive.")


def validate(cfg: Config) -> Config:
    """Checks every rule that spans fields; raises ConfigError naming the problem and the fix."""
    data, model, optim, train = cfg.data, cfg.model, cfg.optim, cfg.train
    _choice(train.mode, MODES, "mode")
    _choice(train.train_mode, TRAIN_MODES, "train_mode")
    _choice(optim.optimizer, OPTIMIZERS, "optimizer")
    _choice(optim.learning_rate_scaling, LEARNING_RATE_SCALINGS, "learning_rate_scaling")
    _choice(model.proj_head_mode, PROJ_HEAD_MODES, "proj_head_mode")
    _choice(model.resnet_depth, RESNET_DEPTHS, "resnet_depth")
    _choice(data.corrupt_images, CORRUPT_IMAGE_POLICIES, "corrupt_images")
    _choice(data.color_jitter_impl, COLOR_JITTER_IMPLS, "color_jitter_impl")
    _choice(train.precision, PRECISIONS, "precision")
    _positive(train.train_batch_size, "train_batch_size")
    _positive(train.eval_batch_size, "eval_batch_size")
    _positive(model.width_multiplier, "width_multiplier")
    _positive(train.temperature, "temperature")
    _positive(train.keep_checkpoint_max, "keep_checkpoint_max")
    if train.train_steps <= 0 and train.train_epochs <= 0:
        raise ConfigError("Neither --train_steps nor --train_epochs is positive; set one of them.")
    if train.checkpoint_steps <= 0 and train.checkpoint_epochs <= 0:
        raise ConfigError("Set --checkpoint_steps or --checkpoint_epochs to a positive number.")
    if data.image_size < MIN_IMAGE_SIZE:
        raise ConfigError(
            f"--image_size={data.image_size} is too small: the ResNet downsamples by 8 even with the "
            f"CIFAR stem; use --image_size={MIN_IMAGE_SIZE} or more.")
    if train.train_mode == "pretrain" and model.fine_tune_after_block != -1:
        raise ConfigError(
            f"--fine_tune_after_block={model.fine_tune_after_block} freezes part of the encoder, which "
            "only makes sense when fine-tuning; pretraining trains the whole encoder. Remove the flag "
            "or set --train_mode=finetune.")
    if not -1 <= model.fine_tune_after_block <= 4:
        raise ConfigError("--fine_tune_after_block must be -1 (train all), 0 (after the stem) ... 4.")
    num_hidden = {"none": 0, "linear": 1, "nonlinear": model.num_proj_layers}[model.proj_head_mode]
    if not -1 <= model.ft_proj_selector <= num_hidden:
        raise ConfigError(
            f"--ft_proj_selector={model.ft_proj_selector} but the {model.proj_head_mode} projection head "
            f"has {num_hidden} layer(s); use a value from -1 to {num_hidden}.")
    if model.proj_head_mode == "nonlinear" and model.num_proj_layers < 1:
        raise ConfigError("--num_proj_layers must be at least 1 with --proj_head_mode=nonlinear.")
    if train.mode == "convert" and not train.checkpoint:
        raise ConfigError("--mode=convert reads a reference checkpoint: pass it with --checkpoint=PATH "
                          "(a checkpoint prefix, a directory of checkpoints, or a SavedModel/TF-Hub folder).")
    if not train.model_dir:
        raise ConfigError("--model_dir is required: checkpoints, config.json and result.json go there.")
    if cfg.distribute.tpu_name and not cfg.distribute.use_tpu:
        raise ConfigError("--tpu_name is set but --use_tpu is off; add --use_tpu to train on the TPU.")
    return cfg


def check_batch_divides(global_batch_size: int, num_replicas: int, flag: str = "train_batch_size"):
    """The global batch is split evenly over replicas; refuse a batch that does not divide."""
    if global_batch_size % num_replicas:
        lower = (global_batch_size // num_replicas) * num_replicas
        upper = lower + num_replicas
        raise ConfigError(
            f"--{flag}={global_batch_size} does not divide over the {num_replicas} replicas; "
            f"use a multiple of {num_replicas}, e.g. {lower or upper} or {upper}.")


def steps_per_checkpoint(train: TrainConfig, num_examples: int) -> int:
    """Steps between checkpoints: --checkpoint_steps, or --checkpoint_epochs epochs."""
    if train.checkpoint_steps:
        return train.checkpoint_steps
    epoch_steps = max(1, int(round(num_examples / train.train_batch_size)))
    return train.checkpoint_epochs * epoch_steps


def eval_steps(train: TrainConfig, num_eval_examples: int) -> int:
    return train.eval_steps or int(math.ceil(num_eval_examples / train.eval_batch_size))
