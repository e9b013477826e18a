"""`SharpnessAwareMinimization`: SAM (Foret et al., ICLR 2021) and adaptive SAM (Kwon et al., ICML
2021) as a Keras 3 model wrapper, as tf-keras had it: the baseline PertOPT is compared with."""

from __future__ import annotations

import keras
from keras import ops

from keras_pacgen import _validation as check
from keras_pacgen import backends

backend = backends.load()

_ADAPTIVE_ETA = 0.01  # η of ASAM's T_w = |w| + η (Kwon et al.'s default), so biases at 0 move too


@keras.saving.register_keras_serializable(package="keras_pacgen")
class SharpnessAwareMinimization(keras.Model):
    """Trains `model` with sharpness-aware minimization: two forward/backward passes per step::

        g  = ∇L(w)
        ε  = ρ g / ‖g‖                  (SAM)     or   ρ T² g / ‖T g‖, T = diag(|w| + 0.01)   (ASAM)
        w ← OPT(w, ∇L(w + ε))

    ``sam = SharpnessAwareMinimization(model, rho=0.05); sam.compile(optimizer, loss, metrics);
    sam.fit(...)``. Evaluation, prediction and export run `model` unchanged (``sam(x)`` is
    ``model(x)``); the weights are `model`'s. Works with ``jit_compile=True`` and saves and loads
    as a ``.keras`` file.

    What its users ask of it (the threads of davda54/sam and tf-keras's class):

    - Both passes use the compiled loss with the sample weights plus the model's ``losses``
      (regularization), so ε and the update see the same objective.
    - The second pass (at w + ε) does not move the model's statistics: BatchNormalization's
      moving mean and variance (every floating-point non-trainable variable) are those the first
      pass left. Integer state (the dropout seed) advances as in any step.
    - ``num_batch_splits=m`` is m-sharpness (Foret et al., §4.1; tf-keras's option): the batch is
      cut into m parts, each gets its own ε from its own gradient, and the update is the mean of
      the m gradients at their w + ε, weighted by the parts' sizes. tf-keras summed them (m times
      the gradient); the mean keeps the learning rate's meaning, so ``rho → 0`` is the plain step.
    - Under a ``tf.distribute`` strategy, g is the gradient of the whole global batch (summed over
      replicas, as the optimizer sums it), so ε, and the step, do not depend on how many replicas
      share the batch. Replicas stay identical. (JAX's data parallelism computes the gradient of
      the global batch by itself.)

    It runs on every backend: the step is in `keras_pacgen.backends` (``sam_train_step``), the
    math (ε, the parts) here.

    Args:
        model: the Keras model to train.
        rho: ρ > 0, the radius of the neighbourhood (Foret et al.: 0.05; ASAM wants larger, ~0.5).
        adaptive: ASAM's scale-invariant neighbourhood.
        num_batch_splits: None (one ε per batch) or m ≥ 1, the number of parts of m-sharpness.
    """

    def __init__(self, model: keras.Model, rho: float = 0.05, adaptive: bool = False,
                 num_batch_splits: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(model, keras.Model):
            raise ValueError(f"`model` must be a keras.Model. Received: {type(model).__name__}")
        if not isinstance(adaptive, bool):
            raise ValueError(f"`adaptive` must be True or False. Received: adaptive={adaptive!r}")
        self.model = model
        self.rho = check.check_float("rho", rho, low=0.0, low_inclusive=False)
        self.adaptive = adaptive
        self.num_batch_splits = check.check_int("num_batch_splits", num_batch_splits, low=1,
                                                allow_none=True)

    def call(self, inputs, training=None):
        return self.model(inputs, training=training)

    def statistics(self) -> list[bool]:
        """For each non-trainable variable, whether the second pass must leave it as the first
        left it (floating-point state: BatchNorm's moving statistics; not the dropout seed)."""
        return [keras.backend.is_float_dtype(v.dtype) for v in self.non_trainable_variables]

    def parts(self, data):
        """(share of the batch, part) for each part of m-sharpness; the batch itself when m is 1."""
        m = self.num_batch_splits or 1
        if m == 1:
            return [(1.0, data)]
        size = ops.shape(keras.tree.flatten(data[0])[0])[0]
        bounds = [(size * i // m, size * (i + 1) // m) for i in range(m)]
        return [(ops.cast(b - a, "float32") / ops.cast(size, "float32"),
                 keras.tree.map_structure(lambda t, a=a, b=b: None if t is None else t[a:b], data))
                for a, b in bounds]

    def train_step(self, *args):
        """One SAM step: ``train_step(data)``, or on JAX ``train_step(state, data)``, pure (its
        form is in `keras_pacgen.backends.jax`)."""
        if keras.backend.backend() == "jax":
            return backend.sam_train_step(self, *args)
        (data,) = args
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        variables = self.trainable_variables
        loss, y_pred, grads = self.mean_over_parts(
            (x, y, sample_weight), lambda *part: self._sharp_gradients(*part, variables))
        backend.without_gradients(lambda: self.optimizer.apply(grads, variables))
        return self.update_metrics(loss, y, y_pred, sample_weight)

    def mean_over_parts(self, data, sharp_gradients):
        """(loss, outputs, ∇L(w + ε)) of the batch from ``sharp_gradients(x, y, sample_weight)``
        of each part of m-sharpness: losses and gradients averaged by the parts' sizes, outputs
        concatenated."""
        loss, outputs, grads = 0.0, [], None
        for share, part in self.parts(data):
            part_loss, part_pred, part_grads = sharp_gradients(*part)
            loss += share * ops.cast(part_loss, "float32")
            outputs.append(part_pred)
            scaled = [ops.cast(share, g.dtype) * g for g in part_grads]
            grads = scaled if grads is None else [a + b for a, b in zip(grads, scaled)]
        return loss, keras.tree.map_structure(lambda *t: ops.concatenate(t, axis=0), *outputs), grads

    def update_metrics(self, loss, y, y_pred, sample_weight) -> dict:
        """The logs, as keras.Model.train_step makes them, from the first (clean) pass."""
        for metric in self.metrics:
            if metric.name == "loss":
                metric.update_state(loss)
            else:
                metric.update_state(y, y_pred, sample_weight=sample_weight)
        return {m.name: m.result() for m in self.metrics}

    def _sharp_gradients(self, x, y, sample_weight, variables):
        """The loss and outputs at w, and ∇L(w + ε) with the model's statistics left as at w."""
        loss, y_pred, grads = backend.training_gradients(self, x, y, sample_weight, variables)
        epsilons = self.ascent(grads, variables)
        # w and the statistics are copied and put back exactly (not w + ε − ε, off in the last bit)
        kept = [v for v, f in zip(self.non_trainable_variables, self.statistics()) if f]
        values = [backend.snapshot(v) for v in (*variables, *kept)]
        backend.without_gradients(lambda: [v.assign_add(e) for v, e in zip(variables, epsilons)])
        _, _, grads = backend.training_gradients(self, x, y, sample_weight, variables, reduce=False)
        backend.without_gradients(
            lambda: [v.assign(value) for v, value in zip((*variables, *kept), values)])
        return loss, y_pred, grads

    def ascent(self, grads, variables):
        """ε, the step to the worst point of the neighbourhood (to first order)."""
        if self.adaptive:
            scales = [ops.abs(v) + _ADAPTIVE_ETA for v in variables]
            scaled = [s * g for s, g in zip(scales, grads)]
            norm = _global_norm(scaled) + 1e-12
            return [self.rho * s * sg / ops.cast(norm, sg.dtype) for s, sg in zip(scales, scaled)]
        norm = _global_norm(grads) + 1e-12
        return [self.rho * g / ops.cast(norm, g.dtype) for g in grads]

    def get_config(self):
        return {**super().get_config(), "model": keras.saving.serialize_keras_object(self.model),
                "rho": self.rho, "adaptive": self.adaptive,
                "num_batch_splits": self.num_batch_splits}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        model = keras.saving.deserialize_keras_object(config.pop("model"),
                                                      custom_objects=custom_objects)
        return cls(model, **config)


def _global_norm(tensors):
    return ops.sqrt(sum(ops.sum(ops.square(ops.cast(t, "float32"))) for t in tensors))
