"""ψ, σ* and the PAC-Bayes bound against hand-computed values and a numpy reference."""

import math

import numpy as np
import pytest

import keras_pacgen as kp
from keras_pacgen import backends

# ψ is computed in float64, in float32 on JAX without jax_enable_x64
REL = 1e-9 if backends.load().WIDE_FLOAT == "float64" else 1e-6


def numpy_psi(ws, hs, rho, gamma=0.1, eps=0.1):
    m = sum(w.size for w in ws)
    total = 0.0
    for w, h in zip(ws, hs):
        for wi, hi in zip(w.ravel(), h.ravel()):
            k = gamma * abs(wi) + eps
            a = hi + rho * math.sqrt(m) * k
            root = math.sqrt(a) if a > 0 else 0.0
            total += math.log((abs(wi) + k) * max(root, 1.0 / k))
    return total


def test_psi_hand_values():
    # κ = 0.2, |w| + κ = 1.2, max(sqrt(4) = 2, 1/0.2 = 5) = 5
    assert kp.psi([np.array([1.0])], [np.array([4.0])], 0.0) == pytest.approx(math.log(6.0))
    # curvature above the 1/κ floor: max(10, 5) = 10
    assert kp.psi([np.array([1.0])], [np.array([100.0])], 0.0) == pytest.approx(math.log(12.0))
    # footnote 5: a negative H + ρ√mκ counts as 0
    assert kp.psi([np.array([1.0])], [np.array([-3.0])], 0.0) == pytest.approx(math.log(6.0))
    # two coordinates with ρ = 1, m = 2
    w, h = np.array([1.0, -2.0]), np.array([0.0, 50.0])
    expected = math.log(1.2 * 5.0) + math.log(2.3 * math.sqrt(50.0 + math.sqrt(2) * 0.3))
    assert kp.psi([w], [h], 1.0) == pytest.approx(expected)


def test_psi_matches_numpy_reference():
    rng = np.random.default_rng(0)
    ws = [rng.normal(size=(5, 3)) * 3, rng.normal(size=(3,))]
    hs = [rng.exponential(200.0, size=(5, 3)) - 20, rng.exponential(50.0, size=(3,))]
    for rho in (0.0, 0.3, 5.0):
        for gamma, eps in ((0.1, 0.1), (1.0, 0.01)):
            got = kp.psi(ws, hs, rho, gamma=gamma, epsilon=eps)
            assert got == pytest.approx(numpy_psi(ws, hs, rho, gamma, eps), rel=REL)
    terms = kp.psi_terms(ws, hs, 0.3)
    for t in terms:
        assert float(t["psi"]) == pytest.approx(float(t["scale"] + t["hessian"] + t["rho"]))


def test_optimal_sigma_hand_values():
    w, h = [np.array([1.0, 1.0, 1.0])], [np.array([3.0, 3.0, -6.0])]
    # κ = 0.2; c = H/3 = 1 -> sqrt(1/(η c)); capped by κ; negative curvature -> κ
    s = kp.optimal_sigma(w, h, 0.0, eta=1.0)[0]
    np.testing.assert_allclose(s, [0.2, 0.2, 0.2])
    s = kp.optimal_sigma(w, h, 0.0, eta=100.0)[0]
    np.testing.assert_allclose(s, [0.1, 0.1, 0.2])
    # with ρ: c = H/3 + ρ√m κ/9
    s = kp.optimal_sigma([np.array([1.0])], [np.array([0.0])], 9.0, eta=100.0)[0]
    np.testing.assert_allclose(s, [min(math.sqrt(1 / (100 * 9.0 * 0.2 / 9)), 0.2)])


def test_bound_hand_value_and_eq11_equals_eq9_at_sigma_star():
    w, h = [np.array([1.0])], [np.array([3.0])]
    # κ = 0.2, τ = 1.2, σ = 0.1: 0.5 + 3·0.01/6 + (log 12 + log 20)/100 + 100/2000
    expected = 0.5 + 0.005 + (math.log(12) + math.log(20)) / 100 + 0.05
    got = kp.pac_bayes_bound(0.5, w, h, 0.0, n=1000, eta=100.0, sigma=[np.array([0.1])])
    assert got == pytest.approx(expected)
    # eq. 11 is eq. 9 at σ* when no coordinate is capped and ρ = 0: (1/6) H σ*² = 1/(2η)
    rng = np.random.default_rng(1)
    ws, hs = [rng.normal(size=20)], [rng.uniform(5e2, 1e3, size=20)]
    star = kp.optimal_sigma(ws, hs, 0.0, eta=1.0)
    assert np.all(star[0] < 0.1 * np.abs(ws[0]) + 0.1)  # interior: not capped
    eq11 = kp.pac_bayes_bound(0.3, ws, hs, 0.0, n=500, eta=1.0)
    eq9 = kp.pac_bayes_bound(0.3, ws, hs, 0.0, n=500, eta=1.0, sigma=star)
    assert eq11 == pytest.approx(eq9, rel=REL)
    # and σ* minimises eq. 9
    for f in (0.8, 1.1):
        assert kp.pac_bayes_bound(0.3, ws, hs, 0.0, n=500, eta=1.0, sigma=[star[0] * f]) > eq9


def test_bad_inputs_are_clear():
    with pytest.raises(ValueError, match="one array per variable"):
        kp.psi([np.ones(2)], [np.ones(2), np.ones(1)], 0.0)
    with pytest.raises(ValueError, match="shape"):
        kp.psi([np.ones(2)], [np.ones(3)], 0.0)
    with pytest.raises(ValueError, match="rho"):
        kp.psi([np.ones(2)], [np.ones(2)], -1.0)
    with pytest.raises(ValueError, match="non-empty"):
        kp.psi([], [], 0.0)
    with pytest.raises(ValueError, match="`epsilon`"):
        kp.psi([np.ones(2)], [np.ones(2)], 0.0, epsilon=0.0)
    with pytest.raises(ValueError, match="`eta`"):
        kp.optimal_sigma([np.ones(2)], [np.ones(2)], 0.0, eta=-1.0)
    with pytest.raises(ValueError, match="`delta`"):
        kp.pac_bayes_bound(0.1, [np.ones(2)], [np.ones(2)], 0.0, n=10, eta=1.0, delta=1.5)
    with pytest.raises(ValueError, match="sigma"):
        kp.pac_bayes_bound(0.1, [np.ones(2)], [np.ones(2)], 0.0, n=10, eta=1.0, sigma=[np.ones(2)])
    with pytest.raises(ValueError, match="tau"):
        kp.pac_bayes_bound(0.1, [np.ones(2)], [np.ones(2)], 0.0, n=10, eta=1.0, tau=[np.ones(2)])
