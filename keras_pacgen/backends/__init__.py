"""What differs between Keras's backends, one small module each: `tensorflow`, `jax`, `torch`.

Everything else in keras-pacgen is written in `keras.ops`. Each backend module has (``backend =
backends.load()``):

* the optimizer step: ``local(variable, device)``, ``device_of``, ``on_each_device(anchor, fn)``
  (the per-device copies of `tf.distribute`; one array elsewhere, `_one_array`), ``dense``,
  ``snapshot(variable)``, ``apply_if_finite(step, grads, variables, *, optimizer)`` (the
  non-finite guard), ``compiled(fn)`` (the step's elementwise work), ``outside_step`` (remove or
  re-apply the perturbation between steps), ``sigma_dtype``;
* derivatives, for the measures and SAM: ``function(fn)`` (compiled), ``value_and_gradients``,
  ``hessian_vector_product``, ``per_sample_squared_norms``; SAM's step: ``training_gradients``
  and ``without_gradients`` (TensorFlow, PyTorch) or ``sam_train_step`` (JAX, pure);
* ``WIDE_FLOAT`` (float64; float32 under JAX without x64) and ``is_concrete(value)``.

`check()` runs when keras_pacgen is imported, before Keras is: a backend Keras has but we do not
support, or one whose package is missing, is refused with what to select or install.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys

SUPPORTED = ("tensorflow", "jax", "torch")
_EXTRAS = {"tensorflow": "keras-pacgen", "jax": "keras-pacgen[jax]", "torch": "keras-pacgen[torch]"}


def configured() -> str:
    """The backend Keras will use, read as Keras reads it: the KERAS_BACKEND environment variable,
    else the "backend" of keras.json in $KERAS_HOME (default ~/.keras), else TensorFlow."""
    keras = sys.modules.get("keras")
    if keras is not None and hasattr(keras, "backend"):
        return keras.backend.backend()
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        with open(os.path.join(home, "keras.json")) as f:
            return json.load(f).get("backend", "tensorflow")
    except (OSError, ValueError):
        return "tensorflow"


def check() -> str:
    """The configured backend, or an `ImportError` that says what to select or install."""
    backend = configured()
    if backend not in SUPPORTED:
        raise ImportError(
            f"keras-pacgen runs on Keras's {', '.join(SUPPORTED)} backends, but Keras is configured "
            f"for the {backend!r} backend. Select one before Keras is first imported: set the "
            "environment variable KERAS_BACKEND (e.g. `KERAS_BACKEND=jax python train.py`, or "
            "os.environ['KERAS_BACKEND'] = 'jax' at the top of the script), or set \"backend\" in "
            "~/.keras/keras.json."
        )
    if importlib.util.find_spec(backend) is None:
        raise ImportError(
            f"Keras is configured for the {backend!r} backend, but the {backend!r} package is not "
            f"installed: `pip install {_EXTRAS[backend]}`, or select another backend with "
            "KERAS_BACKEND=tensorflow|jax|torch."
        )
    if backend == "torch":
        # torch._dynamo loads triton, whose native library crashes the process (a segmentation
        # fault) when TensorFlow's are loaded first; Keras imports it lazily, after TensorFlow.
        importlib.import_module("torch._dynamo")
    return backend


def load():
    """The module of the backend Keras runs on."""
    import keras

    return importlib.import_module(f"keras_pacgen.backends.{keras.backend.backend()}")
