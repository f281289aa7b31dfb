"""Each --train_mode's task: the one place that chooses it, and what it says about the run it trains."""
import numpy as np
import pytest
import tensorflow as tf

from simclr_tf import config as config_lib
from simclr_tf import tasks
from simclr_tf.data import sources

NUM_CLASSES = 10  # builtin_shapes


@pytest.fixture(scope="module")
def shapes():
    return sources.get_source("builtin_shapes", builtin_num_examples={"train": 12, "test": 4})


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory):
    """A flat folder of images: no class subfolders, so no labels."""
    folder = tmp_path_factory.mktemp("flat")
    for index in range(4):
        tf.io.write_file(str(folder / f"{index}.png"), tf.io.encode_png(np.full((8, 8, 3), index, np.uint8)))
    return sources.get_source(str(folder), eval_split=None)


def make_cfg(train_mode="pretrain", mode="train", lineareval_while_pretraining=True):
    return config_lib.Config(
        data=config_lib.DataConfig(dataset="builtin_shapes", image_size=16),
        train=config_lib.TrainConfig(mode=mode, train_mode=train_mode,
                                     lineareval_while_pretraining=lineareval_while_pretraining))


def test_every_train_mode_has_its_task():
    assert sorted(tasks.TASKS) == sorted(config_lib.TRAIN_MODES)
    expected = {"pretrain": tasks.PretrainTask, "finetune": tasks.FinetuneTask, "distill": tasks.DistillTask}
    for train_mode, task_type in expected.items():
        assert tasks.task_class(make_cfg(train_mode)) is task_type


def test_task_for_builds_the_task_of_the_train_mode(shapes):
    for train_mode, task_type in tasks.TASKS.items():
        task = tasks.task_for(make_cfg(train_mode), shapes)
        assert type(task) is task_type
        assert task.num_train_examples == 12


def test_what_each_task_says_about_its_run():
    said = {name: (task.progress_name, task.evaluation_name, task.watches_representation,
                   task.checkpoint_sets_initial_weights, task.resume_rebuilds_recorded_model)
            for name, task in tasks.TASKS.items()}
    assert said == {"pretrain": ("Pretraining", "Linear probe", True, True, False),
                    "finetune": ("Fine-tuning", "Classifier", False, False, True),
                    "distill": ("Distilling", "Classifier", False, False, True)}


def test_pretraining_uses_labels_only_for_its_online_probe():
    assert tasks.PretrainTask.uses_labels(make_cfg(lineareval_while_pretraining=True))
    assert not tasks.PretrainTask.uses_labels(make_cfg(lineareval_while_pretraining=False))
    for train_mode in ("finetune", "distill"):
        cfg = make_cfg(train_mode, lineareval_while_pretraining=False)
        assert tasks.task_class(cfg).uses_labels(cfg)


def test_the_online_probe_needs_labels_and_the_flag(shapes, unlabelled, caplog):
    assert tasks.task_for(make_cfg(), shapes).probe
    assert not tasks.task_for(make_cfg(lineareval_while_pretraining=False), shapes).probe
    with caplog.at_level("WARNING"):
        task = tasks.task_for(make_cfg(), unlabelled)
    assert not task.probe and "has no labels: the online linear probe is off" in caplog.text
    assert not tasks.task_for(make_cfg("finetune"), shapes).probe


def test_pretraining_refuses_an_evaluation_without_a_probe(shapes, unlabelled):
    with pytest.raises(config_lib.ConfigError, match="--mode=train_then_eval reports the linear probe's "
                                                     "accuracy, but --lineareval_while_pretraining is off"):
        tasks.task_for(make_cfg(mode="train_then_eval", lineareval_while_pretraining=False), shapes)
    with pytest.raises(config_lib.ConfigError, match="--mode=eval reports .* has no labels"):
        tasks.task_for(make_cfg(mode="eval"), unlabelled)


def test_a_classifier_task_refuses_unlabelled_data(unlabelled):
    for train_mode in ("finetune", "distill"):
        with pytest.raises(config_lib.ConfigError, match=f"--train_mode={train_mode} trains a classifier, but "):
            tasks.task_for(make_cfg(train_mode), unlabelled)


def test_only_pretraining_shows_augmented_view_pairs(shapes):
    first, second = tasks.task_for(make_cfg(), shapes).augmented_views(3)
    assert first.shape == second.shape == (3, 16, 16, 3)
    assert not np.array_equal(first.numpy(), second.numpy())  # two different augmentations
    assert tasks.task_for(make_cfg("finetune"), shapes).augmented_views(3) is None

