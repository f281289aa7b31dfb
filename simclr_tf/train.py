"""Orchestration of a run: data, strategy, model, pretraining with checkpoints and resume, evaluation.

`run(cfg)` is what `run.py` calls; notebooks and library users can call it too with a `Config`.
"""
import math
import os
import time

import keras
import tensorflow as tf
from absl import logging

from simclr_tf import config as config_lib
from simclr_tf import distribute
from simclr_tf import interrupts
from simclr_tf import knn
from simclr_tf import linear_probe
from simclr_tf import optimizers
from simclr_tf import precision
from simclr_tf import progress
from simclr_tf import projector
from simclr_tf import run_lock
from simclr_tf import run_record
from simclr_tf import tasks
from simclr_tf.data import pipelines
from simclr_tf.data import sources
from simclr_tf.models.simclr import build_simclr_model
from simclr_tf.persistence import atomic
from simclr_tf.persistence import checkpoints
from simclr_tf.persistence import export as export_lib
from simclr_tf.persistence import modes as persistence_modes
from simclr_tf.persistence import pretrained
from simclr_tf.persistence import run_dir

NUM_SUMMARY_VIEWS = 4
EVAL_POLL_SECS = 15
LOSS_LOGS = ("loss", "contrast_loss", "supervised_loss", "weight_decay")


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or Inf loss; the message names the step, the loss and what to try."""


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Raises `NonFiniteLossError` at the end of the first batch whose loss is NaN or Inf.

    Raising, rather than setting `stop_training`, ends `fit` before the epoch-end callbacks run, so
    `PeriodicCheckpoint` never saves the diverged weights and the newest checkpoint stays the last good
    one. Put it first in the callback list so no other callback sees that batch. The logged losses are
    running means over the epoch, which turn non-finite at the first non-finite batch.
    """

    def __init__(self, model_dir):
        super().__init__()
        self.model_dir = model_dir

    def on_train_batch_end(self, batch, logs=None):
        bad = {name: value for name, value in (logs or {}).items()
               if name in LOSS_LOGS and not math.isfinite(value)}
        if not bad:
            return
        step = int(self.model.optimizer.iterations.numpy())
        latest = checkpoints.latest_checkpoint(self.model_dir)
        kept = (f"The newest checkpoint, {latest[1]}, is from before the divergence and stays the latest"
                if latest else "No checkpoint was written")
        values = ", ".join(f"{name}={value}" for name, value in bad.items())
        raise NonFiniteLossError(
            f"Training diverged at step {step}: {values}. Stopped without saving the diverged weights. "
            f"{kept}. Try a lower --learning_rate (or longer --warmup_epochs), --precision=float32 if "
            "you train in mixed precision, and check the input data for NaN or Inf values.")


class AugmentedViewsSummary(keras.callbacks.Callback):
    """Writes a few pretraining view pairs to TensorBoard when training starts."""

    def __init__(self, log_dir, views):
        super().__init__()
        self.log_dir = log_dir
        self.views = views

    def on_train_begin(self, logs=None):
        writer = tf.summary.create_file_writer(run_dir.train_summaries_dir(self.log_dir))
        with writer.as_default():
            step = int(self.model.optimizer.iterations.numpy())
            tf.summary.image("view_1", self.views[0], step=step, max_outputs=NUM_SUMMARY_VIEWS)
            tf.summary.image("view_2", self.views[1], step=step, max_outputs=NUM_SUMMARY_VIEWS)
        writer.close()


class RunContext:
    """What every phase of a run shares: the config, the strategy, the data source, the task and the model."""

    def __init__(self, cfg: config_lib.Config):
        self.cfg = cfg
        checkpoint = cfg.train.checkpoint
        if checkpoint and not (tf.io.gfile.exists(checkpoint) or tf.io.gfile.exists(checkpoint + ".index")):
            raise FileNotFoundError(
                f"--checkpoint={checkpoint} does not exist. Pass an existing checkpoint (a run's model_dir, "
                "a ckpt-*.weights.h5 file, an exported SavedModel, a .keras file or a reference checkpoint), "
                "or leave --checkpoint unset to start from scratch.")
        self.strategy = distribute.build_strategy(cfg.distribute)
        self.chief = distribute.is_chief(self.strategy)  # Only the chief writes files.
        self.lock = None  # Training writes to model_dir: one process at a time (the chief, for a cluster).
        if self.chief and cfg.train.mode in ("train", "train_then_eval"):
            self.lock = run_lock.RunLock(cfg.train.model_dir).acquire()
        try:
            self._prepare(cfg)
        except BaseException:
            self.release()
            raise

    def release(self):
        """Releases model_dir's run lock, if this context holds it."""
        if self.lock is not None:
            self.lock.release()

    def _prepare(self, cfg):
        # After the strategy (auto looks for its TPU), before the model (layers read the policy).
        self.precision = precision.apply_precision(cfg.train.precision)
        logging.info("Training in %s%s.", self.precision, " with XLA" if cfg.train.jit_compile else "")
        config_lib.check_batch_divides(cfg.train.train_batch_size, self.strategy.num_replicas_in_sync)
        optimizers.check_micro_batches(cfg.train.train_batch_size, self.strategy.num_replicas_in_sync,
                                       cfg.train.grad_accum_steps)
        config_lib.check_chunks(cfg.train.train_batch_size, self.strategy.num_replicas_in_sync,
                                cfg.train.contrastive_chunks)
        self.source = sources.get_source(
            cfg.data.dataset, data_dir=cfg.data.data_dir, train_split=cfg.data.train_split,
            eval_split=cfg.data.eval_split, corrupt_images=cfg.data.corrupt_images)
        _check_data_for_evaluation(cfg, self.source)
        self.task = tasks.task_for(cfg, self.source)  # refuses a --mode it cannot run on this data
        self.knn = self._knn_evaluator()
        self.knn_monitor = None  # set by train(); evaluate() reuses its result of the same step
        self.task.prepare(cfg.train.model_dir)
        self.num_train_examples = self.task.num_train_examples
        self.total_steps = optimizers.total_train_steps(
            self.num_train_examples, cfg.train.train_batch_size, cfg.train.train_epochs,
            cfg.train.train_steps)
        with self.strategy.scope():
            self.model = self._build_model()
        # What config.json records: the architecture actually built (from --checkpoint when fine-tuning).
        self.recorded_cfg = run_record.with_architecture_used(cfg, self.task.model_to_export(self.model))
        with self.strategy.scope():
            schedule = optimizers.WarmUpAndCosineDecay(
                cfg.optim.learning_rate, self.num_train_examples, cfg.train.train_batch_size,
                warmup_epochs=cfg.optim.warmup_epochs, train_epochs=cfg.train.train_epochs,
                train_steps=cfg.train.train_steps,
                learning_rate_scaling=cfg.optim.learning_rate_scaling)
            optimizer = optimizers.build_optimizer(
                cfg.optim.optimizer, schedule, momentum=cfg.optim.momentum,
                weight_decay=cfg.optim.weight_decay,
                exclude_from_weight_decay=self.model.weight_decay_exempt_patterns())
            self.model.compile(optimizer=precision.wrap_optimizer(optimizer, self.precision),
                               jit_compile=cfg.train.jit_compile)
        distribute.prepare_multi_worker_fit(self.model, self.strategy)

    def _knn_evaluator(self):
        """The kNN monitor's evaluator (--knn_eval_epochs), or None."""
        train_cfg, info = self.cfg.train, self.source.info
        if not (self.task.watches_representation and train_cfg.knn_eval_epochs):
            return None
        if info.num_classes < 1:
            logging.warning("%s has no labels: the kNN monitor is off.", self.cfg.data.dataset)
            return None
        return knn.KnnEvaluator(
            self.strategy, self.source, self.cfg.data, self.cfg.data.train_split, self.cfg.data.eval_split,
            bank_size=train_cfg.knn_bank_size or None, batch_size=train_cfg.eval_batch_size,
            k=train_cfg.knn_k, temperature=train_cfg.knn_temperature,
            query_batches=train_cfg.eval_steps or None)

    def _build_model(self):
        """The task's model; when model_dir already has checkpoints of a fine-tuning or distillation run,
        the model they belong to (from model_config.json), without reloading --checkpoint."""
        cfg = self.cfg
        config_file = run_dir.model_config_path(cfg.train.model_dir)
        resuming = checkpoints.latest_checkpoint(cfg.train.model_dir) and os.path.isfile(config_file)
        if resuming and self.task.resume_rebuilds_recorded_model:
            model, _ = pretrained.model_from_config_file(config_file)
            return model
        model = self.task.build_model()
        model(tf.zeros([1, cfg.data.image_size, cfg.data.image_size, 3]), training=False)
        return model

    @property
    def global_step(self):
        return int(self.model.optimizer.iterations.numpy())


def _check_data_for_evaluation(cfg, source):
    """Before any training: an eval split that would be empty is refused, and a labelled run on a
    single class is warned about (its accuracy is 100% whatever the model learns)."""
    evaluates = cfg.train.mode in ("eval", "train_then_eval")
    if evaluates and source.num_examples(cfg.data.eval_split) == 0:
        raise config_lib.ConfigError(
            f"--eval_split={cfg.data.eval_split} of {cfg.data.dataset} has no examples, so there would be "
            "nothing to evaluate after training. Pass --eval_split with a split that has examples (for an "
            "image folder: put evaluation images in a test/ folder beside train/ and pass "
            "--eval_split=test, or add images: about 10% of them, chosen by path, are held out as "
            "'validation'), or use --mode=train.")
    if tasks.task_class(cfg).uses_labels(cfg) and source.info.num_classes == 1:
        logging.warning(
            "%s has a single class: every prediction is that class, so top-1 and top-5 accuracy are "
            "100%% whatever the model learns. For an accuracy that means something, use two or more "
            "classes (one subfolder per class in an image folder).", cfg.data.dataset)


def _architecture_mismatch(path, part):
    return config_lib.ConfigError(
        f"The {part} of --checkpoint={path} does not match this run's architecture; set the "
        "model flags (--resnet_depth, --width_multiplier, --sk_ratio, --se_ratio, --proj_head_mode, "
        "--num_proj_layers, --proj_out_dim) to those of the checkpoint.")


def _start_pretraining_from(model, path):
    """--checkpoint for pretraining: our checkpoint resumes weights and optimizer state; any other format
    (a .keras file, an export, a reference checkpoint) gives the encoder and projection head weights."""
    if path.endswith(run_dir.CHECKPOINT_SUFFIX):
        try:
            checkpoints.restore(model, path)
        except checkpoints.DamagedCheckpointError:
            raise
        except config_lib.ConfigError as error:
            if "does not fit this run's model" not in str(error):
                raise
            raise _architecture_mismatch(path, "model") from None
        return
    source = pretrained.load_trained_model(path)
    for part in ("encoder", "projection_head"):
        mine, theirs = getattr(model, part), getattr(source, part)
        shapes = [tuple(w.shape) for w in mine.weights], [tuple(w.shape) for w in theirs.weights]
        if shapes[0] != shapes[1]:
            raise _architecture_mismatch(path, part)
        mine.set_weights(theirs.get_weights())
    logging.info("Initialized the encoder and projection head from %s.", path)


def train(ctx: RunContext):
    """Trains to `total_steps`, resuming from the newest checkpoint in model_dir; exports at the end
    (unless --keep_hub_module_max=0). Returns the export's path, or None."""
    cfg = ctx.cfg
    model_dir = cfg.train.model_dir
    with ctx.strategy.scope():
        # The newest checkpoint that loads; a damaged one is set aside (renamed, never deleted) on the chief.
        latest = checkpoints.restore_latest(ctx.model, model_dir, set_aside=ctx.chief)
        if not latest and cfg.train.checkpoint and ctx.task.checkpoint_sets_initial_weights:
            _start_pretraining_from(ctx.model, cfg.train.checkpoint)
    # Workers that resumed from different steps would train out of step: stop before the first collective.
    distribute.check_workers_agree(ctx.strategy, ctx.global_step, "the step to resume from")
    if ctx.chief:
        pretrained.write_model_config(ctx.model, model_dir, cfg.data.image_size)
    interval = config_lib.steps_per_checkpoint(cfg.train, ctx.num_train_examples)
    start = ctx.global_step
    if start >= ctx.total_steps:
        logging.info("Already trained %d of %d steps; nothing to do.", start, ctx.total_steps)
        if ctx.chief and run_record.read(model_dir) is None:
            run_record.write(ctx.recorded_cfg)
    else:
        logging.info("%s steps %d..%d, checkpoint every %d steps.", ctx.task.progress_name, start,
                     ctx.total_steps, interval)
        if ctx.chief:  # Reported before any step is spent: unwritable model_dir, not enough space.
            checkpoints.check_writable(model_dir, checkpoints.needed_bytes(
                ctx.model, model_dir, cfg.train.keep_checkpoint_max))
            # Only now: a refused invocation leaves the record as it was.
            run_record.write(run_record.for_resume(ctx.recorded_cfg, model_dir) if latest
                             else ctx.recorded_cfg)
        callbacks = [
            StopOnNonFiniteLoss(model_dir),  # First: nothing else may see, or save, a diverged step.
            checkpoints.StopAtStep(ctx.total_steps),
            checkpoints.PeriodicCheckpoint(model_dir, cfg.train.keep_checkpoint_max, chief=ctx.chief),
            interrupts.StopOnSignal(),  # After the checkpoint: a step due for one is saved first.
        ]
        if cfg.train.verbose:  # The run's own steps; Keras's progress would count checkpoint intervals.
            callbacks.append(progress.TrainingProgress(
                ctx.total_steps, start, every_steps=cfg.train.log_every_steps,
                every_secs=cfg.train.log_every_secs, bar=None if cfg.train.verbose == 1 else False))
        if ctx.knn is not None:  # Every worker: the features are gathered with collectives.
            ctx.knn_monitor = knn.KnnMonitor(
                ctx.knn, knn.steps_between(cfg.train.knn_eval_epochs, ctx.num_train_examples,
                                           cfg.train.train_batch_size),
                ctx.total_steps, log_dir=model_dir if ctx.chief else None)
            callbacks.append(ctx.knn_monitor)
        if ctx.chief:
            callbacks.append(keras.callbacks.TensorBoard(
                log_dir=model_dir, update_freq=cfg.train.train_summary_steps or "epoch"))
        views = ctx.task.augmented_views(NUM_SUMMARY_VIEWS) if ctx.chief else None
        if views is not None:
            callbacks.append(AugmentedViewsSummary(model_dir, views))
        try:
            with interrupts.steps_finish_before_stopping():
                ctx.model.fit(ctx.task.train_dataset(ctx.strategy),
                              epochs=math.ceil(ctx.total_steps / interval), initial_epoch=start // interval,
                              steps_per_epoch=interval, callbacks=callbacks, verbose=0,
                              shuffle=False)  # the dataset shuffles itself
        except KeyboardInterrupt:
            saved = checkpoints.save_on_interrupt(ctx.model, model_dir, cfg.train.keep_checkpoint_max,
                                                  chief=ctx.chief)
            latest = checkpoints.latest_checkpoint(model_dir)
            logging.warning("Interrupted at step %d%s; the newest checkpoint is %s.", ctx.global_step,
                            f", saved as {saved}" if saved else "", latest[1] if latest else "none")
            raise
    if ctx.chief and cfg.train.projector_examples and ctx.task.watches_representation:
        _export_projector(ctx)
    if not ctx.chief or cfg.train.keep_hub_module_max == 0:
        return None
    return export_lib.export_run(ctx.task.model_to_export(ctx.model), model_dir, ctx.global_step,
                                 cfg.data.image_size, cfg.train.keep_hub_module_max)


def _export_projector(ctx: RunContext):
    """The TensorBoard Projector files of the eval split's first --projector_examples images."""
    cfg = ctx.cfg
    count = cfg.train.projector_examples
    if cfg.train.eval_steps:
        count = min(count, cfg.train.eval_steps * cfg.train.eval_batch_size)
    dataset = pipelines.build_eval_dataset(ctx.source, cfg.data.eval_split, cfg.data,
                                           cfg.train.eval_batch_size, max_examples=count)
    path = projector.export_projector(ctx.model.encoder, dataset, run_dir.train_summaries_dir(cfg.train.model_dir),
                                      count, ctx.source.class_names)
    logging.info("Projector: %d %s embeddings in %s (tensorboard --logdir=%s, tab Projector).", count,
                 cfg.data.eval_split, path, cfg.train.model_dir)


def _knn_results(ctx: RunContext):
    """kNN top-1/top-5 of the trained encoder (the monitor's, if it ran at this step) and, with
    --random_encoder_baseline, of a randomly initialized encoder and of raw pixels."""
    cfg = ctx.cfg
    monitor = ctx.knn_monitor
    if monitor is not None and monitor.last is not None and monitor.last[0] == ctx.global_step:
        trained = monitor.last[1]
    else:
        result = ctx.knn(ctx.model.encoder)
        trained = {"knn_top_1": result["top_1"], "knn_top_5": result["top_5"]}
    results = dict(trained)
    if cfg.train.random_encoder_baseline:
        with ctx.strategy.scope():
            random_encoder = _random_model(ctx).encoder
        for name, encoder in (("random_encoder", random_encoder), ("raw_pixels", None)):
            baseline = ctx.knn(encoder)
            results.update({f"{name}_knn_top_1": baseline["top_1"],
                            f"{name}_knn_top_5": baseline["top_5"]})
    return results


def _random_model(ctx: RunContext):
    """A freshly initialized model of the run's architecture (seeded from --seed), for baselines."""
    cfg = ctx.cfg
    seed = 0 if cfg.train.seed is None else cfg.train.seed + 1
    return build_simclr_model(
        cfg.model, cfg.data.image_size, num_classes=0, temperature=cfg.train.temperature,
        hidden_norm=cfg.train.hidden_norm, weight_decay=0.0, optimizer_name=cfg.optim.optimizer,
        seed=seed)


def evaluate(ctx: RunContext, checkpoint=None):
    """Evaluates on eval_split (the online probe when pretraining, the classifier otherwise); writes and
    returns result.json's content."""
    cfg = ctx.cfg
    with ctx.strategy.scope():
        if checkpoint is None:
            latest = checkpoints.restore_latest(ctx.model, cfg.train.model_dir)  # skips damaged ones
            if latest is None:
                raise FileNotFoundError(
                    f"No checkpoint (ckpt-*.weights.h5) in {cfg.train.model_dir} to evaluate. Train first "
                    "(--mode=train or train_then_eval) or point --model_dir at a trained run.")
            checkpoint = latest[1]
        else:
            checkpoints.restore(ctx.model, checkpoint)
    num_eval = ctx.source.info.num_examples[cfg.data.eval_split]
    dataset = pipelines.distributed(
        ctx.strategy, pipelines.build_eval_dataset, cfg.train.eval_batch_size,
        source=ctx.source, split=cfg.data.eval_split, data=cfg.data)
    steps = cfg.train.eval_steps or None
    metrics = ctx.model.evaluate(dataset, steps=steps, return_dict=True, verbose=0)
    result = {name: float(value) for name, value in metrics.items()}
    result.update(global_step=ctx.global_step, checkpoint=checkpoint, eval_split=cfg.data.eval_split,
                  num_eval_examples=num_eval if steps is None else steps * cfg.train.eval_batch_size)
    if cfg.train.random_encoder_baseline and ctx.task.watches_representation:  # config.validate: pretraining
        result.update(_offline_probes(ctx))
    if ctx.knn is not None:
        result.update(_knn_results(ctx))
    if ctx.chief:
        atomic.write_json(run_dir.result_path(cfg.train.model_dir, cfg.train.eval_name), result, indent=2,
                          sort_keys=True)
    logging.info("Evaluation at step %d: %s", ctx.global_step, result)
    return result


def watch_and_evaluate(ctx: RunContext):
    """--mode=eval: evaluates the newest checkpoint, then (with --eval_wait_secs) each newer one as it
    appears, until one reaches the last training step or none arrives for --eval_wait_secs seconds."""
    cfg = ctx.cfg
    result = evaluate(ctx)
    last_arrival = time.time()
    while result["global_step"] < ctx.total_steps and cfg.train.eval_wait_secs > 0:
        latest = checkpoints.latest_checkpoint(cfg.train.model_dir)
        if latest and latest[0] > result["global_step"]:
            result = evaluate(ctx, latest[1])
            last_arrival = time.time()
        elif time.time() - last_arrival > cfg.train.eval_wait_secs:
            logging.warning("No new checkpoint in %s for %d s (newest: step %d of %d); stopping.",
                            cfg.train.model_dir, cfg.train.eval_wait_secs, result["global_step"],
                            ctx.total_steps)
            break
        else:
            time.sleep(min(EVAL_POLL_SECS, cfg.train.eval_wait_secs))
    return result


def _offline_probes(ctx: RunContext):
    """Linear probes on frozen features of the trained encoder and of a freshly initialized one."""
    cfg = ctx.cfg
    datasets = [pipelines.build_eval_dataset(ctx.source, split, cfg.data, cfg.train.eval_batch_size)
                for split in (cfg.data.train_split, cfg.data.eval_split)]
    num_classes = ctx.source.info.num_classes
    random_model = _random_model(ctx)
    trained = linear_probe.probe_encoder(ctx.model.encoder, *datasets, num_classes)
    untrained = linear_probe.probe_encoder(random_model.encoder, *datasets, num_classes)
    return {"offline_probe_top_1": trained["top_1"], "offline_probe_top_5": trained["top_5"],
            "random_encoder_probe_top_1": untrained["top_1"],
            "random_encoder_probe_top_5": untrained["top_5"]}


def run(cfg: config_lib.Config):
    """Runs `cfg.train.mode`; returns the evaluation, export or conversion result when there is one.

    Example:
      Two pretraining steps of a tiny model on the built-in shapes (generated, no download), then the
      linear probe's evaluation on one test batch:

      >>> import tempfile
      >>> from simclr_tf.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig
      >>> model_dir = tempfile.mkdtemp()
      >>> cfg = Config(
      ...     data=DataConfig(dataset="builtin_shapes", eval_split="test", image_size=16, seed=0),
      ...     model=ModelConfig(resnet_depth=18, width_multiplier=0.125, num_proj_layers=2, proj_out_dim=16),
      ...     optim=OptimConfig(optimizer="momentum", learning_rate=0.1),
      ...     train=TrainConfig(mode="train_then_eval", model_dir=model_dir, train_batch_size=8,
      ...                       train_steps=2, checkpoint_steps=1, eval_batch_size=8, eval_steps=1,
      ...                       verbose=0, seed=0))
      >>> result = run(cfg)
      >>> result["global_step"], result["num_eval_examples"]
      (2, 8)
      >>> 0.0 <= result["top_1_accuracy"] <= result["top_5_accuracy"] <= 1.0
      True
      >>> sorted(os.listdir(model_dir))  # train/ holds the TensorBoard logs, saved_model/ the export
      ['ckpt-00000001.weights.h5', 'ckpt-00000002.weights.h5', 'config.json', 'model_config.json',
       'result.json', 'saved_model', 'train']
      >>> os.listdir(os.path.join(model_dir, "saved_model"))
      ['2']
    """
    config_lib.validate(cfg)
    checkpoints.check_writable(cfg.train.model_dir)  # Creates it; a clear error if it cannot be written.
    if cfg.train.mode in persistence_modes.MODES:  # convert, export: no training, only the run directory
        return persistence_modes.run(cfg)
    run_record.check_resume_flags(cfg)  # Before any work: flags that contradict the run in model_dir.
    ctx = RunContext(cfg)
    try:
        if cfg.train.mode in ("train", "train_then_eval"):
            train(ctx)
        if cfg.train.mode == "eval":
            return watch_and_evaluate(ctx)
        if cfg.train.mode == "train_then_eval":
            return evaluate(ctx)
        return None
    finally:
        ctx.release()
