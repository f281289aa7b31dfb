"""Numeric precision of a run: choosing and applying the Keras global dtype policy.

Under the mixed policies, layers compute in bfloat16 or float16 while their variables stay float32;
batch norm statistics, the augmentation layers, the model's outputs and the losses stay float32. Apply
the policy before the model is built: layers read it when they are created.
"""
import keras
import tensorflow as tf
from absl import logging

from simclr_tf.config import PRECISIONS

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
MIN_FLOAT16_COMPUTE_CAPABILITY = (7, 0)  # Volta: the first GPUs with float16 tensor cores.


def _cpu_flags(path="/proc/cpuinfo"):
    try:
        with open(path) as f:
            return {flag for line in f if line.startswith("flags") for flag in line.split(":", 1)[1].split()}
    except OSError:  # Not Linux: no way to tell, so assume no bfloat16 support.
        return set()


def _gpu_compute_capabilities():
    return [tf.config.experimental.get_device_details(gpu).get("compute_capability") or (0, 0)
            for gpu in tf.config.list_physical_devices("GPU")]


def resolve_precision(name):
    """The policy name `name` stands for: `auto` picks one for this machine, other names pass through.

    `auto` gives mixed_float16 on GPUs of compute capability 7.0 or more, mixed_bfloat16 on a TPU or a
    CPU with bfloat16 instructions (avx512_bf16 or amx_bf16), float32 otherwise.
    """
    if name not in PRECISIONS:
        raise ValueError(f"Unknown precision {name!r}; use one of {list(PRECISIONS)}.")
    if name != "auto":
        return name
    gpus = _gpu_compute_capabilities()
    if gpus:
        fast = all(tuple(capability) >= MIN_FLOAT16_COMPUTE_CAPABILITY for capability in gpus)
        resolved, reason = ("mixed_float16", f"GPUs of compute capability {gpus}") if fast else (
            "float32", f"GPUs of compute capability {gpus}, below 7.0")
    elif tf.config.list_logical_devices("TPU"):
        resolved, reason = "mixed_bfloat16", "a TPU"
    else:
        bf16 = sorted(_cpu_flags() & set(CPU_BF16_FLAGS))
        resolved, reason = ("mixed_bfloat16", f"a CPU with {', '.join(bf16)}") if bf16 else (
            "float32", "a CPU without bfloat16 instructions")
    logging.info("--precision=auto picked %s for %s.", resolved, reason)
    return resolved


def apply_precision(name):
    """Resolves `name` and sets it as the Keras global dtype policy; returns the policy name."""
    resolved = resolve_precision(name)
    keras.mixed_precision.set_global_policy(resolved)
    return resolved


def wrap_optimizer(optimizer, policy_name):
    """Under mixed_float16, wraps `optimizer` in dynamic loss scaling (float16 gradients underflow)."""
    if policy_name == "mixed_float16" and not isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer
