"""A diverging run stops at the first NaN/Inf loss with a message, exits non-zero, and keeps the last good
checkpoint as the latest (it loads, with finite weights); a checkpoint whose optimizer state does not fit
is refused instead of silently restarting at step 0; an unwritable model_dir or a full disk is reported
before training starts."""
import dataclasses
import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest

from simclr_tf.persistence import checkpoints
from simclr_tf import config as config_lib
from simclr_tf import optimizers
from simclr_tf.models.simclr import build_simclr_model
from tests.test_cli import REPO, TINY, checkpoint_steps, run_cli


def file_digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_nan_loss_stops_without_checkpointing_the_diverged_state(tmp_path):
    model_dir = str(tmp_path / "run")
    # A good run to step 2, in bfloat16 with XLA (flag plumbing; its checkpoint resumes in float32).
    proc = run_cli("--mode=train", "--train_steps=2", f"--model_dir={model_dir}", *TINY,
                   "--precision=mixed_bfloat16", "--jit_compile=True")
    assert "Training in mixed_bfloat16 with XLA" in proc.stderr
    assert checkpoint_steps(model_dir) == [2]
    good = checkpoints.checkpoint_path(model_dir, 2)
    digest = file_digest(good)

    # Resuming with an absurd learning rate: step 3 blows the weights up (LARS moves batch-norm scales by
    # lr x gradient), so the loss of step 4 overflows to NaN; the checkpoint due at step 4 must not appear.
    # (A run's config.json refuses another --learning_rate on resume: remove the record, as for checkpoints
    # copied without it.)
    os.remove(os.path.join(model_dir, "config.json"))
    proc = run_cli("--mode=train", "--train_steps=6", f"--model_dir={model_dir}", *TINY,
                   "--learning_rate=1e30", check=False)
    assert proc.returncode != 0
    assert "Training diverged at step 4: " in proc.stderr and "loss=nan" in proc.stderr
    assert "--learning_rate" in proc.stderr and "--precision=float32" in proc.stderr
    assert f"The newest checkpoint, {good}, is from before the divergence" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert checkpoint_steps(model_dir) == [2] and file_digest(good) == digest

    # Resuming under mixed_float16 (loss-scale variables in the optimizer) is refused, not restarted at 0.
    proc = run_cli("--mode=train", "--train_steps=6", f"--model_dir={model_dir}", *TINY,
                   "--learning_rate=1e30", "--precision=mixed_float16", check=False)
    assert proc.returncode != 0 and "does not fit this run's optimizer" in proc.stderr
    assert checkpoint_steps(model_dir) == [2]

    cfg = config_lib.Config.from_dict({"model": {"resnet_depth": 18, "width_multiplier": 0.125,
                                                 "num_proj_layers": 2, "proj_out_dim": 16}})
    model = build_simclr_model(cfg.model, 16, num_classes=10, temperature=0.5, hidden_norm=True,
                               weight_decay=1e-6, optimizer_name="lars")
    schedule = optimizers.WarmUpAndCosineDecay(0.5, 1000, 16, warmup_epochs=0, train_steps=6)
    model.compile(optimizer=optimizers.build_optimizer("lars", schedule, weight_decay=1e-6))
    checkpoints.restore(model, checkpoints.latest_checkpoint(model_dir)[1])
    assert int(model.optimizer.iterations.numpy()) == 2
    assert all(np.all(np.isfinite(w.numpy())) for w in model.weights)


def test_writable_model_dir_is_created_and_the_probe_removed(tmp_path):
    model_dir = tmp_path / "a" / "b"
    checkpoints.check_writable(str(model_dir), needed_bytes=1)
    assert model_dir.is_dir() and os.listdir(model_dir) == []


def test_model_dir_under_a_regular_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    model_dir = str(tmp_path / "file" / "run")
    with pytest.raises(config_lib.ConfigError, match=f"Cannot write to --model_dir={model_dir}.*Point"):
        checkpoints.check_writable(model_dir)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories anyway")
def test_read_only_model_dir_is_refused(tmp_path):
    model_dir = tmp_path / "read_only"
    model_dir.mkdir()
    model_dir.chmod(0o555)
    try:
        with pytest.raises(config_lib.ConfigError, match="Permission denied.*fix its permissions"):
            checkpoints.check_writable(str(model_dir))
    finally:
        model_dir.chmod(0o755)


def _sysfs_directory():
    """A directory nobody, root included, can create files in (sysfs), or None."""
    path = "/sys/kernel"
    if not os.path.isdir(path):
        return None
    try:
        open(os.path.join(path, "simclr_tf_probe"), "w").close()
    except OSError:
        return path
    os.remove(os.path.join(path, "simclr_tf_probe"))
    return None


@pytest.mark.skipif(_sysfs_directory() is None, reason="needs Linux sysfs")
def test_a_directory_that_refuses_new_files_is_refused_even_as_root():
    with pytest.raises(config_lib.ConfigError, match="Cannot write to --model_dir=/sys/kernel"):
        checkpoints.check_writable(_sysfs_directory())


def test_too_little_free_space_is_refused_with_the_sizes(tmp_path, monkeypatch):
    import shutil

    real = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real._replace(free=3 * 2**20))
    checkpoints.check_writable(str(tmp_path), needed_bytes=2 * 2**20)
    with pytest.raises(config_lib.ConfigError,
                       match=r"has 3\.0 MiB free, but this run's checkpoints need about 5\.0 MiB.*"
                             r"--keep_checkpoint_max"):
        checkpoints.check_writable(str(tmp_path), needed_bytes=5 * 2**20)


def test_unwritable_model_dir_fails_before_training(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    model_dir = str(tmp_path / "file" / "run")
    proc = run_cli("--mode=train", "--train_steps=2", f"--model_dir={model_dir}", *TINY, check=False)
    assert proc.returncode != 0
    assert f"Cannot write to --model_dir={model_dir}" in proc.stderr
    assert "Traceback" not in proc.stderr and "Pretraining steps" not in proc.stderr


def _mount_tmpfs(path, size):
    path.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                              capture_output=True)
    except OSError:
        return False
    return done.returncode == 0


# The estimate of a checkpoint's size is patched to 0, as if another process filled the disk after the
# checks: the write itself then fails for lack of space (h5py), which used to end in a traceback and a
# segmentation fault (exit 139).
_RUN_WITH_A_LOW_ESTIMATE = """
import runpy, sys
from simclr_tf.persistence import checkpoints
checkpoints.estimated_checkpoint_bytes = lambda model: 0
sys.argv = ["run.py"] + sys.argv[1:]
runpy.run_path("run.py", run_name="__main__")
"""


@pytest.mark.slow
def test_a_disk_that_fills_during_a_checkpoint_write_gives_one_line_and_exit_1(tmp_path):
    model_dir = tmp_path / "small_disk"
    # 2.5 MB: room for the first checkpoint of the tiny model (1.7 MB), not for a second beside it.
    if os.geteuid() != 0 or not _mount_tmpfs(model_dir, "2500k"):
        pytest.skip("needs root and tmpfs to make a small disk")
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _RUN_WITH_A_LOW_ESTIMATE, "--mode=train", "--train_steps=4",
             f"--model_dir={model_dir}", "--keep_checkpoint_max=1", *TINY],
            cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True, timeout=600)
        assert proc.returncode == 1, proc.stderr[-3000:]
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and errors[0].startswith(
            f"error: No space left in {model_dir} for the checkpoint of step 4: it needs about"), errors
        assert "Traceback" not in proc.stderr
        assert checkpoint_steps(str(model_dir)) == [2]
        assert not [name for name in os.listdir(model_dir) if "partial" in name]
        assert checkpoints.damage(checkpoints.checkpoint_path(str(model_dir), 2)) is None
    finally:
        subprocess.run(["umount", str(model_dir)], check=False)


def test_an_empty_eval_split_is_found_before_training_and_one_class_is_warned(tmp_path, caplog):
    import tensorflow as tf

    from simclr_tf import train
    from simclr_tf.data import sources

    for name in ("0.png", "1.png"):  # one class folder; neither path hashes into the held-out 10%
        os.makedirs(tmp_path / "photos" / "only_class", exist_ok=True)
        tf.io.write_file(str(tmp_path / "photos" / "only_class" / name),
                         tf.io.encode_png(np.zeros((8, 8, 3), np.uint8)))
    source = sources.get_source(str(tmp_path / "photos"), eval_split="validation")
    assert source.info.num_examples == {"train": 2, "validation": 0} and source.info.num_classes == 1
    cfg = config_lib.Config(data=config_lib.DataConfig(dataset=str(tmp_path / "photos")),
                            train=config_lib.TrainConfig(model_dir=str(tmp_path / "run"),
                                                         mode="train_then_eval"))
    with pytest.raises(config_lib.ConfigError, match="--eval_split=validation of .* has no examples.*"
                                                     "--eval_split=test.*--mode=train"):
        train._check_data_for_evaluation(cfg, source)
    with caplog.at_level("WARNING"):
        train._check_data_for_evaluation(dataclasses.replace(
            cfg, train=dataclasses.replace(cfg.train, mode="train")), source)
    assert "has a single class" in caplog.text and "100%" in caplog.text


def test_a_weights_file_checkpoint_that_misfits_or_is_truncated_gets_a_clear_message(tmp_path):
    from simclr_tf import train
    from simclr_tf.persistence import pretrained

    def compiled(width):
        model_cfg = config_lib.ModelConfig(resnet_depth=18, width_multiplier=width, num_proj_layers=2,
                                           proj_out_dim=16)
        model = build_simclr_model(model_cfg, 16, num_classes=0, temperature=0.5, hidden_norm=True,
                                   weight_decay=0.0, optimizer_name="momentum", seed=0)
        model.compile(optimizer=optimizers.build_optimizer("momentum", 0.1))
        return model

    model_dir = str(tmp_path)
    path = checkpoints.save(compiled(0.125), model_dir, 1, keep_max=1)
    pretrained.write_model_config(compiled(0.125), model_dir, 16)
    # --checkpoint=ckpt-N.weights.h5 with other model flags: the message of the run-directory form.
    with pytest.raises(config_lib.ConfigError,
                       match=f"The model of --checkpoint={path} does not match this run's architecture; "
                             "set the model flags"):
        train._start_pretraining_from(compiled(0.0625), path)
    with open(path, "r+b") as f:
        f.truncate(4096)
    for load in (lambda: train._start_pretraining_from(compiled(0.125), path),  # pretraining from it
                 lambda: pretrained.load_trained_model(path)):  # fine-tuning or distilling from it
        with pytest.raises(checkpoints.DamagedCheckpointError, match=f"The checkpoint {path} is damaged"):
            load()
