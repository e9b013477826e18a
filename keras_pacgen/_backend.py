"""keras-pacgen runs on Keras's TensorFlow backend only: say so before anything else fails."""

from __future__ import annotations

import json
import os
import sys


def _configured_backend() -> str:
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


def require_tensorflow_backend() -> None:
    """Raise an `ImportError` that says how to select TensorFlow when Keras runs on another
    backend (checked before Keras is imported, so that a missing JAX or PyTorch cannot hide it)."""
    backend = _configured_backend()
    if backend != "tensorflow":
        raise ImportError(
            "keras-pacgen needs Keras's TensorFlow backend, but Keras is configured for the "
            f"{backend!r} backend. Select TensorFlow before Keras is first imported: set the "
            "environment variable KERAS_BACKEND=tensorflow (e.g. `KERAS_BACKEND=tensorflow python "
            "train.py`, or os.environ['KERAS_BACKEND'] = 'tensorflow' at the top of the script), "
            'or set "backend": "tensorflow" in ~/.keras/keras.json.'
        )
