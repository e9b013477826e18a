"""The study runner: every finished trial recorded at once and once, a failure recorded and the
study going on, a SIGKILLed study resumed without loss or repeat, the same rows serially and on
Ray workers. The study is `tests/study_fixtures.py`'s toy."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from keras_pacgen import studies
from keras_pacgen.studies.store import StudyError
from tests import study_fixtures  # noqa: F401  (registers the toy study)

ROOT = Path(__file__).resolve().parents[1]


def _by_id(entries):
    return {e["trial_id"]: e for e in entries}


def test_serial_study_records_each_trial_and_a_failure_and_declares_its_second_stage(tmp_path, monkeypatch):
    monkeypatch.setenv("TOY_STUDY_FLAKY", str(tmp_path / "flaked"))
    summary = studies.run(studies.make("toy"), str(tmp_path / "out"), retries=1, verbose=0)
    entries = studies.results(str(tmp_path / "out"))
    assert summary == {"ok": 6, "trials": 7}
    assert len(entries) == len(_by_id(entries)) == 7  # six, and the second stage's one
    failed = [e for e in entries if e["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["hyperparameters"] == {"a": 2} and failed[0]["seed"] == 1
    assert "RuntimeError: this trial always fails" in failed[0]["error"] and failed[0]["attempts"] == 2
    flaky = [e for e in entries if e["hyperparameters"] == {"a": 1} and e["seed"] == 0][0]
    assert flaky["status"] == "ok" and flaky["attempts"] == 2  # failed once, retried
    assert entries[-1]["hyperparameters"]["stage"] == 2
    for e in entries:
        assert set(e) >= {"trial_id", "status", "hyperparameters", "seed", "outputs", "error"}
    with pytest.raises(StudyError, match="--resume"):
        studies.run(studies.make("toy"), str(tmp_path / "out"), verbose=0)
    with pytest.raises(StudyError, match="another study"):
        studies.run(studies.make("toy", seeds=1), str(tmp_path / "out"), resume=True, verbose=0)
    before = {p.name: p.read_text() for p in (tmp_path / "out" / "trials").iterdir()}
    studies.run(studies.make("toy"), str(tmp_path / "out"), resume=True, verbose=0)  # nothing to run
    assert {p.name: p.read_text() for p in (tmp_path / "out" / "trials").iterdir()} == before


def test_a_study_killed_mid_run_resumes_without_losing_or_repeating_a_trial(tmp_path):
    out, log = tmp_path / "out", tmp_path / "ran.log"
    env = {**os.environ, "TOY_STUDY_DELAY": "1.5", "TOY_STUDY_LOG": str(log),
           "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    code = ("from keras_pacgen import studies; import tests.study_fixtures; "
            f"studies.run('toy', {str(out)!r}, verbose=0)")
    process = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=ROOT)
    trials = out / "trials"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(trials.glob("*.json")) if trials.exists() else []) < 2:
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait()
    recorded = {p.name: p.read_text() for p in trials.glob("*.json")}
    assert 2 <= len(recorded) < 7, "the study should have been killed mid-way"
    for text in recorded.values():
        json.loads(text)  # whole records only
    os.environ.update({"TOY_STUDY_LOG": str(log)})
    try:
        studies.run(studies.make("toy"), str(out), resume=True, verbose=0)
    finally:
        os.environ.pop("TOY_STUDY_LOG")
    entries = studies.results(str(out))
    assert len(entries) == len(_by_id(entries)) == 7
    for name, text in recorded.items():  # recorded before the kill: kept as they were
        assert (trials / name).read_text() == text
    ran = log.read_text().split()
    for name in recorded:  # and not run again
        assert ran.count(name.removesuffix(".json")) <= 1
    assert not [p for p in trials.iterdir() if not p.name.endswith(".json")]


def test_the_same_rows_serially_and_on_two_ray_workers(tmp_path):
    pytest.importorskip("ray")
    studies.run(studies.make("toy", seeds=1), str(tmp_path / "serial"), verbose=0)
    studies.run(studies.make("toy", seeds=1), str(tmp_path / "ray"), workers=2, verbose=0)
    serial, on_ray = (_by_id(studies.results(str(tmp_path / k))) for k in ("serial", "ray"))
    assert set(serial) == set(on_ray) and len(serial) == 4  # three, then the second stage
    for trial_id, entry in serial.items():
        other = on_ray[trial_id]
        assert (entry["status"], entry["hyperparameters"], entry["seed"]) == (
            other["status"], other["hyperparameters"], other["seed"])
        for key, value in entry["outputs"].items():
            assert other["outputs"][key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


def test_bad_runner_arguments_are_refused(tmp_path):
    study = studies.make("toy")
    with pytest.raises(StudyError, match="serial engine"):
        studies.run(study, str(tmp_path), engine="serial", workers=2, verbose=0)
    with pytest.raises(ValueError, match="workers"):
        studies.run(study, str(tmp_path), workers=0, verbose=0)
    with pytest.raises(ValueError, match="unknown study"):
        studies.make("measure")
