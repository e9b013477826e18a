"""`PacGen`: ψ of the current clean weights from the optimizer's own estimates, as a Keras metric."""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_pacgen import _validation as check
from keras_pacgen.callbacks.perturbation import perturbed_optimizers
from keras_pacgen.pacgen import psi_terms

_NO_ESTIMATE = (
    "{name} keeps no Hessian-diagonal estimate, so ψ cannot be read from its state. Use a "
    "perturbed optimizer (keras_pacgen.PerturbedAdam / PerturbedSGD / keras_pacgen.perturb(opt)), "
    "an Adam-family optimizer (its second moment is the paper's estimate), or "
    "keras_pacgen.pacgen_score(model, data), which scores any model from data."
)


def _unwrap(optimizer):
    inner = getattr(optimizer, "inner_optimizer", None)
    return _unwrap(inner) if inner is not None else optimizer


def has_estimates(optimizer) -> bool:
    """Whether ψ can be read from `optimizer`'s state (perturbed or Adam-family)."""
    opt = _unwrap(optimizer)
    return bool(perturbed_optimizers(opt)) or hasattr(opt, "_velocities") and hasattr(opt, "beta_2")


def require_estimates(optimizer) -> None:
    """Raise a `ValueError` that says what to use instead when `optimizer` keeps no estimate."""
    if not has_estimates(optimizer):
        raise ValueError(_NO_ESTIMATE.format(name=type(_unwrap(optimizer)).__name__))


def optimizer_estimates(optimizer, variables):
    """(clean weights, bias-corrected H_ii, ρ) from an optimizer's state; graph-friendly.

    * Perturbed optimizers: the clean weights (the ``clean`` slot while ``u`` is applied), h and
      ρ = max_i ρ[i] (the paper's ρ is one Lipschitz constant).
    * Adam-family optimizers: the variables, Adam's second moment ``v`` and ρ = 0 (no estimate of
      the third derivative is kept; ψ then has no ρ term).

    h is an exponential moving average started at 0; it is divided by ``1 − β^t`` (Adam's bias
    correction) so that ψ early in training is not dominated by the start-up bias.
    """
    opt = _unwrap(optimizer)
    perturbed = perturbed_optimizers(opt)
    if not getattr(opt, "built", False):
        raise ValueError("The optimizer is not built yet: train at least one step first.")
    step = tf.cast(tf.maximum(opt.iterations, 1), tf.float32)
    if perturbed:
        opt = perturbed[0]
        applied = tf.greater(opt._perturbation_applied, 0)
        weights, hessians, rhos = [], [], []
        decay = float(opt.hessian_decay)
        correction = 1.0 - tf.pow(decay, step)
        for v in variables:
            idx = opt._get_variable_index(v)
            if not opt._is_perturbed(idx):
                continue
            weights.append(tf.where(applied, tf.convert_to_tensor(opt._clean_weights[idx]), v))
            hessians.append(tf.convert_to_tensor(opt._hessians[idx]) / correction)
            rhos.append(tf.reduce_max(tf.convert_to_tensor(opt._rhos[idx])))
        rho = tf.reduce_max(tf.stack(rhos))
        return weights, hessians, rho
    if hasattr(opt, "_velocities") and hasattr(opt, "beta_2"):
        correction = 1.0 - tf.pow(float(opt.beta_2), step)
        weights, hessians = [], []
        for v in variables:
            vel = opt._velocities[opt._get_variable_index(v)]
            if vel is None:
                continue
            weights.append(tf.convert_to_tensor(v))
            hessians.append(tf.convert_to_tensor(vel) / correction)
        return weights, hessians, tf.constant(0.0)
    raise ValueError(_NO_ESTIMATE.format(name=type(opt).__name__))


def psi_from_optimizer(model, *, gamma: float = 0.1, epsilon: float = 0.1) -> tf.Tensor:
    """ψ of `model`'s clean weights from its optimizer's estimates (see `optimizer_estimates`)."""
    weights, hessians, rho = optimizer_estimates(model.optimizer, model.trainable_variables)
    terms = psi_terms(weights, hessians, rho, gamma=gamma, epsilon=epsilon)
    return tf.add_n([t["psi"] for t in terms])


@keras.saving.register_keras_serializable(package="keras_pacgen")
class PacGen(keras.metrics.Metric):
    """The pacGen metric ψ (paper § 7) of the current clean weights, from the optimizer's state.

    ``model.compile(optimizer=PerturbedAdam(...), metrics=["accuracy", PacGen(model)])``

    ψ = Σ_i log((|w_i| + κ_i) · max(sqrt(H_ii + ρ√m κ_i), 1/κ_i)), κ_i = γ|w_i| + ε, with H_ii and
    ρ the optimizer's estimates (see `optimizer_estimates`). Smaller predicts better
    generalization. It costs one pass over the weights; to keep that under 1% of training it is
    recomputed every `update_every` training steps and reported in between (the first update
    computes it).

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
        require_estimates(model.optimizer)

        def compute():
            self.value.assign(tf.cast(psi_from_optimizer(model, gamma=self.gamma, epsilon=self.epsilon), self.value.dtype))

        tf.cond(tf.equal(self.updates % self.update_every, 0), compute, lambda: None)
        self.updates.assign_add(1)

    def reset_state(self):
        # ψ describes the weights, not a batch average: keep the last value across epochs.
        self.updates.assign(0)

    def result(self):
        return tf.identity(self.value)

    def get_config(self):
        return {
            "gamma": self.gamma,
            "epsilon": self.epsilon,
            "update_every": self.update_every,
            "name": self.name,
            "dtype": self.dtype,
        }
