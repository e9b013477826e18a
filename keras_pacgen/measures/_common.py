"""What every measure shares: the checks, and the model's loss, error and their derivatives as
functions of its trainable weights.

The loss of a measure is the model's **data loss**: the compiled loss over the samples (with
their sample weights), averaged as `keras.Model.evaluate` averages it, without ``model.losses``
(weight decay and other regularisers), in inference mode (``training=False``: no dropout,
BatchNorm's moving statistics). ``include_regularization=True`` adds ``model.losses``. Every
function takes the weights as an argument (`keras.Model.stateless_call`): a measure evaluates
the model at ``w + u`` without writing into its variables.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import keras
import numpy as np
from keras import ops

from keras_pacgen import backends
from keras_pacgen.measures.data import Samples, read
from keras_pacgen.perturbation import keras_internals, noise

backend = backends.load()


def to_numpy(value) -> np.ndarray:
    """A tensor, variable or array as a float64 numpy array."""
    if isinstance(value, keras.Variable):
        value = value.numpy()
    return np.array(ops.convert_to_numpy(value), np.float64)


def layers(model):
    """Every layer of `model`, nested models flattened, in order."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from layers(layer)
        else:
            yield layer


def check_model(model, *, needs_loss: bool = True, finite: bool = True) -> list:
    """The model's trainable variables, after checking that it can be measured (`finite`: that
    no weight is NaN or infinite)."""
    if not isinstance(model, keras.Model):
        raise ValueError(f"`model` must be a keras.Model. Received: {type(model).__name__}")
    if not model.built:
        raise ValueError("`model` is not built: call it on data (or build it) before measuring it.")
    variables = list(model.trainable_variables)
    if not variables:
        raise ValueError("`model` has no trainable variables to measure.")
    if any(isinstance(layer, keras.layers.TFSMLayer) for layer in layers(model)):
        raise ValueError("`model` serves a SavedModel (keras.layers.TFSMLayer): its traced function "
                         "reads its own variables, so it cannot be evaluated at other weights. "
                         "Measure the Keras model (e.g. keras.models.load_model('model.keras')).")
    if needs_loss and getattr(model, "loss", None) is None:
        raise ValueError(
            "`model` has no loss: compile it first, e.g. model.compile(loss="
            "keras.losses.SparseCategoricalCrossentropy(from_logits=True)). The measures use the "
            "compiled loss."
        )
    bad = [v.path for v in variables if finite and not np.all(np.isfinite(to_numpy(v)))]
    if bad:
        raise ValueError(f"`model` has non-finite weights (NaN or Inf) in {', '.join(bad)}: a "
                         "diverged network cannot be measured.")
    return variables


def from_logits(model) -> bool:
    """Whether the compiled loss reads logits (``from_logits=True``) rather than probabilities."""
    loss = model.loss
    if isinstance(loss, keras.losses.Loss):
        return bool(loss.get_config().get("from_logits", False))
    return False


def misclassified(y, y_pred, logits: bool):
    """1.0 where the predicted class is not the label, per sample: labels as class indices or
    one-hot; one output unit is a binary classifier (threshold 0 on logits, 0.5 otherwise)."""
    if y_pred.shape[-1] == 1:
        predicted = ops.cast(y_pred[..., 0] > (0.0 if logits else 0.5), "int32")
        labels = ops.cast(ops.round(ops.reshape(ops.cast(y, "float32"), ops.shape(predicted))), "int32")
    else:
        predicted = ops.cast(ops.argmax(y_pred, axis=-1), "int32")
        one_hot = len(y.shape) == len(y_pred.shape) and y.shape[-1] == y_pred.shape[-1]
        labels = (ops.argmax(y, axis=-1) if one_hot
                  else ops.reshape(ops.cast(y, "int32"), ops.shape(predicted)))
    return ops.cast(ops.not_equal(predicted, ops.cast(labels, "int32")), "float32")


class _Wrapped(keras.losses.Loss):
    """A loss function as a `keras.losses.Loss`: per-sample values, sample weights, reduction."""

    def __init__(self, fn):
        super().__init__(name=getattr(fn, "__name__", "loss"))
        self.fn = fn

    def call(self, y_true, y_pred):
        return self.fn(y_true, y_pred)


def as_loss(loss) -> keras.losses.Loss:
    """One Keras loss (an object, a name or a function) as a `keras.losses.Loss`."""
    if isinstance(loss, (dict, list, tuple)) or loss is None:
        raise ValueError("This measure needs a model compiled with one loss for one output "
                         f"(per-sample losses). Received: loss={loss!r}")
    loss = keras.losses.get(loss)
    return loss if isinstance(loss, keras.losses.Loss) else _Wrapped(loss)


class Objective:
    """The model's loss L̂(w) and 0-1 error on fixed `samples`, with gradients and exact
    Hessian-vector products, all as functions of the trainable weights `w` (a list of tensors,
    one per ``model.trainable_variables``; None: the model's current weights)."""

    def __init__(self, model, samples: Samples, *, include_regularization: bool = False,
                 loss=None):
        """`loss` overrides the compiled loss (a Keras loss or its name)."""
        self.model, self.samples = model, samples
        self.variables = check_model(model, needs_loss=False, finite=False)
        self.batches = samples.batches()
        self.num_samples = len(samples)
        sizes = np.array([int(y.shape[0]) for _, y, _ in self.batches], np.float64)
        self._fractions = sizes / sizes.sum()
        self._override = as_loss(loss) if loss is not None else None
        self._loss = self._override or keras_internals.compiled_loss(model)
        self._regularized = include_regularization
        self._logits = from_logits(model)
        self.refresh()

        def value(w, fixed, x, y, sw):
            return self._batch_loss(w, fixed, x, y, sw)

        def errors(w, fixed, x, y, sw):
            wrong = misclassified(y, self.predict(w, x, fixed), self._logits)
            return ops.sum(wrong * sw), ops.sum(sw)

        def gradient(w, fixed, x, y, sw):
            return backend.value_and_gradients(lambda w: self._batch_loss(w, fixed, x, y, sw), w)[1]

        def hessian_vector_product(w, fixed, x, y, sw, vector):
            return backend.hessian_vector_product(
                lambda w: self._batch_loss(w, fixed, x, y, sw), w, vector)

        value, errors, gradient, hessian_vector_product = (backend.function(f) for f in (
            value, errors, gradient, hessian_vector_product))
        self._value, self._errors = value, errors
        self._gradient, self._hvp = gradient, hessian_vector_product
        self._at = {}

    def refresh(self) -> None:
        """Take the model's current weights (and BatchNorm statistics) as its weights."""
        self.weights = [backend.snapshot(v) for v in self.variables]
        self.fixed = [backend.snapshot(v) for v in self.model.non_trainable_variables]

    def predict(self, w, x, fixed=None):
        """The model's outputs at weights `w` (inference mode)."""
        fixed = self.fixed if fixed is None else fixed
        return self.model.stateless_call(w, fixed, x, training=False)[0]

    def _batch_loss(self, w, fixed, x, y, sw):
        y_pred, _, extra = self.model.stateless_call(w, fixed, x, training=False,
                                                     return_losses=True)
        loss = ops.cast(self._loss(y, y_pred, sample_weight=sw), "float32")
        if self._regularized and extra:
            loss += sum(ops.cast(ops.sum(a), "float32") for a in extra)
        return loss

    def per_sample_losses(self, w, x, y):
        """ℓ_i of each sample of a batch (unweighted), plus ``model.losses`` when regularised."""
        loss = self._override or as_loss(self.model.loss)
        y_pred, _, extra = self.model.stateless_call(w, self.fixed, x, training=False,
                                                     return_losses=True)
        fn = loss.call
        values = ops.reshape(ops.cast(fn(y, y_pred), "float32"), (-1,))
        if self._regularized and extra:
            values += sum(ops.cast(ops.sum(a), "float32") for a in extra)
        return values

    def _w(self, weights):
        if weights is None:
            return self.weights
        return [ops.cast(ops.convert_to_tensor(a), v.dtype) for a, v in zip(weights, self.variables)]

    def value(self, weights=None) -> float:
        """L̂(w) over all samples."""
        w = self._w(weights)
        return float(sum(f * float(self._value(w, self.fixed, *b)) for f, b in zip(self._fractions, self.batches)))

    def error(self, weights=None) -> float:
        """The 0-1 error of w: the (sample-weighted) fraction of misclassified samples."""
        w = self._w(weights)
        wrong = total = 0.0
        for b in self.batches:
            a, n = self._errors(w, self.fixed, *b)
            wrong, total = wrong + float(a), total + float(n)
        return wrong / total if total else 0.0

    def gradient(self, weights=None) -> list:
        """∇L̂(w), one tensor per variable."""
        w = self._w(weights)
        return self._combine([self._gradient(w, self.fixed, *b) for b in self.batches])

    def hessian_vector_product(self, vector, weights=None) -> list:
        """H v (one tensor per variable): exact, by differentiating ∇L̂·v."""
        w, v = self._w(weights), self._w(vector)
        return self._combine([self._hvp(w, self.fixed, *b, v) for b in self.batches])

    def values_at(self, shift, noises, arguments, criterion: str) -> np.ndarray:
        """The 0-1 error (``criterion="error"``) or the loss at ``shift(w, z, *arguments)`` for
        each draw z of `noises` (one array per variable, the draws stacked on the first axis):
        all the draws in one compiled call per batch."""
        if (shift, criterion) not in self._at:
            self._at[shift, criterion] = backend.function(self._values_at_function(shift, criterion))
        fn = self._at[shift, criterion]
        noises = [ops.convert_to_tensor(n, v.dtype) for n, v in zip(noises, self.variables)]
        arguments = [ops.convert_to_tensor(a, "float32") for a in arguments]
        parts = [to_numpy(fn(self.weights, self.fixed, noises, arguments, *b)) for b in self.batches]
        if criterion == "error":
            return np.sum(parts, axis=0) / float(np.sum(self.samples.sample_weight))
        return np.sum([f * p for f, p in zip(self._fractions, parts)], axis=0)

    def _values_at_function(self, shift, criterion):
        def values(w, fixed, noises, arguments, x, y, sw):
            def one(z):
                shifted = shift(w, z, *arguments)
                if criterion == "error":
                    wrong = misclassified(y, self.predict(shifted, x, fixed), self._logits)
                    return ops.sum(wrong * sw)
                return self._batch_loss(shifted, fixed, x, y, sw)

            return ops.map(one, noises)

        return values

    def batch_gradient(self, index: int, weights=None) -> list:
        """∇L̂ on batch `index` alone."""
        return self._gradient(self._w(weights), self.fixed, *self.batches[index])

    def batch_hessian_vector_product(self, index: int, vector, weights=None) -> list:
        """H v on batch `index` alone."""
        return self._hvp(self._w(weights), self.fixed, *self.batches[index], self._w(vector))

    def _combine(self, parts) -> list:
        return [sum(ops.cast(f, p[k].dtype) * p[k] for f, p in zip(self._fractions, parts))
                for k in range(len(self.variables))]


def seed_of(*parts: int) -> int:
    """One 31-bit seed for `keras.random` from several integers (a seed, a step, a draw...)."""
    key = 0
    for part in parts:
        key = noise.mix32_int(key ^ noise.mix32_int(int(part)))
    return key & 0x7FFFFFFF


def dot(a, b) -> float:
    """Σ_k ⟨a_k, b_k⟩ of two lists of tensors, in float64."""
    return float(sum(np.sum(to_numpy(x) * to_numpy(y)) for x, y in zip(a, b)))


def progress(verbose: int, target: int, unit: str = "step"):
    """A Keras progress bar, or None when `verbose` is 0."""
    return keras.utils.Progbar(target, unit_name=unit) if verbose else None


def tick(bar, values=None) -> None:
    if bar is not None:
        bar.add(1, values=values)


_SHARED: contextvars.ContextVar[dict | None] = contextvars.ContextVar("measures_shared", default=None)


@contextlib.contextmanager
def shared() -> Iterator[None]:
    """Inside, measures of one model on one dataset share what they compute once: the samples
    read, the traced functions, σ′, α′, the margin (`compute_all` measures inside one)."""
    token = _SHARED.set({})
    try:
        yield
    finally:
        _SHARED.reset(token)


def memo(key, compute):
    """`compute()`, or inside `shared` the value it gave for `key` before."""
    cache = _SHARED.get()
    if cache is None:
        return compute()
    if key not in cache:
        cache[key] = compute()
    return cache[key]


def objective(model, data, *, batch_size: int = 256, max_samples: int | None = None,
              max_batches: int | None = None, seed: int = 0,
              include_regularization: bool = False, loss=None,
              needs_loss: bool = True) -> Objective:
    """The `Objective` of `model` on `data` (read by `data.read`; `max_batches`: only the first
    batches), shared inside `shared`; `needs_loss=False` for measures of the outputs only."""
    check_model(model, needs_loss=needs_loss and loss is None)

    def build():
        samples = memo(("samples", id(data), batch_size, max_samples, seed),
                       lambda: read(data, model=model, batch_size=batch_size,
                                    max_samples=max_samples, seed=seed))
        if max_batches is not None:
            samples = samples.head(max_batches * batch_size)
        return Objective(model, samples, include_regularization=include_regularization, loss=loss)

    key = ("objective", id(model), id(data), batch_size, max_samples, max_batches, seed,
           include_regularization, loss if loss is None or isinstance(loss, str) else id(loss))
    return memo(key, build)
