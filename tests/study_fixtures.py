"""A small study for the runner's tests: six trials, each a few steps of a tiny Keras network
(so that the same seed must give the same numbers in any process), one that always fails, one
that fails once. Its trials append their id to $TOY_STUDY_LOG when they end and sleep
$TOY_STUDY_DELAY seconds first."""

import os
import time

import numpy as np

from keras_pacgen.studies import Study, Trial, register

FAILS = {"a": 2, "seed": 1}


@register("toy")
def make(*, quick: bool = False, seeds: int | None = None) -> Study:
    seeds = seeds or 2

    def trials(recorded):
        first = [Trial({"a": a}, seed) for a in range(3) for seed in range(seeds)]
        done = {e["trial_id"] for e in recorded}
        if all(t.trial_id in done for t in first):  # a second stage, declared from the first
            best = max((e for e in recorded if e["status"] == "ok"), key=lambda e: e["outputs"]["loss"])
            return first + [Trial({"a": best["hyperparameters"]["a"], "stage": 2}, 0)]
        return first

    return Study("toy", {"quick": quick, "seeds": seeds}, trials, run_trial, report)


def run_trial(trial: Trial) -> dict:
    import keras

    time.sleep(float(os.environ.get("TOY_STUDY_DELAY", "0")))
    a = trial.hyperparameters["a"]
    if {"a": a, "seed": trial.seed} == FAILS:
        raise RuntimeError("this trial always fails")
    flaky = os.environ.get("TOY_STUDY_FLAKY")
    if flaky and trial.seed == 0 and a == 1 and not os.path.exists(flaky):
        open(flaky, "w").close()
        raise FloatingPointError("training diverged: loss nan (once)")
    keras.utils.set_random_seed(trial.seed)
    rng = np.random.default_rng(trial.seed)
    x = rng.normal(size=(64, 5)).astype("float32")
    y = (x @ rng.normal(size=(5, 1)) + a).astype("float32")
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(8, activation="tanh"),
                              keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    history = model.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0)
    log = os.environ.get("TOY_STUDY_LOG")
    if log:
        with open(log, "a") as f:
            f.write(trial.trial_id + "\n")
    return {"loss": float(history.history["loss"][-1]),
            "weights": float(sum(np.sum(w.astype(np.float64)) for w in model.get_weights()))}


def report(entries, out) -> dict:
    return {"ok": sum(e["status"] == "ok" for e in entries), "trials": len(entries)}
