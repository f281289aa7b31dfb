"""A diverging run stops at the first NaN/Inf loss with a message, exits non-zero, and keeps the last good
checkpoint as the latest (it loads, with finite weights); a checkpoint whose optimizer state does not fit
is refused instead of silently restarting at step 0."""
import hashlib
import os

import numpy as np

from simclr_tf import checkpoints
from simclr_tf import config as config_lib
from simclr_tf import optimizers
from simclr_tf.models.simclr import build_simclr_model
from tests.test_cli import TINY, checkpoint_steps, run_cli


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
                   "--precision=mixed_float16", check=False)
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
