"""SIGINT/SIGTERM during fit stop the run at the end of the step in flight; elsewhere, or on a second signal,
at once. (run.py end to end: tests/test_preemption.py.)"""
import os
import signal
import time

import keras
import numpy as np
import pytest

from simclr_tf import interrupts


@pytest.fixture
def handlers_installed():
    previous = {signum: signal.getsignal(signum) for signum in interrupts.STOP_SIGNALS}
    interrupts.install_handlers()
    yield
    for signum, handler in previous.items():
        signal.signal(signum, handler)


class SignalBeforeBatch(keras.callbacks.Callback):
    def __init__(self, batch, signals):
        super().__init__()
        self.batch, self.signals = batch, signals

    def on_train_batch_begin(self, batch, logs=None):
        if batch == self.batch:
            for signum in self.signals:
                os.kill(os.getpid(), signum)


def fit_with(callbacks):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    with interrupts.steps_finish_before_stopping():
        model.fit(np.zeros((64, 2)), np.zeros((64, 1)), batch_size=8, epochs=1, verbose=0,
                  callbacks=callbacks + [interrupts.StopOnSignal()])
    return model


@pytest.mark.parametrize("signum", interrupts.STOP_SIGNALS)
def test_a_signal_during_fit_lets_that_step_finish_then_stops(handlers_installed, signum):
    callbacks = [SignalBeforeBatch(2, [signum])]
    with pytest.raises(KeyboardInterrupt):
        fit_with(callbacks)
    model = callbacks[0].model
    assert int(model.optimizer.iterations.numpy()) == 3  # the third step (batch 2) ran to its end


def test_a_second_signal_stops_at_once(handlers_installed):
    callbacks = [SignalBeforeBatch(2, [signal.SIGTERM, signal.SIGINT])]
    with pytest.raises(KeyboardInterrupt):
        fit_with(callbacks)
    assert int(callbacks[0].model.optimizer.iterations.numpy()) == 2  # batch 2 never ran


def test_outside_fit_a_signal_stops_at_once(handlers_installed):
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    model = fit_with([])  # no signal: fit runs to the end and nothing is left pending
    assert int(model.optimizer.iterations.numpy()) == 8
