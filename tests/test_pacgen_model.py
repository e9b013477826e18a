"""pacgen_score, the PacGen metric and the PacGenCallback on real models."""


import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import LOSS, small_model, toy_data

import keras_pacgen as kp


def exact_hessian_diagonal(model, x, y):
    variables = model.trainable_variables
    flat = tf.concat([tf.reshape(v, [-1]) for v in variables], 0)
    sizes = [int(np.prod(v.shape)) for v in variables]
    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            loss = LOSS(y, model(x, training=False))
        grads = tf.concat([tf.reshape(g, [-1]) for g in inner.gradient(loss, variables)], 0)
    jac = outer.jacobian(grads, variables)
    rows = tf.concat([tf.reshape(j, [int(flat.shape[0]), -1]) for j in jac], 1).numpy()
    diag = np.diag(rows)
    return np.split(diag, np.cumsum(sizes)[:-1]), rows


def test_hutchinson_agrees_with_the_exact_hessian_diagonal():
    x, y = toy_data(n=64)
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(3)])
    model.compile(loss=LOSS)
    exact, full = exact_hessian_diagonal(model, x, y)
    score = kp.pacgen_score(model, (x, y), estimator="hutchinson", batch_size=64,
                            hutchinson_samples=400, verbose=0)
    est = np.concatenate([h.ravel() for h in score.hessian_diagonals])
    ex = np.concatenate([e.ravel() for e in exact])
    # Hutchinson's error per coordinate has variance sum_{j != i} H_ij^2 / samples.
    off = np.sqrt((np.sum(full**2, axis=1) - np.diag(full) ** 2) / 400)
    assert np.all(np.abs(est - ex) <= 5 * off + 1e-6)
    assert np.linalg.norm(est - ex) / np.linalg.norm(ex) < 0.25
    # the paper's squared-gradient estimate is a different quantity (empirical Fisher)
    sq = kp.pacgen_score(model, (x, y), batch_size=64, verbose=0)
    assert not np.allclose(np.concatenate([h.ravel() for h in sq.hessian_diagonals]), ex, rtol=0.25)


def test_quadratic_loss_psi_is_the_closed_form():
    """L = mean((x w - y)^2) with orthogonal columns: H = diag(2/n Σ x²) exactly, ρ = 0."""
    n, d = 6, 6
    x = (np.eye(n, d) * np.arange(20, 20 + d)).astype("float32")
    y = np.ones((n, 1), "float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((d,)), keras.layers.Dense(1, use_bias=False)])
    model.compile(loss="mse")
    w = model.trainable_variables[0].numpy().astype(np.float64)
    h = (2.0 / n * np.sum(x.astype(np.float64) ** 2, axis=0))[:, None]
    score = kp.pacgen_score(model, (x, y), estimator="hutchinson", batch_size=n,
                            hutchinson_samples=2, verbose=0)
    np.testing.assert_allclose(score.hessian_diagonals[0], h, rtol=1e-5)
    assert score.rho == pytest.approx(0.0, abs=1e-3)
    kappa = 0.1 * np.abs(w) + 0.1
    closed = np.sum(np.log((np.abs(w) + kappa) * np.maximum(np.sqrt(h), 1 / kappa)))
    assert score.psi == pytest.approx(closed, rel=1e-4)
    assert np.all(np.sqrt(h) > 1 / kappa)  # the H term is active, not the 1/κ floor
    assert score.per_variable[0]["hessian"] > 0 and "pacGen psi" in score.summary()
    assert score.hvp_cost_ratio > 0


def test_score_errors():
    model = keras.Sequential([keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="not built"):
        kp.pacgen_score(model, (np.ones((4, 3)), np.ones(4)), loss="mse", verbose=0)
    built = small_model()
    with pytest.raises(ValueError, match="loss"):
        kp.pacgen_score(built, toy_data(), verbose=0)
    with pytest.raises(ValueError, match="empty"):
        kp.pacgen_score(built, (np.zeros((0, 8), "float32"), np.zeros(0)), loss=LOSS, verbose=0)
    with pytest.raises(ValueError, match="`estimator`"):
        kp.pacgen_score(built, toy_data(), loss=LOSS, estimator="exact", verbose=0)
    with pytest.raises(ValueError, match="`max_batches`"):
        kp.pacgen_score(built, toy_data(), loss=LOSS, max_batches=0, verbose=0)


def test_callback_errors():
    x, y = toy_data()
    with pytest.raises(ValueError, match="`train_data` is empty"):
        kp.PacGenCallback((x[:0], y[:0]), (x, y))
    with pytest.raises(ValueError, match="`every`"):
        kp.PacGenCallback((x, y), (x, y), every=0)
    with pytest.raises(ValueError, match="`psi_estimator`"):
        kp.PacGenCallback((x, y), (x, y), psi_estimator="magic")
    model = small_model()
    model.compile(optimizer="sgd", loss=LOSS)
    with pytest.raises(ValueError, match="pacgen_score"):
        model.fit(x, y, epochs=1, verbose=0,
                  callbacks=[kp.PacGenCallback((x, y), (x, y), psi_estimator="optimizer")])
