"""Choosing the tf.distribute strategy from a `DistributeConfig`, and what multi-worker training needs.

- `use_tpu`: `TPUStrategy` on the named Cloud TPU (or `master`).
- `cpu_replicas` > 1: `MirroredStrategy` over that many logical CPU devices (testing).
- `TF_CONFIG` in the environment: `MultiWorkerMirroredStrategy` over all workers.
- a SLURM job step of several tasks (`srun -n N`, no `TF_CONFIG`): `MultiWorkerMirroredStrategy` with
  `SlurmClusterResolver`, one worker per task.
- several local GPUs: `MirroredStrategy` over them.
- otherwise the default strategy (one device).

Under several workers only the chief (`is_chief`) writes files, and `prepare_multi_worker_fit` works
around two Keras 3 bugs that otherwise break `fit()` and `evaluate()` there.
"""
import json
import os
import random
import shutil

import tensorflow as tf
from absl import logging

from simclr_tf.config import ConfigError, DistributeConfig

SLURM_PORT_BASE = 8888  # SlurmClusterResolver's default: task i of a node listens on this port + i.


def _tpu_strategy(cfg: DistributeConfig):
    try:
        if cfg.tpu_name:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
                cfg.tpu_name, zone=cfg.tpu_zone, project=cfg.gcp_project)
        else:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(cfg.master or "")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, tf.errors.OpError, RuntimeError) as error:
        raise ConfigError(
            f"--use_tpu is set but no TPU could be reached ({error}). Name a reachable TPU with "
            "--tpu_name (and --tpu_zone/--gcp_project), or drop --use_tpu to train on GPUs/CPU.") from error
    return tf.distribute.TPUStrategy(resolver)


def _check_tf_config(raw):
    try:
        tf_config = json.loads(raw)
        cluster, task = tf_config["cluster"], tf_config["task"]
        workers = cluster[task["type"]]
        workers[int(task["index"])]
    except (ValueError, KeyError, TypeError, IndexError) as error:
        raise ConfigError(
            f"TF_CONFIG is malformed ({error!r}): it must be JSON like "
            '{"cluster": {"worker": ["host1:port", "host2:port"]}, "task": {"type": "worker", "index": 0}} '
            "with the index inside the list. Fix it, or unset TF_CONFIG for a single machine.") from error


def _split_cpu(count):
    """Names of `count` logical CPU devices (configures them on first use)."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError as error:  # Devices already initialized: fine if they are already split.
        if len(tf.config.list_logical_devices("CPU")) != count:
            raise ConfigError(
                f"--cpu_replicas={count} must be set before TensorFlow initializes its devices; "
                "pass it on the command line of a fresh process.") from error
    return [device.name for device in tf.config.list_logical_devices("CPU")]


def slurm_task_count():
    """Tasks of the current SLURM job step (`srun -n N` sets SLURM_STEP_NUM_TASKS), 0 outside SLURM."""
    try:
        return int(os.environ.get("SLURM_STEP_NUM_TASKS", "0"))
    except ValueError:
        return 0


def slurm_cluster_resolver(port_base=SLURM_PORT_BASE):
    """The cluster of the current SLURM job step: one worker per task, task i of a node listening on
    `port_base + i`. On GPU nodes TF's `SlurmClusterResolver`, which also splits the node's GPUs over its
    tasks (CUDA_VISIBLE_DEVICES); on CPU nodes the same cluster without GPUs."""
    resolver_class = tf.distribute.cluster_resolver.SlurmClusterResolver
    try:
        if shutil.which("nvidia-smi"):
            return resolver_class(port_base=port_base)
        # SlurmClusterResolver pairs every task with GPUs, and with none it fails (a zero-step range).
        # Resolve the addresses as if each task had one GPU, leave CUDA_VISIBLE_DEVICES alone, and tell
        # the strategy there are no accelerators.
        tasks = slurm_task_count()
        slurm = resolver_class(port_base=port_base, gpus_per_node=tasks, gpus_per_task=1, auto_set_gpu=False)
        cluster = slurm.cluster_spec()
        return tf.distribute.cluster_resolver.SimpleClusterResolver(
            cluster, task_type=slurm.task_type, task_id=slurm.task_id, num_accelerators={"GPU": 0},
            rpc_layer=slurm.rpc_layer)
    except (KeyError, ValueError, RuntimeError) as error:
        raise ConfigError(
            f"This looks like a SLURM job step of {slurm_task_count()} tasks, but its cluster could not be "
            f"resolved ({error!r}). Launch the tasks with srun inside an allocation, or set TF_CONFIG "
            "yourself (it takes precedence).") from error


def build_strategy(cfg: DistributeConfig) -> tf.distribute.Strategy:
    """The strategy the run trains under; logs what it chose."""
    if cfg.use_tpu:
        strategy = _tpu_strategy(cfg)
    elif cfg.cpu_replicas > 1:
        strategy = tf.distribute.MirroredStrategy(_split_cpu(cfg.cpu_replicas))
    elif os.environ.get("TF_CONFIG"):
        _check_tf_config(os.environ["TF_CONFIG"])
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    elif slurm_task_count() > 1:
        strategy = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=slurm_cluster_resolver())
    elif len(tf.config.list_logical_devices("GPU")) > 1:
        strategy = tf.distribute.MirroredStrategy()
    else:
        strategy = tf.distribute.get_strategy()
    logging.info("Strategy %s with %d replica(s)", type(strategy).__name__,
                 strategy.num_replicas_in_sync)
    return strategy


def is_multi_worker(strategy) -> bool:
    """Whether `strategy` spans several worker processes (MultiWorkerMirroredStrategy with a cluster)."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    resolver = strategy.cluster_resolver
    if not (resolver and resolver.task_type):
        return False
    cluster = resolver.cluster_spec().as_dict()
    return len(cluster.get("chief", ())) + len(cluster.get("worker", ())) > 1


def is_chief(strategy) -> bool:
    """Whether this process writes the run's files (checkpoints, exports, config, summaries, results).

    Under a multi-worker strategy that is the `chief` task of the cluster, or worker 0 when the cluster
    has no chief (TF_CONFIG and SLURM clusters usually list only workers); every other strategy runs in a
    single process, which is its chief.
    """
    if not is_multi_worker(strategy):
        return True
    resolver = strategy.cluster_resolver
    return is_chief_task(resolver.cluster_spec().as_dict(), resolver.task_type, resolver.task_id)


def is_chief_task(cluster, task_type, task_id) -> bool:
    """The chief rule on a cluster dict (`{"chief": [...], "worker": [...]}`) and a task."""
    if cluster.get("chief"):
        return task_type == "chief"
    return task_type == "worker" and int(task_id or 0) == 0


def check_workers_agree(strategy, value, what):
    """Raises ConfigError unless every worker of a multi-worker strategy holds the same integer `value`.

    Workers that resume from different checkpoints (e.g. model_dir is not on storage they all see)
    would otherwise train out of step and hang or fail in a collective much later.
    """
    if not is_multi_worker(strategy):
        return
    local = tf.constant([int(value)], tf.int64)
    values = strategy.gather(strategy.run(lambda: local), axis=0).numpy().tolist()
    if len(set(values)) > 1:
        raise ConfigError(
            f"The workers disagree on {what}: the replicas hold {values}. Every worker must see the same "
            "model_dir: put it on storage all of them can read (a shared filesystem or bucket) and start "
            "every worker with the same flags.")


def shared_seed(strategy) -> int:
    """A seed drawn at random by the chief and sent to every worker (a collective every worker joins).

    For what the workers must agree on when the user gave no seed, such as the order of the input files
    they split between them. It is drawn afresh by each run (as an unset `--seed` promises) and needs no
    file the chief writes and the others read, so nothing waits on shared storage; the chief logs it.
    Outside multi-worker strategies: a fresh seed, no collective.
    """
    seed = random.SystemRandom().randrange(2**31)
    if not is_multi_worker(strategy):
        return seed
    local = tf.constant([seed if is_chief(strategy) else -1], tf.int64)
    values = strategy.gather(strategy.run(lambda: local), axis=0).numpy().tolist()
    seed = max(values)  # the chief's; the other workers sent -1
    logging.info("Input seed %d, drawn by the chief and shared by the workers (no --seed given).", seed)
    return seed


def prepare_multi_worker_fit(model, strategy):
    """Makes `model.fit()`/`evaluate()` work under a multi-worker strategy; a no-op otherwise.

    Keras 3 (checked on 3.15 and its main branch) breaks there in two places (keras-team/keras#20585):
    - `fit` first reduces a whole input batch across workers to build the model symbolically
      (`_maybe_symbolic_build`); `strategy.reduce` rejects nested batches such as `((view_1, view_2),
      labels)`. Our models are built, and their optimizer is built here, before `fit`, so that step has
      nothing to do and is skipped.
    - each step's logs are averaged with `strategy.reduce("MEAN", log, axis=0)`, which fails on the scalar
      logs a `train_step` returns; the logs get a length-1 axis, which that reduction removes again.
    Call it once after `compile`; the wrapped steps are meant for this strategy only.
    """
    if not is_multi_worker(strategy):
        return
    with strategy.scope():
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
    symbolic_build = model._maybe_symbolic_build

    def build_unless_built(iterator=None, data_batch=None):
        built = all(layer.built for layer in model._flatten_layers())
        if built and (model.optimizer is None or model.optimizer.built):
            return None
        return symbolic_build(iterator=iterator, data_batch=data_batch)

    def with_length_one_axis(step):
        def wrapped(data):
            return {name: tf.reshape(value, [1]) for name, value in step(data).items()}
        return wrapped

    # Instance attributes shadow the methods; object.__setattr__ keeps Keras from tracking them as state.
    object.__setattr__(model, "_maybe_symbolic_build", build_unless_built)
    object.__setattr__(model, "train_step", with_length_one_axis(model.train_step))
    object.__setattr__(model, "test_step", with_length_one_axis(model.test_step))
