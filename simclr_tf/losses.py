"""SimCLR losses: NT-Xent contrastive loss (with cross-replica negatives) and supervised loss."""
import tensorflow as tf

# Subtracted from the logit of each view with itself so softmax gives it zero weight.
SELF_SIMILARITY_PENALTY = 1e9


def _gather_across_replicas(local_1, local_2):
    """Returns both views of the global batch and where this replica's examples start in it.

    Inside a replica context with more than one replica, the views of all replicas are
    concatenated in replica order with `all_gather` (gradients flow back to every replica).
    Elsewhere the local views are the global batch and the offset is 0.
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync <= 1:
        return local_1, local_2, tf.constant(0, tf.int32)
    global_1 = context.all_gather(local_1, axis=0)
    global_2 = context.all_gather(local_2, axis=0)
    # Gathering the local sizes keeps the offset right when replicas hold uneven batches.
    local_size = tf.reshape(tf.shape(local_1)[0], [1])
    sizes = context.all_gather(local_size, axis=0)
    replica_id = tf.cast(context.replica_id_in_sync_group, tf.int32)
    offset = tf.reduce_sum(tf.where(tf.range(tf.size(sizes)) < replica_id, sizes, 0))
    return global_1, global_2, offset


def contrastive_loss(projections_1, projections_2, temperature=1.0, hidden_norm=True, memory=None,
                     memory_valid=None):
    """NT-Xent loss of SimCLR between two views of the same images.

    Args:
        projections_1: `[N, D]` projections of the first view of the local batch.
        projections_2: `[N, D]` projections of the second view, in the same image order.
        temperature: softmax temperature applied to the cosine similarities.
        hidden_norm: whether to L2-normalize the projections first (and the memory's entries).
        memory: optional `[M, D]` extra negatives for both views (the SimCLR v2 / MoCo queue), the same on
            every replica; no gradient flows into them.
        memory_valid: optional `[M]` bool, False for slots not filled yet: they get no softmax weight.

    Each view is classified against the other view of every image in the global batch and the
    same view of every other image (2 * N_global - 1 candidates). Under a multi-replica strategy,
    the negatives come from all replicas; the loss returned is this replica's mean, so divide it by
    `num_replicas_in_sync` before gradients are summed over replicas.

    Example (two identical views: each image is easy to find among the 2N - 1 candidates):
      >>> views = tf.math.l2_normalize(tf.random.stateless_normal([4, 8], seed=[0, 1]), -1)
      >>> loss, logits, labels = contrastive_loss(views, views, temperature=0.1)
      >>> bool(loss < 0.5), logits.shape, labels.shape  # logits against the other view; labels one-hot
      (True, TensorShape([4, 4]), TensorShape([4, 8]))

    Returns:
        `(loss, logits_ab, labels)`: the float32 scalar loss, the `[N, N_global]` logits of view 1
        against view 2, and the `[N, 2 * N_global]` one-hot targets (positive at the global index;
        `[N, 2 * N_global + M]` with a memory).
    """
    local_1 = tf.cast(projections_1, tf.float32)
    local_2 = tf.cast(projections_2, tf.float32)
    if hidden_norm:
        local_1 = tf.math.l2_normalize(local_1, axis=-1)
        local_2 = tf.math.l2_normalize(local_2, axis=-1)
    global_1, global_2, offset = _gather_across_replicas(local_1, local_2)

    local_size = tf.shape(local_1)[0]
    global_size = tf.shape(global_1)[0]
    positives = offset + tf.range(local_size)
    labels = tf.one_hot(positives, 2 * global_size)
    self_penalty = tf.one_hot(positives, global_size) * SELF_SIMILARITY_PENALTY

    temperature = tf.cast(temperature, tf.float32)
    logits_ab = tf.matmul(local_1, global_2, transpose_b=True) / temperature
    logits_ba = tf.matmul(local_2, global_1, transpose_b=True) / temperature
    logits_aa = tf.matmul(local_1, global_1, transpose_b=True) / temperature - self_penalty
    logits_bb = tf.matmul(local_2, global_2, transpose_b=True) / temperature - self_penalty

    candidates_a, candidates_b = [logits_ab, logits_aa], [logits_ba, logits_bb]
    if memory is not None:
        memory = tf.stop_gradient(tf.cast(memory, tf.float32))
        if hidden_norm:
            memory = tf.math.l2_normalize(memory, axis=-1)
        penalty = 0.0 if memory_valid is None else (
            (1.0 - tf.cast(memory_valid, tf.float32)) * SELF_SIMILARITY_PENALTY)
        candidates_a.append(tf.matmul(local_1, memory, transpose_b=True) / temperature - penalty)
        candidates_b.append(tf.matmul(local_2, memory, transpose_b=True) / temperature - penalty)
        labels = tf.pad(labels, [[0, 0], [0, tf.shape(memory)[0]]])
    loss_a = tf.nn.softmax_cross_entropy_with_logits(labels, tf.concat(candidates_a, 1))
    loss_b = tf.nn.softmax_cross_entropy_with_logits(labels, tf.concat(candidates_b, 1))
    loss = tf.reduce_mean(loss_a + loss_b)
    return loss, logits_ab, labels


def contrastive_metrics(logits_ab, labels):
    """Top-1 accuracy and mean softmax entropy of the view-1-vs-view-2 logits."""
    logits_ab = tf.cast(logits_ab, tf.float32)
    hits = tf.equal(tf.argmax(labels, axis=1), tf.argmax(logits_ab, axis=1))
    probabilities = tf.nn.softmax(logits_ab)
    entropy = -tf.reduce_sum(probabilities * tf.math.log(probabilities + 1e-8), axis=-1)
    return {
        "contrast_acc": tf.reduce_mean(tf.cast(hits, tf.float32)),
        "contrast_entropy": tf.reduce_mean(entropy),
    }


def labelled_loss_and_accuracy(labels, logits):
    """(mean softmax cross-entropy, top-1 accuracy) over the examples that have a label.

    Examples labelled -1 (unlabelled, e.g. TFDS stl10's `unlabelled` split) are left out of both; a batch
    without any labelled example gives (0, 0). For the online probe, which trains beside the contrastive
    loss on every image.
    """
    logits = tf.cast(logits, tf.float32)
    labels = tf.cast(labels, tf.int32)
    weights = tf.cast(labels >= 0, tf.float32)
    count = tf.reduce_sum(weights)
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.maximum(labels, 0), logits=logits)
    correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), tf.float32)
    return (tf.math.divide_no_nan(tf.reduce_sum(losses * weights), count),
            tf.math.divide_no_nan(tf.reduce_sum(correct * weights), count))


def supervised_loss(labels, logits):
    """Mean softmax cross-entropy of `logits` against integer class `labels` (float32)."""
    logits = tf.cast(logits, tf.float32)
    labels = tf.cast(labels, tf.int32)
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    return tf.reduce_mean(losses)
