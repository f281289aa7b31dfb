"""simclr_tf: SimCLR (v1 and v2) contrastive pretraining in Keras 3 on TensorFlow 2.

The public API, for use without the command line:

    import simclr_tf
    model = simclr_tf.SimCLRModel(simclr_tf.ResNet(depth=18, cifar_stem=True),
                                  simclr_tf.ProjectionHead(num_layers=2), num_classes=10)
    # ... after pretraining:
    classifier = simclr_tf.build_classifier(model, num_classes=10, image_size=32, ft_proj_selector=1)
    simclr_tf.export_saved_model(classifier, "/tmp/export", image_size=32)
    outputs = simclr_tf.load_exported("/tmp/export")(images)          # {"final_avg_pool": ..., ...}
    pretrained = simclr_tf.load_trained_model("/path/to/model_dir")   # any checkpoint format we read

or a whole run, as the command line does it: `simclr_tf.run(simclr_tf.Config(...))`.
"""
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")  # simclr_tf runs on TensorFlow (before Keras is imported)

from simclr_tf import deprecated
from simclr_tf.config import (Config, ConfigError, DataConfig, DistributeConfig, ModelConfig,
                              OptimConfig, TrainConfig)
from simclr_tf.data.augment import CenterCropResize, FineTuneAugment, PretrainAugment, two_views
from simclr_tf.data.pipelines import build_eval_dataset, build_finetune_dataset, build_pretrain_dataset
from simclr_tf.data.sources import get_source
from simclr_tf.data.subsets import choose_labelled_subset
from simclr_tf.losses import contrastive_loss
from simclr_tf.models.classifier import SimCLRClassifier, build_classifier
from simclr_tf.models.distill import DistillationModel
from simclr_tf.models.encoders import KerasEncoder, as_encoder
from simclr_tf.models.heads import ProjectionHead, SupervisedHead
from simclr_tf.models.resnet import ResNet
from simclr_tf.models.simclr import SimCLRModel, build_simclr_model
from simclr_tf.optimizers import LARS, WarmUpAndCosineDecay
from simclr_tf.persistence.export import export_run, export_saved_model, keras_layer, load_exported, named_outputs
from simclr_tf.persistence.pretrained import load_trained_model
from simclr_tf.persistence.reference.checkpoints import load_reference_checkpoint
from simclr_tf.train import run

deprecated.install()  # the old paths of modules that moved (simclr_tf.checkpoints, ...) still import, with a warning

__all__ = [
    "CenterCropResize", "Config", "ConfigError", "DataConfig", "DistillationModel", "DistributeConfig",
    "FineTuneAugment", "LARS", "ModelConfig", "OptimConfig", "PretrainAugment", "ProjectionHead", "ResNet",
    "SimCLRClassifier", "SimCLRModel", "SupervisedHead", "TrainConfig", "WarmUpAndCosineDecay",
    "build_classifier", "build_eval_dataset", "build_finetune_dataset", "build_pretrain_dataset",
    "build_simclr_model", "choose_labelled_subset", "contrastive_loss", "export_run", "export_saved_model",
    "get_source", "keras_layer", "load_exported", "load_reference_checkpoint", "load_trained_model",
    "named_outputs", "run", "two_views",
    "KerasEncoder", "as_encoder",  # any Keras encoder
]
