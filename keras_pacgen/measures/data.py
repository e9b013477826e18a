"""The data a measure reads, read once into a fixed set of samples.

A measure accepts arrays ``(x, y)`` or ``(x, y, sample_weight)``, or any batched
`tf.data.Dataset` of such tuples (with or without ``drop_remainder``, shuffled or not). A dataset
is read to its end once and its samples put into a canonical order (by a hash of each sample's
bytes), so that a shuffled dataset gives the same samples, and the same measure, at every call;
`max_samples` then keeps a subset drawn from `seed`. The samples are split into batches of
`batch_size` in that order.
"""

from __future__ import annotations

import dataclasses
import hashlib

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_pacgen import _validation as check

_FORMS = ("arrays (x, y) or (x, y, sample_weight), or a batched tf.data.Dataset of such tuples")


@dataclasses.dataclass(frozen=True)
class Samples:
    """Inputs `x` (an array or a nest of arrays), targets `y` and `sample_weight` (ones when none
    was given), one row per sample, split into batches of `batch_size`."""

    x: object
    y: np.ndarray
    sample_weight: np.ndarray
    batch_size: int

    def __len__(self) -> int:
        return len(self.y)

    def head(self, n: int) -> Samples:
        """The first `n` samples."""
        if n >= len(self):
            return self
        x, y, weight = _take(slice(0, n), self.x, self.y, self.sample_weight)
        return Samples(x, y, weight, self.batch_size)

    def dataset(self) -> tf.data.Dataset:
        """The samples as a `tf.data.Dataset` of (x, y, sample_weight) batches, in order."""
        return tf.data.Dataset.from_tensor_slices((self.x, self.y, self.sample_weight)).batch(
            self.batch_size)

    def batches(self) -> list[tuple]:
        """[(x, y, sample_weight)] as tensors, in order."""
        out = []
        for start in range(0, len(self), self.batch_size):
            part = slice(start, start + self.batch_size)
            out.append((keras.tree.map_structure(lambda a, p=part: ops.convert_to_tensor(a[p]), self.x),
                        ops.convert_to_tensor(self.y[part]),
                        ops.convert_to_tensor(self.sample_weight[part])))
        return out


def read(data, *, model=None, batch_size: int = 256, max_samples: int | None = None,
         seed: int = 0, name: str = "data") -> Samples:
    """`data` (see the module) as `Samples`; `model` (when given) tells whether a dataset's
    elements are batches, from the rank of its inputs."""
    check.check_int("batch_size", batch_size, low=1)
    check.check_int("max_samples", max_samples, low=1, allow_none=True)
    if isinstance(data, Samples):
        parts = (data.x, data.y, data.sample_weight)
    elif isinstance(data, tf.data.Dataset):
        parts = _read_dataset(data, model, name)
    elif isinstance(data, (tuple, list)) and len(data) in (2, 3):
        parts = tuple(data)
    else:
        raise ValueError(f"`{name}` must be {_FORMS}. Received: {type(data).__name__}")
    x, y = keras.tree.map_structure(np.asarray, parts[0]), np.asarray(parts[1])
    weight = np.ones(len(y), np.float32) if len(parts) == 2 else np.asarray(parts[2], np.float32)
    lengths = {len(a) for a in keras.tree.flatten(x)} | {len(y), len(weight)}
    if len(lengths) != 1:
        raise ValueError(f"`{name}` holds inputs, targets and sample weights of different lengths "
                         f"({', '.join(str(len(a)) for a in (*keras.tree.flatten(x), y, weight))}): "
                         "they must have one row per sample.")
    if len(y) == 0:
        raise ValueError(f"`{name}` is empty: it holds no samples.")
    if weight.ndim != 1 or not np.all(np.isfinite(weight)) or np.any(weight < 0):
        raise ValueError(f"The sample weights of `{name}` must be one finite number >= 0 per sample.")
    if isinstance(data, tf.data.Dataset):
        x, y, weight = _take(np.argsort(_sample_hashes(x, y, weight), kind="stable"), x, y, weight)
    if max_samples is not None and len(y) > max_samples:
        keep = np.sort(np.random.default_rng(seed).choice(len(y), max_samples, replace=False))
        x, y, weight = _take(keep, x, y, weight)
    return Samples(x, y, weight, batch_size)


def _take(index, x, y, weight):
    return keras.tree.map_structure(lambda a: a[index], x), y[index], weight[index]


def _read_dataset(dataset: tf.data.Dataset, model, name: str):
    if dataset.cardinality() == tf.data.INFINITE_CARDINALITY:
        raise ValueError(f"`{name}` is an infinite tf.data.Dataset (it repeats): measures read it "
                         "to its end; pass e.g. dataset.take(n) instead.")
    spec = dataset.element_spec
    if not isinstance(spec, tuple) or len(spec) not in (2, 3):
        raise ValueError(f"`{name}` must be {_FORMS}; its elements are {spec}.")
    input_rank = _input_rank(model)
    first = keras.tree.flatten(spec[0])[0]
    if input_rank is not None and first.shape.rank is not None and first.shape.rank < input_rank:
        raise ValueError(f"`{name}` is an unbatched tf.data.Dataset (its inputs have shape "
                         f"{first.shape}, the model takes batches of rank {input_rank}): batch it, "
                         "e.g. dataset.batch(256).")
    rows = list(dataset.as_numpy_iterator())
    if not rows:
        raise ValueError(f"`{name}` is empty: it yielded no batches.")
    return tuple(keras.tree.map_structure(lambda *parts: np.concatenate(parts), *[r[k] for r in rows])
                 for k in range(len(spec)))


def _input_rank(model) -> int | None:
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        return None
    return len(inputs[0].shape) if inputs else None


def _sample_hashes(x, y, weight) -> np.ndarray:
    """One 64-bit hash of each sample's bytes: the canonical order of a dataset's samples."""
    arrays = [np.ascontiguousarray(a) for a in (*keras.tree.flatten(x), y, weight)]
    out = np.empty(len(y), np.uint64)
    for i in range(len(y)):
        digest = hashlib.blake2b(digest_size=8)
        for a in arrays:
            digest.update(a[i].tobytes())
        out[i] = int.from_bytes(digest.digest(), "little")
    return out
