"""simclr_tf: SimCLR (v1 and v2) contrastive pretraining in Keras 3 on TensorFlow 2.

The public API, for use without the command line:

    import simclr_tf
    model = simclr_tf.SimCLRModel(simclr_tf.ResNet(depth=18, cifar_stem=True),
                                  simclr_tf.ProjectionHead(num_layers=2), num_classes=10)
"""
from simclr_tf.config import (Config, ConfigError, DataConfig, DistributeConfig, ModelConfig,
                              OptimConfig, TrainConfig)
from simclr_tf.data.augment import CenterCropResize, FineTuneAugment, PretrainAugment, two_views
from simclr_tf.data.sources import get_source
from simclr_tf.losses import contrastive_loss
from simclr_tf.models.heads import ProjectionHead, SupervisedHead
from simclr_tf.models.resnet import ResNet
from simclr_tf.models.simclr import SimCLRModel, build_simclr_model
from simclr_tf.optimizers import LARS, WarmUpAndCosineDecay
from simclr_tf.train import run

__all__ = [
    "CenterCropResize", "Config", "ConfigError", "DataConfig", "DistributeConfig", "FineTuneAugment",
    "LARS", "ModelConfig", "OptimConfig", "PretrainAugment", "ProjectionHead", "ResNet", "SimCLRModel",
    "SupervisedHead", "TrainConfig", "WarmUpAndCosineDecay", "build_simclr_model", "contrastive_loss",
    "get_source", "run", "two_views",
]
