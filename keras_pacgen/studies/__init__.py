"""Studies of many networks: declared sets of trials, run by one runner, serially in this process
or on Ray (a local one, or a cluster), resumable, every finished trial recorded at once.

    from keras_pacgen import studies
    studies.run("measures", "results/measures", quick=True)            # or: pacgen study measures
    studies.run("pertopt", "results/pertopt", workers=2)               # on a local Ray
    rows = studies.results("results/measures")                         # the recorded trials

`make` builds a registered study ("measures", "pertopt"); `register` adds one of your own (a
function returning a `Study`).
"""

from __future__ import annotations

from keras_pacgen.studies import measures_study, pertopt_study
from keras_pacgen.studies.runner import ENGINES, execute
from keras_pacgen.studies.runner import run as run_study
from keras_pacgen.studies.store import results
from keras_pacgen.studies.study import REGISTRY, Study, Trial, make, register

DEFAULT_OUT = {"measures": "results/measures", "pertopt": "results/pertopt"}


def run(study: str | Study, out: str | None = None, *, quick: bool = False, seeds: int | None = None,
        **kwargs) -> dict:
    """Run the study (a name of `REGISTRY`, made with `quick` and `seeds`, or a `Study`) into the
    results folder `out` (default: ``DEFAULT_OUT``), then its report. Keyword arguments: those
    of `keras_pacgen.studies.runner.run` (workers, address, engine, resume, retries, verbose)."""
    if isinstance(study, str):
        study = make(study, quick=quick, seeds=seeds)
    if out is None:
        if study.name not in DEFAULT_OUT:
            raise ValueError(f"`out` is needed for the study {study.name!r}.")
        out = DEFAULT_OUT[study.name]
    return run_study(study, out, **kwargs)


__all__ = ["DEFAULT_OUT", "ENGINES", "REGISTRY", "Study", "Trial", "execute", "make",
           "measures_study", "pertopt_study", "register", "results", "run"]
