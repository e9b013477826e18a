"""Median time per training step: perturbed optimizers against the plain ones, SAM for reference.

    python benchmarks/step_time.py [--models mnist_cnn,wrn16_4] [--rounds 10] [--out benchmarks/results]

Each configuration runs `--rounds` x `--steps` timed steps (default 10 x 20 for the MNIST CNN,
10 x 3 for WRN-16-4).

One process; all configurations are built and warmed up first (compilation excluded, one short
`fit` each), then their training steps are timed one at a time and interleaved: each round runs
one step of every configuration, in rotating order, calling the model's compiled train
function (what `fit` calls each step) on an iterator over one fixed batch. The time per step of a
configuration is the median over all its steps; ratios are against the plain optimizer of the
same family with the same jit setting. Interleaving single steps cancels the drift of this shared
VM (whose speed changes by up to 2x within a minute, for every configuration alike), and the
median ignores the slow stretches. Wall and process CPU time (which sums TensorFlow's threads)
are both reported. Prints a table and writes CSV/JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_pacgen as kp  # noqa: E402
from benchmarks.sam import SAM  # noqa: E402
from keras_pacgen import models  # noqa: E402
from keras_pacgen.callbacks import perturbed_optimizers  # noqa: E402

MODELS = {
    "mnist_cnn": (lambda: models.mnist_cnn(), (28, 28, 1), 10),
    "wrn16_4": (lambda: models.wide_resnet(16, 4, input_shape=(32, 32, 3)), (32, 32, 3), 10),
}
OPTIMIZERS = {
    "adam": lambda: keras.optimizers.Adam(1e-3),
    "perturbed_adam": lambda: kp.PerturbedAdam(1e-3, gamma=1.0, seed=0),
    "sgd": lambda: keras.optimizers.SGD(0.01, momentum=0.9),
    "perturbed_sgd": lambda: kp.PerturbedSGD(0.01, momentum=0.9, gamma=1.0, seed=0),
    # Without the non-finite guard: the cost of Algorithm 1 alone (plain Adam and SGD do not check
    # their gradients either); the guard waits for every gradient before any variable is updated.
    "perturbed_adam_unguarded": lambda: kp.PerturbedAdam(1e-3, gamma=1.0, seed=0, skip_nonfinite=False),
    "perturbed_sgd_unguarded": lambda: kp.PerturbedSGD(
        0.01, momentum=0.9, gamma=1.0, seed=0, skip_nonfinite=False
    ),
    "sam_adam": lambda: keras.optimizers.Adam(1e-3),
}
BASELINE = {"perturbed_adam": "adam", "perturbed_sgd": "sgd", "sam_adam": "adam", "adam": "adam", "sgd": "sgd",
            "perturbed_adam_unguarded": "adam", "perturbed_sgd_unguarded": "sgd"}


def build(model_name, opt_name, jit, batch):
    make, shape, classes = MODELS[model_name]
    keras.utils.set_random_seed(0)
    model = make()
    if opt_name.startswith("sam"):
        model = SAM(model)
    model.compile(optimizer=OPTIMIZERS[opt_name](),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=jit)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, *shape)).astype("float32")
    y = rng.integers(0, classes, size=batch).astype("int32")
    ds = tf.data.Dataset.from_tensors((x, y)).repeat().prefetch(2)
    cbs = [kp.PerturbationCallback()]
    return model, ds, cbs


def stepper(model, ds, cbs):
    """A function that runs one training step of `model` (warmed up) and returns its
    (wall seconds, process CPU seconds)."""
    model.fit(ds, steps_per_epoch=3, epochs=1, verbose=0, callbacks=cbs)  # trace, compile
    train_function, iterator = model.train_function, iter(ds)
    for optimizer in perturbed_optimizers(model.optimizer):
        optimizer.apply_perturbation()  # as PerturbationCallback does at the first batch

    def step():
        start, cpu = time.perf_counter(), time.process_time()
        train_function(iterator)
        return time.perf_counter() - start, time.process_time() - cpu

    for _ in range(3):  # the iterator's own trace, then steady state
        step()
    return step


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mnist_cnn,wrn16_4")
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    parser.add_argument("--jit", default="false,true")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=0, help="steps per round (0: auto: 20 for the MNIST CNN, 3 for WRN-16-4)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    rows = []
    for model_name in args.models.split(","):
        configs = {}
        for jit in [j == "true" for j in args.jit.split(",")]:
            for opt in args.optimizers.split(","):
                configs[(opt, jit)] = build(model_name, opt, jit, args.batch)
        steps = args.steps or (20 if model_name == "mnist_cnn" else 3)
        steppers = {key: stepper(*config) for key, config in configs.items()}
        times = {key: [] for key in configs}
        keys = list(configs)
        for r in range(args.rounds * steps):
            for key in keys[r % len(keys):] + keys[: r % len(keys)]:
                times[key].append(steppers[key]())
        for (opt, jit), ts in times.items():
            median = statistics.median(t[0] for t in ts)
            base = statistics.median(t[0] for t in times[(BASELINE[opt], jit)])
            cpu = statistics.median(t[1] for t in ts)
            cpu_base = statistics.median(t[1] for t in times[(BASELINE[opt], jit)])
            rows.append({"model": model_name, "optimizer": opt, "jit_compile": jit,
                         "ms_per_step": round(1000 * median, 2), "ratio": round(median / base, 3),
                         "cpu_ms_per_step": round(1000 * cpu, 2), "cpu_ratio": round(cpu / cpu_base, 3),
                         "rounds": args.rounds, "steps": steps, "batch": args.batch})
            print(f"{model_name:10s} {opt:15s} jit={str(jit):5s} {1000 * median:9.2f} ms/step  "
                  f"ratio {median / base:.3f}   cpu {1000 * cpu:9.2f} ms/step  ratio {cpu / cpu_base:.3f}",
                  flush=True)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, TF {tf.__version__}, Keras {keras.__version__}"
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "step_time.json"), "w") as f:
        json.dump({"machine": machine, "rows": rows}, f, indent=2)
    with open(os.path.join(args.out, "step_time.csv"), "w") as f:
        f.write(",".join(rows[0]) + "\n")
        for row in rows:
            f.write(",".join(str(v) for v in row.values()) + "\n")
    print("\n| model | optimizer | jit_compile | wall ms/step | wall ratio | CPU ms/step | CPU ratio |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['model']} | {row['optimizer']} | {row['jit_compile']} | {row['ms_per_step']} | "
              f"{row['ratio']} | {row['cpu_ms_per_step']} | {row['cpu_ratio']} |")
    print(f"\nmachine: {machine}")
    return rows


if __name__ == "__main__":
    main()
