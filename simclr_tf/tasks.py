"""What differs between the train modes: the model trained, its training data and the size of an epoch.

- pretrain: `SimCLRModel` on two augmented views of every image (labels only feed the online probe).
- finetune: `SimCLRClassifier` on the encoder of `--checkpoint` (or a random one: the supervised baseline),
  trained on crop+flip images of the labelled examples, or of a class-balanced subset of them.
- distill: `DistillationModel` whose student learns the predictions of `--teacher_checkpoint` on every
  image; the known labels (of the subset, if one is drawn) can be mixed in.

A task also says what else differs: how the log names the run, what the evaluation measures, whether the
representation is watched (kNN monitor, projector), how `--checkpoint` is used and what a resume rebuilds.
`task_for(cfg, source)` picks the task (the one place that looks at `--train_mode`); `train.py` does the
rest the same way for all of them, asking the task where they differ.
"""
import os

from absl import logging

from simclr_tf.config import Config, ConfigError
from simclr_tf.data import pipelines
from simclr_tf.models.classifier import build_classifier
from simclr_tf.models.distill import DistillationModel
from simclr_tf.models.simclr import build_simclr_model
from simclr_tf.persistence import label_subset
from simclr_tf.persistence import pretrained as pretrained_lib


class Task:
    """Base class: holds the config and source; `model_dir` state is written by `prepare`.

    Constructing a task checks that it can run `--mode` on the source's data (ConfigError otherwise).
    """

    #: How the log names the run: "Pretraining steps 0..100, checkpoint every 10 steps."
    progress_name = ""
    #: What the evaluation's top-1/top-5 accuracy is of, as the command line reports it.
    evaluation_name = ""
    #: Whether the run watches the encoder's features themselves: the kNN monitor (--knn_eval_epochs), the
    #: TensorBoard projector (--projector_examples) and the random-encoder baselines (--random_encoder_baseline).
    #: A classifier is judged by its own accuracy.
    watches_representation = False
    #: Whether --checkpoint gives the starting weights of a model built from the flags, read when model_dir
    #: has no checkpoint yet (pretraining; the classifiers read it while building their model instead).
    checkpoint_sets_initial_weights = False
    #: Whether a run resuming from model_dir's checkpoints rebuilds the model recorded there
    #: (model_config.json), whose architecture came from --checkpoint, instead of building it anew.
    resume_rebuilds_recorded_model = False
    #: Whether the model trains the online linear probe beside its own loss.
    probe = False

    def __init__(self, cfg: Config, source):
        self.cfg = cfg
        self.source = source
        self.num_train_examples = source.num_examples(cfg.data.train_split)

    @classmethod
    def uses_labels(cls, cfg: Config) -> bool:
        """Whether the run trains or evaluates on the labels (its accuracy means something only then)."""
        raise NotImplementedError

    def augmented_views(self, count):
        """A few of the training inputs' view pairs for TensorBoard, or None when there are no pairs."""
        return None

    def prepare(self, model_dir):
        """Called once before the model is built (e.g. to draw and record a labelled subset)."""

    def build_model(self):
        raise NotImplementedError

    def train_dataset(self, strategy):
        raise NotImplementedError

    def model_to_export(self, model):
        return model


class PretrainTask(Task):
    progress_name = "Pretraining"
    evaluation_name = "Linear probe"
    watches_representation = True
    checkpoint_sets_initial_weights = True

    def __init__(self, cfg, source):
        super().__init__(cfg, source)
        wanted = cfg.train.lineareval_while_pretraining
        self.probe = wanted and source.info.num_classes > 0
        if wanted and not self.probe:
            logging.warning("%s has no labels: the online linear probe is off and there is no accuracy "
                            "to report; pretraining runs as usual.", cfg.data.dataset)
        if cfg.train.mode != "train" and not self.probe:
            raise ConfigError(
                f"--mode={cfg.train.mode} reports the linear probe's accuracy, but "
                + ("--lineareval_while_pretraining is off" if source.info.num_classes else
                   f"{cfg.data.dataset} has no labels")
                + ". Use --mode=train, or labelled data with --lineareval_while_pretraining.")

    @classmethod
    def uses_labels(cls, cfg):
        return cfg.train.lineareval_while_pretraining

    def build_model(self):
        cfg = self.cfg
        return build_simclr_model(
            cfg.model, cfg.data.image_size, num_classes=self.source.info.num_classes if self.probe else 0,
            temperature=cfg.train.temperature, hidden_norm=cfg.train.hidden_norm,
            weight_decay=cfg.optim.weight_decay, optimizer_name=cfg.optim.optimizer, seed=cfg.train.seed,
            grad_accum_steps=cfg.train.grad_accum_steps, contrastive_chunks=cfg.train.contrastive_chunks,
            memory_size=cfg.train.memory_size, memory_momentum=cfg.train.memory_momentum)

    def train_dataset(self, strategy):
        cfg = self.cfg
        return pipelines.distributed(
            strategy, pipelines.build_pretrain_dataset, cfg.train.train_batch_size,
            source=self.source, split=cfg.data.train_split, data=cfg.data, seed=cfg.data.seed)

    def augmented_views(self, count):
        return pipelines.sample_views(self.source, self.cfg.data.train_split, self.cfg.data, count)


class _ClassifierTask(Task):
    """Shared by fine-tuning and distillation: the labelled subset and the classifier on an encoder."""

    evaluation_name = "Classifier"
    resume_rebuilds_recorded_model = True
    keep_unlabelled = False

    @classmethod
    def uses_labels(cls, cfg):
        return True

    def __init__(self, cfg, source):
        super().__init__(cfg, source)
        if source.info.num_classes < 1:
            raise ConfigError(
                f"--train_mode={cfg.train.train_mode} trains a classifier, but {cfg.data.dataset} has no "
                "labels. Use a labelled dataset (TFDS, or an image folder with one subfolder per class).")
        self.subset = None

    def prepare(self, model_dir):
        self.subset = label_subset.subset_for_run(self.source, self.cfg.data.train_split, self.cfg.data, model_dir)
        if self.subset is None:
            return
        logging.info("Labelled subset: %d examples (ids in %s).", len(self.subset.ids),
                     os.path.join(model_dir, label_subset.SUBSET_FILE))
        if not self.keep_unlabelled:
            self.num_train_examples = len(self.subset.ids)

    def encoder_source(self):
        """The pretrained model to start from, or None for a randomly initialized encoder."""
        path = self.cfg.train.checkpoint
        if not path:
            return None
        model = pretrained_lib.load_trained_model(path)
        logging.info("Starting from the encoder of %s.", path)
        return model

    def build_classifier(self):
        cfg = self.cfg
        start = self.encoder_source()
        if start is None:
            logging.warning("No --checkpoint: the %s encoder starts from random weights (a supervised "
                            "baseline).", cfg.train.train_mode)
            start = build_simclr_model(
                cfg.model, cfg.data.image_size, num_classes=0, temperature=cfg.train.temperature,
                hidden_norm=cfg.train.hidden_norm, weight_decay=0.0, optimizer_name=cfg.optim.optimizer,
                seed=cfg.train.seed)
        return build_classifier(
            start, self.source.info.num_classes, cfg.data.image_size,
            ft_proj_selector=cfg.model.ft_proj_selector,
            fine_tune_after_block=cfg.model.fine_tune_after_block,
            zero_init_logits_layer=cfg.model.zero_init_logits_layer,
            weight_decay=cfg.optim.weight_decay, optimizer_name=cfg.optim.optimizer,
            grad_accum_steps=cfg.train.grad_accum_steps,
            global_bn=cfg.model.global_bn, bn_momentum=cfg.model.batch_norm_decay)

    def train_dataset(self, strategy):
        cfg = self.cfg
        return pipelines.distributed(
            strategy, pipelines.build_finetune_dataset, cfg.train.train_batch_size,
            source=self.source, split=cfg.data.train_split, data=cfg.data, seed=cfg.data.seed,
            example_ids=None if self.subset is None else self.subset.ids,
            keep_unlabelled=self.keep_unlabelled)


class FinetuneTask(_ClassifierTask):
    progress_name = "Fine-tuning"

    def build_model(self):
        return self.build_classifier()


class DistillTask(_ClassifierTask):
    progress_name = "Distilling"
    keep_unlabelled = True

    def build_model(self):
        cfg = self.cfg
        if not cfg.train.teacher_checkpoint:
            raise ConfigError(f"{cfg.train.model_dir} has no distillation checkpoint to resume or evaluate, "
                              "and no --teacher_checkpoint is given to start one; pass it.")
        teacher = pretrained_lib.load_teacher(cfg.train.teacher_checkpoint, self.source.info.num_classes)
        student = self.build_classifier()
        model = DistillationModel(student, teacher, temperature=cfg.train.distill_temperature,
                                  label_weight=cfg.train.distill_label_weight,
                                  grad_accum_steps=cfg.train.grad_accum_steps)
        return model

    def model_to_export(self, model):
        return model.student


TASKS = {"pretrain": PretrainTask, "finetune": FinetuneTask, "distill": DistillTask}  # by --train_mode


def task_class(cfg: Config) -> type[Task]:
    """The task class of `--train_mode`, for what it says before a run has its data (e.g. `uses_labels`)."""
    return TASKS[cfg.train.train_mode]


def task_for(cfg: Config, source) -> Task:
    """The task of `--train_mode` on `source`; raises ConfigError when it cannot run `--mode` on that data."""
    return task_class(cfg)(cfg, source)
