"""The encoder contract, and any Keras image model as an encoder (keras.applications, keras-hub, your own).

SimCLR puts no constraint on the encoder. The models of simclr_tf (`SimCLRModel`, `SimCLRClassifier`,
`DistillationModel`), export and the linear probe ask an encoder for four things only:

- `encoder(images, training=...)`: float features `[B, feature_dim]` of images `[B, H, W, 3]` in [0, 1];
- `encoder.feature_dim`: that `feature_dim` (an int, known once the encoder is built);
- `encoder.call_with_endpoints(images, training=...)`: a dict of named outputs that holds at least
  `"final_avg_pool"` (the features); our `ResNet` adds `initial_conv`, `block_group1`..`block_group4`, ...;
- `encoder.layers_up_to_block(k)`: the sublayers that `fine_tune_after_block=k` freezes (-1: none).

and, like every Keras layer of simclr_tf, it round-trips through `get_config`. Our `ResNet` meets it. Any
other `keras.Model` that maps one image batch to a feature vector `[B, D]`, a feature map `[B, H, W, D]` or
a token sequence `[B, T, D]` becomes an encoder through `as_encoder`, which wraps it in a `KerasEncoder`
(maps and sequences are average-pooled). For such an encoder `fine_tune_after_block` is -1 (train it all)
or 4 (freeze it all: the linear evaluation protocol); block-wise freezing (0..3) is defined on our ResNet's
stem and block groups only, and refused for other encoders.

`build_backbone(name, args, image_size)` is what `--backbone` and `--backbone_args` build: `resnet` (our
ResNet, from the model flags), any `keras.applications` image model by name (built with `weights=None`,
`include_top=False`: nothing is downloaded), or, when keras-hub is installed, any keras-hub backbone by
class name, built from its arguments (no preset). Images reach these models as they come, in [0, 1]: a
model with preprocessing of its own applies it, a fixed affine map that training from scratch absorbs.
"""
import inspect
import json

import keras
from keras import ops

from simclr_tf.config import ConfigError

RESNET = "resnet"
FROZEN_ENCODER_BLOCK = 4  # fine_tune_after_block that freezes the whole encoder (linear evaluation)


def keras_applications_names():
    """Names of the `keras.applications` image models (`ResNet50`, `MobileNetV3Small`, ...)."""
    return sorted(name for name, value in vars(keras.applications).items()
                  if name[:1].isupper() and inspect.isfunction(value))


def _keras_hub():
    try:
        import keras_hub
    except ImportError:
        return None
    return keras_hub


def keras_hub_backbone_names():
    """Class names of keras-hub's backbones (`ResNetBackbone`, `ViTBackbone`, ...); [] without keras-hub.

    Only those that take a single image batch can be encoders; `KerasEncoder` checks that when built.
    """
    hub = _keras_hub()
    if hub is None:
        return []
    return sorted(name for name, value in vars(hub.models).items()
                  if name.endswith("Backbone") and inspect.isclass(value)
                  and issubclass(value, hub.models.Backbone) and value is not hub.models.Backbone)


def accepted_backbones():
    """A sentence listing what `--backbone` accepts here, for error messages."""
    hub_names = keras_hub_backbone_names()
    hub = (f"keras-hub backbones by class name, with --backbone_args (those taking one image input): "
           f"{', '.join(hub_names)}" if hub_names else
           "keras-hub backbones once keras-hub is installed (pip install keras-hub)")
    return (f"'{RESNET}' (our ResNet, set by --resnet_depth, --width_multiplier, ...); a keras.applications "
            f"model: {', '.join(keras_applications_names())}; or {hub}.")


def parse_backbone_args(text):
    """`--backbone_args` (a JSON object, or empty) as a dict."""
    if not text:
        return {}
    try:
        args = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"--backbone_args={text!r} is not JSON ({error}); pass a JSON object of keyword "
                          "arguments, e.g. --backbone_args='{\"alpha\": 0.5}'.") from None
    if not isinstance(args, dict):
        raise ConfigError(f"--backbone_args={text!r} must be a JSON object of keyword arguments, e.g. "
                          "'{\"alpha\": 0.5}'.")
    return args


def check_backbone_name(name):
    """Raises ConfigError, listing what is accepted, unless `name` is a backbone `build_backbone` makes."""
    if name == RESNET or name in keras_applications_names() or name in keras_hub_backbone_names():
        return
    hint = ""
    if name.endswith("Backbone") and _keras_hub() is None:
        hint = " keras-hub is not installed: pip install keras-hub."
    raise ConfigError(f"--backbone={name!r} is not a backbone simclr_tf can build.{hint} Accepted: "
                      f"{accepted_backbones()}")


def build_backbone(name, args, image_size):
    """The `keras.Model` `--backbone=name --backbone_args=args` makes for `image_size` px images.

    `name` is a `keras.applications` model (built with `weights=None, include_top=False` unless `args`
    say otherwise) or a keras-hub backbone class (given `image_shape` unless `args` do). Our ResNet is
    built by `build_simclr_model` from the model flags, not here.

    Example:
      >>> backbone = build_backbone("MobileNetV3Small", {"alpha": 0.75, "minimalistic": True}, 32)
      >>> backbone.name, backbone.output.shape
      ('MobileNetV3Small', (None, 1, 1, 432))
    """
    check_backbone_name(name)
    args = dict(args)
    shape = (image_size, image_size, 3)
    if name in keras_applications_names():
        builder = getattr(keras.applications, name)
        args = {"weights": None, "include_top": False, "input_shape": shape, **args}
    else:
        builder = getattr(_keras_hub().models, name)
        if "image_shape" in inspect.signature(builder.__init__).parameters:
            args.setdefault("image_shape", shape)
    if args.get("weights") is not None:
        raise ConfigError(f"--backbone_args asks {name} for weights={args['weights']!r}: nothing may be "
                          "downloaded; start from random weights (weights=None) or load a checkpoint.")
    try:
        return builder(**args)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"--backbone={name} could not be built with --backbone_args={json.dumps(args)} "
                          f"at --image_size={image_size}: {error}") from None


def backbone_name_of(backbone):
    """The `--backbone` name that builds a model like `backbone`, or None when it does not tell.

    A keras.applications model carries its function's name (`MobileNetV3Small`), a keras-hub backbone its
    class (`ResNetBackbone`); a model of your own has neither.

    Example:
      >>> backbone_name_of(build_backbone("MobileNetV3Small", {"alpha": 0.75, "minimalistic": True}, 32))
      'MobileNetV3Small'
      >>> print(backbone_name_of(keras.Sequential([keras.layers.GlobalAveragePooling2D()], name="mine")))
      None
    """
    if backbone.name in keras_applications_names():
        return backbone.name
    if type(backbone).__name__ in keras_hub_backbone_names():
        return type(backbone).__name__
    return None


@keras.saving.register_keras_serializable(package="simclr_tf")
class KerasEncoder(keras.Model):
    """Any Keras image model as a simclr_tf encoder: features `[B, feature_dim]` of images `[B, H, W, 3]`.

    Args:
      backbone: a `keras.Model` taking one image batch and returning a feature vector `[B, D]`, a feature
        map `[B, H, W, D]` (averaged over H and W) or a token sequence `[B, T, D]` (averaged over T).

    Anything else is refused when the encoder is built, before any training. Fine-tuning can train the
    whole encoder (`layers_up_to_block(-1)`) or freeze it whole (`layers_up_to_block(4)`).

    Example:
      >>> import tensorflow as tf
      >>> backbone = keras.applications.MobileNetV3Small(
      ...     input_shape=(32, 32, 3), alpha=0.75, minimalistic=True, include_top=False, weights=None)
      >>> encoder = KerasEncoder(backbone)
      >>> encoder(tf.zeros([2, 32, 32, 3])).shape, encoder.feature_dim
      (TensorShape([2, 432]), 432)
      >>> sorted(encoder.call_with_endpoints(tf.zeros([2, 32, 32, 3])))
      ['final_avg_pool']
      >>> [layer.name for layer in encoder.layers_up_to_block(4)]
      ['MobileNetV3Small']
    """

    def __init__(self, backbone, **kwargs):
        kwargs.setdefault("name", f"encoder_{backbone.name}".lower())
        super().__init__(**kwargs)
        if not isinstance(backbone, keras.Model):
            raise TypeError(f"KerasEncoder wraps a keras.Model, got {type(backbone).__name__}.")
        self.backbone = backbone
        self.feature_dim = None
        if backbone.built and getattr(backbone, "inputs", None):
            self._check_and_set_feature_dim(tuple(backbone.inputs[0].shape))

    def _check_and_set_feature_dim(self, input_shape):
        inputs = getattr(self.backbone, "inputs", None)
        if inputs is not None and len(inputs) != 1:
            raise ConfigError(
                f"The encoder {self.backbone.name} takes {len(inputs)} inputs; an encoder takes one batch "
                "of images [B, H, W, 3]. Use an image model (keras.applications, a keras-hub image backbone).")
        try:
            output_shape = self.backbone.compute_output_shape(input_shape)
        except Exception as error:  # noqa: BLE001 (any failure means: not an image model)
            raise ConfigError(f"The encoder {self.backbone.name} does not take images {input_shape}: "
                              f"{error}") from None
        if not isinstance(output_shape, (tuple, list)) or not all(
                dim is None or isinstance(dim, int) for dim in output_shape) or len(output_shape) not in (2, 3, 4):
            raise ConfigError(
                f"The encoder {self.backbone.name} returns {output_shape}, not a feature vector [B, D], a "
                "feature map [B, H, W, D] or a token sequence [B, T, D]. Pass a model with one such output "
                "(e.g. a keras.applications model with include_top=False).")
        self.feature_dim = output_shape[-1]

    def build(self, input_shape):
        if not self.backbone.built:
            self.backbone.build(input_shape)
        self._check_and_set_feature_dim(tuple(input_shape))
        self.built = True

    def call(self, images, training=False):
        features = self.backbone(images, training=training)
        if len(features.shape) > 2:
            features = ops.mean(features, axis=tuple(range(1, len(features.shape) - 1)))
        return features

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.feature_dim)

    def call_with_endpoints(self, images, training=False):
        """`{"final_avg_pool": features}`: the only endpoint an arbitrary encoder is known to have."""
        return {"final_avg_pool": self(images, training=training)}

    def layers_up_to_block(self, block):
        """-1: nothing to freeze; 4: the whole backbone (linear evaluation). 0..3 are ResNet-only."""
        if block == -1:
            return []
        if block == FROZEN_ENCODER_BLOCK:
            return [self.backbone]
        raise ConfigError(
            f"--fine_tune_after_block={block} freezes the stem and block groups of our ResNet; the encoder "
            f"{self.backbone.name} has no such blocks. Use -1 (train the whole encoder) or 4 (freeze it: "
            "linear evaluation).")

    def get_config(self):
        return {**super().get_config(), "backbone": keras.saving.serialize_keras_object(self.backbone)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if "keras_hub" in json.dumps(config["backbone"]):
            _keras_hub()  # registers keras-hub's classes before they are deserialized
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)


def is_encoder(model):
    """Whether `model` meets the encoder contract (our ResNet, a KerasEncoder, your own)."""
    return all(hasattr(model, name) for name in ("feature_dim", "call_with_endpoints", "layers_up_to_block"))


def as_encoder(model):
    """`model` if it meets the encoder contract, else `KerasEncoder(model)`.

    Example:
      >>> from simclr_tf.models.resnet import ResNet
      >>> resnet = ResNet(depth=18, width_multiplier=0.125, cifar_stem=True)
      >>> as_encoder(resnet) is resnet
      True
      >>> type(as_encoder(keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3)]))).__name__
      'KerasEncoder'
    """
    if is_encoder(model):
        return model
    if not isinstance(model, keras.Model):
        raise TypeError(f"An encoder is a keras.Model mapping images to features, got {type(model).__name__}.")
    return KerasEncoder(model)
