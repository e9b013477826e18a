"""Jiang et al.'s σ′ and α′ searches and the measures built on them, against closed forms on a
two-class linear softmax model (Dense(2) on x ∈ R^d), whose margin m(x) = z_y − z_{1−y} moves
linearly with the weights:

* Gaussian noise of std σ on every parameter adds N(0, 2σ²(‖x‖² + 1)) to the margin, so the
  expected error is mean_i Φ(−m_i / (σ sqrt(2(‖x_i‖² + 1)))) (magnitude-aware: the variance is
  Σ_k c_k² (σ² w_k² + ε′²) over the parameters k with coefficient c_k = ±x_j or ±1);
* with every input positive and every label 1, the worst point of the box |u_k| <= r_k lowers
  every margin at once by Σ_k |c_k| r_k, so the worst error is the share of samples whose margin
  is below that.
"""

import inspect
import math

import keras
import numpy as np
import pytest
from scipy import stats

from keras_pacgen import measures
from keras_pacgen.measures import flatness

D = 3


def linear(x, y, seed=0):
    rng = np.random.default_rng(seed)
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((D,)), keras.layers.Dense(2)])
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    w = rng.normal(size=(D, 2)) * 0.3
    w[:, 1] += (2.0, 1.0, 0.5)  # class 1 where 2x₀ + x₁ + x₂/2 + 1 > 0, about
    model.set_weights([w.astype("float32"), np.array([0.0, 1.0], "float32")])
    return model, (x, y)


def positive_data(n=1000, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0.1, 1.0, size=(n, D)).astype("float32"), np.ones(n, "int32")


def mixed_data(n=1000, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, D)).astype("float32")
    score = 2 * x[:, 0] + x[:, 1] + 0.5 * x[:, 2] + 1
    return x, (score + 0.5 * rng.normal(size=n) > 0).astype("int32")


def _margins(model, x, y):
    z = model.predict(x, verbose=0).astype(np.float64)
    sign = np.where(y == 1, 1.0, -1.0)
    return sign * (z[:, 1] - z[:, 0])


def _expected_error(model, data, sigma, magnitude_aware):
    x, y = data
    m = _margins(model, x, y)
    w, b = (a.astype(np.float64) for a in model.get_weights())
    x = x.astype(np.float64)
    if magnitude_aware:
        eps = flatness.MAGNITUDE_EPSILON
        var_w = sigma**2 * w**2 + eps**2  # (D, 2)
        var_b = sigma**2 * b**2 + eps**2
        variance = x**2 @ var_w.sum(axis=1) + var_b.sum()
    else:
        variance = 2 * sigma**2 * (np.sum(x**2, axis=1) + 1)
    return float(np.mean(stats.norm.cdf(-m / np.sqrt(variance)))), float(np.mean(m < 0))


def _draw_std(model, data, sigma, magnitude_aware, draws=400):
    """The standard deviation of one draw's error at σ, by numpy."""
    x, y = (a.astype(np.float64) for a in data)
    w, b = (a.astype(np.float64) for a in model.get_weights())
    rng = np.random.default_rng(7)
    eps = flatness.MAGNITUDE_EPSILON
    errors = []
    for _ in range(draws):
        sw = np.sqrt(sigma**2 * w**2 + eps**2) if magnitude_aware else sigma
        sb = np.sqrt(sigma**2 * b**2 + eps**2) if magnitude_aware else sigma
        z = x @ (w + sw * rng.normal(size=w.shape)) + b + sb * rng.normal(size=b.shape)
        errors.append(np.mean(np.argmax(z, axis=1) != y))
    return float(np.std(errors))


@pytest.mark.parametrize("magnitude_aware", [False, True])
def test_pacbayes_sigma_meets_the_deviation_on_the_closed_form(magnitude_aware):
    model, data = linear(*mixed_data(400))
    sigma = measures.pacbayes_sigma(model, data, magnitude_aware=magnitude_aware, draws=400,
                                    tolerance=0.002)
    noisy, clean = _expected_error(model, data, sigma, magnitude_aware)
    assert clean < 0.2
    # the search's own Monte Carlo error: a mean of 400 draws, each an error over the samples
    slack = 3 * _draw_std(model, data, sigma, magnitude_aware) / 20
    assert slack < 0.015  # so that a deviation of 0.08 or 0.12 would fail
    assert abs(noisy - clean - 0.1) < 0.002 + slack
    # and not at half or twice the radius (σ² for σ, or the variance for the std, would be; those
    # only where they are 25% away from σ, which they are not for σ near 1)
    for wrong in (sigma / 2, 2 * sigma, sigma**0.5 if sigma < 1 else sigma**2):
        if abs(wrong / sigma - 1) > 0.25:
            assert abs(_expected_error(model, data, wrong, magnitude_aware)[0] - clean - 0.1) > 0.03
    assert measures.pacbayes_flatness(model, data, magnitude_aware=magnitude_aware, draws=400,
                                      tolerance=0.002) == pytest.approx(1 / sigma**2)


def _worst_error(model, data, radius, magnitude_aware):
    x, y = data
    m = _margins(model, x, y)
    w, b = (np.abs(a.astype(np.float64)) for a in model.get_weights())
    eps = flatness.MAGNITUDE_EPSILON
    if magnitude_aware:
        drop = x.astype(np.float64) @ (radius * w + eps).sum(axis=1) + (radius * b + eps).sum()
    else:
        drop = 2 * radius * (np.sum(x, axis=1) + 1)
    return float(np.mean(m < drop)), float(np.mean(m < 0))


@pytest.mark.parametrize("magnitude_aware", [False, True])
def test_sharpness_alpha_meets_the_deviation_on_the_closed_form(magnitude_aware):
    model, data = linear(*positive_data())
    alpha = measures.sharpness_alpha(model, data, magnitude_aware=magnitude_aware, tolerance=0.002)
    worst, clean = _worst_error(model, data, alpha, magnitude_aware)
    assert abs(worst - clean - 0.1) < 0.002
    assert measures.sharpness_flatness(model, data, magnitude_aware=magnitude_aware,
                                       tolerance=0.002) == 1 / alpha**2
    # with the jiang default tolerance 0.01
    coarse = measures.sharpness_alpha(model, data, magnitude_aware=magnitude_aware)
    assert abs(_worst_error(model, data, coarse, magnitude_aware)[0] - clean - 0.1) < 0.01


def test_the_searches_have_jiang_et_al_s_settings():
    """Deviation 0.1 ± 0.01 of the 0-1 error, σ in [0, 2], 15 halvings, 10 fresh draws, ε′ = 1e-3."""
    for search in (measures.pacbayes_sigma, measures.sharpness_alpha):
        defaults = {k: p.default for k, p in inspect.signature(search).parameters.items()}
        assert (defaults["criterion"], defaults["deviation"], defaults["tolerance"],
                defaults["search_depth"], defaults["upper"]) == ("error", 0.1, 0.01, 15, 2.0)
    assert inspect.signature(measures.pacbayes_sigma).parameters["draws"].default == 10
    assert flatness.MAGNITUDE_EPSILON == 1e-3


def test_fresh_draws_at_every_step_and_the_loss_criterion():
    model, data = linear(*mixed_data(300))
    a = measures.pacbayes_sigma(model, data, seed=0)
    assert a == measures.pacbayes_sigma(model, data, seed=0)
    # other draws, another bisection path (one other seed may still end at the same radius)
    assert any(a != measures.pacbayes_sigma(model, data, seed=s) for s in (1, 2, 3))
    by_loss = measures.pacbayes_sigma(model, data, criterion="loss", tolerance=0.002, draws=50)
    x, y = (a.astype(np.float64) for a in data)
    w, b = (a.astype(np.float64) for a in model.get_weights())
    rng = np.random.default_rng(0)

    def cross_entropy(w, b):
        z = x @ w + b
        z -= z.max(axis=1, keepdims=True)
        return np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(y)), y.astype(int)])

    rise = np.mean([cross_entropy(w + by_loss * rng.normal(size=w.shape),
                                  b + by_loss * rng.normal(size=b.shape)) for _ in range(2000)])
    assert abs(rise - cross_entropy(w, b) - 0.1) < 0.01
    with pytest.raises(ValueError, match="criterion"):
        measures.pacbayes_sigma(model, data, criterion="accuracy")
    with pytest.raises(ValueError, match="deviation"):
        measures.sharpness_alpha(model, data, deviation=0.0)


def _kernel_norms(model, initial):
    w = model.get_weights()[0].astype(np.float64).ravel()  # the kernel: Jiang's weights, no bias
    w0 = initial[0].astype(np.float64).ravel()
    return w, w - w0


def test_pacbayes_and_sharpness_bounds_are_jiang_et_al_s_formulas():
    model, data = linear(*positive_data(400))
    rng = np.random.default_rng(5)
    initial = [a + rng.normal(size=a.shape).astype("float32") * 0.3 for a in model.get_weights()]
    w, dw = _kernel_norms(model, initial)
    m, omega, eps2 = 400, w.size, 1e-6
    s = measures.pacbayes_sigma(model, data)
    assert measures.pacbayes_init(model, data, initial_weights=initial) == pytest.approx(
        dw @ dw / (4 * s**2) + math.log(m / s) + 10, rel=1e-9)
    assert measures.pacbayes_orig(model, data) == pytest.approx(
        w @ w / (4 * s**2) + math.log(m / s) + 10, rel=1e-9)
    s = measures.pacbayes_sigma(model, data, magnitude_aware=True)
    for name, ref in (("pacbayes_mag_init", dw), ("pacbayes_mag_orig", w)):
        expected = 0.25 * np.sum(np.log((eps2 + (s**2 + 1) * (ref @ ref) / omega) /
                                        (eps2 + s**2 * dw**2))) + math.log(m / s) + 10
        assert measures.MEASURES[name](model, data, initial_weights=initial) == pytest.approx(expected, rel=1e-9)
    a = measures.sharpness_alpha(model, data)
    assert measures.sharpness_init(model, data, initial_weights=initial) == pytest.approx(
        dw @ dw * math.log(2 * omega) / (4 * a**2) + math.log(m / a) + 10, rel=1e-9)
    assert measures.sharpness_orig(model, data) == pytest.approx(
        w @ w * math.log(2 * omega) / (4 * a**2) + math.log(m / a) + 10, rel=1e-9)
    a = measures.sharpness_alpha(model, data, magnitude_aware=True)
    widen = 4 * math.log(2 * omega / 0.05)
    for name, ref in (("sharpness_mag_init", dw), ("sharpness_mag_orig", w)):
        expected = 0.25 * np.sum(np.log((eps2 + (a**2 + widen) * (ref @ ref) / omega) /
                                        (eps2 + a**2 * dw**2))) + math.log(m / a) + 10
        assert measures.MEASURES[name](model, data, initial_weights=initial) == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ValueError, match="initial_weights"):
        measures.pacbayes_init(model, data)
