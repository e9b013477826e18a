"""`PacGen`: ψ of the current clean weights from the optimizer's own estimates, as a Keras metric."""

from __future__ import annotations

import contextlib

import keras
from keras import ops

from keras_pacgen import _validation as check
from keras_pacgen.pacgen import psi_terms
from keras_pacgen.perturbation import (
    PerturbationMixin,
    clean_weights,
    formulas,
    keras_internals,
    perturbed_optimizers,
)

_NO_ESTIMATE = (
    "{name} keeps no Hessian-diagonal estimate, so ψ cannot be read from its state. Use a "
    "perturbed optimizer (keras_pacgen.PerturbedAdam / PerturbedSGD / keras_pacgen.perturb(opt)), "
    "an Adam-family optimizer (its second moment is the paper's estimate), or "
    "keras_pacgen.pacgen_score(model, data), which scores any model from data."
)

_JAX_METRIC = (
    "On JAX, PacGen reads the state a perturbed optimizer keeps after each train step, and the "
    "model's optimizer is {name}. Compile the model with keras_pacgen.PerturbedAdam / "
    "PerturbedSGD / keras_pacgen.perturb(opt) as its optimizer (not inside a LossScaleOptimizer), "
    "or use keras_pacgen.PacGenCallback(...) (ψ at every epoch end, in the logs) or "
    "keras_pacgen.psi_from_optimizer(model) after fit()."
)


def _inner(optimizer):
    """The optimizer that keeps the state, inside a LossScaleOptimizer."""
    inner = getattr(optimizer, "inner_optimizer", None)
    return _inner(inner) if inner is not None else optimizer


def has_estimates(optimizer) -> bool:
    """Whether ψ can be read from `optimizer`'s state (perturbed or Adam-family)."""
    return bool(perturbed_optimizers(optimizer)) or (
        keras_internals.second_moments(_inner(optimizer)) is not None
        and hasattr(_inner(optimizer), "beta_2")
    )


def require_estimates(optimizer) -> None:
    """Raise a `ValueError` that says what to use instead when `optimizer` keeps no estimate."""
    if not has_estimates(optimizer):
        raise ValueError(_NO_ESTIMATE.format(name=type(_inner(optimizer)).__name__))


def optimizer_estimates(optimizer, variables):
    """(clean weights, bias-corrected H_ii, ρ) from an optimizer's state; graph-friendly.

    * Perturbed optimizers: their `estimates` (the clean weights, h and ρ = max_i ρ[i]).
    * Adam-family optimizers: the variables, Adam's second moment ``v`` divided by ``1 − β2^t``
      (Adam's bias correction) and ρ = 0 (no estimate of the third derivative is kept; ψ then has
      no ρ term).
    """
    perturbed = perturbed_optimizers(optimizer)
    if perturbed:
        found = perturbed[0].estimates(variables)
        return found["weights"], found["hessians"], found["rho"]
    opt = _inner(optimizer)
    velocities = keras_internals.second_moments(opt)
    if velocities is None or not hasattr(opt, "beta_2"):
        raise ValueError(_NO_ESTIMATE.format(name=type(opt).__name__))
    if not opt.built:
        raise ValueError("The optimizer is not built yet: train at least one step first.")
    weights, hessians = [], []
    for v in variables:
        velocity = velocities[keras_internals.variable_index(opt, v)]
        if velocity is not None:
            weights.append(clean_weights.value(v))
            hessians.append(formulas.debiased(clean_weights.value(velocity), beta1=opt.beta_2,
                                              steps=clean_weights.value(opt.iterations)))
    return weights, hessians, ops.convert_to_tensor(0.0)


def psi_from_optimizer(model, *, gamma: float = 0.1, epsilon: float = 0.1):
    """ψ of `model`'s clean weights from its optimizer's estimates (see `optimizer_estimates`)."""
    weights, hessians, rho = optimizer_estimates(model.optimizer, model.trainable_variables)
    terms = psi_terms(weights, hessians, rho, gamma=gamma, epsilon=epsilon)
    return sum(t["psi"] for t in terms)


@keras.saving.register_keras_serializable(package="keras_pacgen")
class PacGen(keras.metrics.Metric):
    """The pacGen metric ψ (paper § 7) of the current clean weights, from the optimizer's state.

    ``model.compile(optimizer=PerturbedAdam(...), metrics=["accuracy", PacGen(model)])``

    ψ = Σ_i log((|w_i| + κ_i) · max(sqrt(H_ii + ρ√m κ_i), 1/κ_i)), κ_i = γ|w_i| + ε, with H_ii and
    ρ the optimizer's estimates (see `optimizer_estimates`). Smaller predicts better
    generalization. It costs one pass over the weights; to keep that under 1% of training it is
    recomputed every `update_every` training steps and reported in between (the first update
    computes it).

    On JAX the trainer shows a metric its own variables only: ψ is read from the values the
    perturbed optimizer kept from the step (`take_state_after_step`), so the model's optimizer
    must be a perturbed one itself (with Adam or a LossScaleOptimizer there, use `PacGenCallback`),
    and evaluation reports the last training value (the weights have not moved since).

    Args:
        model: the model whose optimizer and weights are read (metrics do not see the model
            otherwise).
        gamma, epsilon: κ_i = γ|w_i| + ε; the paper's 0.1 and 0.1.
        update_every: recompute ψ every this many updates.
    """

    def __init__(
        self,
        model: keras.Model | None = None,
        gamma: float = 0.1,
        epsilon: float = 0.1,
        update_every: int = 50,
        name: str = "pacgen",
        dtype=None,
    ):
        super().__init__(name=name, dtype=dtype)
        self.gamma = check.check_float("gamma", gamma, low=0.0)
        self.epsilon = check.check_float("epsilon", epsilon, low=0.0, low_inclusive=False)
        self.update_every = check.check_int("update_every", update_every, low=1)
        if model is not None and not isinstance(model, keras.Model):
            raise ValueError(f"`model` must be a keras.Model. Received: {model!r}")
        self._model_ref = [model]  # a list: keep Keras from tracking the model inside the metric
        self.value = self.add_variable((), initializer="zeros", name="psi")
        self.updates = self.add_variable((), initializer="zeros", dtype="int64", name="updates")

    def set_model(self, model: keras.Model) -> None:
        self._model_ref[0] = model

    def update_state(self, y_true=None, y_pred=None, sample_weight=None):
        model = self._model_ref[0]
        if model is None:
            raise ValueError(
                "PacGen needs the model: compile(metrics=[keras_pacgen.PacGen(model)]) or "
                "call metric.set_model(model)."
            )
        if model.optimizer is None:
            raise ValueError("PacGen reads the optimizer's state: compile the model first.")
        if not _inner(model.optimizer).built:  # Keras's build on PyTorch runs the metrics first
            return
        require_estimates(model.optimizer)
        state = contextlib.nullcontext()
        if keras.backend.backend() == "jax":
            if not isinstance(model.optimizer, PerturbationMixin):
                raise ValueError(_JAX_METRIC.format(name=type(model.optimizer).__name__))
            after_step = model.optimizer.take_state_after_step(self)
            if after_step is None:  # evaluation: no step, ψ kept
                return
            state = keras.StatelessScope(state_mapping=after_step)

        def compute():
            with state:
                psi = psi_from_optimizer(model, gamma=self.gamma, epsilon=self.epsilon)
            return ops.cast(psi, self.value.dtype)

        due = ops.equal(self.updates % self.update_every, 0)
        self.value.assign(ops.cond(due, compute, lambda: ops.copy(self.value)))
        self.updates.assign_add(1)

    def reset_state(self):
        # ψ describes the weights, not a batch average: keep the last value across epochs.
        self.updates.assign(0)

    def result(self):
        return ops.copy(self.value)

    def get_config(self):
        return {
            "gamma": self.gamma,
            "epsilon": self.epsilon,
            "update_every": self.update_every,
            "name": self.name,
            "dtype": self.dtype,
        }
