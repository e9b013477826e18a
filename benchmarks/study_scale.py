"""How the study runner scales: the quick measures study with 1 worker (serial, in this process)
and with 2 Ray workers (a local Ray), the runner's overhead per trial, whether both give the same
rows, and what that projects for a 10,000-network study.

    python benchmarks/study_scale.py [--seeds 4] [--out benchmarks/results]

* wall time: from the start of `studies.run` to its report, each engine into its own folder;
* overhead per trial: (wall time × workers − Σ trial seconds) / trials, what a trial costs
  beyond its own training and measuring (the runner, the store, a Ray worker process starting
  and importing TensorFlow);
* the rows: every output of every trial, serial against Ray, the largest relative difference;
* the projection: ``trials × (t + overhead) / (machines × workers per machine)`` for
  t = the mean seconds of one network of the full measures study (read from its results folder,
  `--full`, when it is there; else of the quick one) and the measured overhead.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from keras_pacgen import reporting, studies  # noqa: E402


def timed_run(seeds: int, out: str, workers: int) -> tuple[float, list[dict]]:
    start = time.time()
    studies.run("measures", out, quick=True, seeds=seeds, workers=workers,
                engine="serial" if workers == 1 else "ray", verbose=0)
    return time.time() - start, studies.results(out)


def largest_difference(serial: list[dict], on_ray: list[dict]) -> float:
    """The largest relative difference of any numeric output between the two runs."""
    other = {e["trial_id"]: e for e in on_ray}
    worst = 0.0
    for entry in serial:
        for key, value in entry["outputs"].items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or key.endswith("seconds"):
                continue
            b = other[entry["trial_id"]]["outputs"][key]
            if not (math.isfinite(value) and math.isfinite(b)):
                continue
            worst = max(worst, abs(value - b) / max(abs(value), 1e-12))
    return worst


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--full", default="results/measures", help="the full study's results")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)

    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for workers in (1, 2):
            wall, entries = timed_run(args.seeds, os.path.join(tmp, f"w{workers}"), workers)
            busy = sum(e["seconds"] for e in entries)
            runs[workers] = {"wall_seconds": round(wall, 1), "trials": len(entries),
                             "trial_seconds": round(busy, 1),
                             "overhead_per_trial": round((wall * workers - busy) / len(entries), 2),
                             "entries": entries}
            print(f"{workers} worker(s): {len(entries)} trials in {wall:.1f} s (Σ trial seconds "
                  f"{busy:.1f}); overhead {runs[workers]['overhead_per_trial']:.2f} s per trial",
                  flush=True)
    difference = largest_difference(runs[1]["entries"], runs[2]["entries"])
    speedup = runs[1]["wall_seconds"] / runs[2]["wall_seconds"]
    print(f"2 workers against 1: {speedup:.2f}x; rows: largest relative difference {difference:.2e}")

    full = [e for e in studies.results(args.full) if e["status"] == "ok"]
    per_network = float(np.mean([e["seconds"] for e in full])) if full else float(
        np.mean([e["seconds"] for e in runs[1]["entries"]]))
    overhead = runs[2]["overhead_per_trial"]
    projection = {}
    for machines, workers in ((1, 2), (10, 8), (100, 8), (1000, 8)):
        hours = 10_000 * (per_network + overhead) / (machines * workers) / 3600
        projection[f"{machines} machines x {workers} workers"] = round(hours, 2)
    print(f"one network of the full study: {per_network:.1f} s ({len(full)} recorded in "
          f"{args.full}); 10,000 networks:")
    for key, hours in projection.items():
        print(f"  {key}: {hours:.1f} h")
    summary = {"seeds": args.seeds,
               "runs": {w: {k: v for k, v in r.items() if k != "entries"} for w, r in runs.items()},
               "speedup_2_workers": round(speedup, 2), "largest_relative_difference": difference,
               "per_network_seconds": round(per_network, 1), "networks_measured": len(full),
               "projection_hours_10000_networks": projection}
    path = reporting.write_json(os.path.join(args.out, "study_scale.json"), summary)
    print(f"wrote {path}")
    return summary


if __name__ == "__main__":
    main()
