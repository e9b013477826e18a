"""SharpnessAwareMinimization against a numpy SAM on a quadratic, with XLA, saved and loaded."""

import keras
import numpy as np
import pytest
from conftest import JIT

import keras_pacgen as kp

N, D, LR, RHO = 32, 4, 0.1, 0.05


def problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, D)).astype("float32")
    y = (x @ rng.normal(size=(D, 1)) + 0.1 * rng.normal(size=(N, 1))).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((D,)), keras.layers.Dense(1, use_bias=False)])
    return model, x, y


def numpy_sam(w, x, y, steps, adaptive, splits=1, sample_weight=None, l2=0.0):
    """SAM on mse + l2 ‖w‖², the loss as Keras reduces it (Σ sw·ℓ / n); m-sharpness: one ε per
    part, the parts' gradients at their w + ε averaged by size."""
    x, y, w = x.astype(np.float64), y.astype(np.float64), w.astype(np.float64)
    sw = np.ones(len(x)) if sample_weight is None else sample_weight.astype(np.float64)

    def grad(w, part):
        xs, ys, ss = x[part], y[part], sw[part][:, None]
        return 2.0 / len(xs) * xs.T @ (ss * (xs @ w - ys)) + 2.0 * l2 * w

    n = len(x)
    parts = [np.arange(n * i // splits, n * (i + 1) // splits) for i in range(splits)]
    for _ in range(steps):
        update = np.zeros_like(w)
        for part in parts:
            g = grad(w, part)
            if adaptive:
                t = np.abs(w) + 0.01
                e = RHO * t * t * g / np.linalg.norm(t * g)
            else:
                e = RHO * g / np.linalg.norm(g)
            update += len(part) / len(x) * grad(w + e, part)
        w = w - LR * update
    return w


@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("jit", JIT)
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


@pytest.mark.parametrize("splits", [1, 2, 3])
def test_sample_weights_regularization_and_m_sharpness_in_both_passes(splits):
    rng = np.random.default_rng(1)
    x, y = problem()[1:]
    sw = rng.uniform(0.2, 2.0, size=N).astype("float32")
    l2 = 0.05
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((D,)), keras.layers.Dense(
        1, use_bias=False, kernel_regularizer=keras.regularizers.L2(l2))])
    w0 = model.get_weights()[0]
    sam = kp.SharpnessAwareMinimization(model, rho=RHO, num_batch_splits=splits)
    sam.compile(optimizer=keras.optimizers.SGD(LR), loss="mse", jit_compile=False)
    sam.fit(x, y, sample_weight=sw, batch_size=N, epochs=3, shuffle=False, verbose=0)
    expected = numpy_sam(w0, x, y, 3, False, splits=splits, sample_weight=sw, l2=l2)
    np.testing.assert_allclose(model.get_weights()[0], expected, rtol=1e-5, atol=1e-6)
    if splits > 1:  # one ε per part is not one ε per batch
        whole = numpy_sam(w0, x, y, 3, False, sample_weight=sw, l2=l2)
        assert np.max(np.abs(expected - whole)) > 1e-5


def test_second_pass_leaves_batchnorm_statistics_and_dropout_seed_advances():
    x, y = problem()[1:]

    def make():
        keras.utils.set_random_seed(3)
        return keras.Sequential([keras.Input((D,)), keras.layers.Dense(8),
                                 keras.layers.BatchNormalization(momentum=0.5),
                                 keras.layers.Dropout(0.5, seed=1), keras.layers.Dense(1)])

    model, reference = make(), make()
    sam = kp.SharpnessAwareMinimization(model, rho=0.5)
    sam.compile(optimizer=keras.optimizers.SGD(LR), loss="mse")
    seed_before = [v.numpy().copy() for v in model.non_trainable_variables if "int" in v.dtype]
    sam.train_on_batch(x, y)
    reference(x, training=True)  # one forward pass at the clean weights: the first pass
    for ours, expected in zip(model.layers[1].non_trainable_variables,
                              reference.layers[1].non_trainable_variables):
        np.testing.assert_allclose(ours.numpy(), expected.numpy(), rtol=1e-6, atol=1e-7)
    seed_after = [v.numpy() for v in model.non_trainable_variables if "int" in v.dtype]
    assert seed_before and not all(np.array_equal(a, b) for a, b in zip(seed_before, seed_after))


def test_saves_loads_and_continues_identically(tmp_path):
    model, x, y = problem()
    sam = kp.SharpnessAwareMinimization(model, rho=RHO, adaptive=True, num_batch_splits=2)
    sam.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse", metrics=["mae"])
    sam.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    path = str(tmp_path / "sam.keras")
    sam.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, kp.SharpnessAwareMinimization)
    assert (loaded.rho, loaded.adaptive, loaded.num_batch_splits) == (RHO, True, 2)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), sam.predict(x, verbose=0))
    for m in (sam, loaded):
        m.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    np.testing.assert_allclose(loaded.model.get_weights()[0], sam.model.get_weights()[0], rtol=1e-6)


def test_bad_arguments():
    model, _, _ = problem()
    with pytest.raises(ValueError, match="`rho`"):
        kp.SharpnessAwareMinimization(model, rho=0.0)
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="`num_batch_splits` must be an integer >= 1 or None"):
            kp.SharpnessAwareMinimization(model, num_batch_splits=bad)
    with pytest.raises(ValueError, match="`model`"):
        kp.SharpnessAwareMinimization("model")


def test_weights_are_put_back_exactly_after_the_second_pass():
    x, y = problem()[1:]
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((D,)), keras.layers.Dense(64, activation="tanh"),
                              keras.layers.Dense(1)])
    before = model.get_weights()
    sam = kp.SharpnessAwareMinimization(model, rho=0.3)
    sam.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    sam.train_on_batch(x, y)  # learning rate 0: the step moves nothing, so w is w bit for bit
    for after, expected in zip(model.get_weights(), before):  # (w + ε) − ε would not be
        np.testing.assert_array_equal(after, expected)
