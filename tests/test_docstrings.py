"""The examples in simclr_tf's docstrings run and print what they show (doctest)."""
import doctest
import importlib
import pkgutil

import pytest

import simclr_tf

MODULES = sorted(info.name for info in pkgutil.walk_packages(simclr_tf.__path__, "simclr_tf."))
WITH_EXAMPLES = [name for name in MODULES
                 if doctest.DocTestFinder().find(importlib.import_module(name))
                 and any(test.examples for test in doctest.DocTestFinder().find(importlib.import_module(name)))]


def test_public_models_have_examples():
    assert {"simclr_tf.models.simclr", "simclr_tf.models.classifier"} <= set(WITH_EXAMPLES)


@pytest.mark.parametrize("name", WITH_EXAMPLES)
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS |
                             doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0, result
