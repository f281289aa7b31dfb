"""The SimCLR pretraining model: encoder, projection head, NT-Xent, and an optional online linear probe.

`fit()` takes batches `((view_1, view_2), labels)`; both views go through the encoder as one batch of 2N
images (so batch norm sees both, as in the paper). `evaluate()` takes `(images, labels)` and reports the
probe's top-1/top-5. Under a `tf.distribute` strategy the NT-Xent negatives come from all replicas.
"""
import re

import keras
import tensorflow as tf

from simclr_tf import collapse
from simclr_tf import losses
from simclr_tf.config import CIFAR_STEM_MAX_SIZE
from simclr_tf.models.encoders import (RESNET, KerasEncoder, as_encoder, build_backbone,
                                      parse_backbone_args)
from simclr_tf.models.evaluation import classification_metrics, update_classification_metrics
from simclr_tf.models.heads import ProjectionHead, SupervisedHead
from simclr_tf.models.memory import MomentumMemory
from simclr_tf.models.resnet import ResNet
from simclr_tf.models.training_step import TrainingModel


@keras.saving.register_keras_serializable(package="simclr_tf")
class SimCLRModel(TrainingModel):
    """SimCLR: contrastive pretraining of `encoder` through `projection_head`.

    Args:
      encoder: a `ResNet`, or any `keras.Model` mapping images to a feature vector or a feature map
        (wrapped by `encoders.as_encoder`; see simclr_tf/models/encoders.py for the contract).
      projection_head: a `ProjectionHead`.
      num_classes: classes of the online linear probe; 0 disables it.
      temperature, hidden_norm: of the NT-Xent loss.
      weight_decay, optimizer_name: the L2 term added to the loss as the reference does (with LARS only
        the probe's kernel, since LARS decays the rest itself).
      grad_accum_steps: split each replica's batch into this many micro-batches, run them one after the
        other and apply the mean of their gradients in one optimizer step (less memory, same number of
        steps). The NT-Xent negatives and batch-norm statistics are those of a micro-batch.
      contrastive_chunks: compute each step in this many chunks of each replica's batch with cached
        gradients: NT-Xent over the whole global batch in a chunk's activation memory, one extra forward
        pass; batch norm uses each chunk's statistics (ghost batch norm). Not with `grad_accum_steps`.
      memory_size, memory_momentum: the SimCLR v2 memory (models/memory.py): a queue of the last
        `memory_size` projections of a moving-average copy (momentum `memory_momentum`) of encoder and
        head, extra negatives for both views; 0 disables it. Works with the chunks and accumulation.

    The training step (accumulation, cached chunks, replica and loss scaling, metrics) is `TrainingModel`'s
    (models/training_step.py); this class states the loss.

    Example:
      >>> model = SimCLRModel(ResNet(depth=18, width_multiplier=0.125, cifar_stem=True),
      ...                     ProjectionHead(num_layers=2, out_dim=8), num_classes=10)
      >>> model.compile(optimizer=keras.optimizers.SGD(0.1))
      >>> views = (tf.random.uniform([4, 32, 32, 3]), tf.random.uniform([4, 32, 32, 3]))
      >>> logs = model.train_on_batch(views, tf.constant([0, 1, 2, 3]), return_dict=True)
      >>> sorted(k for k in logs if k.startswith("contrast"))
      ['contrast_acc', 'contrast_entropy', 'contrast_loss']
    """

    def __init__(self, encoder, projection_head, num_classes=0, temperature=0.1, hidden_norm=True,
                 weight_decay=0.0, optimizer_name="lars", zero_init_logits_layer=False, grad_accum_steps=1,
                 contrastive_chunks=1, memory_size=0, memory_momentum=0.999, **kwargs):
        super().__init__(**kwargs)
        self.encoder = as_encoder(encoder)
        self.projection_head = projection_head
        self.num_classes = num_classes
        self.temperature = temperature
        self.hidden_norm = hidden_norm
        self.weight_decay = weight_decay
        self.optimizer_name = optimizer_name
        self.zero_init_logits_layer = zero_init_logits_layer
        self.grad_accum_steps = grad_accum_steps
        self.contrastive_chunks = contrastive_chunks
        if contrastive_chunks > 1 and grad_accum_steps > 1:
            raise ValueError("contrastive_chunks and grad_accum_steps both split the batch; use one of them "
                             "(cached chunks keep the whole batch's negatives).")
        self.memory_size = memory_size
        self.memory_momentum = memory_momentum
        self.memory = (MomentumMemory(self.encoder, projection_head, memory_size, memory_momentum, name="memory")
                       if memory_size else None)
        self.supervised_head = (SupervisedHead(num_classes, zero_init=zero_init_logits_layer)
                                if num_classes else None)
        names = ["loss", "contrast_loss", "contrast_acc", "contrast_entropy", "weight_decay", "proj_std"]
        if num_classes:
            names += ["supervised_loss", "supervised_acc"]
        self.track_metrics(names, classification_metrics(num_classes) if num_classes else {})

    @property
    def cached_chunks(self):
        return self.contrastive_chunks

    def call(self, images, training=False):
        """Returns a float32 dict of `final_avg_pool`, `proj_head_output` and, with a probe, `logits_sup`."""
        features = self.encoder(images, training=training)
        projection, probe_input = self.projection_head(features, training=training)
        if self.memory is not None and not self.memory.built:  # The online network is built now.
            self.memory.build_from(self.encoder, self.projection_head, images.shape[1:])
        outputs = {"final_avg_pool": features, "proj_head_output": projection}
        if self.supervised_head is not None:
            outputs["logits_sup"] = self.supervised_head(
                tf.stop_gradient(probe_input), training=training)
        # Under a mixed precision policy the layers compute in 16 bits; losses and metrics get float32.
        return {name: tf.cast(value, tf.float32) for name, value in outputs.items()}

    def train_inputs(self, data):
        (view_1, view_2), labels, _ = keras.utils.unpack_x_y_sample_weight(data)
        return view_1, view_2, labels

    def train_step(self, data):
        if self.memory is None:
            return super().train_step(data)
        view_1, view_2, _ = self.train_inputs(data)
        # The copy's projections at the weights before this step.
        self.memory.start_from(self.encoder, self.projection_head)
        keys = self.memory.keys(view_1, view_2, max(self.contrastive_chunks, self.grad_accum_steps))
        logs = super().train_step(data)
        # After the loss read the queue: this batch's keys serve from the next step.
        self.memory.copy_weights(self.encoder, self.projection_head)
        self.memory.enqueue(keys)
        return logs

    def loss_and_metrics(self, batch):
        """(the loss, the metric values) of one (micro-)batch `(view_1, view_2, labels)`."""
        view_1, view_2, labels = batch
        outputs = self(tf.concat([view_1, view_2], axis=0), training=True)
        proj_1, proj_2 = tf.split(outputs["proj_head_output"], 2, axis=0)
        loss, updates = self._contrastive_loss_and_updates(proj_1, proj_2)
        if self.supervised_head is not None:
            sup_loss, sup_updates = self._probe_loss_and_updates(labels, outputs["logits_sup"])
            loss += sup_loss
            updates.update(sup_updates)
        loss += updates["weight_decay"]
        return loss, updates

    def chunk_embeddings(self, chunk):
        """Both views of a chunk's images go through together, as in the plain step; the probe's loss is a
        per-example mean, so each chunk contributes its share."""
        chunk_1, chunk_2, chunk_labels = chunk
        outputs = self(tf.concat([chunk_1, chunk_2], axis=0), training=True)
        if self.supervised_head is None:
            return outputs["proj_head_output"], None, {}
        sup_loss, updates = self._probe_loss_and_updates(chunk_labels, outputs["logits_sup"])
        return outputs["proj_head_output"], sup_loss, updates

    def batch_loss_and_metrics(self, projections):
        """NT-Xent over the whole batch from each chunk's projections (both views of the chunk)."""
        views = [tf.split(p, 2, axis=0) for p in projections]
        loss, updates = self._contrastive_loss_and_updates(
            tf.concat([v[0] for v in views], 0), tf.concat([v[1] for v in views], 0))
        loss += updates["weight_decay"]
        return loss, updates

    def chunk_state_variables(self):
        return self.encoder.non_trainable_variables + self.projection_head.non_trainable_variables

    def _contrastive_loss_and_updates(self, proj_1, proj_2):
        """(NT-Xent, metric values with the weight decay) of both views' projections."""
        memory, memory_valid = self.memory.negatives() if self.memory is not None else (None, None)
        contrast_loss, logits_ab, contrast_labels = losses.contrastive_loss(
            proj_1, proj_2, temperature=self.temperature, hidden_norm=self.hidden_norm, memory=memory,
            memory_valid=memory_valid)
        updates = {"contrast_loss": contrast_loss}
        updates.update(losses.contrastive_metrics(logits_ab, contrast_labels))
        updates["proj_std"] = collapse.std_of_l2_normalized(tf.concat([proj_1, proj_2], axis=0))  # collapse
        updates["weight_decay"] = self.weight_decay_loss(self.weight_decay, self.optimizer_name)
        return contrast_loss, updates

    def _probe_loss_and_updates(self, labels, logits):
        """(the online probe's loss, its metric values) on both views' logits."""
        # Unlabelled images (label -1) are left out of the probe; the contrastive loss uses them.
        sup_loss, sup_acc = losses.labelled_loss_and_accuracy(tf.concat([labels, labels], axis=0), logits)
        return sup_loss, {"supervised_loss": sup_loss, "supervised_acc": sup_acc}

    def loss_decayed_patterns(self):
        """With LARS, the loss decays the probe's kernel (as the reference does)."""
        return (re.escape(self.supervised_head.name),) if self.supervised_head is not None else ()

    def update_eval_metrics(self, images, labels):
        if self.supervised_head is None:
            raise ValueError("This model has no linear probe (num_classes=0): there is nothing to "
                             "evaluate. Pretrain with labelled data and lineareval_while_pretraining.")
        logits = self(images, training=False)["logits_sup"]
        update_classification_metrics(self._eval_metrics, labels, logits)

    def get_config(self):
        config = super().get_config()
        config.update(
            encoder=keras.saving.serialize_keras_object(self.encoder),
            projection_head=keras.saving.serialize_keras_object(self.projection_head),
            num_classes=self.num_classes,
            temperature=self.temperature,
            hidden_norm=self.hidden_norm,
            weight_decay=self.weight_decay,
            optimizer_name=self.optimizer_name,
            zero_init_logits_layer=self.zero_init_logits_layer,
            grad_accum_steps=self.grad_accum_steps,
            contrastive_chunks=self.contrastive_chunks,
            memory_size=self.memory_size,
            memory_momentum=self.memory_momentum,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        config["projection_head"] = keras.saving.deserialize_keras_object(config["projection_head"])
        return cls(**config)


def _build_encoder(model_cfg, image_size):
    """Our ResNet from the model flags, or the `--backbone` model wrapped as an encoder."""
    if model_cfg.backbone != RESNET:
        return KerasEncoder(build_backbone(
            model_cfg.backbone, parse_backbone_args(model_cfg.backbone_args), image_size))
    return ResNet(
        depth=model_cfg.resnet_depth, width_multiplier=model_cfg.width_multiplier,
        cifar_stem=image_size <= CIFAR_STEM_MAX_SIZE, sk_ratio=model_cfg.sk_ratio,
        se_ratio=model_cfg.se_ratio,
        bn_momentum=model_cfg.batch_norm_decay, bn_epsilon=model_cfg.batch_norm_epsilon,
        global_bn=model_cfg.global_bn)


def build_simclr_model(model_cfg, image_size, num_classes, temperature, hidden_norm, weight_decay,
                       optimizer_name, seed=None, grad_accum_steps=1, contrastive_chunks=1, memory_size=0,
                       memory_momentum=0.999):
    """A `SimCLRModel` from a `ModelConfig` slice (and plain values), built on `image_size` inputs.

    The encoder is `model_cfg.backbone`: our ResNet by default (with the CIFAR stem for images of
    `CIFAR_STEM_MAX_SIZE` px or less), else that model as a `KerasEncoder`. `num_classes=0` leaves out
    the online linear probe. `seed` seeds Keras before the weights are made.

    Example:
      >>> from simclr_tf.config import Config, ModelConfig
      >>> cfg = Config(model=ModelConfig(resnet_depth=18, width_multiplier=0.125, num_proj_layers=2,
      ...                                proj_out_dim=8))
      >>> model = build_simclr_model(cfg.model, image_size=32, num_classes=10,
      ...                            temperature=cfg.train.temperature, hidden_norm=cfg.train.hidden_norm,
      ...                            weight_decay=cfg.optim.weight_decay, optimizer_name=cfg.optim.optimizer,
      ...                            seed=0)
      >>> model.built, model.encoder.name, model.encoder.cifar_stem
      (True, 'resnet18', True)
      >>> outputs = model(tf.zeros([2, 32, 32, 3]))
      >>> {name: tuple(value.shape) for name, value in outputs.items()}
      {'final_avg_pool': (2, 64), 'proj_head_output': (2, 8), 'logits_sup': (2, 10)}
    """
    if seed is not None:
        keras.utils.set_random_seed(seed)
    encoder = _build_encoder(model_cfg, image_size)
    head = ProjectionHead(
        mode=model_cfg.proj_head_mode, num_layers=model_cfg.num_proj_layers,
        out_dim=model_cfg.proj_out_dim, ft_proj_selector=model_cfg.ft_proj_selector,
        bn_momentum=model_cfg.batch_norm_decay, bn_epsilon=model_cfg.batch_norm_epsilon,
        global_bn=model_cfg.global_bn)
    model = SimCLRModel(encoder, head, num_classes=num_classes, temperature=temperature,
                        hidden_norm=hidden_norm, weight_decay=weight_decay,
                        optimizer_name=optimizer_name,
                        zero_init_logits_layer=model_cfg.zero_init_logits_layer,
                        grad_accum_steps=grad_accum_steps, contrastive_chunks=contrastive_chunks,
                        memory_size=memory_size, memory_momentum=memory_momentum)
    model(tf.zeros([1, image_size, image_size, 3]))
    return model
