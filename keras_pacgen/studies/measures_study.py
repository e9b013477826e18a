"""The measures study: which generalization measure ranks the generalization gap, and where does ψ
stand? Jiang et al.'s protocol ("Fantastic Generalization Measures and Where to Find Them",
2020) on MNIST-1D and scikit-learn's digits.

* Networks: `keras_pacgen.models.conv_net` on the first 1000 training samples of each dataset
  (the test split untouched), SGD with momentum 0.9 (the registry's "sgd").
* Six hyperparameters, three values each (`HYPERPARAMETERS`), varied one at a time around two
  centres (`CENTRES`): 13 networks a centre, for each seed (default 3).
* Every network trains until its clean training cross-entropy is <= 0.01, checked after every
  epoch, at most `MAX_STEPS` steps; one that reaches the cap is recorded as not converged, gets
  no measures and is left out of the rank statistics.
* Then every measure of `keras_pacgen.measures.MEASURES` (`compute_all`, with the initial
  weights; ``quick``: nine of them) and ψ at two more (γ, ε) and per parameter, on the 1000
  training samples; the gaps:
  test − training 0-1 error (Jiang et al.'s and PGDL's) and test − training cross-entropy.
* Report: per dataset and measure, against each gap, Kendall's τ over all converged networks,
  the granulated Ψ and the conditional mutual information (CMI, the minimum over conditioning
  sets of up to two hyperparameters, with the seed as a further one); mean ± std of the gaps
  along the centre-0 batch-size and learning-rate sweeps; plots.
"""

from __future__ import annotations

import math
import os
import time

from keras_pacgen import callbacks, datasets, measures, reporting, training
from keras_pacgen.studies.study import Study, Trial, register

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
CURVE_STEPS = 50  # the gap and ψ about every this many steps on the centre-0 sweeps
QUICK = dict(datasets=("digits",), train_size=200, max_steps=200,
             hyperparameters={"batch_size": (32, 128)}, centres=CENTRES[:1],
             measures=("pacgen", "pacbayes_mag_flatness", "keskar_sharpness", "top_hessian_eigenvalue",
                       "gradient_noise", "inverse_margin", "fro_dist", "param_norm", "path_norm"))
PSI_VARIANTS = ("psi_gamma1_eps1", "psi_gamma10_eps10", "psi_per_parameter")
GAPS = ("error_gap", "loss_gap")


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


@register("measures")
def make(*, quick: bool = False, seeds: int | None = None) -> Study:
    spec = QUICK if quick else dict(datasets=DATASETS, train_size=TRAIN_SIZE, max_steps=MAX_STEPS,
                                    hyperparameters=HYPERPARAMETERS, centres=CENTRES,
                                    measures=tuple(measures.MEASURES))
    seeds = seeds or (1 if quick else 3)

    def trials(recorded):
        return [Trial({"dataset": d, "centre": c, "arm": arm, **hyper}, seed)
                for d in spec["datasets"] for c, arm, hyper in
                networks(spec["hyperparameters"], spec["centres"]) for seed in range(seeds)]

    return Study("measures", {"quick": quick, "seeds": seeds}, trials,
                 lambda trial: run_trial(trial, spec), lambda entries, out: report(entries, out, spec))


def run_trial(trial: Trial, spec) -> dict:
    h = dict(trial.hyperparameters)
    dataset, centre, arm = h.pop("dataset"), h.pop("centre"), h.pop("arm")
    config = training.RunConfig(dataset=dataset, model="conv_net", optimizer="sgd", epochs=100_000,
                                target_loss=TARGET_LOSS, max_steps=spec["max_steps"],
                                train_size=spec["train_size"], seed=trial.seed, **h)
    (x, y), _, (x_test, y_test) = datasets.split(datasets.load(dataset).arrays,
                                                 train_size=spec["train_size"])
    curve = None
    if centre == 0 and arm in ("centre", "batch_size", "learning_rate"):
        every = max(1, round(CURVE_STEPS * h["batch_size"] / len(x)))
        curve = callbacks.PacGenCallback((x, y), (x_test, y_test), every=every, train_batches=4,
                                         batch_size=256, psi_estimator="squared_gradients")
    result = training.run(config, callbacks=[curve] if curve else [])
    if not math.isfinite(result.train_loss):
        raise FloatingPointError(f"training diverged: training loss {result.train_loss}")
    out = {"steps": result.steps, "converged": result.converged, "train_loss": result.train_loss,
           "test_loss": result.test_loss, "loss_gap": result.gap,
           "train_error": 1 - result.train_accuracy, "test_error": 1 - result.test_accuracy,
           "error_gap": result.train_accuracy - result.test_accuracy,
           "parameters": result.model.count_params(), "train_seconds": round(result.seconds, 2)}
    steps_per_epoch = math.ceil(len(x) / h["batch_size"])
    out["curve"] = [{"step": r["epoch"] * steps_per_epoch, "gap": r["gen_gap"], "psi": r["pacgen"]}
                    for r in (curve.rows if curve else [])]
    if result.converged:
        out.update(measure_all(result.model, (x, y), result.initial_weights, trial.seed,
                               spec["measures"]))
    return out


def measure_all(model, data, initial_weights, seed, names) -> dict:
    """The measures `names` and the ψ variants, with the seconds they took."""
    start = time.time()
    values = measures.compute_all(model, data, measures=names, initial_weights=initial_weights,
                                  seed=seed)
    values["psi_gamma1_eps1"] = measures.pacgen(model, data, gamma=1.0, epsilon=1.0, seed=seed)
    values["psi_gamma10_eps10"] = measures.pacgen(model, data, gamma=10.0, epsilon=10.0, seed=seed)
    values["psi_per_parameter"] = values["pacgen"] / model.count_params()
    values["measure_seconds"] = round(time.time() - start, 2)
    return values


def rows_of(entries) -> list[dict]:
    """One flat row per recorded network: hyperparameters, seed and outputs (without curves)."""
    return [{**e["hyperparameters"], "seed": e["seed"], "status": e["status"],
             **{k: v for k, v in e["outputs"].items() if k != "curve"}} for e in entries]


def rank(rows, hyperparameters, names) -> dict:
    """For each measure and gap: τ over the converged networks, Ψ, τ per hyperparameter and CMI
    (networks where the measure is not finite left out, and counted)."""
    converged = [r for r in rows if r.get("converged")]
    out = {"networks": len(rows), "converged": len(converged), "measures": {}}
    conditioning = [*hyperparameters, "seed"]
    for name in (*names, *PSI_VARIANTS):
        kept = [r for r in converged if math.isfinite(r[name])]
        if len(kept) < 2:
            continue
        out["measures"][name] = {"non_finite": len(converged) - len(kept), **{gap: {
            "tau": measures.kendall_tau([r[name] for r in kept], [r[gap] for r in kept]),
            "psi": measures.granulated_kendall(kept, name, list(hyperparameters), gap=gap),
            "per_hyperparameter": measures.per_hyperparameter_kendall(
                kept, name, list(hyperparameters), gap=gap),
            "cmi": measures.conditional_mutual_information(kept, name, conditioning, gap=gap),
        } for gap in GAPS}}
    return out


def sweeps(rows, spec) -> dict:
    """Mean ± std over seeds of the gaps along the centre-0 sweeps of batch size and learning rate."""
    centre, out = spec["centres"][0], {}
    for sweep in ("batch_size", "learning_rate"):
        if sweep not in spec["hyperparameters"]:
            continue
        for value in spec["hyperparameters"][sweep]:
            hyper = {**centre, sweep: value}
            runs = [r for r in rows if r.get("converged") and all(r[k] == v for k, v in hyper.items())]
            for d in spec["datasets"]:
                here = [r for r in runs if r["dataset"] == d]
                out.setdefault(d, {})[f"{sweep}={value}"] = {
                    gap: reporting.mean_std(r[gap] for r in here) for gap in GAPS}
    return out


def report(entries, out, spec) -> dict:
    from keras_pacgen.studies import measures_plots

    rows = rows_of(entries)
    ranking = {d: rank([r for r in rows if r["dataset"] == d], spec["hyperparameters"],
                       spec["measures"]) for d in spec["datasets"]}
    summary = {"ranking": ranking, "sweeps": sweeps(rows, spec),
               "failed": [e["trial_id"] for e in entries if e["status"] == "failed"],
               "protocol": {"seeds": len({r["seed"] for r in rows}), "train_size": spec["train_size"],
                            "target_loss": TARGET_LOSS, "max_steps": spec["max_steps"],
                            "hyperparameters": spec["hyperparameters"], "centres": spec["centres"]}}
    reporting.write_csv(os.path.join(out, "runs.csv"), rows)
    reporting.write_json(os.path.join(out, "ranking.json"), summary)
    measures_plots.measures_vs_gap(rows, ranking, os.path.join(out, "measures_vs_gap.png"))
    curves = [{**e["hyperparameters"], "seed": e["seed"], **p} for e in entries
              for p in e["outputs"].get("curve", [])]
    if curves:
        measures_plots.sweep_curves(curves, spec, os.path.join(out, "sweep_curves.png"))
    print_table(ranking)
    return summary


def print_table(ranking) -> None:
    for d, entry in ranking.items():
        print(f"\n{d}: {entry['converged']} of {entry['networks']} networks converged")
        print("| measure | τ | Ψ | CMI | τ (cross-entropy gap) |")
        print("|---|---|---|---|---|")
        order = sorted(entry["measures"].items(), key=lambda kv: -_finite(kv[1]["error_gap"]["cmi"]))
        for name, m in order:
            e, c = m["error_gap"], m["loss_gap"]
            print(f"| {name} | {e['tau']:+.2f} | {e['psi']:+.2f} | {e['cmi']:.3f} | {c['tau']:+.2f} |")


def _finite(x) -> float:
    return x if isinstance(x, (int, float)) and math.isfinite(x) else -math.inf

