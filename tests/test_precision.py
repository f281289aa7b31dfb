"""Mixed precision and XLA: the tiny SimCLR model trains in bfloat16/float16 close to float32, keeps
float32 variables and losses, wraps LARS in loss scaling under float16, and gives the same step with XLA."""
import logging

import keras
import numpy as np
import pytest
import tensorflow as tf

from simclr_tf import losses
from simclr_tf import precision
from simclr_tf.optimizers import DEFAULT_LARS_EXCLUDE, LARS
from tests.test_simclr import tiny_model, views_and_labels

# bfloat16 keeps 8 significant bits (float16 11): one rounding is off by up to 2^-9 = 0.2% relative, and
# a pass through 20 layers rounds many times. Measured here (2-core AVX512_BF16 CPU) against float32: the
# first-step NT-Xent loss (2.64) differed by 2.9e-3 relative in bfloat16 and 2.3e-4 in float16; the first
# weight update by 0.42 (bfloat16: batch-norm gamma/beta gradients are sums of thousands of terms that
# nearly cancel at initialization) and 0.06 (float16). The bounds leave room for other CPUs' kernels and
# still fail on a policy that was not applied or a missing loss scale (update error 1.0: the batch-norm
# updates come out 32768 times too small).
LOSS_RTOL = {"mixed_bfloat16": 2e-2, "mixed_float16": 5e-3}
UPDATE_RTOL = {"mixed_bfloat16": 0.6, "mixed_float16": 0.2}
STEPS = 3


@pytest.fixture(autouse=True)
def float32_policy_afterwards():
    yield
    keras.mixed_precision.set_global_policy("float32")


def train_tiny(policy, jit_compile=False, steps=STEPS, max_batches=12):
    """Trains the tiny model under `policy` with LARS, as a run does, for `steps` applied steps.

    Returns the model, the first applied update (all trainable weights, flattened) and the loss of every
    batch. Under mixed_float16 the first batches can be skipped while the loss scale comes down from
    2^15 (gradients overflow float16); skipped batches leave weights and momentum untouched.
    """
    policy = precision.apply_precision(policy)
    model = tiny_model()
    optimizer = LARS(0.3, weight_decay=1e-4, exclude_from_weight_decay=list(DEFAULT_LARS_EXCLUDE))
    model.compile(optimizer=precision.wrap_optimizer(optimizer, policy), jit_compile=jit_compile)
    before = [w.numpy() for w in model.trainable_weights]
    views, labels = views_and_labels()
    batch_losses, update = [], None
    while int(model.optimizer.iterations.numpy()) < steps and len(batch_losses) < max_batches:
        model.reset_metrics()  # Each loss is its own batch's, not a running mean.
        batch_losses.append(float(model.train_on_batch(views, labels, return_dict=True)["contrast_loss"]))
        if update is None and int(model.optimizer.iterations.numpy()) == 1:
            weights = zip(model.trainable_weights, before)
            update = np.concatenate([(w.numpy() - b).ravel() for w, b in weights])
    return model, update, batch_losses


@pytest.fixture(scope="module")
def float32_run():
    _, update, step_losses = train_tiny("float32")
    return update, step_losses


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_trains_close_to_float32(policy, float32_run):
    reference_update, reference_losses = float32_run
    model, update, step_losses = train_tiny(policy)
    assert np.all(np.isfinite(step_losses))
    assert int(model.optimizer.iterations.numpy()) == STEPS
    assert step_losses[-1] < step_losses[0]
    np.testing.assert_allclose(step_losses[0], reference_losses[0], rtol=LOSS_RTOL[policy])
    relative_update_error = np.linalg.norm(update - reference_update) / np.linalg.norm(reference_update)
    assert relative_update_error < UPDATE_RTOL[policy]

    compute_dtype = policy.split("_")[1]
    assert model.encoder(tf.zeros([1, 16, 16, 3])).dtype == compute_dtype  # The policy took effect.
    assert {w.dtype for w in model.weights} == {"float32"}
    (view_1, view_2), _ = views_and_labels()
    outputs = model(np.concatenate([view_1, view_2]), training=False)
    assert {value.dtype for value in outputs.values()} == {tf.float32}
    proj_1, proj_2 = tf.split(outputs["proj_head_output"], 2)
    loss, logits_ab, _ = losses.contrastive_loss(proj_1, proj_2, temperature=0.5)
    assert loss.dtype == tf.float32 and logits_ab.dtype == tf.float32

    scaled = isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert scaled == (policy == "mixed_float16")
    if scaled:
        assert isinstance(model.optimizer.inner_optimizer, LARS)
        assert float(model.optimizer.dynamic_scale.numpy()) < 2.0 ** 15  # Overflowing steps were skipped.


def test_jit_compile_takes_the_same_step(float32_run):
    _, step_losses = float32_run
    _, _, jit_losses = train_tiny("float32", jit_compile=True, steps=1)
    np.testing.assert_allclose(jit_losses[0], step_losses[0], rtol=1e-4)


def test_resolve_precision_passes_names_through_and_logs_auto(caplog):
    for name in ("float32", "mixed_bfloat16", "mixed_float16"):
        assert precision.resolve_precision(name) == name
    with caplog.at_level(logging.INFO):
        picked = precision.resolve_precision("auto")
    assert picked in ("float32", "mixed_bfloat16", "mixed_float16")
    assert f"--precision=auto picked {picked}" in caplog.text
    with pytest.raises(ValueError, match="mixed_bfloat16"):
        precision.resolve_precision("half")


@pytest.mark.parametrize("gpus, cpu_flags, expected", [
    ([], "fpu avx2 avx512f", "float32"),
    ([], "fpu avx512f avx512_bf16", "mixed_bfloat16"),
    ([], "fpu amx_bf16 amx_tile", "mixed_bfloat16"),
    ([(8, 0)], "fpu avx512_bf16", "mixed_float16"),
    ([(8, 0), (6, 1)], "fpu", "float32"),
])
def test_auto_follows_the_hardware(monkeypatch, tmp_path, gpus, cpu_flags, expected):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {cpu_flags}\n\nprocessor\t: 1\nflags\t\t: {cpu_flags}\n")
    real_cpu_flags = precision._cpu_flags
    monkeypatch.setattr(precision, "_cpu_flags", lambda: real_cpu_flags(str(cpuinfo)))
    monkeypatch.setattr(precision, "_gpu_compute_capabilities", lambda: gpus)
    assert precision.resolve_precision("auto") == expected
