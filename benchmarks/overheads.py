"""The cost of the PacGen metric and of a Hessian-vector product.

    python benchmarks/overheads.py [--out benchmarks/results]

1. The PacGen metric (ψ from the optimizer's state) against one epoch of the MNIST CNN on
   MNIST-sized data (60,000 samples of 28x28, batch 128, 469 steps): the metric is recomputed
   every `update_every` (50) steps, so its cost per epoch is ceil(469/50) computations (target
   < 1%). Training steps and ψ are timed one at a time, interleaved, medians of 60 each.
2. `pacgen_score(estimator="hutchinson")`: seconds per Hessian-vector product relative to one
   gradient, as the score reports it.

(The optimizers' memory is measured by benchmarks/step_time.py.)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_pacgen as kp  # noqa: E402
from keras_pacgen import models  # noqa: E402


def metric_cost():
    keras.utils.set_random_seed(0)
    model = models.mnist_cnn()
    metric = kp.PacGen(model)
    model.compile(optimizer=kp.PerturbedAdam(1e-3, seed=0),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 28, 28, 1)).astype("float32")
    y = rng.integers(0, 10, 128).astype("int32")
    ds = tf.data.Dataset.from_tensors((x, y)).repeat()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(ds, steps_per_epoch=3, epochs=1, verbose=0)  # trace and warm up
    iterator = iter(ds)

    def step_once():
        t = time.perf_counter()
        model.train_function(iterator)
        return time.perf_counter() - t
    compute = tf.function(lambda: kp.psi_from_optimizer(model))
    compute()

    def psi_once():
        t = time.perf_counter()
        compute().numpy()
        return time.perf_counter() - t

    # interleaved, one at a time, medians (as benchmarks/step_time.py, for the same reason)
    steps, times = [], []
    for _ in range(60):
        steps.append(step_once())
        times.append(psi_once())
    step, psi_seconds = statistics.median(steps), statistics.median(times)
    epoch_steps = math.ceil(60000 / 128)
    per_epoch = math.ceil(epoch_steps / metric.update_every) * psi_seconds
    row = {"step_seconds": step, "psi_seconds": psi_seconds, "epoch_steps": epoch_steps,
           "update_every": metric.update_every, "metric_fraction_of_epoch": per_epoch / (epoch_steps * step)}
    print(f"PacGen metric: one ψ {1000 * psi_seconds:.2f} ms, a train step {1000 * step:.1f} ms; every "
          f"{metric.update_every} steps over a {epoch_steps}-step epoch: "
          f"{100 * row['metric_fraction_of_epoch']:.3f}% of the epoch", flush=True)
    return row


def hvp_cost():
    keras.utils.set_random_seed(0)
    model = models.mnist_cnn()
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 28, 28, 1)).astype("float32")
    y = rng.integers(0, 10, 512).astype("int32")
    score = kp.pacgen_score(model, (x, y), estimator="hutchinson", batch_size=128, max_batches=4,
                            hutchinson_samples=3, verbose=0)
    print(f"Hutchinson: {1000 * score.seconds_per_hvp:.1f} ms per Hessian-vector product, "
          f"{1000 * score.seconds_per_gradient:.1f} ms per gradient: ratio {score.hvp_cost_ratio:.2f}", flush=True)
    return {"seconds_per_hvp": score.seconds_per_hvp, "seconds_per_gradient": score.seconds_per_gradient,
            "ratio": score.hvp_cost_ratio}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    result = {"metric": metric_cost(), "hutchinson": hvp_cost()}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "overheads.json"), "w") as f:
        json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
