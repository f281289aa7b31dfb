"""Distillation (SimCLR v2 step 3): a student classifier learns a fine-tuned teacher's predictions.

The teacher sees the same augmented images as the student, in inference mode, and is never trained.
The loss is the cross-entropy between the teacher's and the student's temperature-scaled softmax,
    L = (1 - a) * mean_x[ -sum_y P_T(y | x; t) log P_S(y | x; t) ] + a * CE(labels, student logits),
with `a = label_weight` and the labelled term over the examples whose label is known (label >= 0).
"""
import keras
import tensorflow as tf

from simclr_tf.models.evaluation import classification_metrics, update_classification_metrics
from simclr_tf.models.training_step import TrainingModel


def distillation_loss(teacher_logits, student_logits, temperature):
    """Mean over the batch of the cross-entropy from the teacher's to the student's softened softmax."""
    teacher_probs = tf.nn.softmax(tf.cast(teacher_logits, tf.float32) / temperature)
    student_log_probs = tf.nn.log_softmax(tf.cast(student_logits, tf.float32) / temperature)
    return tf.reduce_mean(-tf.reduce_sum(teacher_probs * student_log_probs, axis=-1))


def labelled_loss(labels, logits):
    """Cross-entropy averaged over the examples with a label (label >= 0); 0 when there are none."""
    known = labels >= 0
    per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.where(known, labels, tf.zeros_like(labels)), logits=tf.cast(logits, tf.float32))
    weights = tf.cast(known, tf.float32)
    return tf.math.divide_no_nan(tf.reduce_sum(per_example * weights), tf.reduce_sum(weights))


def _agreement(teacher_logits, student_logits):
    return tf.reduce_mean(tf.cast(
        tf.equal(tf.argmax(teacher_logits, -1), tf.argmax(student_logits, -1)), tf.float32))


@keras.saving.register_keras_serializable(package="simclr_tf")
class DistillationModel(TrainingModel):
    """Trains `student` (a `SimCLRClassifier`) on the predictions of a frozen `teacher`.

    Args:
      student: the classifier being trained; its `call` returns a dict with `logits_sup`.
      teacher: any model whose `call` returns a dict with `logits_sup` over the same classes (a
        fine-tuned `SimCLRClassifier`, or a `SimCLRModel` with a supervised head).
      temperature: of both softmaxes.
      label_weight: weight of the cross-entropy on known labels; the distillation term gets 1 - it.
      grad_accum_steps: split each replica's batch into this many micro-batches, run one after the other
        (teacher included), and apply the mean of their gradients in one step. The labelled term is then
        the mean over micro-batches of each one's mean over its known labels.

    `evaluate` reports the student's top-1/top-5 on labelled data and its agreement with the teacher.
    The training step is `TrainingModel`'s (models/training_step.py); this class states the loss.

    Example:
      >>> from simclr_tf.models.classifier import SimCLRClassifier
      >>> from simclr_tf.models.heads import ProjectionHead
      >>> from simclr_tf.models.resnet import ResNet
      >>> def classifier(width_multiplier):
      ...     encoder = ResNet(depth=18, width_multiplier=width_multiplier, cifar_stem=True)
      ...     head = ProjectionHead(num_layers=2, out_dim=8).truncated(0)
      ...     model = SimCLRClassifier(encoder, head, num_classes=10)
      ...     model(tf.zeros([1, 16, 16, 3]))  # builds the weights
      ...     return model
      >>> teacher, student = classifier(0.25), classifier(0.125)  # the student is the narrower one
      >>> distiller = DistillationModel(student, teacher, temperature=1.0, label_weight=0.5)
      >>> distiller.compile(optimizer=keras.optimizers.SGD(0.1))
      >>> images = tf.random.uniform([4, 16, 16, 3], seed=0)
      >>> labels = tf.constant([0, 3, -1, -1])  # -1: unlabelled, only the teacher's term applies
      >>> logs = distiller.train_on_batch(images, labels, return_dict=True)
      >>> sorted(logs)
      ['distill_loss', 'learning_rate', 'loss', 'supervised_loss', 'teacher_agreement', 'weight_decay']
      >>> len(distiller.trainable_variables) == len(student.trainable_variables)  # the teacher is frozen
      True
    """

    def __init__(self, student, teacher, temperature=1.0, label_weight=0.0, grad_accum_steps=1, **kwargs):
        super().__init__(**kwargs)
        self.student = student
        self.teacher = teacher
        self.teacher.trainable = False
        self.temperature = temperature
        self.label_weight = label_weight
        self.grad_accum_steps = grad_accum_steps
        eval_metrics = classification_metrics(student.num_classes)
        eval_metrics["teacher_agreement"] = keras.metrics.Mean(name="teacher_agreement")
        self.track_metrics(("loss", "distill_loss", "supervised_loss", "teacher_agreement", "weight_decay"),
                           eval_metrics)
        self.built = student.built and teacher.built  # nothing of its own to build

    def call(self, images, training=False):
        return self.student(images, training=training)

    def loss_and_metrics(self, batch):
        """(the distillation loss, the metric values) of one (micro-)batch `(images, labels)`."""
        images, labels = batch
        teacher_logits = tf.stop_gradient(self.teacher(images, training=False)["logits_sup"])
        student_logits = self.student(images, training=True)["logits_sup"]
        distill = distillation_loss(teacher_logits, student_logits, self.temperature)
        supervised = labelled_loss(labels, student_logits)
        decay = self.weight_decay_loss(self.student.weight_decay, self.student.optimizer_name)
        loss = (1.0 - self.label_weight) * distill + self.label_weight * supervised + decay
        return loss, {"distill_loss": distill, "supervised_loss": supervised,
                      "teacher_agreement": _agreement(teacher_logits, student_logits), "weight_decay": decay}

    def loss_decayed_patterns(self):
        """The student's: its classifier's kernel under LARS."""
        return self.student.loss_decayed_patterns()

    def update_eval_metrics(self, images, labels):
        logits = self.student(images, training=False)["logits_sup"]
        teacher_logits = self.teacher(images, training=False)["logits_sup"]
        update_classification_metrics(self._eval_metrics, labels, logits)
        self._eval_metrics["teacher_agreement"].update_state(_agreement(teacher_logits, logits))

    def get_config(self):
        return {**super().get_config(),
                "student": keras.saving.serialize_keras_object(self.student),
                "teacher": keras.saving.serialize_keras_object(self.teacher),
                "temperature": self.temperature, "label_weight": self.label_weight,
                "grad_accum_steps": self.grad_accum_steps}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["student"] = keras.saving.deserialize_keras_object(config["student"])
        config["teacher"] = keras.saving.deserialize_keras_object(config["teacher"])
        return cls(**config)
