"""The offline linear probe: it fits separable features, and works under a mixed precision policy."""
import keras
import numpy as np
import pytest

from simclr_tf import linear_probe


def separable_features(num=400, num_classes=4, dim=8):
    """Train and eval halves of Gaussian clusters around well separated centers."""
    rng = np.random.default_rng(0)
    centers = 4 * rng.normal(size=(num_classes, dim))
    labels = rng.integers(0, num_classes, num)
    features = (centers[labels] + rng.normal(size=(num, dim))).astype(np.float32)
    half = num // 2
    return features[:half], labels[:half], features[half:], labels[half:]


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_probe_fits_separable_features_under_any_precision_policy(policy):
    """Under mixed_bfloat16 the probe's logits were bfloat16 and its top-5 metric raised a TypeError."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        result = linear_probe.fit_linear_probe(*separable_features(), num_classes=4, epochs=30,
                                               learning_rate=0.05)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert result["top_1"] > 0.9 and result["top_5"] == 1.0
