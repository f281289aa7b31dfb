"""Training progress a person can follow: the run's real step count, time per step, steps/s and time left.

Keras's own progress output counts the steps of a Keras "epoch", which here is the checkpoint interval
(fit is called with `steps_per_epoch` equal to it, so that resuming is step-exact): with
`--checkpoint_steps=1000` and `--train_steps=100` it showed "1000/1000" and an average that included
the first step's compilation. `TrainingProgress` reports the optimizer's step out of the run's total
instead: a progress bar redrawn in place on a terminal, and elsewhere (a log file, a batch job) a log line
every `every_steps` steps or `every_secs` seconds, whichever comes first. The rate is measured over the
steps since the first one of this invocation (which includes tracing and compilation) and the time left
follows from it.
"""
import sys
import time

import keras
from absl import logging

BAR_WIDTH = 30
BAR_REDRAW_SECS = 0.5


def _duration(seconds):
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def _per_step(seconds):
    return f"{seconds * 1000:.0f} ms/step" if seconds < 1 else f"{seconds:.2f} s/step"


class TrainingProgress(keras.callbacks.Callback):
    """Reports the step out of `total_steps`, time per step, steps/s, time left and the loss.

    `bar`: redraw a bar on `stream` (None: when `stream` is a terminal); otherwise log a line every
    `every_steps` steps (0: never by count) or `every_secs` seconds (0: never by time), and at the last step.

    Example:
      >>> import io
      >>> clock = iter([0.0, 10.0, 12.0, 14.0]).__next__
      >>> progress = TrainingProgress(total_steps=4, start_step=0, every_steps=1, bar=False, clock=clock)
      >>> progress.on_train_begin()
      >>> for step in (1, 2, 3):
      ...     print(progress.report(step, {"loss": 1.5}))
      step 1/4 (25%), first step 10.0 s (tracing and compilation included), loss 1.5
      step 2/4 (50%), 0.50 steps/s, 2.00 s/step, 0:04 left, loss 1.5
      step 3/4 (75%), 0.50 steps/s, 2.00 s/step, 0:02 left, loss 1.5
    """

    def __init__(self, total_steps, start_step=0, every_steps=0, every_secs=30.0, bar=None,
                 stream=None, clock=time.monotonic):
        super().__init__()
        self.total_steps = int(total_steps)
        self.start_step = int(start_step)
        self.every_steps = int(every_steps)
        self.every_secs = float(every_secs)
        self.stream = stream or sys.stderr
        self.bar = bar if bar is not None else bool(getattr(self.stream, "isatty", lambda: False)())
        self.clock = clock
        self._first = None  # (step, time) at the end of this invocation's first step

    def on_train_begin(self, logs=None):
        self._begin = self.clock()
        self._last_output = self._begin
        self._last_step_reported = self.start_step
        self._first = None

    def report(self, step, logs=None):
        """The progress line at `step` (also the bar's text); records the time of the first step."""
        now = self.clock()
        if self._first is None:
            self._first = (step, now)
        total = max(self.total_steps, 1)
        parts = [f"step {step}/{self.total_steps} ({100 * step // total}%)"]
        first_step, first_time = self._first
        if step > first_step and now > first_time:
            per_step = (now - first_time) / (step - first_step)
            parts += [f"{1 / per_step:.2f} steps/s", _per_step(per_step),
                      f"{_duration(per_step * max(self.total_steps - step, 0))} left"]
        elif step == first_step:  # Its time includes tracing and compilation: not a rate to extrapolate.
            parts.append(f"first step {now - self._begin:.1f} s (tracing and compilation included)")
        loss = (logs or {}).get("loss")
        if loss is not None:
            parts.append(f"loss {float(loss):.4g}")
        return ", ".join(parts)

    def _step(self):
        return int(self.model.optimizer.iterations.numpy())

    def on_train_batch_end(self, batch, logs=None):
        step = self._step()
        text = self.report(step, logs)
        now = self.clock()
        last = step >= self.total_steps
        if self.bar:
            if last or now - self._last_output >= BAR_REDRAW_SECS or step == self._first[0]:
                done = BAR_WIDTH * min(step, self.total_steps) // max(self.total_steps, 1)
                bar = "=" * done + (">" if done < BAR_WIDTH else "") + "." * (BAR_WIDTH - done - 1)
                self.stream.write(f"\r[{bar}] {text}\033[K")
                self.stream.flush()
                self._last_output = now
            return
        due_steps = self.every_steps and step - self._last_step_reported >= self.every_steps
        due_secs = self.every_secs and now - self._last_output >= self.every_secs
        if last or due_steps or due_secs or step == self._first[0]:
            logging.info("%s", text[0].upper() + text[1:])
            self._last_output, self._last_step_reported = now, step

    def on_train_end(self, logs=None):
        if self.bar and self._first is not None:
            self.stream.write("\n")
            self.stream.flush()
        if self._first is not None:
            elapsed = self.clock() - self._begin
            logging.info("Trained from step %d to %d in %s.", self.start_step, self._step(),
                         _duration(elapsed))
