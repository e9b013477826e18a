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
`backend.on_each_device` runs a function once per device on those copies, so that the copies stay
identical (the noise is a pure function of seed, step and variable, the same on every device).
Everything is written with `where`, not `cond`: JAX's optimizer step allows no `cond` that writes.
"""

from __future__ import annotations

import warnings

from keras import ops

from keras_pacgen import backends
from keras_pacgen.perturbation import formulas

backend = backends.load()

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


def value(variable):
    """The value of a variable (or of one of its per-device copies) as a tensor: a copy, which
    later writes to the variable do not change (a PyTorch variable's value is its storage)."""
    return backend.snapshot(variable)


def warn_no_callback(name: str, *, epoch_is_set: bool) -> None:
    """The warning of an optimizer that steps with no callback to keep evaluation clean."""
    warnings.warn(_NO_CALLBACK_WARNING.format(name=name, epoch_note="" if epoch_is_set else _EPOCH_NOTE),
                  stacklevel=4)


def restore_for_step(applied_flag, slots) -> None:
    """w ← clean slot (exact) for each of `slots` (step.Slots), or clean slot ← w when no
    perturbation is applied."""

    def on_device(device):
        applied = value(backend.local(applied_flag, device)) > 0
        for s in slots:
            weights, clean = backend.local(s.variable, device), backend.local(s.clean, device)
            start = ops.where(applied, value(clean), value(weights))
            weights.assign(start)
            clean.assign(start)

    backend.on_each_device(slots[0].variable, on_device)


def remove(applied_flag, slots) -> None:
    """Put the clean weights into the model variables (where the perturbation is applied)."""

    def on_device(device):
        flag = backend.local(applied_flag, device)
        applied = value(flag) > 0
        for s in slots:
            weights = backend.local(s.variable, device)
            weights.assign(ops.where(applied, value(backend.local(s.clean, device)), value(weights)))
        flag.assign(0)

    if slots:
        backend.on_each_device(slots[0].variable, on_device)


def reapply(applied_flag, slots, *, seed: int, step) -> None:
    """Put ``w + u`` back into the model variables (where the perturbation is not applied), u the
    one the step numbered `step` drew; the current weights become the clean ones."""

    def on_device(device):
        flag = backend.local(applied_flag, device)
        applied = value(flag) > 0
        for s in slots:
            weights, clean = backend.local(s.variable, device), backend.local(s.clean, device)
            current = value(weights)
            noisy = formulas.perturbed_weights(current, value(backend.local(s.sigma, device)),
                                               seed=seed, step=step, index=s.index)
            clean.assign(ops.where(applied, value(clean), current))
            weights.assign(ops.where(applied, current, noisy))
        flag.assign(1)

    if slots:
        backend.on_each_device(slots[0].variable, on_device)
