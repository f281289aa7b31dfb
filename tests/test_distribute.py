"""simclr_tf.distribute: who is the chief, SLURM clusters, malformed TF_CONFIG, the multi-worker fit patch is
a no-op elsewhere, and per-replica batch norm without global_bn. The real multi-worker runs are in
test_multiworker.py."""
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from simclr_tf import distribute
from simclr_tf.config import ConfigError, DistributeConfig
from tests.subprocess_runner import run_with_devices


@pytest.mark.parametrize("cluster, task_type, task_id, chief", [
    ({"worker": ["a:1", "b:1"]}, "worker", 0, True),
    ({"worker": ["a:1", "b:1"]}, "worker", 1, False),
    ({"chief": ["c:1"], "worker": ["a:1"]}, "chief", 0, True),
    ({"chief": ["c:1"], "worker": ["a:1"]}, "worker", 0, False),
])
def test_chief_is_the_chief_task_or_worker_zero_without_one(cluster, task_type, task_id, chief):
    assert distribute.is_chief_task(cluster, task_type, task_id) is chief


def test_single_process_strategies_are_their_own_chief():
    for strategy in (tf.distribute.get_strategy(), tf.distribute.OneDeviceStrategy("/cpu:0")):
        assert distribute.is_chief(strategy)
        assert not distribute.is_multi_worker(strategy)


@pytest.mark.parametrize("tf_config, fragment", [
    ("{not json", "TF_CONFIG is malformed"),
    (json.dumps({"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", "index": 3}}),
     "index inside the list"),
    (json.dumps({"cluster": {"worker": ["localhost:1"]}}), "unset TF_CONFIG"),
])
def test_malformed_tf_config_fails_before_any_work(monkeypatch, tf_config, fragment):
    monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(ConfigError, match=fragment):
        distribute.build_strategy(DistributeConfig())


def test_use_tpu_without_a_tpu_fails_before_any_work():
    with pytest.raises(ConfigError, match="no TPU could be reached.*--tpu_name.*or drop --use_tpu"):
        distribute.build_strategy(DistributeConfig(use_tpu=True))


def test_slurm_step_resolves_to_one_worker_per_task(monkeypatch):
    """What `srun -n 2` on one node sets; task 1 is a worker but not the chief."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # On GPU machines the resolver sets it; restored after.
    for name, value in {"SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_NODELIST": "node[7]",
                        "SLURM_STEP_TASKS_PER_NODE": "2"}.items():
        monkeypatch.setenv(name, value)
    assert distribute.slurm_task_count() == 2
    resolver = distribute.slurm_cluster_resolver(port_base=9100)
    cluster = resolver.cluster_spec().as_dict()
    assert cluster == {"worker": ["node7:9100", "node7:9101"]}
    assert (resolver.task_type, resolver.task_id) == ("worker", 1)
    assert not distribute.is_chief_task(cluster, resolver.task_type, resolver.task_id)


def test_outside_slurm_there_are_no_slurm_tasks(monkeypatch):
    monkeypatch.delenv("SLURM_STEP_NUM_TASKS", raising=False)
    assert distribute.slurm_task_count() == 0


def test_multi_worker_fit_patch_leaves_single_process_models_alone():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    distribute.prepare_multi_worker_fit(model, tf.distribute.get_strategy())
    assert "train_step" not in vars(model) and "_maybe_symbolic_build" not in vars(model)
    logs = model.train_on_batch(np.ones((2, 2)), np.ones((2, 1)), return_dict=True)
    assert np.shape(logs["loss"]) == ()


BATCH_NORM_SNIPPET = """
import keras
from simclr_tf.models.heads import ProjectionHead
from simclr_tf.models.resnet import ResNet
from simclr_tf.models.simclr import SimCLRModel

rng = np.random.default_rng(1)
view_1 = rng.random((8, 16, 16, 3), dtype=np.float32)
view_1[:4] += 1.0  # The first replica's half is brighter: per-replica statistics differ from global ones.
view_2 = view_1 + 0.01 * rng.random((8, 16, 16, 3), dtype=np.float32)
dataset = tf.data.Dataset.from_tensor_slices(((view_1, view_2), np.zeros(8, np.int32))).batch(8)

def moving_statistics(strategy, global_bn):
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = SimCLRModel(ResNet(depth=18, width_multiplier=0.125, cifar_stem=True, global_bn=global_bn),
                            ProjectionHead(num_layers=2, out_dim=8, global_bn=global_bn), temperature=0.5)
        model(tf.zeros([1, 16, 16, 3]))
        model.compile(optimizer=keras.optimizers.SGD(0.0))
    model.fit(dataset, epochs=1, verbose=0)
    stem = {w.path.split("/")[-1]: w.numpy() for w in model.weights
            if "stem/initial_conv_batch_normalization/moving" in w.path}
    return {"mean": stem["moving_mean"], "variance": stem["moving_variance"]}

# Two MirroredStrategy objects over the same 2 devices can share a process; the default strategy too.
mirrored = tf.distribute.MirroredStrategy()
report({"one_device": moving_statistics(tf.distribute.get_strategy(), True),
        "global_bn": moving_statistics(mirrored, True),
        "per_replica_bn": moving_statistics(mirrored, False)})
"""


@pytest.mark.slow
def test_batch_norm_statistics_are_global_only_with_global_bn():
    """After one step on 2 replicas, synchronized BN's moving statistics equal one device's on the whole
    batch; without global_bn each replica normalizes with its own half, and the saved (first replica's)
    statistics are those of the brighter half."""
    stats = run_with_devices(BATCH_NORM_SNIPPET, num_devices=2)
    one, synced, local = stats["one_device"], stats["global_bn"], stats["per_replica_bn"]
    for name in ("mean", "variance"):
        np.testing.assert_allclose(synced[name], one[name], rtol=1e-5, atol=1e-6)
    # Moving mean after one step from 0 with momentum 0.9: 0.1 x the batch mean of the conv output.
    assert np.max(np.abs(np.asarray(local["mean"]) - np.asarray(one["mean"]))) > 1e-2
    assert np.max(np.abs(np.asarray(local["variance"]) - np.asarray(one["variance"]))) > 1e-3
