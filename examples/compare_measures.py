"""Kendall's τ between generalization measures and the final generalization gap (Jiang et al. 2020).

    python examples/compare_measures.py [--seeds 3] [--epochs 15] [--out results/measures]

Runs (or reuses, with --reuse) four SGD sweeps of the MNIST-style network on MNIST-1D: batch size,
learning rate, width and label noise, each over --seeds seeds; every final model is scored with
ψ (the paper's squared-gradient estimator and Hutchinson), Keskar et al.'s ε-sharpness, the
Hessian trace, the (empirical) Fisher trace, magnitude-aware PAC-Bayes flatness and the ℓ2 norm
(examples/measures.py). Reports τ over all runs, and per varied hyperparameter: τ within each
group of runs that differ only in that hyperparameter (same seed), averaged over groups, and the
mean of those (Jiang et al.'s granulated Ψ). Writes `kendall.csv`, `kendall.json`, `kendall.md`.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
from experiment import write_json, write_rows  # noqa: E402
from measures import MEASURES  # noqa: E402
from scipy.stats import kendalltau  # noqa: E402

SWEEPS = {
    "batch_size": "32,256,2048",
    "learning_rate": "0.3,0.1,0.03",
    "width": "8,32,128",
    "label_noise": "0.0,0.1,0.3",
}


def read_runs(path):
    with open(path) as f:
        return [{k: (float(v) if k not in ("vary",) else v) for k, v in r.items()} for r in csv.DictReader(f)]


def tau(a, b):
    t = kendalltau(a, b).statistic
    return float(t) if np.isfinite(t) else 0.0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--out", default="results/measures")
    parser.add_argument("--reuse", action="store_true", help="reuse sweep results already in --out")
    args = parser.parse_args(argv)
    import sweep

    runs = []
    for vary, values in SWEEPS.items():
        folder = os.path.join(args.out, f"sweep_{vary}")
        if not (args.reuse and os.path.exists(os.path.join(folder, "runs.csv"))):
            sweep.main(["--vary", vary, "--values", values, "--seeds", str(args.seeds),
                        "--epochs", str(args.epochs), "--out", folder])
        runs += read_runs(os.path.join(folder, "runs.csv"))
    gaps = [r["final_gap"] for r in runs]
    table = []
    for m in MEASURES:
        row = {"measure": m, "overall": tau([r[m] for r in runs], gaps)}
        per = []
        for vary in SWEEPS:
            groups = []
            for seed in sorted({r["seed"] for r in runs if r["vary"] == vary}):
                sel = [r for r in runs if r["vary"] == vary and r["seed"] == seed]
                groups.append(tau([r[m] for r in sel], [r["final_gap"] for r in sel]))
            row[vary] = float(np.mean(groups))
            per.append(row[vary])
        row["granulated_mean"] = float(np.mean(per))
        table.append(row)
    write_rows(os.path.join(args.out, "kendall.csv"), table)
    write_json(os.path.join(args.out, "kendall.json"), {"seeds": args.seeds, "epochs": args.epochs,
                                                        "runs": len(runs), "table": table})
    header = "| measure | overall τ | " + " | ".join(SWEEPS) + " | granulated mean |"
    lines = [header, "|" + "---|" * (len(SWEEPS) + 3)]
    for row in table:
        lines.append(f"| {row['measure']} | {row['overall']:+.3f} | "
                     + " | ".join(f"{row[v]:+.3f}" for v in SWEEPS) + f" | {row['granulated_mean']:+.3f} |")
    text = "\n".join(lines)
    with open(os.path.join(args.out, "kendall.md"), "w") as f:
        f.write(text + "\n")
    print(text)
    return table


if __name__ == "__main__":
    main()
