"""Where the clean weights live, and how they go back and forth.

Between two training steps the model variables hold ``w + u`` (so that the next forward and
backward pass of ``fit`` runs at the perturbed point) and the optimizer keeps the clean ``w`` in
its ``clean`` slot. A flag variable (``perturbation_applied``) says which of the two the model holds,
so that removing or re-applying twice changes nothing.

* `restore_for_step`: at the start of a step, ``w ← clean`` (an exact copy); or, when no
  perturbation is applied (first step, after `remove`, after ``set_weights``), ``clean ← w``.
* `remove`: ``w ← clean`` where applied.
* `reapply`: ``clean ← w`` and ``w ← w + u`` where not applied, u drawn again from the σ slot and
  the step counter: the same bits as the step drew (see `formulas.perturbed_weights`).

Under a `tf.distribute` strategy every device holds a copy of each variable and of each slot;
`on_each_device` runs a function once per device on those copies, so that the copies stay
identical (the noise is a pure function of seed, step and variable, the same on every device).
"""

from __future__ import annotations

import warnings

import keras
import tensorflow as tf

from keras_pacgen.perturbation import formulas

_NO_CALLBACK_WARNING = (
    "{name}: no PerturbationCallback or PacGenCallback is attached, so between training steps the "
    "model holds the perturbed weights w + u: validation inside fit(), callbacks that save or "
    "evaluate the model, and evaluate()/predict()/save() after train_on_batch() see perturbed "
    "weights. fit() restores the clean weights when it returns. Add "
    "keras_pacgen.PerturbationCallback() to fit(callbacks=[...]) (first in the list), or wrap your "
    "own evaluation in `with optimizer.clean_weights(): ...`.{epoch_note}"
)
_EPOCH_NOTE = (
    " The epoch counter of the log(1 + epoch) factors stays at 1: pass steps_per_epoch= or use "
    "the callback."
)


def warn_no_callback(name: str, *, epoch_is_set: bool) -> None:
    """The warning of an optimizer that steps with no callback to keep evaluation clean."""
    warnings.warn(_NO_CALLBACK_WARNING.format(name=name, epoch_note="" if epoch_is_set else _EPOCH_NOTE),
                  stacklevel=4)


def _tf_variable(variable):
    return variable.value if isinstance(variable, keras.Variable) else variable


def local(variable, device: str):
    """The copy of a distributed variable that lives on `device`; a variable that is not
    distributed, wherever it lives."""
    variable = _tf_variable(variable)
    copies = tf.distribute.get_strategy().experimental_local_results(variable)
    if len(copies) == 1:
        return copies[0]
    for component in copies:
        if component.device == device:
            return component
    raise ValueError(f"{variable.name} has no copy on {device}")


def on_each_device(anchor, fn) -> None:
    """Run ``fn(device)`` once on every device that holds a copy of `anchor` (a model variable),
    from a replica or a cross-replica context, under any strategy or none."""

    def cross_replica(strategy):
        strategy.extended.update(_tf_variable(anchor), lambda copy: fn(copy.device), group=False)

    context = tf.distribute.get_replica_context()
    if context is None:  # already in the cross-replica context
        cross_replica(tf.distribute.get_strategy())
    else:
        context.merge_call(cross_replica)


def restore_for_step(applied_flag, slots) -> None:
    """w ← clean slot (exact) for each of `slots` (step.Slots), or clean slot ← w when no
    perturbation is applied."""

    def on_device(device):
        pairs = [(local(s.variable, device), local(s.clean, device)) for s in slots]

        def restore():
            for weights, clean in pairs:
                weights.assign(clean)

        def adopt():
            for weights, clean in pairs:
                clean.assign(weights)

        tf.cond(local(applied_flag, device) > 0, restore, adopt)

    on_each_device(slots[0].variable, on_device)


def remove(applied_flag, slots) -> None:
    """Put the clean weights into the model variables (where the perturbation is applied)."""

    def on_device(device):
        flag = local(applied_flag, device)
        for s in slots:
            weights = local(s.variable, device)
            weights.assign(tf.where(flag > 0, local(s.clean, device), weights))
        flag.assign(0)

    if slots:
        on_each_device(slots[0].variable, on_device)


def reapply(applied_flag, slots, *, seed: int, step) -> None:
    """Put ``w + u`` back into the model variables (where the perturbation is not applied), u the
    one the step numbered `step` drew; the current weights become the clean ones."""

    def on_device(device):
        flag = local(applied_flag, device)
        applied = flag > 0
        for s in slots:
            weights, clean = local(s.variable, device), local(s.clean, device)
            current = tf.identity(weights)
            noisy = formulas.perturbed_weights(current, local(s.sigma, device), seed=seed,
                                               step=step, index=s.index)
            clean.assign(tf.where(applied, clean, current))
            weights.assign(tf.where(applied, current, noisy))
        flag.assign(1)

    if slots:
        on_each_device(slots[0].variable, on_device)
