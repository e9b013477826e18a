"""Shared pieces of the experiment scripts: one training run, seeds, CSV/JSON output, plots."""

from __future__ import annotations

import csv
import json
import os
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_pacgen as kp  # noqa: E402
from keras_pacgen import datasets, models  # noqa: E402

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def arrays(name: str, label_noise: float = 0.0, seed: int = 0, data_dir: str | None = None):
    """(x_train, y_train, x_test, y_test) of an offline dataset, or of MNIST through TFDS."""
    if name in datasets.OFFLINE:
        x, y, xt, yt = datasets.load(name).arrays
    else:  # mnist through TFDS, as arrays
        data = datasets.load(name, batch_size=1024, shuffle=False, augment=False, data_dir=data_dir)
        x, y = (np.concatenate(p) for p in zip(*[(a.numpy(), b.numpy()) for a, b in data.train]))
        xt, yt = (np.concatenate(p) for p in zip(*[(a.numpy(), b.numpy()) for a, b in data.test]))
    y = y.copy()
    if label_noise:
        rng = np.random.default_rng(1000 + seed)
        flip = rng.random(len(y)) < label_noise
        y[flip] = rng.integers(0, 10, int(flip.sum()))
    return x, y.astype("int32"), xt, yt.astype("int32")


def network(name: str, input_shape, dropout: float = 0.0, width: int | None = None):
    if name == "mnist_cnn":
        if len(input_shape) == 1:  # the MNIST-style network for 1-D signals
            return models.mnist1d_cnn(dropout=dropout, input_shape=input_shape,
                                      **({"width": width} if width else {}))
        return models.mnist_cnn(dropout=dropout, input_shape=input_shape)
    if name == "mlp":
        return models.mlp(hidden=(width or 128,) * 2, dropout=dropout, input_shape=input_shape)
    raise ValueError(name)


def run(
    *,
    dataset: str = "mnist1d",
    model: str = "mnist_cnn",
    optimizer: str = "sgd",
    learning_rate: float = 0.1,
    batch_size: int = 128,
    epochs: int = 20,
    seed: int = 0,
    dropout: float = 0.0,
    width: int | None = None,
    label_noise: float = 0.0,
    eta: float = 0.01,
    gamma: float = 0.1,
    psi_every: int = 1,
    data=None,
) -> dict:
    """Train one model; returns per-epoch rows (clean gap, ψ, accuracies) and the model."""
    x, y, xt, yt = data if data is not None else arrays(dataset, label_noise, seed)
    keras.utils.set_random_seed(seed)
    net = network(model, x.shape[1:], dropout, width)
    make = {
        "sgd": lambda: keras.optimizers.SGD(learning_rate),
        "adam": lambda: keras.optimizers.Adam(learning_rate),
        "perturbed_sgd": lambda: kp.PerturbedSGD(learning_rate, eta=eta, gamma=gamma, seed=seed),
        "perturbed_adam": lambda: kp.PerturbedAdam(learning_rate, eta=eta, gamma=gamma, seed=seed),
    }
    if optimizer.startswith("sam"):
        from benchmarks.sam import SAM

        net = SAM(net, rho=0.05)
        opt = make[optimizer.split("_", 1)[1]]()
    else:
        opt = make[optimizer]()
    net.compile(optimizer=opt, loss=LOSS, metrics=["accuracy"])
    train = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed).batch(batch_size)
    test = tf.data.Dataset.from_tensor_slices((xt, yt)).batch(1024)
    subset = (x[:2048], y[:2048])
    cb = kp.PacGenCallback(subset, (xt, yt), every=psi_every, train_batches=8, batch_size=256)
    start = time.time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        history = net.fit(train, epochs=epochs, verbose=0, callbacks=[cb])
    train_acc = net.evaluate(x, y, verbose=0, return_dict=True)["accuracy"]
    test_metrics = net.evaluate(test, verbose=0, return_dict=True)
    return {
        "rows": cb.rows,
        "history": history.history,
        "model": net,
        "seconds": time.time() - start,
        "train_accuracy": float(train_acc),
        "test_accuracy": float(test_metrics["accuracy"]),
        "test_loss": float(test_metrics["loss"]),
        "final_gap": cb.rows[-1]["gen_gap"],
        "final_psi": cb.rows[-1]["pacgen"],
        "data": (x, y, xt, yt),
    }


def write_rows(path: str, rows: list[dict]) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_json(path: str, obj) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, default=float)
    return path


def plot_curves(curves: dict, path: str, title: str) -> str:
    """Per-epoch mean ± std of gap and ψ for each setting: two panels, like the paper's Figs. 4-5."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    for label, runs in curves.items():
        for ax, key in zip(axes, ("gen_gap", "pacgen")):
            values = np.array([[r[key] for r in rows] for rows in runs])
            epochs = np.arange(1, values.shape[1] + 1)
            mean, std = values.mean(0), values.std(0)
            ax.plot(epochs, mean, label=label)
            ax.fill_between(epochs, mean - std, mean + std, alpha=0.2)
    axes[0].set_ylabel("generalization gap (clean test − train loss)")
    axes[1].set_ylabel("ψ (pacGen)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
