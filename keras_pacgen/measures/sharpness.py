"""Sharpness and flatness: how much the loss rises when the weights move (Keskar et al. 2017;
Jiang et al. 2020). Both are deterministic for a seed."""

from __future__ import annotations

import math

import numpy as np

from keras_pacgen import _validation as check
from keras_pacgen.measures import _common


def sharpness(model, data, *, seed: int = 0, epsilon: float = 1e-3, steps: int = 10,
              batch_size: int = 256, max_batches: int | None = None, verbose: int = 1) -> float:
    """ε-sharpness (Keskar et al. 2017, "On Large-Batch Training for Deep Learning", § 2.2.2)::

        φ(w, ε) = 100 · (max_{δ ∈ C_ε} L̂(w + δ) − L̂(w)) / (1 + L̂(w)),
        C_ε = {δ : |δ_i| <= ε (|w_i| + 1)}

    in the full parameter space (Keskar's A = I). The maximum is approximated by projected
    sign-gradient ascent (`steps` steps of a quarter of the box, from a random point of C_ε drawn
    from `seed`); the largest loss seen on the way counts.
    """
    epsilon = check.check_float("epsilon", epsilon, low=0.0, low_inclusive=False)
    steps = check.check_int("steps", steps, low=1)
    loss = _common.Loss(model, _common.batches(data, batch_size=batch_size, max_batches=max_batches))
    base = _common.weights(model)
    bounds = [epsilon * (np.abs(w.astype(np.float64)) + 1.0) for w in base]
    rng = np.random.default_rng(seed)
    deltas = [b * rng.uniform(-1.0, 1.0, size=b.shape) for b in bounds]
    clean = loss.value()
    highest = clean
    bar = _common.progress(verbose, steps, "step")
    with _common.shifted(loss.variables, base) as shift:
        for _ in range(steps):
            shift(deltas)
            highest = max(highest, loss.value())
            gradient = loss.gradient()
            deltas = [np.clip(d + 0.25 * b * np.sign(g), -b, b)
                      for d, b, g in zip(deltas, bounds, gradient)]
            _common.tick(bar, [("loss", highest)])
        shift(deltas)
        highest = max(highest, loss.value())
    return 100.0 * (highest - clean) / (1.0 + clean)


def pacbayes_flatness(model, data, *, seed: int = 0, magnitude_aware: bool = False,
                      target: float = 0.1, samples: int = 8, search_steps: int = 20,
                      magnitude_epsilon: float = 1e-3, batch_size: int = 256,
                      max_batches: int | None = None, verbose: int = 1) -> float:
    """PAC-Bayesian flatness (Jiang et al. 2020, "Fantastic Generalization Measures", eqs. 50-51,
    "pacbayes.flatness" and "pacbayes.mag.flatness")::

        1 / σ'²,   σ' the largest σ with  E_u[L̂(w + u)] − L̂(w) <= target

    with ``u ~ N(0, σ² I)``, or with ``magnitude_aware=True`` ``u_i ~ N(0, σ² w_i² + ε'²)``
    (ε' = `magnitude_epsilon`). The expectation is a mean over `samples` draws z (from `seed`)
    shared by every σ (u = σ z), so the rise is monotone in σ and σ' is found by bisection on
    log σ over [1e-6, 1e2] (`search_steps` halvings). Jiang et al. bound the rise of the 0-1
    error; here it is the rise of the model's loss. Larger means sharper.
    """
    target = check.check_float("target", target, low=0.0, low_inclusive=False)
    samples = check.check_int("samples", samples, low=1)
    search_steps = check.check_int("search_steps", search_steps, low=1)
    loss = _common.Loss(model, _common.batches(data, batch_size=batch_size, max_batches=max_batches))
    base = _common.weights(model)
    rng = np.random.default_rng(seed)
    draws = [[rng.normal(size=w.shape) for w in base] for _ in range(samples)]
    clean = loss.value()

    def rise(sigma):
        total = 0.0
        with _common.shifted(loss.variables, base) as shift:
            for z in draws:
                if magnitude_aware:
                    shift([np.sqrt(sigma**2 * w.astype(np.float64) ** 2 + magnitude_epsilon**2) * e
                           for w, e in zip(base, z)])
                else:
                    shift([sigma * e for e in z])
                total += loss.value()
        return total / samples - clean

    low, high = -6.0, 2.0  # log10 σ
    bar = _common.progress(verbose, search_steps, "step")
    if rise(10.0**high) <= target:
        low = high
    else:
        for _ in range(search_steps):
            middle = (low + high) / 2
            low, high = (middle, high) if rise(10.0**middle) <= target else (low, middle)
            _common.tick(bar, [("log10_sigma", low)])
    return 1.0 / (10.0**low) ** 2 if math.isfinite(low) else math.inf
