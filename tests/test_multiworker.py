"""Real multi-worker training: worker processes on 127.0.0.1 with TF_CONFIG under MultiWorkerMirroredStrategy.

- Two workers take the same steps as one process on the same global batch, and only the chief checkpoints.
- So do two workers with cached-gradient steps (--contrastive_chunks) and the SimCLR v2 memory, whose queue
  and moving-average copy are the same on both workers.
- A worker killed mid-run (SIGKILL) after a checkpoint exists: the whole job, restarted with the same
  commands, resumes from the newest checkpoint's step and finishes at the requested step.
- Without --seed, two workers reading an image folder or TFDS record files train on disjoint shares that
  together hold every example once, and neither opens a file of the other's share.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.persistence import checkpoints
from tests.test_cli import REPO, TINY, checkpoint_steps

GLOBAL_BATCH = 8
STEPS = 3
_MARK = "@@REPORT@@"


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def tf_config(ports, index):
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
                       "task": {"type": "worker", "index": index}})


def start_worker(command, ports, index, log_path):
    env = dict(os.environ, TF_CONFIG=tf_config(ports, index), TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=REPO)
    log = open(log_path, "w")
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_all(procs, timeout):
    """Waits for every process; kills the ones still running after `timeout` seconds (in total)."""
    deadline = time.time() + timeout
    codes = []
    for proc in procs:
        try:
            codes.append(proc.wait(timeout=max(1.0, deadline - time.time())))
        except subprocess.TimeoutExpired:
            proc.kill()
            codes.append(proc.wait())
    return codes


def train_a_few_steps(strategy, model_dir):
    """STEPS LARS steps of a tiny SimCLR model (global BN) on fixed views, checkpointing every step.

    Every replica's batches are cut from the same sequence of global batches: with 2 workers, worker i takes
    the i-th half of each global batch, as one process would see them whole. Returns the per-step contrast
    losses and the weights.
    """
    from simclr_tf.models.heads import ProjectionHead
    from simclr_tf.models.resnet import ResNet
    from simclr_tf.models.simclr import SimCLRModel
    from simclr_tf import distribute, optimizers

    rng = np.random.default_rng(1)
    views = rng.random((2, GLOBAL_BATCH * STEPS, 16, 16, 3), dtype=np.float32)
    labels = np.zeros(GLOBAL_BATCH * STEPS, np.int32)

    def dataset_fn(context):
        per_replica = context.get_per_replica_batch_size(GLOBAL_BATCH)
        dataset = tf.data.Dataset.from_tensor_slices(((views[0], views[1]), labels)).batch(per_replica)
        return dataset.shard(context.num_input_pipelines, context.input_pipeline_id)

    if strategy.num_replicas_in_sync == 1:
        dataset = dataset_fn(tf.distribute.InputContext())
    else:
        dataset = strategy.distribute_datasets_from_function(dataset_fn)
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = SimCLRModel(ResNet(depth=18, width_multiplier=0.125, cifar_stem=True, global_bn=True),
                            ProjectionHead(num_layers=2, out_dim=8), temperature=0.5, weight_decay=1e-4)
        model(tf.zeros([1, 16, 16, 3]))
        model.compile(optimizer=optimizers.build_optimizer("lars", 0.2, weight_decay=1e-4))
    distribute.prepare_multi_worker_fit(model, strategy)
    initial = [w.numpy().tolist() for w in model.weights]
    losses = []
    record = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: losses.append(float(np.asarray(logs["contrast_loss"]))))
    model.fit(dataset, epochs=STEPS, steps_per_epoch=1, verbose=0,
              callbacks=[checkpoints.PeriodicCheckpoint(model_dir, keep_max=5), record])
    return {"losses": losses, "initial": initial, "weights": [w.numpy().tolist() for w in model.weights],
            "paths": [w.path for w in model.weights]}


WORKER_CODE = f"""
import json, sys
from simclr_tf import distribute
from simclr_tf.config import ConfigError, DistributeConfig
from tests.test_multiworker import train_a_few_steps
strategy = distribute.build_strategy(DistributeConfig())
distribute.check_workers_agree(strategy, 7, "a number they share")
try:
    distribute.check_workers_agree(strategy, strategy.cluster_resolver.task_id, "their task index")
    disagreement = None
except ConfigError as error:
    disagreement = str(error)
result = train_a_few_steps(strategy, sys.argv[1])
result.update(replicas=strategy.num_replicas_in_sync, chief=distribute.is_chief(strategy),
              should_checkpoint=strategy.extended.should_checkpoint, disagreement=disagreement)
print("{_MARK}" + json.dumps(result), flush=True)
"""


def report_of(log_path):
    with open(log_path) as f:
        lines = [line for line in f if line.startswith(_MARK)]
    assert len(lines) == 1, open(log_path).read()[-3000:]
    return json.loads(lines[0][len(_MARK):])


@pytest.mark.slow
def test_two_workers_take_the_same_steps_as_one_process(tmp_path):
    ports = free_ports(2)
    model_dirs = [tmp_path / f"worker{index}" for index in range(2)]
    for model_dir in model_dirs:
        model_dir.mkdir()
    logs = [tmp_path / f"worker{index}.log" for index in range(2)]
    workers = [start_worker([sys.executable, "-c", WORKER_CODE, str(model_dirs[index])], ports, index,
                            logs[index]) for index in range(2)]
    try:
        one_process = train_a_few_steps(tf.distribute.get_strategy(), str(tmp_path / "single"))
    finally:
        codes = wait_all(workers, timeout=300)
    assert codes == [0, 0], [open(log).read()[-3000:] for log in logs]
    reports = [report_of(log) for log in logs]

    assert [r["replicas"] for r in reports] == [2, 2]
    assert [r["chief"] for r in reports] == [True, False]
    assert [r["should_checkpoint"] for r in reports] == [True, False]  # TF's own notion agrees.
    for report in reports:  # Workers holding different values (e.g. resume steps) are stopped on both.
        assert "The workers disagree on their task index: the replicas hold [0, 1]" in report["disagreement"]
    # Only the chief wrote checkpoints; the other worker wrote nothing at all.
    assert checkpoint_steps(str(model_dirs[0])) == [1, 2, 3]
    assert os.listdir(model_dirs[1]) == []

    # Both workers hold identical weights; NT-Xent saw the negatives of both workers (same losses).
    for a, b in zip(reports[0]["weights"], reports[1]["weights"]):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(reports[0]["losses"], one_process["losses"], rtol=1e-5)
    # Same weights as one process. Kernels (LARS steps scaled by the trust ratio) agree to ~2e-7 here; the
    # batch-norm parameters, which LARS updates without a trust ratio, to ~2e-5 (measured): float32
    # summation order in the all-reduce and synchronized BN, as for 2 devices in one process.
    largest_step = 0.0
    for path, start, a, b in zip(one_process["paths"], one_process["initial"], reports[0]["weights"],
                                 one_process["weights"]):
        a, b, start = np.asarray(a), np.asarray(b), np.asarray(start)
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 if path.endswith("kernel") else 1e-4,
                                   err_msg=path)
        largest_step = max(largest_step, float(np.max(np.abs(b - start))))
    assert largest_step > 1e-2  # The steps were large compared with the tolerances.


MEMORY_SIZE = 32  # 2 x 2 x GLOBAL_BATCH: each write replaces a whole older batch, the third wraps around.
# Ghost batch norm groups the images of a chunk. On 2 replicas of 4 images in 2 chunks, chunk j is the local rows
# 2j, 2j+1 of each replica, and global BN normalizes the global rows {2j, 2j+1, 4+2j, 5+2j} together. One replica
# in 2 chunks of 4 groups the same images when it reads each global batch in this order.
ONE_REPLICA_ORDER = [0, 1, 4, 5, 2, 3, 6, 7]


def train_chunks_and_memory(strategy):
    """STEPS steps of a tiny SimCLR model (ResNet-18 x 0.125, 16 px, global BN, online probe) with
    contrastive_chunks=2 and a memory of MEMORY_SIZE (momentum 0.9) on fixed views and labels.

    With 2 replicas, worker i takes the i-th half of each global batch; one replica reads each global batch in
    ONE_REPLICA_ORDER. Returns the per-step losses, the weights (online and copy), the queue and its count."""
    from simclr_tf import distribute, optimizers
    from simclr_tf.models.heads import ProjectionHead
    from simclr_tf.models.resnet import ResNet
    from simclr_tf.models.simclr import SimCLRModel

    rng = np.random.default_rng(2)
    views = rng.random((2, GLOBAL_BATCH * STEPS, 16, 16, 3), dtype=np.float32)
    views[:, ::2] += 1.0  # Chunks with different statistics.
    labels = rng.integers(0, 4, GLOBAL_BATCH * STEPS).astype(np.int32)
    if strategy.num_replicas_in_sync == 1:
        order = np.concatenate([step * GLOBAL_BATCH + np.array(ONE_REPLICA_ORDER) for step in range(STEPS)])
        views, labels = views[:, order], labels[order]

    def dataset_fn(context):
        per_replica = context.get_per_replica_batch_size(GLOBAL_BATCH)
        dataset = tf.data.Dataset.from_tensor_slices(((views[0], views[1]), labels)).batch(per_replica)
        return dataset.shard(context.num_input_pipelines, context.input_pipeline_id)

    if strategy.num_replicas_in_sync == 1:
        dataset = dataset_fn(tf.distribute.InputContext())
    else:
        dataset = strategy.distribute_datasets_from_function(dataset_fn)
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = SimCLRModel(ResNet(depth=18, width_multiplier=0.125, cifar_stem=True, global_bn=True),
                            ProjectionHead(num_layers=2, out_dim=8), num_classes=4, temperature=0.5,
                            weight_decay=1e-4, contrastive_chunks=2, memory_size=MEMORY_SIZE,
                            memory_momentum=0.9)
        model(tf.zeros([1, 16, 16, 3]))
        model.compile(optimizer=optimizers.build_optimizer("lars", 0.2, weight_decay=1e-4))
    distribute.prepare_multi_worker_fit(model, strategy)
    weights = [w for w in model.weights if w.path not in (model.memory.queue.path, model.memory.count.path)]
    initial = [w.numpy().tolist() for w in weights]
    losses = []
    record = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: losses.append(
        [float(np.asarray(logs[name])) for name in ("contrast_loss", "supervised_loss")]))
    model.fit(dataset, epochs=STEPS, steps_per_epoch=1, verbose=0, callbacks=[record])
    return {"losses": losses, "initial": initial, "weights": [w.numpy().tolist() for w in weights],
            "paths": [w.path for w in weights], "queue": model.memory.queue.numpy().tolist(),
            "count": int(model.memory.count.numpy())}


CHUNKS_AND_MEMORY_WORKER_CODE = f"""
import json
from simclr_tf import distribute
from simclr_tf.config import DistributeConfig
from tests.test_multiworker import train_chunks_and_memory
strategy = distribute.build_strategy(DistributeConfig())
result = train_chunks_and_memory(strategy)
result.update(replicas=strategy.num_replicas_in_sync)
print("{_MARK}" + json.dumps(result), flush=True)
"""


@pytest.mark.slow
def test_two_workers_with_cached_chunks_and_a_memory_take_one_process_steps(tmp_path):
    """Two workers x 1 CPU, contrastive_chunks=2 and a memory: NT-Xent over the global batch, chunk batch norm
    across workers, the queue filled with the global batch. The losses and weights of 3 steps equal one replica's
    on the same global batches (read in ONE_REPLICA_ORDER, so its chunks hold the same images); both workers hold
    identical weights, copy and queue, whose rows are one replica's queue's rows (in another order)."""
    ports = free_ports(2)
    logs = [tmp_path / f"worker{index}.log" for index in range(2)]
    workers = [start_worker([sys.executable, "-c", CHUNKS_AND_MEMORY_WORKER_CODE], ports, index, logs[index])
               for index in range(2)]
    try:
        one_process = train_chunks_and_memory(tf.distribute.get_strategy())
    finally:
        codes = wait_all(workers, timeout=300)
    assert codes == [0, 0], [open(log).read()[-3000:] for log in logs]
    reports = [report_of(log) for log in logs]
    assert [r["replicas"] for r in reports] == [2, 2]

    for name in ("weights", "queue"):  # Every worker holds the same weights, copy and queue.
        for a, b in zip(reports[0][name], reports[1][name]):
            np.testing.assert_array_equal(a, b, err_msg=name)
    assert reports[0]["count"] == one_process["count"] == STEPS * 2 * GLOBAL_BATCH
    np.testing.assert_allclose(reports[0]["losses"], one_process["losses"], rtol=1e-5)
    def without_model_name(paths):  # The model in this process may be sim_clr_model_<n>.
        return [path.split("/", 1)[1] for path in paths]
    assert without_model_name(reports[0]["paths"]) == without_model_name(one_process["paths"])
    largest_step = 0.0
    # Float32 summation order differs (all-reduce, global BN over 2 processes): kernels, moving averages and the
    # copy agree to < 1e-5 here, the batch-norm parameters (LARS steps them without a trust ratio, by up to 1.0)
    # to 2.3e-5 (measured); the losses to 3e-6 relative and the queues' rows to 3e-6.
    for path, a, b in zip(one_process["paths"], reports[0]["weights"], one_process["weights"]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 if path.endswith("kernel") else 5e-5, err_msg=path)
    for start, end in zip(one_process["initial"], one_process["weights"]):
        largest_step = max(largest_step, float(np.max(np.abs(np.asarray(end) - np.asarray(start)))))
    assert largest_step > 1e-2  # The steps were large compared with the tolerances.

    # The queues hold the same keys, in replica order on the workers: every row matches one row of the other.
    queue_workers, queue_one = np.asarray(reports[0]["queue"]), np.asarray(one_process["queue"])
    distances = np.linalg.norm(queue_one[:, None, :] - queue_workers[None, :, :], axis=-1)
    assert np.all(distances.min(axis=1) <= 1e-5 * np.linalg.norm(queue_one, axis=1))
    assert sorted(distances.argmin(axis=1)) == list(range(MEMORY_SIZE))


STEP_RANGE = re.compile(r"steps (\d+)\.\.(\d+)")
EVENT_FILE = re.compile(r"events\.out\.tfevents\.\d+\..+\.(\d+)\.\d+\.v2$")


def run_py_command(model_dir, train_steps):
    return [sys.executable, "run.py", "--mode=train", f"--train_steps={train_steps}",
            f"--model_dir={model_dir}", *TINY, "--checkpoint_steps=3", "--lineareval_while_pretraining=false",
            "--global_bn=false"]  # Fewer collectives to trace; the 2-worker step test above covers global BN.


def event_file_pids(model_dir):
    """Process ids in the TensorBoard event file names (events.out.tfevents.<time>.<host>.<pid>...)."""
    pids = set()
    for _, _, files in os.walk(model_dir):
        pids.update(int(match.group(1)) for match in map(EVENT_FILE.match, files) if match)
    return pids


@pytest.mark.slow
def test_killed_worker_and_restarted_job_resume_from_the_last_checkpoint(tmp_path):
    model_dir, train_steps = str(tmp_path / "run"), 15
    ports = free_ports(2)
    command = run_py_command(model_dir, train_steps)
    logs = [tmp_path / f"first{index}.log" for index in range(2)]
    first = [start_worker(command, ports, index, logs[index]) for index in range(2)]
    try:
        deadline = time.time() + 240
        while not (os.path.isdir(model_dir) and checkpoint_steps(model_dir)):
            assert time.time() < deadline and all(p.poll() is None for p in first), \
                [open(log).read()[-3000:] for log in logs]
            time.sleep(0.2)
        first[1].send_signal(signal.SIGKILL)  # The non-chief dies mid-run.
        # The chief is stuck in (or fails) its next collective; what the job's supervisor would do: stop it.
        wait_all([first[0]], timeout=20)
    finally:
        wait_all(first, timeout=1)
    steps_left = checkpoint_steps(model_dir)
    assert steps_left and steps_left[-1] < train_steps
    for step in steps_left:  # Every checkpoint left behind loads.
        checkpoints.restore(_tiny_run_model(), checkpoints.checkpoint_path(model_dir, step))
    first_pids = event_file_pids(model_dir)

    logs = [tmp_path / f"second{index}.log" for index in range(2)]
    second = [start_worker(command, ports, index, logs[index]) for index in range(2)]
    codes = wait_all(second, timeout=300)
    outputs = [open(log).read() for log in logs]
    assert codes == [0, 0], [out[-3000:] for out in outputs]
    for out in outputs:  # Both workers resumed from the newest checkpoint and ran to the requested step.
        assert f"ckpt-{steps_left[-1]:08d}" in out
        assert STEP_RANGE.findall(out) == [(str(steps_left[-1]), str(train_steps))]
    assert checkpoint_steps(model_dir)[-1] == train_steps
    assert os.path.isdir(os.path.join(model_dir, "saved_model", str(train_steps)))
    # TensorBoard files come from the chief only (one writer per run, and never the non-chief).
    pids = event_file_pids(model_dir)
    assert second[1].pid not in pids and first[1].pid not in pids
    assert second[0].pid in pids and pids - first_pids == {second[0].pid}


def _tiny_run_model():
    """The model and optimizer TINY's run builds (no probe), to load its checkpoints into."""
    from simclr_tf import config as config_lib, optimizers
    from simclr_tf.models.simclr import build_simclr_model

    cfg = config_lib.Config.from_dict({"model": {"resnet_depth": 18, "width_multiplier": 0.125,
                                                 "num_proj_layers": 2, "proj_out_dim": 16}})
    model = build_simclr_model(cfg.model, 16, num_classes=0, temperature=0.5, hidden_norm=True,
                               weight_decay=1e-6, optimizer_name="lars")
    schedule = optimizers.WarmUpAndCosineDecay(0.5, 10000, 16, warmup_epochs=0, train_steps=15)
    model.compile(optimizer=optimizers.build_optimizer("lars", schedule, weight_decay=1e-6))
    return model


@pytest.mark.slow
def test_two_workers_evaluate_the_whole_split_as_one_process_does(tmp_path):
    """--mode=eval under MultiWorkerMirroredStrategy: each worker reads half of the test split (2,000
    images, uneven last batches included) and the metrics, summed over workers, equal one process's."""
    model_dir = str(tmp_path / "run")
    common = [sys.executable, "run.py", f"--model_dir={model_dir}", *TINY, "--global_bn=false"]
    subprocess.run([*common, "--mode=train", "--train_steps=2", "--keep_hub_module_max=0"], cwd=REPO,
                   check=True, capture_output=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    whole_split = ["--mode=eval", "--eval_steps=0", "--eval_batch_size=96"]
    ports = free_ports(2)
    logs = [tmp_path / f"eval{index}.log" for index in range(2)]
    workers = [start_worker([*common, *whole_split, "--eval_name=workers"], ports, index, logs[index])
               for index in range(2)]
    try:
        subprocess.run([*common, *whole_split, "--eval_name=one_process"], cwd=REPO, check=True,
                       capture_output=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    finally:
        codes = wait_all(workers, timeout=300)
    assert codes == [0, 0], [open(log).read()[-3000:] for log in logs]
    with open(os.path.join(model_dir, "result_workers.json")) as f:
        workers_result = json.load(f)
    with open(os.path.join(model_dir, "result_one_process.json")) as f:
        one_process = json.load(f)
    assert workers_result["num_eval_examples"] == one_process["num_eval_examples"] == 2000
    for name in ("top_1_accuracy", "top_5_accuracy", "supervised_loss"):
        assert workers_result[name] == pytest.approx(one_process[name], rel=1e-5), name
    assert 0 < one_process["top_5_accuracy"] < 1  # not a degenerate case where any split would agree


# Two workers read one epoch of pretraining input through the real pipeline (build_pretrain_dataset under
# distribute_datasets_from_function, --seed unset). Every image has its own label (a folder of one image
# per class folder; TFDS example j has label j % 10 and there are 10), so the labels of the batches are the
# ids trained on. Shuffling happens before repeating, so a worker's first epoch is its whole share.
# Files opened are logged by wrapping the functions that open them.
INPUT_WORKER_CODE = f"""
import json, sys
import tensorflow as tf
from tensorflow_datasets.core import reader as tfds_reader
from simclr_tf import distribute
from simclr_tf.config import DataConfig, DistributeConfig
from simclr_tf.data import folders, pipelines, sources

folder, data_dir, opened_log = sys.argv[1:4]
strategy = distribute.build_strategy(DistributeConfig())
read_file, open_records = folders._decode, tfds_reader._get_dataset_from_filename

def logged_read(path):
    with tf.control_dependencies([tf.print(path, output_stream="file://" + opened_log)]):
        return read_file(path)

def logged_open(instruction, **kwargs):
    with tf.control_dependencies([tf.print(instruction.filepath, output_stream="file://" + opened_log)]):
        return open_records(instruction, **kwargs)

folders._decode, tfds_reader._get_dataset_from_filename = logged_read, logged_open
data = DataConfig(image_size=8, shuffle_buffer=4)
report = {{"task": strategy.cluster_resolver.task_id, "seed": distribute.shared_seed(strategy)}}
for name, dataset, split, examples in (("folder", folder, "train", 8), ("tfds", "cifar10", "train", 10),
                                       ("tfds_one_file", "cifar10", "test", 10)):
    source = sources.get_source(dataset, data_dir=data_dir, eval_split=None, holdout_fraction=0.0)
    ds = pipelines.distributed(strategy, pipelines.build_pretrain_dataset, 2, source=source, split=split,
                               data=data, seed=None)
    batches = iter(ds)
    labels = []
    for _ in range(examples // 2):  # one epoch of the split at a global batch of 2 (one image per worker)
        (_, _), batch_labels = next(batches)
        labels += [int(v) for r in strategy.experimental_local_results(batch_labels) for v in r.numpy()]
    report[name] = labels
print("{_MARK}" + json.dumps(report), flush=True)
"""


def _opened(log_path):
    if not os.path.exists(log_path):
        return set()
    with open(log_path) as f:
        return {line.strip() for line in f if line.strip()}


@pytest.mark.slow
def test_two_workers_read_disjoint_file_shards_covering_the_split_once(tmp_path):
    from tests.tfds_records import write_tfds_records

    folder = tmp_path / "images"
    for index in range(8):  # one image per class folder: the label says which image it is
        os.makedirs(folder / f"c{index}")
        tf.io.write_file(str(folder / f"c{index}" / "image.png"),
                         tf.io.encode_png(tf.fill([10, 10, 3], tf.constant(index, tf.uint8))))
    records = write_tfds_records(str(tmp_path / "tfds"), "cifar10", {"train": [3, 2, 2, 3], "test": [10]})
    ports = free_ports(2)
    logs = [tmp_path / f"input{index}.log" for index in range(2)]
    opened_logs = [str(tmp_path / f"opened{index}.txt") for index in range(2)]
    workers = [start_worker([sys.executable, "-c", INPUT_WORKER_CODE, str(folder), str(tmp_path / "tfds"),
                             opened_logs[index]], ports, index, logs[index]) for index in range(2)]
    codes = wait_all(workers, timeout=300)
    assert codes == [0, 0], [open(log).read()[-3000:] for log in logs]
    reports = [report_of(log) for log in logs]
    for name, count in (("folder", 8), ("tfds", 10), ("tfds_one_file", 10)):
        # Each worker reads its own half; together every example once.
        assert sorted(reports[0][name] + reports[1][name]) == list(range(count)), (name, reports)
        assert len(reports[0][name]) == len(reports[1][name]) == count // 2
    assert reports[0]["seed"] == reports[1]["seed"]  # the chief's seed reached the other worker
    opened = [_opened(path) for path in opened_logs]
    images = [{p for p in files if p.endswith(".png")} for files in opened]
    train_files = [{p for p in files if "-train." in p} for files in opened]
    assert len(images[0]) == len(images[1]) == 4 and not images[0] & images[1]
    assert len(train_files[0]) == len(train_files[1]) == 2 and not train_files[0] & train_files[1]
    assert train_files[0] | train_files[1] == set(records["train"])
    for files in opened:  # the one-file split: each worker opens it and keeps every other example
        assert {p for p in files if "-test." in p} == set(records["test"])
