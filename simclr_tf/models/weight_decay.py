"""Which of a model's variables skip weight decay, and the L2 term a model adds to its own loss.

The models declare it (`TrainingModel.weight_decay_exempt_patterns`); the optimizer takes the list and knows
no layer names. Three kinds of variables are exempt from the optimizer's decay (and from LARS's trust ratio):
- normalization weights: the batch norms of our ResNet and heads live under "batch_normalization"; those of
  other encoders (keras.applications, keras-hub: "..._bn", "layer_norm", ...) are found by their gamma/beta;
- biases;
- the variables the model decays in its loss instead (the supervised head, as the reference does with LARS).
Patterns are regexes searched in `variable.path`: they hold when a model is rebuilt in another process, where
Keras may number its layers differently.
"""
import re

import tensorflow as tf

NORMALIZATION_PATTERNS = ("batch_normalization", r"/gamma$", r"/beta$")
BIAS_PATTERNS = ("bias",)
# The name `SupervisedHead` takes by default (models/heads.py): what the models of this package decay in
# their loss when the optimizer is LARS.
SUPERVISED_HEAD_PATTERNS = ("head_supervised",)
# Optimizers that apply the weight decay themselves (to every variable not exempt).
DECAYING_OPTIMIZERS = ("lars",)


def variable_path(variable):
    """`variable.path` (Keras 3), or the name of a raw `tf.Variable`."""
    return getattr(variable, "path", None) or variable.name


def matches_any(patterns, path):
    """Whether any regex of `patterns` is found in `path`."""
    return any(re.search(pattern, path) is not None for pattern in patterns or ())


def exempt_patterns(loss_decayed_patterns=()):
    """The patterns an optimizer must not decay: normalization, biases and `loss_decayed_patterns`."""
    return (*NORMALIZATION_PATTERNS, *BIAS_PATTERNS, *loss_decayed_patterns)


def loss_decayed_variables(variables, optimizer_name, loss_decayed_patterns):
    """The variables of `variables` whose L2 penalty goes into the loss.

    An optimizer that decays weights itself ("lars") leaves out `loss_decayed_patterns`, whose non-bias
    variables are then decayed in the loss; with any other optimizer the loss decays every variable
    outside normalization layers (biases included, as the reference does).
    """
    if optimizer_name in DECAYING_OPTIMIZERS:
        return [v for v in variables if matches_any(loss_decayed_patterns, variable_path(v))
                and not matches_any(BIAS_PATTERNS, variable_path(v))]
    return [v for v in variables if not matches_any(NORMALIZATION_PATTERNS, variable_path(v))]


def l2_loss(variables, weight_decay):
    """`weight_decay * sum(||v||^2 / 2)` over `variables`, in float32 (0 for none)."""
    if not variables:
        return tf.constant(0.0, tf.float32)
    penalties = [tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in variables]
    return tf.cast(weight_decay, tf.float32) * tf.add_n(penalties)
