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

Passes 1 and 3 loop over the chunks in the graph (`tf.while_loop`, one iteration at a time), so the traced step
holds one copy of the network per pass (two for pass 1: its first chunk, outside the loop, builds the model)
whatever the number of chunks; unrolled Python loops would hold `2k` copies, some 55 MB each for a ResNet-18
(bench/RESULTS.md). A forward pass that synchronizes replicas (global batch norm over several replicas) cannot
run in a loop body under `MirroredStrategy`: the caller asks for the unrolled passes then (`in_graph_loop`).
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


def _by_chunk(x, num_chunks):
    """`x` reshaped to `[num_chunks, chunk size, ...]`: its chunks along a new first axis."""
    x = tf.convert_to_tensor(x)
    size = None if x.shape[0] is None else x.shape[0] // num_chunks
    chunked = tf.reshape(x, tf.concat([[num_chunks, -1], tf.shape(x)[1:]], axis=0))
    chunked.set_shape([num_chunks, size] + x.shape[1:])
    return chunked


def _take_chunk(chunked, index):
    """Chunk `index` (an int or a scalar tensor) of a tensor `_by_chunk` reshaped."""
    chunk = tf.gather(chunked, index)
    chunk.set_shape(chunked.shape[1:])
    return chunk


def _chunk_gradients(embed, chunk, upstream, variables):
    """Pass 3 for one chunk: (the variables' gradients of its embeddings times `upstream`, plus those of its own
    chunk loss; its aux values)."""
    with tf.GradientTape() as tape:
        embedded, chunk_loss, chunk_aux = embed(chunk)
    targets, output_gradients = [embedded], [upstream]
    if chunk_loss is not None:
        targets.append(chunk_loss)
        output_gradients.append(tf.ones_like(chunk_loss))
    return tape.gradient(targets, variables, output_gradients=output_gradients), chunk_aux


def cached_gradients(embed, batch_loss, batch, variables, num_chunks, state_variables=(), in_graph_loop=True):
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

      in_graph_loop: whether passes 1 and 3 loop over the chunks in the graph (`tf.while_loop`: one copy of the
        network per pass, whatever `num_chunks`) or are unrolled by Python loops (`num_chunks` copies). A
        forward pass that synchronizes replicas (global batch norm over several replicas under
        `MirroredStrategy`) cannot run in a loop body: unrolled then.

    Returns:
      `(gradients, aux of batch_loss, [chunk_aux of each chunk])`.
    """
    if not in_graph_loop:
        return _unrolled_gradients(embed, batch_loss, batch, variables, num_chunks, state_variables)
    chunked = tf.nest.map_structure(lambda x: _by_chunk(x, num_chunks), batch)
    take = lambda index: tf.nest.map_structure(lambda x: _take_chunk(x, index), chunked)  # noqa: E731

    # Pass 1: forward only. The first chunk outside the loop: it builds a model not yet called (a loop body
    # may create no variables) and gives the embeddings' dtype and shape.
    first, _, first_aux = embed(take(0))
    first = tf.stop_gradient(first)

    def forward(index, previous, embeddings):
        embedded, _, _ = embed(_after([previous], take(index)))
        embedded = tf.stop_gradient(embedded)
        return index + 1, embedded, embeddings.write(index, embedded)

    embeddings = tf.TensorArray(first.dtype, size=num_chunks, element_shape=first.shape).write(0, first)
    _, _, embeddings = tf.while_loop(lambda index, *_: index < num_chunks, forward,
                                     (tf.constant(1), first, embeddings), parallel_iterations=1)
    embeddings = embeddings.stack()
    variables = variables() if callable(variables) else variables
    state_variables = state_variables() if callable(state_variables) else state_variables

    with tf.GradientTape() as tape:  # Pass 2: the loss over the whole batch.
        tape.watch(embeddings)
        loss, loss_aux = batch_loss(tf.unstack(embeddings, num=num_chunks))
    gradients = tape.gradient(loss, [embeddings] + list(variables))
    embedding_gradients, direct = gradients[0], gradients[1:]
    if embedding_gradients is None:
        embedding_gradients = tf.zeros_like(embeddings)

    # The state after pass 1; read now (after its updates), written back after pass 3.
    saved_state = [tf.identity(v.value if hasattr(v, "value") else v) for v in state_variables]
    # Pass 3: again, backward. The summed gradients are loop variables (the direct ones to start with, zeros
    # for the others); those no chunk reaches (None) keep their direct gradient.
    totals = [tf.zeros(v.shape, v.dtype) if g is None else tf.convert_to_tensor(g)
              for v, g in zip(variables, direct)]
    # The chunks' aux values (metric values) in one array per tensor of the structure pass 1 gave.
    aux_leaves = [x for x in tf.nest.flatten(first_aux) if x is not None]
    auxes = [tf.TensorArray(x.dtype, size=num_chunks, element_shape=x.shape) for x in aux_leaves]
    reached = []

    def backward(index, totals, auxes):
        upstream = tf.gather(embedding_gradients, index)
        # Each chunk after the previous one's gradients, the first after pass 2.
        chunk = _after([upstream] + totals, take(index))
        chunk_gradients, chunk_aux = _chunk_gradients(embed, chunk, upstream, variables)
        reached[:] = [g is not None for g in chunk_gradients]
        totals = [t if g is None else t + tf.convert_to_tensor(g) for t, g in zip(totals, chunk_gradients)]
        leaves = [x for x in tf.nest.flatten(chunk_aux) if x is not None]
        return index + 1, totals, [array.write(index, x) for array, x in zip(auxes, leaves)]

    _, totals, auxes = tf.while_loop(lambda index, *_: index < num_chunks, backward,
                                     (tf.constant(0), totals, auxes), parallel_iterations=1)
    values = [tf.unstack(array.stack(), num=num_chunks) for array in auxes]
    present = [x is not None for x in tf.nest.flatten(first_aux)]  # None (no chunk loss) stays None.
    chunk_auxes = []
    for index in range(num_chunks):
        chunk_values = iter([v[index] for v in values])
        leaves = [next(chunk_values) if is_present else None for is_present in present]
        chunk_auxes.append(tf.nest.pack_sequence_as(first_aux, leaves))
    total = [t if chunk_reached else d for t, d, chunk_reached in zip(totals, direct, reached)]
    with tf.control_dependencies([g for g in total if g is not None]):
        for variable, value in zip(state_variables, saved_state):
            variable.assign(value)
    return total, loss_aux, chunk_auxes


def _unrolled_gradients(embed, batch_loss, batch, variables, num_chunks, state_variables):
    """`cached_gradients` with the chunks unrolled by Python loops: k copies of each pass in the graph."""
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
        chunk_gradients, chunk_aux = _chunk_gradients(embed, chunk, upstream, variables)
        total = _add(total, chunk_gradients)
        chunk_auxes.append(chunk_aux)
        previous = [g for g in chunk_gradients if g is not None]
    with tf.control_dependencies([g for g in total if g is not None]):
        for variable, value in zip(state_variables, saved_state):
            variable.assign(value)
    return total, loss_aux, chunk_auxes

