"""`StateAfterStep`: the values an optimizer's ``stateless_apply`` returned, for a reader in the
same traced step.

Keras's JAX trainer runs ``optimizer.stateless_apply`` and then the metrics in one traced function,
keeps the new values of the model's and the optimizer's variables in its own state until the
epoch ends, and shows a metric only the metric's own variables. A metric that reads the optimizer
(`PacGen`) takes these values and reads them in a ``keras.StatelessScope``.
"""

from __future__ import annotations

from keras_pacgen.perturbation import keras_internals


class StateAfterStep:
    """Mixed into a Keras optimizer: keeps what ``stateless_apply`` returned, until taken."""

    _after_step = None  # (model variables' values, optimizer variables' values, readers' ids)

    def stateless_apply(self, optimizer_variables, grads, trainable_variables):
        trainable, optimizer = super().stateless_apply(optimizer_variables, grads, trainable_variables)
        self._after_step = (tuple(trainable), tuple(optimizer), set())  # values: no variable tracked
        return trainable, optimizer

    def take_state_after_step(self, reader) -> list | None:
        """The (variable, value) pairs of the model's and the optimizer's variables that the last
        ``stateless_apply`` returned, once per `reader` (then None: in evaluation no step ran,
        and the values belong to the traced train step)."""
        if self._after_step is None or id(reader) in self._after_step[2]:
            return None
        trainable, optimizer, readers = self._after_step
        readers.add(id(reader))
        return [*zip(keras_internals.built_variables(self), trainable), *zip(self.variables, optimizer)]

    def finalize_variable_values(self, var_list):
        self._after_step = None  # values of fit's last traced step
        super().finalize_variable_values(var_list)
