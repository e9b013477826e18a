"""The PertOPT study: does PertOPT beat tuned baselines, and does its curvature part (h, ρ, η)
matter?

On MNIST-1D (`conv_net`, 30 epochs, batch 64) and scikit-learn's digits (the PyTorch MNIST network,
40 epochs, batch 32), Adam at learning rate 1e-3 for every method, the same epochs for all:

* ``adam``: plain Adam;
* ``dropout``: Adam with dropout 0.1, 0.3, 0.5 (the paper's baseline);
* ``sam``: SAM around Adam, ρ 0.01, 0.05, 0.1;
* ``pertopt``: `PerturbedAdam` on the grid γ ∈ {0.1, 0.3, 1, 3} × η ∈ {0.01, 1e8, 1e10, 1e12}. At
  the paper's η = 0.01, σ is capped by κ on nearly every coordinate (noise of size γ|w|/log(1+epoch)
  with no curvature in it); from 1e8 up, σ < κ on more and more coordinates. The share of
  perturbed coordinates with σ = κ at the end of training is recorded for each run;
* ``pertopt_dropout``: the best PertOPT cell with the best dropout rate (declared once a
  dataset's other trials are recorded);
* ``pertopt_paper``: the paper's two settings as they are, not tuned: its CIFAR γ = 10, η = 0.01
  and its Tiny ImageNet γ = 1, η = 100 (both with ε = 1e-5, here with Adam).

Every setting is trained with each seed (default 5) on the training split minus a validation split
(20%, carved with a fixed permutation); each family's setting is chosen by mean validation
accuracy, and its test accuracy and clean gap (test − train cross-entropy) are reported as mean ±
std over the seeds. The report writes runs.csv, pertopt.json (the chosen settings, every
setting's means) and pertopt_heatmap.png (validation accuracy over (γ, η) per dataset).
"""

from __future__ import annotations

import math
import os

import keras
import numpy as np

from keras_pacgen import reporting, training
from keras_pacgen.perturbation import formulas
from keras_pacgen.studies.study import Study, Trial, register

SETTINGS = {
    "mnist1d": dict(model="conv_net", epochs=30, batch_size=64),
    "digits": dict(model="mnist_cnn", epochs=40, batch_size=32),
}
GAMMAS, ETAS = (0.1, 0.3, 1.0, 3.0), (0.01, 1e8, 1e10, 1e12)
PAPER = ({"gamma": 10.0, "eta": 0.01}, {"gamma": 1.0, "eta": 100.0})  # CIFAR, Tiny ImageNet
DROPOUTS, RHOS = (0.1, 0.3, 0.5), (0.01, 0.05, 0.1)
QUICK = dict(datasets=("digits",), epochs=1, gammas=(1.0,), etas=(1e10,), dropouts=(0.3,),
             rhos=(0.05,), paper=PAPER[:1])
KNOBS = ("gamma", "eta", "dropout", "rho", "kappa_epsilon")


def settings(gammas, etas, dropouts, rhos, paper):
    """(method, knobs) of every setting but pertopt_dropout, which needs the others' results."""
    out = [("adam", {})]
    out += [("dropout", {"dropout": d}) for d in dropouts]
    out += [("sam", {"rho": r}) for r in rhos]
    out += [("pertopt", {"gamma": g, "eta": e}) for g in gammas for e in etas]
    out += [("pertopt_paper", {**p, "kappa_epsilon": 1e-5}) for p in paper]
    return out


@register("pertopt")
def make(*, quick: bool = False, seeds: int | None = None) -> Study:
    spec = QUICK if quick else dict(datasets=tuple(SETTINGS), epochs=None, gammas=GAMMAS,
                                    etas=ETAS, dropouts=DROPOUTS, rhos=RHOS, paper=PAPER)
    seeds = seeds or (1 if quick else 5)

    def trials(recorded):
        out = []
        for dataset in spec["datasets"]:
            first = [Trial({"dataset": dataset, "method": method, **knobs}, seed)
                     for method, knobs in settings(spec["gammas"], spec["etas"], spec["dropouts"],
                                                   spec["rhos"], spec["paper"]) for seed in range(seeds)]
            out += first
            ids = {t.trial_id for t in first}
            here = [e for e in recorded if e["trial_id"] in ids and e["status"] == "ok"]
            if len(here) == len(first):  # the first stage is in: the best PertOPT with the best dropout
                best, dropout = chosen(rows_of(here), "pertopt")[0], chosen(rows_of(here), "dropout")[0]
                knobs = {"gamma": best["gamma"], "eta": best["eta"], "dropout": dropout["dropout"]}
                out += [Trial({"dataset": dataset, "method": "pertopt_dropout", **knobs}, seed)
                        for seed in range(seeds)]
        return out

    return Study("pertopt", {"quick": quick, "seeds": seeds}, trials,
                 lambda trial: run_trial(trial, spec), lambda entries, out: report(entries, out, spec))


def capped_share(optimizer, model) -> float:
    """The share of perturbed coordinates (σ > 0) whose σ is at its cap κ = γ/log(1+epoch)·|w| + ε
    (κ from the final clean weights; σ is stored at bfloat16 precision, hence the 1% margin)."""
    log_epoch = math.log1p(float(keras.ops.convert_to_numpy(keras.ops.copy(optimizer.epoch))))
    perturbed = capped = 0
    for v in model.trainable_variables:
        state = optimizer.perturbation_state(v)
        sigma = keras.ops.convert_to_numpy(state["sigma"]).astype(np.float64)
        kappa = formulas.neighbourhood_radius(state["clean_weights"], gamma=optimizer.gamma,
                                              epsilon=optimizer.kappa_epsilon,
                                              log_epoch=log_epoch)
        kappa = keras.ops.convert_to_numpy(kappa)
        on = sigma > 0
        perturbed += int(on.sum())
        capped += int((sigma[on] >= 0.99 * kappa[on]).sum())
    return capped / perturbed if perturbed else math.nan


def run_trial(trial: Trial, spec) -> dict:
    h = trial.hyperparameters
    dataset, method = h["dataset"], h["method"]
    knobs = {k: h[k] for k in KNOBS if k in h}
    base = {**SETTINGS[dataset], "epochs": spec["epochs"] or SETTINGS[dataset]["epochs"]}
    perturbed = method.startswith("pertopt")
    optimizer = "perturbed_adam" if perturbed else {"sam": "sam_adam"}.get(method, "adam")
    config = training.RunConfig(dataset=dataset, optimizer=optimizer, learning_rate=1e-3,
                                validation_split=0.2, seed=trial.seed, **base, **knobs)
    result = training.run(config)
    if not math.isfinite(result.train_loss):
        raise FloatingPointError(f"training diverged: training loss {result.train_loss}")
    return {"val_accuracy": result.val_accuracy, "test_accuracy": result.test_accuracy,
            "gap": result.gap, "train_accuracy": result.train_accuracy,
            "capped_share": capped_share(result.optimizer, result.model) if perturbed else None,
            "train_seconds": round(result.seconds, 1)}


def rows_of(entries) -> list[dict]:
    return [{"dropout": 0.0, **{k: None for k in KNOBS if k != "dropout"}, **e["hyperparameters"],
             "seed": e["seed"], **e["outputs"]} for e in entries if e["status"] == "ok"]


def _key(row):
    return (row["method"], *(row[k] for k in KNOBS))


def chosen(rows, method):
    """The runs of the setting of `method` with the best mean validation accuracy."""
    groups = {}
    for r in rows:
        if r["method"] == method:
            groups.setdefault(_key(r), []).append(r)
    return max(groups.values(), key=lambda runs: np.mean([r["val_accuracy"] for r in runs]))


def describe(runs) -> dict:
    r = runs[0]
    out = {"method": r["method"], "setting": {k: r[k] for k in KNOBS if r[k] not in (None, 0.0)},
           "seeds": len(runs)}
    for key in ("val_accuracy", "test_accuracy", "gap", "train_accuracy"):
        out[key], out[f"{key}_std"] = reporting.mean_std(r[key] for r in runs)
    if r["capped_share"] is not None:
        out["capped_share"] = float(np.mean([r["capped_share"] for r in runs]))
    return out


def report(entries, out, spec) -> dict:
    rows = rows_of(entries)
    summary = {"settings": SETTINGS, "seeds": len({r["seed"] for r in rows}),
               "grid": {"gamma": spec["gammas"], "eta": spec["etas"]}, "datasets": {},
               "failed": [e["trial_id"] for e in entries if e["status"] == "failed"]}
    for dataset in spec["datasets"]:
        here = [r for r in rows if r["dataset"] == dataset]
        cells = {}
        for r in here:
            cells.setdefault(_key(r), []).append(r)
        methods = [m for m in ("adam", "dropout", "sam", "pertopt", "pertopt_dropout")
                   if any(r["method"] == m for r in here)]
        summary["datasets"][dataset] = {
            "chosen": [describe(chosen(here, m)) for m in methods],
            "every_setting": [describe(runs) for runs in cells.values()],
        }
    reporting.write_csv(os.path.join(out, "runs.csv"), rows)
    reporting.write_json(os.path.join(out, "pertopt.json"), summary)
    heatmap(summary, spec, os.path.join(out, "pertopt_heatmap.png"))
    print("\n| dataset | method | setting | val accuracy | test accuracy | gap (test − train loss) |")
    print("|---|---|---|---|---|---|")
    for dataset, entry in summary["datasets"].items():
        for c in entry["chosen"]:
            setting = ", ".join(f"{k} {v:g}" for k, v in c["setting"].items()) or "-"
            print(f"| {dataset} | {c['method']} | {setting} | {c['val_accuracy']:.4f} | "
                  f"{c['test_accuracy']:.4f} ± {c['test_accuracy_std']:.4f} | "
                  f"{c['gap']:.4f} ± {c['gap_std']:.4f} |")
    return summary


def heatmap(summary, spec, path):
    """Mean validation accuracy (and the share of capped σ) over (γ, η), a panel per dataset."""
    names = list(summary["datasets"])
    fig = reporting.figure(5.5 * len(names), 4.5)
    axes = fig.subplots(1, len(names), squeeze=False)
    for ax, dataset in zip(axes[0], names):
        cells = {(s["setting"].get("gamma"), s["setting"].get("eta")): s
                 for s in summary["datasets"][dataset]["every_setting"] if s["method"] == "pertopt"}
        grid = np.array([[cells[g, e]["val_accuracy"] for e in spec["etas"]] for g in spec["gammas"]])
        adam = summary["datasets"][dataset]["chosen"][0]["val_accuracy"]
        low = max(grid.min(), adam - 0.02)  # a cell that does not train would wash out the rest
        image = ax.imshow(np.maximum(grid, low), cmap="viridis", aspect="auto", vmin=low)
        for i, g in enumerate(spec["gammas"]):
            for j, e in enumerate(spec["etas"]):
                bright = grid[i, j] > (low + grid.max()) / 2
                ax.text(j, i, f"{grid[i, j]:.3f}\ncapped {cells[g, e]['capped_share']:.2f}",
                        ha="center", va="center", fontsize=7, color="black" if bright else "white")
        ax.set_xticks(range(len(spec["etas"])), [f"{e:g}" for e in spec["etas"]])
        ax.set_yticks(range(len(spec["gammas"])), [f"{g:g}" for g in spec["gammas"]])
        ax.set_xlabel("η")
        ax.set_ylabel("γ")
        ax.set_title(f"{dataset}: PertOPT validation accuracy (Adam {adam:.3f}; colours clipped "
                     f"at {low:.3f})", fontsize=9)
        fig.colorbar(image, ax=ax)
    reporting.save_figure(fig, path)
