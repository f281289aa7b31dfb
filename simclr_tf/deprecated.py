"""Module paths that moved, kept importable for a while: importing one warns and gives the new module's names.

`simclr_tf.checkpoints`, `simclr_tf.export`, `simclr_tf.pretrained`, `simclr_tf.reference_checkpoints` and
`simclr_tf.reference_names` moved into `simclr_tf.persistence`. Importing an old path emits a
DeprecationWarning naming the new one and returns a module holding the new module's public names (the same
objects). The aliases are served by an import hook rather than files at the old paths, so that git sees the
moves as renames. simclr_tf itself imports only the new paths.

Example:
  >>> import warnings
  >>> _ = sys.modules.pop("simclr_tf.pretrained", None)  # as in a fresh process
  >>> with warnings.catch_warnings(record=True) as caught:
  ...     warnings.simplefilter("always")
  ...     pretrained = importlib.import_module("simclr_tf.pretrained")
  >>> print(caught[0].category.__name__, caught[0].message)
  DeprecationWarning simclr_tf.pretrained is deprecated: import simclr_tf.persistence.pretrained instead.
  >>> from simclr_tf.persistence.pretrained import load_trained_model
  >>> pretrained.load_trained_model is load_trained_model
  True
"""
import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings

MOVED = {
    "simclr_tf.checkpoints": "simclr_tf.persistence.checkpoints",
    "simclr_tf.export": "simclr_tf.persistence.export",
    "simclr_tf.pretrained": "simclr_tf.persistence.pretrained",
    "simclr_tf.reference_checkpoints": "simclr_tf.persistence.reference.checkpoints",
    "simclr_tf.reference_names": "simclr_tf.persistence.reference.names",
}


class _MovedModuleLoader(importlib.abc.Loader):
    def create_module(self, spec):
        return None  # the default module object

    def exec_module(self, module):
        new_name = MOVED[module.__name__]
        # stacklevel=2 names the importing line: the import system's own frames are skipped.
        warnings.warn(f"{module.__name__} is deprecated: import {new_name} instead.", DeprecationWarning,
                      stacklevel=2)
        moved = importlib.import_module(new_name)
        module.__dict__.update({name: value for name, value in vars(moved).items() if not name.startswith("_")})
        module.__doc__ = f"Deprecated alias of {new_name}.\n\n{moved.__doc__ or ''}"


class _MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Finds the old paths of `MOVED` (and nothing else)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, _MovedModuleLoader())


def install():
    """Makes the old paths importable (once per process)."""
    if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(_MovedModuleFinder())
