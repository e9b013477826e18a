"""Keeps everything outside the training steps on the clean weights of a perturbed optimizer."""

from __future__ import annotations

import warnings

import keras

from keras_pacgen.perturbation import PerturbationMixin, perturbed_optimizers


class PerturbationCallback(keras.callbacks.Callback):
    """Clean weights wherever a user looks, and the epoch counter of Algorithm 1.

    With a perturbed optimizer the model variables hold ``w + u`` between training steps. This
    callback takes the perturbation out (``optimizer.remove_perturbation()``, an exact copy of the
    clean weights) whenever control leaves the training steps, and puts the same ``u`` back
    (bit-identical, the noise is stateless) when they resume:

    * out: after the last batch of each epoch (so every ``on_epoch_end`` callback, e.g.
      ``ModelCheckpoint``, ``BackupAndRestore``, ``EarlyStopping(restore_best_weights)``, sees
      clean weights), ``on_epoch_end``, ``on_test_begin`` (validation inside ``fit`` and
      ``evaluate``), ``on_predict_begin``, ``on_train_end``;
    * back in: at the next ``on_train_batch_begin``.

    It also sets the optimizer's epoch counter (1-based) in ``on_epoch_begin`` unless the
    optimizer was given ``steps_per_epoch``, and once a step has been skipped for a non-finite
    gradient it warns and reports the running count as ``logs["nonfinite_steps"]``.

    Put it first in ``callbacks=[...]``: callbacks before it that save the model from
    ``on_train_batch_end`` (``ModelCheckpoint(save_freq=N)``) would see perturbed weights.
    With an optimizer that is not perturbed it does nothing.
    """

    def __init__(self):
        super().__init__()
        self._optimizers: list[PerturbationMixin] = []
        self._removed = False
        self._nonfinite_seen = 0

    def _sync(self):
        """Reading `Callback.model` brings JAX's training state back into the variables (and the
        trainer reads them again at the next step), so that they can be written."""
        return self.model

    def _find(self):
        return perturbed_optimizers(getattr(self.model, "optimizer", None))

    def _remove(self):
        if not self._removed:
            self._sync()
            for opt in self._optimizers:
                opt.remove_perturbation()
            self._removed = True

    def _reapply(self):
        if self._removed:
            self._sync()
            for opt in self._optimizers:
                opt.apply_perturbation()
            self._removed = False

    # training
    def on_train_begin(self, logs=None):
        self._optimizers = self._find()
        for opt in self._optimizers:
            opt.callback_attached(True)
        # A perturbation left from an earlier fit() is re-applied lazily, at the first batch.
        self._removed = True

    def on_epoch_begin(self, epoch, logs=None):
        for opt in self._optimizers:
            if not opt.steps_per_epoch:
                opt.set_epoch(epoch + 1)

    def on_train_batch_begin(self, batch, logs=None):
        self._reapply()

    def on_train_batch_end(self, batch, logs=None):
        steps = (self.params or {}).get("steps")
        if steps and batch + 1 >= steps:
            self._remove()

    def on_epoch_end(self, epoch, logs=None):
        self._remove()
        self._report_nonfinite(epoch, logs)

    def _report_nonfinite(self, epoch, logs):
        total = sum(int(opt.nonfinite_steps.numpy()) for opt in self._optimizers if opt.built)
        if total > self._nonfinite_seen:
            warnings.warn(
                f"Epoch {epoch + 1}: {total - self._nonfinite_seen} training step(s) had NaN or Inf "
                f"gradients and were skipped (weights and perturbation state unchanged); "
                f"{total} so far.",
                stacklevel=2,
            )
        if total and logs is not None:
            logs["nonfinite_steps"] = total
        self._nonfinite_seen = total

    def on_train_end(self, logs=None):
        self._remove()
        for opt in self._optimizers:
            opt.callback_attached(False)

    # evaluation and prediction
    def on_test_begin(self, logs=None):
        if not self._optimizers:
            self._optimizers = self._find()
        self._remove()

    def on_predict_begin(self, logs=None):
        if not self._optimizers:
            self._optimizers = self._find()
        self._remove()
