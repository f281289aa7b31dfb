"""ResNet v1 encoder of SimCLR (v1 and v2: selective kernels, ResNet-D, squeeze-excite), as a Keras model.

Example:
    encoder = ResNet(depth=18, width_multiplier=0.25, cifar_stem=True, global_bn=False)
    features = encoder(images, training=False)                # [B, encoder.feature_dim]
    endpoints = encoder.call_with_endpoints(images)             # {"initial_conv": ..., "final_avg_pool": ...}
"""
import keras
from keras import ops

from simclr_tf.models.resnet_blocks import BlockGroup, FixedPaddingConv2D, batch_norm, strided_shape

# depth -> (bottleneck blocks?, blocks per group), as in the reference.
RESNET_SPECS = {
        18: (False, (2, 2, 2, 2)),
        34: (False, (3, 4, 6, 3)),
        50: (True, (3, 4, 6, 3)),
        101: (True, (3, 4, 23, 3)),
        152: (True, (3, 8, 36, 3)),
        200: (True, (3, 24, 36, 3)),
}
ENDPOINT_NAMES = ("initial_conv", "initial_max_pool", "block_group1", "block_group2", "block_group3",
                  "block_group4", "final_avg_pool")


def scaled_channels(channels, width_multiplier):
    """Channel count of a layer that has `channels` at width 1x: round(channels * w), at least 1.

    Integer multipliers give exactly the reference's `channels * w`; fractional ones (0.25, 0.5) give
    small networks for tests.
    """
    return max(1, int(round(channels * width_multiplier)))


@keras.saving.register_keras_serializable(package="simclr_tf")
class Stem(keras.layers.Layer):
    """The layers before the first block group.

    CIFAR: 3x3 stride-1 conv, BN, ReLU (no pooling). ImageNet: 7x7 stride-2 conv, or with `resnet_d` three
    3x3 convs (filters/2, filters/2, filters; the first strided) with BN+ReLU between, then BN, ReLU and a
    3x3 stride-2 max-pool. `call` returns (output, endpoints) where endpoints holds "initial_conv" (the
    conv output before its BN) and, for the ImageNet stem, "initial_max_pool".
    """

    def __init__(self, filters, cifar_stem=False, resnet_d=False, bn_momentum=0.9, bn_epsilon=1e-5,
                 global_bn=True, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.cifar_stem = cifar_stem
        self.resnet_d = resnet_d
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon
        self.global_bn = global_bn
        # (conv, bn) pairs with a ReLU after each BN.
        if cifar_stem:
            specs = [(filters, 3, 1)]
        elif resnet_d:
            half = max(1, filters // 2)
            specs = [(half, 3, 2), (half, 3, 1), (filters, 3, 1)]
        else:
            specs = [(filters, 7, 2)]
        suffixes = [""] if len(specs) == 1 else [f"_{i}" for i in range(len(specs))]
        self.convs, self.bns = [], []
        for (conv_filters, kernel_size, strides), suffix in zip(specs, suffixes):
            self.convs.append(
                    FixedPaddingConv2D(conv_filters, kernel_size, strides, name=f"initial_conv{suffix}"))
            self.bns.append(batch_norm(f"initial_conv{suffix}_batch_normalization", bn_momentum, bn_epsilon,
                                       global_bn))

    def build(self, input_shape):
        for conv, bn in zip(self.convs, self.bns):
            conv.build(input_shape)
            input_shape = conv.compute_output_shape(input_shape)
            bn.build(input_shape)

    def call(self, inputs, training=False):
        x = inputs
        for conv, bn in zip(self.convs, self.bns):
            x = conv(x)
            endpoints = {"initial_conv": x}  # the last conv's output is the endpoint
            x = ops.relu(bn(x, training=training))
        if not self.cifar_stem:
            x = ops.max_pool(x, 3, 2, padding="same")
            endpoints["initial_max_pool"] = x
        return x, endpoints

    def compute_output_shape(self, input_shape):
        for conv in self.convs:
            input_shape = conv.compute_output_shape(input_shape)
        endpoints = {"initial_conv": input_shape}
        if not self.cifar_stem:
            input_shape = endpoints["initial_max_pool"] = strided_shape(input_shape, 2, self.filters)
        return input_shape, endpoints

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "cifar_stem": self.cifar_stem,
                "resnet_d": self.resnet_d, "bn_momentum": self.bn_momentum, "bn_epsilon": self.bn_epsilon,
                "global_bn": self.global_bn}


@keras.saving.register_keras_serializable(package="simclr_tf")
class ResNet(keras.Model):
    """ResNet v1 encoder returning globally average-pooled features [B, feature_dim].

    Args:
        depth: 18 or 34 (basic blocks), 50, 101, 152 or 200 (bottleneck blocks).
        width_multiplier: channel multiplier; fractional values are rounded per layer (`scaled_channels`).
        cifar_stem: 3x3 stride-1 stem without max-pool, for images of 32 px or less.
        sk_ratio: > 0 turns on SimCLRv2 selective kernels (bottleneck blocks) and, as in the reference, the
            ResNet-D stem (ImageNet stem only) and ResNet-D projection shortcuts.
        se_ratio: > 0 adds squeeze-excite to every block.
        bn_momentum, bn_epsilon: of every batch norm.
        global_bn: synchronized (cross-replica) batch norm.

    Same computation as the reference tf2/resnet.py: with the same weights the outputs are identical, and
    `weights` lists the variables in the reference's order and shapes.

    Example:
      >>> from keras import random
      >>> encoder = ResNet(depth=18, width_multiplier=0.125, cifar_stem=True)
      >>> images = random.uniform([2, 32, 32, 3], seed=0)
      >>> encoder(images, training=False).shape, encoder.feature_dim
      (TensorShape([2, 64]), 64)
      >>> endpoints = encoder.call_with_endpoints(images)  # the CIFAR stem has no max-pool
      >>> {name: tuple(value.shape) for name, value in endpoints.items()}
      {'initial_conv': (2, 32, 32, 8), 'block_group1': (2, 32, 32, 8), 'block_group2': (2, 16, 16, 16),
       'block_group3': (2, 8, 8, 32), 'block_group4': (2, 4, 4, 64), 'final_avg_pool': (2, 64)}
      >>> [layer.name for layer in encoder.layers_up_to_block(2)]  # frozen by fine_tune_after_block=2
      ['stem', 'block_group1', 'block_group2']

      The paper's ResNet-50 (1x) has 24M parameters (23.5M trainable, plus batch-norm moving statistics);
      building it creates the weights without running any image through it:

      >>> from math import prod
      >>> resnet50 = ResNet(depth=50, width_multiplier=1)
      >>> resnet50.build((None, 224, 224, 3))
      >>> resnet50.count_params(), sum(prod(w.shape) for w in resnet50.trainable_weights)
      (23561152, 23508032)
      >>> resnet50.feature_dim
      2048
    """

    def __init__(self, depth=50, width_multiplier=1.0, cifar_stem=False, sk_ratio=0.0, se_ratio=0.0,
                 bn_momentum=0.9, bn_epsilon=1e-5, global_bn=True, name=None, **kwargs):
        if depth not in RESNET_SPECS:
            raise ValueError(f"ResNet depth must be one of {sorted(RESNET_SPECS)}, got {depth!r}.")
        if width_multiplier <= 0:
            raise ValueError(f"width_multiplier must be > 0, got {width_multiplier!r}.")
        super().__init__(name=name or f"resnet{depth}", **kwargs)
        self.depth = depth
        self.width_multiplier = width_multiplier
        self.cifar_stem = cifar_stem
        self.sk_ratio = sk_ratio
        self.se_ratio = se_ratio
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon
        self.global_bn = global_bn
        bn_args = dict(bn_momentum=bn_momentum, bn_epsilon=bn_epsilon, global_bn=global_bn)
        bottleneck, blocks_per_group = RESNET_SPECS[depth]
        self.stem = Stem(scaled_channels(64, width_multiplier), cifar_stem=cifar_stem, resnet_d=sk_ratio > 0,
                         name="stem", **bn_args)
        self.block_groups = [
                BlockGroup(scaled_channels(64 * 2**i, width_multiplier), num_blocks, 1 if i == 0 else 2,
                           bottleneck, sk_ratio=sk_ratio, se_ratio=se_ratio, name=f"block_group{i + 1}",
                           **bn_args)
                for i, num_blocks in enumerate(blocks_per_group)
        ]
        last_filters = self.block_groups[-1].filters
        self.feature_dim = 4 * last_filters if bottleneck else last_filters

    def build(self, input_shape):
        self.stem.build(input_shape)
        input_shape, _ = self.stem.compute_output_shape(input_shape)
        for group in self.block_groups:
            group.build(input_shape)
            input_shape = group.compute_output_shape(input_shape)

    def call(self, images, training=False, return_endpoints=False):
        endpoints = self._forward(images, training=training)
        return endpoints if return_endpoints else endpoints["final_avg_pool"]

    def call_with_endpoints(self, images, training=False):
        """Dict of intermediate outputs; keys are the members of ENDPOINT_NAMES this stem produces."""
        return self(images, training=training, return_endpoints=True)

    def _forward(self, images, training):
        x, endpoints = self.stem(images, training=training)
        for group in self.block_groups:
            x = group(x, training=training)
            endpoints[group.name] = x
        endpoints["final_avg_pool"] = ops.mean(x, axis=(1, 2))
        return endpoints

    def layers_up_to_block(self, block):
        """Sublayers to freeze so that training starts after `block`.

        -1: none; 0: the stem; 1..4: the stem and block groups 1..block (as `fine_tune_after_block`).
        """
        if block not in range(-1, 5):
            raise ValueError(f"block must be in -1..4 (as fine_tune_after_block), got {block!r}.")
        if block == -1:
            return []
        return [self.stem] + self.block_groups[:block]

    def get_config(self):
        return {**super().get_config(), "depth": self.depth, "width_multiplier": self.width_multiplier,
                "cifar_stem": self.cifar_stem, "sk_ratio": self.sk_ratio, "se_ratio": self.se_ratio,
                "bn_momentum": self.bn_momentum, "bn_epsilon": self.bn_epsilon, "global_bn": self.global_bn}
