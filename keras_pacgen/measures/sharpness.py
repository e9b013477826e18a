"""Keskar et al.'s ε-sharpness: the largest rise of the loss in a box around the weights
(Keskar et al. 2017, "On Large-Batch Training for Deep Learning", § 2.2.2). Jiang et al.'s
sharpness measures, which search a box radius instead, are in `flatness`."""

from __future__ import annotations

import numpy as np
import scipy.optimize

from keras_pacgen import _validation as check
from keras_pacgen.measures import _common


def keskar_sharpness(model, data, *, epsilon: float = 1e-3, iterations: int = 10, seed: int = 0,
                     include_regularization: bool = False, batch_size: int = 256,
                     max_samples: int | None = None, verbose: int = 0) -> float:
    """ε-sharpness in the full parameter space (Keskar et al.'s A = I)::

        φ(w, ε) = 100 · (max_{δ ∈ C_ε} L̂(w + δ) − L̂(w)) / (1 + L̂(w)),
        C_ε = {δ : |δ_i| <= ε (|w_i| + 1)}

    The maximum is found as Keskar et al. find it: L-BFGS-B on −L̂ with C_ε as bounds, `iterations`
    iterations (theirs: 10), here from a point of C_ε drawn uniformly from `seed` (at δ = 0 the
    gradient of a minimum vanishes); the largest loss evaluated on the way counts.
    """
    epsilon = check.check_float("epsilon", epsilon, low=0.0, low_inclusive=False)
    iterations = check.check_int("iterations", iterations, low=1)
    objective = _common.objective(model, data, batch_size=batch_size, max_samples=max_samples,
                                  seed=seed, include_regularization=include_regularization)
    base = [_common.to_numpy(w) for w in objective.weights]
    shapes, sizes = [w.shape for w in base], [w.size for w in base]
    flat = np.concatenate([w.ravel() for w in base])
    bound = epsilon * (np.abs(flat) + 1.0)
    clean = objective.value()
    highest = clean
    bar = _common.progress(verbose, iterations, "iteration")

    def unflatten(vector):
        return [part.reshape(shape) for part, shape in zip(np.split(vector, np.cumsum(sizes)[:-1]), shapes)]

    def negative_loss(delta):
        nonlocal highest
        weights = unflatten(flat + delta)
        value = objective.value(weights)
        highest = max(highest, value)
        gradient = np.concatenate([_common.to_numpy(g).ravel() for g in objective.gradient(weights)])
        return -value, -gradient

    start = np.random.default_rng(seed).uniform(-1.0, 1.0, size=flat.shape) * bound
    scipy.optimize.minimize(negative_loss, start, jac=True, method="L-BFGS-B",
                            bounds=np.stack([-bound, bound], axis=1),
                            callback=lambda _: _common.tick(bar, [("loss", highest)]),
                            options={"maxiter": iterations, "ftol": 0.0, "gtol": 0.0})
    return 100.0 * (highest - clean) / (1.0 + clean)
