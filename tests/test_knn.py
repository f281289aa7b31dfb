"""The weighted kNN monitor: against a brute-force numpy kNN, on real encoders, and under strategies.

- `knn_scores` / `knn_accuracy` equal a per-query numpy loop written from the paper's formula (Wu et al.
  2018, eq. 7: the k most cosine-similar bank features vote with weight exp(similarity / temperature)).
- `KnnEvaluator` gives the same features, labels and accuracy on 1 replica, on 2 logical CPUs
  (MirroredStrategy, in a subprocess: two replica counts clash in one process) and, in test_multiworker,
  on 2 worker processes.
"""
import numpy as np
import pytest

from simclr_tf import knn
from tests.subprocess_runner import run_with_devices


def brute_force_knn(bank, bank_labels, queries, query_labels, num_classes, k, temperature):
    """One query at a time: sort all bank similarities, take the k best, add their weighted votes."""
    bank = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    top_1 = top_5 = 0
    all_scores = []
    for query, label in zip(queries, query_labels):
        query = query / np.linalg.norm(query)
        similarity = bank @ query
        nearest = np.argsort(-similarity, kind="stable")[:min(k, len(bank))]
        scores = np.zeros(num_classes)
        for index in nearest:
            scores[bank_labels[index]] += np.exp(similarity[index] / temperature)
        ranked = np.argsort(-scores, kind="stable")  # ties to the lower class, as top_k
        top_1 += ranked[0] == label
        top_5 += label in ranked[:min(5, num_classes)]
        all_scores.append(scores)
    return np.array(all_scores), top_1 / len(queries), top_5 / len(queries)


def clustered_features(rng, centers, num, noise):
    num_classes, dim = centers.shape
    labels = rng.integers(0, num_classes, num)
    return (centers[labels] + noise * rng.normal(size=(num, dim))).astype(np.float32), labels


@pytest.mark.parametrize("k,temperature,num_classes", [(200, 0.1, 10), (7, 0.5, 3), (1000, 0.07, 12)])
def test_knn_equals_brute_force_numpy(k, temperature, num_classes):
    rng = np.random.default_rng(k)
    centers = rng.normal(size=(num_classes, 16))
    bank, bank_labels = clustered_features(rng, centers, 700, noise=1.0)
    queries, query_labels = clustered_features(rng, centers, 600, noise=1.0)  # more than QUERY_CHUNK
    expected_scores, top_1, top_5 = brute_force_knn(bank, bank_labels, queries, query_labels,
                                                    num_classes, k, temperature)
    scores = knn.knn_scores(bank, bank_labels, queries, num_classes, k, temperature)
    np.testing.assert_allclose(scores, expected_scores, rtol=2e-4)
    result = knn.knn_accuracy(bank, bank_labels, queries, query_labels, num_classes, k, temperature)
    assert result == {"top_1": pytest.approx(top_1, abs=1e-12), "top_5": pytest.approx(top_5, abs=1e-12)}
    assert 0.2 < top_1 < 1.0 and top_1 < top_5  # neither trivial nor perfect: the test can tell


def test_k_and_temperature_change_the_votes():
    """Unscaled features: more neighbours or a higher temperature let the far class outvote the near one."""
    bank = np.array([[1.0, 0.0], [0.0, 1.0], [0.1, 1.0], [-0.1, 1.0]], np.float32)
    labels = np.array([0, 1, 1, 1])
    query = np.array([[1.0, 0.3]], np.float32)
    assert np.argmax(knn.knn_scores(bank, labels, query, 2, k=1, temperature=0.1)) == 0
    assert np.argmax(knn.knn_scores(bank, labels, query, 2, k=4, temperature=1.0)) == 1  # 3 votes beat 1
    assert np.argmax(knn.knn_scores(bank, labels, query, 2, k=4, temperature=0.05)) == 0  # sharp weights


EVALUATE_TINY_ENCODER = """
import keras
from simclr_tf import distribute, knn
from simclr_tf.config import DataConfig, DistributeConfig
from simclr_tf.data.sources import get_source
from simclr_tf.models.resnet import ResNet
strategy = distribute.build_strategy(DistributeConfig(cpu_replicas={replicas}))
source = get_source("builtin_shapes", builtin_num_examples={{"train": 90, "test": 37}})
data = DataConfig(dataset="builtin_shapes", image_size=16)
with strategy.scope():
    keras.utils.set_random_seed(0)
    encoder = ResNet(depth=18, width_multiplier=0.125, cifar_stem=True)
    encoder(tf.zeros([1, 16, 16, 3]))
evaluator = knn.KnnEvaluator(strategy, source, data, "train", "test", bank_size=75, batch_size=16, k=20)
bank_x, bank_y = evaluator.features(encoder, "bank")
order = np.lexsort(bank_x.T)  # replicas interleave the examples: compare as sets of rows
report(dict(result=evaluator(encoder), pixels=evaluator(None), bank_x=bank_x[order], bank_y=bank_y[order],
            replicas=strategy.num_replicas_in_sync))
"""


@pytest.mark.slow
def test_two_replicas_gather_the_same_features_and_result_as_one():
    one, two = (run_with_devices(EVALUATE_TINY_ENCODER.format(replicas=n), num_devices=n) for n in (1, 2))
    assert (one["replicas"], two["replicas"]) == (1, 2)
    # 75 bank images of 90 (batches of 16, short last ones on both replicas) and all 37 queries.
    assert one["result"]["bank_size"] == two["result"]["bank_size"] == 75
    assert one["result"]["num_queries"] == two["result"]["num_queries"] == 37
    np.testing.assert_allclose(two["bank_x"], one["bank_x"], rtol=1e-5, atol=1e-6)
    assert two["bank_y"] == one["bank_y"]
    assert two["result"] == one["result"] and two["pixels"] == one["pixels"]
