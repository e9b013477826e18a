"""The formulas of Algorithm 1 (PertOPT, Wang et al., AISTATS 2020, § 8) as pure functions.

Each function takes and returns tensors of one variable's shape (scalars broadcast) and is written
as the paper writes it; the line numbers are those of Algorithm 1 (see ``shared/SPEC.md`` § 4)::

    7   ρ[i] ← |h_t[i] − h_{t−1}[i]| / ‖w_t − w_{t−1}‖
    8   κ[i] ← (γ / log(1 + epoch)) · |w_{t−1}[i]| + ε
    9   σ_i  ← min( 1 / (log(1 + epoch) · sqrt(η (h_t[i] + ρ[i] κ[i]))),  κ[i] ) · 1{|g_t[i]| < β2}
    11  u_t[i] ~ U(−σ_i, σ_i)
    14  h_{t+1} ← β1 h_t + (1 − β1) g_{t+1}²

η (eta) is the PAC-Bayes trade-off, γ (gamma) and ε (epsilon) set the neighbourhood radius κ,
β1 (beta1) is the decay of the Hessian-diagonal estimate h, β2 (beta2) the gradient threshold of
the mask. ``log_epoch`` is log(1 + epoch) with the epoch counted from 1.
"""

from __future__ import annotations

import ml_dtypes
from keras import ops

from keras_pacgen.perturbation.noise import uniform_unit


def hessian_update(h, g, *, beta1: float):
    """Line 14: ``h_{t+1} = β1 h_t + (1 − β1) g²``; returns (h_{t+1}, h_{t+1} − h_t).

    Written as ``h_t + (1 − β1)(g² − h_t)``, Adam's form, so that h is bit for bit the second
    moment of a Keras Adam with ``beta_2 = β1``.
    """
    change = (ops.square(g) - h) * (1.0 - beta1)
    return h + change, change


def hessian_change(h_next, g, *, beta1: float):
    """``h_{t+1} − h_t`` from h_{t+1} alone: line 14 solved for h_t (β1 > 0) gives
    ``((1 − β1) / β1) · (g² − h_{t+1})``. For an h that the wrapped optimizer has already updated
    (Adam's second moment), so h_t need not be kept."""
    return (ops.square(g) - h_next) * ((1.0 - beta1) / beta1)


def debiased(h, *, beta1: float, steps):
    """``h / (1 − β1^t)``: h is a moving average started at 0 (Adam's bias correction), so that
    early in training it is not dominated by its start; `steps` is t (at least 1)."""
    steps = ops.cast(ops.maximum(steps, 1), "float32")
    return ops.cast(h, "float32") / (1.0 - ops.power(float(beta1), steps))


def hessian_lipschitz(h_change, inverse_weight_change):
    """Line 7: ``ρ[i] = |h_t[i] − h_{t−1}[i]| / ‖w_t − w_{t−1}‖``.

    ``inverse_weight_change`` is ``1 / ‖w_t − w_{t−1}‖``, 0 when the weights did not move (ρ is
    then 0: no estimate).
    """
    return ops.abs(h_change) * inverse_weight_change


def inverse_norm(squared_norm):
    """``1 / sqrt(squared_norm)``, and 0 for a zero norm."""
    return ops.divide_no_nan(1.0, ops.sqrt(squared_norm))


def neighbourhood_radius(weights, *, gamma: float, epsilon: float, log_epoch):
    """Line 8: ``κ = γ / log(1 + epoch) · |w| + ε``, capped at the dtype's largest value."""
    weights = ops.convert_to_tensor(weights)
    kappa = (gamma / ops.cast(log_epoch, ops.dtype(weights))) * ops.abs(weights) + epsilon
    return ops.minimum(kappa, float(ml_dtypes.finfo(ops.dtype(weights)).max))


def gradient_mask(g, *, beta2: float):
    """The mask of line 9, ``1{|g| < β2}``: only coordinates with a small gradient are perturbed."""
    return ops.cast(ops.abs(g) < beta2, ops.dtype(g))


def perturbation_scale(h, rho, kappa, mask, *, eta: float, log_epoch):
    """Line 9: ``σ = min( 1 / (log(1 + epoch) · sqrt(η (h + ρ κ))),  κ ) · mask``.

    Computed as ``sqrt(1 / (η (h + ρ κ))) / log(1 + epoch)``: h = ρ = 0 gives sqrt(1/0) = ∞, so σ = κ,
    and an η (h + ρ κ) that overflows gives 0; for finite h >= 0, ρ >= 0 and κ > 0, σ is finite
    and 0 <= σ <= κ.
    """
    log_epoch = ops.cast(log_epoch, ops.dtype(kappa))
    bound = ops.sqrt(1.0 / (eta * (h + rho * kappa))) / log_epoch
    return ops.minimum(bound, kappa) * mask


def perturbation(sigma, shape, dtype, *, seed: int, step, index):
    """Lines 10-11: ``u = σ ⊙ r``, ``r ~ U(−1, 1)`` drawn from (seed, step, variable index)."""
    return ops.cast(sigma, dtype) * uniform_unit(shape, dtype, seed, step, index)


def perturbed_weights(weights, sigma, *, seed: int, step, index):
    """``w + u`` (u of `perturbation`).

    σ holds bfloat16 values and r lies on a 16-bit grid (see noise.py), so ``σ·r`` is exact and
    ``w + u`` is rounded once: the training step and a later re-application compute the same bits,
    with or without XLA.
    """
    return weights + perturbation(sigma, weights.shape, ops.dtype(weights), seed=seed, step=step,
                                  index=index)
