"""Checks every public layer, model, optimizer and schedule must pass; reused by the per-module tests."""
import inspect

import keras
import numpy as np


def init_argument_names(cls):
    """Names of the explicit keyword arguments of `cls.__init__` (not self, not **kwargs)."""
    params = inspect.signature(cls.__init__).parameters.values()
    return {
            p.name for p in params
            if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    }


def assert_config_covers_init(obj):
    """Every `__init__` argument is returned by `get_config()` under the same name."""
    missing = init_argument_names(type(obj)) - set(obj.get_config())
    assert not missing, f"{type(obj).__name__}.get_config() drops {sorted(missing)}"


def assert_config_round_trip(obj):
    """`from_config(get_config())` rebuilds an object with the same config (JSON-serializable)."""
    config = obj.get_config()
    serialized = keras.saving.serialize_keras_object(obj)
    rebuilt = keras.saving.deserialize_keras_object(serialized)
    assert type(rebuilt) is type(obj)
    assert rebuilt.get_config() == config
    return rebuilt


def assert_save_load_equal(model, inputs, path, atol=1e-6, **call_kwargs):
    """`.keras` save then load gives the same outputs on `inputs` (in inference mode)."""
    expected = model(inputs, training=False, **call_kwargs)
    model.save(path)
    loaded = keras.saving.load_model(path)
    actual = loaded(inputs, training=False, **call_kwargs)
    for e, a in zip(keras.tree.flatten(expected), keras.tree.flatten(actual)):
        np.testing.assert_allclose(np.asarray(e), np.asarray(a), atol=atol)
    return loaded


def perturb_weights(model, seed):
    """Moves every variable off its initial value (zero gammas and BN statistics included), so a
    save/load or copy check cannot pass by accident on freshly initialized weights."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        values = np.asarray(v)
        if "moving_variance" in v.path:
            values = rng.uniform(0.5, 1.5, size=v.shape)
        else:
            values = values + rng.normal(scale=values.std() or 0.1, size=v.shape)
        v.assign(values.astype("float32"))
