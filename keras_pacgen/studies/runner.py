"""The study runner: the trials a study lacks, run in this process or on Ray, each recorded the
moment it ends; then the study's report from the recorded trials."""

from __future__ import annotations

import importlib.util
import time
import traceback
import warnings

from keras_pacgen import _validation as check
from keras_pacgen.studies import store
from keras_pacgen.studies.store import StudyError
from keras_pacgen.studies.study import Study, Trial

ENGINES = ("auto", "serial", "ray")


def pin_threads(count: int) -> None:
    """Run TensorFlow with `count` threads (within ops and between them), as every trial of a
    study does whatever the engine: a sum split over another number of threads adds in another
    order, and the trial's numbers would move in their last digits (about 1e-6)."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(count)
        tf.config.threading.set_inter_op_parallelism_threads(count)
    except RuntimeError:  # TensorFlow already started: keep it if it has the same threads
        if tf.config.threading.get_intra_op_parallelism_threads() != count:
            warnings.warn(f"TensorFlow started in this process before the study with other "
                          f"thread settings than the trials' {count}: this run's numbers may "
                          "differ in their last digits from another engine's.", stacklevel=2)


def execute(study: Study, trial: Trial, index: int, retries: int) -> dict:
    """Run one trial, trying again up to `retries` times when it raises: its record. Each
    attempt starts from a cleared Keras session, with the study's threads per trial."""
    import keras

    pin_threads(int(study.resources.get("cpu", 1)))
    start, error, outputs, attempts = time.time(), None, {}, 0
    while attempts <= retries:
        attempts += 1
        keras.backend.clear_session()
        try:
            outputs, error = study.run_trial(trial), None
            break
        except Exception as err:  # a failed trial is recorded, and the study goes on
            error = f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=-3)}"
    return {"trial_id": trial.trial_id, "index": index, "status": "failed" if error else "ok",
            **trial.to_dict(), "outputs": outputs, "error": error, "attempts": attempts,
            "seconds": round(time.time() - start, 2)}


class Progress:
    """Prints, as trials start and end, how many are done, failed and running, and an estimate
    of the time left (from this run's pace)."""

    def __init__(self, name: str, total: int, recorded: int, verbose: int = 1):
        self.name, self.total, self.verbose = name, total, verbose
        self.done, self.failed, self.running, self.now = recorded, 0, 0, 0
        self.start = time.time()

    def started(self) -> None:
        self.running += 1

    def finished(self, entry: dict) -> None:
        self.running = max(self.running - 1, 0)
        self.now += 1
        self.done += entry["status"] == "ok"
        self.failed += entry["status"] == "failed"
        if self.verbose:
            elapsed = time.time() - self.start
            left = (self.total - self.done - self.failed) * elapsed / self.now
            what = ", ".join(f"{k} {v}" for k, v in entry["hyperparameters"].items())
            status = "" if entry["status"] == "ok" else f" FAILED: {entry['error'].splitlines()[0]}"
            print(f"[{self.name}] {self.done}/{self.total} done, {self.failed} failed, "
                  f"{self.running} running; {elapsed / 60:.1f} min, ~{left / 60:.1f} min left | "
                  f"{what}, seed {entry['seed']} ({entry['seconds']:.0f} s){status}", flush=True)


def _engine(engine: str, workers: int, address: str | None) -> str:
    has_ray = importlib.util.find_spec("ray") is not None
    if engine == "auto":
        engine = "ray" if has_ray and (workers > 1 or address) else "serial"
    if engine == "ray" and not has_ray:
        raise StudyError("engine='ray' (or --workers > 1, --address) needs Ray: pip install "
                         "'keras-pacgen[ray]'.")
    if engine == "serial" and (workers > 1 or address):
        raise StudyError("The serial engine runs one trial at a time in this process: --workers "
                         "and --address need engine='ray'.")
    return engine


def run(study: Study, out: str, *, workers: int = 1, address: str | None = None,
        engine: str = "auto", resume: bool = False, retries: int = 0, verbose: int = 1) -> dict:
    """Run the trials of `study` that `out` has not recorded, then its report.

    Args:
        study: see `keras_pacgen.studies.make`.
        out: the results folder (`keras_pacgen.studies.results` reads it).
        workers: trials at a time (Ray).
        address: an existing Ray cluster to run on (``ray.init(address=...)``); None starts a
            local Ray for the study when the Ray engine runs.
        engine: ``"serial"`` (this process, one trial after the other), ``"ray"`` (Ray Tune, a
            process per trial with its CPU/GPU share), ``"auto"`` (Ray when it is installed and
            `workers` > 1 or `address` is given).
        resume: continue a folder that holds some of this study's trials.
        retries: attempts after a failure, per trial (a trial that still fails is recorded as
            failed, with its error, and the study goes on).
        verbose: 1 prints a line per trial (done, failed, running, time left).
    """
    check.check_int("workers", workers, low=1)
    check.check_int("retries", retries, low=0)
    check.check_choice("engine", engine, ENGINES)
    engine = _engine(engine, workers, address)
    store.open_store(out, study.name, study.options, resume=resume)
    while True:
        recorded = store.results(out)
        ids = {entry["trial_id"] for entry in recorded}
        declared = study.trials(recorded)
        todo = [(i, t) for i, t in enumerate(declared) if t.trial_id not in ids]
        if not todo:
            break
        if verbose:
            print(f"[{study.name}] {len(declared)} trials declared, {len(declared) - len(todo)} "
                  f"recorded, {len(todo)} to run ({engine}"
                  f"{f', {workers} workers' if engine == 'ray' else ''})", flush=True)
        progress = Progress(study.name, len(declared), len(declared) - len(todo), verbose)
        if engine == "serial":
            for index, trial in todo:
                progress.started()
                entry = execute(study, trial, index, retries)
                store.record(out, entry)
                progress.finished(entry)
        else:
            from keras_pacgen.studies import ray_engine

            ray_engine.run(study, todo, out, workers=workers, address=address, retries=retries,
                           progress=progress)
        if len(store.results(out)) == len(recorded):
            raise RuntimeError(f"No trial of {study.name} was recorded in this round; see the "
                               "messages above.")
    return study.report(store.results(out), out)
