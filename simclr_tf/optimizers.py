"""LARS, the warmup + cosine learning-rate schedule, and choosing an optimizer by name.

Which variables skip weight decay is the models' to say (`TrainingModel.weight_decay_exempt_patterns`, see
simclr_tf/models/weight_decay.py); the optimizers take that list and know no layer names.
"""
import math
import warnings

import keras
import tensorflow as tf
from keras import ops

from simclr_tf.config import ConfigError
from simclr_tf.models import weight_decay as _weight_decay

# What the package's models declare (`TrainingModel.weight_decay_exempt_patterns()` with a supervised head):
# kept for code that builds LARS without a model at hand. Prefer the model's own declaration.
NORMALIZATION_PATTERNS = _weight_decay.NORMALIZATION_PATTERNS
DEFAULT_LARS_EXCLUDE = _weight_decay.exempt_patterns(_weight_decay.SUPERVISED_HEAD_PATTERNS)

_variable_path = _weight_decay.variable_path
_matches_any = _weight_decay.matches_any


@keras.saving.register_keras_serializable(package="simclr_tf")
class LARS(keras.optimizers.Optimizer):
    """Layer-wise Adaptive Rate Scaling (You et al. 2017) with momentum, as used by SimCLR.

    Weight decay is L2 weight decay added to the gradient before the trust ratio is computed,
    not Keras's decoupled `weight_decay`. Variables whose path (`variable.path`) matches any regex
    of `exclude_from_weight_decay` (for a model of this package: `model.weight_decay_exempt_patterns()`)
    get no weight decay; those matching `exclude_from_layer_adaptation` (by default the same list) get a
    trust ratio of 1.

    With `classic_momentum=True` the learning rate and trust ratio scale the gradient before it
    enters the momentum buffer; otherwise they scale the momentum update.

    Example:
      >>> optimizer = LARS(1.0, weight_decay=1e-6, exclude_from_weight_decay=["bias"])
      >>> kernel = keras.Variable([3.0, 4.0], name="kernel")
      >>> bias = keras.Variable([0.5], name="bias")
      >>> _ = optimizer.apply_gradients([(tf.constant([300.0, 0.0]), kernel), (tf.constant([0.1]), bias)])

      The kernel moves by learning_rate * eeta * ||kernel|| = 1.0 * 0.001 * 5, whatever the size of its
      gradient; the excluded bias takes a plain momentum-SGD step of learning_rate * gradient:

      >>> kernel.numpy().round(4), bias.numpy().round(4)
      (array([2.995, 4.   ], dtype=float32), array([0.4], dtype=float32))
    """

    def __init__(
        self,
        learning_rate,
        momentum=0.9,
        use_nesterov=False,
        weight_decay=0.0,
        exclude_from_weight_decay=None,
        exclude_from_layer_adaptation=None,
        classic_momentum=True,
        eeta=0.001,
        name="LARS",
        **kwargs,
    ):
        # The base class's weight_decay is decoupled; LARS applies its own inside update_step.
        super().__init__(learning_rate=learning_rate, weight_decay=None, name=name, **kwargs)
        if momentum < 0:
            raise ValueError(f"`momentum` must be >= 0, got {momentum}.")
        self.momentum = float(momentum)
        self.use_nesterov = bool(use_nesterov)
        self.weight_decay = float(weight_decay or 0.0)
        self.exclude_from_weight_decay = _optional_list(exclude_from_weight_decay)
        self.exclude_from_layer_adaptation = _optional_list(exclude_from_layer_adaptation)
        self.classic_momentum = bool(classic_momentum)
        self.eeta = float(eeta)

    def build(self, variables):
        """Creates one momentum slot per variable and decides its decay/adaptation by path."""
        if self.built:
            return
        super().build(variables)
        self.momentums = self.add_optimizer_variables(variables, "momentum")
        adaptation_excludes = self.exclude_from_layer_adaptation
        if adaptation_excludes is None:
            adaptation_excludes = self.exclude_from_weight_decay
        paths = [_variable_path(v) for v in variables]
        self._decays_weight = [
            bool(self.weight_decay) and not _matches_any(self.exclude_from_weight_decay, path)
            for path in paths
        ]
        self._adapts_rate = [not _matches_any(adaptation_excludes, path) for path in paths]

    def _apply_weight_decay(self, variables):
        """Disables Keras's decoupled weight decay: LARS decays inside `update_step`."""
        return

    def _trust_ratio(self, weights, direction):
        """eeta * ||w|| / ||direction||, or 1 when either norm is zero."""
        weight_norm = ops.sqrt(ops.sum(ops.square(weights)))
        direction_norm = ops.sqrt(ops.sum(ops.square(direction)))
        safe_norm = ops.where(direction_norm > 0, direction_norm, 1.0)
        ratio = self.eeta * weight_norm / safe_norm
        return ops.where(ops.logical_and(weight_norm > 0, direction_norm > 0), ratio, 1.0)

    def update_step(self, gradient, variable, learning_rate):
        """Applies one LARS step to `variable`."""
        index = self._get_variable_index(variable)
        dtype = variable.dtype
        learning_rate = ops.cast(learning_rate, dtype)
        gradient = ops.cast(gradient, dtype)
        weights = ops.convert_to_tensor(variable)
        velocity = self.momentums[index]
        momentum = ops.cast(self.momentum, dtype)

        if self._decays_weight[index]:
            gradient = gradient + ops.cast(self.weight_decay, dtype) * weights

        if self.classic_momentum:
            trust = self._trust_ratio(weights, gradient) if self._adapts_rate[index] else 1.0
            scaled_gradient = learning_rate * ops.cast(trust, dtype) * gradient
            next_velocity = momentum * velocity + scaled_gradient
            if self.use_nesterov:
                update = momentum * next_velocity + scaled_gradient
            else:
                update = next_velocity
        else:
            next_velocity = momentum * velocity + gradient
            if self.use_nesterov:
                update = momentum * next_velocity + gradient
            else:
                update = next_velocity
            trust = self._trust_ratio(weights, update) if self._adapts_rate[index] else 1.0
            update = learning_rate * ops.cast(trust, dtype) * update

        self.assign(velocity, next_velocity)
        self.assign_sub(variable, update)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "momentum": self.momentum,
                "use_nesterov": self.use_nesterov,
                "weight_decay": self.weight_decay,
                "exclude_from_weight_decay": _optional_list(self.exclude_from_weight_decay),
                "exclude_from_layer_adaptation": _optional_list(
                    self.exclude_from_layer_adaptation
                ),
                "classic_momentum": self.classic_momentum,
                "eeta": self.eeta,
            }
        )
        return config


def _optional_list(values):
    return None if values is None else [str(v) for v in values]


def total_train_steps(num_examples, train_batch_size, train_epochs, train_steps=0):
    """`train_steps` if set, else `num_examples * train_epochs // train_batch_size + 1`."""
    return int(train_steps or (num_examples * train_epochs // train_batch_size + 1))


def warmup_steps(num_examples, train_batch_size, warmup_epochs):
    """Number of linear-warmup steps: `round(warmup_epochs * num_examples // train_batch_size)`."""
    return int(round(warmup_epochs * num_examples // train_batch_size))


def scaled_learning_rate(base_learning_rate, train_batch_size, learning_rate_scaling="linear"):
    """Peak learning rate: `base * B / 256` (linear) or `base * sqrt(B)` (sqrt)."""
    if learning_rate_scaling == "linear":
        return base_learning_rate * train_batch_size / 256.0
    if learning_rate_scaling == "sqrt":
        return base_learning_rate * math.sqrt(train_batch_size)
    raise ValueError(
        f"Unknown learning_rate_scaling {learning_rate_scaling!r}; use 'linear' or 'sqrt'."
    )


@keras.saving.register_keras_serializable(package="simclr_tf")
class WarmUpAndCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0 to the scaled learning rate, then cosine decay to 0.

    The peak is `base_learning_rate` scaled by the batch size (`learning_rate_scaling`); the decay
    ends at `total_train_steps(...)`, after which the rate stays 0.

    Example:
      >>> schedule = WarmUpAndCosineDecay(0.3, num_examples=1000, train_batch_size=256, warmup_epochs=1,
      ...                                 train_epochs=10)
      >>> schedule.peak_learning_rate, schedule.warmup_steps, schedule.total_steps
      (0.3, 3, 40)
      >>> [round(float(schedule(step)), 4) for step in (0, 1, 2, 3, 20, 40, 50)]
      [0.0, 0.1, 0.2, 0.3, 0.1691, 0.0, 0.0]
      >>> optimizer = LARS(schedule)  # an optimizer reads the rate of its current step
    """

    def __init__(
        self,
        base_learning_rate,
        num_examples,
        train_batch_size,
        warmup_epochs=10,
        train_epochs=100,
        train_steps=0,
        learning_rate_scaling="linear",
    ):
        super().__init__()
        self.base_learning_rate = base_learning_rate
        self.num_examples = num_examples
        self.train_batch_size = train_batch_size
        self.warmup_epochs = warmup_epochs
        self.train_epochs = train_epochs
        self.train_steps = train_steps
        self.learning_rate_scaling = learning_rate_scaling
        self.peak_learning_rate = scaled_learning_rate(
            base_learning_rate, train_batch_size, learning_rate_scaling
        )
        self.warmup_steps = warmup_steps(num_examples, train_batch_size, warmup_epochs)
        self.total_steps = total_train_steps(
            num_examples, train_batch_size, train_epochs, train_steps
        )

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        peak = tf.constant(self.peak_learning_rate, tf.float32)
        if self.warmup_steps:
            warmup_rate = step / float(self.warmup_steps) * peak
        else:
            warmup_rate = peak
        # Guard a decay length of 0 (training shorter than the warmup) against 0 / 0.
        decay_steps = float(max(self.total_steps - self.warmup_steps, 1))
        progress = tf.minimum(step - self.warmup_steps, decay_steps) / decay_steps
        cosine_rate = 0.5 * peak * (1.0 + tf.cos(math.pi * progress))
        return tf.where(step < self.warmup_steps, warmup_rate, cosine_rate)

    def get_config(self):
        return {
            "base_learning_rate": self.base_learning_rate,
            "num_examples": self.num_examples,
            "train_batch_size": self.train_batch_size,
            "warmup_epochs": self.warmup_epochs,
            "train_epochs": self.train_epochs,
            "train_steps": self.train_steps,
            "learning_rate_scaling": self.learning_rate_scaling,
        }


def build_optimizer(name, learning_rate, momentum=0.9, weight_decay=0.0, exclude_from_weight_decay=None):
    """Returns the optimizer named `name` ("lars", "momentum" or "adam").

    `exclude_from_weight_decay`: path regexes of the variables LARS leaves undecayed, as the model declares
    them (`model.weight_decay_exempt_patterns()`); None takes `DEFAULT_LARS_EXCLUDE`, what the package's
    models declare.
    """
    if name == "momentum":
        return keras.optimizers.SGD(learning_rate, momentum=momentum, nesterov=True)
    if name == "adam":
        return keras.optimizers.Adam(learning_rate)
    if name == "lars":
        if exclude_from_weight_decay is None:
            exclude_from_weight_decay = DEFAULT_LARS_EXCLUDE
        return LARS(
            learning_rate,
            momentum=momentum,
            weight_decay=weight_decay,
            exclude_from_weight_decay=exclude_from_weight_decay,
        )
    raise ValueError(f"Unknown optimizer {name!r}; use 'lars', 'momentum' or 'adam'.")


def check_micro_batches(train_batch_size, num_replicas, grad_accum_steps):
    """Raises ConfigError unless each replica's batch splits into `grad_accum_steps` equal micro-batches."""
    per_replica = train_batch_size // num_replicas
    if grad_accum_steps < 1 or per_replica % grad_accum_steps:
        multiple = num_replicas * grad_accum_steps
        raise ConfigError(
            f"--grad_accum_steps={grad_accum_steps} must divide each replica's batch: "
            f"--train_batch_size={train_batch_size} over {num_replicas} replica(s) is {per_replica} per "
            f"replica. Use a --train_batch_size that is a multiple of {multiple}, or another "
            "--grad_accum_steps.")


def accumulated_gradients(loss_fn, batch, variables, num_micro_batches=1):
    """Deprecated: moved to `simclr_tf.models.training_step.accumulated_gradients` (same arguments)."""
    from simclr_tf.models import training_step  # models import this module: import when called

    warnings.warn("simclr_tf.optimizers.accumulated_gradients moved to "
                  "simclr_tf.models.training_step.accumulated_gradients.", DeprecationWarning, stacklevel=2)
    return training_step.accumulated_gradients(loss_fn, batch, variables, num_micro_batches)


def l2_weight_decay_loss(variables, weight_decay, optimizer_name):
    """L2 penalty `weight_decay * sum(||v||^2 / 2)` that the optimizer does not already apply, for variables
    named as in the package's models (a model computes it with `TrainingModel.weight_decay_loss`).

    LARS decays weights itself except the supervised head, so for "lars" only the non-bias
    variables of the supervised head are penalized; for other optimizers every variable outside
    normalization layers is.
    """
    selected = _weight_decay.loss_decayed_variables(
        variables, optimizer_name, _weight_decay.SUPERVISED_HEAD_PATTERNS)
    return _weight_decay.l2_loss(selected, weight_decay)
