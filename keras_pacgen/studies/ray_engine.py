"""The trials of a study as Ray Tune trials: each in a worker process (a Ray actor, one trial at a
time, reused for the next so that TensorFlow starts once per worker) with the CPU/GPU share the
study asks for, at most `workers` at a time, on a local Ray started for the study or on an
existing cluster (`address`). Each trial's record travels back with its result and the driver
writes it to the results store (no shared file system needed); Tune's own state goes to a
temporary folder, since the store decides what is left to run."""

from __future__ import annotations

import importlib
import json
import os
import sys
import tempfile

from keras_pacgen.studies import runner, store
from keras_pacgen.studies.study import REGISTRY, Trial, make


def _trainable(config: dict) -> None:
    from ray import tune

    importlib.import_module(config["module"])  # registers the study in this process
    study = make(config["study"], **config["options"])
    trial = Trial.from_dict(config["trial"])
    entry = runner.execute(study, trial, config["trial"]["index"], config["retries"])
    tune.report({"entry": json.dumps(entry, default=store.plain)})


def _callback(out: str, progress: runner.Progress, todo: dict):
    from ray import tune

    class Record(tune.Callback):
        """Writes each trial's record to the store as soon as Tune hears of it."""

        def on_trial_start(self, iteration, trials, trial, **info):
            progress.started()

        def on_trial_result(self, iteration, trials, trial, result, **info):
            entry = json.loads(result["entry"])
            store.record(out, entry)
            progress.finished(entry)

        def on_trial_error(self, iteration, trials, trial, **info):
            index = trial.config["trial"]["index"]
            error_file = getattr(trial, "error_file", None)
            message = "the trial's process failed"
            if error_file and os.path.exists(error_file):
                with open(error_file) as f:
                    message = f.read()[-2000:]
            entry = {"trial_id": todo[index].trial_id, "index": index, "status": "failed",
                     **todo[index].to_dict(), "outputs": {}, "error": message,
                     "attempts": trial.num_failures, "seconds": 0.0}
            store.record(out, entry)
            progress.finished(entry)

    return Record()


def run(study, todo, out: str, *, workers: int, address: str | None, retries: int,
        progress: runner.Progress) -> None:
    import ray
    from ray import tune

    started = not ray.is_initialized()
    if started:
        cpus = None if address else int(workers * study.resources.get("cpu", 1))
        # workers import what this process imports (a study declared in the user's module)
        path = os.pathsep.join(p for p in sys.path if p)
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's console tables off
        ray.init(address=address, num_cpus=cpus, include_dashboard=False, log_to_driver=False,
                 configure_logging=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    resources = {k: v for k, v in study.resources.items() if v}
    with tempfile.TemporaryDirectory(prefix="pacgen-tune-") as storage:
        tuner = tune.Tuner(
            tune.with_resources(_trainable, resources),
            param_space={"study": study.name, "module": REGISTRY[study.name].__module__,
                         "options": study.options, "retries": retries,
                         "trial": tune.grid_search([{"index": i, **t.to_dict()} for i, t in todo])},
            tune_config=tune.TuneConfig(max_concurrent_trials=workers, reuse_actors=True),
            run_config=tune.RunConfig(
                name=study.name, storage_path=storage, verbose=0,
                failure_config=tune.FailureConfig(max_failures=retries),
                callbacks=[_callback(out, progress, dict(todo))]),
        )
        try:
            tuner.fit()
        finally:
            if started:
                ray.shutdown()
