"""Median time per training step: perturbed optimizers against the plain ones, SAM for reference.

    python benchmarks/step_time.py [--models mnist_cnn,wrn16_4] [--rounds 5] [--out benchmarks/results]

One process; all configurations are built and warmed up first (compilation excluded), then
measured in interleaved rounds (every configuration once per round, in rotating order), each
measurement a `fit` of `--steps` steps on one fixed batch of 128; the per-step time of a
configuration is the median over rounds. Ratios are against the plain optimizer of the same
family with the same jit setting. Prints a table and writes CSV/JSON.
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

MODELS = {
    "mnist_cnn": (lambda: models.mnist_cnn(), (28, 28, 1), 10),
    "wrn16_4": (lambda: models.wide_resnet(16, 4, input_shape=(32, 32, 3)), (32, 32, 3), 10),
}
OPTIMIZERS = {
    "adam": lambda: keras.optimizers.Adam(1e-3),
    "perturbed_adam": lambda: kp.PerturbedAdam(1e-3, gamma=1.0, seed=0),
    "sgd": lambda: keras.optimizers.SGD(0.01, momentum=0.9),
    "perturbed_sgd": lambda: kp.PerturbedSGD(0.01, momentum=0.9, gamma=1.0, seed=0),
    "sam_adam": lambda: keras.optimizers.Adam(1e-3),
}
BASELINE = {"perturbed_adam": "adam", "perturbed_sgd": "sgd", "sam_adam": "adam", "adam": "adam", "sgd": "sgd"}


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


def measure(model, ds, cbs, steps):
    """(wall seconds, process CPU seconds) per step; CPU time sums TensorFlow's threads and is far
    less sensitive than wall time to other load and to CPU steal on a shared machine."""
    start, cpu = time.perf_counter(), time.process_time()
    model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=cbs)
    return (time.perf_counter() - start) / steps, (time.process_time() - cpu) / steps


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mnist_cnn,wrn16_4")
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    parser.add_argument("--jit", default="false,true")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=0, help="steps per measurement (0: auto)")
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
        steps = args.steps or (10 if model_name == "mnist_cnn" else 2)
        for model, ds, cbs in configs.values():  # warm-up: trace, compile, first steps
            measure(model, ds, cbs, 2)
            measure(model, ds, cbs, steps)
        times = {key: [] for key in configs}
        keys = list(configs)
        for r in range(args.rounds):
            order = keys[r % len(keys):] + keys[: r % len(keys)]
            for key in order:
                times[key].append(measure(*configs[key], steps))
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
