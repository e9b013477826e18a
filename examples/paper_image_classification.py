"""The paper's CIFAR-10, CIFAR-100 and Tiny ImageNet runs (§ 9, Fig. 6): PertOPT against dropout.

One command per dataset, for a GPU machine with the data (TFDS downloads CIFAR; Tiny ImageNet from
the official archive or ~/tensorflow_datasets/downloads/manual/, see keras_pacgen.tiny_imagenet):

    python examples/paper_image_classification.py --dataset cifar10  --out results/cifar10
    python examples/paper_image_classification.py --dataset cifar100 --out results/cifar100
    python examples/paper_image_classification.py --dataset tiny_imagenet --out results/tiny_imagenet

Each trains WRN-58-3 (dropout off) with the paper's perturbed optimizer and the same network with
the plain optimizer at each dropout rate of the paper (CIFAR: 0.0, 0.1, 0.3, 0.5 with Adam lr 1e-4,
batch 128, η = 0.01, γ = 10, ε = 1e-5; Tiny ImageNet: 0.0, 0.1, 0.3 with SGD lr 1e-2, batch 200,
η = 100, γ = 1, ε = 1e-5; the validation set is the test set), logs per-epoch train/validation
accuracy, the clean gap and ψ (PacGenCallback) to CSV, and plots the accuracy curves like Fig. 6.
The paper gives no epoch count; --epochs defaults to 100. --steps limits every epoch (for smoke
tests); --methods picks a subset.
"""

from __future__ import annotations

import argparse
import dataclasses
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras_pacgen as kp  # noqa: E402
from keras_pacgen import datasets, reporting, training  # noqa: E402

PAPER = {
    "cifar10": dict(opt="adam", lr=1e-4, batch=128, eta=0.01, gamma=10.0, dropouts=(0.0, 0.1, 0.3, 0.5)),
    "cifar100": dict(opt="adam", lr=1e-4, batch=128, eta=0.01, gamma=10.0, dropouts=(0.0, 0.1, 0.3, 0.5)),
    "tiny_imagenet": dict(opt="sgd", lr=1e-2, batch=200, eta=100.0, gamma=1.0, dropouts=(0.0, 0.1, 0.3)),
}


def methods(dataset) -> dict[str, tuple[float, bool]]:
    """name -> (dropout, perturbed): PertOPT without dropout, the plain optimizer at each rate."""
    p = PAPER[dataset]
    return {"perturbed": (0.0, True), **{f"dropout_{d}": (d, False) for d in p["dropouts"]}}


def config(args, dropout: float, perturbed: bool) -> training.RunConfig:
    p = PAPER[args.dataset]
    return training.RunConfig(
        dataset=args.dataset, model="wide_resnet", depth=args.depth, width=args.width,
        dropout=dropout, optimizer=("perturbed_" if perturbed else "") + p["opt"],
        learning_rate=p["lr"], momentum=0.0 if p["opt"] == "sgd" else None, batch_size=p["batch"],
        epochs=args.epochs, eta=p["eta"], gamma=p["gamma"], kappa_epsilon=1e-5, seed=args.seed,
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=list(PAPER), required=True)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--depth", type=int, default=58)
    parser.add_argument("--width", type=int, default=3)
    parser.add_argument("--methods", default=None, help="comma-separated subset of perturbed,dropout_X")
    parser.add_argument("--steps", type=int, default=None, help="steps per epoch (smoke tests)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--download", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    p = PAPER[args.dataset]
    out = args.out or os.path.join("results", args.dataset)
    data = datasets.load(args.dataset, batch_size=p["batch"], seed=args.seed, data_dir=args.data_dir,
                         download=args.download)
    if args.steps:
        data = dataclasses.replace(data, train=data.train.take(args.steps),
                                   test=data.test.take(args.steps), num_train=args.steps * p["batch"])
    chosen = methods(args.dataset)
    if args.methods:
        chosen = {k: v for k, v in chosen.items() if k in args.methods.split(",")}
    os.makedirs(out, exist_ok=True)
    rows, summary = [], {}
    for name, (dropout, perturbed) in chosen.items():
        callback = kp.PacGenCallback(data.train, data.test, train_batches=10)
        result = training.run(config(args, dropout, perturbed), data=data, callbacks=[callback],
                              validation=True, verbose=0 if args.steps else 2)
        history = result.history
        for epoch in range(result.epochs):
            rows.append({"method": name, "epoch": epoch + 1,
                         **{k: float(v[epoch]) for k, v in history.items()}})
        summary[name] = {"final_val_accuracy": float(history["val_accuracy"][-1]),
                         "best_val_accuracy": float(max(history["val_accuracy"])),
                         "final_train_accuracy": float(history["accuracy"][-1])}
        print(f"{args.dataset} {name}: {summary[name]}", flush=True)
    reporting.write_csv(os.path.join(out, "curves.csv"), rows)
    reporting.write_json(os.path.join(out, "summary.json"), {
        "dataset": args.dataset, "settings": PAPER[args.dataset], "epochs": args.epochs,
        "summary": summary})
    plot(rows, os.path.join(out, "accuracy.png"), args.dataset)
    return summary


def plot(rows, path, title):
    fig = reporting.figure(7, 4.5)
    ax = fig.subplots()
    for name in dict.fromkeys(r["method"] for r in rows):
        sel = [r for r in rows if r["method"] == name]
        line, = ax.plot([r["epoch"] for r in sel], [r["val_accuracy"] for r in sel], label=f"{name}-val")
        ax.plot([r["epoch"] for r in sel], [r["accuracy"] for r in sel], "--", color=line.get_color(),
                label=f"{name}-train")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend(fontsize=7)
    reporting.save_figure(fig, path)


if __name__ == "__main__":
    main()
