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


@pytest.fixture
def data():
    return toy_data()
