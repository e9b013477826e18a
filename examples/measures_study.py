"""Which generalization measure ranks the generalization gap best, and where does ψ stand?
Jiang et al.'s protocol ("Fantastic Generalization Measures and Where to Find Them", 2020) on
MNIST-1D and scikit-learn's digits.

    python examples/measures_study.py                        # the study: about an hour on 2 CPU cores
    python examples/measures_study.py --quick --out /tmp/q   # a smoke run, under a minute

* Networks: `keras_pacgen.models.conv_net` on the first 1000 training samples of each dataset
  (the test split untouched), SGD with momentum 0.9 (the registry's "sgd").
* Six hyperparameters, three values each (`HYPERPARAMETERS`), varied one at a time around two
  centres (`CENTRES`): 13 networks a centre, for each of --seeds seeds.
* Every network trains until its clean training cross-entropy is <= 0.01, checked after every
  epoch, at most `MAX_STEPS` steps; one that reaches the cap is recorded with converged = False and
  left out of the rank statistics.
* Then every measure of `measure_all` on the 1000 training samples, and the clean gap (test −
  training cross-entropy).
* Per dataset, for every measure: Kendall's τ with the gap over all converged networks, τ per
  hyperparameter (the mean over the groups of networks that differ in that hyperparameter only:
  one centre, one seed) and Jiang et al.'s granulated Ψ (the mean of those).

Writes, in --out: runs.csv (one row per network), kendall.json, curves.csv (clean gap and ψ
against steps for the centre-0 batch-size and learning-rate sweeps), measures_vs_gap.png and
sweep_curves.png. --resume skips the networks already in runs.csv.
"""

from __future__ import annotations

import math
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

import keras_pacgen as kp  # noqa: E402
from keras_pacgen import datasets, measures, reporting, training  # noqa: E402

DATASETS = ("mnist1d", "digits")
TRAIN_SIZE, TARGET_LOSS, MAX_STEPS = 1000, 0.01, 4000
HYPERPARAMETERS = {
    "batch_size": (32, 128, 512),
    "learning_rate": (0.005, 0.02, 0.05),
    "width": (16, 32, 64),
    "depth": (2, 3, 4),
    "dropout": (0.0, 0.2, 0.4),
    "weight_decay": (0.0, 1e-3, 5e-3),
}
CENTRES = (
    dict(batch_size=128, learning_rate=0.02, width=32, depth=3, dropout=0.0, weight_decay=0.0),
    dict(batch_size=32, learning_rate=0.05, width=64, depth=2, dropout=0.2, weight_decay=1e-3),
)
CURVE_STEPS = 50  # measure the gap and ψ about every this many steps on the curve sweeps
QUICK = dict(datasets=("digits",), train_size=200, max_steps=200,
             hyperparameters={"batch_size": (32, 128), "width": (16, 32)}, centres=CENTRES[:1])


def networks(hyperparameters, centres):
    """(centre index, arm, hyperparameter values) of every network: each centre, and each
    hyperparameter moved to each of its other values ("arm" names the one moved)."""
    out = {}
    for c, centre in enumerate(centres):
        out.setdefault(tuple(sorted(centre.items())), (c, "centre", centre))
        for name, values in hyperparameters.items():
            for value in values:
                config = {**centre, name: value}
                out.setdefault(tuple(sorted(config.items())), (c, name, config))
    return list(out.values())


def measure_all(model, data, initial_weights, quick: bool) -> dict[str, float]:
    """Every measure of keras_pacgen.measures, ψ at three (γ, ε) and per parameter."""
    fast = dict(samples=8) if quick else {}
    values = {
        "psi": measures.pacgen(model, data, verbose=0),
        "psi_hutchinson": measures.pacgen(model, data, estimator="hutchinson", verbose=0),
        "psi_gamma1_eps1": measures.pacgen(model, data, gamma=1.0, epsilon=1.0, verbose=0),
        "psi_gamma10_eps10": measures.pacgen(model, data, gamma=10.0, epsilon=10.0, verbose=0),
        "pac_bayes_bound": measures.pac_bayes_bound(model, data, verbose=0),
        "sharpness": measures.sharpness(model, data, verbose=0),
        "pacbayes_flatness": measures.pacbayes_flatness(model, data, verbose=0),
        "pacbayes_mag_flatness": measures.pacbayes_flatness(model, data, magnitude_aware=True,
                                                            verbose=0),
        "hessian_trace": measures.hessian_trace(model, data, verbose=0, **fast),
        "top_hessian_eigenvalue": measures.top_hessian_eigenvalue(model, data, verbose=0),
        "fisher_trace": measures.fisher_trace(model, data, verbose=0),
        "weight_norm": measures.weight_norm(model, data),
        "distance_from_init": measures.distance_from_init(model, data, initial_weights=initial_weights),
        "spectral_norm_product": measures.spectral_norm_product(model, data),
    }
    values["psi_per_parameter"] = values["psi"] / model.count_params()
    return values


def train_one(dataset, centre, arm, hyper, seed, train_size, max_steps, quick):
    config = training.RunConfig(
        dataset=dataset, model="conv_net", optimizer="sgd", epochs=100_000, target_loss=TARGET_LOSS,
        max_steps=max_steps, train_size=train_size, seed=seed, **hyper,
    )
    (x, y), _, (x_test, y_test) = datasets.split(datasets.load(dataset).arrays, train_size=train_size)
    curve = None
    if centre == 0 and arm in ("centre", "batch_size", "learning_rate"):
        every = max(1, round(CURVE_STEPS * hyper["batch_size"] / len(x)))
        curve = kp.PacGenCallback((x, y), (x_test, y_test), every=every, train_batches=4,
                                  batch_size=256, psi_estimator="squared_gradients")
    result = training.run(config, callbacks=[curve] if curve else [])
    row = {"dataset": dataset, "centre": centre, "arm": arm, **hyper, "seed": seed,
           "steps": result.steps, "converged": result.converged, "train_loss": result.train_loss,
           "test_loss": result.test_loss, "gap": result.gap, "test_accuracy": result.test_accuracy,
           "parameters": result.model.count_params(), "train_seconds": round(result.seconds, 1)}
    start = time.time()
    row.update(measure_all(result.model, (x, y), result.initial_weights, quick))
    row["measure_seconds"] = round(time.time() - start, 1)
    steps_per_epoch = math.ceil(len(x) / hyper["batch_size"])
    points = [{"dataset": dataset, **hyper, "seed": seed, "step": r["epoch"] * steps_per_epoch,
               "gap": r["gen_gap"], "psi": r["pacgen"]} for r in (curve.rows if curve else [])]
    return row, points


def rank(rows, hyperparameters) -> dict:
    """kendall.json's entry for one dataset."""
    converged = [r for r in rows if r["converged"]]
    names = [k for k in rows[0] if k.startswith(MEASURE_PREFIXES)]
    out = {"networks": len(rows), "converged": len(converged), "measures": {}}
    for name in names:
        values = [r[name] for r in converged]
        out["measures"][name] = {
            "overall": measures.kendall_tau(values, [r["gap"] for r in converged]),
            "granulated": measures.granulated_kendall(converged, name, list(hyperparameters)),
            "per_hyperparameter": measures.per_hyperparameter_kendall(converged, name,
                                                                      list(hyperparameters)),
        }
    return out


MEASURE_PREFIXES = ("psi", "pac_bayes", "sharpness", "pacbayes", "hessian", "top_hessian", "fisher",
                    "weight_norm", "distance", "spectral")


def main(argv=None):
    args = reporting.study_parser(__doc__, seeds=3, out="results/measures",
                                  quick="digits, 3 small networks, 1 seed").parse_args(argv)
    spec = QUICK if args.quick else dict(datasets=DATASETS, train_size=TRAIN_SIZE, max_steps=MAX_STEPS,
                                         hyperparameters=HYPERPARAMETERS, centres=CENTRES)
    seeds = range(1 if args.quick else args.seeds)
    runs_path, curves_path = os.path.join(args.out, "runs.csv"), os.path.join(args.out, "curves.csv")
    rows = reporting.read_csv(runs_path) if args.resume and os.path.exists(runs_path) else []
    points = reporting.read_csv(curves_path) if args.resume and os.path.exists(curves_path) else []
    done = {(r["dataset"], r["centre"], r["arm"], *(r[k] for k in spec["hyperparameters"]), r["seed"])
            for r in rows}
    start, kept = time.time(), len(rows)
    todo = [(d, c, arm, hyper, s) for d in spec["datasets"]
            for c, arm, hyper in networks(spec["hyperparameters"], spec["centres"]) for s in seeds]
    for k, (dataset, centre, arm, hyper, seed) in enumerate(todo):
        key = (dataset, centre, arm, *(hyper[h] for h in spec["hyperparameters"]), seed)
        if key in done:
            continue
        row, new_points = train_one(dataset, centre, arm, hyper, seed, spec["train_size"],
                                    spec["max_steps"], args.quick)
        rows.append(row)
        points += new_points
        reporting.write_csv(runs_path, rows)
        if points:
            reporting.write_csv(curves_path, points)
        print(f"[{k + 1}/{len(todo)} {(time.time() - start) / 60:.1f} min] {dataset} centre {centre} "
              f"{arm}: {hyper} seed {seed}: {row['steps']} steps, converged {row['converged']}, "
              f"gap {row['gap']:.3f}, psi {row['psi']:.0f}", flush=True)
    kendall = {d: rank([r for r in rows if r["dataset"] == d], spec["hyperparameters"])
               for d in spec["datasets"]}
    kendall["protocol"] = {"seeds": len(seeds), "train_size": spec["train_size"],
                           "target_loss": TARGET_LOSS, "max_steps": spec["max_steps"],
                           "hyperparameters": spec["hyperparameters"], "centres": spec["centres"]}
    reporting.write_json(os.path.join(args.out, "kendall.json"), kendall)
    plot_measures(rows, kendall, os.path.join(args.out, "measures_vs_gap.png"))
    if points:
        plot_curves(points, spec, os.path.join(args.out, "sweep_curves.png"))
    print_table(kendall, spec["datasets"], spec["hyperparameters"])
    print(f"\n{len(rows)} networks ({sum(r['converged'] for r in rows)} converged; "
          f"{len(rows) - kept} trained now) in {(time.time() - start) / 60:.1f} min; wrote {args.out}")
    return kendall


def print_table(kendall, dataset_names, hyperparameters):
    for d in dataset_names:
        entry = kendall[d]
        print(f"\n{d}: {entry['converged']} of {entry['networks']} networks converged")
        print("| measure | τ | Ψ | " + " | ".join(hyperparameters) + " |")
        print("|---|---|---|" + "---|" * len(hyperparameters))
        for name, m in sorted(entry["measures"].items(), key=lambda kv: -_finite(kv[1]["granulated"])):
            per = " | ".join(f"{m['per_hyperparameter'][h]:+.2f}" for h in hyperparameters)
            print(f"| {name} | {m['overall']:+.3f} | {m['granulated']:+.3f} | {per} |")


def _finite(x):
    return x if isinstance(x, (int, float)) and math.isfinite(x) else -math.inf


def plot_measures(rows, kendall, path):
    """ψ and the measure with the best Ψ against the gap, a point a network, coloured by arm."""
    from matplotlib import colormaps

    names = [d for d in DATASETS if d in kendall]
    fig = reporting.figure(11, 4.2 * len(names))
    axes = fig.subplots(len(names), 2, squeeze=False)
    arms = list(dict.fromkeys(["centre", *HYPERPARAMETERS]))
    colours = dict(zip(arms, colormaps["tab10"].colors))
    for row_axes, d in zip(axes, names):
        converged = [r for r in rows if r["dataset"] == d and r["converged"]]
        best = max(kendall[d]["measures"].items(), key=lambda kv: _finite(kv[1]["granulated"]))[0]
        for ax, name in zip(row_axes, ("psi", best)):
            for arm in arms:
                sel = [r for r in converged if r["arm"] == arm]
                if sel:
                    ax.scatter([r[name] for r in sel], [r["gap"] for r in sel], s=18,
                               color=colours[arm], label=arm)
            m = kendall[d]["measures"][name]
            ax.set_title(f"{d}: {name} (τ = {m['overall']:+.2f}, Ψ = {m['granulated']:+.2f})")
            ax.set_xlabel(name)
            ax.set_ylabel("gap (test − train cross-entropy)")
            if name != "psi" and all(r[name] > 0 for r in converged):
                ax.set_xscale("log")
        row_axes[0].legend(fontsize=7, title="varied", title_fontsize=7)
    reporting.save_figure(fig, path)


def plot_curves(points, spec, path):
    """Clean gap and ψ against steps for the centre-0 batch-size and learning-rate sweeps."""
    from matplotlib import colormaps

    centre = spec["centres"][0]
    sweeps = [h for h in ("batch_size", "learning_rate") if h in spec["hyperparameters"]]
    names = [d for d in spec["datasets"] if any(p["dataset"] == d for p in points)]
    fig = reporting.figure(5 * 2 * len(sweeps), 3.6 * len(names))
    axes = fig.subplots(len(names), 2 * len(sweeps), squeeze=False)
    for row_axes, d in zip(axes, names):
        for s, sweep in enumerate(sweeps):
            for q, quantity in enumerate(("gap", "psi")):
                ax = row_axes[2 * s + q]
                for value, colour in zip(spec["hyperparameters"][sweep], colormaps["viridis"](np.linspace(0, 0.9, 3))):
                    hyper = {**centre, sweep: value}
                    runs = {}
                    for p in points:
                        if p["dataset"] == d and all(p[h] == hyper[h] for h in hyper):
                            runs.setdefault(p["seed"], []).append(p)
                    for seed, run in runs.items():
                        ax.plot([p["step"] for p in run], [p[quantity] for p in run], color=colour,
                                lw=1, label=f"{sweep} = {value}" if seed == min(runs) else None)
                ax.set_title(f"{d}: {quantity}, {sweep} varied")
                ax.set_xlabel("step")
                ax.set_xscale("log")
                ax.legend(fontsize=7)
    reporting.save_figure(fig, path)


if __name__ == "__main__":
    main()
