"""What only TensorFlow has: tf.function tracing of a perturbed step."""

import warnings

import keras
import pytest
from conftest import LOSS, small_model, toy_data

import keras_pacgen as kp

PERT = dict(eta=0.01, gamma=1.0, grad_threshold=10.0, seed=5)


def fit(opt, epochs=2, jit=False, callbacks=None):
    x, y = toy_data()
    model = small_model()
    model.compile(optimizer=opt, loss=LOSS, jit_compile=jit)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(x, y, batch_size=32, epochs=epochs, shuffle=False, verbose=0,
                  callbacks=callbacks or [])
    return model


@pytest.mark.parametrize("jit", [False, True])
def test_no_retrace_after_the_first_epoch(jit):
    """The epoch counter is a variable: later epochs reuse the first epoch's trace."""
    opt = kp.PerturbedAdam(learning_rate=1e-2, **PERT)
    traces = []
    original = opt._step

    def counting(*args, **kwargs):
        traces.append(1)
        return original(*args, **kwargs)

    opt._step = counting
    per_epoch = []
    record = keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: per_epoch.append(len(traces)))
    fit(opt, epochs=4, jit=jit, callbacks=[kp.PerturbationCallback(), record])
    assert per_epoch[0] >= 1 and per_epoch == [per_epoch[0]] * 4
    assert per_epoch[0] <= 2  # tf.function may trace twice on its first call, as it does for Adam
    assert int(opt.epoch.numpy()) == 4  # the epoch advanced without retracing
