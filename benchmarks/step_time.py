"""Median time per training step: perturbed optimizers against the plain ones, SAM for reference.

    python benchmarks/step_time.py [--backend tensorflow|jax|torch] [--models mnist_cnn,wrn16_4]
        [--rounds 0] [--out benchmarks/results]

``--backend`` selects Keras's backend for the run (default: the configured one); ``--jit``
defaults to what the backend compiles: ``false,true`` on TensorFlow (XLA off and on), ``true`` on
JAX, ``false`` on PyTorch (torch.compile is not supported).

``--optimizers perturbed_sgd,perturbed_sgd_update_only,sgd`` (and the same for Adam) splits a
perturbed step's cost: the ``_update_only`` configuration is the step traced without lines 7-14 of
Algorithm 1 (a diagnostic, not a valid step).

Also the optimizer's memory: the bytes of ``optimizer.variables`` of each configuration, and their
ratio to the plain optimizer's (target: PerturbedAdam <= 1.75x Adam).

One process; all configurations are built and warmed up first (compilation excluded, one short
`fit` each), then their training steps are timed one at a time and interleaved: each round runs
`--steps` steps of every configuration, one step at a time in rotating order, calling the model's
compiled train function (what `fit` calls each step) on an iterator over one fixed batch. Defaults
(0 = auto): 20 rounds x 10 steps for the MNIST CNN, 10 rounds x 3 steps for WRN-16-4.

The ratio of a configuration is paired by round: in each round, the median of its steps over the
median of the plain optimizer's steps in the same round (same family, same jit setting); the
table shows the median of these per-round ratios and a 95% bootstrap interval over the rounds
(2000 resamples of the rounds, seed 0). Pairing by round cancels the drift of this shared VM
(whose speed changes by up to 2x within a minute, for every configuration alike). The interval
covers the variation between the rounds of one run only: repeated runs of the same code on this
VM move the MNIST CNN ratios by up to about ±0.01 more. ``ms/step`` is the median over all of a
configuration's steps. Wall and process CPU time (which sums TensorFlow's threads) are both
reported. Prints a table and writes CSV/JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _backend_argument(argv):
    """The value of --backend, read before Keras is imported (Keras picks its backend then)."""
    for i, arg in enumerate(argv):
        if arg == "--backend" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--backend="):
            return arg.split("=", 1)[1]
    return None


if __name__ == "__main__" and _backend_argument(sys.argv[1:]):
    os.environ["KERAS_BACKEND"] = _backend_argument(sys.argv[1:])

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_pacgen as kp  # noqa: E402
from keras_pacgen import models  # noqa: E402
from keras_pacgen.perturbation import step as perturbation_step  # noqa: E402
from keras_pacgen.training import make_optimizer  # noqa: E402

MODELS = {
    "mnist_cnn": (lambda: models.mnist_cnn(), (28, 28, 1), 10),
    "wrn16_4": (lambda: models.wide_resnet(16, 4, input_shape=(32, 32, 3)), (32, 32, 3), 10),
}
PERTURBATION = dict(gamma=1.0, seed=0)
# configuration -> (registry name, arguments); the registry's defaults otherwise
OPTIMIZERS = {
    "adam": ("adam", {}),
    "perturbed_adam": ("perturbed_adam", PERTURBATION),
    "sgd": ("sgd", {}),
    "perturbed_sgd": ("perturbed_sgd", PERTURBATION),
    # Without the non-finite guard: the cost of Algorithm 1 alone (plain Adam and SGD do not check
    # their gradients either).
    "perturbed_adam_unguarded": ("perturbed_adam", {**PERTURBATION, "skip_nonfinite": False}),
    "perturbed_sgd_unguarded": ("perturbed_sgd", {**PERTURBATION, "skip_nonfinite": False}),
    "sam_adam": ("sam_adam", {}),
}
# Diagnostics, not in the default list (name them in --optimizers): the perturbed step with lines
# 7-14 of Algorithm 1 (ρ, κ, σ, u and PerturbedSGD's h_{t+1}) left out at trace time, so that the
# non-finite guard, the restore w ← clean, OPT's update and clean ← w_{t+1} remain. Not a valid
# step (u stays 0); against the full step, it splits the cost between the two parts.
UPDATE_ONLY = {"perturbed_adam_update_only": "perturbed_adam", "perturbed_sgd_update_only": "perturbed_sgd"}
OPTIMIZERS.update({name: OPTIMIZERS[full] for name, full in UPDATE_ONLY.items()})
BASELINE = {"perturbed_adam": "adam", "perturbed_sgd": "sgd", "sam_adam": "adam", "adam": "adam", "sgd": "sgd",
            "perturbed_adam_unguarded": "adam", "perturbed_sgd_unguarded": "sgd",
            "perturbed_adam_update_only": "adam", "perturbed_sgd_update_only": "sgd"}
DEFAULT_OPTIMIZERS = [name for name in OPTIMIZERS if name not in UPDATE_ONLY]


def build(model_name, opt_name, jit, batch):
    make, shape, classes = MODELS[model_name]
    keras.utils.set_random_seed(0)
    model = make()
    name, args = OPTIMIZERS[opt_name]
    if name.startswith("sam_"):
        model = kp.SharpnessAwareMinimization(model)
    model.compile(optimizer=make_optimizer(name, **args),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=jit)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, *shape)).astype("float32")
    y = rng.integers(0, classes, size=batch).astype("int32")
    ds = tf.data.Dataset.from_tensors((x, y)).repeat().prefetch(2)
    cbs = [kp.PerturbationCallback()]
    return model, ds, cbs, (x, y)


def _keep_clean_weights(slots, gradients, device, *args):
    """Instead of lines 7-14: u = 0 (σ stays 0), so only ``clean ← w_{t+1}``."""
    for s in slots:
        perturbation_step.backend.local(s.clean, device).assign(
            perturbation_step.backend.local(s.variable, device))


@contextlib.contextmanager
def lines_7_to_14(included: bool):
    """Inside, a perturbed step traced (or, on PyTorch, run) without `included` leaves out lines
    7-14 (`UPDATE_ONLY`)."""
    original = perturbation_step._perturb_device
    if not included:
        perturbation_step._perturb_device = _keep_clean_weights
    try:
        yield
    finally:
        perturbation_step._perturb_device = original


def without_lines_7_to_14(step):
    """`step` with lines 7-14 left out each time it runs: an eager step (PyTorch) calls
    `_perturb_device` at every step, not once when it is traced."""

    def run():
        with lines_7_to_14(included=False):
            return step()

    return run


def _train_step(model, ds, batch):
    """One call of the compiled train function `fit` calls each step, in the backend's form."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        iterator = iter(ds)
        return lambda: model.train_function(iterator)
    data = tuple(keras.ops.convert_to_tensor(a) for a in batch)
    if backend == "torch":
        return lambda: model.train_function([data])
    import jax

    # the training state, threaded through the steps as JAX's fit threads it
    state = [[v.value for v in group] for group in (
        model.trainable_variables, model.non_trainable_variables, model.optimizer.variables,
        model.metrics_variables)]

    def step():
        nonlocal state
        logs, state = model.train_function(state, iter([data]))
        jax.block_until_ready(logs)

    return step


def stepper(model, ds, cbs, batch):
    """A function that runs one training step of `model` (warmed up) and returns its
    (wall seconds, process CPU seconds)."""
    model.fit(ds, steps_per_epoch=3, epochs=1, verbose=0, callbacks=cbs)  # trace, compile
    for optimizer in kp.perturbed_optimizers(model.optimizer):
        optimizer.apply_perturbation()  # as PerturbationCallback does at the first batch
    train_step = _train_step(model, ds, batch)

    def step():
        start, cpu = time.perf_counter(), time.process_time()
        train_step()
        return time.perf_counter() - start, time.process_time() - cpu

    for _ in range(3):  # the iterator's own trace, then steady state
        step()
    return step


def optimizer_bytes(optimizer) -> int:
    """Bytes of the optimizer's variables (for SAM's wrapper: its optimizer's)."""
    return sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in optimizer.variables)


def paired_ratio(rounds, baseline_rounds, *, resamples=2000, seed=0):
    """(median, 2.5th percentile, 97.5th percentile) of the per-round ratios
    median(config's steps in round r) / median(baseline's steps in round r), the interval from a
    bootstrap over the rounds."""
    ratios = np.array([statistics.median(a) / statistics.median(b) for a, b in zip(rounds, baseline_rounds)])
    rng = np.random.default_rng(seed)
    medians = np.median(rng.choice(ratios, size=(resamples, len(ratios))), axis=1)
    return float(np.median(ratios)), float(np.percentile(medians, 2.5)), float(np.percentile(medians, 97.5))


def _column(per_round, k):
    """Field `k` (0 wall, 1 CPU) of every step, round by round."""
    return [[t[k] for t in steps] for steps in per_round]


def paired_column_ratio(times, baseline_times, k):
    """`paired_ratio` of field `k` (0 wall, 1 CPU) of two configurations' timed rounds."""
    return paired_ratio(_column(times, k), _column(baseline_times, k))


def time_rounds(steppers, rounds, steps):
    """{key: [[(wall, cpu) of each step] for each round]}: each round runs `steps` steps of every
    stepper, one step at a time in rotating order (the starting one moves by one each round)."""
    keys = list(steppers)
    times = {key: [[] for _ in range(rounds)] for key in keys}
    for r in range(rounds):
        for i in range(steps * len(keys)):
            key = keys[(i + r) % len(keys)]
            times[key][r].append(steppers[key]())
    return times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default=None, choices=("tensorflow", "jax", "torch"),
                        help="Keras backend (default: the configured one)")
    parser.add_argument("--models", default="mnist_cnn,wrn16_4")
    parser.add_argument("--optimizers", default=",".join(DEFAULT_OPTIMIZERS),
                        help=f"of {', '.join(OPTIMIZERS)}")
    parser.add_argument("--jit", default=None, help="false,true: XLA (torch.compile) off, on")
    parser.add_argument("--rounds", type=int, default=0, help="rounds (0: auto: 20 for the MNIST CNN, 10 for WRN-16-4)")
    parser.add_argument("--steps", type=int, default=0, help="steps per configuration and round (0: auto: 10 for the MNIST CNN, 3 for WRN-16-4)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    backend = keras.backend.backend()
    if args.backend and args.backend != backend:
        parser.error(f"--backend {args.backend}: Keras already runs on {backend} in this process")
    args.jit = args.jit or {"tensorflow": "false,true", "jax": "true", "torch": "false"}[backend]
    if args.rounds < 0 or args.rounds == 1:  # checked before anything is built
        parser.error(f"--rounds must be >= 2 for an interval (or 0 for the default), got {args.rounds}")
    unknown = sorted(set(args.optimizers.split(",")) - set(OPTIMIZERS))
    if unknown:
        parser.error(f"unknown --optimizers {', '.join(unknown)}; valid: {', '.join(OPTIMIZERS)}")
    if args.steps < 0:
        parser.error(f"--steps must be >= 1 (or 0 for the default), got {args.steps}")
    warnings.filterwarnings("ignore")
    rows = []
    for model_name in args.models.split(","):
        configs, steppers = {}, {}
        for jit in [j == "true" for j in args.jit.split(",")]:
            for opt in args.optimizers.split(","):
                included = opt not in UPDATE_ONLY
                with lines_7_to_14(included):  # the step is traced here
                    configs[(opt, jit)] = build(model_name, opt, jit, args.batch)
                    steppers[(opt, jit)] = stepper(*configs[(opt, jit)])
                    configs[(opt, jit)] = configs[(opt, jit)][0]
                if not included:
                    steppers[(opt, jit)] = without_lines_7_to_14(steppers[(opt, jit)])
        mnist = model_name == "mnist_cnn"
        rounds = args.rounds or (20 if mnist else 10)
        steps = args.steps or (10 if mnist else 3)
        times = time_rounds(steppers, rounds, steps)
        memory = {key: optimizer_bytes(model.optimizer) for key, model in configs.items()}
        for (opt, jit), per_round in times.items():
            base = times[(BASELINE[opt], jit)]
            ratio, low, high = paired_column_ratio(per_round, base, 0)
            cpu_ratio, _, _ = paired_column_ratio(per_round, base, 1)
            median = statistics.median(t for ts in _column(per_round, 0) for t in ts)
            cpu_median = statistics.median(t for ts in _column(per_round, 1) for t in ts)
            rows.append({"backend": backend, "model": model_name, "optimizer": opt, "jit_compile": jit,
                         "ms_per_step": round(1000 * median, 2), "ratio": round(ratio, 3),
                         "ratio_ci95_low": round(low, 3), "ratio_ci95_high": round(high, 3),
                         "cpu_ms_per_step": round(1000 * cpu_median, 2), "cpu_ratio": round(cpu_ratio, 3),
                         "optimizer_bytes": memory[(opt, jit)],
                         "memory_ratio": round(memory[(opt, jit)] / memory[(BASELINE[opt], jit)], 3),
                         "rounds": rounds, "steps": steps, "batch": args.batch})
            print(f"{backend:10s} {model_name:10s} {opt:24s} jit={str(jit):5s} {1000 * median:9.2f} ms/step  "
                  f"ratio {ratio:.3f} [{low:.3f}, {high:.3f}]   cpu {1000 * cpu_median:9.2f} ms/step  "
                  f"ratio {cpu_ratio:.3f}   memory {rows[-1]['memory_ratio']:.3f}", flush=True)
    version = {"tensorflow": lambda: tf.__version__, "jax": lambda: __import__("jax").__version__,
               "torch": lambda: __import__("torch").__version__}[backend]()
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
               f"{backend} {version}, Keras {keras.__version__}")
    os.makedirs(args.out, exist_ok=True)
    suffix = "" if backend == "tensorflow" else f"_{backend}"
    with open(os.path.join(args.out, f"step_time{suffix}.json"), "w") as f:
        json.dump({"machine": machine, "rows": rows}, f, indent=2)
    with open(os.path.join(args.out, f"step_time{suffix}.csv"), "w") as f:
        f.write(",".join(rows[0]) + "\n")
        for row in rows:
            f.write(",".join(str(v) for v in row.values()) + "\n")
    print("\n| backend | model | optimizer | jit_compile | wall ms/step | wall ratio [95% interval] "
          "| CPU ms/step | CPU ratio | memory ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['backend']} | {row['model']} | {row['optimizer']} | {row['jit_compile']} | {row['ms_per_step']} | "
              f"{row['ratio']:.3f} [{row['ratio_ci95_low']:.3f}, {row['ratio_ci95_high']:.3f}] | "
              f"{row['cpu_ms_per_step']} | {row['cpu_ratio']:.3f} | {row['memory_ratio']:.3f} |")
    print(f"\nmachine: {machine}")
    return rows


if __name__ == "__main__":
    main()
