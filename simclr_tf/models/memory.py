"""The SimCLR v2 memory (after MoCo): a queue of projections from a moving-average copy of the network.

`MomentumMemory` owns a copy of the encoder and projection head whose weights (batch-norm statistics included)
follow the online network's by an exponential moving average, `ema = m * ema + (1 - m) * online`, after each
optimizer step (m = 0: a plain copy, the "memory bank" variant), and a float32 queue of the last `size`
projections that copy made of both views of each global batch (gathered across replicas, so every replica
holds the same queue). Its entries are extra NT-Xent negatives for both views.

Start: the copy starts as the online network; the queue begins empty; slots not yet written are masked (no
softmax weight) until `size` projections have been enqueued, so the first step is the plain SimCLR loss. Keys
are written in global-batch order (replica by replica), so choose a size that is a multiple of 2 x the global
batch: then each write replaces whole older batches and the queue's content does not depend on the number of
replicas. Queue, write count and the copy's weights are variables of the model, so checkpoints carry them.

Exports serve one network: `online_network(model)` (what `export.export_saved_model` writes for a model with a
memory: the online weights, no queue, no copy) or `momentum_network(model)` (the moving-average copy, to
export or evaluate it instead).
"""
import keras
import tensorflow as tf


def _copy(layer):
    return keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))


class MomentumMemory(keras.layers.Layer):
    """Queue of `size` projections of an EMA copy (momentum `momentum`) of `encoder` + `projection_head`."""

    def __init__(self, encoder, projection_head, size, momentum, **kwargs):
        super().__init__(**kwargs)
        self.size = size
        self.momentum = momentum
        self.momentum_encoder = _copy(encoder)
        self.momentum_head = _copy(projection_head)

    def build_from(self, encoder, projection_head, image_shape):
        """Builds the copy on `image_shape` inputs with the online weights, and the empty queue."""
        self.image_shape = tuple(image_shape)
        zeros = tf.zeros([1] + list(image_shape))
        projection, _ = self.momentum_head(self.momentum_encoder(zeros))
        # After building: sublayers made in build() take the flag too. No gradient, no optimizer slot.
        self.momentum_encoder.trainable = False
        self.momentum_head.trainable = False
        self.copy_weights(encoder, projection_head, momentum=0.0)
        self.queue = self.add_weight(shape=(self.size, projection.shape[-1]), initializer="zeros",
                                     dtype="float32", trainable=False, name="queue",
                                     aggregation="only_first_replica")
        self.count = self.add_weight(shape=(), initializer="zeros", dtype="int64", trainable=False,
                                     name="count", aggregation="only_first_replica")
        self.built = True

    def _pairs(self, encoder, projection_head):
        return list(zip(self.momentum_encoder.weights + self.momentum_head.weights,
                        encoder.weights + projection_head.weights))

    def copy_weights(self, encoder, projection_head, momentum=None):
        """The moving average step: `ema = m * ema + (1 - m) * online` over every weight."""
        momentum = self.momentum if momentum is None else momentum
        for ema, online in self._pairs(encoder, projection_head):
            if momentum == 0.0:
                ema.assign(online)
            else:
                ema.assign(momentum * ema + (1.0 - momentum) * tf.cast(online, ema.dtype))

    def start_from(self, encoder, projection_head):
        """Before the first enqueue (count 0) makes the copy equal the online network: the first call may
        have built the model symbolically, where the copy in `build_from` does not persist."""
        empty = tf.equal(self.count, 0)
        for ema, online in self._pairs(encoder, projection_head):
            ema.assign(tf.where(empty, tf.cast(online, ema.dtype), ema))

    def keys(self, view_1, view_2, num_chunks=1):
        """float32 projections by the copy of both views, in `num_chunks` chunks one after the other. The copy is
        not trainable, so its batch norms normalize with their moving averages (the EMA of the online
        network's), and its forward pass changes no state."""
        keys, previous = [], []
        for chunk_1, chunk_2 in zip(tf.split(view_1, num_chunks), tf.split(view_2, num_chunks)):
            with tf.control_dependencies(previous):
                chunk = tf.identity(tf.concat([chunk_1, chunk_2], axis=0))
            projection, _ = self.momentum_head(self.momentum_encoder(chunk, training=False), training=False)
            keys.append(tf.stop_gradient(tf.cast(projection, tf.float32)))
            previous = keys[-1:]
        return tf.concat(keys, axis=0)

    def negatives(self):
        """(the queue, `[size]` bool: which slots hold a projection)."""
        filled = tf.minimum(self.count, self.size)
        return tf.convert_to_tensor(self.queue), tf.range(self.size, dtype=tf.int64) < filled

    def enqueue(self, local_keys):
        """Writes the keys of the global batch (all replicas', in replica order) over the oldest entries."""
        context = tf.distribute.get_replica_context()
        keys = local_keys
        if context is not None and context.num_replicas_in_sync > 1:
            keys = context.all_gather(local_keys, axis=0)
        num_keys = tf.shape(keys, out_type=tf.int64)[0]
        slots = (self.count + tf.range(num_keys, dtype=tf.int64)) % self.size
        self.queue.assign(tf.tensor_scatter_nd_update(tf.convert_to_tensor(self.queue), slots[:, None], keys))
        self.count.assign(self.count + num_keys)


def online_network(model):
    """`model` (a `SimCLRModel`) without its memory: a copy whose encoder, projection head and probe hold the
    online weights (frozen layers stay frozen), with no queue and no moving-average copy. `model` itself when
    it has no memory."""
    if getattr(model, "memory", None) is None:
        return model
    return _without_memory(model, model.encoder, model.projection_head, keep_frozen=True)


def momentum_network(model):
    """A copy of `model` (a `SimCLRModel` with a memory) without its memory, whose encoder and projection head
    hold the moving-average copy's weights (batch-norm statistics included) and are trainable; the probe, if
    any, is the online one. Export it with `export.export_saved_model` to serve the EMA network."""
    if getattr(model, "memory", None) is None:
        raise ValueError("This model has no memory (memory_size=0), so it has no moving-average copy to take.")
    return _without_memory(model, model.memory.momentum_encoder, model.memory.momentum_head, keep_frozen=False)


def _without_memory(model, encoder, projection_head, keep_frozen):
    if not model.memory.built:
        raise ValueError("The model's memory is not built yet: call the model on a batch of images first.")
    copy = type(model).from_config(dict(model.get_config(), memory_size=0))
    copy(tf.zeros((1,) + model.memory.image_shape))
    pairs = [(copy.encoder, encoder, model.encoder), (copy.projection_head, projection_head, model.projection_head)]
    if model.supervised_head is not None:
        pairs.append((copy.supervised_head, model.supervised_head, model.supervised_head))
    for target, source, online in pairs:
        target.set_weights(source.get_weights())
        if keep_frozen:  # Same structure as the online part: its layers in the same order.
            for copied, original in zip(target._flatten_layers(), online._flatten_layers()):
                copied.trainable = original.trainable
    return copy
