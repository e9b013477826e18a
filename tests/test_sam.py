"""SharpnessAwareMinimization against a numpy SAM on a quadratic, with XLA, saved and loaded."""

import keras
import numpy as np
import pytest

import keras_pacgen as kp

N, D, LR, RHO = 32, 4, 0.1, 0.05


def problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, D)).astype("float32")
    y = (x @ rng.normal(size=(D, 1)) + 0.1 * rng.normal(size=(N, 1))).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((D,)), keras.layers.Dense(1, use_bias=False)])
    return model, x, y


def numpy_sam(w, x, y, steps, adaptive):
    x, y, w = x.astype(np.float64), y.astype(np.float64), w.astype(np.float64)

    def grad(w):
        return 2.0 / N * x.T @ (x @ w - y)  # mse over one output

    for _ in range(steps):
        g = grad(w)
        if adaptive:
            t = np.abs(w) + 0.01
            e = RHO * t * t * g / np.linalg.norm(t * g)
        else:
            e = RHO * g / np.linalg.norm(g)
        w = w - LR * grad(w + e)
    return w


@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("jit", [False, True])
def test_three_steps_match_numpy_sam(adaptive, jit):
    model, x, y = problem()
    w0 = model.get_weights()[0]
    sam = kp.SharpnessAwareMinimization(model, rho=RHO, adaptive=adaptive)
    sam.compile(optimizer=keras.optimizers.SGD(LR), loss="mse", jit_compile=jit)
    history = sam.fit(x, y, batch_size=N, epochs=3, shuffle=False, verbose=0)
    expected = numpy_sam(w0, x, y, 3, adaptive)
    np.testing.assert_allclose(model.get_weights()[0], expected, rtol=1e-5, atol=1e-6)
    # SAM's step is not plain SGD's
    plain = w0.astype(np.float64)
    for _ in range(3):
        plain = plain - LR * 2.0 / N * x.T @ (x @ plain - y)
    assert np.max(np.abs(expected - plain)) > 1e-4
    assert len(history.history["loss"]) == 3 and history.history["loss"][0] > history.history["loss"][-1]


def test_saves_loads_and_continues_identically(tmp_path):
    model, x, y = problem()
    sam = kp.SharpnessAwareMinimization(model, rho=RHO, adaptive=True)
    sam.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse", metrics=["mae"])
    sam.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    path = str(tmp_path / "sam.keras")
    sam.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, kp.SharpnessAwareMinimization)
    assert (loaded.rho, loaded.adaptive) == (RHO, True)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), sam.predict(x, verbose=0))
    for m in (sam, loaded):
        m.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    np.testing.assert_allclose(loaded.model.get_weights()[0], sam.model.get_weights()[0], rtol=1e-6)


def test_bad_arguments():
    model, _, _ = problem()
    with pytest.raises(ValueError, match="`rho`"):
        kp.SharpnessAwareMinimization(model, rho=0.0)
    with pytest.raises(ValueError, match="`model`"):
        kp.SharpnessAwareMinimization("model")
