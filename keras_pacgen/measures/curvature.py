"""Curvature and gradient measures: the Hessian's trace and top eigenvalue (as PyHessian computes
them), the Fisher information's trace and the gradient noise.

The Hessian is that of the data loss L̂ over all of `data` (Hessian-vector products averaged over
the batches, weighted by batch size, as PyHessian does; exact, a derivative of ∇L̂·v). The
per-sample gradients of the Fisher trace and the gradient noise are computed for a whole batch at
once (`tf.vectorized_map`).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from keras_pacgen import _validation as check
from keras_pacgen.measures import _common

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
    v = _normalised([tf.constant(rng.normal(size=var.shape), var.dtype) for var in objective.variables])
    bar = _common.progress(verbose, iterations, "product")
    eigenvalue = None
    for _ in range(iterations):
        hv = objective.hessian_vector_product(v)
        previous, eigenvalue = eigenvalue, _common.dot(v, hv)
        _common.tick(bar, [("eigenvalue", eigenvalue)])
        norm = np.sqrt(_common.dot(hv, hv))
        if norm == 0.0:  # H v = 0: λ = 0
            break
        v = [h / tf.cast(norm, h.dtype) for h in hv]
        if previous is not None and abs(eigenvalue - previous) <= tol * (abs(eigenvalue) + 1e-6):
            break
    return float(eigenvalue)


def _normalised(vector):
    norm = np.sqrt(_common.dot(vector, vector))
    return [a / tf.cast(norm, a.dtype) for a in vector]


def _per_sample_statistics(model, data, labels, seed, include_regularization, batch_size,
                           max_samples, verbose):
    """(Σ_i s_i ‖∇ℓ_i‖², ‖Σ_i s_i ∇ℓ_i‖², Σ_i s_i) over the samples (s: sample weights), ℓ_i on
    the true labels (``"empirical"``) or on labels drawn from the model (``"sampled"``)."""
    check.check_choice("labels", labels, FISHER_LABELS)
    objective = _common.objective(model, data, batch_size=batch_size, max_samples=max_samples,
                                  seed=seed, include_regularization=include_regularization)
    statistics = _common.memo(("per_sample_function", id(objective)), lambda: _statistics(objective))
    draw = _common.memo(("sampled_labels", id(objective)), lambda: tf.function(
        lambda w, x, y, s: _sampled_labels(objective.predict(w, x), y, _common.from_logits(model), s),
        reduce_retracing=True))

    def compute():
        bar = _common.progress(verbose, len(objective.batches), "batch")
        squares, total = 0.0, None
        for b, (x, y, sw) in enumerate(objective.batches):
            if labels == "sampled":
                y = draw(objective.weights, x, y, tf.constant([seed, b], tf.int64))
            s2, s1 = statistics(objective.weights, x, y, sw)
            squares += float(s2)
            total = s1 if total is None else [a + c for a, c in zip(total, s1)]
            _common.tick(bar)
        weight = float(np.sum(objective.samples.sample_weight, dtype=np.float64))
        return squares, _common.dot(total, total), weight

    return _common.memo(("per_sample", id(objective), labels, seed), compute)


def _statistics(objective):
    """A traced function of a batch: (Σ_i s_i ‖∇ℓ_i‖², Σ_i s_i ∇ℓ_i), the per-sample gradients
    taken for all samples at once (`tf.vectorized_map`; memory: batch size × parameters)."""

    @tf.function(reduce_retracing=True)
    def statistics(w, x, y, sw):
        def squared_norm(sample):
            xi, yi = sample
            with tf.GradientTape() as tape:
                tape.watch(w)
                loss = tf.reduce_sum(objective.per_sample_losses(w, xi[None], yi[None]))
            gradient = tape.gradient(loss, w, unconnected_gradients="zero")
            return tf.add_n([tf.reduce_sum(tf.square(tf.cast(g, tf.float64))) for g in gradient])

        sw64 = tf.cast(sw, tf.float64)
        squares = tf.reduce_sum(sw64 * tf.vectorized_map(squared_norm, (x, y)))
        with tf.GradientTape() as tape:  # Σ_i s_i ∇ℓ_i: one backward pass
            tape.watch(w)
            weighted = tf.reduce_sum(tf.cast(sw, tf.float32) * objective.per_sample_losses(w, x, y))
        total = tape.gradient(weighted, w, unconnected_gradients="zero")
        return squares, total

    return statistics


def _sampled_labels(y_pred, y, logits: bool, seed):
    """Labels drawn from the model's predictive distribution, in the format of `y`."""
    if y_pred.shape[-1] < 2:
        raise ValueError("labels='sampled' needs a classifier with one output per class; use "
                         "labels='empirical' for other models.")
    log_p = tf.nn.log_softmax(y_pred) if logits else tf.math.log(tf.maximum(y_pred, 1e-12))
    drawn = tf.random.stateless_categorical(tf.cast(log_p, tf.float32), 1, seed)[:, 0]
    if y.shape.rank == y_pred.shape.rank and y.shape[-1] == y_pred.shape[-1]:
        return tf.one_hot(drawn, y_pred.shape[-1], dtype=y.dtype)
    return tf.reshape(tf.cast(drawn, y.dtype), tf.shape(y))


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
