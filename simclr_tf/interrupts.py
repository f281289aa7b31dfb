"""Stopping a run on SIGINT (Ctrl-C) or SIGTERM (a preemption notice) at a step boundary.

Inside `steps_finish_before_stopping()` (around `fit`), the signal handler only records the signal and
`StopOnSignal` raises KeyboardInterrupt at the end of the step in flight, from ordinary Python code: the
interruption can neither land inside a checkpoint being written nor be lost in a finalizer or a C callback
(where Python discards exceptions). Elsewhere (data preparation, evaluation, export), and on a second
signal, the handler raises KeyboardInterrupt at once. `run.py` turns KeyboardInterrupt into exit code 130.
"""
import contextlib
import signal

import keras

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _State:
    deferring = False  # inside steps_finish_before_stopping()
    signum = None  # the signal received there, if any


def _on_signal(signum, frame):
    if _State.deferring and _State.signum is None:
        _State.signum = signum
        return
    raise KeyboardInterrupt(f"signal {signum}")


def install_handlers():
    """SIGINT and SIGTERM stop the run (also when the parent process left SIGINT ignored)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, _on_signal)


def _raise_if_signalled():
    if _State.signum is not None:
        signum, _State.signum = _State.signum, None
        raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def steps_finish_before_stopping():
    """Defers SIGINT/SIGTERM to the next `StopOnSignal` check (or the end of the block)."""
    _State.deferring, _State.signum = True, None
    try:
        yield
    finally:
        _State.deferring = False
    _raise_if_signalled()


class StopOnSignal(keras.callbacks.Callback):
    """Raises KeyboardInterrupt at the end of the step during which SIGINT or SIGTERM arrived.

    Put it after the checkpoint callback: a step that is due for a checkpoint is saved first.
    """

    def on_train_batch_end(self, batch, logs=None):
        _raise_if_signalled()

    def on_train_end(self, logs=None):
        _raise_if_signalled()
