"""`SharpnessAwareMinimization`: SAM (Foret et al., ICLR 2021) and adaptive SAM (Kwon et al., ICML
2021) as a Keras 3 model wrapper, as tf-keras had it: the baseline PertOPT is compared with."""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_pacgen import _validation as check

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
    as a ``.keras`` file. The loss is the compiled loss plus the model's ``losses``.

    Args:
        model: the Keras model to train.
        rho: ρ > 0, the radius of the neighbourhood (Foret et al.: 0.05; ASAM wants larger, ~0.5).
        adaptive: ASAM's scale-invariant neighbourhood.
    """

    def __init__(self, model: keras.Model, rho: float = 0.05, adaptive: bool = False, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(model, keras.Model):
            raise ValueError(f"`model` must be a keras.Model. Received: {type(model).__name__}")
        if not isinstance(adaptive, bool):
            raise ValueError(f"`adaptive` must be True or False. Received: adaptive={adaptive!r}")
        self.model = model
        self.rho = check.check_float("rho", rho, low=0.0, low_inclusive=False)
        self.adaptive = adaptive

    def call(self, inputs, training=None):
        return self.model(inputs, training=training)

    def _loss_and_gradients(self, x, y, sample_weight, variables):
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                                     training=True)
            scaled = self.optimizer.scale_loss(loss)
        return loss, y_pred, tape.gradient(scaled, variables, unconnected_gradients="zero")

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        variables = self.trainable_variables
        loss, y_pred, grads = self._loss_and_gradients(x, y, sample_weight, variables)
        epsilons = self.ascent(grads, variables)
        for v, e in zip(variables, epsilons):
            v.assign_add(e)
        _, _, grads = self._loss_and_gradients(x, y, sample_weight, variables)
        for v, e in zip(variables, epsilons):
            v.assign_sub(e)
        self.optimizer.apply(grads, variables)
        for metric in self.metrics:  # as keras.Model.train_step, from the first (clean) pass
            if metric.name == "loss":
                metric.update_state(loss)
            else:
                metric.update_state(y, y_pred, sample_weight=sample_weight)
        return {m.name: m.result() for m in self.metrics}

    def ascent(self, grads, variables):
        """ε, the step to the worst point of the neighbourhood (to first order)."""
        if self.adaptive:
            scales = [tf.abs(v) + _ADAPTIVE_ETA for v in variables]
            scaled = [s * g for s, g in zip(scales, grads)]
            norm = tf.linalg.global_norm(scaled) + 1e-12
            return [self.rho * s * sg / norm for s, sg in zip(scales, scaled)]
        norm = tf.linalg.global_norm(grads) + 1e-12
        return [self.rho * g / norm for g in grads]

    def get_config(self):
        return {**super().get_config(), "model": keras.saving.serialize_keras_object(self.model),
                "rho": self.rho, "adaptive": self.adaptive}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        model = keras.saving.deserialize_keras_object(config.pop("model"),
                                                      custom_objects=custom_objects)
        return cls(model, **config)
