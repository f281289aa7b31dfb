"""run.py end to end on the built-in data: checkpoints, config, results, resume, refused combinations."""
import json
import os
import subprocess
import sys
import warnings

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = ["--dataset=builtin_shapes", "--eval_split=test", "--image_size=16", "--resnet_depth=18",
        "--width_multiplier=0.125",
        "--num_proj_layers=2", "--proj_out_dim=16", "--train_batch_size=16", "--eval_batch_size=64",
        "--eval_steps=2", "--temperature=0.5", "--learning_rate=0.5", "--warmup_epochs=0",
        "--checkpoint_steps=2", "--verbose=0", "--seed=0"]


def run_cli(*args, check=True):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "run.py", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"run.py failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def checkpoint_steps(model_dir):
    return sorted(int(name[5:13]) for name in os.listdir(model_dir)
                  if name.startswith("ckpt-") and "partial" not in name)


@pytest.mark.slow
def test_train_then_eval_writes_checkpoints_config_results_and_resumes(tmp_path):
    model_dir = str(tmp_path / "run")
    proc = run_cli("--mode=train_then_eval", "--train_steps=4", f"--model_dir={model_dir}", *TINY)
    assert checkpoint_steps(model_dir) == [2, 4]
    config = json.load(open(os.path.join(model_dir, "config.json")))
    assert config["model"]["width_multiplier"] == 0.125 and config["train"]["train_steps"] == 4
    result = json.load(open(os.path.join(model_dir, "result.json")))
    assert result["global_step"] == 4
    assert 0.0 <= result["top_1_accuracy"] <= result["top_5_accuracy"] <= 1.0
    assert "Linear probe on test: top-1" in proc.stdout
    assert any(name.startswith("events") for _, _, files in os.walk(model_dir) for name in files)

    # Asking for more steps resumes from step 4 instead of starting again.
    proc = run_cli("--mode=train", "--train_steps=6", f"--model_dir={model_dir}", *TINY)
    assert "Restored" in proc.stderr and "ckpt-00000004" in proc.stderr
    assert "Pretraining steps 4..6" in proc.stderr
    assert checkpoint_steps(model_dir) == [2, 4, 6]

    # --mode=eval evaluates the latest checkpoint.
    run_cli("--mode=eval", "--train_steps=6", f"--model_dir={model_dir}", *TINY)
    assert json.load(open(os.path.join(model_dir, "result.json")))["global_step"] == 6

    # Watching for a step that never comes stops after --eval_wait_secs without a new checkpoint.
    proc = run_cli("--mode=eval", "--train_steps=8", "--eval_wait_secs=1", f"--model_dir={model_dir}",
                   *TINY)
    assert "No new checkpoint" in proc.stderr and "step 6 of 8" in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["--fine_tune_after_block=2"], "--train_mode=finetune"),
    (["--dataset=no_such_dataset_xyz"], "no_such_dataset_xyz"),
    (["--image_size=4"], "--image_size=8 or more"),
    (["--cpu_replicas=3"], "does not divide over the 3 replicas"),
    (["--mode=eval"], "No checkpoint"),
    (["--checkpoint=/nonexistent/ckpt.weights.h5"], "/nonexistent/ckpt.weights.h5"),
])
def test_invalid_combinations_fail_before_training(tmp_path, args, message):
    model_dir = str(tmp_path / "bad")
    proc = run_cli("--mode=train", "--train_steps=2", f"--model_dir={model_dir}", *TINY, *args,
                   check=False)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert not os.path.isdir(model_dir) or not checkpoint_steps(model_dir)


def write_image_folder(root):
    import numpy as np
    import tensorflow as tf
    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("test", 4)):
        for label in ("cats", "dogs"):
            os.makedirs(root / split / label)
            for i in range(count):
                pixels = rng.integers(0, 255, (20 + i, 24, 3), dtype=np.uint8)  # Sizes differ on purpose.
                tf.io.write_file(str(root / split / label / f"{i}.png"), tf.io.encode_png(pixels))
    # Two steps of 8 images read more than the 13 training files, so the broken one is always reached.
    (root / "train" / "cats" / "broken.jpg").write_bytes(b"not a jpeg")
    return str(root / "train" / "cats" / "broken.jpg")


@pytest.mark.slow
def test_image_folder_with_a_corrupt_file(tmp_path):
    broken = write_image_folder(tmp_path / "images")
    args = [f"--dataset={tmp_path / 'images'}", "--eval_split=test", "--image_size=16",
            "--resnet_depth=18", "--width_multiplier=0.125", "--train_batch_size=8", "--train_steps=2",
            "--eval_batch_size=8", "--verbose=0"]
    proc = run_cli("--mode=train", f"--model_dir={tmp_path / 'fail'}", "--corrupt_images=fail", *args,
                   check=False)
    assert proc.returncode != 0
    assert f"Corrupt or unreadable image {broken}" in proc.stderr
    assert "--corrupt_images=skip" in proc.stderr

    proc = run_cli("--mode=train_then_eval", f"--model_dir={tmp_path / 'skip'}", *args)
    assert f"Skipping corrupt or unreadable image {broken}" in proc.stderr
    assert "Linear probe on test: top-1" in proc.stdout


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory):
    """A tiny pretraining run (4 steps): the starting point of fine-tuning."""
    model_dir = str(tmp_path_factory.mktemp("pretrain"))
    run_cli("--mode=train", "--train_steps=4", f"--model_dir={model_dir}", *TINY)
    return model_dir


@pytest.fixture(scope="module")
def finetuned_run(pretrained_run, tmp_path_factory):
    """Fine-tuning of `pretrained_run` on 10% of the labels, 4 steps; returns (model_dir, stdout)."""
    model_dir = str(tmp_path_factory.mktemp("finetune"))
    proc = run_cli("--mode=train_then_eval", "--train_mode=finetune", f"--checkpoint={pretrained_run}",
                   "--label_fraction=0.1", "--ft_proj_selector=1", "--fine_tune_after_block=2",
                   "--zero_init_logits_layer", "--optimizer=momentum", "--train_steps=4",
                   f"--model_dir={model_dir}", *TINY)
    return model_dir, proc


@pytest.mark.slow
def test_finetune_on_a_label_fraction_evaluates_exports_and_resumes(finetuned_run):
    model_dir, proc = finetuned_run
    assert "Classifier on test: top-1" in proc.stdout
    assert checkpoint_steps(model_dir) == [2, 4]
    subset = json.load(open(os.path.join(model_dir, "label_subset.json")))
    assert len(subset["ids"]) == 1000  # 10% of the 10,000 built-in training images, 100 per class
    result = json.load(open(os.path.join(model_dir, "result.json")))
    assert result["global_step"] == 4 and 0.0 <= result["top_1_accuracy"] <= 1.0
    export_dir = os.path.join(model_dir, "saved_model", "4")
    for name in ("saved_model.pb", "encoder.keras", "model.keras"):
        assert os.path.exists(os.path.join(export_dir, name)), name

    # Restarted with more steps, the run resumes from its own checkpoint (not from --checkpoint).
    proc = run_cli("--mode=train", "--train_mode=finetune", "--checkpoint=/nonexistent-is-not-read",
                   "--label_fraction=0.1", "--ft_proj_selector=1", "--fine_tune_after_block=2",
                   "--optimizer=momentum", "--train_steps=6", f"--model_dir={model_dir}", *TINY,
                   check=False)
    assert "/nonexistent-is-not-read does not exist" in proc.stderr  # a wrong path is still refused
    proc = run_cli("--mode=train", "--train_mode=finetune", "--label_fraction=0.1", "--ft_proj_selector=1",
                   "--fine_tune_after_block=2", "--optimizer=momentum", "--train_steps=6",
                   f"--model_dir={model_dir}", *TINY)
    assert "Fine-tuning steps 4..6" in proc.stderr
    assert checkpoint_steps(model_dir) == [2, 4, 6]
    assert sorted(os.listdir(os.path.join(model_dir, "saved_model"))) == ["6"]  # keep_hub_module_max=1


@pytest.mark.slow
def test_distill_from_the_finetuned_run_then_export_on_demand(finetuned_run, tmp_path):
    teacher_dir, _ = finetuned_run
    model_dir = str(tmp_path / "distill")
    proc = run_cli("--mode=train_then_eval", "--train_mode=distill", f"--teacher_checkpoint={teacher_dir}",
                   "--ft_proj_selector=1", "--train_steps=4", f"--model_dir={model_dir}", *TINY)
    assert "Classifier on test: top-1" in proc.stdout
    result = json.load(open(os.path.join(model_dir, "result.json")))
    assert 0.0 <= result["teacher_agreement"] <= 1.0
    assert os.path.isdir(os.path.join(model_dir, "saved_model", "4"))
    # The teacher never trains, so it is loaded without an optimizer; the student loads cleanly.
    from simclr_tf.persistence.pretrained import load_trained_model
    assert "Skipping variable loading" not in proc.stderr
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        student = load_trained_model(model_dir)
    assert type(student).__name__ == "SimCLRClassifier"
    assert not [w for w in caught if "Skipping variable loading" in str(w.message)]

    # --mode=export of another run's newest checkpoint.
    export_dir = str(tmp_path / "export")
    proc = run_cli("--mode=export", f"--checkpoint={teacher_dir}", f"--model_dir={export_dir}", *TINY)
    assert "Exported" in proc.stdout
    import tensorflow as tf
    loaded = tf.saved_model.load(os.path.join(export_dir, "saved_model", "0"))
    outputs = loaded.signatures["serving_default"](tf.zeros([2, 16, 16, 3]))
    assert outputs["logits_sup"].shape == (2, 10)


@pytest.mark.parametrize("args, message", [
    (["--train_mode=distill"], "--teacher_checkpoint"),
    (["--train_mode=finetune", "--label_fraction=0.1", "--labels_per_class=5"], "set only one"),
    (["--label_fraction=0.1"], "applies to --train_mode=finetune"),
    (["--variable_schema=head"], "--variable_schema"),
])
def test_invalid_semi_supervised_settings_fail_before_training(tmp_path, args, message):
    proc = run_cli("--mode=train", "--train_steps=2", f"--model_dir={tmp_path}", *TINY, *args, check=False)
    assert proc.returncode != 0 and message in proc.stderr


FLAG_FILES = sorted(os.listdir(os.path.join(REPO, "flags")))


def flag_file_train_mode(flag_file):
    with open(os.path.join(REPO, "flags", flag_file)) as f:
        modes = [line.strip().split("=", 1)[1] for line in f if line.startswith("--train_mode=")]
    return modes[0] if modes else "pretrain"


def flag_file_image_size(flag_file):
    with open(os.path.join(REPO, "flags", flag_file)) as f:
        sizes = [int(line.strip().split("=", 1)[1]) for line in f if line.startswith("--image_size=")]
    return sizes[0] if sizes else 224


@pytest.mark.slow
@pytest.mark.parametrize("flag_file", FLAG_FILES)
def test_every_flag_file_runs_a_step(tmp_path, flag_file, pretrained_run, finetuned_run):
    """Each flag file, with its data and sizes made tiny, trains a step and evaluates (no export: the
    export of each architecture is tested in test_export.py, and it is the slowest part of a tiny run)."""
    train_mode = flag_file_train_mode(flag_file)
    starts = {"pretrain": [], "finetune": [f"--checkpoint={pretrained_run}"],
              "distill": [f"--teacher_checkpoint={finetuned_run[0]}"]}[train_mode]
    # Fine-tuning and distillation use the tiny CIFAR-stem encoders of the fixtures: keep them at 16 px.
    # (TF 2.21's oneDNN kernels crash on 8-channel CIFAR-stem ResNets at 48 px and more; see README.)
    size = 16 if train_mode != "pretrain" else min(64, flag_file_image_size(flag_file))
    proc = run_cli("--mode=train_then_eval", f"--flagfile=flags/{flag_file}",
                   "--dataset=builtin_shapes", "--eval_split=test", "--width_multiplier=0.0625",
                   f"--image_size={size}",
                   "--train_batch_size=8", "--train_steps=1", "--eval_batch_size=8", "--eval_steps=1",
                   "--norandom_encoder_baseline", "--keep_hub_module_max=0", "--verbose=0",
                   f"--model_dir={tmp_path}", *starts)
    assert "on test: top-1" in proc.stdout
    assert checkpoint_steps(str(tmp_path)) == [1]
    assert not os.path.exists(os.path.join(tmp_path, "saved_model"))


@pytest.mark.slow
def test_the_run_in_model_dir_and_its_record_are_guarded(pretrained_run, tmp_path):
    """A second process, contradicting flags and --mode=eval leave the run and its config.json as they
    were; a dead process's lock and export are cleaned up by the next run, which reports its progress."""
    import shutil
    import socket
    import time

    model_dir = str(tmp_path / "run")
    shutil.copytree(pretrained_run, model_dir)
    config_file, lock_file = os.path.join(model_dir, "config.json"), os.path.join(model_dir, "run.lock")
    record = open(config_file).read()

    def write_lock(pid):
        with open(lock_file, "w") as f:
            json.dump({"host": socket.gethostname(), "pid": pid, "start_time": time.time()}, f)

    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        write_lock(holder.pid)
        proc = run_cli("--mode=train", "--train_steps=6", f"--model_dir={model_dir}", *TINY, check=False)
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode == 1 and f"is in use by another run: pid {holder.pid} on host" in proc.stderr
    assert "Traceback" not in proc.stderr

    proc = run_cli("--mode=train", "--train_steps=6", f"--model_dir={model_dir}", *TINY,
                   "--train_batch_size=32", "--optimizer=momentum", "--width_multiplier=0.25", check=False)
    assert proc.returncode == 1 and "Pretraining steps" not in proc.stderr
    for part in ("--width_multiplier=0.25 (the run has 0.125)", "--optimizer='momentum' (the run has 'lars')",
                 "--train_batch_size=32 (the run has 16)", "pass a new --model_dir"):
        assert part in proc.stderr, part

    run_cli("--mode=eval", "--train_steps=4", "--eval_steps=1", f"--model_dir={model_dir}", *TINY)
    assert open(config_file).read() == record and checkpoint_steps(model_dir) == [2, 4]

    # The holder is dead now; an export it was writing is left over. A longer schedule is allowed.
    os.makedirs(os.path.join(model_dir, "saved_model", ".partial-3"))
    proc = run_cli("--mode=train", "--train_steps=6", f"--model_dir={model_dir}", *TINY, "--verbose=2",
                   "--log_every_steps=1")
    assert f"Taking over {lock_file}: the run that held it (pid {holder.pid}" in proc.stderr
    # With --checkpoint_steps=2 Keras's epochs are 2 steps long; the progress counts the run's steps.
    assert "Step 5/6 (83%), first step" in proc.stderr
    assert "Step 6/6 (100%), " in proc.stderr and "steps/s" in proc.stderr and "left" in proc.stderr
    assert checkpoint_steps(model_dir) == [2, 4, 6] and not os.path.exists(lock_file)
    assert os.listdir(os.path.join(model_dir, "saved_model")) == ["6"]
    assert json.load(open(config_file))["train"]["train_steps"] == 6
