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
