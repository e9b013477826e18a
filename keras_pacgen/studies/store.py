"""A study's results store: a folder with the study's manifest and one JSON file per recorded
trial, ``trials/<trial_id>.json``.

A record is written once its trial has finished (or failed for good), to a temporary file that is
then renamed over its final name: a reader sees a whole record or none, a process killed while
writing leaves no half record, and a trial is recorded once, under its id, whatever happens.
"""

from __future__ import annotations

import json
import os
import tempfile

MANIFEST = "study.json"


class StudyError(ValueError):
    """A study cannot run as asked (a folder of another study, Ray missing, ...)."""


def _trials_folder(out: str) -> str:
    return os.path.join(out, "trials")


def write_atomically(path: str, obj) -> None:
    """`obj` as JSON at `path`, all of it or nothing (temporary file, fsync, rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as f:
            json.dump(obj, f, indent=1, default=plain)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def plain(value):
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def open_store(out: str, name: str, options: dict, *, resume: bool) -> None:
    """Prepare `out` for study `name`: a new folder gets the manifest; a folder that has one
    is continued with `resume` when it holds the same study, refused otherwise."""
    path = os.path.join(out, MANIFEST)
    manifest = {"study": name, "options": options}
    if os.path.exists(path):
        with open(path) as f:
            found = json.load(f)
        if found != json.loads(json.dumps(manifest)):
            raise StudyError(f"{out} holds the results of another study ({found}); choose "
                             "another --out.")
        if not resume:
            raise StudyError(f"{out} already holds results of this study: pass --resume to run "
                             "the trials it lacks, or choose another --out.")
        return
    write_atomically(path, manifest)


def record(out: str, entry: dict) -> None:
    """Record one trial (a dict with its ``trial_id``)."""
    write_atomically(os.path.join(_trials_folder(out), f"{entry['trial_id']}.json"), entry)


def results(out: str) -> list[dict]:
    """The recorded trials of the study in `out`, in the order they were declared: dicts with
    ``trial_id``, ``status`` ("ok" or "failed"), ``hyperparameters``, ``seed``, ``outputs``
    (what the trial recorded; empty when it failed), ``error``, ``attempts`` and ``seconds``."""
    folder = _trials_folder(out)
    if not os.path.isdir(folder):
        return []
    entries = []
    for name in os.listdir(folder):
        if name.endswith(".json") and not name.startswith("."):
            with open(os.path.join(folder, name)) as f:
                entries.append(json.load(f))
    return sorted(entries, key=lambda e: (e.get("index", 0), e["trial_id"]))
