"""`PerturbationMixin`: PertOPT (Algorithm 1 of Wang et al., AISTATS 2020) for any Keras 3 optimizer.

The mixin is the Keras face of the algorithm: its state (slots), its constructor arguments and
``apply``. The step itself is in step.py, its formulas in formulas.py, the clean-weights machinery
in clean_weights.py, what differs between backends in `keras_pacgen.backends`. All of it runs
inside ``apply``: JAX's trainer calls ``stateless_apply``, which sees only what ``apply`` writes
(what it returns is kept for a metric: state_after_step.py).
"""

from __future__ import annotations

import contextlib

import keras
from keras import ops

from keras_pacgen import _validation as check
from keras_pacgen import backends
from keras_pacgen.perturbation import arguments, clean_weights, formulas, keras_internals, step
from keras_pacgen.perturbation.state_after_step import StateAfterStep

backend = backends.load()


class PerturbationMixin(StateAfterStep):
    """Turns a Keras optimizer ``OPT`` into PertOPT (Algorithm 1): each step takes the gradient at
    ``w + u`` and ``OPT`` updates the clean ``w``; between steps the model holds ``w + u``.

    On PyTorch, OPT is Keras's per-variable update (a subclass is not swapped for Keras's
    `torch._foreach` version, equal to it to float32 rounding), as on JAX and TensorFlow.

    Perturbation arguments (keyword-only; symbols of the paper):""" + arguments.DOC

    # Name of OPT's second-moment decay (Adam: "beta_2") when its second moment v can be h.
    _second_moment_decay: str | None = None

    def __init__(self, *args, **kwargs):
        # The perturbation arguments are checked before the base class creates any variable.
        settings = arguments.validated(**arguments.take(kwargs))
        super().__init__(*args, **kwargs)
        for key, value in settings.items():
            setattr(self, key, value)
        self._initial_epoch = 1  # until build(); then the `_epoch` variable
        self._epoch_is_driven = False
        self._guards = 0  # attached callbacks that keep evaluation on the clean weights
        self._warned = False
        self._gradients = {}  # (index, device) -> the gradient update_step received, this step
        self._traced = {}  # traced remove/re-apply functions

    # ------------------------------------------------------------------ state
    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        # The order of the variables is the order they are saved and restored in.
        self._epoch = self.add_variable(
            (), initializer=keras.initializers.Constant(self._initial_epoch), dtype="int32",
            name="perturbation_epoch",
        )
        self._applied = self.add_variable((), dtype="int32", name="perturbation_applied")
        self._nonfinite_steps = self.add_variable((), dtype="int32", name="nonfinite_steps")
        decay = self._second_moment_decay
        self._hessian_is_shared = bool(
            decay and self.hessian_decay > 0 and float(getattr(self, decay)) == self.hessian_decay
        )
        hessians = (keras_internals.second_moments(self) if self._hessian_is_shared
                    else self.add_optimizer_variables(var_list, "hessian"))
        sigma_dtype = backend.sigma_dtype(self)  # bfloat16 precision (noise.py)
        sigmas, rhos = [], []
        for var in var_list:
            perturbed = not getattr(var, "overwrite_with_gradient", False)
            prefix = var.path.replace("/", "_")
            sigmas.append(self.add_variable(var.shape, dtype=sigma_dtype,
                                            name=f"{prefix}_sigma") if perturbed else None)
            rhos.append(self.add_variable((), name=f"{prefix}_rho") if perturbed else None)
        self._hessians, self._sigmas, self._rhos = hessians, sigmas, rhos
        self._cleans = self.add_optimizer_variables(var_list, "clean")
        self._settings = step.Settings(
            eta=self.eta, gamma=self.gamma, epsilon=self.kappa_epsilon, beta1=self.hessian_decay,
            beta2=self.grad_threshold, seed=self.seed, hessian_is_updated=self._hessian_is_shared,
            kappa_previous=self.kappa_weights == "previous", global_norm=self.rho_norm == "global",
        )

    @property
    def nonfinite_steps(self):
        """Number of steps skipped because a gradient was NaN or Inf."""
        return self._nonfinite_steps

    @property
    def epoch(self):
        """The epoch counter (starting at 1) of the log(1 + epoch) factors of Algorithm 1."""
        if self.steps_per_epoch:
            return self.iterations // self.steps_per_epoch + 1
        return self._epoch if self.built else ops.convert_to_tensor(self._initial_epoch, "int32")

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch counter (1-based) used when `steps_per_epoch` is None."""
        self._initial_epoch = check.check_int("epoch", epoch, low=1)
        self._epoch_is_driven = True
        if self.built:
            self._epoch.assign(self._initial_epoch)

    @property
    def perturbation_is_applied(self) -> bool:
        """Whether the model variables hold ``w + u`` (rather than the clean ``w``)."""
        return bool(self.built and int(self._applied.numpy()) > 0)

    def _slots_of(self, variables=None) -> list[step.Slots]:
        """The perturbed ones of `variables` (default: all) with their slots."""
        model_variables = keras_internals.built_variables(self)
        indices = (range(len(model_variables)) if variables is None
                   else sorted({keras_internals.variable_index(self, v) for v in variables}))
        return [
            step.Slots(i, model_variables[i], self._cleans[i], self._sigmas[i], self._rhos[i],
                       self._hessians[i])
            for i in indices if self._cleans[i] is not None
        ]

    # ------------------------------------------------------------------ step
    def update_step(self, gradient, variable, learning_rate):
        """OPT's update (line 15); the gradient is kept for the perturbation (lines 7-9), which
        needs every variable updated first (ρ divides by ‖w_t − w_{t−1}‖ over all of them)."""
        super().update_step(gradient, variable, learning_rate)
        index = keras_internals.variable_index(self, variable)
        self._gradients[(index, backend.device_of(variable))] = backend.dense(gradient)

    def apply(self, grads, trainable_variables=None):
        if not self.built:
            if trainable_variables is None:
                raise ValueError("When passing `grads` without `variables`, the optimizer must "
                                 "already be built: call `optimizer.build(trainable_variables)`.")
            with keras.name_scope(self.name, caller=self):
                self.build(list(trainable_variables))
        variables = list(trainable_variables if trainable_variables is not None
                         else keras_internals.built_variables(self))
        grads = list(grads)
        if not grads:
            return
        self._warn_if_unguarded()
        if self.skip_nonfinite:
            backend.apply_if_finite(self._step, grads, variables, optimizer=self)
        else:
            self._step(grads, variables)

    def _step(self, grads, variables):
        """One step of Algorithm 1 (step.py): back to w_t, OPT, then u for the next step."""
        slots = self._slots_of(variables)
        if slots:
            clean_weights.restore_for_step(self._applied, slots)
        super().apply(grads, variables)
        if slots:
            try:
                step.perturb(slots, self._gradients, self._settings, applied_flag=self._applied,
                             step=clean_weights.value(self.iterations),
                             log_epoch=ops.log1p(ops.cast(self.epoch, "float32")))
            finally:
                self._gradients.clear()

    # ------------------------------------------------------------------ clean weights
    def remove_perturbation(self) -> None:
        """Put the clean weights into the model variables. Idempotent (a flag in a variable)."""
        self._run_traced("remove", lambda: clean_weights.remove(self._applied, self._slots_of()))

    def apply_perturbation(self) -> None:
        """Re-apply the current perturbation u (bit-identical to the one drawn). Idempotent."""
        self._run_traced("reapply", lambda: clean_weights.reapply(
            self._applied, self._slots_of(), seed=self.seed, step=self.iterations))

    def _run_traced(self, name, fn):
        if self.built:
            backend.outside_step(self, self._traced, name, fn)

    @contextlib.contextmanager
    def clean_weights(self):
        """Context manager: the model holds the clean weights inside, the perturbed ones after."""
        was_applied = self.perturbation_is_applied
        self.remove_perturbation()
        try:
            yield
        finally:
            if was_applied:
                self.apply_perturbation()

    def finalize_variable_values(self, var_list):
        """Called by fit() at the end: clean weights first, then the wrapped optimizer's EMA."""
        if self.built and keras_internals.holds_value(self._applied):  # else fit failed: let it say why
            self.remove_perturbation()
        super().finalize_variable_values(var_list)

    # ------------------------------------------------------------------ reading the state
    def perturbation_state(self, variable) -> dict:
        """h, ρ, σ, u and the clean weights of `variable` (a model variable of this optimizer)."""
        if not self.built:
            raise ValueError("perturbation_state() needs a built optimizer: train a step first.")
        try:
            index = keras_internals.variable_index(self, variable)
        except KeyError:
            raise ValueError(f"perturbation_state(): {getattr(variable, 'path', variable)} is not a "
                             "variable this optimizer was built with.") from None
        slot = next(iter(self._slots_of([variable])), None)
        if slot is None:
            raise ValueError(f"perturbation_state(): {variable.path} is updated by "
                             "overwrite_with_gradient and never perturbed.")
        value = clean_weights.value
        clean = ops.where(value(self._applied) > 0, value(slot.clean), value(variable))
        return {
            "hessian": value(slot.hessian),
            "rho": value(slot.rho),
            "sigma": ops.cast(value(slot.sigma), variable.dtype),
            "perturbation": formulas.perturbation(value(slot.sigma), variable.shape, variable.dtype,
                                                  seed=self.seed, step=self.iterations, index=index),
            "clean_weights": clean,
        }

    def estimates(self, variables=None) -> dict:
        """What ψ (paper § 7) needs, for `variables` (default: all perturbed ones): ``weights``
        (the clean w), ``hessians`` (h divided by 1 − β1^t, Adam's bias correction of an average
        started at 0) and ``rho`` (the largest ρ[i] of all of them: the paper's ρ is one constant).
        Works inside a traced function."""
        if not self.built:
            raise ValueError("The optimizer is not built yet: train at least one step first.")
        slots = self._slots_of(variables)
        value = clean_weights.value
        applied = value(self._applied) > 0
        return {
            "weights": [ops.where(applied, value(s.clean), value(s.variable)) for s in slots],
            "hessians": [formulas.debiased(value(s.hessian), beta1=self.hessian_decay,
                                           steps=self.iterations) for s in slots],
            "rho": ops.max(ops.stack([value(s.rho) for s in slots])),
        }

    # ------------------------------------------------------------------ misc
    def callback_attached(self, attached: bool = True) -> None:
        """Told by `PerturbationCallback` when it starts (and stops) keeping evaluation on the
        clean weights; while one is attached, no warning."""
        self._guards += 1 if attached else -1

    def _warn_if_unguarded(self):
        if self._guards == 0 and not self._warned:
            self._warned = True
            clean_weights.warn_no_callback(type(self).__name__, epoch_is_set=bool(
                self.steps_per_epoch or self._epoch_is_driven))

    def get_config(self):
        return {**super().get_config(), **{key: getattr(self, key) for key in arguments.DEFAULTS}}

