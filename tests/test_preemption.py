"""run.py survives being stopped: SIGKILL at a random moment, Ctrl-C (SIGINT), SIGTERM (a preemption notice).

After each stop every checkpoint left in model_dir loads, and the same command resumes from the newest one and
ends at the requested step.
"""
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from simclr_tf.persistence import checkpoints
from tests.test_cli import REPO, TINY, checkpoint_steps
from tests.test_multiworker import _tiny_run_model

# Long enough that a signal sent well into the run still finds training left (a tiny step takes a few
# tens of ms: 30 steps once ended before a SIGTERM sent 0.3 s after a checkpoint).
TRAIN_STEPS = 150
STEP_RANGE = re.compile(r"steps (\d+)\.\.(\d+)")


def command(model_dir):
    # Checkpoints every 2 steps (TINY), so a random kill often lands while one is being written.
    return [sys.executable, "run.py", "--mode=train", f"--train_steps={TRAIN_STEPS}",
            f"--model_dir={model_dir}", *TINY, "--lineareval_while_pretraining=false"]


def start(model_dir, log_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.Popen(command(model_dir), cwd=REPO, env=env, stdout=open(log_path, "w"),
                            stderr=subprocess.STDOUT)


def wait_for_first_checkpoint(proc, model_dir, log_path, timeout=240):
    deadline = time.time() + timeout
    while not (os.path.isdir(model_dir) and checkpoint_steps(model_dir)):
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise AssertionError(f"no checkpoint appeared:\n{open(log_path).read()[-3000:]}")
        time.sleep(0.05)


def assert_every_checkpoint_loads(model_dir):
    model = _tiny_run_model()
    for step in checkpoint_steps(model_dir):
        checkpoints.restore(model, checkpoints.checkpoint_path(model_dir, step))
        assert int(model.optimizer.iterations.numpy()) == step
        assert all(np.all(np.isfinite(w.numpy())) for w in model.weights)


def resume_to_the_end(model_dir, log_path):
    """Runs the same command again; returns the step it resumed from."""
    newest = checkpoint_steps(model_dir)[-1]
    proc = start(model_dir, log_path)
    assert proc.wait(timeout=300) == 0, open(log_path).read()[-3000:]
    output = open(log_path).read()
    assert f"Restored {checkpoints.checkpoint_path(model_dir, newest)}" in output
    assert STEP_RANGE.findall(output) == [(str(newest), str(TRAIN_STEPS))]
    assert checkpoint_steps(model_dir)[-1] == TRAIN_STEPS
    assert not [name for name in os.listdir(model_dir) if ".partial" in name]
    return newest


@pytest.mark.slow
def test_sigkill_at_a_random_moment_then_the_same_command_resumes(tmp_path):
    model_dir = str(tmp_path / "run")
    delay = np.random.default_rng(20240611).uniform(0.0, 2.0)  # Seeded: the same moment on every run.
    proc = start(model_dir, tmp_path / "first.log")
    wait_for_first_checkpoint(proc, model_dir, tmp_path / "first.log")
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    left = checkpoint_steps(model_dir)
    assert left and left[-1] < TRAIN_STEPS, "the kill came too late to interrupt training"
    assert_every_checkpoint_loads(model_dir)
    assert resume_to_the_end(model_dir, tmp_path / "second.log") == left[-1]


INTERRUPTED = re.compile(r"Interrupted at step (\d+)")


@pytest.mark.slow
def test_ctrl_c_and_sigterm_stop_cleanly_save_the_step_and_resume(tmp_path):
    model_dir = str(tmp_path / "run")
    for round_, signum in enumerate((signal.SIGINT, signal.SIGTERM)):
        log_path = tmp_path / f"run{round_}.log"
        before = checkpoint_steps(model_dir)[-1] if os.path.isdir(model_dir) else 0
        proc = start(model_dir, log_path)
        deadline = time.time() + 240
        while not (os.path.isdir(model_dir) and checkpoint_steps(model_dir)[-1:] > [before]):
            assert proc.poll() is None and time.time() < deadline, open(log_path).read()[-3000:]
            time.sleep(0.05)
        time.sleep(0.3)  # Between checkpoints, most likely.
        proc.send_signal(signum)
        assert proc.wait(timeout=60) == 130, open(log_path).read()[-3000:]
        output = open(log_path).read()
        assert "Interrupted. Run the same command again to resume" in output
        assert "Traceback" not in output
        # The step reached is saved (at a step boundary), unless it was just saved by the periodic callback.
        interrupted_at = int(INTERRUPTED.findall(output)[-1])
        assert before < interrupted_at < TRAIN_STEPS
        assert checkpoint_steps(model_dir)[-1] == interrupted_at
    assert_every_checkpoint_loads(model_dir)
    assert resume_to_the_end(model_dir, tmp_path / "last.log") == interrupted_at
