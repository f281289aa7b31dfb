"""Building blocks of the SimCLR ResNet: fixed-padding convolution, residual blocks, SK and SE layers.

Every batch-normalization layer is named so that its variable paths contain "batch_normalization"
(LARS skips weight decay on those), and no convolution kernel path does. Composite layers build their
sublayers from shapes in `build()` (no tracing), so building a 795M-parameter ResNet stays cheap.
"""
import keras
import tensorflow as tf
from keras import ops

_register = keras.saving.register_keras_serializable(package="simclr_tf")


def conv_kernel_initializer():
    """The reference's conv init: VarianceScaling(scale=1, fan_in, truncated normal)."""
    return keras.initializers.VarianceScaling(scale=1.0, mode="fan_in", distribution="truncated_normal")


@_register
class BatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` that runs TensorFlow's fused batch-norm kernel when it can.

    It keeps the Keras class's name on purpose: Keras names a layer's weights in `.weights.h5` files after
    its class, so checkpoints written with the Keras layer still load.

    Same arguments, variables and results (to float rounding) as the Keras layer, which normalizes
    in float32 with several element-wise passes, and under a mixed policy first copies its input to
    float32. The fused kernel takes the input in the compute dtype (bfloat16 under mixed_bfloat16)
    and keeps the statistics, scale and offset float32; forward and backward are one kernel each.
    It serves 4-D channels-last inputs without a mask when the batch statistics are this replica's
    own: `synchronized=False`, or a synchronized (global) layer with one replica in sync. Global BN
    over several replicas, masks, renorm and other layouts take the Keras path.
    """

    def _fusable(self, inputs, mask):
        if mask is not None or self.renorm or len(inputs.shape) != 4 or self.axis not in (-1, 3):
            return False
        if keras.backend.backend() != "tensorflow":
            return False
        return not self.synchronized or tf.distribute.get_strategy().num_replicas_in_sync == 1

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        channels = inputs.shape[-1]
        scale = self.gamma if self.scale else tf.ones([channels])
        offset = self.beta if self.center else tf.zeros([channels])
        scale, offset = tf.cast(scale, tf.float32), tf.cast(offset, tf.float32)
        inputs = tf.cast(inputs, self.compute_dtype)
        if not (training and self.trainable):
            outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
                    inputs, scale, offset, mean=tf.cast(self.moving_mean, tf.float32),
                    variance=tf.cast(self.moving_variance, tf.float32), epsilon=self.epsilon,
                    is_training=False)
            return outputs
        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                inputs, scale, offset, epsilon=self.epsilon, is_training=True)
        # The kernel returns the unbiased batch variance; Keras averages the biased one.
        count = tf.cast(tf.reduce_prod(tf.shape(inputs)[:3]), tf.float32)
        variance = variance * (count - 1.0) / tf.maximum(count, 1.0)
        for moving, batch in ((self.moving_mean, mean), (self.moving_variance, variance)):
            moving.assign(moving * self.momentum + tf.cast(batch, moving.dtype) * (1.0 - self.momentum))
        return outputs


def batch_norm(name, momentum, epsilon, synchronized, zero_gamma=False, center=True):
    """A (fused where it can) BatchNormalization layer; `synchronized=True` gives global BN."""
    return BatchNormalization(
            momentum=momentum, epsilon=epsilon, center=center, synchronized=synchronized,
            gamma_initializer="zeros" if zero_gamma else "ones", name=name)


def strided_shape(shape, strides, channels):
    """NHWC shape after a stride-`strides` conv/pool with fixed or SAME padding: ceil(size / strides)."""
    batch, height, width, _ = shape
    spatial = [None if size is None else -(-size // strides) for size in (height, width)]
    return (batch, *spatial, channels)


class _BNSettings:
    """Mixin storing the three batch-norm arguments and making BN layers from them."""

    def _set_bn_settings(self, bn_momentum, bn_epsilon, global_bn):
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon
        self.global_bn = global_bn

    def _bn(self, name, zero_gamma=False):
        return batch_norm(name, self.bn_momentum, self.bn_epsilon, self.global_bn, zero_gamma)

    def _bn_config(self):
        return {"bn_momentum": self.bn_momentum, "bn_epsilon": self.bn_epsilon, "global_bn": self.global_bn}


def _build_conv_bn(conv, bn, input_shape):
    """Builds a conv then the BN on its output; returns the conv's output shape."""
    conv.build(input_shape)
    output_shape = conv.compute_output_shape(input_shape)
    bn.build(output_shape)
    return output_shape


@_register
class FixedPaddingConv2D(keras.layers.Layer):
    """Bias-free convolution; strided ones pad (k-1) symmetrically first and use VALID, as the reference."""

    def __init__(self, filters, kernel_size, strides=1, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.kernel_size = kernel_size
        self.strides = strides

    def build(self, input_shape):
        shape = (self.kernel_size, self.kernel_size, input_shape[-1], self.filters)
        self.kernel = self.add_weight(name="kernel", shape=shape, initializer=conv_kernel_initializer())

    def call(self, inputs):
        if self.strides == 1:
            return ops.conv(inputs, self.kernel, strides=1, padding="same")
        pad_total = self.kernel_size - 1
        begin, end = pad_total // 2, pad_total - pad_total // 2
        inputs = ops.pad(inputs, [[0, 0], [begin, end], [begin, end], [0, 0]])
        return ops.conv(inputs, self.kernel, strides=self.strides, padding="valid")

    def compute_output_shape(self, input_shape):
        return strided_shape(input_shape, self.strides, self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "strides": self.strides}


@_register
class SelectiveKernelConv2D(_BNSettings, keras.layers.Layer):
    """Selective-kernel 3x3 conv (SimCLRv2): two branches from one conv, mixed by a softmax attention.

    The attention pools the summed branches, reduces to max(filters * sk_ratio, min_dim) channels
    (1x1 conv, BN, ReLU) and expands to 2 * filters logits (1x1 conv), as the reference.
    """

    def __init__(self, filters, strides, sk_ratio, min_dim=32, bn_momentum=0.9, bn_epsilon=1e-5,
                 global_bn=True, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.strides = strides
        self.sk_ratio = sk_ratio
        self.min_dim = min_dim
        self._set_bn_settings(bn_momentum, bn_epsilon, global_bn)
        self.branches_conv = FixedPaddingConv2D(2 * filters, 3, strides, name="branches_conv")
        self.branches_bn = self._bn("branches_batch_normalization")
        self.attention_reduce = FixedPaddingConv2D(max(int(filters * sk_ratio), min_dim), 1,
                                                   name="attention_reduce")
        self.attention_bn = self._bn("attention_batch_normalization")
        self.attention_expand = FixedPaddingConv2D(2 * filters, 1, name="attention_expand")

    def build(self, input_shape):
        _build_conv_bn(self.branches_conv, self.branches_bn, input_shape)
        pooled_shape = (input_shape[0], 1, 1, self.filters)
        reduced_shape = _build_conv_bn(self.attention_reduce, self.attention_bn, pooled_shape)
        self.attention_expand.build(reduced_shape)

    def call(self, inputs, training=False):
        branches = ops.relu(self.branches_bn(self.branches_conv(inputs), training=training))
        branches = ops.stack(ops.split(branches, 2, axis=-1), axis=0)  # [2, B, H, W, filters]
        pooled = ops.mean(ops.sum(branches, axis=0), axis=(1, 2), keepdims=True)
        attention = ops.relu(self.attention_bn(self.attention_reduce(pooled), training=training))
        attention = self.attention_expand(attention)
        attention = ops.softmax(ops.stack(ops.split(attention, 2, axis=-1), axis=0), axis=0)
        return ops.sum(branches * attention, axis=0)

    def compute_output_shape(self, input_shape):
        return strided_shape(input_shape, self.strides, self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "strides": self.strides,
                "sk_ratio": self.sk_ratio, "min_dim": self.min_dim, **self._bn_config()}


@_register
class SqueezeExcite(keras.layers.Layer):
    """Squeeze-and-excitation: sigmoid channel gates from pooled features, via max(1, filters * se_ratio)."""

    def __init__(self, filters, se_ratio, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.se_ratio = se_ratio
        self.reduce = keras.layers.Conv2D(max(1, int(filters * se_ratio)), 1, use_bias=True,
                                          kernel_initializer=conv_kernel_initializer(), name="reduce")
        self.expand = None  # its width is the input's, known in build()

    def build(self, input_shape):
        self.expand = keras.layers.Conv2D(input_shape[-1], 1, use_bias=True,
                                          kernel_initializer=conv_kernel_initializer(), name="expand")
        pooled_shape = (input_shape[0], 1, 1, input_shape[-1])
        self.reduce.build(pooled_shape)
        self.expand.build(self.reduce.compute_output_shape(pooled_shape))

    def call(self, inputs):
        gates = ops.mean(inputs, axis=(1, 2), keepdims=True)
        gates = self.expand(ops.relu(self.reduce(gates)))
        return ops.sigmoid(gates) * inputs

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "se_ratio": self.se_ratio}


@_register
class ProjectionShortcut(_BNSettings, keras.layers.Layer):
    """Shortcut that changes channels/stride: 1x1 conv + BN, or (ResNet-D) avg-pool, 1x1 conv + BN."""

    def __init__(self, filters, strides, resnet_d=False, bn_momentum=0.9, bn_epsilon=1e-5, global_bn=True,
                 **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.strides = strides
        self.resnet_d = resnet_d
        self._set_bn_settings(bn_momentum, bn_epsilon, global_bn)
        self.conv = FixedPaddingConv2D(filters, 1, 1 if resnet_d else strides, name="conv")
        self.bn = self._bn("batch_normalization")

    def build(self, input_shape):
        _build_conv_bn(self.conv, self.bn, input_shape)

    def call(self, inputs, training=False):
        if self.resnet_d:
            if self.strides > 1:
                inputs = ops.pad(inputs, [[0, 0], [0, 1], [0, 1], [0, 0]])
                inputs = ops.average_pool(inputs, 2, self.strides, padding="valid")
            else:
                inputs = ops.average_pool(inputs, 2, 1, padding="same")
        return self.bn(self.conv(inputs), training=training)

    def compute_output_shape(self, input_shape):
        return strided_shape(input_shape, self.strides, self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "strides": self.strides,
                "resnet_d": self.resnet_d, **self._bn_config()}


class _ResidualBlock(_BNSettings, keras.layers.Layer):
    """Arguments, shortcut, squeeze-excite and output shared by both block types.

    Subclasses list their branch in `branch_layers()` as (conv, bn) pairs or an SK layer, and compute it
    in `residual(inputs, training)`. The branch's last BN starts with gamma = 0, so a fresh block outputs
    relu(shortcut).
    """

    expansion = 1

    def __init__(self, filters, strides, use_projection=False, sk_ratio=0.0, se_ratio=0.0, bn_momentum=0.9,
                 bn_epsilon=1e-5, global_bn=True, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.strides = strides
        self.use_projection = use_projection
        self.sk_ratio = sk_ratio
        self.se_ratio = se_ratio
        self._set_bn_settings(bn_momentum, bn_epsilon, global_bn)
        self.shortcut = None
        if use_projection:
            # As the reference: selective kernels (sk_ratio > 0) come with the ResNet-D shortcut.
            self.shortcut = ProjectionShortcut(self.expansion * filters, strides, resnet_d=sk_ratio > 0,
                                               name="shortcut", **self._bn_config())

    def _add_squeeze_excite(self):
        """Called by subclasses after their branch layers, so variables are listed in call order."""
        self.squeeze_excite = None
        if self.se_ratio > 0:
            self.squeeze_excite = SqueezeExcite(self.filters, self.se_ratio, name="squeeze_excite")

    def build(self, input_shape):
        if self.shortcut is not None:
            self.shortcut.build(input_shape)
        shape = input_shape
        for layer in self.branch_layers():
            if isinstance(layer, SelectiveKernelConv2D):
                layer.build(shape)
                shape = layer.compute_output_shape(shape)
            else:
                shape = _build_conv_bn(*layer, shape)
        if self.squeeze_excite is not None:
            self.squeeze_excite.build(shape)

    def branch_layers(self):
        raise NotImplementedError

    def residual(self, inputs, training):
        raise NotImplementedError

    def call(self, inputs, training=False):
        shortcut = inputs if self.shortcut is None else self.shortcut(inputs, training=training)
        x = self.residual(inputs, training)
        if self.squeeze_excite is not None:
            x = self.squeeze_excite(x)
        return ops.relu(x + shortcut)

    def compute_output_shape(self, input_shape):
        return strided_shape(input_shape, self.strides, self.expansion * self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "strides": self.strides,
                "use_projection": self.use_projection, "sk_ratio": self.sk_ratio, "se_ratio": self.se_ratio,
                **self._bn_config()}


@_register
class BasicBlock(_ResidualBlock):
    """Two 3x3 convs (ResNet-18/34). As in the reference, sk_ratio > 0 only makes the shortcut ResNet-D.

    Keyword arguments after `strides` are those of `_ResidualBlock`.
    """

    expansion = 1

    def __init__(self, filters, strides, **kwargs):
        super().__init__(filters, strides, **kwargs)
        self.conv_1 = FixedPaddingConv2D(filters, 3, strides, name="conv_1")
        self.bn_1 = self._bn("batch_normalization_1")
        self.conv_2 = FixedPaddingConv2D(filters, 3, 1, name="conv_2")
        self.bn_2 = self._bn("batch_normalization_2", zero_gamma=True)
        self._add_squeeze_excite()

    def branch_layers(self):
        return [(self.conv_1, self.bn_1), (self.conv_2, self.bn_2)]

    def residual(self, inputs, training):
        x = ops.relu(self.bn_1(self.conv_1(inputs), training=training))
        return self.bn_2(self.conv_2(x), training=training)


@_register
class BottleneckBlock(_ResidualBlock):
    """1x1 reduce, 3x3 (or selective-kernel) conv carrying the stride, 1x1 expand to 4x filters.

    Keyword arguments after `strides` are those of `_ResidualBlock`.
    """

    expansion = 4

    def __init__(self, filters, strides, **kwargs):
        super().__init__(filters, strides, **kwargs)
        self.conv_1 = FixedPaddingConv2D(filters, 1, 1, name="conv_1")
        self.bn_1 = self._bn("batch_normalization_1")
        if self.sk_ratio > 0:
            self.selective_kernel = SelectiveKernelConv2D(filters, strides, self.sk_ratio,
                                                          name="selective_kernel", **self._bn_config())
        else:
            self.selective_kernel = None
            self.conv_2 = FixedPaddingConv2D(filters, 3, strides, name="conv_2")
            self.bn_2 = self._bn("batch_normalization_2")
        self.conv_3 = FixedPaddingConv2D(4 * filters, 1, 1, name="conv_3")
        self.bn_3 = self._bn("batch_normalization_3", zero_gamma=True)
        self._add_squeeze_excite()

    def branch_layers(self):
        middle = (self.conv_2, self.bn_2) if self.selective_kernel is None else self.selective_kernel
        return [(self.conv_1, self.bn_1), middle, (self.conv_3, self.bn_3)]

    def residual(self, inputs, training):
        x = ops.relu(self.bn_1(self.conv_1(inputs), training=training))
        if self.selective_kernel is not None:
            x = self.selective_kernel(x, training=training)  # no ReLU after SK, as the reference
        else:
            x = ops.relu(self.bn_2(self.conv_2(x), training=training))
        return self.bn_3(self.conv_3(x), training=training)


@_register
class BlockGroup(_BNSettings, keras.layers.Layer):
    """`num_blocks` residual blocks; the first one projects the shortcut and carries the stride."""

    def __init__(self, filters, num_blocks, strides, bottleneck, sk_ratio=0.0, se_ratio=0.0, bn_momentum=0.9,
                 bn_epsilon=1e-5, global_bn=True, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.num_blocks = num_blocks
        self.strides = strides
        self.bottleneck = bottleneck
        self.sk_ratio = sk_ratio
        self.se_ratio = se_ratio
        self._set_bn_settings(bn_momentum, bn_epsilon, global_bn)
        block_class = BottleneckBlock if bottleneck else BasicBlock
        self.blocks = [
                block_class(filters, strides if i == 0 else 1, use_projection=i == 0, sk_ratio=sk_ratio,
                            se_ratio=se_ratio, name=f"block_{i}", **self._bn_config())
                for i in range(num_blocks)
        ]

    def build(self, input_shape):
        for block in self.blocks:
            block.build(input_shape)
            input_shape = block.compute_output_shape(input_shape)

    def call(self, inputs, training=False):
        for block in self.blocks:
            inputs = block(inputs, training=training)
        return inputs

    def compute_output_shape(self, input_shape):
        return strided_shape(input_shape, self.strides, self.blocks[0].expansion * self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "num_blocks": self.num_blocks,
                "strides": self.strides, "bottleneck": self.bottleneck, "sk_ratio": self.sk_ratio,
                "se_ratio": self.se_ratio, **self._bn_config()}
