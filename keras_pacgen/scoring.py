"""`pacgen_score`: ψ of any trained Keras model, estimating H_ii and ρ from data (paper § 7)."""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_pacgen import _validation as check
from keras_pacgen.pacgen import psi_terms

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
        seconds_per_gradient: mean wall time of one gradient evaluation on one batch.
        seconds_per_hvp: mean wall time of one Hessian-vector product on one batch (Hutchinson).
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
            layer = row["name"].rsplit("/", 1)[0]
            acc = layers.setdefault(layer, {"psi": 0.0, "scale": 0.0, "hessian": 0.0, "rho": 0.0, "size": 0})
            for key in ("psi", "scale", "hessian", "rho", "size"):
                acc[key] += row[key]
        return layers

    def summary(self) -> str:
        lines = [
            f"pacGen psi = {self.psi:.4f}  (m = {self.num_parameters}, rho = {self.rho:.4g}, "
            f"H by {self.estimator} over {self.num_batches} batches)",
            f"{'layer':40s} {'params':>10s} {'psi':>12s} {'kappa term':>12s} {'H term':>12s} {'rho term':>12s}",
        ]
        for name, row in self.per_layer.items():
            lines.append(
                f"{name:40s} {row['size']:>10d} {row['psi']:>12.3f} {row['scale']:>12.3f} "
                f"{row['hessian']:>12.3f} {row['rho']:>12.3f}"
            )
        return "\n".join(lines)


def as_batches(data, batch_size: int = 128, name: str = "data") -> tf.data.Dataset:
    """A dataset of (x, y) batches from a dataset, a (x, y) tuple of arrays, or a Keras PyDataset."""
    if isinstance(data, tf.data.Dataset):
        spec = data.element_spec
        first = spec[0] if isinstance(spec, tuple) else spec
        if isinstance(first, tf.TensorSpec) and (first.shape.rank or 0) >= 1 and first.shape[0] is None:
            return data
        return data.batch(batch_size)
    if isinstance(data, (tuple, list)) and len(data) in (2, 3):
        x, y = data[0], data[1]
        if len(x) == 0:
            raise ValueError(f"`{name}` is empty: it holds no samples.")
        return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)
    raise ValueError(
        f"`{name}` must be a tf.data.Dataset of (x, y) or a tuple (x, y) of arrays. "
        f"Received: {type(data).__name__}"
    )


def _loss_fn(model, loss):
    loss = loss if loss is not None else getattr(model, "loss", None)
    if loss is None:
        raise ValueError(
            "pacgen_score needs a loss: compile the model or pass loss=... (e.g. "
            "'sparse_categorical_crossentropy')."
        )
    return keras.losses.get(loss) if isinstance(loss, (str, dict)) else loss


def _variables(model):
    if not model.built:
        raise ValueError("The model is not built: call it on data or build it before scoring.")
    variables = list(model.trainable_variables)
    if not variables:
        raise ValueError("The model has no trainable variables to score.")
    return variables


class _Estimator:
    """Diagonal-Hessian estimates of a model's loss over a fixed list of batches."""

    def __init__(self, model, loss_fn, variables, seed: int):
        self.model, self.loss_fn, self.variables, self.seed = model, loss_fn, variables, seed
        self.grad_seconds: list[float] = []
        self.hvp_seconds: list[float] = []

        @tf.function(reduce_retracing=True)
        def squared_gradient(x, y):
            with tf.GradientTape() as tape:
                loss = self._loss(x, y)
            return [tf.square(tf.cast(g, tf.float32)) for g in tape.gradient(loss, variables)]

        @tf.function(reduce_retracing=True)
        def hutchinson(x, y, step):
            zs = [
                tf.cast(
                    2 * tf.random.stateless_uniform(v.shape, [seed, step * 1000 + i], 0, 2, tf.int32) - 1,
                    v.dtype,
                )
                for i, v in enumerate(variables)
            ]
            with tf.GradientTape() as outer:
                with tf.GradientTape() as inner:
                    loss = self._loss(x, y)
                grads = inner.gradient(loss, variables)
                dot = tf.add_n([tf.reduce_sum(g * z) for g, z in zip(grads, zs)])
            hz = outer.gradient(dot, variables, unconnected_gradients="zero")
            return [tf.cast(z * h, tf.float32) for z, h in zip(zs, hz)]

        @tf.function(reduce_retracing=True)
        def gradient_only(x, y):
            with tf.GradientTape() as tape:
                loss = self._loss(x, y)
            return tape.gradient(loss, variables)

        self._squared_gradient, self._hutchinson, self._gradient = squared_gradient, hutchinson, gradient_only

    def _loss(self, x, y):
        # A loss function (not a keras.losses.Loss) returns per-sample values: L̂ is their mean.
        loss = tf.reduce_mean(self.loss_fn(y, self.model(x, training=False)))
        if self.model.losses:
            loss = loss + tf.add_n(self.model.losses)
        return loss

    def diagonal(self, batches, estimator: str, samples: int, progbar=None) -> list[np.ndarray]:
        total = [np.zeros(v.shape, np.float64) for v in self.variables]
        count = 0
        for b, (x, y) in enumerate(batches):
            if estimator == "squared_gradients":
                t0 = time.perf_counter()
                parts = [self._squared_gradient(x, y)]
                parts[0][0].numpy()
                self.grad_seconds.append(time.perf_counter() - t0)
            else:
                parts = []
                for s in range(samples):
                    t0 = time.perf_counter()
                    est = self._hutchinson(x, y, tf.constant(b * samples + s, tf.int32))
                    est[0].numpy()
                    self.hvp_seconds.append(time.perf_counter() - t0)
                    parts.append(est)
                t0 = time.perf_counter()
                self._gradient(x, y)[0].numpy()
                self.grad_seconds.append(time.perf_counter() - t0)
            for est in parts:
                for acc, e in zip(total, est):
                    acc += e.numpy()
                count += 1
            if progbar is not None:
                progbar.add(1)
        if count == 0:
            raise ValueError("`data` yielded no batches: nothing to estimate the Hessian from.")
        return [acc / count for acc in total]


def pacgen_score(
    model: keras.Model,
    data,
    *,
    estimator: str = "squared_gradients",
    max_batches: int = 10,
    batch_size: int = 128,
    hutchinson_samples: int = 4,
    rho_scale: float = 0.1,
    gamma: float = 0.1,
    epsilon: float = 0.1,
    loss=None,
    seed: int = 0,
    verbose: int = 1,
) -> PacGenScore:
    """ψ of a trained model, with its parts.

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
    max_batches = check.check_int("max_batches", max_batches, low=1)
    batch_size = check.check_int("batch_size", batch_size, low=1)
    hutchinson_samples = check.check_int("hutchinson_samples", hutchinson_samples, low=1)
    rho_scale = check.check_float("rho_scale", rho_scale, low=0.0, low_inclusive=False)
    check.check_float("gamma", gamma, low=0.0)
    check.check_float("epsilon", epsilon, low=0.0, low_inclusive=False)
    variables = _variables(model)
    loss_fn = _loss_fn(model, loss)
    batches = list(as_batches(data, batch_size).take(max_batches))
    if not batches:
        raise ValueError("`data` is empty: it yielded no batches.")
    est = _Estimator(model, loss_fn, variables, seed)
    progbar = keras.utils.Progbar(2 * len(batches), unit_name="batch") if verbose else None

    original = [v.numpy() for v in variables]
    h0 = est.diagonal(batches, estimator, hutchinson_samples, progbar)
    rng = np.random.default_rng(seed)
    us = []
    for v, w in zip(variables, original):
        kappa = gamma * np.abs(w) + epsilon
        u = (rho_scale * kappa * rng.choice([-1.0, 1.0], size=w.shape)).astype(w.dtype)
        us.append(u)
        v.assign(w + u)
    try:
        h1 = est.diagonal(batches, estimator, hutchinson_samples, progbar)
    finally:
        for v, w in zip(variables, original):
            v.assign(w)
    ratios = [np.max(np.abs(a - b) / np.abs(u)) if u.size else 0.0 for a, b, u in zip(h1, h0, us)]
    rho = float(max(ratios))
    terms = psi_terms(original, h0, rho, gamma=gamma, epsilon=epsilon)
    per_variable = [
        {
            "name": getattr(v, "path", v.name),
            "size": int(np.prod(v.shape)),
            **{k: float(t[k]) for k in ("psi", "scale", "hessian", "rho")},
        }
        for v, t in zip(variables, terms)
    ]
    return PacGenScore(
        psi=float(sum(row["psi"] for row in per_variable)),
        rho=rho,
        num_parameters=sum(row["size"] for row in per_variable),
        estimator=estimator,
        num_batches=len(batches),
        per_variable=per_variable,
        hessian_diagonals=h0,
        seconds_per_gradient=float(np.median(est.grad_seconds[1:] or est.grad_seconds)),
        seconds_per_hvp=float(np.median(est.hvp_seconds[1:] or est.hvp_seconds))
        if est.hvp_seconds
        else math.nan,
    )
