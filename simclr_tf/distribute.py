"""Choosing the tf.distribute strategy from a `DistributeConfig`.

- `use_tpu`: `TPUStrategy` on the named Cloud TPU (or `master`).
- `TF_CONFIG` in the environment: `MultiWorkerMirroredStrategy` over all workers.
- several local GPUs: `MirroredStrategy` over them.
- otherwise the default strategy (one device).
"""
import json
import os

import tensorflow as tf
from absl import logging

from simclr_tf.config import ConfigError, DistributeConfig


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


def build_strategy(cfg: DistributeConfig) -> tf.distribute.Strategy:
    """The strategy the run trains under; logs what it chose."""
    if cfg.use_tpu:
        strategy = _tpu_strategy(cfg)
    elif cfg.cpu_replicas > 1:
        strategy = tf.distribute.MirroredStrategy(_split_cpu(cfg.cpu_replicas))
    elif os.environ.get("TF_CONFIG"):
        _check_tf_config(os.environ["TF_CONFIG"])
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    elif len(tf.config.list_logical_devices("GPU")) > 1:
        strategy = tf.distribute.MirroredStrategy()
    else:
        strategy = tf.distribute.get_strategy()
    logging.info("Strategy %s with %d replica(s)", type(strategy).__name__,
                 strategy.num_replicas_in_sync)
    return strategy
