import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("MPLBACKEND", "Agg")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


def small_model(seed=1, constraint=None, num_features=8, num_classes=3):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((num_features,)),
            keras.layers.Dense(16, activation="tanh", kernel_constraint=constraint),
            keras.layers.Dense(num_classes),
        ]
    )


def toy_data(n=128, num_features=8, num_classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, num_features)).astype("float32")
    y = (np.abs(x[:, 0] * 2 + x[:, 1]).astype("int64") % num_classes).astype("int32")
    return x, y


LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

# jit_compile settings tested per backend: TensorFlow with XLA off and on; JAX compiled, as its
# users run it (uncompiled JAX is the same program, op by op, and slow); PyTorch eager, Keras's
# default there (jit_compile=True runs, but torch.compile takes minutes per model on a CPU).
JIT = {"tensorflow": [False, True], "jax": [True], "torch": [False]}[keras.backend.backend()]


@pytest.fixture
def data():
    return toy_data()


def gradients(model, x, y, loss=LOSS):
    """The gradient of ``loss(y, model(x))`` with respect to the trainable variables, on any
    backend (the derivative the measures use, checked in closed form in test_measures)."""
    from keras_pacgen import backends

    fixed = [keras.ops.copy(v) for v in model.non_trainable_variables]

    def fn(w):
        return loss(y, model.stateless_call(w, fixed, x)[0])

    weights = [keras.ops.copy(v) for v in model.trainable_variables]
    return backends.load().value_and_gradients(fn, weights)[1]
