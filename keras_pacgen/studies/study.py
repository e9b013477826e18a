"""A study: a declared set of trials (one network each), how one runs, and its report.

A `Study` names its trials by their hyperparameters and seed; `trials(recorded)` declares them,
given the trials already recorded (so that a later stage, e.g. "the best setting with the best
dropout rate", is declared once the first stage's results are in); `run_trial` trains and
measures one network and returns its outputs; `report` turns the recorded trials, and only
them, into tables and plots. Studies are made by name (`make`), so that a worker process can
make the same study from its name and options.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass(frozen=True)
class Trial:
    """One network of a study: its hyperparameters (everything that tells it apart) and seed."""

    hyperparameters: dict[str, Any]
    seed: int

    @property
    def trial_id(self) -> str:
        """A name that the same hyperparameters and seed always get (12 hex digits)."""
        text = json.dumps({"hyperparameters": self.hyperparameters, "seed": self.seed},
                          sort_keys=True, default=str)
        return hashlib.sha1(text.encode()).hexdigest()[:12]

    def to_dict(self) -> dict:
        return {"hyperparameters": dict(self.hyperparameters), "seed": self.seed}

    @classmethod
    def from_dict(cls, data: dict) -> Trial:
        return cls(dict(data["hyperparameters"]), int(data["seed"]))


@dataclasses.dataclass
class Study:
    """A study by name: what it runs and reports.

    Attributes:
        name: as `pacgen study NAME` knows it.
        options: what it was made with (``quick``, ``seeds``); recorded with its results, so
            that ``--resume`` never mixes two different studies in one folder.
        trials: the declared trials, given the recorded ones (dicts of `results`).
        run_trial: one trial's outputs (a dict of numbers, strings and booleans); raises when
            the trial fails.
        report: writes the study's tables and plots into a folder from the recorded trials
            alone, and returns its summary.
        resources: what one trial needs (``{"cpu": 1, "gpu": 0}``).
    """

    name: str
    options: dict[str, Any]
    trials: Callable[[list[dict]], list[Trial]]
    run_trial: Callable[[Trial], dict]
    report: Callable[[list[dict], str], dict]
    resources: dict[str, float] = dataclasses.field(default_factory=lambda: {"cpu": 1, "gpu": 0})


# name -> function(quick: bool, seeds: int | None) -> Study; filled by the study modules
REGISTRY: dict[str, Callable[..., Study]] = {}


def register(name: str):
    """Decorator: `make(name, ...)` calls the decorated function."""

    def wrap(fn):
        REGISTRY[name] = fn
        return fn

    return wrap


def make(name: str, *, quick: bool = False, seeds: int | None = None) -> Study:
    """The study `name` (a key of `REGISTRY`), quick (a smoke run) or not, with `seeds` seeds
    (None: its default)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown study {name!r}; known: {', '.join(REGISTRY)}")
    if seeds is not None and (not isinstance(seeds, int) or seeds < 1):
        raise ValueError(f"`seeds` must be an integer >= 1. Received: seeds={seeds!r}")
    return REGISTRY[name](quick=quick, seeds=seeds)
