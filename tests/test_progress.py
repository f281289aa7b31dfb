"""Training progress counts the run's own steps (not Keras's checkpoint-interval "epochs") and reports the
time per step, steps/s and the time left."""
import io

from simclr_tf import progress


class FakeIterations:
    def __init__(self):
        self.value = 0

    def numpy(self):
        return self.value


class FakeModel:
    def __init__(self):
        self.optimizer = type("Optimizer", (), {})()
        self.optimizer.iterations = FakeIterations()


def drive(callback, steps, times):
    """Runs `callback` through `steps` (optimizer steps at each batch end) at the clock `times`."""
    model = FakeModel()
    callback.set_model(model)
    callback.on_train_begin()
    for step in steps:
        model.optimizer.iterations.value = step
        callback.on_train_batch_end(0, {"loss": 2.0})
    callback.on_train_end()


def clock(times):
    values = iter(times)
    return lambda: next(values)


def test_log_lines_give_the_real_step_rate_and_time_left(caplog):
    # Resumed at step 40 of 100; the first step (compilation) takes 20 s, then 0.5 s per step.
    # Each batch end reads the clock twice (report, then the output decision); begin and end once.
    times = [0.0] + [t for k in range(5) for t in (20.0 + 0.5 * k,) * 2] + [22.0]
    callback = progress.TrainingProgress(total_steps=100, start_step=40, every_steps=2, every_secs=0,
                                         bar=False, clock=clock(times))
    with caplog.at_level("INFO"):
        drive(callback, steps=[41, 42, 43, 44, 45], times=times)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Step ")]
    assert lines == [
        "Step 41/100 (41%), first step 20.0 s (tracing and compilation included), loss 2",
        "Step 43/100 (43%), 2.00 steps/s, 500 ms/step, 0:28 left, loss 2",  # 57 steps x 0.5 s = 28.5 s
        "Step 45/100 (45%), 2.00 steps/s, 500 ms/step, 0:28 left, loss 2",  # 55 x 0.5 = 27.5, rounded
    ]
    assert "Trained from step 40 to 45 in 0:22." in caplog.text


def test_log_lines_come_every_n_seconds_and_at_the_last_step(caplog):
    times = [0.0] + [t for s in (1.0, 2.0, 40.0, 41.0) for t in (s, s)] + [41.0]
    callback = progress.TrainingProgress(total_steps=4, every_secs=30, bar=False, clock=clock(times))
    with caplog.at_level("INFO"):
        drive(callback, steps=[1, 2, 3, 4], times=times)
    steps = [r.getMessage().split()[1] for r in caplog.records if r.getMessage().startswith("Step ")]
    assert steps == ["1/4", "3/4", "4/4"]  # first step, 39 s later, last step


def test_on_a_terminal_a_bar_is_redrawn_in_place():
    stream = io.StringIO()
    times = [0.0] + [t for s in (5.0, 6.0, 7.0) for t in (s, s)] + [7.0]
    callback = progress.TrainingProgress(total_steps=3, bar=True, stream=stream, clock=clock(times))
    drive(callback, steps=[1, 2, 3], times=times)
    frames = stream.getvalue().split("\r")[1:]
    assert len(frames) == 3 and stream.getvalue().endswith("\n")
    assert frames[-1].startswith("[" + "=" * progress.BAR_WIDTH + "] step 3/3 (100%), 1.00 steps/s, "
                                 "1.00 s/step, 0:00 left")
    assert frames[0].startswith("[" + "=" * 10 + ">" + "." * 19 + "] step 1/3 (33%)")
