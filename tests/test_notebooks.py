"""The Colab notebooks in colab/ run top to bottom on tiny settings, and what they compute is checked.

Each notebook is executed with nbclient in a Jupyter kernel of the interpreter running the tests (a kernel
spec written for the test, so neither an installed "python3" kernel spec nor PATH decides which Python runs
the notebook). After the cell tagged "parameters" an injected cell overrides the parameters with tiny values
(a few steps on 16x16 images, model dirs under pytest's tmp path), as papermill does; a cell that raises
fails the test. A last injected cell prints the notebook's results as JSON for the assertions. Figures use
the inline backend (headless, like Agg), so the test can check that each notebook drew its figures.

The pretraining run of the first notebook is reused by the others (their PRETRAINED_DIR parameter); the
retrieval notebook pretrains its own encoder, on a small image folder, which covers the "pretrain here"
path and the "your own image folder" route.
"""
import ast
import json
import os
import shutil
import subprocess
import sys
import types

import nbformat
import numpy as np
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLAB = os.path.join(REPO, "colab")
NOTEBOOKS = ("pretrain_and_linear_eval", "finetune_semi_supervised", "export_and_retrieval", "distillation")
KERNEL_NAME = "simclr_tf_tests"
CELL_TIMEOUT_SECS = 900
STATE_MARKER = "NOTEBOOK_STATE:"
TRAIN_STEPS = 2
# The last cell: prints the variables `names` as JSON (tuple keys as strings, arrays as lists).
STATE_CELL = """
import json as _json
def _plain(value):
    if isinstance(value, dict):
        return {{str(key): _plain(item) for key, item in value.items()}}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
print({marker!r} + _json.dumps({{name: _plain(globals()[name]) for name in {names!r}}}))
"""
TINY = {"IMAGE_SIZE": 16, "WIDTH_MULTIPLIER": 0.125, "BATCH_SIZE": 16, "TRAIN_STEPS": TRAIN_STEPS,
        "EVAL_STEPS": 1}


def read_notebook(name):
    return nbformat.read(os.path.join(COLAB, f"{name}.ipynb"), as_version=4)


def parameters_cell_index(notebook):
    tagged = [i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, f"expected one cell tagged 'parameters', found {len(tagged)}"
    return tagged[0]


def assigned_names(source):
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                elements = target.elts if isinstance(target, ast.Tuple) else [target]
                names.update(e.id for e in elements if isinstance(e, ast.Name))
    return names


def kernel_manager(spec_root):
    """A kernel manager whose only kernel spec runs `sys.executable -m ipykernel_launcher`."""
    spec_dir = os.path.join(spec_root, KERNEL_NAME)
    os.makedirs(spec_dir, exist_ok=True)
    with open(os.path.join(spec_dir, "kernel.json"), "w") as f:
        json.dump({"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                   "display_name": "simclr_tf tests", "language": "python"}, f)
    specs = KernelSpecManager(kernel_dirs=[spec_root])
    # The connection file goes beside the spec, not to the user's Jupyter runtime folder.
    return AsyncKernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=specs,
                              connection_file=os.path.join(spec_root, "connection.json"))


def execute(name, tmp_dir, parameters, state_names):
    """Runs notebook `name` with `parameters` overriding its parameters cell; returns (notebook, state).

    `state` holds the values of the notebook variables `state_names` after the last cell (through JSON).
    """
    notebook = read_notebook(name)
    index = parameters_cell_index(notebook)
    unknown = set(parameters) - assigned_names(notebook.cells[index].source)
    assert not unknown, f"{name}: the parameters cell does not define {sorted(unknown)}"
    overrides = "\n".join(f"{key} = {value!r}" for key, value in parameters.items())
    injected = nbformat.v4.new_code_cell(overrides, metadata={"tags": ["injected-parameters"]})
    notebook.cells.insert(index + 1, injected)
    dump = STATE_CELL.format(marker=STATE_MARKER, names=list(state_names))
    notebook.cells.append(nbformat.v4.new_code_cell(dump))
    python_path = os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=python_path, TF_CPP_MIN_LOG_LEVEL="2",
               MPLBACKEND="module://matplotlib_inline.backend_inline")
    client = NotebookClient(notebook, km=kernel_manager(os.path.join(tmp_dir, "kernels")),
                            timeout=CELL_TIMEOUT_SECS, resources={"metadata": {"path": REPO}})
    client.execute(env=env)
    printed = [output.text for output in notebook.cells[-1].outputs if output.get("name") == "stdout"]
    line = next(line for text in printed for line in text.splitlines() if line.startswith(STATE_MARKER))
    return notebook, json.loads(line[len(STATE_MARKER):])


def figures(notebook):
    """The number of PNG images the notebook displayed."""
    return sum("image/png" in output.get("data", {}) for cell in notebook.cells if cell.cell_type == "code"
               for output in cell.outputs)


def read_json(*path):
    with open(os.path.join(*path)) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def notebooks_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("notebooks")


@pytest.fixture(scope="module")
def pretrain_notebook(notebooks_dir):
    work_dir = str(notebooks_dir / "pretrain_and_linear_eval")
    notebook, state = execute("pretrain_and_linear_eval", work_dir,
                              # The offline probes read every image: a minute even on tiny settings.
                              {**TINY, "WORK_DIR": work_dir, "SUMMARY_STEPS": 1,
                               "RANDOM_ENCODER_BASELINE": False},
                              ["pretrain_result", "linear_result", "scalars"])
    return work_dir, notebook, state


def test_notebooks_are_committed_without_outputs_and_open_with_a_colab_badge():
    for name in NOTEBOOKS:
        notebook = read_notebook(name)
        nbformat.validate(notebook)
        code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
        assert all(not cell.outputs and cell.execution_count is None for cell in code_cells), name
        assert f"colab/{name}.ipynb" in notebook.cells[0].source and "colab-badge" in notebook.cells[0].source
        install = code_cells[0].source
        assert 'if "google.colab" in sys.modules:' in install and "pip" in install, name
        parameters = assigned_names(notebook.cells[parameters_cell_index(notebook)].source)
        assert {"WORK_DIR", "TRAIN_STEPS", "USE_TPU"} <= parameters, name
        sources = "\n".join(cell.source for cell in code_cells)
        assert "absl" not in sources and "FLAGS" not in sources, name


def test_the_colab_install_cell_clones_and_installs_the_runtime_pins(tmp_path, monkeypatch):
    """The branch that only runs on Colab, with git and pip replaced by a recorder."""
    clone = tmp_path / "clone"
    commands = []

    def fake_run(command, check):
        commands.append(command)
        if command[0] == "git":  # the clone brings requirements.txt
            os.makedirs(command[-1])
            shutil.copy(os.path.join(REPO, "requirements.txt"), command[-1])

    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    with open(os.path.join(REPO, "requirements.txt")) as f:
        pins = {line.strip() for line in f if "==" in line and not line.startswith("#")}
    for name in NOTEBOOKS:
        shutil.rmtree(clone, ignore_errors=True)
        commands.clear()
        install = next(cell for cell in read_notebook(name).cells if cell.cell_type == "code").source
        exec(install.replace("/content/simclr_tf", str(clone)), {})
        git, pip = commands
        assert git[:2] == ["git", "clone"] and git[-1] == str(clone), name
        assert pip[:4] == [sys.executable, "-m", "pip", "install"], name
        installed = {arg for arg in pip if "==" in arg}
        assert installed <= pins and any(pin.startswith("tensorflow==") for pin in installed), name
        assert not any(pin.split("==")[0] in ("ipykernel", "jupyter-client", "matplotlib")
                       for pin in installed), name  # Colab's own must stay
        assert sys.path[0] == str(clone), name


@pytest.mark.slow
def test_pretrain_and_linear_eval(pretrain_notebook):
    work_dir, notebook, state = pretrain_notebook
    pretrain, linear = state["pretrain_result"], state["linear_result"]
    assert pretrain["global_step"] == TRAIN_STEPS and linear["global_step"] == TRAIN_STEPS
    assert linear == read_json(work_dir, "linear_eval", "result.json")
    assert 0.0 <= linear["top_1_accuracy"] <= linear["top_5_accuracy"] <= 1.0
    assert linear["num_eval_examples"] == 256  # EVAL_STEPS=1 batch of the default eval batch size
    config = read_json(work_dir, "linear_eval", "config.json")
    assert config["model"]["fine_tune_after_block"] == 4 and config["train"]["train_mode"] == "finetune"
    assert config["train"]["checkpoint"] == os.path.join(work_dir, "pretrain")
    # One point per step of each training curve (SUMMARY_STEPS=1), with finite values.
    for tag in ("batch_contrast_loss", "batch_contrast_acc", "batch_supervised_acc"):
        steps, values = state["scalars"][tag]
        assert len(steps) == TRAIN_STEPS and np.all(np.isfinite(values)), tag
    assert figures(notebook) == 2  # the grid of views and the training curves


@pytest.fixture(scope="module")
def finetune_notebook(notebooks_dir, pretrain_notebook):
    work_dir = str(notebooks_dir / "finetune_semi_supervised")
    pretrained_dir = os.path.join(pretrain_notebook[0], "pretrain")
    notebook, state = execute("finetune_semi_supervised", work_dir,
                              {**TINY, "WORK_DIR": work_dir, "PRETRAINED_DIR": pretrained_dir,
                               "LABEL_FRACTIONS": (0.1,)},
                              ["results", "num_labelled"])
    return work_dir, notebook, state


@pytest.mark.slow
def test_finetune_semi_supervised(finetune_notebook, pretrain_notebook):
    work_dir, notebook, state = finetune_notebook
    assert state["num_labelled"] == {"0.1": 1000}
    for start, run_name, checkpoint in (
            ("SimCLR pretrained", "finetune_0.1_pretrained", os.path.join(pretrain_notebook[0], "pretrain")),
            ("random init", "finetune_0.1_random", None)):
        result = state["results"][str((0.1, start))]
        assert result == read_json(work_dir, run_name, "result.json")
        assert result["global_step"] == TRAIN_STEPS and 0.0 <= result["top_1_accuracy"] <= 1.0
        config = read_json(work_dir, run_name, "config.json")
        assert config["train"]["checkpoint"] == checkpoint and config["data"]["label_fraction"] == 0.1
        subset = read_json(work_dir, run_name, "label_subset.json")
        assert subset["num_examples"] == 1000 and set(subset["counts_per_class"].values()) == {100}
    assert figures(notebook) == 1  # the bar chart of the table


def write_image_folder(root):
    """train/ and test/ folders of three colour classes, images of different sizes (PNG)."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    colours = {"blue": (40, 60, 200), "red": (200, 40, 40), "yellow": (220, 210, 40)}
    for split, count in (("train", 8), ("test", 4)):
        for name, colour in colours.items():
            os.makedirs(os.path.join(root, split, name))
            for i in range(count):
                pixels = np.array(colour) + rng.normal(0, 30, (20 + 2 * i, 24 + i, 3))
                png = tf.io.encode_png(np.clip(pixels, 0, 255).astype(np.uint8))
                tf.io.write_file(os.path.join(root, split, name, f"{i}.png"), png)
    return sorted(colours)


@pytest.mark.slow
def test_export_and_retrieval_pretrains_on_an_image_folder(notebooks_dir):
    """The route of the notebook's last section: DATASET is a folder, the encoder is pretrained here."""
    images = str(notebooks_dir / "images")
    class_names = write_image_folder(images)
    work_dir = str(notebooks_dir / "export_and_retrieval")
    notebook, state = execute(
        "export_and_retrieval", work_dir,
        {**TINY, "WORK_DIR": work_dir, "DATASET": images, "EVAL_SPLIT": "test", "NUM_IMAGES": 100,
         "NUM_NEIGHBOURS": 3, "NUM_QUERIES": 2},
        ["PRETRAINED_DIR", "class_names", "labels", "features", "export_difference", "same_class",
         "same_class_pixels", "chance", "embedding", "tsne_embedding", "output_names"])
    assert state["PRETRAINED_DIR"] == os.path.join(work_dir, "pretrain")
    assert os.path.isfile(os.path.join(work_dir, "pretrain", f"ckpt-{TRAIN_STEPS:08d}.weights.h5"))
    assert os.path.isfile(os.path.join(work_dir, "export", "saved_model.pb"))
    assert read_json(work_dir, "export", "simclr_tf_export.json")["image_size"] == TINY["IMAGE_SIZE"]
    assert state["class_names"] == class_names
    assert sorted(state["labels"]) == [0] * 4 + [1] * 4 + [2] * 4  # all 12 test images, NUM_IMAGES is a cap
    features = np.array(state["features"])
    assert features.shape == (12, 64)  # ResNet-18 at width 0.125: 512 * 0.125 features
    assert state["export_difference"] < 1e-4  # the SavedModel computes what the Keras model does
    # Colours separate the classes: raw pixels retrieve the right class; SimCLR features beat chance.
    assert state["chance"] == pytest.approx(3 / 11)
    assert state["same_class_pixels"] == 1.0 and state["chance"] < state["same_class"] <= 1.0
    embedding = np.array(state["embedding"])
    assert embedding.shape == (12, 2) and np.all(np.isfinite(embedding))
    tsne_embedding = np.array(state["tsne_embedding"])
    assert tsne_embedding.shape == (12, 2) and np.all(np.isfinite(tsne_embedding))
    assert np.ptp(tsne_embedding, axis=0).min() > 0  # the points are spread, not stacked
    assert "final_avg_pool" in state["output_names"] and "proj_head_output" in state["output_names"]
    assert figures(notebook) == 3  # the queries with their neighbours, the PCA plot and the t-SNE plot


@pytest.mark.slow
def test_distillation(notebooks_dir, pretrain_notebook, finetune_notebook):
    work_dir = str(notebooks_dir / "distillation")
    teacher_dir = os.path.join(finetune_notebook[0], "finetune_0.1_pretrained")
    notebook, state = execute(
        "distillation", work_dir,
        {**TINY, "WORK_DIR": work_dir, "PRETRAINED_DIR": os.path.join(pretrain_notebook[0], "pretrain"),
         "TEACHER_DIR": teacher_dir, "STUDENT_WIDTH_MULTIPLIER": 0.0625},
        ["teacher_result", "student_result", "parameters"])
    assert state["teacher_result"] == read_json(teacher_dir, "result.json")
    student = state["student_result"]
    assert student == read_json(work_dir, "student", "result.json")
    assert student["global_step"] == TRAIN_STEPS and 0.0 <= student["teacher_agreement"] <= 1.0
    config = read_json(work_dir, "student", "config.json")
    assert config["train"]["train_mode"] == "distill" and config["train"]["teacher_checkpoint"] == teacher_dir
    assert config["model"]["width_multiplier"] == 0.0625
    # Half the width: about a quarter of the teacher's parameters.
    assert state["parameters"]["student"] < state["parameters"]["teacher"] / 3
    assert figures(notebook) == 1
