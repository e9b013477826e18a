"""Curvature measures: the Hessian's trace and top eigenvalue, and the Fisher information's trace.

The Hessian is that of the model's loss L̂ (compiled loss plus ``model.losses``) over `data`;
Hessian-vector products are exact (a derivative of ∇L̂·v), never a finite difference.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from keras_pacgen import _validation as check
from keras_pacgen.measures import _common


def hessian_trace(model, data, *, seed: int = 0, samples: int = 32, batch_size: int = 256,
                  max_batches: int | None = None, verbose: int = 1) -> float:
    """tr(∇²L̂(w)) by Hutchinson's estimator (Hutchinson 1989; used as a generalization measure by
    e.g. Yao et al. 2020, "PyHessian")::

        tr(H) = E_z[zᵀ H z],   z Rademacher (each entry ±1)

    averaged over `samples` vectors z drawn from `seed`. Its standard error is the standard
    deviation of zᵀHz over the samples divided by sqrt(samples); the variance of one sample is
    2 Σ_{i≠j} H_ij² (so the estimate is exact when H is diagonal).
    """
    samples = check.check_int("samples", samples, low=1)
    loss = _common.Loss(model, _common.batches(data, batch_size=batch_size, max_batches=max_batches))
    rng = np.random.default_rng(seed)
    bar = _common.progress(verbose, samples, "vector")
    values = []
    for _ in range(samples):
        z = [rng.choice([-1.0, 1.0], size=v.shape) for v in loss.variables]
        hz = loss.hessian_vector_product(z)
        values.append(sum(float(np.sum(a * b)) for a, b in zip(z, hz)))
        _common.tick(bar)
    return float(np.mean(values))


def top_hessian_eigenvalue(model, data, *, seed: int = 0, iterations: int = 100, tol: float = 1e-5,
                           batch_size: int = 256, max_batches: int | None = None,
                           verbose: int = 1) -> float:
    """The largest-magnitude eigenvalue λ of ∇²L̂(w) by power iteration on Hessian-vector products
    (as in Keskar et al. 2017 and Yao et al. 2020)::

        v ← H v / ‖H v‖,   λ = vᵀ H v   (Rayleigh quotient)

    from a random start drawn from `seed`, until λ changes by less than `tol` (relative) or after
    `iterations` products. At a minimum H is positive semi-definite and λ its top eigenvalue.
    """
    iterations = check.check_int("iterations", iterations, low=1)
    tol = check.check_float("tol", tol, low=0.0)
    loss = _common.Loss(model, _common.batches(data, batch_size=batch_size, max_batches=max_batches))
    rng = np.random.default_rng(seed)
    v = _normalised([rng.normal(size=var.shape) for var in loss.variables])
    bar = _common.progress(verbose, iterations, "product")
    eigenvalue = 0.0
    for _ in range(iterations):
        hv = loss.hessian_vector_product(v)
        previous, eigenvalue = eigenvalue, sum(float(np.sum(a * b)) for a, b in zip(v, hv))
        _common.tick(bar, [("eigenvalue", eigenvalue)])
        if not any(np.any(h) for h in hv):  # H v = 0: λ = 0
            break
        v = _normalised(hv)
        if abs(eigenvalue - previous) <= tol * abs(eigenvalue):
            break
    return float(eigenvalue)


def _normalised(vector):
    norm = np.sqrt(sum(float(np.sum(a * a)) for a in vector))
    return [a / norm for a in vector]


def fisher_trace(model, data, *, seed: int = 0, batch_size: int = 64,
                 max_batches: int | None = None, verbose: int = 1) -> float:
    """The trace of the empirical Fisher information (e.g. Jastrzebski et al. 2021, "Catastrophic
    Fisher explosion"), from per-sample gradients::

        tr(F̂) = (1/n) Σ_i ‖∇ℓ_i(w)‖²

    with ℓ_i the compiled loss of sample i plus ``model.losses``. It is also the sum of the
    diagonal that the paper estimates H_ii with, taken per sample rather than per minibatch.
    (`seed` is accepted for a uniform interface; nothing is random.)
    """
    del seed
    data_batches = _common.batches(data, batch_size=batch_size, max_batches=max_batches)
    variables = _common.check_model(model)

    @tf.function(reduce_retracing=True)
    def squared_norms(x, y):
        with tf.GradientTape() as tape:
            losses = _common.per_sample_losses(model, x, y)
        jacobians = tape.jacobian(losses, variables, unconnected_gradients="zero")
        return tf.add_n([
            tf.reduce_sum(tf.square(tf.reshape(j, (tf.shape(j)[0], -1))), axis=1) for j in jacobians
        ])

    bar = _common.progress(verbose, len(data_batches), "batch")
    total = 0.0
    for x, y in data_batches:
        total += float(tf.reduce_sum(tf.cast(squared_norms(x, y), tf.float64)))
        _common.tick(bar)
    return total / _common.num_samples(data_batches)
