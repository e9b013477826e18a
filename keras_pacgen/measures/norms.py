"""Norm-based measures (Jiang et al. 2020, "Fantastic Generalization Measures", § C). They read
the weights only; `data` is checked like every measure's, so that all share one interface."""

from __future__ import annotations

import math

import numpy as np

from keras_pacgen.measures import _common


def _weights(model, data) -> list[np.ndarray]:
    _common.check_model(model)
    _common.batches(data, max_batches=1)
    return [w.astype(np.float64) for w in _common.weights(model)]


def weight_norm(model, data, *, seed: int = 0, verbose: int = 0) -> float:
    """Jiang et al.'s "params.norm" (eq. 41): the squared ℓ2 norm of all trainable parameters,
    ``‖w‖₂² = Σ_i w_i²``. (`seed` and `verbose` are accepted for a uniform interface.)"""
    del seed, verbose
    return float(sum(np.sum(w * w) for w in _weights(model, data)))


def distance_from_init(model, data, *, initial_weights, seed: int = 0, verbose: int = 0) -> float:
    """Jiang et al.'s "dist.init" / "frob.distance" (eq. 40): ``‖w − w_0‖₂²``, the squared
    distance of the trainable parameters from their values at initialisation.

    Args:
        initial_weights: one array per trainable variable, in ``model.trainable_variables``
            order (e.g. ``[v.numpy() for v in model.trainable_variables]`` before training).
    """
    del seed, verbose
    weights = _weights(model, data)
    initial = [np.asarray(w, np.float64) for w in initial_weights]
    if len(initial) != len(weights) or any(a.shape != b.shape for a, b in zip(initial, weights)):
        raise ValueError(
            "`initial_weights` must hold one array per trainable variable of the model, with its "
            f"shape: expected {[w.shape for w in weights]}, received {[a.shape for a in initial]}."
        )
    return float(sum(np.sum((w - w0) ** 2) for w, w0 in zip(weights, initial)))


def spectral_norm_product(model, data, *, seed: int = 0, verbose: int = 0) -> float:
    """Jiang et al.'s "prod.of.spec" (eq. 33): ``Π_layers σ_max(W)``, the product of the largest
    singular values of the layers' kernels (every trainable variable with two or more axes). A
    convolution kernel of shape (..., c_in, c_out) counts as the matrix (prod(...)·c_in, c_out),
    the usual stand-in for its operator norm. Computed as exp Σ log σ_max (inf if it overflows)."""
    del seed, verbose
    log_total = 0.0
    for w in _weights(model, data):
        if w.ndim >= 2:
            largest = float(np.linalg.norm(w.reshape(-1, w.shape[-1]), ord=2))
            if largest == 0.0:
                return 0.0
            log_total += math.log(largest)
    return math.exp(log_total) if log_total < 709 else math.inf
