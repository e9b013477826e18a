"""Train the MNIST-style network with SGD over one varied hyperparameter and several seeds.

    python examples/sweep.py --vary batch_size --values 32,128,512,2048 --seeds 3 --out results/batch_size

Writes, in --out: `curves.csv` (per run and epoch: clean gap and ψ), `runs.csv` (per run: final
gap, ψ, accuracies and the generalization measures of examples/measures.py), `curves.png`
(mean ± std over seeds of gap and ψ against epochs per setting) and `summary.json`.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiment import arrays, plot_curves, run, write_json, write_rows  # noqa: E402
from measures import all_measures  # noqa: E402

DEFAULTS = {"batch_size": 256, "learning_rate": 0.1, "width": None, "label_noise": 0.0}
CAST = {"batch_size": int, "learning_rate": float, "width": int, "label_noise": float}


def main(argv=None, *, vary="batch_size", values="32,128,512,2048", title=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vary", default=vary, choices=list(DEFAULTS))
    parser.add_argument("--values", default=values)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--dataset", default="mnist1d", choices=("mnist1d", "digits", "mnist"))
    parser.add_argument("--model", default="mnist_cnn", choices=("mnist_cnn", "mlp"))
    parser.add_argument("--no-measures", action="store_true", help="skip the comparison measures")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    out = args.out or os.path.join("results", f"sweep_{args.vary}")
    values = [CAST[args.vary](v) for v in args.values.split(",")]
    curves, runs, points = {}, [], []
    for value in values:
        label = f"{args.vary}={value}"
        curves[label] = []
        for seed in range(args.seeds):
            settings = {**DEFAULTS, args.vary: value}
            if args.vary == "width" and args.model == "mnist_cnn":
                settings["model"] = "mnist_cnn"
            data = arrays(args.dataset, settings["label_noise"], seed)
            result = run(dataset=args.dataset, model=args.model, optimizer="sgd",
                         learning_rate=settings["learning_rate"], batch_size=settings["batch_size"],
                         width=settings["width"], label_noise=settings["label_noise"],
                         epochs=args.epochs, seed=seed, data=data)
            curves[label].append(result["rows"])
            for row in result["rows"]:
                points.append({"setting": label, "seed": seed, **row})
            record = {"vary": args.vary, "value": value, "seed": seed, "final_gap": result["final_gap"],
                      "final_psi_callback": result["final_psi"], "train_accuracy": result["train_accuracy"],
                      "test_accuracy": result["test_accuracy"], "seconds": round(result["seconds"], 1)}
            if not args.no_measures:
                x, y = data[0][:2048], data[1][:2048]
                record.update(all_measures(result["model"], x, y, seed=seed))
            runs.append(record)
            print(f"{label:22s} seed {seed}: gap {record['final_gap']:.4f} psi {record['final_psi_callback']:.1f} "
                  f"test acc {record['test_accuracy']:.4f} ({record['seconds']} s)", flush=True)
    write_rows(os.path.join(out, "curves.csv"), points)
    write_rows(os.path.join(out, "runs.csv"), runs)
    plot_curves(curves, os.path.join(out, "curves.png"),
                title or f"{args.dataset}, SGD: gap and ψ for {args.vary} ({args.seeds} seeds)")
    summary = {}
    for value in values:
        sel = [r for r in runs if r["value"] == value]
        summary[str(value)] = {k: (float(sum(r[k] for r in sel) / len(sel))) for k in ("final_gap", "final_psi_callback", "test_accuracy")}
    write_json(os.path.join(out, "summary.json"), {"vary": args.vary, "seeds": args.seeds, "epochs": args.epochs,
                                                   "dataset": args.dataset, "means": summary})
    print(f"wrote {out}/curves.csv, runs.csv, curves.png, summary.json")
    return runs


if __name__ == "__main__":
    main()
