"""keras_pacgen.measures against closed forms: a model whose loss is an exact quadratic in its
weights, L(w) = (1/n) ‖X w − y‖² + λ ‖w‖², so H = (2/n) XᵀX + 2λ I (λ from a kernel regularizer,
which checks that model.losses count)."""

import math

import keras
import numpy as np
import pytest
from scipy import stats

import keras_pacgen as kp
from keras_pacgen import measures

N, D, LAM = 64, 5, 0.01


def quadratic(scale=1.0, at_minimum=False, seed=0):
    """A linear model without bias and its data; `scale` multiplies X (a sharper quadratic)."""
    rng = np.random.default_rng(seed)
    x = (scale * rng.normal(size=(N, D)) @ np.diag([1.0, 1.5, 2.0, 0.5, 1.0])).astype("float32")
    w = rng.normal(size=(D, 1)).astype("float32")
    y = (x @ w if at_minimum else x @ w + rng.normal(size=(N, 1))).astype("float32")
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((D,)),
        keras.layers.Dense(1, use_bias=False,
                           kernel_regularizer=None if at_minimum else keras.regularizers.L2(LAM)),
    ])
    model.compile(loss="mse")
    if at_minimum:
        model.set_weights([w])
    return model, (x, y)


def hessian(model, data):
    x = data[0].astype(np.float64)
    return 2.0 / N * x.T @ x + 2.0 * LAM * np.eye(D)


def test_hessian_trace_is_the_closed_form_within_hutchinsons_standard_error():
    model, data = quadratic()
    h = hessian(model, data)
    samples = 64
    estimate = measures.hessian_trace(model, data, samples=samples, verbose=0)
    # one Rademacher sample zᵀHz has variance 2 Σ_{i≠j} H_ij²
    standard_error = math.sqrt(2 * (np.sum(h**2) - np.sum(np.diag(h) ** 2)) / samples)
    assert standard_error > 0.01 * np.trace(h)  # H is not diagonal: the estimate is really noisy
    assert abs(estimate - np.trace(h)) <= 3 * standard_error
    assert estimate == measures.hessian_trace(model, data, samples=samples, verbose=0)
    assert estimate != measures.hessian_trace(model, data, samples=samples, seed=1, verbose=0)


def test_top_hessian_eigenvalue_is_the_closed_form():
    model, data = quadratic()
    expected = np.linalg.eigvalsh(hessian(model, data))[-1]
    assert measures.top_hessian_eigenvalue(model, data, verbose=0) == pytest.approx(expected, rel=1e-3)


def test_fisher_trace_is_the_hand_sum_of_per_sample_gradients():
    model, (x, y) = quadratic()
    w = model.get_weights()[0].astype(np.float64)
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    # ℓ_i = (x_iᵀw − y_i)² + λ‖w‖², so ∇ℓ_i = 2 (x_iᵀw − y_i) x_i + 2 λ w
    grads = 2 * (x64 @ w - y64) * x64 + 2 * LAM * w.T
    expected = np.mean(np.sum(grads**2, axis=1))
    assert measures.fisher_trace(model, (x, y), batch_size=16, verbose=0) == pytest.approx(expected, rel=1e-5)


def test_norms_and_distance_from_init_are_exact():
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4), keras.layers.Dense(2)])
    model.compile(loss="mse")
    data = (np.ones((8, 6), "float32"), np.zeros((8, 2), "float32"))
    initial = [v.numpy() for v in model.trainable_variables]
    weights = [0.5 * w + 0.25 for w in initial]
    model.set_weights(weights)
    w64 = [w.astype(np.float64) for w in weights]
    assert measures.weight_norm(model, data) == sum(np.sum(w**2) for w in w64)
    assert measures.distance_from_init(model, data, initial_weights=initial) == sum(
        np.sum((w - w0.astype(np.float64)) ** 2) for w, w0 in zip(w64, initial))
    kernels = [w for w in w64 if w.ndim == 2]
    expected = np.prod([np.linalg.svd(k, compute_uv=False)[0] for k in kernels])
    assert measures.spectral_norm_product(model, data) == pytest.approx(expected, rel=1e-10)
    with pytest.raises(ValueError, match="initial_weights"):
        measures.distance_from_init(model, data, initial_weights=initial[:1])


def test_sharp_and_flat_quadratics_are_told_apart():
    """The same minimum (loss 0), the sharp quadratic's X three times the flat one's."""
    flat = quadratic(scale=1.0, at_minimum=True)
    sharp = quadratic(scale=3.0, at_minimum=True)
    for name in ("sharpness", "pacbayes_flatness", "pacbayes_mag_flatness", "hessian_trace",
                 "top_hessian_eigenvalue"):
        low = measures.MEASURES[name](*flat, verbose=0)
        high = measures.MEASURES[name](*sharp, verbose=0)
        assert high > 2 * low > 0, name
    # PAC-Bayes flatness has a closed form here: E_u[L(w+u)] − L(w) = σ² tr(XᵀX)/n = σ² tr(H)/2
    for model, data in (flat, sharp):
        sigma2 = 0.1 / (np.trace(2.0 / N * data[0].astype(np.float64).T @ data[0]) / 2)
        assert measures.pacbayes_flatness(model, data, samples=64, verbose=0) == pytest.approx(
            1 / sigma2, rel=0.3)


def test_pacgen_measures_are_the_papers_formulas_on_the_estimates():
    model, data = quadratic()
    score = measures.pacgen_score(model, data, estimator="hutchinson", verbose=0)
    assert measures.pacgen(model, data, estimator="hutchinson", verbose=0) == score.psi
    loss = model.evaluate(*data, verbose=0)
    bound = measures.pac_bayes_bound(model, data, eta=50.0, estimator="hutchinson", verbose=0)
    assert bound == pytest.approx(kp.pac_bayes_bound(loss, model.get_weights(), score.hessian_diagonals,
                                                     score.rho, n=N, eta=50.0), rel=1e-6)
    assert bound > loss


def test_compute_all_and_bad_names():
    model, data = quadratic()
    initial = model.get_weights()
    values = measures.compute_all(model, data, initial_weights=initial)
    assert set(values) == set(measures.MEASURES)
    assert values["distance_from_init"] == 0.0 and all(math.isfinite(v) for v in values.values())
    with pytest.raises(ValueError, match="sharpnes; valid: pacgen"):
        measures.compute_all(model, data, measures=["sharpnes"])
    with pytest.raises(ValueError, match="distance_from_init needs the weights at initialisation"):
        measures.compute_all(model, data, measures=["weight_norm", "distance_from_init"])
    with pytest.raises(ValueError, match="none given"):
        measures.measure_names([])
    assert measures.measure_names() == [n for n in measures.MEASURES if n != "distance_from_init"]
    assert measures.measure_names(["sharpness"]) == ["sharpness"]


def _unbuilt():
    model = keras.Sequential([keras.layers.Dense(1)])
    model.compile(loss="mse")
    return model


def _without_loss():
    model = keras.Sequential([keras.Input((D,)), keras.layers.Dense(1)])
    return model


@pytest.mark.parametrize("name", list(measures.MEASURES))
def test_every_measure_refuses_bad_input_clearly(name):
    model, data = quadratic()
    kwargs = {"initial_weights": model.get_weights()} if name == "distance_from_init" else {}
    measure = measures.MEASURES[name]
    with pytest.raises(ValueError, match="not built"):
        measure(_unbuilt(), data, **kwargs)
    with pytest.raises(ValueError, match="no loss"):
        measure(_without_loss(), data, **kwargs)
    with pytest.raises(ValueError, match="empty"):
        measure(model, (data[0][:0], data[1][:0]), **kwargs)


def test_kendall_tau_by_hand_and_against_scipy():
    # pairs of (1, 2, 3, 4) against (1, 3, 2, 4): five concordant, one discordant
    assert measures.kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    assert measures.kendall_tau([1, 2, 3], [3, 2, 1]) == -1.0
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = rng.integers(0, 5, size=15), rng.normal(size=15).round(1)  # with ties
        assert measures.kendall_tau(a, b) == pytest.approx(stats.kendalltau(a, b).statistic)
    assert math.isnan(measures.kendall_tau([1, 1, 1], [1, 2, 3]))


def test_granulated_kendall_by_hand():
    """Two hyperparameters a ∈ {0, 1}, b ∈ {0, 1, 2}, one seed.

    a varies (b fixed): b = 0: gap 1→2, m 1→5; b = 1: 2→3, 2→4; b = 2: 3→1, 3→0.5: τ = +1 in all
    three groups. b varies (a fixed): a = 0: gap (1, 2, 3), m (1, 2, 3): τ = +1; a = 1: gap
    (2, 3, 1), m (5, 4, 0.5): pairs (b0, b1) discordant, (b0, b2) and (b1, b2) concordant, τ = 1/3.
    So τ_a = 1, τ_b = 2/3 and Ψ = 5/6.
    """
    gap = {(0, 0): 1, (0, 1): 2, (0, 2): 3, (1, 0): 2, (1, 1): 3, (1, 2): 1}
    m = {(0, 0): 1, (0, 1): 2, (0, 2): 3, (1, 0): 5, (1, 1): 4, (1, 2): 0.5}
    rows = [{"a": a, "b": b, "seed": 0, "gap": gap[a, b], "m": m[a, b]}
            for a in (0, 1) for b in (0, 1, 2)]
    per = measures.per_hyperparameter_kendall(rows, "m", ["a", "b"])
    assert per == pytest.approx({"a": 1.0, "b": 2 / 3})
    assert measures.granulated_kendall(rows, "m", ["a", "b"]) == pytest.approx(5 / 6)
    # networks of another seed are never in the same group: here they rank the gap backwards
    more = rows + [{**r, "seed": 1, "m": -r["m"]} for r in rows]
    assert measures.per_hyperparameter_kendall(more, "m", ["a", "b"])["a"] == pytest.approx(0.0)
