"""Curvature and gradient measures: the Hessian's trace and top eigenvalue (as PyHessian computes
them), the Fisher information's trace and the gradient noise.

The Hessian is that of the data loss L̂ over all of `data` (Hessian-vector products averaged over
the batches, weighted by batch size, as PyHessian does; exact, a derivative of ∇L̂·v). The
per-sample gradients of the Fisher trace and the gradient noise are computed for a whole batch at
once where the backend vectorizes them (``backend.per_sample_squared_norms``).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from keras_pacgen import _validation as check
from keras_pacgen.measures import _common

backend = _common.backend

FISHER_LABELS = ("sampled", "empirical")


def hessian_trace(model, data, *, seed: int = 0, samples: int = 100, tol: float = 1e-3,
                  include_regularization: bool = False, batch_size: int = 256,
                  max_samples: int | None = None, verbose: int = 0) -> float:
    """tr(∇²L̂(w)) by Hutchinson's estimator, as PyHessian's ``trace`` (Yao et al. 2020;
    amirgholami/PyHessian, ``pyhessian/hessian.py``)::

        tr(H) = E_z[zᵀ H z],   z Rademacher (each entry ±1)

    the running mean over vectors z drawn from `seed`, stopped once a new vector moves it by less
    than `tol` (relative) or after `samples` vectors (PyHessian: 1e-3 and 100). One vector's
    variance is 2 Σ_{i≠j} H_ij², so the estimate is exact for a diagonal H.
    """
    samples = check.check_int("samples", samples, low=1)
    tol = check.check_float("tol", tol, low=0.0)
    objective = _common.objective(model, data, batch_size=batch_size, max_samples=max_samples,
                                  seed=seed, include_regularization=include_regularization)
    rng = np.random.default_rng(seed)
    bar = _common.progress(verbose, samples, "vector")
    values, mean = [], 0.0
    for _ in range(samples):
        z = [rng.choice(np.array([-1.0, 1.0], np.float32), size=v.shape) for v in objective.variables]
        values.append(_common.dot(z, objective.hessian_vector_product(z)))
        previous, mean = mean, float(np.mean(values))
        _common.tick(bar, [("trace", mean)])
        if len(values) > 1 and abs(mean - previous) / (abs(previous) + 1e-6) < tol:
            break
    return mean


def top_hessian_eigenvalue(model, data, *, seed: int = 0, iterations: int = 100, tol: float = 1e-3,
                           include_regularization: bool = False, batch_size: int = 256,
                           max_samples: int | None = None, verbose: int = 0) -> float:
    """The largest-magnitude eigenvalue λ of ∇²L̂(w) by power iteration on Hessian-vector products,
    as PyHessian's ``eigenvalues`` (Keskar et al. 2017 use the same quantity)::

        v ← H v / ‖H v‖,   λ = vᵀ H v   (Rayleigh quotient)

    from a Gaussian start drawn from `seed`, until λ changes by less than `tol` relative to it
    (PyHessian: 1e-3) or after `iterations` products. At a minimum H is positive semi-definite and
    λ its top eigenvalue.
    """
    iterations = check.check_int("iterations", iterations, low=1)
    tol = check.check_float("tol", tol, low=0.0)
    objective = _common.objective(model, data, batch_size=batch_size, max_samples=max_samples,
                                  seed=seed, include_regularization=include_regularization)
    rng = np.random.default_rng(seed)
    v = _normalised([ops.convert_to_tensor(rng.normal(size=var.shape), var.dtype)
                     for var in objective.variables])
    bar = _common.progress(verbose, iterations, "product")
    eigenvalue = None
    for _ in range(iterations):
        hv = objective.hessian_vector_product(v)
        previous, eigenvalue = eigenvalue, _common.dot(v, hv)
        _common.tick(bar, [("eigenvalue", eigenvalue)])
        norm = np.sqrt(_common.dot(hv, hv))
        if norm == 0.0:  # H v = 0: λ = 0
            break
        v = [h / ops.cast(norm, h.dtype) for h in hv]
        if previous is not None and abs(eigenvalue - previous) <= tol * (abs(eigenvalue) + 1e-6):
            break
    return float(eigenvalue)


def _normalised(vector):
    norm = np.sqrt(_common.dot(vector, vector))
    return [a / ops.cast(norm, a.dtype) for a in vector]


def _per_sample_statistics(model, data, labels, seed, include_regularization, batch_size,
                           max_samples, verbose):
    """(Σ_i s_i ‖∇ℓ_i‖², ‖Σ_i s_i ∇ℓ_i‖², Σ_i s_i) over the samples (s: sample weights), ℓ_i on
    the true labels (``"empirical"``) or on labels drawn from the model (``"sampled"``)."""
    check.check_choice("labels", labels, FISHER_LABELS)
    objective = _common.objective(model, data, batch_size=batch_size, max_samples=max_samples,
                                  seed=seed, include_regularization=include_regularization)
    statistics = _common.memo(("per_sample_function", id(objective)), lambda: _statistics(objective))
    logits = _common.from_logits(model)

    def compute():
        bar = _common.progress(verbose, len(objective.batches), "batch")
        squares, total = 0.0, None
        for b, (x, y, sw) in enumerate(objective.batches):
            if labels == "sampled":
                y = _sampled_labels(objective.predict(objective.weights, x), y, logits,
                                    _common.seed_of(seed, b))
            s2, s1 = statistics(objective.weights, x, y, sw)
            squares += float(s2)
            total = s1 if total is None else [a + c for a, c in zip(total, s1)]
            _common.tick(bar)
        weight = float(np.sum(objective.samples.sample_weight, dtype=np.float64))
        return squares, _common.dot(total, total), weight

    return _common.memo(("per_sample", id(objective), labels, seed), compute)


def _statistics(objective):
    """A compiled function of a batch: (Σ_i s_i ‖∇ℓ_i‖², Σ_i s_i ∇ℓ_i), the per-sample gradients
    taken for all samples at once where the backend vectorizes them (memory: batch size ×
    parameters)."""

    def statistics(w, x, y, sw):
        squares = backend.per_sample_squared_norms(
            lambda w, xi, yi: ops.sum(objective.per_sample_losses(w, xi, yi)), w, x, y)
        squares = ops.sum(ops.cast(sw, squares.dtype) * squares)
        _, total = backend.value_and_gradients(  # Σ_i s_i ∇ℓ_i: one backward pass
            lambda w: ops.sum(ops.cast(sw, "float32") * objective.per_sample_losses(w, x, y)), w)
        return squares, total

    return backend.function(statistics)


def _sampled_labels(y_pred, y, logits: bool, seed):
    """Labels drawn from the model's predictive distribution, in the format of `y`."""
    if y_pred.shape[-1] < 2:
        raise ValueError("labels='sampled' needs a classifier with one output per class; use "
                         "labels='empirical' for other models.")
    log_p = ops.log_softmax(y_pred) if logits else ops.log(ops.maximum(y_pred, 1e-12))
    drawn = keras.random.categorical(ops.cast(log_p, "float32"), 1, seed=seed)[:, 0]
    if len(y.shape) == len(y_pred.shape) and y.shape[-1] == y_pred.shape[-1]:
        return ops.one_hot(drawn, y_pred.shape[-1], dtype=y.dtype)
    return ops.reshape(ops.cast(drawn, y.dtype), ops.shape(y))


def fisher_trace(model, data, *, labels: str = "sampled", seed: int = 0,
                 include_regularization: bool = False, batch_size: int = 64,
                 max_samples: int | None = None, verbose: int = 0) -> float:
    """The trace of the Fisher information from per-sample gradients::

        tr(F) = (1/n) Σ_i ‖∇ℓ(f_w(x_i), ŷ_i)‖²

    With ``labels="sampled"`` (the default), ŷ_i is drawn from the model's predictive distribution
    p(·|x_i) (one draw per sample, from `seed`): the true Fisher, as Jastrzebski et al. 2021
    ("Catastrophic Fisher explosion") compute it; ``"empirical"``: ŷ_i = y_i, the empirical Fisher,
    whose diagonal is the paper's per-sample H_ii estimate (with sample weights: their weighted mean).
    """
    squares, _, weight = _per_sample_statistics(model, data, labels, seed, include_regularization,
                                                batch_size, max_samples, verbose)
    return squares / weight


def gradient_noise(model, data, *, seed: int = 0, include_regularization: bool = False,
                   batch_size: int = 64, max_samples: int | None = None, verbose: int = 0) -> float:
    """Jiang et al.'s gradient noise at the end of training ("grad.noise.final", appendix C.8):
    the variance of the per-sample gradients over the training samples, taken as the trace of
    their covariance::

        (1/n) Σ_i ‖∇ℓ_i(w) − ∇L̂(w)‖² = tr F̂ − ‖∇L̂(w)‖²

    (with sample weights s_i: weighted means). It shares one pass with the empirical Fisher trace.
    """
    squares, mean_squared, weight = _per_sample_statistics(
        model, data, "empirical", seed, include_regularization, batch_size, max_samples, verbose)
    return squares / weight - mean_squared / weight**2
