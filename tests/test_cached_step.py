"""Cached-gradient steps (--contrastive_chunks): the gradients of one tape over the chunks ("ghost" batch norm)
on 1 and 2 replicas with global BN on and off, batch-norm moving averages updated once per chunk, the plain
step's gradients when batch norm runs in inference mode, the logged metrics, mixed precision, fit() with
checkpoints and resume, and the config rules."""
import dataclasses
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from simclr_tf import config as config_lib
from simclr_tf import losses
from simclr_tf import optimizers
from simclr_tf.models.heads import ProjectionHead
from simclr_tf.models.resnet import ResNet
from simclr_tf.models.resnet_blocks import BatchNormalization
from simclr_tf.models.simclr import SimCLRModel
from tests.subprocess_runner import run_with_devices

TEMPERATURE = 0.5
WEIGHT_DECAY = 1e-3
CHUNKS = 2


def small_encoder(global_bn):
    """Two convolutions with (the project's) batch norm: what the step sees of a ResNet, quick to trace."""
    return keras.Sequential([
        keras.layers.Conv2D(8, 3, strides=2, use_bias=False),
        BatchNormalization(synchronized=global_bn, name="batch_normalization_1"), keras.layers.ReLU(),
        keras.layers.Conv2D(16, 3, strides=2, use_bias=False),
        BatchNormalization(synchronized=global_bn, name="batch_normalization_2"), keras.layers.ReLU(),
        keras.layers.GlobalAveragePooling2D()])


def tiny_model(contrastive_chunks, global_bn=True, inference_bn=False, seed=0, resnet=False):
    keras.utils.set_random_seed(seed)
    encoder = (ResNet(depth=18, width_multiplier=0.125, cifar_stem=True, global_bn=global_bn) if resnet
               else small_encoder(global_bn))
    model = SimCLRModel(encoder, ProjectionHead(num_layers=2, out_dim=8, global_bn=global_bn), num_classes=4,
                        temperature=TEMPERATURE, weight_decay=WEIGHT_DECAY, optimizer_name="momentum",
                        contrastive_chunks=contrastive_chunks)
    model(tf.zeros([1, 16, 16, 3]))  # Builds the layers, batch norms included.
    if inference_bn:  # Keras runs a non-trainable BatchNormalization in inference mode.
        batch_norms = [layer for layer in model._flatten_layers()
                       if isinstance(layer, keras.layers.BatchNormalization)]
        assert len(batch_norms) >= 4
        for layer in batch_norms:
            layer.trainable = False
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    return model


def batch(size=8, seed=0):
    rng = np.random.default_rng(seed)
    view_1 = rng.random((size, 16, 16, 3), dtype=np.float32)
    view_1[: size // 2] += 1.0  # Chunks (and replicas) with different statistics.
    view_2 = np.clip(view_1 + 0.2 * rng.standard_normal(view_1.shape), 0, 2).astype(np.float32)
    return view_1, view_2, rng.integers(0, 4, size)


def one_tape_gradients(model, view_1, view_2, labels, num_chunks):
    """The reference: one tape over `num_chunks` forward passes (each chunk's batch norm with its own
    statistics), NT-Xent over the global batch from losses.py, the probe's mean over both views, L2 decay."""
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    with tf.GradientTape() as tape:
        outputs = [model(tf.concat([a, b], 0), training=True)
                   for a, b in zip(tf.split(view_1, num_chunks), tf.split(view_2, num_chunks))]
        projections = [tf.split(o["proj_head_output"], 2) for o in outputs]
        contrast, _, _ = losses.contrastive_loss(
            tf.concat([p[0] for p in projections], 0), tf.concat([p[1] for p in projections], 0),
            temperature=TEMPERATURE)
        logits = tf.concat([o["logits_sup"] for o in outputs], 0)
        label_chunks = tf.split(labels, num_chunks)
        both = tf.concat([tf.concat([c, c], 0) for c in label_chunks], 0)
        probe = losses.supervised_loss(both, logits)
        decay = WEIGHT_DECAY * tf.add_n([tf.nn.l2_loss(v) for v in model.trainable_variables
                                         if "batch_normalization" not in v.path])
        loss = (contrast + probe + decay) / replicas
    return tape.gradient(loss, model.trainable_variables)


EXACTNESS_SNIPPET = """
import keras
from tests.test_cached_step import CHUNKS, batch, one_tape_gradients, tiny_model
replicas = len(tf.config.list_logical_devices("CPU"))
strategy = tf.distribute.MirroredStrategy() if replicas > 1 else tf.distribute.get_strategy()
view_1, view_2, labels = batch()
data = strategy.experimental_distribute_dataset(
    tf.data.Dataset.from_tensor_slices((view_1, view_2, labels)).batch(8))
inputs = next(iter(data))

def summed(fn, model):
    @tf.function
    def step(v1, v2, y):
        return [strategy.reduce("SUM", g, axis=None) for g in strategy.run(fn, args=(v1, v2, y))]
    return [g.numpy() for g in step(*inputs)]

def moving(model):
    return [w.numpy() for w in model.non_trainable_weights if "moving" in w.path]

out = {}
for global_bn in (True, False):
    with strategy.scope():
        cached, reference, plain = (tiny_model(CHUNKS, global_bn), tiny_model(1, global_bn),
                                    tiny_model(1, global_bn))
    out[f"cached_{global_bn}"] = summed(lambda *b: cached.gradients_and_updates(*b)[0], cached)
    out[f"reference_{global_bn}"] = summed(lambda *b: one_tape_gradients(reference, *b, CHUNKS), reference)
    out[f"plain_{global_bn}"] = summed(lambda *b: plain.gradients_and_updates(*b)[0], plain)
    out[f"moving_cached_{global_bn}"] = moving(cached)
    out[f"moving_reference_{global_bn}"] = moving(reference)
    out[f"moving_plain_{global_bn}"] = moving(plain)
with strategy.scope():
    cached, plain = tiny_model(CHUNKS, inference_bn=True), tiny_model(1, inference_bn=True)
out["cached_inference"] = summed(lambda *b: cached.gradients_and_updates(*b)[0], cached)
out["plain_inference"] = summed(lambda *b: plain.gradients_and_updates(*b)[0], plain)
report(out)
"""


def assert_close(actual, expected, rtol=1e-5):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        a, e = np.asarray(a), np.asarray(e)
        np.testing.assert_allclose(a, e, rtol=rtol, atol=rtol * max(np.max(np.abs(e)), 1e-12))


def max_relative_difference(actual, expected):
    return max(np.max(np.abs(np.asarray(a) - np.asarray(e))) / (np.max(np.abs(np.asarray(e))) + 1e-12)
               for a, e in zip(actual, expected))


@pytest.mark.slow
@pytest.mark.parametrize("replicas", [1, 2])
def test_cached_gradients_equal_one_tape_over_the_chunks(replicas):
    """Cached gradients = one tape over the chunks (ghost BN), global BN on and off, with the probe and weight
    decay; BN moving averages as after the one-tape step (once per chunk, not once per pass); with batch norm
    in inference mode (nothing couples the chunks but NT-Xent), the plain full-batch step's gradients."""
    out = run_with_devices(EXACTNESS_SNIPPET, num_devices=replicas)
    for global_bn in (True, False):
        cached, reference = out[f"cached_{global_bn}"], out[f"reference_{global_bn}"]
        assert_close(cached, reference)
        assert_close(out[f"moving_cached_{global_bn}"], out[f"moving_reference_{global_bn}"])
        # Ghost batch norm is not full-batch batch norm: the test can tell them apart.
        assert max_relative_difference(cached, out[f"plain_{global_bn}"]) > 1e-3
        assert max_relative_difference(out[f"moving_cached_{global_bn}"],
                                       out[f"moving_plain_{global_bn}"]) > 1e-3
    assert_close(out["cached_inference"], out["plain_inference"])


def test_logged_metrics_are_those_of_the_whole_batch():
    """The step's logs: NT-Xent, its accuracy and entropy over the whole batch; the probe's loss and accuracy
    over both views (mean of equal chunks); the decay; their sum as `loss`; one optimizer step."""
    model = tiny_model(4)
    view_1, view_2, labels = batch()
    chunk_outputs = [model(tf.concat([view_1[i:i + 2], view_2[i:i + 2]], 0), training=True)
                     for i in range(0, 8, 2)]
    projections = [tf.split(o["proj_head_output"], 2) for o in chunk_outputs]
    contrast, logits_ab, contrast_labels = losses.contrastive_loss(
        tf.concat([p[0] for p in projections], 0), tf.concat([p[1] for p in projections], 0),
        temperature=TEMPERATURE)
    contrast_metrics = losses.contrastive_metrics(logits_ab, contrast_labels)
    logits = np.concatenate([o["logits_sup"].numpy() for o in chunk_outputs])
    both = np.concatenate([np.concatenate([labels[i:i + 2]] * 2) for i in range(0, 8, 2)])
    probe = float(losses.supervised_loss(both, logits))
    decay = float(optimizers.l2_weight_decay_loss(model.trainable_variables, WEIGHT_DECAY, "momentum"))
    logs = model.train_on_batch((view_1, view_2), labels, return_dict=True)
    np.testing.assert_allclose(logs["contrast_loss"], float(contrast), rtol=1e-5)
    np.testing.assert_allclose(logs["contrast_acc"], float(contrast_metrics["contrast_acc"]), atol=1e-6)
    np.testing.assert_allclose(logs["contrast_entropy"], float(contrast_metrics["contrast_entropy"]), rtol=1e-5)
    np.testing.assert_allclose(logs["supervised_loss"], probe, rtol=1e-5)
    np.testing.assert_allclose(logs["supervised_acc"], np.mean(np.argmax(logits, -1) == both), atol=1e-6)
    np.testing.assert_allclose(logs["weight_decay"], decay, rtol=1e-5)
    np.testing.assert_allclose(logs["loss"], float(contrast) + probe + decay, rtol=1e-5)
    assert int(model.optimizer.iterations.numpy()) == 1


def convolutions_in_traced_step(contrastive_chunks):
    """Conv2D ops in the traced cached step, loop bodies (the graph's function library) included."""
    model = tiny_model(contrastive_chunks)
    view_1, view_2, labels = batch()
    step = tf.function(lambda *b: model.gradients_and_updates(*b)[0])
    graph_def = step.get_concrete_function(view_1, view_2, labels).graph.as_graph_def()
    nodes = list(graph_def.node) + [n for f in graph_def.library.function for n in f.node_def]
    return sum(node.op == "Conv2D" for node in nodes)


def test_the_traced_step_holds_the_network_once_per_pass_whatever_the_chunks():
    """Passes 1 and 3 loop over the chunks in the graph: 8 chunks trace no more convolutions than 2 (unrolled
    passes would hold 4 times as many copies of the network, some 55 MB of graph each for a ResNet-18)."""
    assert convolutions_in_traced_step(8) == convolutions_in_traced_step(2) > 0


def test_the_nan_guard_stops_a_diverged_cached_step(tmp_path):
    """train.StopOnNonFiniteLoss reads the logged loss: a NaN weight (a diverged model) stops fit()."""
    from simclr_tf.train import NonFiniteLossError, StopOnNonFiniteLoss

    model = tiny_model(CHUNKS)
    kernel = model.projection_head.trainable_weights[0]
    kernel.assign(np.full(kernel.shape, np.nan, np.float32))
    view_1, view_2, labels = batch()
    with pytest.raises(NonFiniteLossError, match="diverged at step 1"):
        model.fit(tf.data.Dataset.from_tensor_slices(((view_1, view_2), labels)).batch(8), verbose=0,
                  callbacks=[StopOnNonFiniteLoss(str(tmp_path))])


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_cached_gradients_match_one_tape(policy):
    """Under a mixed policy the cached gradients, unscaled (mixed_float16 multiplies the loss by the
    LossScaleOptimizer's scale; 2**4 here, as 2**15 overflows float16 in this tiny model's first step), match
    the one-tape ghost-BN gradients computed under the same policy to 16-bit rounding, and fit() steps train
    with finite losses."""
    from simclr_tf import precision

    view_1, view_2, labels = batch()
    keras.mixed_precision.set_global_policy(policy)
    try:
        model, reference_model = tiny_model(CHUNKS), tiny_model(1)
        assert model.encoder.layers[0].compute_dtype == policy.split("_")[1]
        optimizer = precision.wrap_optimizer(keras.optimizers.SGD(0.1), policy)
        if policy == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1), initial_scale=16.0)
        model.compile(optimizer=optimizer)
        gradients = model.gradients_and_updates(view_1, view_2, labels)[0]
        reference = one_tape_gradients(reference_model, view_1, view_2, labels, CHUNKS)
        scale = float(model.optimizer.scale_loss(tf.constant(1.0)))
        assert scale == (16.0 if policy == "mixed_float16" else 1.0)
        for g, r in zip(gradients, reference):
            g, r = g.numpy() / scale, r.numpy()
            assert g.dtype == np.float32
            assert np.linalg.norm(g - r) <= 2e-2 * np.linalg.norm(r) + 1e-6
        history = model.fit(tf.data.Dataset.from_tensor_slices(((view_1, view_2), labels)).batch(8).repeat(2),
                            verbose=0)
        assert np.all(np.isfinite(history.history["loss"]))
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_config_round_trip_and_refusals():
    model = tiny_model(CHUNKS)
    assert SimCLRModel.from_config(model.get_config()).contrastive_chunks == CHUNKS
    with pytest.raises(ValueError, match="use one of them"):
        SimCLRModel(ResNet(depth=18, width_multiplier=0.125), ProjectionHead(), contrastive_chunks=2,
                    grad_accum_steps=2)


def chunk_config(**train):
    return config_lib.Config(train=config_lib.TrainConfig(model_dir="/tmp/unused", **train))


def test_validation_refuses_chunks_that_do_not_split_the_replica_batch():
    config_lib.validate(chunk_config(train_batch_size=256, contrastive_chunks=8))
    with pytest.raises(config_lib.ConfigError,
                       match=r"--contrastive_chunks=3 .* 256 per replica\. Use --train_batch_size=255 or 258, "
                             r"or a --contrastive_chunks that divides 256 \(up to 6: 2, 4\)"):
        config_lib.validate(chunk_config(train_batch_size=256, contrastive_chunks=3))
    # Over the 4 replicas of --cpu_replicas=4, 40 images are 10 per replica.
    with pytest.raises(config_lib.ConfigError, match=r"10 per replica.*=32 or 48.*up to 8: 2, 5"):
        config_lib.validate(dataclasses.replace(
            chunk_config(train_batch_size=40, contrastive_chunks=4),
            distribute=config_lib.DistributeConfig(cpu_replicas=4)))
    with pytest.raises(config_lib.ConfigError, match="Use one of them.*--contrastive_chunks=8"):
        config_lib.validate(chunk_config(train_batch_size=256, contrastive_chunks=4, grad_accum_steps=2))
    with pytest.raises(config_lib.ConfigError, match="only pretraining"):
        config_lib.validate(chunk_config(train_mode="finetune", checkpoint="/tmp/x", contrastive_chunks=2))


def test_a_restored_checkpoint_continues_as_the_uninterrupted_model(tmp_path):
    """The cached step keeps no state outside the model's weights: a model saved after step 1 and restored in a
    new model makes step 2 exactly as the model that went on (optimizer state included)."""
    data = [batch(seed=seed) for seed in (1, 2)]

    def step(model, i):
        view_1, view_2, labels = data[i]
        return model.train_on_batch((view_1, view_2), labels, return_dict=True)

    whole = tiny_model(CHUNKS)
    whole.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    step(whole, 0)
    whole.save_weights(str(tmp_path / "step1.weights.h5"))
    logs = step(whole, 1)
    resumed = tiny_model(CHUNKS, seed=5)
    resumed.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    resumed.optimizer.build(resumed.trainable_variables)
    resumed.load_weights(str(tmp_path / "step1.weights.h5"))
    resumed_logs = step(resumed, 1)
    np.testing.assert_allclose(resumed_logs["contrast_loss"], logs["contrast_loss"], rtol=1e-6)
    assert int(resumed.optimizer.iterations.numpy()) == 2
    for a, b in zip(resumed.weights, whole.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_run_with_chunks_checkpoints_and_resumes(tmp_path):
    """train.run with --contrastive_chunks=2 on the built-in data: 3 steps with a checkpoint each; with the
    last checkpoint removed, the same command resumes from step 2 and trains the third step again."""
    from simclr_tf.persistence import checkpoints
    from simclr_tf.config import DataConfig, ModelConfig, OptimConfig, TrainConfig
    from simclr_tf.train import run

    cfg = config_lib.Config(
        data=DataConfig(dataset="builtin_shapes", eval_split="test", image_size=16, seed=0),
        model=ModelConfig(resnet_depth=18, width_multiplier=0.125, num_proj_layers=2, proj_out_dim=8),
        optim=OptimConfig(optimizer="momentum", learning_rate=0.1),
        train=TrainConfig(model_dir=str(tmp_path), train_batch_size=8, train_steps=3, checkpoint_steps=1,
                          keep_hub_module_max=0, verbose=0, seed=0, contrastive_chunks=2))
    run(cfg)
    step, path = checkpoints.latest_checkpoint(str(tmp_path))
    assert step == 3
    os.remove(path)
    run(cfg)
    assert checkpoints.latest_checkpoint(str(tmp_path))[0] == 3
