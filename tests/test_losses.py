"""Tests for simclr_tf.losses: NT-Xent against NumPy, self-masking, metrics, replica parity."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.losses import contrastive_loss, contrastive_metrics, labelled_loss_and_accuracy, supervised_loss
from tests.subprocess_runner import run_with_devices


def numpy_log_softmax(logits):
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def numpy_nt_xent(z1, z2, temperature, hidden_norm):
    """NT-Xent from its definition, in float64: every view against the 2N - 1 other views."""
    z1, z2 = z1.astype(np.float64), z2.astype(np.float64)
    if hidden_norm:
        z1 = z1 / np.linalg.norm(z1, axis=1, keepdims=True)
        z2 = z2 / np.linalg.norm(z2, axis=1, keepdims=True)
    n = len(z1)
    total = 0.0
    for anchors, others in ((z1, z2), (z2, z1)):
        cross = anchors @ others.T / temperature
        same = anchors @ anchors.T / temperature
        np.fill_diagonal(same, -np.inf)  # a view is never its own candidate
        log_probs = numpy_log_softmax(np.concatenate([cross, same], axis=1))
        total -= log_probs[np.arange(n), np.arange(n)].sum()
    return total / n


def random_views(seed, n=6, dim=5, scale=1.0):
    rng = np.random.default_rng(seed)
    z1 = (scale * rng.normal(size=(n, dim))).astype(np.float32)
    z2 = (scale * rng.normal(size=(n, dim))).astype(np.float32)
    return z1, z2


@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("hidden_norm", [True, False])
def test_loss_matches_numpy(temperature, hidden_norm):
    z1, z2 = random_views(seed=int(temperature * 10) + hidden_norm, scale=0.5)
    loss, logits_ab, labels = contrastive_loss(z1, z2, temperature, hidden_norm)
    expected = numpy_nt_xent(z1, z2, temperature, hidden_norm)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5, atol=1e-5)

    n1, n2 = (z1, z2)
    if hidden_norm:
        n1 = z1 / np.linalg.norm(z1, axis=1, keepdims=True)
        n2 = z2 / np.linalg.norm(z2, axis=1, keepdims=True)
    np.testing.assert_allclose(logits_ab.numpy(), n1 @ n2.T / temperature, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(labels.numpy(), np.eye(6, 12, dtype=np.float32))


@pytest.mark.parametrize("temperature", [0.2, 1.0])
def test_self_similarity_is_masked(temperature):
    # Identical views of 4 orthonormal vectors: the positive logit is 1/t and the other 6
    # candidates are 0, so each direction costs log(1 + 6 exp(-1/t)). Counting the view itself
    # as a candidate would add another exp(1/t) to the denominator.
    n = 4
    views = np.eye(n, dtype=np.float32)
    loss, logits_ab, labels = contrastive_loss(views, views, temperature)
    expected = 2 * np.log1p(2 * (n - 1) * np.exp(-1.0 / temperature))
    np.testing.assert_allclose(float(loss), expected, rtol=1e-6)

    metrics = contrastive_metrics(logits_ab, labels)
    probabilities = np.exp(np.eye(n) / temperature)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    entropy = -(probabilities * np.log(probabilities + 1e-8)).sum(axis=1).mean()
    np.testing.assert_allclose(float(metrics["contrast_acc"]), 1.0)
    np.testing.assert_allclose(float(metrics["contrast_entropy"]), entropy, rtol=1e-5)


def test_metrics_count_wrong_argmax():
    logits_ab = np.array([[3.0, 1.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 5.0]], np.float32)
    labels = np.eye(3, 6, dtype=np.float32)
    metrics = contrastive_metrics(logits_ab, labels)
    np.testing.assert_allclose(float(metrics["contrast_acc"]), 2.0 / 3.0, rtol=1e-6)


def test_low_precision_inputs_give_float32_loss():
    z1, z2 = random_views(seed=3)
    loss, logits_ab, _ = contrastive_loss(tf.cast(z1, tf.bfloat16), tf.cast(z2, tf.float16), 0.5)
    assert loss.dtype == tf.float32 and logits_ab.dtype == tf.float32
    expected = numpy_nt_xent(z1, z2, 0.5, True)
    np.testing.assert_allclose(float(loss), expected, rtol=2e-2)


def test_supervised_loss_matches_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 4)).astype(np.float32)
    labels = np.array([0, 3, 1, 1, 2])
    expected = -numpy_log_softmax(logits.astype(np.float64))[np.arange(5), labels].mean()
    loss = supervised_loss(labels, tf.cast(logits, tf.bfloat16))
    assert loss.dtype == tf.float32
    np.testing.assert_allclose(float(supervised_loss(labels, logits)), expected, rtol=1e-6)


# ---- Multi-replica parity ------------------------------------------------------------------
GLOBAL_BATCH = 8
PROJECTION_DIM = 5
INPUT_DIM = 6
TEMPERATURE = 0.5


def distributed_results(strategy, local_sizes=None):
    """Runs the loss on each replica's slice of one fixed global batch; returns what tests compare.

    Each replica's loss is weighted by local_size / GLOBAL_BATCH (1 / R for equal slices) before
    differentiation, as the training step does; weight gradients are summed over replicas as the
    optimizer does. Shared by the in-process 1-replica baseline and the multi-device subprocesses.
    """
    rng = np.random.default_rng(11)
    z1, z2 = (rng.normal(size=(GLOBAL_BATCH, PROJECTION_DIM)).astype(np.float32) for _ in "ab")
    x1, x2 = (rng.normal(size=(GLOBAL_BATCH, INPUT_DIM)).astype(np.float32) for _ in "ab")
    kernel = rng.normal(size=(INPUT_DIM, PROJECTION_DIM)).astype(np.float32)
    bias = rng.normal(size=(PROJECTION_DIM,)).astype(np.float32)

    replicas = strategy.num_replicas_in_sync
    local_sizes = local_sizes or [GLOBAL_BATCH // replicas] * replicas
    starts = np.cumsum([0] + local_sizes)
    with strategy.scope():
        dense = keras.layers.Dense(PROJECTION_DIM)
        dense.build((None, INPUT_DIM))
        dense.set_weights([kernel, bias])

    def local_slice(array):
        def value_fn(context):
            replica = context.replica_id_in_sync_group
            return tf.constant(array[starts[replica]:starts[replica + 1]])
        return strategy.experimental_distribute_values_from_function(value_fn)

    def replica_step(z1, z2, x1, x2):
        weight = tf.cast(tf.shape(z1)[0], tf.float32) / GLOBAL_BATCH
        with tf.GradientTape() as tape:
            tape.watch([z1, z2])
            loss, _, labels = contrastive_loss(z1, z2, TEMPERATURE)
            weighted = loss * weight
        grad_z1, grad_z2 = tape.gradient(weighted, [z1, z2])
        with tf.GradientTape() as tape:
            dense_loss, _, _ = contrastive_loss(dense(x1), dense(x2), TEMPERATURE)
            weighted = dense_loss * weight
        grad_weights = tape.gradient(weighted, dense.trainable_variables)
        positives = tf.argmax(labels, axis=1)
        return loss, dense_loss, grad_z1, grad_z2, positives, grad_weights

    @tf.function
    def step(*inputs):
        return strategy.run(replica_step, args=inputs)

    loss, dense_loss, grad_z1, grad_z2, positives, grad_weights = step(
        *(local_slice(a) for a in (z1, z2, x1, x2))
    )

    def per_replica(value):
        return [np.asarray(v) for v in strategy.experimental_local_results(value)]

    summed = [strategy.reduce(tf.distribute.ReduceOp.SUM, g, axis=None) for g in grad_weights]
    return {
        "local_sizes": local_sizes,
        "losses": per_replica(loss),
        "dense_losses": per_replica(dense_loss),
        "grad_z1": np.concatenate(per_replica(grad_z1)),
        "grad_z2": np.concatenate(per_replica(grad_z2)),
        "positives": np.concatenate(per_replica(positives)),
        "grad_weights": [np.asarray(g) for g in summed],
    }


_REPLICA_SNIPPET = """
from tests.test_losses import distributed_results
strategy = tf.distribute.MirroredStrategy()
results = [distributed_results(strategy)]
if strategy.num_replicas_in_sync == 2:
    results.append(distributed_results(strategy, local_sizes=[3, 5]))
report(results)
"""


@pytest.fixture(scope="module")
def single_replica():
    return distributed_results(tf.distribute.get_strategy())


def assert_matches_single_replica(result, single_replica):
    sizes = np.asarray(result["local_sizes"])
    for key in ("losses", "dense_losses"):
        # The global loss is the mean over all examples, so weight each replica by its size.
        global_loss = np.sum(np.asarray(result[key]) * sizes) / GLOBAL_BATCH
        np.testing.assert_allclose(global_loss, single_replica[key][0], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(result["positives"], np.arange(GLOBAL_BATCH))
    for key in ("grad_z1", "grad_z2"):
        np.testing.assert_allclose(result[key], single_replica[key], rtol=1e-5, atol=1e-6)
    for got, want in zip(result["grad_weights"], single_replica["grad_weights"]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("num_replicas", [2, 4])
def test_replicas_match_single_replica(num_replicas, single_replica):
    results = run_with_devices(_REPLICA_SNIPPET, num_replicas)
    even = results[0]
    assert len(even["losses"]) == num_replicas
    # With equal slices the mean of the per-replica losses is the single-replica loss.
    np.testing.assert_allclose(np.mean(even["losses"]), single_replica["losses"][0], rtol=1e-5)
    for result in results:
        assert_matches_single_replica(result, single_replica)


def test_single_replica_baseline_matches_numpy(single_replica):
    rng = np.random.default_rng(11)
    z1, z2 = (rng.normal(size=(GLOBAL_BATCH, PROJECTION_DIM)).astype(np.float32) for _ in "ab")
    expected = numpy_nt_xent(z1, z2, TEMPERATURE, hidden_norm=True)
    np.testing.assert_allclose(single_replica["losses"][0], expected, rtol=1e-5)


def test_labelled_loss_and_accuracy_leave_out_unlabelled_examples():
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((6, 4)).astype(np.float32)
    labels = np.array([2, -1, 0, -1, int(np.argmax(logits[4])), 1])
    loss, accuracy = labelled_loss_and_accuracy(labels, logits)
    kept = labels >= 0  # the reference: softmax cross-entropy and top-1 on the labelled rows only (numpy)
    log_softmax = logits[kept] - np.log(np.exp(logits[kept]).sum(-1, keepdims=True))
    expected_loss = -np.mean(log_softmax[np.arange(kept.sum()), labels[kept]])
    expected_accuracy = np.mean(np.argmax(logits[kept], -1) == labels[kept])
    np.testing.assert_allclose(float(loss), expected_loss, rtol=1e-6)
    assert float(accuracy) == pytest.approx(expected_accuracy) and 0 < expected_accuracy < 1
    # Equal to the plain loss on the labelled subset; a batch of unlabelled images only gives 0, 0.
    np.testing.assert_allclose(float(loss), float(supervised_loss(labels[kept], logits[kept])), rtol=1e-6)
    assert [float(v) for v in labelled_loss_and_accuracy(np.full(6, -1), logits)] == [0.0, 0.0]
def numpy_nt_xent_with_memory(z1, z2, memory, valid, temperature):
    """NT-Xent with extra negatives, from the formula: view 1 of image i is classified among the other view of
    every image, its own view of every other image, and the valid memory entries (unit vectors throughout);
    likewise view 2; the loss is the mean over images of the two cross-entropies."""
    n1, n2 = (z / np.linalg.norm(z, axis=1, keepdims=True) for z in (z1, z2))
    queue = memory[np.asarray(valid, bool)]
    queue = queue / np.linalg.norm(queue, axis=1, keepdims=True)
    total = 0.0
    for i in range(len(n1)):
        for anchor, other, same in ((n1[i], n2, n1), (n2[i], n1, n2)):
            others = [j for j in range(len(n1)) if j != i]
            candidates = np.concatenate([other, same[others], queue]) @ anchor / temperature
            total -= candidates[i] - np.log(np.sum(np.exp(candidates)))
    return total / len(n1)


@pytest.mark.parametrize("valid", [[True] * 5, [True, False, True, False, False], [False] * 5])
def test_loss_with_a_memory_matches_numpy(valid):
    """Memory entries are negatives for both views; slots not yet filled (valid False) get no weight, so an
    empty memory gives the plain loss; no gradient reaches the memory."""
    rng = np.random.default_rng(3)
    z1, z2, memory = (rng.standard_normal(shape).astype(np.float32) for shape in ([4, 6], [4, 6], [5, 6]))
    memory_tensor = tf.constant(memory)
    with tf.GradientTape() as tape:
        tape.watch(memory_tensor)
        loss, logits_ab, labels = contrastive_loss(z1, z2, temperature=0.3, memory=memory_tensor,
                                    memory_valid=tf.constant(valid))
    np.testing.assert_allclose(float(loss), numpy_nt_xent_with_memory(z1, z2, memory, valid, 0.3), rtol=1e-5)
    assert tape.gradient(loss, memory_tensor) is None
    assert labels.shape == (4, 13) and logits_ab.shape == (4, 4)
    plain = float(contrastive_loss(z1, z2, temperature=0.3)[0])
    if not any(valid):
        np.testing.assert_allclose(float(loss), plain, rtol=1e-6)
    else:
        assert float(loss) > plain + 1e-3  # More negatives, larger loss.
