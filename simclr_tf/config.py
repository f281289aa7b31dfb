"""Run configuration: frozen dataclasses, one per concern, and the rules that span fields.

Field names are the reference's flag names, so `config.json` reads like the command line that made it.
Library code takes the slice it needs (`cfg.data`, `cfg.model`, ...) and never sees absl flags.
"""
import dataclasses
import json
import math
from typing import Optional

MODES = ("train", "eval", "train_then_eval", "export", "convert")
TRAIN_MODES = ("pretrain", "finetune", "distill")
OPTIMIZERS = ("lars", "momentum", "adam")
LEARNING_RATE_SCALINGS = ("linear", "sqrt")
PROJ_HEAD_MODES = ("none", "linear", "nonlinear")
RESNET_DEPTHS = (18, 34, 50, 101, 152, 200)
CORRUPT_IMAGE_POLICIES = ("skip", "fail")
COLOR_JITTER_IMPLS = ("simclrv1", "simclrv2")
CROP_IMPLS = ("reference", "uniform_area")  # crop box sampler (issue 17), as data/image_ops.CROP_IMPLS
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16", "auto")
CIFAR_STEM_MAX_SIZE = 32
MIN_IMAGE_SIZE = 8
# The reference's --variable_schema values: what they select is what simclr_tf always restores.
REFERENCE_VARIABLE_SCHEMAS = ("?!global_step", "(?!global_step|(?:.*/|^)Momentum|head)",
                              "(?!global_step|(?:.*/|^)Momentum|head_supervised)")


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the problem and the fix.

    A `ValueError`, raised by `validate` and by the checks a run makes once it knows its devices and data.

    Example:
      >>> try:
      ...     check_batch_divides(100, num_replicas=8)
      ... except ValueError as error:
      ...     print(f"{type(error).__name__}: {error}")
      ConfigError: --train_batch_size=100 does not divide over the 8 replicas; use a multiple of 8, e.g. 96
      or 104.
    """


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """What to train and evaluate on, and how pretraining views are augmented (`--dataset`, ...).

    Each field is the flag of the same name (`python run.py --helpfull` describes them). Two properties
    follow from the image size as in the paper: `cifar_stem` (a 3x3 stem without max-pool for images of
    32 px or less) and `blur` (Gaussian blur in the views above 32 px, unless `use_blur` says otherwise).

    Example:
      >>> data = DataConfig(dataset="builtin_shapes", image_size=32)
      >>> data.cifar_stem, data.blur
      (True, False)
      >>> DataConfig(image_size=224).blur, DataConfig(image_size=224, use_blur=False).blur
      (True, False)
    """

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
    label_fraction: float = 1.0  # Fine-tuning/distillation: train on this class-balanced share of labels.
    labels_per_class: int = 0  # ... or on this many labelled examples per class (0: use label_fraction).
    # Crop box sampler (issue 17): "reference" = tf.image.sample_distorted_bounding_box's distribution,
    # "uniform_area" = area uniform, aspect log-uniform (the paper's text).
    crop_impl: str = "reference"

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
    """The encoder (`--resnet_depth`, `--width_multiplier`, ...), the projection head and fine-tuning choices.

    Each field is the flag of the same name. `validate` checks the combinations, e.g. that
    `ft_proj_selector` names a layer the projection head has.

    Example:
      >>> model = ModelConfig(resnet_depth=18, width_multiplier=0.5, proj_head_mode="linear",
      ...                     ft_proj_selector=2)
      >>> validate(Config(model=model, train=TrainConfig(model_dir="/tmp/unused")))
      Traceback (most recent call last):
      ...
      simclr_tf.config.ConfigError: --ft_proj_selector=2 but the linear projection head has 1 layer(s);
      use a value from -1 to 1.
    """

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
    # Any Keras encoder (simclr_tf/models/encoders.py): "resnet" (ours, the fields above) or a
    # keras.applications model / keras-hub backbone by name, built with `backbone_args` (a JSON object).
    backbone: str = "resnet"
    backbone_args: str = ""


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """The optimizer and its learning-rate schedule (`--optimizer`, `--learning_rate`, ...).

    `learning_rate` is the base rate, scaled by the batch size as `learning_rate_scaling` says.

    Example:
      >>> optim = OptimConfig(optimizer="momentum", learning_rate=0.1)
      >>> optim.learning_rate_scaling, optim.weight_decay
      ('linear', 1e-06)
      >>> validate(Config(optim=OptimConfig(optimizer="sgd"), train=TrainConfig(model_dir="/tmp/unused")))
      Traceback (most recent call last):
      ...
      simclr_tf.config.ConfigError: --optimizer='sgd' is not one of ['lars', 'momentum', 'adam']; pick one
      of them.
    """

    optimizer: str = "lars"
    learning_rate: float = 0.3
    learning_rate_scaling: str = "linear"
    warmup_epochs: float = 10
    momentum: float = 0.9
    weight_decay: float = 1e-6


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """What the run does (`--mode`, `--train_mode`), for how long, where it writes, and the loss settings.

    Training lasts `train_steps` steps, or else `train_epochs` epochs; checkpoints come every
    `checkpoint_steps` steps, or else every `checkpoint_epochs` epochs (`steps_per_checkpoint`).

    Example:
      >>> train = TrainConfig(model_dir="/tmp/unused", train_batch_size=256, checkpoint_epochs=2)
      >>> steps_per_checkpoint(train, num_examples=50000)  # 2 epochs of 195 steps
      390
      >>> eval_steps(train, num_eval_examples=10000)  # ceil(10000 / 256)
      40
      >>> validate(Config(train=dataclasses.replace(train, grad_accum_steps=3)))
      Traceback (most recent call last):
      ...
      simclr_tf.config.ConfigError: --grad_accum_steps=3 must be a positive divisor of
      --train_batch_size=256: each step accumulates that many equal micro-batches.
    """

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
    verbose: int = 1
    precision: str = "float32"
    jit_compile: bool = False
    grad_accum_steps: int = 1
    keep_hub_module_max: int = 1
    teacher_checkpoint: Optional[str] = None
    distill_temperature: float = 1.0
    distill_label_weight: float = 0.0
    variable_schema: Optional[str] = None  # Accepted for the reference's command lines; see validate().
    # Progress reporting (issue 13): with verbose=1 a bar on a terminal, else (or verbose=2) log lines.
    log_every_steps: int = 0
    log_every_secs: float = 30.0
    # kNN monitor and embedding projector (simclr_tf/knn.py, simclr_tf/projector.py).
    knn_eval_epochs: int = 0
    knn_k: int = 200
    knn_temperature: float = 0.1
    knn_bank_size: int = 10000
    projector_examples: int = 1000
    # Large contrastive batches (issue 12): cached-gradient chunks, the SimCLR v2 memory.
    contrastive_chunks: int = 1
    memory_size: int = 0
    memory_momentum: float = 0.999


@dataclasses.dataclass(frozen=True)
class DistributeConfig:
    """Where the run trains: a TPU (`--use_tpu`, `--tpu_name`, ...), or the local GPUs or CPU.

    `cpu_replicas` splits the CPU into that many devices under `MirroredStrategy`, to test distributed
    code on one machine.

    Example:
      >>> DistributeConfig(cpu_replicas=2)
      DistributeConfig(use_tpu=False, tpu_name=None, tpu_zone=None, gcp_project=None, master=None,
      cpu_replicas=2)
      >>> validate(Config(train=TrainConfig(model_dir="/tmp/unused"),
      ...                 distribute=DistributeConfig(tpu_name="my-tpu")))
      Traceback (most recent call last):
      ...
      simclr_tf.config.ConfigError: --tpu_name is set but --use_tpu is off; add --use_tpu to train on the TPU.
    """

    use_tpu: bool = False
    tpu_name: Optional[str] = None
    tpu_zone: Optional[str] = None
    gcp_project: Optional[str] = None
    master: Optional[str] = None
    cpu_replicas: int = 0  # Split the CPU into this many devices under MirroredStrategy (testing).


@dataclasses.dataclass(frozen=True)
class Config:
    """A whole run's configuration: one frozen section per concern (data, model, optim, train, distribute).

    `run.py` builds it from its flags; in code, give only what differs from the defaults, then `validate`
    it (`run` does). `to_json` writes what a run saves as `config.json`; `from_dict` reads it back.

    Example:
      >>> cfg = Config(data=DataConfig(dataset="builtin_shapes", image_size=32),
      ...              model=ModelConfig(resnet_depth=18, width_multiplier=0.25),
      ...              train=TrainConfig(model_dir="/tmp/unused", train_batch_size=128, train_epochs=8))
      >>> validate(cfg) is cfg
      True
      >>> cfg.data.cifar_stem, steps_per_checkpoint(cfg.train, num_examples=10000)
      (True, 78)
      >>> Config.from_dict(json.loads(cfg.to_json())) == cfg
      True
      >>> validate(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, mode="serve")))
      Traceback (most recent call last):
      ...
      simclr_tf.config.ConfigError: --mode='serve' is not one of ['train', 'eval', 'train_then_eval',
      'export', 'convert']; pick one of them.
    """

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


def _check_monitors(train: TrainConfig) -> None:
    """The kNN monitor's and the projector's flags."""
    if (train.knn_eval_epochs < 0 or train.knn_k < 1 or train.knn_bank_size < 0
            or train.projector_examples < 0):
        raise ConfigError(
            f"--knn_eval_epochs={train.knn_eval_epochs}, --knn_k={train.knn_k}, --knn_bank_size="
            f"{train.knn_bank_size} and --projector_examples={train.projector_examples}: the epochs between "
            "kNN evaluations (0: no kNN), the neighbours that vote (1 or more), the training images in the "
            "bank (0: the whole split) and the images exported to the projector (0: none) cannot be "
            "negative.")
    if not train.knn_temperature > 0:
        raise ConfigError(f"--knn_temperature={train.knn_temperature} must be positive: neighbours vote with "
                          "weight exp(similarity / temperature); the usual value is 0.1.")


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
    _choice(data.crop_impl, CROP_IMPLS, "crop_impl")
    _choice(train.precision, PRECISIONS, "precision")
    _positive(train.train_batch_size, "train_batch_size")
    _positive(train.eval_batch_size, "eval_batch_size")
    _positive(model.width_multiplier, "width_multiplier")
    _positive(train.temperature, "temperature")
    _positive(train.keep_checkpoint_max, "keep_checkpoint_max")
    _check_schedule_values(optim, train)
    if train.train_steps <= 0 and train.train_epochs <= 0:
        raise ConfigError("Neither --train_steps nor --train_epochs is positive; set one of them.")
    if train.checkpoint_steps <= 0 and train.checkpoint_epochs <= 0:
        raise ConfigError("Set --checkpoint_steps or --checkpoint_epochs to a positive number.")
    if data.image_size < MIN_IMAGE_SIZE:
        raise ConfigError(
            f"--image_size={data.image_size} is too small: the ResNet downsamples by 8 even with the "
            f"CIFAR stem; use --image_size={MIN_IMAGE_SIZE} or more.")
    if train.train_mode != "finetune" and model.fine_tune_after_block != -1:
        raise ConfigError(
            f"--fine_tune_after_block={model.fine_tune_after_block} freezes part of the encoder, which "
            f"only makes sense when fine-tuning; --train_mode={train.train_mode} trains the whole "
            "encoder. Remove the flag or set --train_mode=finetune.")
    _check_label_subset(data, train)
    _check_distillation(train)
    if train.grad_accum_steps < 1 or train.train_batch_size % train.grad_accum_steps:
        raise ConfigError(
            f"--grad_accum_steps={train.grad_accum_steps} must be a positive divisor of "
            f"--train_batch_size={train.train_batch_size}: each step accumulates that many equal "
            "micro-batches.")
    if train.random_encoder_baseline and train.train_mode != "pretrain":
        raise ConfigError(
            "--random_encoder_baseline compares a pretrained encoder's linear probe with a random encoder's; "
            f"--train_mode={train.train_mode} trains a classifier, which is evaluated directly. Remove the "
            "flag (or, for a baseline, run the same command with --checkpoint unset).")
    _check_monitors(train)
    writes_an_export = train.mode in ("export", "convert")
    if train.keep_hub_module_max < 0 or (train.keep_hub_module_max == 0 and writes_an_export):
        raise ConfigError(
            f"--keep_hub_module_max={train.keep_hub_module_max} with --mode={train.mode}: it is the number "
            "of SavedModel exports to keep (0: training writes none); --mode=export and --mode=convert "
            "write one, so set it to 1 or more.")
    if train.variable_schema is not None and train.variable_schema not in REFERENCE_VARIABLE_SCHEMAS:
        raise ConfigError(
            f"--variable_schema={train.variable_schema!r} is not needed here: simclr_tf restores the encoder "
            "and the projection layers it keeps from --checkpoint, never a classifier, optimizer state or "
            "step counter (what the reference's schemas select). Remove the flag; the reference's values "
            f"{list(REFERENCE_VARIABLE_SCHEMAS)} are accepted and change nothing.")
    if not -1 <= model.fine_tune_after_block <= 4:
        raise ConfigError("--fine_tune_after_block must be -1 (train all), 0 (after the stem) ... 4.")
    _check_backbone(model, train)
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
    if "://" in train.model_dir:
        raise ConfigError(
            f"--model_dir={train.model_dir} is a remote URL, and simclr_tf writes checkpoints, exports and "
            "results with local file operations (it would create a local folder named like the URL). Use a "
            "local directory, or mount the bucket (e.g. with gcsfuse) and pass the mounted path.")
    if cfg.distribute.tpu_name and not cfg.distribute.use_tpu:
        raise ConfigError("--tpu_name is set but --use_tpu is off; add --use_tpu to train on the TPU.")
    _check_large_batches(train, max(cfg.distribute.cpu_replicas, 1))
    return cfg


def _check_label_subset(data: DataConfig, train: TrainConfig):
    if not 0.0 < data.label_fraction <= 1.0:
        raise ConfigError(f"--label_fraction={data.label_fraction} must be in (0, 1]; 1 uses every label.")
    if data.labels_per_class < 0:
        raise ConfigError(f"--labels_per_class={data.labels_per_class} must be 0 (off) or positive.")
    if data.labels_per_class and data.label_fraction < 1.0:
        raise ConfigError("--label_fraction and --labels_per_class both choose the labelled subset; "
                          "set only one of them.")
    subset = data.labels_per_class or data.label_fraction < 1.0
    if subset and train.train_mode == "pretrain":
        raise ConfigError(
            "A labelled subset (--label_fraction/--labels_per_class) applies to --train_mode=finetune "
            "or distill; pretraining uses every image without its label. Remove the flag or change "
            "--train_mode.")


def _check_schedule_values(optim: OptimConfig, train: TrainConfig):
    """Values that would silently train nothing, or train an untrained model into an export."""
    if not optim.learning_rate > 0:  # also NaN
        raise ConfigError(
            f"--learning_rate={optim.learning_rate} must be positive: it is the base rate (per 256 examples "
            "with --learning_rate_scaling=linear); e.g. 0.3 for LARS, 0.1 for momentum, 0.001 for adam.")
    pairs = {"train_steps": "train_epochs", "train_epochs": "train_steps",
             "checkpoint_steps": "checkpoint_epochs", "checkpoint_epochs": "checkpoint_steps"}
    for name, other in pairs.items():
        value = getattr(train, name)
        if value < 0:
            raise ConfigError(f"--{name}={value} is negative; use a positive number, or 0 to leave it "
                              f"unset (then --{other} decides).")
    if train.log_every_steps < 0 or train.log_every_secs < 0:
        raise ConfigError("--log_every_steps and --log_every_secs must be 0 (off) or positive.")


def _check_distillation(train: TrainConfig):
    if train.train_mode == "distill":
        if not train.teacher_checkpoint and train.mode in ("train", "train_then_eval"):
            raise ConfigError("--train_mode=distill needs a fine-tuned teacher: pass "
                              "--teacher_checkpoint=PATH (a fine-tuning run's checkpoint, .keras file or "
                              "exported SavedModel, or a released fine-tuned checkpoint).")
        _positive(train.distill_temperature, "distill_temperature")
        if not 0.0 <= train.distill_label_weight <= 1.0:
            raise ConfigError(f"--distill_label_weight={train.distill_label_weight} must be in [0, 1]: "
                              "the weight of the labelled loss, the teacher's getting the rest.")
    elif train.teacher_checkpoint:
        raise ConfigError(f"--teacher_checkpoint is only read with --train_mode=distill (this run is "
                          f"--train_mode={train.train_mode}); remove it or set --train_mode=distill.")


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


def _check_backbone(model, train):
    """--backbone names a model simclr_tf can build, with JSON arguments; block-wise freezing is ResNet's."""
    from simclr_tf.models import encoders  # imports Keras (and keras-hub when installed): only when needed

    encoders.check_backbone_name(model.backbone)
    encoders.parse_backbone_args(model.backbone_args)
    if model.backbone == encoders.RESNET:
        if model.backbone_args:
            raise ConfigError("--backbone_args is for a --backbone other than resnet; our ResNet takes "
                              "--resnet_depth, --width_multiplier, --sk_ratio and --se_ratio.")
        return
    if train.train_mode == "finetune" and model.fine_tune_after_block not in (-1, encoders.FROZEN_ENCODER_BLOCK):
        raise ConfigError(
            f"--fine_tune_after_block={model.fine_tune_after_block} freezes the stem and block groups of our "
            f"ResNet; --backbone={model.backbone} has no such blocks. Use -1 (train the whole encoder) or 4 "
            "(freeze it: linear evaluation).")
def _check_large_batches(train: TrainConfig, num_replicas: int = 1):
    """--contrastive_chunks: pretraining only, not with --grad_accum_steps, chunks that divide the batch.
    --memory_size: pretraining only, room for a step's projections, --memory_momentum in [0, 1)."""
    if train.memory_size < 0:
        raise ConfigError(f"--memory_size={train.memory_size} must be 0 (off) or positive.")
    if train.memory_size:
        if train.train_mode != "pretrain":
            raise ConfigError(f"--memory_size={train.memory_size} is a queue of contrastive negatives, which only "
                              f"pretraining uses; remove it for --train_mode={train.train_mode}.")
        if train.memory_size < 2 * train.train_batch_size:
            raise ConfigError(
                f"--memory_size={train.memory_size} cannot hold one step's projections (both views of "
                f"--train_batch_size={train.train_batch_size}: {2 * train.train_batch_size}); use "
                f"--memory_size={2 * train.train_batch_size} or more, or 0 to turn the memory off.")
        if not 0.0 <= train.memory_momentum < 1.0:
            raise ConfigError(f"--memory_momentum={train.memory_momentum} must be in [0, 1): 0 copies the online "
                              "network after each step, values near 1 (0.99, 0.999) average it slowly.")
    if train.contrastive_chunks < 1:
        raise ConfigError(f"--contrastive_chunks={train.contrastive_chunks} must be 1 (off) or more.")
    if train.contrastive_chunks == 1:
        return
    if train.train_mode != "pretrain":
        raise ConfigError(
            f"--contrastive_chunks={train.contrastive_chunks} splits the contrastive (NT-Xent) batch, which "
            f"only pretraining has; --train_mode={train.train_mode} trains with a per-example loss: use "
            "--grad_accum_steps there for the same memory saving.")
    if train.grad_accum_steps > 1:
        raise ConfigError(
            f"--contrastive_chunks={train.contrastive_chunks} and --grad_accum_steps="
            f"{train.grad_accum_steps} both split the batch to save memory; cached chunks keep the whole "
            "batch's negatives, accumulation does not. Use one of them: drop --grad_accum_steps and set "
            f"--contrastive_chunks={train.contrastive_chunks * train.grad_accum_steps} for the same chunk size.")
    check_chunks(train.train_batch_size, num_replicas, train.contrastive_chunks)


def check_chunks(train_batch_size: int, num_replicas: int, num_chunks: int):
    """Refuses a replica batch that does not split into `num_chunks` equal chunks, naming sizes that would."""
    per_replica = train_batch_size // num_replicas
    if per_replica % num_chunks == 0:
        return
    multiple = num_replicas * num_chunks
    lower = (train_batch_size // multiple) * multiple
    sizes = " or ".join(str(size) for size in (lower, lower + multiple) if size > 0)
    divisors = ", ".join(str(k) for k in range(2, num_chunks * 2 + 1) if per_replica % k == 0) or "none"
    raise ConfigError(
        f"--contrastive_chunks={num_chunks} must split each replica's batch into equal chunks: "
        f"--train_batch_size={train_batch_size} over {num_replicas} replica(s) is {per_replica} per replica. "
        f"Use --train_batch_size={sizes}, or a --contrastive_chunks that divides {per_replica} "
        f"(up to {num_chunks * 2}: {divisors}).")
