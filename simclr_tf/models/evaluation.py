"""The classification metrics every model reports in `evaluate()`: loss, top-1 and top-5 accuracy."""
import keras

from simclr_tf import losses


def classification_metrics(num_classes):
    """Fresh `{name: metric}` for `num_classes` classes (top-5 becomes top-k with fewer than 5 classes)."""
    return {
        "supervised_loss": keras.metrics.Mean(name="supervised_loss"),
        "top_1_accuracy": keras.metrics.SparseCategoricalAccuracy(name="top_1_accuracy"),
        "top_5_accuracy": keras.metrics.SparseTopKCategoricalAccuracy(k=min(5, num_classes),
                                                                       name="top_5_accuracy"),
    }


def update_classification_metrics(metrics, labels, logits):
    """Adds a batch of integer `labels` and `logits` to the metrics of `classification_metrics`."""
    metrics["supervised_loss"].update_state(losses.supervised_loss(labels, logits))
    metrics["top_1_accuracy"].update_state(labels, logits)
    metrics["top_5_accuracy"].update_state(labels, logits)
