"""Curvature, Keskar sharpness, ψ and `compute_all` against closed forms: a linear model whose data
loss is an exact quadratic in its weights, L(w) = (1/n) ‖X w − y‖², so H = (2/n) XᵀX; a kernel
regularizer λ‖w‖² (in model.losses) adds 2λI only with ``include_regularization=True``."""

import itertools
import math

import keras
import numpy as np
import pytest

import keras_pacgen as kp
from keras_pacgen import measures

N, D, LAM = 64, 5, 0.01


def quadratic(scale=1.0, at_minimum=False, seed=0, regularized=True):
    """A linear model without bias and its data; `scale` multiplies X (a sharper quadratic)."""
    rng = np.random.default_rng(seed)
    x = (scale * rng.normal(size=(N, D)) @ np.diag([1.0, 1.5, 2.0, 0.5, 1.0])).astype("float32")
    w = rng.normal(size=(D, 1)).astype("float32")
    y = (x @ w if at_minimum else x @ w + rng.normal(size=(N, 1))).astype("float32")
    keras.utils.set_random_seed(seed)
    regularizer = keras.regularizers.L2(LAM) if regularized else None
    model = keras.Sequential([keras.Input((D,)),
                              keras.layers.Dense(1, use_bias=False, kernel_regularizer=regularizer)])
    model.compile(loss="mse")
    if at_minimum:
        model.set_weights([w])
    return model, (x, y)


def hessian(data, regularized=False):
    x = data[0].astype(np.float64)
    return 2.0 / N * x.T @ x + (2.0 * LAM * np.eye(D) if regularized else 0.0)


def test_hessian_trace_is_the_closed_form_within_hutchinsons_standard_error():
    model, data = quadratic()
    h = hessian(data)
    samples = 64
    estimate = measures.hessian_trace(model, data, samples=samples, tol=0.0, batch_size=16)
    # one Rademacher sample zᵀHz has variance 2 Σ_{i≠j} H_ij²
    standard_error = math.sqrt(2 * (np.sum(h**2) - np.sum(np.diag(h) ** 2)) / samples)
    assert standard_error > 0.01 * np.trace(h)  # H is not diagonal: the estimate is really noisy
    assert abs(estimate - np.trace(h)) <= 3 * standard_error
    assert estimate == measures.hessian_trace(model, data, samples=samples, tol=0.0, batch_size=16)
    assert estimate != measures.hessian_trace(model, data, samples=samples, tol=0.0, seed=1)
    # the same vectors z with the L2 penalty: zᵀ(2λI)z = 2λ·D more, exactly
    regularized = measures.hessian_trace(model, data, samples=samples, tol=0.0, batch_size=16,
                                         include_regularization=True)
    assert regularized - estimate == pytest.approx(2 * LAM * D, rel=1e-3)


def test_hessian_trace_stops_as_pyhessian_once_the_mean_settles():
    """With orthogonal columns H is diagonal, every zᵀHz is the trace: PyHessian's rule (relative
    change of the running mean below tol) stops after the second vector, at the exact trace."""
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(N, D)))
    x = (q * np.array([3.0, 2.0, 1.0, 0.5, 4.0])).astype("float32")
    model, _ = quadratic(regularized=False)
    data = (x, np.zeros((N, 1), "float32"))
    assert measures.hessian_trace(model, data) == pytest.approx(np.trace(hessian(data)), rel=1e-5)


def test_top_hessian_eigenvalue_is_the_closed_form():
    model, data = quadratic()
    expected = np.linalg.eigvalsh(hessian(data))[-1]
    assert measures.top_hessian_eigenvalue(model, data, tol=1e-7, batch_size=16) == pytest.approx(
        expected, rel=1e-5)
    with_l2 = np.linalg.eigvalsh(hessian(data, regularized=True))[-1]
    assert measures.top_hessian_eigenvalue(model, data, tol=1e-7, include_regularization=True) == \
        pytest.approx(with_l2, rel=1e-5)


def _per_sample_gradients(model, data, regularized=False):
    w = model.get_weights()[0].astype(np.float64)
    x, y = (a.astype(np.float64) for a in data)
    # ℓ_i = (x_iᵀw − y_i)² (+ λ‖w‖²), so ∇ℓ_i = 2 (x_iᵀw − y_i) x_i (+ 2 λ w)
    return 2 * (x @ w - y) * x + (2 * LAM * w.T if regularized else 0.0)


@pytest.mark.parametrize("regularized", [False, True])
def test_empirical_fisher_and_gradient_noise_are_the_hand_sums(regularized):
    model, data = quadratic()
    grads = _per_sample_gradients(model, data, regularized)
    fisher = measures.fisher_trace(model, data, labels="empirical", batch_size=16,
                                   include_regularization=regularized)
    assert fisher == pytest.approx(np.mean(np.sum(grads**2, axis=1)), rel=1e-5)
    noise = np.mean(np.sum((grads - grads.mean(axis=0)) ** 2, axis=1))
    assert measures.gradient_noise(model, data, batch_size=16,
                                   include_regularization=regularized) == pytest.approx(noise, rel=1e-4)


def test_true_fisher_of_a_softmax_regression_is_its_closed_form():
    """Linear softmax: ∇ log p(y|x) = (x, 1) ⊗ (e_y − p), so E_{y~p} ‖∇‖² = (‖x‖² + 1)(1 − ‖p‖²)."""
    rng = np.random.default_rng(3)
    n, d, c = 600, 4, 3
    x = rng.normal(size=(n, d)).astype("float32")
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((d,)), keras.layers.Dense(c)])
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.set_weights([rng.normal(size=(d, c)).astype("float32"), rng.normal(size=c).astype("float32")])
    logits = model.predict(x, verbose=0).astype(np.float64)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    scale = np.sum(x.astype(np.float64) ** 2, 1) + 1
    per_label = scale[:, None] * np.array([[np.sum((np.eye(c)[k] - pi) ** 2) for k in range(c)] for pi in p])
    expected = np.mean(np.sum(p * per_label, 1))
    se = math.sqrt(np.sum(np.sum(p * per_label**2, 1) - np.sum(p * per_label, 1) ** 2)) / n
    y = rng.integers(0, c, n).astype("int32")
    sampled = measures.fisher_trace(model, (x, y), labels="sampled", seed=0)
    assert abs(sampled - expected) <= 4 * se
    empirical = np.mean(per_label[np.arange(n), y])
    assert measures.fisher_trace(model, (x, y), labels="empirical") == pytest.approx(empirical, rel=1e-5)
    assert abs(empirical - expected) > 4 * se  # the two Fishers differ here
    with pytest.raises(ValueError, match="labels"):
        measures.fisher_trace(model, (x, y), labels="true")


def test_keskar_sharpness_finds_the_box_maximum():
    """The data loss is a convex quadratic, so its maximum over the box is at one of the 2^5
    vertices: L-BFGS-B's 10 iterations reach it."""
    model, data = quadratic()
    w = model.get_weights()[0].astype(np.float64)
    x, y = (a.astype(np.float64) for a in data)

    def loss(v):
        return np.mean((x @ v - y) ** 2)

    epsilon = 1e-3
    bound = epsilon * (np.abs(w) + 1)
    highest = max(loss(w + np.array(s)[:, None] * bound) for s in itertools.product([-1, 1], repeat=D))
    expected = 100 * (highest - loss(w)) / (1 + loss(w))
    assert measures.keskar_sharpness(model, data, epsilon=epsilon) == pytest.approx(expected, rel=1e-4)


def test_sharp_and_flat_quadratics_are_told_apart():
    """The same minimum (loss 0), the sharp quadratic's X three times the flat one's."""
    flat = quadratic(scale=1.0, at_minimum=True)
    sharp = quadratic(scale=3.0, at_minimum=True)
    for name in ("keskar_sharpness", "hessian_trace", "top_hessian_eigenvalue"):
        low = measures.MEASURES[name](*flat)
        high = measures.MEASURES[name](*sharp)
        assert high > 2 * low > 0, name


def test_pacgen_measures_are_the_papers_formulas_on_the_estimates():
    model, data = quadratic()
    score = measures.pacgen_score(model, data, estimator="hutchinson", verbose=0)
    assert measures.pacgen(model, data, estimator="hutchinson") == score.psi
    loss = float(np.mean((data[0] @ model.get_weights()[0] - data[1]) ** 2))  # the data loss
    bound = measures.pac_bayes_bound(model, data, eta=50.0, estimator="hutchinson")
    assert bound == pytest.approx(kp.pac_bayes_bound(loss, model.get_weights(), score.hessian_diagonals,
                                                     score.rho, n=N, eta=50.0), rel=1e-6)
    assert bound > loss


def _orthogonal_quadratic():
    """X with orthogonal columns: H = (2/n) XᵀX = diag(2c²/n), so z ⊙ Hz = diag(H) for every z."""
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(N, D)))
    x = (q * np.array([30.0, 20.0, 10.0, 5.0, 40.0])).astype("float32")
    y = np.random.default_rng(1).normal(size=(N, 1)).astype("float32")
    model, _ = quadratic(regularized=False)
    return model, (x, y)


def _psi(w, h, rho, gamma, epsilon):
    kappa = gamma * np.abs(w) + epsilon
    inner = h + rho * math.sqrt(w.size) * kappa
    return float(np.sum(np.log((np.abs(w) + kappa) * np.maximum(np.sqrt(np.maximum(inner, 0)), 1 / kappa))))


def test_psi_and_the_bound_are_the_papers_formulas_in_numpy():
    model, data = _orthogonal_quadratic()
    x, y = (a.astype(np.float64) for a in data)
    w = model.get_weights()[0].astype(np.float64)
    h = np.diag(2.0 / N * x.T @ x)[:, None]
    gamma = epsilon = 1.0
    # Hutchinson on one batch of a diagonal H: exact, and the same at w + u: ρ = 0
    psi = measures.pacgen(model, data, estimator="hutchinson", gamma=gamma, epsilon=epsilon, batch_size=N)
    assert psi == pytest.approx(_psi(w, h, 0.0, gamma, epsilon), rel=1e-5)
    assert np.any(np.sqrt(h) > 1 / (gamma * np.abs(w) + epsilon))  # the curvature term counts
    # eq. 11 at σ* = min(sqrt(3 / (η H)), κ)
    eta, n, loss = 50.0, N, float(np.mean((x @ w - y) ** 2))
    kappa = gamma * np.abs(w) + epsilon
    sigma = np.minimum(np.sqrt(3 / (eta * h)), kappa)
    expected = loss + (w.size / 2 + np.sum(np.log((np.abs(w) + kappa) / sigma)) + math.log(1 / 0.05)) / eta \
        + eta / (2 * n)
    assert measures.pac_bayes_bound(model, data, eta=eta, estimator="hutchinson", gamma=gamma,
                                    epsilon=epsilon, batch_size=N) == pytest.approx(expected, rel=1e-5)
    # the paper's estimate: (∇L̂_B)² over minibatches of 16, ρ = max |ΔH| / |u| at u = ±0.1 κ
    signs = np.random.default_rng(0).choice([-1.0, 1.0], size=w.shape)

    def squared_gradients(v):
        return np.mean([(2 / 16 * x[b:b + 16].T @ (x[b:b + 16] @ v - y[b:b + 16])) ** 2
                        for b in range(0, N, 16)], axis=0)

    u = 0.1 * kappa * signs
    h0 = squared_gradients(w)
    rho = np.max(np.abs(squared_gradients(w + u) - h0) / np.abs(u))
    psi = measures.pacgen(model, data, gamma=gamma, epsilon=epsilon, batch_size=16)
    assert psi == pytest.approx(_psi(w, h0, rho, gamma, epsilon), rel=1e-4)


def test_pacgen_from_the_perturbed_optimizers_moving_average():
    from tests.conftest import LOSS, small_model, toy_data

    x, y = toy_data(64)
    model = small_model()
    model.compile(optimizer=kp.PerturbedAdam(1e-2, seed=0), loss=LOSS)
    model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[kp.PerturbationCallback()])
    expected = float(kp.psi_from_optimizer(model, gamma=10.0, epsilon=10.0))  # the h term shows
    assert measures.pacgen(model, estimator="optimizer", gamma=10.0, epsilon=10.0) == pytest.approx(
        expected, rel=1e-6)
    from_data = measures.pacgen(model, (x, y), gamma=10.0, epsilon=10.0)
    assert from_data != pytest.approx(expected, rel=1e-3)
    plain = small_model()
    plain.compile(optimizer="sgd", loss=LOSS)
    plain.fit(x, y, verbose=0)
    with pytest.raises(ValueError, match="keeps no Hessian-diagonal estimate"):
        measures.pacgen(plain, estimator="optimizer")


def test_compute_all_and_bad_names():
    model, data = quadratic()
    initial = model.get_weights()
    names = ["hessian_trace", "keskar_sharpness", "gradient_noise", "param_norm", "fro_dist", "pacgen"]
    values = measures.compute_all(model, data, measures=names, initial_weights=initial)
    assert list(values) == names and values["fro_dist"] == 0.0
    assert all(math.isfinite(v) for v in values.values())
    # shared work gives what each measure gives alone
    assert values["hessian_trace"] == measures.hessian_trace(model, data)
    assert values["keskar_sharpness"] == measures.keskar_sharpness(model, data)
    assert len(measures.MEASURES) >= 20
    with pytest.raises(ValueError, match="sharpnes; valid: pacgen"):
        measures.compute_all(model, data, measures=["sharpnes"])
    with pytest.raises(ValueError, match="fro_dist need"):
        measures.compute_all(model, data, measures=["param_norm", "fro_dist"])
    with pytest.raises(ValueError, match="none given"):
        measures.measure_names([])
    assert measures.measure_names() == [n for n in measures.MEASURES
                                        if n not in measures.NEED_INITIAL_WEIGHTS]
    assert set(measures.measure_names(has_initial_weights=True)) == set(measures.MEASURES)


def _unbuilt():
    model = keras.Sequential([keras.layers.Dense(1)])
    model.compile(loss="mse")
    return model


@pytest.mark.parametrize("name", [n for n in measures.MEASURES])
def test_every_measure_refuses_bad_input_clearly(name):
    model, data = quadratic()
    kwargs = {"initial_weights": model.get_weights()} if name in measures.NEED_INITIAL_WEIGHTS else {}
    measure = measures.MEASURES[name]
    with pytest.raises(ValueError, match="not built"):
        measure(_unbuilt(), data, **kwargs)
    bad = keras.models.clone_model(model)
    bad.compile(loss="mse")
    bad.set_weights([np.full((D, 1), np.nan, "float32")])
    with pytest.raises(ValueError, match="non-finite weights"):
        measure(bad, data, **kwargs)
    if name not in measures.NEED_NO_LOSS:
        uncompiled = keras.Sequential([keras.Input((D,)), keras.layers.Dense(1)])
        with pytest.raises(ValueError, match="no loss"):
            measure(uncompiled, data, **kwargs)
