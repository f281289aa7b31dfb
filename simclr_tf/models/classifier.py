"""A classifier on a SimCLR encoder: fine-tuning (SimCLR v2 step 2) and the linear evaluation protocol.

The model holds only what it uses: the encoder, the first `ft_proj_selector` layers of the pretrained
projection head (SimCLR v2 fine-tunes from the first one), and a linear classifier. Blocks up to
`fine_tune_after_block` are frozen: their weights get no gradient, and their batch norms run in inference
mode (the moving statistics stay as pretrained). With `fine_tune_after_block=4` the encoder is frozen
entirely: the linear evaluation protocol.
"""
import re

import keras
import tensorflow as tf

from simclr_tf import losses
from simclr_tf.models.encoders import as_encoder
from simclr_tf.models.evaluation import classification_metrics, update_classification_metrics
from simclr_tf.models.heads import ProjectionHead, SupervisedHead
from simclr_tf.models.resnet import ResNet  # noqa: F401 (used in the docstring example)
from simclr_tf.models.training_step import TrainingModel


@keras.saving.register_keras_serializable(package="simclr_tf")
class SimCLRClassifier(TrainingModel):
    """Encoder, kept projection layers and a linear classifier, trained with cross-entropy.

    Args:
      encoder: a `ResNet` (built), or any encoder (`encoders.as_encoder`: a `keras.Model` mapping images
        to a feature vector or map).
      projection_head: the projection layers kept under the classifier (`ProjectionHead.truncated(k)`);
        the classifier reads its output.
      num_classes: classes of the classifier.
      fine_tune_after_block: -1 trains everything; 0 freezes the stem; 1..4 also freeze block groups 1..k
        (4: only the kept projection layers and the classifier train). Encoders other than our ResNet
        take -1 or 4 (`encoder.layers_up_to_block`).
      zero_init_logits_layer: start the classifier at zero (logits are 0 at step 0).
      weight_decay, optimizer_name: the L2 term added to the loss as in pretraining (the paper fine-tunes
        without weight decay).
      grad_accum_steps: split each replica's batch into this many micro-batches, run one after the other,
        and apply the mean of their gradients in one step (batch norm sees a micro-batch's statistics).

    The training step is `TrainingModel`'s (models/training_step.py); this class states the loss.

    `call` returns a float32 dict of `final_avg_pool`, `proj_head_output` and `logits_sup`.

    Example:
      >>> from simclr_tf.models.heads import ProjectionHead
      >>> encoder = ResNet(depth=18, width_multiplier=0.125, cifar_stem=True)
      >>> head = ProjectionHead(num_layers=2, out_dim=8).truncated(1)
      >>> classifier = SimCLRClassifier(encoder, head, num_classes=10, fine_tune_after_block=4,
      ...                               zero_init_logits_layer=True)
      >>> logits = classifier(tf.zeros([2, 16, 16, 3]))["logits_sup"]
      >>> logits.shape, float(tf.reduce_max(tf.abs(logits)))
      (TensorShape([2, 10]), 0.0)
      >>> sorted({v.path.split("/")[1] for v in classifier.trainable_variables})  # the encoder is frozen
      ['head_supervised', 'projection_head']
    """

    def __init__(self, encoder, projection_head, num_classes, fine_tune_after_block=-1,
                 zero_init_logits_layer=False, weight_decay=0.0, optimizer_name="lars", grad_accum_steps=1,
                 **kwargs):
        super().__init__(**kwargs)
        if num_classes < 1:
            raise ValueError(f"A classifier needs num_classes >= 1, got {num_classes}.")
        self.encoder = encoder = as_encoder(encoder)
        self.projection_head = projection_head
        self.num_classes = num_classes
        self.fine_tune_after_block = fine_tune_after_block
        self.zero_init_logits_layer = zero_init_logits_layer
        self.weight_decay = weight_decay
        self.optimizer_name = optimizer_name
        self.grad_accum_steps = grad_accum_steps
        self.supervised_head = SupervisedHead(num_classes, zero_init=zero_init_logits_layer)
        for layer in encoder.layers_up_to_block(fine_tune_after_block):
            layer.trainable = False
        self.track_metrics(("loss", "supervised_loss", "supervised_acc", "weight_decay"),
                           classification_metrics(num_classes))

    def call(self, images, training=False):
        features = self.encoder(images, training=training)
        hidden, _ = self.projection_head(features, training=training)
        logits = self.supervised_head(hidden, training=training)
        outputs = {"final_avg_pool": features, "proj_head_output": hidden, "logits_sup": logits}
        return {name: tf.cast(value, tf.float32) for name, value in outputs.items()}

    def loss_and_metrics(self, batch):
        """(cross-entropy plus the L2 term, the metric values) of one (micro-)batch `(images, labels)`."""
        images, labels = batch
        logits = self(images, training=True)["logits_sup"]
        sup_loss = losses.supervised_loss(labels, logits)
        decay = self.weight_decay_loss(self.weight_decay, self.optimizer_name)
        accuracy = tf.reduce_mean(tf.cast(
            tf.equal(tf.argmax(logits, -1, output_type=labels.dtype), labels), tf.float32))
        return sup_loss + decay, {"supervised_loss": sup_loss, "supervised_acc": accuracy, "weight_decay": decay}

    def loss_decayed_patterns(self):
        """With LARS, the loss decays the classifier's kernel (as the reference does)."""
        return (re.escape(self.supervised_head.name),)

    def update_eval_metrics(self, images, labels):
        logits = self(images, training=False)["logits_sup"]
        update_classification_metrics(self._eval_metrics, labels, logits)

    def get_config(self):
        return {
            **super().get_config(),
            "encoder": keras.saving.serialize_keras_object(self.encoder),
            "projection_head": keras.saving.serialize_keras_object(self.projection_head),
            "num_classes": self.num_classes,
            "fine_tune_after_block": self.fine_tune_after_block,
            "zero_init_logits_layer": self.zero_init_logits_layer,
            "weight_decay": self.weight_decay,
            "optimizer_name": self.optimizer_name,
            "grad_accum_steps": self.grad_accum_steps,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        config["projection_head"] = keras.saving.deserialize_keras_object(config["projection_head"])
        return cls(**config)


def copy_layer(layer, input_shape, **overrides):
    """A new layer like `layer` (config changed by `overrides`) with its weights, all trainable again.

    The copy computes in the current dtype policy, whatever precision the original was trained in.
    Overrides the layer has no argument for are left out (the batch-norm settings of our ResNet and
    heads do not reach the batch norms inside another encoder, which keep their own).
    """
    config = {key: value for key, value in layer.get_config().items() if key != "dtype"}
    overrides = {key: value for key, value in overrides.items() if key in config}
    copy = type(layer).from_config({**config, **overrides})
    copy.build(input_shape)
    copy.set_weights(layer.get_weights())
    return copy


def build_classifier(pretrained, num_classes, image_size, ft_proj_selector=0, fine_tune_after_block=-1,
                     zero_init_logits_layer=False, weight_decay=0.0, optimizer_name="lars",
                     grad_accum_steps=1, **bn_overrides):
    """A `SimCLRClassifier` on copies of the encoder and projection layers of `pretrained`.

    `pretrained` is any model with `encoder` and `projection_head` (a pretraining `SimCLRModel`, a
    loaded released checkpoint, or another classifier). `ft_proj_selector` counts projection layers
    as the flag does: 0 classifies the encoder output, k the output of the k-th layer, -1 the last.
    `bn_overrides` (`global_bn`, `bn_momentum`) set how batch norm runs while fine-tuning.

    Example:
      >>> from simclr_tf.models.simclr import SimCLRModel
      >>> pretrained = SimCLRModel(ResNet(depth=18, width_multiplier=0.125, cifar_stem=True),
      ...                          ProjectionHead(num_layers=3, out_dim=8))
      >>> _ = pretrained(tf.zeros([1, 16, 16, 3]))  # builds it (or load trained weights)
      >>> classifier = build_classifier(pretrained, num_classes=5, image_size=16, ft_proj_selector=1,
      ...                               fine_tune_after_block=2)
      >>> outputs = classifier(tf.zeros([2, 16, 16, 3]))
      >>> {name: tuple(value.shape) for name, value in outputs.items()}
      {'final_avg_pool': (2, 64), 'proj_head_output': (2, 64), 'logits_sup': (2, 5)}
      >>> [layer.name for layer in classifier.encoder.layers if layer.trainable]  # stem, groups 1-2 frozen
      ['block_group3', 'block_group4']
      >>> len(classifier.projection_head.linear_layers)  # the first of the three projection layers
      1
      >>> import numpy as np
      >>> classifier.encoder is pretrained.encoder  # a copy: fine-tuning leaves `pretrained` as it was
      False
      >>> all(np.array_equal(copied, original) for copied, original in
      ...     zip(classifier.encoder.get_weights(), pretrained.encoder.get_weights()))
      True
    """
    input_shape = (None, image_size, image_size, 3)
    head = pretrained.projection_head
    if not isinstance(head, ProjectionHead):
        raise TypeError(f"pretrained.projection_head must be a ProjectionHead, got {type(head).__name__}.")
    if not pretrained.encoder.built:
        raise ValueError(
            "build_classifier copies the pretrained weights, but the encoder is not built yet (it has no "
            "weights). Call the pretrained model on a batch of images first, e.g. "
            f"pretrained(tf.zeros([1, {image_size}, {image_size}, 3])), or load trained weights into it.")
    try:
        kept = head.num_layers_kept(ft_proj_selector)
    except ValueError as error:
        raise ValueError(f"--ft_proj_selector={ft_proj_selector} does not fit the pretrained projection "
                         f"head: {error}") from None
    encoder = copy_layer(pretrained.encoder, input_shape, **bn_overrides)
    kept_head = head.truncated(kept)
    if kept:
        kept_head = copy_layer(kept_head, (None, encoder.feature_dim), **bn_overrides)
    classifier = SimCLRClassifier(
        encoder, kept_head, num_classes,
        fine_tune_after_block=fine_tune_after_block, zero_init_logits_layer=zero_init_logits_layer,
        weight_decay=weight_decay, optimizer_name=optimizer_name, grad_accum_steps=grad_accum_steps)
    classifier(tf.zeros([1, image_size, image_size, 3]))
    return classifier
