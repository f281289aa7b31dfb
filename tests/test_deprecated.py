"""The module paths that moved into simclr_tf.persistence still import, warn, and give the new objects."""
import ast
import importlib
import pathlib
import sys

import pytest

from simclr_tf import deprecated

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "simclr_tf"


@pytest.mark.parametrize("old, new", sorted(deprecated.MOVED.items()))
def test_an_old_path_warns_at_the_import_and_reexports_every_public_name(old, new, monkeypatch):
    monkeypatch.delitem(sys.modules, old, raising=False)  # as in a fresh process
    with pytest.warns(DeprecationWarning, match=f"{old} is deprecated: import {new} instead") as caught:
        __import__(old)  # an import statement's own call
    alias = sys.modules[old]
    assert caught[0].filename == __file__  # the warning names the importing line, not the import system
    moved = importlib.import_module(new)
    public = [name for name in vars(moved) if not name.startswith("_")]
    assert public and all(getattr(alias, name) is getattr(moved, name) for name in public)


def test_from_import_of_an_old_name_works():
    with pytest.warns(DeprecationWarning):
        sys.modules.pop("simclr_tf.checkpoints", None)
        from simclr_tf.checkpoints import latest_checkpoint
    from simclr_tf.persistence.checkpoints import latest_checkpoint as new
    assert latest_checkpoint is new


def test_the_library_imports_no_old_path():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            offenders += [f"{path.relative_to(PACKAGE)}: {name}" for name in names if name in deprecated.MOVED]
    assert offenders == []
