"""The training step every model of the package shares; each model states only its loss and metric names.

`TrainingModel.train_step` computes the gradients of one replica's batch in one of three ways:
- plain: one `GradientTape` over the batch;
- accumulated (`grad_accum_steps > 1`): the mean gradient of equal micro-batches run one after the other;
- cached chunks (`cached_chunks > 1`, models that opt in): a batch loss over the whole batch in a chunk's
  activation memory (models/cached_step.py).
It divides the loss by the number of replicas (Keras sums the replicas' gradients, so this gives the gradient
of the global mean), scales it for mixed precision (`optimizer.scale_loss`), applies the gradients, and
feeds the metric values of every micro-batch to `keras.metrics.Mean` trackers.

A subclass implements `loss_and_metrics(batch)` and calls `track_metrics(...)` at the end of its `__init__`.
To use cached chunks it also implements `chunk_embeddings`, `batch_loss_and_metrics` and sets `cached_chunks`.
"""
import keras
import tensorflow as tf

from simclr_tf.models import cached_step
from simclr_tf.models import weight_decay


def num_replicas():
    """Replicas in sync under the current strategy (1 without one)."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def accumulated_gradients(loss_fn, batch, variables, num_micro_batches=1):
    """The mean gradient of `loss_fn` over `num_micro_batches` equal slices of `batch`, one at a time.

    `batch` is a (nested) structure of tensors split along their first axis; `loss_fn(micro_batch)`
    returns `(loss, aux)`, `loss` being what to differentiate with respect to `variables` (a list, or a
    callable giving it after `loss_fn` ran, for a model built by its first call; the loss is already divided
    by the number of replicas and scaled for mixed precision, as for a whole batch). Returns
    `(gradients, [aux of each micro-batch])`. The slices run in sequence (each starts once the previous
    one's gradients exist), so only one micro-batch's activations are alive at a time: the memory of a
    batch `num_micro_batches` times smaller. For a loss that is a mean over examples, the mean of the
    micro-batch gradients is the full batch's gradient; losses that couple the examples differ: NT-Xent
    only sees the negatives inside its micro-batch, and batch norm the statistics of its micro-batch.
    With one micro-batch this is a plain `GradientTape` step.
    """
    total, outputs = None, []
    for micro_batch in cached_step.split_chunks(batch, num_micro_batches):
        with tf.control_dependencies([g for g in total or () if g is not None]):
            micro_batch = tf.nest.map_structure(tf.identity, micro_batch)
        with tf.GradientTape() as tape:
            loss, aux = loss_fn(micro_batch)
        gradients = tape.gradient(loss, variables() if callable(variables) else variables)
        outputs.append(aux)
        total = gradients if total is None else [
            t if g is None else (g if t is None else t + g) for t, g in zip(total, gradients)]
    if num_micro_batches > 1:
        total = [None if g is None else g / num_micro_batches for g in total]
    return total, outputs


class TrainingModel(keras.Model):
    """A `keras.Model` whose `train_step` is the package's: see the module docstring.

    Not registered for serialization: it has no constructor arguments of its own; subclasses keep theirs.
    Subclasses state:
      - `loss_and_metrics(batch)`: `(loss, {metric name: value})` of one (micro-)batch, a tuple from
        `train_inputs`; `loss` is this replica's mean loss, before replica or loss scaling. The base logs it
        as "loss";
      - `track_metrics(train_names, eval_metrics)` at the end of `__init__`: the names of the training
        metrics (the values `loss_and_metrics` returns, and "loss") and the evaluation metrics;
      - `update_eval_metrics(images, labels)` for `evaluate()`;
      - `loss_decayed_patterns()`: the variables whose weight decay the model's loss adds itself under LARS.
    """

    grad_accum_steps = 1  # Subclasses store their constructor argument under this name.
    cached_chunks = 1  # Opting in to cached chunks: more than 1 (see `chunk_embeddings`).

    def track_metrics(self, train_names, eval_metrics=None):
        """Creates a `Mean` tracker per name of `train_names`; `eval_metrics` is a dict of metrics."""
        self._trackers = {name: keras.metrics.Mean(name=name) for name in train_names}
        self._eval_metrics = dict(eval_metrics or {})

    @property
    def metrics(self):
        return list(self._trackers.values()) + list(self._eval_metrics.values())

    # ---- What a subclass states -------------------------------------------------------------------------
    def train_inputs(self, data):
        """The tuple `loss_and_metrics` takes, from a `fit()` batch: `(x, y)` by default."""
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        return x, y

    def loss_and_metrics(self, batch):
        raise NotImplementedError(f"{type(self).__name__} must implement loss_and_metrics(batch).")

    def chunk_embeddings(self, chunk):
        """Cached chunks: `(embeddings, chunk_loss, {metric name: value})` of one chunk of the batch.

        `embeddings` feed `batch_loss_and_metrics`; `chunk_loss` (or None) is a per-example mean loss of the
        chunk alone (e.g. an online probe's), which the base weights by the chunk's share of the batch.
        """
        raise NotImplementedError(f"{type(self).__name__} does not compute its step in cached chunks.")

    def batch_loss_and_metrics(self, embeddings):
        """Cached chunks: `(loss, {metric name: value})` of the whole batch from `[embeddings of each chunk]`."""
        raise NotImplementedError(f"{type(self).__name__} does not compute its step in cached chunks.")

    def chunk_state_variables(self):
        """Cached chunks: the variables a training-mode forward pass updates (batch-norm moving averages)."""
        return self.non_trainable_weights

    def _forward_syncs_replicas(self):
        """Whether a training-mode forward pass all-reduces across replicas: global batch norm over several
        replicas. Such a pass cannot run in a `tf.while_loop` body (MirroredStrategy's `merge_call`)."""
        return num_replicas() > 1 and any(
            isinstance(layer, keras.layers.BatchNormalization) and layer.synchronized
            for layer in self._flatten_layers())

    def update_eval_metrics(self, images, labels):
        raise NotImplementedError(f"{type(self).__name__} must implement update_eval_metrics(images, labels).")

    # ---- Weight decay -------------------------------------------------------------------------------------
    def loss_decayed_patterns(self):
        """Path regexes of the variables this model decays in its loss when the optimizer is LARS."""
        return ()

    def weight_decay_exempt_patterns(self):
        """Path regexes of the variables the optimizer must not decay (`LARS(exclude_from_weight_decay=...)`):
        normalization weights, biases, and what the loss decays itself (models/weight_decay.py)."""
        return weight_decay.exempt_patterns(self.loss_decayed_patterns())

    def weight_decay_exempt_variables(self):
        """The trainable variables `weight_decay_exempt_patterns` names (a built model's)."""
        patterns = self.weight_decay_exempt_patterns()
        return [v for v in self.trainable_variables
                if weight_decay.matches_any(patterns, weight_decay.variable_path(v))]

    def weight_decay_loss(self, decay, optimizer_name):
        """The L2 term the loss adds: what the optimizer `optimizer_name` does not decay itself."""
        variables = weight_decay.loss_decayed_variables(
            self.trainable_variables, optimizer_name, self.loss_decayed_patterns())
        return weight_decay.l2_loss(variables, decay)

    # ---- The step -----------------------------------------------------------------------------------------
    def train_step(self, data):
        gradients, micro_updates = self.gradients_and_updates(*self.train_inputs(data))
        self.optimizer.apply_gradients(zip(gradients, self.trainable_variables))
        for updates in micro_updates:
            for name, value in updates.items():
                self._trackers[name].update_state(value)
        logs = {name: tracker.result() for name, tracker in self._trackers.items()}
        logs["learning_rate"] = self.optimizer.learning_rate
        return logs

    def gradients_and_updates(self, *batch):
        """(gradients of the scaled loss for `trainable_variables`, [metric values of each micro-batch]) of
        one replica's batch: plain, accumulated over `grad_accum_steps`, or in `cached_chunks`."""
        if self.cached_chunks > 1:
            return self._cached_gradients_and_updates(batch)
        # The variables are read after the first forward pass, which builds a model not yet called.
        return accumulated_gradients(
            self._scaled_loss_and_updates, batch, lambda: self.trainable_variables, self.grad_accum_steps)

    def scale_loss(self, loss, parts=1):
        """`loss` (a mean over `1 / parts` of the replica's batch) as differentiated: divided by the replicas,
        as Keras sums their gradients, and scaled for mixed precision (by 1 without a loss scale)."""
        return self.optimizer.scale_loss(loss / (parts * num_replicas()))

    def _scaled_loss_and_updates(self, batch):
        loss, updates = self.loss_and_metrics(batch)
        updates["loss"] = loss
        return self.scale_loss(loss), updates

    def _cached_gradients_and_updates(self, batch):
        """The replica batch's step in `cached_chunks` chunks with cached gradients (models/cached_step.py)."""
        num_chunks = self.cached_chunks

        def embed(chunk):
            embeddings, chunk_loss, updates = self.chunk_embeddings(chunk)
            scaled = None if chunk_loss is None else self.scale_loss(chunk_loss, parts=num_chunks)
            return embeddings, scaled, (updates, chunk_loss)

        def batch_loss(embeddings):
            loss, updates = self.batch_loss_and_metrics(embeddings)
            updates["loss"] = loss
            return self.scale_loss(loss), updates

        gradients, updates, chunk_outputs = cached_step.cached_gradients(
            embed, batch_loss, batch, lambda: self.trainable_variables, num_chunks,
            state_variables=self.chunk_state_variables, in_graph_loop=not self._forward_syncs_replicas())
        for name in chunk_outputs[0][0]:  # Equal chunks: the batch's mean is the mean of the chunks' means.
            updates[name] = tf.add_n([chunk[name] for chunk, _ in chunk_outputs]) / num_chunks
        chunk_losses = [chunk_loss for _, chunk_loss in chunk_outputs if chunk_loss is not None]
        if chunk_losses:
            updates["loss"] += tf.add_n(chunk_losses) / num_chunks
        return gradients, [updates]

    def test_step(self, data):
        images, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
        self.update_eval_metrics(images, labels)
        return {name: metric.result() for name, metric in self._eval_metrics.items()}
