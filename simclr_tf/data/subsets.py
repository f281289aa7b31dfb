"""Labelled subsets for semi-supervised fine-tuning and distillation (--label_fraction, --labels_per_class).

The paper fine-tunes on 1% or 10% of the ImageNet labels. `choose_labelled_subset` draws such a subset from
any labelled split: class-balanced, seeded, and independent of the order in which the examples were listed:

    ids, labels = source.labels_and_ids("train")
    subset = choose_labelled_subset(ids, labels, fraction=0.1, seed=0)
    dataset = pipelines.build_finetune_dataset(source, "train", data, 64, example_ids=subset.ids)

A run keeps its subset in `model_dir/label_subset.json` (`simclr_tf.persistence.label_subset.subset_for_run`
writes it on the first start and reads it on every restart), so a resumed run trains on the same examples and
anyone can see which they were. This module chooses, checks and describes subsets (`to_record`, `from_record`,
`check_reusable`); it reads and writes no file.

Selection rule. Classes are the labels present in the split (unlabelled examples, label -1, are never chosen).
With `per_class=k`, every class gets exactly k examples; a class with fewer than k labelled examples is an
error (a silently unbalanced subset would change the experiment). With `fraction=f`, a class with n labelled
examples gets f * n rounded half up, at least 1. Within a class the ids are sorted, then k of them are drawn
without replacement by `numpy.random.default_rng([seed, class])`, so each class's draw depends only on the
seed, the class and its set of ids.
"""
import dataclasses
import math

import numpy as np

from simclr_tf.config import ConfigError, DataConfig
# The ids of a source's examples: defined beside the source interface, used and re-exported here.
from simclr_tf.data.source_base import (UNLABELED, as_id_array, filter_to_ids, id_membership,  # noqa: F401
                                        unlabel_outside)

_FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class LabelSubset:
    """A chosen labelled subset: its sorted ids and how they were drawn."""
    ids: tuple  # sorted; ints or strings, as the source's ids
    counts_per_class: dict  # class index -> number of chosen examples
    seed: int
    fraction: float | None = None  # set when chosen by fraction ...
    per_class: int | None = None  # ... or by a number of examples per class
    dataset: str = ""  # what the ids refer to, recorded for the resume check
    split: str = ""

    @property
    def settings(self) -> dict:
        """What must match for a restarted run to reuse this subset."""
        return {"dataset": self.dataset, "split": self.split, "fraction": self.fraction,
                "per_class": self.per_class, "seed": self.seed}


def _count_to_draw(num_available, fraction, per_class, label):
    if per_class is not None:
        if num_available < per_class:
            raise ConfigError(
                f"Class {label} has only {num_available} labelled example(s), fewer than "
                f"--labels_per_class={per_class}. Lower --labels_per_class to at most {num_available}, or "
                "use --label_fraction for a proportional subset.")
        return per_class
    return min(num_available, max(1, math.floor(fraction * num_available + 0.5)))


def choose_labelled_subset(ids, labels, fraction: float | None = None, per_class: int | None = None,
                           seed: int = 0, dataset: str = "", split: str = "") -> LabelSubset:
    """Draws a class-balanced subset of the labelled examples; see the module docstring for the rule.

    `ids` and `labels` are parallel sequences (as `ImageSource.labels_and_ids` returns them); exactly one
    of `fraction` (in (0, 1]) and `per_class` (positive) chooses the size. `dataset` and `split` are only
    recorded. The same ids, labels and seed give the same subset in any input order.

    Example:
      >>> subset = choose_labelled_subset(list(range(100)), [i % 4 for i in range(100)], fraction=0.2)
      >>> len(subset.ids), subset.counts_per_class
      (20, {0: 5, 1: 5, 2: 5, 3: 5})
    """
    if (fraction is None) == (per_class is None):
        raise ConfigError("Choose a labelled subset by exactly one of fraction (--label_fraction) or "
                          "per_class (--labels_per_class).")
    if fraction is not None and not 0.0 < fraction <= 1.0:
        raise ConfigError(f"--label_fraction={fraction} must be in (0, 1].")
    if per_class is not None and per_class <= 0:
        raise ConfigError(f"--labels_per_class={per_class} must be positive.")
    ids, labels = as_id_array(ids), np.asarray(labels, np.int64)
    if ids.shape != labels.shape or ids.ndim != 1:
        raise ValueError(f"ids {ids.shape} and labels {labels.shape} must be parallel 1-D sequences.")
    if len(np.unique(ids)) != len(ids):
        raise ConfigError(f"The ids of dataset {dataset!r} split {split!r} are not unique, so a subset of "
                          "them cannot name its examples; use a dataset whose examples have unique ids.")
    order = np.argsort(ids, kind="stable")
    ids, labels = ids[order], labels[order]
    labelled = labels != UNLABELED
    if not labelled.any():
        raise ConfigError(f"Dataset {dataset!r} split {split!r} has no labelled examples to choose from; "
                          "fine-tuning needs labels (use a labelled dataset or class subfolders).")
    chosen, counts = [], {}
    for label in np.unique(labels[labelled]):
        class_ids = ids[labels == label]  # sorted, as ids are
        count = _count_to_draw(len(class_ids), fraction, per_class, int(label))
        rng = np.random.default_rng([seed, int(label)])
        chosen.append(class_ids[rng.choice(len(class_ids), size=count, replace=False)])
        counts[int(label)] = count
    chosen_ids = np.sort(np.concatenate(chosen))
    return LabelSubset(ids=tuple(chosen_ids.tolist()), counts_per_class=counts, seed=seed,
                       fraction=fraction, per_class=per_class, dataset=dataset, split=split)


def _describe(subset: LabelSubset) -> str:
    if subset.per_class is not None:
        rule = f"{subset.per_class} labelled examples per class"
    else:
        rule = f"per class round_half_up({subset.fraction} * labelled examples of the class), at least 1"
    return (f"{rule}, drawn without replacement from the class's sorted ids by "
            f"numpy.random.default_rng([{subset.seed}, class]); unlabelled examples are never chosen.")


def to_record(subset: LabelSubset) -> dict:
    """The subset as a JSON-able dict: its settings, the rule in words, the counts and the ids."""
    return {
        "format_version": _FORMAT_VERSION,
        "dataset": subset.dataset, "split": subset.split,
        "label_fraction": subset.fraction, "labels_per_class": subset.per_class, "seed": int(subset.seed),
        "how_chosen": _describe(subset),
        "num_examples": len(subset.ids),
        "counts_per_class": {str(label): int(count)
                             for label, count in sorted(subset.counts_per_class.items())},
        "ids": as_id_array(subset.ids).tolist(),  # JSON ints or strings
    }


def from_record(record: dict) -> LabelSubset:
    """The subset a `to_record` dict describes; KeyError, TypeError or ValueError when it is malformed.

    Example:
      >>> subset = choose_labelled_subset(list(range(12)), [i % 3 for i in range(12)], per_class=2, seed=3)
      >>> from_record(to_record(subset)) == subset
      True
    """
    return LabelSubset(
        ids=tuple(record["ids"]),
        counts_per_class={int(label): count for label, count in record["counts_per_class"].items()},
        seed=record["seed"], fraction=record["label_fraction"], per_class=record["labels_per_class"],
        dataset=record["dataset"], split=record["split"])


def subset_settings(data: DataConfig, dataset: str, split: str) -> dict | None:
    """The `LabelSubset.settings` the flags ask for, or None when they ask for every label."""
    if data.labels_per_class:
        fraction, per_class = None, data.labels_per_class
    elif data.label_fraction < 1.0:
        fraction, per_class = data.label_fraction, None
    else:
        return None
    return {"dataset": dataset, "split": split, "fraction": fraction, "per_class": per_class,
            "seed": data.seed if data.seed is not None else 0}


def check_reusable(recorded: LabelSubset, wanted: dict | None, where: str):
    """Raises ConfigError unless the `recorded` subset (kept at `where`) has the `wanted` settings, as
    `subset_settings` gives them: a restarted run must train on the subset it started with."""
    if recorded.settings == wanted:
        return
    asked = wanted or "every label (--label_fraction=1, --labels_per_class=0)"
    raise ConfigError(
        f"{where} holds the labelled subset of an earlier run with settings {recorded.settings}, but "
        f"this run asks for {asked}. A run keeps its subset when restarted: use the earlier flags, "
        "or a new --model_dir (or delete the file) to train on a different subset.")


def choose_for_run(source, split: str, wanted: dict) -> LabelSubset:
    """Draws the subset `wanted` (settings as `subset_settings` gives them) from `source`'s `split`."""
    ids, labels = source.labels_and_ids(split)
    return choose_labelled_subset(ids, labels, fraction=wanted["fraction"], per_class=wanted["per_class"],
                                  seed=wanted["seed"], dataset=wanted["dataset"], split=split)
