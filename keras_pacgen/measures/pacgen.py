"""The paper's own measures of a trained model: ψ (§ 7) and the PAC-Bayes bound at σ* (eq. 11),
with H_ii and ρ estimated from data."""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import numpy as np

from keras_pacgen import _validation as check
from keras_pacgen import pacgen as formulas
from keras_pacgen.measures import _common

ESTIMATORS = ("squared_gradients", "hutchinson")


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

    def __init__(self, loss: _common.Loss, estimator: str, samples: int, rng):
        self.loss, self.estimator = loss, estimator
        self.vectors = [[[rng.choice([-1.0, 1.0], size=v.shape) for v in loss.variables]
                         for _ in range(samples)] for _ in loss.batches] if estimator == "hutchinson" else []
        self.grad_seconds, self.hvp_seconds = [], []

    def __call__(self, bar) -> list[np.ndarray]:
        total = [np.zeros(v.shape, np.float64) for v in self.loss.variables]
        count = 0
        for b in range(len(self.loss.batches)):
            start = time.perf_counter()
            gradient = [np.asarray(g, np.float64) for g in self.loss.batch_gradient(b)]
            self.grad_seconds.append(time.perf_counter() - start)
            if self.estimator == "squared_gradients":  # the paper's (∇L̂[i])², per minibatch
                parts = [[g * g for g in gradient]]
            else:  # Hutchinson: E_z[z ⊙ H z], z Rademacher
                parts = []
                for z in self.vectors[b]:
                    start = time.perf_counter()
                    hz = self.loss.batch_hessian_vector_product(b, z)
                    parts.append([a * np.asarray(h, np.float64) for a, h in zip(z, hz)])
                    self.hvp_seconds.append(time.perf_counter() - start)
            for part in parts:
                for acc, p in zip(total, part):
                    acc += p
                count += 1
            _common.tick(bar)
        return [acc / count for acc in total]


def pacgen_score(model, data, *, estimator: str = "squared_gradients", max_batches: int = 10,
                 batch_size: int = 128, hutchinson_samples: int = 4, rho_scale: float = 0.1,
                 gamma: float = 0.1, epsilon: float = 0.1, loss=None, seed: int = 0,
                 verbose: int = 1) -> PacGenScore:
    """ψ of a trained model (paper § 7), with its parts.

    Args:
        model: a built Keras model (its current weights are scored).
        data: a `tf.data.Dataset` of (x, y) batches, or a tuple (x, y) of arrays.
        estimator: how to estimate the Hessian diagonal ``H_ii`` over the batches:
            ``"squared_gradients"``, the paper's ``(∇L̂[i])²`` averaged over minibatches (the
            empirical Fisher: it grows with gradient noise, so with smaller batches), or
            ``"hutchinson"``, ``E_z[z ⊙ Hz]`` with Rademacher ``z`` and exact Hessian-vector
            products (unbiased for the true Hessian diagonal, noisier).
        max_batches: at most this many batches are used (each estimate uses the same batches).
        batch_size: batch size when `data` is a tuple of arrays.
        hutchinson_samples: Rademacher vectors per batch for ``"hutchinson"``.
        rho_scale: ρ follows the paper's rule ``ρ = max_i |H_ii(w+u) − H_ii(w)| / |u_i|`` with
            ``u_i = ±rho_scale·κ_i`` (random signs, so no |u_i| is near 0), both diagonals
            estimated on the same batches (and the same z).
        gamma, epsilon: κ_i = γ|w_i| + ε (the paper: 0.1 and 0.1).
        loss: the loss; defaults to the compiled loss. Regularisation losses are added.
        seed: seed of the random signs and Rademacher vectors.
        verbose: 1 shows a progress bar.
    """
    check.check_choice("estimator", estimator, ESTIMATORS)
    check.check_int("max_batches", max_batches, low=1)
    samples = check.check_int("hutchinson_samples", hutchinson_samples, low=1)
    rho_scale = check.check_float("rho_scale", rho_scale, low=0.0, low_inclusive=False)
    check.check_float("gamma", gamma, low=0.0)
    check.check_float("epsilon", epsilon, low=0.0, low_inclusive=False)
    target = _common.Loss(model, _common.batches(data, batch_size=batch_size, max_batches=max_batches),
                          loss=loss)
    rng = np.random.default_rng(seed)
    diagonal = _Diagonal(target, estimator, samples, rng)
    bar = _common.progress(verbose, 2 * len(target.batches), "batch")
    original = _common.weights(model)
    h0 = diagonal(bar)
    us = [rho_scale * (gamma * np.abs(w) + epsilon) * rng.choice([-1.0, 1.0], size=w.shape)
          for w in original]
    with _common.shifted(target.variables, original) as shift:
        shift(us)
        h1 = diagonal(bar)
    ratios = [np.max(np.abs(a - b) / np.abs(u)) if u.size else 0.0 for a, b, u in zip(h1, h0, us)]
    rho = float(max(ratios))
    terms = formulas.psi_terms(original, h0, rho, gamma=gamma, epsilon=epsilon)
    per_variable = [
        {"name": v.path, "size": int(np.prod(v.shape)),
         **{k: float(t[k]) for k in ("psi", "scale", "hessian", "rho")}}
        for v, t in zip(target.variables, terms)
    ]
    return PacGenScore(
        psi=float(sum(row["psi"] for row in per_variable)), rho=rho,
        num_parameters=sum(row["size"] for row in per_variable), estimator=estimator,
        num_batches=len(target.batches), per_variable=per_variable, hessian_diagonals=h0,
        seconds_per_gradient=_median(diagonal.grad_seconds),
        seconds_per_hvp=_median(diagonal.hvp_seconds),
    )


def _median(seconds):
    """The median wall time, without the first call (which traces the function)."""
    return float(np.median(seconds[1:] or seconds)) if seconds else math.nan


def pacgen(model, data, *, seed: int = 0, estimator: str = "squared_gradients",
           gamma: float = 0.1, epsilon: float = 0.1, max_batches: int = 10, batch_size: int = 128,
           verbose: int = 1) -> float:
    """The pacGen metric ψ (Wang et al. 2020, § 7), smaller predicting better generalization::

        ψ = Σ_i log( (|w_i| + κ_i) · max( sqrt(H_ii + ρ √m κ_i), 1/κ_i ) ),   κ_i = γ|w_i| + ε

    with H_ii and ρ estimated from `data` by `pacgen_score` (``estimator="squared_gradients"``,
    the paper's, or ``"hutchinson"``), whose detailed result this is the ψ of.
    """
    return pacgen_score(model, data, estimator=estimator, gamma=gamma, epsilon=epsilon, seed=seed,
                        max_batches=max_batches, batch_size=batch_size, verbose=verbose).psi


def pac_bayes_bound(model, data, *, seed: int = 0, eta: float | None = None, delta: float = 0.05,
                    estimator: str = "squared_gradients", gamma: float = 0.1, epsilon: float = 0.1,
                    max_batches: int = 10, batch_size: int = 128, verbose: int = 1) -> float:
    """The PAC-Bayes bound at the optimal perturbation σ* (Wang et al. 2020, eq. 11)::

        E_u[L(w + u)] <= L̂(w) + (m/2 + Σ_i log(τ_i/σ*_i) + log(1/δ)) / η + η/(2n)

    with L̂ the loss on all of `data` (n samples), H_ii and ρ estimated by `pacgen_score` on its
    first `max_batches` batches, τ_i = |w_i| + κ_i. η defaults to sqrt(m·n), the order Theorem 2
    works with; the bound holds with probability 1 − δ for an η fixed before seeing the data.
    """
    score = pacgen_score(model, data, estimator=estimator, gamma=gamma, epsilon=epsilon, seed=seed,
                         max_batches=max_batches, batch_size=batch_size, verbose=verbose)
    every = _common.batches(data, batch_size=batch_size)
    n = _common.num_samples(every)
    eta = math.sqrt(score.num_parameters * n) if eta is None else eta
    return formulas.pac_bayes_bound(
        _common.Loss(model, every).value(), _common.weights(model), score.hessian_diagonals,
        score.rho, n=n, eta=eta, delta=delta, gamma=gamma, epsilon=epsilon,
    )
