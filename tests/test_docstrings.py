"""The examples in simclr_tf's docstrings run and print what they show (doctest)."""
import doctest
import importlib
import inspect
import pkgutil

import pytest

import simclr_tf

MODULES = sorted(info.name for info in pkgutil.walk_packages(simclr_tf.__path__, "simclr_tf."))
FINDER = doctest.DocTestFinder()
WITH_EXAMPLES = [name for name in MODULES
                 if any(test.examples for test in FINDER.find(importlib.import_module(name)))]


def _has_own_example(obj):
    """True when the docstring of `obj` (or, for a class, of its __init__) holds a `>>>` example."""
    docstrings = [inspect.getdoc(obj) or ""]
    if inspect.isclass(obj):
        docstrings.append(obj.__init__.__doc__ or "")
    return any(doctest.DocTestParser().get_examples(text) for text in docstrings)


@pytest.mark.parametrize("name", simclr_tf.__all__)
def test_every_public_name_has_an_example(name):
    assert _has_own_example(getattr(simclr_tf, name)), (
        f"simclr_tf.{name} has no runnable example in its docstring: add an 'Example:' section with >>> lines")


@pytest.mark.parametrize("name", WITH_EXAMPLES)
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS |
                             doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0, result
