"""Generalization measures to compare ψ against (Jiang et al. 2020, "Fantastic Generalization
Measures"; Keskar et al. 2017). Each takes a trained model and a training subset (x, y)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from experiment import LOSS

import keras_pacgen as kp


def _loss(model, x, y):
    return float(LOSS(y, model(x, training=False)))


def _perturbed_loss(model, x, y, deltas):
    originals = [v.numpy() for v in model.trainable_variables]
    for v, w, d in zip(model.trainable_variables, originals, deltas):
        v.assign(w + d)
    try:
        return _loss(model, x, y)
    finally:
        for v, w in zip(model.trainable_variables, originals):
            v.assign(w)


def epsilon_sharpness(model, x, y, epsilon=1e-3, steps=10):
    """Keskar et al. 2017: 100 · (max_{|Δ_i| <= ε(|w_i|+1)} L(w+Δ) − L(w)) / (1 + L(w)),
    the max found by projected sign-gradient ascent."""
    variables = model.trainable_variables
    w0 = [v.numpy() for v in variables]
    bounds = [epsilon * (np.abs(w) + 1) for w in w0]
    base = _loss(model, x, y)
    deltas = [np.zeros_like(w) for w in w0]
    best = base
    for _ in range(steps):
        for v, w, d in zip(variables, w0, deltas):
            v.assign(w + d)
        with tf.GradientTape() as tape:
            loss = LOSS(y, model(x, training=False))
        grads = tape.gradient(loss, variables)
        best = max(best, float(loss))
        deltas = [np.clip(d + 0.25 * b * np.sign(g.numpy()), -b, b) for d, b, g in zip(deltas, bounds, grads)]
    for v, w in zip(variables, w0):
        v.assign(w)
    best = max(best, _perturbed_loss(model, x, y, deltas))
    return 100.0 * (best - base) / (1.0 + base)


def magnitude_aware_flatness(model, x, y, target=0.1, samples=4, seed=0, epsilon=1e-3):
    """Jiang et al. 2020 "pacbayes.mag.flatness": 1/σ'² for the largest σ' with
    E_u[L(w+u)] − L(w) <= target, u_i ~ N(0, σ'² w_i² + ε²) (binary search on log σ')."""
    rng = np.random.default_rng(seed)
    w0 = [v.numpy() for v in model.trainable_variables]
    base = _loss(model, x, y)
    lo, hi = -8.0, 2.0
    for _ in range(12):
        mid = (lo + hi) / 2
        s = 10.0**mid
        rise = np.mean([
            _perturbed_loss(model, x, y, [rng.normal(size=w.shape) * np.sqrt(s**2 * w**2 + epsilon**2) for w in w0])
            for _ in range(samples)
        ]) - base
        lo, hi = (mid, hi) if rise <= target else (lo, mid)
    return 1.0 / (10.0**lo) ** 2


def all_measures(model, x, y, seed=0):
    paper = kp.pacgen_score(model, (x, y), loss=LOSS, batch_size=256, max_batches=4, verbose=0, seed=seed)
    hutch = kp.pacgen_score(model, (x, y), loss=LOSS, estimator="hutchinson", batch_size=256,
                            max_batches=2, hutchinson_samples=2, verbose=0, seed=seed)
    xs, ys = x[:1024], y[:1024]
    return {
        "psi_paper": paper.psi,
        "psi_hutchinson": hutch.psi,
        "eps_sharpness": epsilon_sharpness(model, xs, ys),
        "hessian_trace": float(sum(h.sum() for h in hutch.hessian_diagonals)),
        "fisher_trace": float(sum(h.sum() for h in paper.hessian_diagonals)),
        "pacbayes_mag_flatness": magnitude_aware_flatness(model, xs, ys, seed=seed),
        "l2_norm": float(sum(np.sum(v.numpy() ** 2) for v in model.trainable_variables)),
    }


MEASURES = ("psi_paper", "psi_hutchinson", "eps_sharpness", "hessian_trace", "fisher_trace",
            "pacbayes_mag_flatness", "l2_norm")
