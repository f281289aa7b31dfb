"""simclr_tf.persistence.run_dir names every file of a run directory; no other module spells those names."""
import ast
import os
import pathlib

from simclr_tf.persistence import run_dir

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "simclr_tf"
NAMES = {run_dir.CONFIG_FILE, run_dir.MODEL_CONFIG_FILE, run_dir.RESULT_FILE, run_dir.CONVERSION_FILE,
         run_dir.SUBSET_FILE, run_dir.LOCK_FILE, run_dir.EXPORTS_DIR, run_dir.EXPORT_METADATA_FILE,
         run_dir.KERAS_MODEL_FILE, run_dir.ENCODER_FILE, run_dir.CHECKPOINT_SUFFIX, run_dir.CHECKPOINT_GLOB}


def _code_strings(tree):
    """The string constants of a module that are not docstrings."""
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and node.body
                  and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [node for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def test_no_module_but_run_dir_spells_a_run_directory_name():
    spelled = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "run_dir.py":
            continue
        spelled += [f"{path.relative_to(PACKAGE)}:{node.lineno} {node.value!r}"
                    for node in _code_strings(ast.parse(path.read_text())) if node.value in NAMES]
    assert spelled == []


def test_checkpoint_names_round_trip_and_partial_or_damaged_ones_are_not_checkpoints(tmp_path):
    final = run_dir.checkpoint_path(tmp_path, 42)
    assert run_dir.checkpoint_step(final) == 42
    others = [run_dir.partial_checkpoint_path(final, "1-0"), run_dir.damaged_checkpoint_path(final),
              run_dir.damaged_checkpoint_path(final, 2)]
    assert [run_dir.checkpoint_step(path) for path in others] == [None, None, None]
    for path in [final] + others:
        open(path, "w").close()
    assert run_dir.list_checkpoints(tmp_path) == [(42, final)]
    assert run_dir.partial_checkpoints(tmp_path) == [others[0]]


def test_exports_are_listed_only_when_complete(tmp_path):
    for step in (5, 10):
        os.makedirs(run_dir.export_path(tmp_path, step))
    open(os.path.join(run_dir.export_path(tmp_path, 5), run_dir.EXPORT_METADATA_FILE), "w").close()
    os.makedirs(run_dir.partial_export_path(tmp_path, 20))
    assert run_dir.list_exports(tmp_path) == [(5, run_dir.export_path(tmp_path, 5))]
    assert run_dir.latest_export(tmp_path) == run_dir.export_path(tmp_path, 5)
    assert run_dir.stale_exports(tmp_path) == [run_dir.partial_export_path(tmp_path, 20)]
    assert run_dir.latest_export(tmp_path / "missing") is None
