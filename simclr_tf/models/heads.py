"""Heads on top of the encoder features: the projection head g(.) and the supervised (linear) head.

Example:
    head = ProjectionHead(mode="nonlinear", num_layers=3, out_dim=128, ft_proj_selector=0)
    projection, supervised_input = head(features, training=True)
    logits = SupervisedHead(num_classes=10)(supervised_input)
"""
import keras
from keras import ops

from simclr_tf.models.resnet_blocks import batch_norm

_register = keras.saving.register_keras_serializable(package="simclr_tf")
PROJECTION_MODES = ("none", "linear", "nonlinear")


@_register
class LinearLayer(keras.layers.Layer):
    """Dense layer, optionally followed by batch norm, on [B, D] inputs.

    Args:
        units: output size; None means "same as the input size" (resolved in `build`).
        use_bias: a bias on the dense layer, or, when `use_bn`, the BN's beta (`center`) instead.
        use_bn: batch norm after the dense layer (the dense layer then has no bias).
        zero_init: zero kernel instead of RandomNormal(stddev=0.01).
        bn_momentum, bn_epsilon, global_bn: of the batch norm (global_bn: synchronized across replicas).
    """

    def __init__(self, units, use_bias=True, use_bn=False, zero_init=False, bn_momentum=0.9, bn_epsilon=1e-5,
                 global_bn=True, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.use_bias = use_bias
        self.use_bn = use_bn
        self.zero_init = zero_init
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon
        self.global_bn = global_bn
        self.dense = None  # dense and BN are made in build(), once the input size is known
        self.bn = None

    def build(self, input_shape):
        if len(input_shape) != 2:
            raise ValueError(f"{type(self).__name__} expects [batch, features] inputs, got {input_shape}.")
        units = input_shape[-1] if self.units is None else self.units
        initializer = "zeros" if self.zero_init else keras.initializers.RandomNormal(stddev=0.01)
        self.dense = keras.layers.Dense(units, use_bias=self.use_bias and not self.use_bn,
                                        kernel_initializer=initializer, name="dense")
        self.dense.build(input_shape)
        if self.use_bn:
            self.bn = batch_norm("batch_normalization", self.bn_momentum, self.bn_epsilon, self.global_bn,
                                 center=self.use_bias)
            self.bn.build((input_shape[0], units))

    def call(self, inputs, training=False):
        outputs = self.dense(inputs)
        if self.bn is not None:
            outputs = self.bn(outputs, training=training)
        return outputs

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1] if self.units is None else self.units)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "use_bias": self.use_bias, "use_bn": self.use_bn,
                "zero_init": self.zero_init, "bn_momentum": self.bn_momentum, "bn_epsilon": self.bn_epsilon,
                "global_bn": self.global_bn}


@_register
class ProjectionHead(keras.layers.Layer):
    """Projection head g(.) of SimCLR.

    mode "none": identity. "linear": one dense+BN layer to `out_dim` (no bias, no ReLU). "nonlinear":
    `num_layers` layers; all but the last keep the input size and use dense, BN (with beta) and ReLU; the
    last goes to `out_dim` with BN without beta and no ReLU.

    `call(features, training)` returns `(projection, supervised_input)`: the last layer's output and
    `hiddens[ft_proj_selector]`, where `hiddens = [features, after layer 1, after layer 2, ...]`
    (0: the encoder features, -1: the projection).

    `layers_kept` (None = all) keeps only the first layers of that specification; `truncated(k)` makes
    such a head for fine-tuning on `hiddens[k]`.

    Example:
      >>> from keras import random
      >>> head = ProjectionHead(mode="nonlinear", num_layers=3, out_dim=8, ft_proj_selector=1)
      >>> features = random.normal([4, 16], seed=0)
      >>> projection, supervised_input = head(features, training=True)
      >>> projection.shape, supervised_input.shape  # hiddens[1]: after the first layer, still 16 wide
      (TensorShape([4, 8]), TensorShape([4, 16]))
      >>> [layer.name for layer in head.linear_layers], head.num_layers_kept()
      (['nl_0', 'nl_1', 'nl_2'], 1)

      Fine-tuning keeps only the layers up to the selected hidden, with their weights:

      >>> kept = head.truncated(head.num_layers_kept())
      >>> len(kept.linear_layers), kept.ft_proj_selector
      (1, -1)
      >>> kept_output, _ = kept(features)
      >>> bool(ops.all(ops.isclose(kept_output, head(features)[1])))
      True

      The config holds the whole specification, so a head can be rebuilt from it:

      >>> copy = ProjectionHead.from_config(head.get_config())
      >>> copy.get_config() == head.get_config(), copy.built
      (True, False)
    """

    def __init__(self, mode="nonlinear", num_layers=3, out_dim=128, ft_proj_selector=0, bn_momentum=0.9,
                 bn_epsilon=1e-5, global_bn=True, layers_kept=None, name="projection_head", **kwargs):
        super().__init__(name=name, **kwargs)
        if mode not in PROJECTION_MODES:
            raise ValueError(f"Projection head mode must be one of {PROJECTION_MODES}, got {mode!r}.")
        if mode == "nonlinear" and num_layers < 1:
            raise ValueError(f"A nonlinear projection head needs num_layers >= 1, got {num_layers}.")
        self.mode = mode
        self.num_layers = num_layers
        self.out_dim = out_dim
        self.ft_proj_selector = ft_proj_selector
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon
        self.global_bn = global_bn
        self.layers_kept = layers_kept
        specs = self._layer_specs()
        if layers_kept is not None and not 0 <= layers_kept <= len(specs):
            raise ValueError(f"layers_kept must be in 0..{len(specs)} for this head, got {layers_kept}.")
        specs = specs[:layers_kept]
        self.linear_layers = [
                LinearLayer(units, use_bias=use_bias, use_bn=True, bn_momentum=bn_momentum,
                            bn_epsilon=bn_epsilon, global_bn=global_bn, name=layer_name)
                for layer_name, units, use_bias, _ in specs
        ]
        self._relu_after = [relu for _, _, _, relu in specs]
        self.num_layers_kept(ft_proj_selector)  # validates the selector

    def _layer_specs(self):
        """(name, units, use_bias, relu) of every layer of the full head; units None = input size."""
        if self.mode == "linear":
            return [("l_0", self.out_dim, False, False)]
        if self.mode == "nonlinear":
            last = self.num_layers - 1
            return [(f"nl_{j}", self.out_dim if j == last else None, j != last, j != last)
                    for j in range(self.num_layers)]
        return []

    def num_layers_kept(self, ft_proj_selector=None):
        """How many layers are needed to compute `hiddens[ft_proj_selector]` (default: this head's)."""
        selector = self.ft_proj_selector if ft_proj_selector is None else ft_proj_selector
        num_hiddens = len(self.linear_layers) + 1
        if not -num_hiddens <= selector < num_hiddens:
            raise ValueError(f"ft_proj_selector must be in {-num_hiddens}..{num_hiddens - 1} for a head with "
                             f"{num_hiddens - 1} layer(s), got {selector}.")
        return selector % num_hiddens

    def truncated(self, num_layers, name=None):
        """A new head with only the first `num_layers` layers; its supervised input is its own output.

        When this head is built, the new one is built too and gets copies of the kept layers' weights.
        """
        if not 0 <= num_layers <= len(self.linear_layers):
            raise ValueError(f"Can keep 0..{len(self.linear_layers)} layers of this head, got {num_layers}.")
        config = {**self.get_config(), "layers_kept": num_layers, "ft_proj_selector": -1}
        config["name"] = name or self.name
        head = type(self).from_config(config)
        if self.built and self.linear_layers:
            head.build((None, self.linear_layers[0].dense.kernel.shape[0]))
            for kept, original in zip(head.linear_layers, self.linear_layers):
                kept.set_weights(original.get_weights())
        return head

    def build(self, input_shape):
        for layer in self.linear_layers:
            layer.build(input_shape)
            input_shape = layer.compute_output_shape(input_shape)

    def call(self, features, training=False):
        hiddens = [features]
        for layer, relu in zip(self.linear_layers, self._relu_after):
            outputs = layer(hiddens[-1], training=training)
            hiddens.append(ops.relu(outputs) if relu else outputs)
        return hiddens[-1], hiddens[self.ft_proj_selector]

    def compute_output_shape(self, input_shape):
        shapes = [tuple(input_shape)]
        for layer in self.linear_layers:
            shapes.append(layer.compute_output_shape(shapes[-1]))
        return shapes[-1], shapes[self.ft_proj_selector]

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "num_layers": self.num_layers,
                "out_dim": self.out_dim, "ft_proj_selector": self.ft_proj_selector,
                "bn_momentum": self.bn_momentum, "bn_epsilon": self.bn_epsilon, "global_bn": self.global_bn,
                "layers_kept": self.layers_kept}


@_register
class SupervisedHead(keras.layers.Layer):
    """Linear classifier (dense with bias, no BN) giving logits.

    Named "head_supervised" by default: the optimizer keeps paths matching it out of LARS weight decay.

    Example:
      >>> head = SupervisedHead(num_classes=10, zero_init=True)
      >>> logits = head(ops.ones([4, 16]))
      >>> logits.shape, float(ops.max(ops.abs(logits)))  # a zero-initialized head starts at logits 0
      (TensorShape([4, 10]), 0.0)
      >>> [weight.path for weight in head.weights]
      ['head_supervised/linear_layer/dense/kernel', 'head_supervised/linear_layer/dense/bias']
      >>> SupervisedHead.from_config(head.get_config()).get_config() == head.get_config()
      True
    """

    def __init__(self, num_classes, zero_init=False, name="head_supervised", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = num_classes
        self.zero_init = zero_init
        self.linear_layer = LinearLayer(num_classes, use_bias=True, use_bn=False, zero_init=zero_init,
                                        name="linear_layer")

    def build(self, input_shape):
        self.linear_layer.build(input_shape)

    def call(self, inputs, training=False):
        return self.linear_layer(inputs, training=training)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "zero_init": self.zero_init}
