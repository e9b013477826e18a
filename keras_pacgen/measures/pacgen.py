"""The paper's own measures of a trained model: ψ (§ 7) and the PAC-Bayes bound at σ* (eq. 11),
with H_ii and ρ estimated from data."""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import numpy as np

from keras_pacgen import _validation as check
from keras_pacgen import metrics
from keras_pacgen import pacgen as formulas
from keras_pacgen.measures import _common

ESTIMATORS = ("squared_gradients", "hutchinson", "optimizer")


@dataclasses.dataclass
class PacGenScore:
    """ψ of a model with its parts.

    Attributes:
        psi: the pacGen metric ψ (smaller predicts better generalization).
        rho: the Hessian-Lipschitz estimate ρ used in ψ.
        num_parameters: m.
        estimator: how H_ii was estimated.
        num_batches: batches used per Hessian estimate.
        per_variable: one dict per trainable variable: ``name``, ``size``, ``psi`` (its share),
            ``scale`` (Σ log(|w|+κ), the κ term), ``hessian`` (the curvature part with ρ = 0) and
            ``rho`` (what ρ adds); psi = scale + hessian + rho.
        hessian_diagonals: the H_ii estimates, one numpy array per variable.
        seconds_per_gradient: median wall time of one gradient on one batch.
        seconds_per_hvp: median wall time of one Hessian-vector product on one batch (Hutchinson).
    """

    psi: float
    rho: float
    num_parameters: int
    estimator: str
    num_batches: int
    per_variable: list[dict[str, Any]]
    hessian_diagonals: list[np.ndarray] = dataclasses.field(repr=False)
    seconds_per_gradient: float = math.nan
    seconds_per_hvp: float = math.nan

    @property
    def hvp_cost_ratio(self) -> float:
        """Cost of one Hessian-vector product relative to one gradient."""
        return self.seconds_per_hvp / self.seconds_per_gradient

    @property
    def per_layer(self) -> dict[str, dict[str, float]]:
        """The per-variable parts summed by layer (the path before the last '/')."""
        layers: dict[str, dict[str, float]] = {}
        for row in self.per_variable:
            acc = layers.setdefault(row["name"].rsplit("/", 1)[0],
                                    {"psi": 0.0, "scale": 0.0, "hessian": 0.0, "rho": 0.0, "size": 0})
            for key in acc:
                acc[key] += row[key]
        return layers

    def summary(self) -> str:
        lines = [
            f"pacGen psi = {self.psi:.4f}  (m = {self.num_parameters}, rho = {self.rho:.4g}, "
            f"H by {self.estimator} over {self.num_batches} batches)",
            f"{'layer':40s} {'params':>10s} {'psi':>12s} {'kappa term':>12s} {'H term':>12s} {'rho term':>12s}",
        ]
        for name, row in self.per_layer.items():
            lines.append(f"{name:40s} {row['size']:>10d} {row['psi']:>12.3f} {row['scale']:>12.3f} "
                         f"{row['hessian']:>12.3f} {row['rho']:>12.3f}")
        return "\n".join(lines)


class _Diagonal:
    """H_ii estimates over fixed batches (and, for Hutchinson, fixed vectors z), timed."""

    def __init__(self, loss: _common.Objective, estimator: str, samples: int, rng):
        self.loss, self.estimator = loss, estimator
        self.vectors = [[[rng.choice([-1.0, 1.0], size=v.shape) for v in loss.variables]
                         for _ in range(samples)] for _ in loss.batches] if estimator == "hutchinson" else []
        self.grad_seconds, self.hvp_seconds = [], []

    def __call__(self, bar, weights=None) -> list[np.ndarray]:
        total = [np.zeros(v.shape, np.float64) for v in self.loss.variables]
        count = 0
        for b in range(len(self.loss.batches)):
            start = time.perf_counter()
            gradient = [_common.to_numpy(g) for g in self.loss.batch_gradient(b, weights)]
            self.grad_seconds.append(time.perf_counter() - start)
            if self.estimator == "squared_gradients":  # the paper's (∇L̂[i])², per minibatch
                parts = [[g * g for g in gradient]]
            else:  # Hutchinson: E_z[z ⊙ H z], z Rademacher
                parts = []
                for z in self.vectors[b]:
                    start = time.perf_counter()
                    hz = self.loss.batch_hessian_vector_product(b, z, weights)
                    parts.append([a * _common.to_numpy(h) for a, h in zip(z, hz)])
                    self.hvp_seconds.append(time.perf_counter() - start)
            for part in parts:
                for acc, p in zip(total, part):
                    acc += p
                count += 1
            _common.tick(bar)
        return [acc / count for acc in total]


def pacgen_score(model, data=None, *, estimator: str = "squared_gradients", max_batches: int = 10,
                 batch_size: int = 128, hutchinson_samples: int = 4, rho_scale: float = 0.1,
                 gamma: float = 0.1, epsilon: float = 0.1, loss=None,
                 include_regularization: bool = False, seed: int = 0,
                 verbose: int = 1) -> PacGenScore:
    """ψ of a trained model (paper § 7), with its parts.

    Args:
        model: a built Keras model (its current weights are scored).
        data: the training data (see `keras_pacgen.measures.data`); not read by
            ``estimator="optimizer"``.
        estimator: how to estimate the Hessian diagonal ``H_ii`` and ρ:

            * ``"squared_gradients"``: the paper's ``(∇L̂[i])²`` on minibatches of `batch_size`,
              averaged over the first `max_batches` of them. It is the empirical Fisher of the
              minibatch mean, ``H_ii + Var_B[∇L̂_B[i]]``: its gradient-noise part shrinks as
              1/batch_size, so ψ is comparable only between networks scored at one batch size
              (128 here, as the paper's training batches).
            * ``"hutchinson"``: ``E_z[z ⊙ Hz]`` with Rademacher ``z`` and exact Hessian-vector
              products (unbiased for the true Hessian diagonal, noisier).
            * ``"optimizer"``: the paper's own estimator, the exponential moving average h of
              squared gradients and ρ that a perturbed optimizer keeps while training (an
              Adam-family optimizer's second moment, ρ = 0), read from ``model.optimizer`` as
              `keras_pacgen.PacGen` reads it.

        max_batches: at most this many batches are used (each estimate uses the same batches).
        batch_size: the minibatch size (`data` is re-batched to it).
        hutchinson_samples: Rademacher vectors per batch for ``"hutchinson"``.
        rho_scale: ρ follows the paper's rule ``ρ = max_i |H_ii(w+u) − H_ii(w)| / |u_i|`` with
            ``u_i = ±rho_scale·κ_i`` (random signs, so no |u_i| is near 0), both diagonals
            estimated on the same batches (and the same z).
        gamma, epsilon: κ_i = γ|w_i| + ε (the paper: 0.1 and 0.1).
        loss: the loss; defaults to the compiled loss.
        include_regularization: add ``model.losses`` to the loss (default: the data loss).
        seed: seed of the random signs and Rademacher vectors.
        verbose: 1 shows a progress bar.
    """
    check.check_choice("estimator", estimator, ESTIMATORS)
    check.check_int("max_batches", max_batches, low=1)
    samples = check.check_int("hutchinson_samples", hutchinson_samples, low=1)
    rho_scale = check.check_float("rho_scale", rho_scale, low=0.0, low_inclusive=False)
    check.check_float("gamma", gamma, low=0.0)
    check.check_float("epsilon", epsilon, low=0.0, low_inclusive=False)
    if estimator == "optimizer":
        return _from_optimizer(model, gamma, epsilon)
    target = _common.objective(model, data, batch_size=batch_size, max_batches=max_batches,
                               loss=loss, include_regularization=include_regularization)
    rng = np.random.default_rng(seed)
    diagonal = _Diagonal(target, estimator, samples, rng)
    bar = _common.progress(verbose, 2 * len(target.batches), "batch")
    original = [_common.to_numpy(w) for w in target.weights]
    h0 = diagonal(bar)
    us = [rho_scale * (gamma * np.abs(w) + epsilon) * rng.choice([-1.0, 1.0], size=w.shape)
          for w in original]
    h1 = diagonal(bar, [w + u for w, u in zip(original, us)])
    ratios = [np.max(np.abs(a - b) / np.abs(u)) if u.size else 0.0 for a, b, u in zip(h1, h0, us)]
    rho = float(max(ratios))
    return _score([v.path for v in target.variables], original, h0, rho, gamma, epsilon, estimator,
                  len(target.batches), diagonal)


def _from_optimizer(model, gamma, epsilon) -> PacGenScore:
    _common.check_model(model, needs_loss=False)
    if getattr(model, "optimizer", None) is None:
        raise ValueError("estimator='optimizer' reads the optimizer's state: compile and train the "
                         "model first (or use estimator='squared_gradients' or 'hutchinson').")
    metrics.require_estimates(model.optimizer)
    variables = model.trainable_variables
    weights, hessians, rho = metrics.optimizer_estimates(model.optimizer, variables)
    names = ([v.path for v in variables] if len(variables) == len(weights)
             else [f"estimate_{k}" for k in range(len(weights))])
    return _score(names, [_common.to_numpy(w) for w in weights],
                  [_common.to_numpy(h) for h in hessians], float(rho), gamma, epsilon,
                  "optimizer", 0, None)


def _score(names, weights, hessians, rho, gamma, epsilon, estimator, num_batches, diagonal):
    terms = formulas.psi_terms(weights, hessians, rho, gamma=gamma, epsilon=epsilon)
    per_variable = [
        {"name": name, "size": int(np.size(w)),
         **{k: float(t[k]) for k in ("psi", "scale", "hessian", "rho")}}
        for name, w, t in zip(names, weights, terms)
    ]
    return PacGenScore(
        psi=float(sum(row["psi"] for row in per_variable)), rho=rho,
        num_parameters=sum(row["size"] for row in per_variable), estimator=estimator,
        num_batches=num_batches, per_variable=per_variable, hessian_diagonals=hessians,
        seconds_per_gradient=_median(diagonal.grad_seconds) if diagonal else math.nan,
        seconds_per_hvp=_median(diagonal.hvp_seconds) if diagonal else math.nan,
    )


def _median(seconds):
    """The median wall time, without the first call (which traces the function)."""
    return float(np.median(seconds[1:] or seconds)) if seconds else math.nan


def pacgen(model, data=None, *, seed: int = 0, estimator: str = "squared_gradients",
           gamma: float = 0.1, epsilon: float = 0.1, max_batches: int = 10, batch_size: int = 128,
           include_regularization: bool = False, verbose: int = 0) -> float:
    """The pacGen metric ψ (Wang et al. 2020, § 7), smaller predicting better generalization::

        ψ = Σ_i log( (|w_i| + κ_i) · max( sqrt(H_ii + ρ √m κ_i), 1/κ_i ) ),   κ_i = γ|w_i| + ε

    with H_ii and ρ estimated by `pacgen_score` (``estimator="squared_gradients"``, the paper's
    estimate from a trained model, ``"hutchinson"``, or ``"optimizer"``, the paper's moving
    average kept by a perturbed optimizer), whose detailed result this is the ψ of.
    """
    return pacgen_score(model, data, estimator=estimator, gamma=gamma, epsilon=epsilon, seed=seed,
                        max_batches=max_batches, batch_size=batch_size,
                        include_regularization=include_regularization, verbose=verbose).psi


def pac_bayes_bound(model, data, *, seed: int = 0, eta: float | None = None, delta: float = 0.05,
                    estimator: str = "squared_gradients", gamma: float = 0.1, epsilon: float = 0.1,
                    max_batches: int = 10, batch_size: int = 128,
                    include_regularization: bool = False, verbose: int = 0) -> float:
    """The PAC-Bayes bound at the optimal perturbation σ* (Wang et al. 2020, eq. 11)::

        E_u[L(w + u)] <= L̂(w) + (m/2 + Σ_i log(τ_i/σ*_i) + log(1/δ)) / η + η/(2n)

    with L̂ the data loss on all of `data` (n samples), H_ii and ρ estimated by `pacgen_score` on
    its first `max_batches` batches, τ_i = |w_i| + κ_i. η defaults to sqrt(m·n), the order
    Theorem 2 works with; the bound holds with probability 1 − δ for an η fixed before seeing the
    data.
    """
    score = pacgen_score(model, data, estimator=estimator, gamma=gamma, epsilon=epsilon, seed=seed,
                         max_batches=max_batches, batch_size=batch_size,
                         include_regularization=include_regularization, verbose=verbose)
    every = _common.objective(model, data, batch_size=batch_size,
                              include_regularization=include_regularization)
    n = every.num_samples
    eta = math.sqrt(score.num_parameters * n) if eta is None else eta
    return formulas.pac_bayes_bound(
        every.value(), [_common.to_numpy(w) for w in every.weights], score.hessian_diagonals,
        score.rho, n=n, eta=eta, delta=delta, gamma=gamma, epsilon=epsilon,
    )
