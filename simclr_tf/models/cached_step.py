"""Cached-gradient steps (GradCache, Gao et al. 2021): a batch loss over a whole batch in a chunk's memory.

A loss that couples the examples (NT-Xent: every example is a negative of every other) needs the whole batch's
embeddings at once, but not the whole batch's activations. `cached_gradients` computes the step in three
passes over `num_chunks` equal chunks of the batch:

1. each chunk goes forward without a tape; only its embeddings are kept;
2. the batch loss and its gradient with respect to the embeddings (and to the variables it reads directly,
   e.g. a weight-decay term) are computed under one small tape;
3. each chunk goes forward again under a tape and its slice of the embedding gradient is pushed back
   through it (`output_gradients`); the parameter gradients are summed.

The result is exactly the gradient of one tape over the chunks' forward passes (batch norm normalizes each
chunk with that chunk's statistics: "ghost" batch norm). The second forward pass would update the layers'
state (batch-norm moving averages) a second time: `state_variables` are read after the first pass and
written back after the second, so the state moves once per chunk, as in the one-tape step.
Chunks run one after the other (control dependencies), so only one chunk's activations are alive at a time.
"""
import tensorflow as tf


def split_chunks(batch, num_chunks):
    """`num_chunks` equal slices, along the first axis, of every tensor of the (nested) `batch`."""
    if num_chunks == 1:
        return [batch]
    pieces = [tf.split(x, num_chunks, axis=0) for x in tf.nest.flatten(batch)]
    return [tf.nest.pack_sequence_as(batch, [p[i] for p in pieces]) for i in range(num_chunks)]


def _after(tensors, structure):
    """`structure` passed through `tf.identity` once every tensor of `tensors` exists."""
    tensors = [t for t in tf.nest.flatten(tensors) if t is not None]
    with tf.control_dependencies(tensors):
        return tf.nest.map_structure(tf.identity, structure)


def _after_data(tensor, structure):
    """`structure` with `0 * sum(tensor)` added to its floating-point tensors: computed after `tensor`."""
    zero = 0.0 * tf.reduce_sum(tf.cast(tensor, tf.float32))
    return tf.nest.map_structure(
        lambda x: x + tf.cast(zero, x.dtype) if x.dtype.is_floating else x, structure)


def _add(total, gradients):
    if total is None:
        return list(gradients)
    return [t if g is None else (g if t is None else t + g) for t, g in zip(total, gradients)]


def cached_gradients(embed, batch_loss, batch, variables, num_chunks, state_variables=()):
    """Gradients of a batch loss computed chunk by chunk in three passes (see the module docstring).

    Args:
      embed: `embed(chunk) -> (embeddings, chunk_loss, chunk_aux)`. `embeddings` is a float tensor (the
        batch loss's input); `chunk_loss` a scalar differentiated directly with the chunk (a per-example mean
        term such as an online probe's loss, already weighted by its share of the batch and scaled like the
        batch loss), or None; `chunk_aux` anything (metric values), returned from the second pass.
      batch_loss: `batch_loss([embeddings of each chunk]) -> (loss, aux)`, the scaled loss of the whole batch;
        it may read `variables` directly (their direct gradient is added).
      batch: a (nested) structure of tensors split along their first axis into `num_chunks` equal chunks.
      variables: a list, or a callable giving it (read after the first pass, which builds a model not yet
        called).
      num_chunks: how many chunks.
      state_variables: variables that a training-mode forward pass updates (batch-norm moving averages), or a
        callable giving them; they end as after the first pass.

    Returns:
      `(gradients, aux of batch_loss, [chunk_aux of each chunk])`.
    """
    chunks = split_chunks(batch, num_chunks)
    embeddings, previous = [], []
    for chunk in chunks:  # Pass 1: forward only.
        chunk = _after(previous, chunk)
        embedded, _, _ = embed(chunk)
        embedded = tf.stop_gradient(embedded)
        embeddings.append(embedded)
        previous = [embedded]
    variables = variables() if callable(variables) else variables
    state_variables = state_variables() if callable(state_variables) else state_variables

    with tf.GradientTape() as tape:  # Pass 2: the loss over the whole batch.
        tape.watch(embeddings)
        loss, loss_aux = batch_loss(embeddings)
    gradients = tape.gradient(loss, embeddings + list(variables))
    embedding_gradients, total = gradients[:len(embeddings)], gradients[len(embeddings):]

    # The state after pass 1; read now (after its updates), written back after pass 3.
    saved_state = [tf.identity(v.value if hasattr(v, "value") else v) for v in state_variables]
    chunk_auxes, previous = [], []
    for i, (chunk, upstream) in enumerate(zip(chunks, embedding_gradients)):  # Pass 3: again, backward.
        # Each chunk after the previous one's gradients; the first after pass 1, through a data edge (a
        # control edge here makes grappler report a cycle and skip its graph optimizations).
        chunk = _after(previous, chunk) if i else _after_data(embeddings[-1], chunk)
        with tf.GradientTape() as tape:
            embedded, chunk_loss, chunk_aux = embed(chunk)
        targets, output_gradients = [embedded], [upstream]
        if chunk_loss is not None:
            targets.append(chunk_loss)
            output_gradients.append(tf.ones_like(chunk_loss))
        chunk_gradients = tape.gradient(targets, variables, output_gradients=output_gradients)
        total = _add(total, chunk_gradients)
        chunk_auxes.append(chunk_aux)
        previous = [g for g in chunk_gradients if g is not None]
    with tf.control_dependencies([g for g in total if g is not None]):
        for variable, value in zip(state_variables, saved_state):
            variable.assign(value)
    return total, loss_aux, chunk_auxes

