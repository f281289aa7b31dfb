"""The weighted kNN monitor: against a brute-force numpy kNN, on real encoders, and under strategies.

- `knn_scores` / `knn_accuracy` equal a per-query numpy loop written from the paper's formula (Wu et al.
  2018, eq. 7: the k most cosine-similar bank features vote with weight exp(similarity / temperature)).
- `KnnEvaluator` gives the same features, labels and accuracy on 1 replica, on 2 logical CPUs
  (MirroredStrategy, in a subprocess: two replica counts clash in one process) and, in test_multiworker,
  on 2 worker processes.
"""
import glob
import json
import os
import sys
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

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
strategy = distribute.build_strategy(DistributeConfig(cpu_replicas={replicas}))  # TF_CONFIG: workers
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
    assert 0 < one["result"]["top_5"] < 1  # not a degenerate case where any split would agree


@pytest.mark.slow
def test_two_workers_gather_the_same_features_and_result_as_one_process(tmp_path):
    """MultiWorkerMirroredStrategy over 2 processes on 127.0.0.1: each worker embeds its shard; both end
    with the whole bank and the same result as one process."""
    from tests import subprocess_runner
    from tests.test_multiworker import free_ports, report_of, start_worker, wait_all

    code = (subprocess_runner._PRELUDE.format(num_devices=1, mark=subprocess_runner._MARK)
            + EVALUATE_TINY_ENCODER.format(replicas=0))
    ports = free_ports(2)
    logs = [tmp_path / f"worker{index}.log" for index in range(2)]
    workers = [start_worker([sys.executable, "-c", code], ports, index, logs[index]) for index in range(2)]
    try:
        one = run_with_devices(EVALUATE_TINY_ENCODER.format(replicas=0))
    finally:
        codes = wait_all(workers, timeout=300)
    assert codes == [0, 0], [open(log).read()[-3000:] for log in logs]
    for report in map(report_of, logs):
        assert report["replicas"] == 2
        np.testing.assert_allclose(report["bank_x"], one["bank_x"], rtol=1e-5, atol=1e-6)
        assert report["bank_y"] == one["bank_y"]
        assert report["result"] == one["result"] and report["pixels"] == one["pixels"]


TINY_KNN = ["--knn_eval_epochs=1", "--knn_bank_size=100", "--knn_k=20"]


@pytest.mark.slow
def test_run_reports_knn_in_result_json_and_mode_eval_reports_the_same(tmp_path):
    from tests.test_cli import TINY, run_cli

    model_dir = str(tmp_path / "run")
    proc = run_cli("--mode=train_then_eval", "--train_steps=2", f"--model_dir={model_dir}", *TINY, *TINY_KNN,
                   "--random_encoder_baseline")
    result = json.load(open(os.path.join(model_dir, "result.json")))
    names = [f"{who}knn_top_{k}" for who in ("", "random_encoder_", "raw_pixels_") for k in (1, 5)]
    assert all(0.0 <= result[name] <= 1.0 for name in names), result
    # The monitor ran once, at the last step, and the evaluation reused its result.
    assert proc.stderr.count("kNN (k=20, temperature 0.1, bank of 100) on 128 test images at step 2") == 1
    assert proc.stdout.splitlines()[0].split() == ["top-1", "on", "the", "eval", "split", "kNN", "linear",
                                                    "probe"]
    os.remove(os.path.join(model_dir, "result.json"))
    run_cli("--mode=eval", "--train_steps=2", f"--model_dir={model_dir}", *TINY, *TINY_KNN)
    again = json.load(open(os.path.join(model_dir, "result.json")))
    for name in names[:2]:
        assert again[name] == pytest.approx(result[name], abs=1e-9), name
    # The projector files of the run (their content is checked in test_projector).
    assert sorted(os.listdir(os.path.join(model_dir, "train", "projector"))) == [
        "embeddings.tsv", "metadata.tsv", "sprite.png"]


class RecordingEvaluator(knn.KnnEvaluator):
    """Records the encoders it evaluates."""

    def __call__(self, encoder):
        self.calls = getattr(self, "calls", 0) + 1
        return super().__call__(encoder)


def tiny_evaluator(bank_size=40):
    from simclr_tf.config import DataConfig
    from simclr_tf.data.sources import get_source

    source = get_source("builtin_shapes", builtin_num_examples={"train": 48, "test": 20})
    return RecordingEvaluator(tf.distribute.get_strategy(), source,
                              DataConfig(dataset="builtin_shapes", image_size=16), "train", "test",
                              bank_size=bank_size, batch_size=16, k=10)


def test_monitor_runs_every_n_steps_and_at_the_end_and_writes_tensorboard(tmp_path):
    from simclr_tf.models.heads import ProjectionHead
    from simclr_tf.models.resnet import ResNet
    from simclr_tf.models.simclr import SimCLRModel

    keras.utils.set_random_seed(0)
    model = SimCLRModel(ResNet(depth=18, width_multiplier=0.125, cifar_stem=True),
                        ProjectionHead(num_layers=2, out_dim=8))
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    views = tf.random.stateless_uniform([2, 5 * 4, 16, 16, 3], seed=[0, 1])
    dataset = tf.data.Dataset.from_tensor_slices(((views[0], views[1]), tf.zeros([20], tf.int64))).batch(4)
    evaluator = tiny_evaluator()
    monitor = knn.KnnMonitor(evaluator, every_steps=2, total_steps=5, log_dir=str(tmp_path))
    model.fit(dataset, epochs=1, verbose=0, callbacks=[monitor], shuffle=False)  # 5 steps
    assert evaluator.calls == 3
    final = evaluator(model.encoder)
    assert monitor.last == (5, {"knn_top_1": final["top_1"], "knn_top_5": final["top_5"]})
    assert monitor.evaluate(5) is monitor.last[1] and evaluator.calls == 4  # step 5 is not evaluated again
    scalars = {}
    for path in glob.glob(str(tmp_path / "train" / "events*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append(event.step)
    assert sorted(scalars["knn_top_1"]) == sorted(scalars["knn_top_5"]) == [2, 4, 5]


@pytest.mark.parametrize("every,total,expected", [(2, 5, [2, 4, 5]), (4, 9, [4, 9]),
                                                  (3, 9, [3, 6, 9]), (10, 5, [5])])
def test_monitor_leaves_an_evaluation_just_before_the_end_to_the_final_one(every, total, expected):
    class Fake:
        def __init__(self):
            self.optimizer = types.SimpleNamespace(iterations=tf.Variable(0))
            self.stop_training = False

    monitor = knn.KnnMonitor(None, every_steps=every, total_steps=total)
    evaluated = []
    monitor.evaluate = evaluated.append
    monitor.set_model(Fake())
    for step in range(1, total + 1):
        monitor.model.optimizer.iterations.assign(step)
        monitor.on_train_batch_end(step - 1)
    assert evaluated == expected


def test_bank_is_capped():
    bank_x, bank_y = tiny_evaluator(bank_size=35).features(None, "bank")
    assert bank_x.shape == (35, 16 * 16 * 3) and len(bank_y) == 35 and (bank_y >= 0).all()


@pytest.mark.parametrize("field,value,message", [
    ("knn_k", 0, "the neighbours that vote (1 or more)"),
    ("knn_eval_epochs", -1, "--knn_eval_epochs=-1"),
    ("projector_examples", -5, "--projector_examples=-5"),
    ("knn_temperature", 0.0, "--knn_temperature=0.0 must be positive"),
])
def test_invalid_monitor_flags_are_refused_with_the_fix(field, value, message):
    import dataclasses

    from simclr_tf.config import Config, ConfigError, TrainConfig, validate

    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate(Config(train=dataclasses.replace(TrainConfig(model_dir="/tmp/unused"), **{field: value})))
