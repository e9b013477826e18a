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
import os
import sys
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
from experiment import write_json, write_rows  # noqa: E402

import keras_pacgen as kp  # noqa: E402
from keras_pacgen import datasets, models  # noqa: E402

PAPER = {
    "cifar10": dict(opt="adam", lr=1e-4, batch=128, eta=0.01, gamma=10.0, dropouts=(0.0, 0.1, 0.3, 0.5)),
    "cifar100": dict(opt="adam", lr=1e-4, batch=128, eta=0.01, gamma=10.0, dropouts=(0.0, 0.1, 0.3, 0.5)),
    "tiny_imagenet": dict(opt="sgd", lr=1e-2, batch=200, eta=100.0, gamma=1.0, dropouts=(0.0, 0.1, 0.3)),
}


def methods(dataset):
    p = PAPER[dataset]
    out = {"perturbed": (0.0, True)}
    out.update({f"dropout_{d}": (d, False) for d in p["dropouts"]})
    return out


def optimizer(dataset, perturbed, seed, steps_per_epoch):
    p = PAPER[dataset]
    if p["opt"] == "adam":
        if perturbed:
            return kp.PerturbedAdam(learning_rate=p["lr"], eta=p["eta"], gamma=p["gamma"], kappa_epsilon=1e-5,
                                    seed=seed, steps_per_epoch=steps_per_epoch)
        return keras.optimizers.Adam(learning_rate=p["lr"])
    if perturbed:
        return kp.PerturbedSGD(learning_rate=p["lr"], eta=p["eta"], gamma=p["gamma"], kappa_epsilon=1e-5,
                               seed=seed, steps_per_epoch=steps_per_epoch)
    return keras.optimizers.SGD(learning_rate=p["lr"])


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
    steps = args.steps or -(-data.num_train // p["batch"])
    chosen = methods(args.dataset)
    if args.methods:
        chosen = {k: v for k, v in chosen.items() if k in args.methods.split(",")}
    os.makedirs(out, exist_ok=True)
    rows, summary = [], {}
    for name, (dropout, perturbed) in chosen.items():
        keras.utils.set_random_seed(args.seed)
        model = models.wide_resnet(args.depth, args.width, dropout=dropout, num_classes=data.num_classes,
                                   input_shape=data.input_shape)
        model.compile(optimizer=optimizer(args.dataset, perturbed, args.seed, steps),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
        train = data.train.take(steps) if args.steps else data.train
        test = data.test.take(max(1, args.steps or 0)) if args.steps else data.test
        cb = kp.PacGenCallback(train, test, train_batches=min(10, steps))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            history = model.fit(train, validation_data=test, epochs=args.epochs, verbose=2 if not args.steps else 0,
                                callbacks=[cb, keras.callbacks.CSVLogger(os.path.join(out, f"{name}.csv"))])
        for epoch in range(args.epochs):
            rows.append({"method": name, "epoch": epoch + 1,
                         **{k: float(v[epoch]) for k, v in history.history.items()}})
        summary[name] = {"final_val_accuracy": float(history.history["val_accuracy"][-1]),
                         "best_val_accuracy": float(max(history.history["val_accuracy"])),
                         "final_train_accuracy": float(history.history["accuracy"][-1])}
        print(f"{args.dataset} {name}: {summary[name]}", flush=True)
    write_rows(os.path.join(out, "curves.csv"), rows)
    write_json(os.path.join(out, "summary.json"), {"dataset": args.dataset, "settings": PAPER[args.dataset],
                                                   "epochs": args.epochs, "summary": summary})
    plot(rows, os.path.join(out, "accuracy.png"), args.dataset)
    return summary


def plot(rows, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    for name in dict.fromkeys(r["method"] for r in rows):
        sel = [r for r in rows if r["method"] == name]
        line, = ax.plot([r["epoch"] for r in sel], [r["val_accuracy"] for r in sel], label=f"{name}-val")
        ax.plot([r["epoch"] for r in sel], [r["accuracy"] for r in sel], "--", color=line.get_color(),
                label=f"{name}-train")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
