"""SAM (Foret et al., ICLR 2021) as a reference baseline: two forward/backward passes per step.

    model = SAM(inner_model, rho=0.05)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=..., metrics=[...])

Each step: g = ∇L(w); e = ρ g / ‖g‖; g' = ∇L(w + e); w ← OPT(w, g'). Only in the benchmarks: it
is a baseline to compare against, not part of the package.
"""

from __future__ import annotations

import keras
import tensorflow as tf


class SAM(keras.Model):
    def __init__(self, model: keras.Model, rho: float = 0.05, **kwargs):
        super().__init__(**kwargs)
        self.inner = model
        self.rho = rho

    def call(self, x, training=False):
        return self.inner(x, training=training)

    def train_step(self, data):
        x, y = data[0], data[1]
        variables = self.trainable_variables
        with tf.GradientTape() as tape:
            loss = self.compute_loss(x=x, y=y, y_pred=self(x, training=True), training=True)
        grads = tape.gradient(loss, variables)
        scale = self.rho / (tf.linalg.global_norm(grads) + 1e-12)
        eps = [g * scale for g in grads]
        for v, e in zip(variables, eps):
            v.assign_add(e)
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(x=x, y=y, y_pred=y_pred, training=True)
        grads = tape.gradient(loss, variables)
        for v, e in zip(variables, eps):
            v.assign_sub(e)
        self.optimizer.apply(grads, variables)
        return self.compute_metrics(x, y, y_pred, sample_weight=None)
