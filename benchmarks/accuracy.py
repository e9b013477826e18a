"""PertOPT against the same optimizer without perturbation, dropout (the paper's baseline) and SAM.

    python benchmarks/accuracy.py [--datasets mnist1d,digits] [--seeds 5] [--out benchmarks/results]

Every method trains the same network (MNIST-1D: the MNIST-style Conv1D network; digits: the
PyTorch MNIST network) with Adam, the same learning rate, batch size and epochs, for each seed;
reported are mean ± std over seeds of test accuracy, clean train accuracy and the clean
generalization gap (test loss − train loss). PertOPT uses the perturbation settings given by
--eta / --gamma (defaults: Algorithm 1's γ = 0.1, η = 0.01), and once more with the paper's CIFAR
γ = 10 (`perturbed_adam_gamma10`). SAM (ρ = 0.05) is
`benchmarks/sam.py`, a reference baseline with two forward/backward passes per step.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples"))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiment import arrays, run, write_json, write_rows  # noqa: E402

SETTINGS = {"mnist1d": dict(epochs=30, batch_size=64, learning_rate=1e-3),
            "digits": dict(epochs=40, batch_size=32, learning_rate=1e-3)}
METHODS = {
    "adam": dict(optimizer="adam"),
    "perturbed_adam": dict(optimizer="perturbed_adam"),
    "perturbed_adam_gamma10": dict(optimizer="perturbed_adam", gamma=10.0),  # the paper's CIFAR γ
    "dropout_0.1": dict(optimizer="adam", dropout=0.1),
    "dropout_0.3": dict(optimizer="adam", dropout=0.3),
    "dropout_0.5": dict(optimizer="adam", dropout=0.5),
    "sam_adam": dict(optimizer="sam_adam"),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="mnist1d,digits")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--eta", type=float, default=0.01)
    parser.add_argument("--gamma", type=float, default=0.1)
    parser.add_argument("--epochs", type=int, default=0, help="override the per-dataset epochs")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    rows, table = [], []
    for dataset in args.datasets.split(","):
        settings = dict(SETTINGS[dataset])
        if args.epochs:
            settings["epochs"] = args.epochs
        for method in args.methods.split(","):
            for seed in range(args.seeds):
                kwargs = {"eta": args.eta, "gamma": args.gamma, **settings, **METHODS[method]}
                result = run(dataset=dataset, model="mnist_cnn", seed=seed, psi_every=10_000,
                             data=arrays(dataset, 0.0, seed), **kwargs)
                rows.append({"dataset": dataset, "method": method, "seed": seed,
                             "test_accuracy": result["test_accuracy"], "train_accuracy": result["train_accuracy"],
                             "gap": result["final_gap"], "seconds": round(result["seconds"], 1)})
                print(f"{dataset:8s} {method:15s} seed {seed}: test {result['test_accuracy']:.4f} train "
                      f"{result['train_accuracy']:.4f} gap {result['final_gap']:.4f} ({result['seconds']:.0f} s)", flush=True)
            sel = [r for r in rows if r["dataset"] == dataset and r["method"] == method]

            def ms(key, sel=sel):
                values = [r[key] for r in sel]
                return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)

            table.append({"dataset": dataset, "method": method, "seeds": len(sel),
                          **{f"{k}_mean": ms(k)[0] for k in ("test_accuracy", "train_accuracy", "gap")},
                          **{f"{k}_std": ms(k)[1] for k in ("test_accuracy", "train_accuracy", "gap")}})
    write_rows(os.path.join(args.out, "accuracy_runs.csv"), rows)
    write_rows(os.path.join(args.out, "accuracy.csv"), table)
    write_json(os.path.join(args.out, "accuracy.json"), {"settings": SETTINGS, "eta": args.eta, "gamma": args.gamma,
                                                         "table": table})
    print("\n| dataset | method | test accuracy | clean train accuracy | gap (test − train loss) |")
    print("|---|---|---|---|---|")
    for t in table:
        print(f"| {t['dataset']} | {t['method']} | {t['test_accuracy_mean']:.4f} ± {t['test_accuracy_std']:.4f} | "
              f"{t['train_accuracy_mean']:.4f} ± {t['train_accuracy_std']:.4f} | {t['gap_mean']:.4f} ± {t['gap_std']:.4f} |")
    return table


if __name__ == "__main__":
    main()
