"""The pacGen metric ψ, the optimal perturbation σ* and the PAC-Bayes bound (paper §§ 5-7).

Every function takes lists of arrays, one per model variable (numpy arrays, tensors or Keras
variables): the weights ``w``, the Hessian diagonals ``H_ii`` and ρ, either one number (the
Hessian-Lipschitz constant of the whole model, as in the paper) or one array per variable
(broadcastable, e.g. per-coordinate estimates). ``m`` is the total number of parameters.

Notation: ``κ_i = γ|w_i| + ε`` (neighbourhood radius); ``log`` is natural.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from keras_pacgen import _validation as check
from keras_pacgen import backends

backend = backends.load()
_FLOAT = backend.WIDE_FLOAT  # float64, or float32 under JAX without jax_enable_x64


def _is_array(value) -> bool:
    return isinstance(value, (np.ndarray, keras.Variable)) or ops.is_tensor(value)


def _wide(value):
    """`value` as a float64 tensor. (Its arithmetic avoids ops.maximum and ops.minimum, which
    return float32 for float64 tensors on PyTorch, in Keras 3.15.)"""
    if not (isinstance(value, keras.Variable) or ops.is_tensor(value)):
        value = np.asarray(value, np.float64)  # a Python float would pass through float32 (torch)
    return ops.convert_to_tensor(value, _FLOAT)


def _as_list(name: str, values: Any) -> list:
    if _is_array(values) or np.isscalar(values):
        values = [values]
    values = list(values)
    if not values:
        raise ValueError(f"`{name}` must be a non-empty list of arrays, one per variable.")
    return [_wide(v) for v in values]


def _rho_list(rho: Any, n: int) -> list:
    if isinstance(rho, (list, tuple)):
        if len(rho) != n:
            raise ValueError(f"`rho` has {len(rho)} entries for {n} variables.")
        out = [_wide(r) for r in rho]
    else:
        out = [_wide(rho)] * n
    for r in out:
        if backend.is_concrete(r) and bool(ops.any(r < 0)):
            raise ValueError("`rho` must be >= 0 (a Lipschitz constant).")
    return out


def _prepare(weights, hessian_diagonals, rho):
    ws = _as_list("weights", weights)
    hs = _as_list("hessian_diagonals", hessian_diagonals)
    if len(ws) != len(hs):
        raise ValueError(
            f"`weights` and `hessian_diagonals` need one array per variable; got {len(ws)} and "
            f"{len(hs)}."
        )
    for w, h in zip(ws, hs):
        if tuple(w.shape) != tuple(h.shape):
            raise ValueError(
                f"Each Hessian diagonal must have its variable's shape; got {tuple(h.shape)} for "
                f"a variable of shape {tuple(w.shape)}."
            )
    m = sum(int(np.prod(w.shape)) for w in ws)
    if m == 0:
        raise ValueError("`weights` hold no parameters (m = 0).")
    return ws, hs, _rho_list(rho, len(ws)), m


def _neighbourhood(weights, hessian_diagonals, rho, gamma, epsilon):
    """Validated lists (w, H, ρ, κ = γ|w| + ε) and √m."""
    gamma = check.check_float("gamma", gamma, low=0.0)
    epsilon = check.check_float("epsilon", epsilon, low=0.0, low_inclusive=False)
    ws, hs, rhos, m = _prepare(weights, hessian_diagonals, rho)
    kappas = [gamma * ops.abs(w) + epsilon for w in ws]
    return ws, hs, rhos, kappas, math.sqrt(m)


def psi_terms(
    weights: Sequence, hessian_diagonals: Sequence, rho: Any, *, gamma: float = 0.1, epsilon: float = 0.1
) -> list[dict]:
    """ψ split per variable into its parts (float64 tensors; float32 under JAX without x64).

    For each variable: ``psi`` (its share of ψ), ``scale`` = Σ log(|w|+κ) (the κ term),
    ``hessian`` = Σ log max(sqrt(H), 1/κ) (the curvature part with ρ = 0) and ``rho`` = the rest of
    the curvature part, Σ log max(sqrt(H + ρ√m κ), 1/κ) − ``hessian``. psi = scale + hessian + rho.
    """
    ws, hs, rhos, kappas, sqrt_m = _neighbourhood(weights, hessian_diagonals, rho, gamma, epsilon)
    out = []
    for w, h, r, kappa in zip(ws, hs, rhos, kappas):
        log_inv_kappa = -ops.log(kappa)

        def log_max(a, log_inv_kappa=log_inv_kappa):
            # log max(sqrt(a), 1/κ) with sqrt(a) := 0 for a <= 0 (footnote 5)
            half_log = 0.5 * ops.log(ops.where(a > 0, a, ops.ones_like(a)))
            larger = ops.where(half_log > log_inv_kappa, half_log, log_inv_kappa)  # see _wide
            return ops.where(a > 0, larger, log_inv_kappa)

        scale = ops.sum(ops.log(ops.abs(w) + kappa))
        hess = ops.sum(log_max(h))
        full = ops.sum(log_max(h + r * sqrt_m * kappa))
        out.append({"psi": scale + full, "scale": scale, "hessian": hess, "rho": full - hess})
    return out


def psi(
    weights: Sequence, hessian_diagonals: Sequence, rho: Any, *, gamma: float = 0.1, epsilon: float = 0.1
) -> float:
    """The pacGen metric (paper § 7); smaller predicts better generalization::

        ψ = Σ_i log( (|w_i| + κ_i) · max( sqrt(H_ii + ρ √m κ_i), 1/κ_i ) ),   κ_i = γ|w_i| + ε

    When ``H_ii + ρ√m κ_i < 0`` the square root counts as 0 (footnote 5). γ = ε = 0.1 as in the
    paper's experiments.
    """
    terms = psi_terms(weights, hessian_diagonals, rho, gamma=gamma, epsilon=epsilon)
    total = sum(t["psi"] for t in terms)
    return float(total) if backend.is_concrete(total) else total


def optimal_sigma(
    weights: Sequence,
    hessian_diagonals: Sequence,
    rho: Any,
    *,
    eta: float,
    gamma: float = 0.1,
    epsilon: float = 0.1,
) -> list[np.ndarray]:
    """σ* minimising the bound of eq. 9 per coordinate (eqs. 10 and 12)::

        σ*_i = min( sqrt( 1 / (η (H_ii/3 + ρ√m κ_i/9)) ), κ_i )   if H_ii + ρ√m κ_i/3 > 0
        σ*_i = κ_i                                               otherwise
    """
    eta = check.check_float("eta", eta, low=0.0, low_inclusive=False)
    ws, hs, rhos, kappas, sqrt_m = _neighbourhood(weights, hessian_diagonals, rho, gamma, epsilon)
    out = []
    for h, r, kappa in zip(hs, rhos, kappas):
        c = h / 3.0 + r * sqrt_m * kappa / 9.0
        safe_c = ops.where(c > 0, c, ops.ones_like(c))
        root = ops.sqrt(1.0 / (eta * safe_c))
        sigma = ops.where(c > 0, ops.where(root < kappa, root, kappa), kappa)  # see _wide
        out.append(ops.convert_to_numpy(sigma))
    return out


def pac_bayes_bound(
    empirical_loss: float,
    weights: Sequence,
    hessian_diagonals: Sequence,
    rho: Any,
    *,
    n: int,
    eta: float,
    sigma: Sequence | str = "optimal",
    delta: float = 0.05,
    gamma: float = 0.1,
    epsilon: float = 0.1,
    tau: Sequence | None = None,
) -> float:
    """The PAC-Bayes bound on ``E_u[L(w+u)]``, holding with probability >= 1 − δ.

    With ``sigma`` given (one array per variable), eq. 9::

        L̂ + (1/6) Σ H σ² + (ρ√m/18) Σ κ σ² + (Σ log(τ/σ) + log(1/δ)) / η + η / (2n)

    With ``sigma="optimal"``, eq. 11 (σ = σ*, local convexity assumed)::

        L̂ + (m/2 + Σ log(τ/σ*) + log(1/δ)) / η + η / (2n)

    ``tau`` is the prior's radius per coordinate, ``τ_i >= |w_i| + κ_i``; by default its smallest
    allowed value. η cannot depend on the data: choosing it from a grid needs a union bound.
    """
    eta = check.check_float("eta", eta, low=0.0, low_inclusive=False)
    delta = check.check_float("delta", delta, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False)
    n = check.check_int("n", n, low=1)
    empirical_loss = check.check_float("empirical_loss", empirical_loss)
    ws, hs, rhos, kappas, sqrt_m = _neighbourhood(weights, hessian_diagonals, rho, gamma, epsilon)
    m = sum(int(np.prod(w.shape)) for w in ws)
    if tau is None:
        taus = [ops.abs(w) + k for w, k in zip(ws, kappas)]
    else:
        taus = _as_list("tau", tau)
        for w, k, t in zip(ws, kappas, taus):
            if bool(ops.any(t < ops.abs(w) + k)):
                raise ValueError("`tau` must satisfy tau_i >= |w_i| + kappa_i for every coordinate.")
    optimal = isinstance(sigma, str)
    if optimal:
        if sigma != "optimal":
            raise ValueError(f"`sigma` must be 'optimal' or a list of arrays. Received: {sigma!r}")
        sigmas = [
            _wide(s)
            for s in optimal_sigma(ws, hs, rhos, eta=eta, gamma=gamma, epsilon=epsilon)
        ]
    else:
        sigmas = _as_list("sigma", sigma)
        for s, k in zip(sigmas, kappas):
            if bool(ops.any(s <= 0)) or bool(ops.any(s > k * (1 + 1e-12))):
                raise ValueError("`sigma` must satisfy 0 < sigma_i <= kappa_i = gamma|w_i| + epsilon.")
    kl = sum(float(ops.sum(ops.log(t / s))) for t, s in zip(taus, sigmas))
    tail = (kl + math.log(1.0 / delta)) / eta + eta / (2.0 * n)
    if optimal:
        return empirical_loss + m / (2.0 * eta) + tail
    curvature = sum(
        float(ops.sum(h * s**2)) / 6.0 + float(ops.sum(r * sqrt_m * k * s**2)) / 18.0
        for h, s, r, k in zip(hs, sigmas, rhos, kappas)
    )
    return empirical_loss + curvature + tail
