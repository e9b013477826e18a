"""What every measure shares: the checks, the data, the model's loss and its derivatives.

The loss of a measure is the model's compiled loss plus ``model.losses`` (regularisation), as
`keras.Model.compute_loss` computes it, averaged over the batches of `data` (weighted by batch
size), in inference mode (``training=False``: no dropout, BatchNorm's moving statistics).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import keras
import numpy as np
import tensorflow as tf

from keras_pacgen import _validation as check


def _variables(model) -> list:
    if not isinstance(model, keras.Model):
        raise ValueError(f"`model` must be a keras.Model. Received: {type(model).__name__}")
    if not model.built:
        raise ValueError("`model` is not built: call it on data (or build it) before measuring it.")
    variables = list(model.trainable_variables)
    if not variables:
        raise ValueError("`model` has no trainable variables to measure.")
    return variables


def check_model(model) -> list:
    """The model's trainable variables, after checking that it can be measured."""
    variables = _variables(model)
    if getattr(model, "loss", None) is None:
        raise ValueError(
            "`model` has no loss: compile it first, e.g. model.compile(loss="
            "keras.losses.SparseCategoricalCrossentropy(from_logits=True)). The measures use the "
            "compiled loss plus model.losses."
        )
    return variables


def as_dataset(data, *, batch_size: int = 256, name: str = "data"):
    """`data` (a tf.data.Dataset of (x, y) or (x, y, w), batched or not, or a tuple (x, y) of
    arrays) as a batched tf.data.Dataset."""
    check.check_int("batch_size", batch_size, low=1)
    if isinstance(data, tf.data.Dataset):
        spec = data.element_spec
        first = spec[0] if isinstance(spec, tuple) else spec
        batched = isinstance(first, tf.TensorSpec) and first.shape.rank and first.shape[0] is None
        return data if batched else data.batch(batch_size)
    if isinstance(data, (tuple, list)) and len(data) in (2, 3):
        if len(data[0]) == 0:
            raise ValueError(f"`{name}` is empty: it holds no samples.")
        return tf.data.Dataset.from_tensor_slices((data[0], data[1])).batch(batch_size)
    raise ValueError(f"`{name}` must be a tf.data.Dataset of (x, y) batches or a tuple (x, y) of "
                     f"arrays. Received: {type(data).__name__}")


def batches(data, *, batch_size: int = 256, max_batches: int | None = None) -> list:
    """`data` (see `as_dataset`) as a list of (x, y) batches, at most `max_batches` of them."""
    check.check_int("max_batches", max_batches, low=1, allow_none=True)
    data = as_dataset(data, batch_size=batch_size)
    if max_batches is not None:
        data = data.take(max_batches)
    out = [(b[0], b[1]) for b in data]
    if not out:
        raise ValueError("`data` is empty: it yielded no batches.")
    return out


def num_samples(data_batches) -> int:
    return sum(int(x.shape[0]) for x, _ in data_batches)


class Loss:
    """The model's loss and its derivatives on a fixed list of batches, as traced functions."""

    def __init__(self, model, data_batches, loss=None):
        """`loss` overrides the compiled loss (a Keras loss or its name); model.losses still count."""
        self.model, self.batches = model, data_batches
        self._override = None if loss is None else keras.losses.get(loss)
        self.variables = check_model(model) if loss is None else _variables(model)
        self._weights = np.array([int(x.shape[0]) for x, _ in data_batches], np.float64)
        self._weights /= self._weights.sum()

        @tf.function(reduce_retracing=True)
        def value(x, y):
            return self._loss(x, y)

        @tf.function(reduce_retracing=True)
        def gradient(x, y):
            with tf.GradientTape() as tape:
                loss = self._loss(x, y)
            return tape.gradient(loss, self.variables, unconnected_gradients="zero")

        @tf.function(reduce_retracing=True)
        def hessian_vector_product(x, y, vector):
            with tf.GradientTape() as outer:
                with tf.GradientTape() as inner:
                    loss = self._loss(x, y)
                grads = inner.gradient(loss, self.variables, unconnected_gradients="zero")
                dot = tf.add_n([tf.reduce_sum(g * tf.cast(v, g.dtype)) for g, v in zip(grads, vector)])
            return outer.gradient(dot, self.variables, unconnected_gradients="zero")

        self._value, self._gradient, self._hvp = value, gradient, hessian_vector_product

    def _loss(self, x, y):
        y_pred = self.model(x, training=False)
        if self._override is None:
            return self.model.compute_loss(x=x, y=y, y_pred=y_pred, training=False)
        total = tf.reduce_mean(self._override(y, y_pred))
        return total + tf.add_n(self.model.losses) if self.model.losses else total

    def batch_gradient(self, index: int) -> list:
        """∇L̂ on batch `index` alone, one tensor per variable."""
        return self._gradient(*self.batches[index])

    def batch_hessian_vector_product(self, index: int, vector) -> list:
        """H v on batch `index` alone."""
        vector = [tf.constant(v, var.dtype) for v, var in zip(vector, self.variables)]
        return self._hvp(*self.batches[index], vector)

    def value(self) -> float:
        """L̂(w) over all batches."""
        return float(sum(w * float(self._value(x, y)) for w, (x, y) in zip(self._weights, self.batches)))

    def gradient(self) -> list[np.ndarray]:
        """∇L̂(w), one array per variable."""
        return self._combine(lambda x, y: self._gradient(x, y))

    def hessian_vector_product(self, vector) -> list[np.ndarray]:
        """H v for `vector` (one array per variable): exact, by differentiating ∇L̂·v."""
        vector = [tf.constant(v, var.dtype) for v, var in zip(vector, self.variables)]
        return self._combine(lambda x, y: self._hvp(x, y, vector))

    def _combine(self, per_batch):
        total = [np.zeros(v.shape, np.float64) for v in self.variables]
        for w, (x, y) in zip(self._weights, self.batches):
            for acc, part in zip(total, per_batch(x, y)):
                acc += w * np.asarray(part, np.float64)
        return total


def per_sample_losses(model, x, y):
    """ℓ_i for each sample of a batch: the compiled loss without reduction, plus model.losses."""
    loss = model.loss
    if isinstance(loss, (dict, list, tuple)):
        raise ValueError("Per-sample losses need a model compiled with one loss for one output.")
    fn = loss.call if isinstance(loss, keras.losses.Loss) else keras.losses.get(loss)
    values = tf.reshape(fn(y, model(x, training=False)), (-1,))
    if model.losses:
        values = values + tf.add_n([tf.cast(a, values.dtype) for a in model.losses])
    return values


def weights(model) -> list[np.ndarray]:
    return [v.numpy() for v in model.trainable_variables]


@contextlib.contextmanager
def shifted(variables, base: list[np.ndarray]) -> Iterator:
    """Inside: ``set(deltas)`` puts ``base + deltas`` into `variables`; after, exactly `base`."""

    def set_deltas(deltas):
        for v, w, d in zip(variables, base, deltas):
            v.assign((w + d).astype(w.dtype))

    try:
        yield set_deltas
    finally:
        for v, w in zip(variables, base):
            v.assign(w)


def progress(verbose: int, target: int, unit: str = "step"):
    """A Keras progress bar, or None when `verbose` is 0."""
    return keras.utils.Progbar(target, unit_name=unit) if verbose else None


def tick(bar, values=None) -> None:
    if bar is not None:
        bar.add(1, values=values)
