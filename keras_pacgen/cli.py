"""The ``pacgen`` command: ``pacgen train`` (the main job) and ``pacgen score PATH``."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings

OPTIMIZERS = ("perturbed_adam", "adam", "perturbed_sgd", "sgd")
DEFAULT_LR = {"perturbed_adam": 1e-3, "adam": 1e-3, "perturbed_sgd": 0.05, "sgd": 0.05}
DEFAULT_MODEL = {
    "mnist1d": "mnist1d_cnn",
    "digits": "mnist_cnn",
    "mnist": "mnist_cnn",
    "cifar10": "wide_resnet",
    "cifar100": "wide_resnet",
    "tiny_imagenet": "wide_resnet",
}


def _number(kind, low=None, high=None, low_open=False, allow_none=False):
    def parse(text):
        if allow_none and text.lower() == "none":
            return None
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
        if low is not None and (value < low or (low_open and value == low)):
            bound = f"> {low}" if low_open else f">= {low}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text!r}")
        if high is not None and value >= high:
            raise argparse.ArgumentTypeError(f"must be < {high}, got {text!r}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    from keras_pacgen.datasets import NAMES
    from keras_pacgen.models import MODELS

    parser = argparse.ArgumentParser(
        prog="pacgen",
        description="Train with perturbed optimizers (PertOPT) and track the generalization gap "
        "and the pacGen metric ψ (Wang et al., AISTATS 2020).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a model, log gap and ψ, plot, export a SavedModel")
    train.add_argument("--dataset", choices=NAMES, default="mnist1d",
                       help="dataset (mnist1d and digits work offline; default mnist1d)")
    train.add_argument("--model", choices=("auto", *MODELS), default="auto",
                       help="network; auto picks the paper's network for the dataset")
    train.add_argument("--depth", type=_number(int, 10), default=16, help="Wide ResNet depth (6n+4)")
    train.add_argument("--width", type=_number(int, 1), default=4, help="Wide ResNet widen factor")
    train.add_argument("--optimizer", choices=OPTIMIZERS, default="perturbed_adam")
    train.add_argument("--dropout", type=_number(float, 0.0, 1.0), default=0.0)
    train.add_argument("--epochs", type=_number(int, 1), default=30)
    train.add_argument("--batch-size", type=_number(int, 1), default=64)
    train.add_argument("--learning-rate", type=_number(float, 0.0, low_open=True), default=None,
                       help="default 1e-3 for Adam, 0.05 for SGD")
    train.add_argument("--eta", type=_number(float, 0.0, low_open=True), default=0.01, help="η (> 0)")
    train.add_argument("--gamma", type=_number(float, 0.0), default=0.1, help="γ (>= 0)")
    train.add_argument("--kappa-epsilon", type=_number(float, 0.0, low_open=True), default=1e-5,
                       help="ε of κ (> 0)")
    train.add_argument("--grad-threshold", type=_number(float, 0.0), default=0.1, help="β2 (>= 0)")
    train.add_argument("--augment", choices=("auto", "on", "off"), default="auto")
    train.add_argument("--seed", type=_number(int, 0), default=0)
    train.add_argument("--every", type=_number(int, 1), default=1, help="measure gap and ψ every N epochs")
    train.add_argument("--jit", action="store_true", help="compile the train step with XLA")
    train.add_argument("--out", default=None, help="run folder (default runs/<run name>)")
    train.add_argument("--export", default=None,
                       help="SavedModel folder (default saved_models/<run name>); 'none' skips")
    train.add_argument("--data-dir", default=None, help="TFDS data directory")
    train.add_argument("--verbose", type=_number(int, 0), default=1)

    score = sub.add_parser("score", help="print ψ and its parts for a saved model")
    score.add_argument("path", help="a .keras file or an exported SavedModel folder")
    score.add_argument("--dataset", choices=NAMES, required=True)
    score.add_argument("--estimator", choices=("squared_gradients", "hutchinson"), default="squared_gradients")
    score.add_argument("--max-batches", type=_number(int, 1), default=10)
    score.add_argument("--batch-size", type=_number(int, 1), default=128)
    score.add_argument("--data-dir", default=None)
    return parser


def _optimizer(args, steps_per_epoch):
    import keras

    import keras_pacgen as kp

    lr = args.learning_rate or DEFAULT_LR[args.optimizer]
    pert = dict(eta=args.eta, gamma=args.gamma, kappa_epsilon=args.kappa_epsilon,
                grad_threshold=args.grad_threshold, seed=args.seed, steps_per_epoch=steps_per_epoch)
    return {
        "perturbed_adam": lambda: kp.PerturbedAdam(learning_rate=lr, **pert),
        "adam": lambda: keras.optimizers.Adam(learning_rate=lr),
        "perturbed_sgd": lambda: kp.PerturbedSGD(learning_rate=lr, momentum=0.9, **pert),
        "sgd": lambda: keras.optimizers.SGD(learning_rate=lr, momentum=0.9),
    }[args.optimizer]()


def train(args) -> dict:
    import keras

    import keras_pacgen as kp
    from keras_pacgen import datasets, models

    keras.utils.set_random_seed(args.seed)
    augment = None if args.augment == "auto" else args.augment == "on"
    data = datasets.load(args.dataset, batch_size=args.batch_size, augment=augment, seed=args.seed,
                         data_dir=args.data_dir)
    model_name = DEFAULT_MODEL[args.dataset] if args.model == "auto" else args.model
    extra = {"depth": args.depth, "width": args.width} if model_name == "wide_resnet" else {}
    model = models.build(model_name, input_shape=data.input_shape, num_classes=data.num_classes,
                         dropout=args.dropout, **extra)
    run = f"{args.dataset}_{model_name}_{args.optimizer}_seed{args.seed}"
    out = os.path.abspath(args.out or os.path.join("runs", run))
    os.makedirs(out, exist_ok=True)
    steps = math.ceil(data.num_train / args.batch_size)
    model.compile(
        optimizer=_optimizer(args, steps),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=bool(args.jit),
    )
    pacgen = kp.PacGenCallback(
        data.train, data.test, every=args.every, train_batches=max(1, 2048 // args.batch_size),
        csv_path=os.path.join(out, "pacgen.csv"),
        tensorboard_dir=os.path.join(out, "tensorboard", "pacgen"),
        plot_path=os.path.join(out, "gap_psi.png"),
    )
    callbacks = [
        pacgen,
        keras.callbacks.CSVLogger(os.path.join(out, "history.csv")),
        keras.callbacks.TensorBoard(os.path.join(out, "tensorboard")),
    ]
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump({**vars(args), "model": model_name, "run": run}, f, indent=2, default=str)
    print(f"pacgen train: {run}: {model.count_params():,} parameters, {data.num_train} training "
          f"samples, {args.epochs} epochs")
    start = time.time()
    model.fit(data.train, validation_data=data.test, epochs=args.epochs, callbacks=callbacks,
              verbose=args.verbose, shuffle=False)  # the pipeline shuffles, seeded
    seconds = time.time() - start
    final = pacgen.rows[-1]
    test_metrics = model.evaluate(data.test, verbose=0, return_dict=True)
    summary = {
        "run": run,
        "seconds": round(seconds, 1),
        "test_accuracy": float(test_metrics["accuracy"]),
        **{k: final[k] for k in ("clean_train_loss", "clean_test_loss", "gen_gap", "pacgen")},
        "out": out,
    }
    model_path = os.path.join(out, "model.keras")
    model.save(model_path)
    export = None
    if (args.export or "").lower() != "none":
        export = os.path.abspath(args.export or os.path.join("saved_models", run))
        model.export(export, verbose=False)
    summary["export"] = export
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(f"\nTrained in {seconds:.0f} s: test accuracy {summary['test_accuracy']:.4f}, clean gap "
          f"{summary['gen_gap']:.4f}, psi {summary['pacgen']:.2f}")
    print("Wrote:")
    for label, path in (
        ("gap and psi per epoch (CSV)", os.path.join(out, "pacgen.csv")),
        ("Keras logs per epoch (CSV)", os.path.join(out, "history.csv")),
        ("TensorBoard logs", os.path.join(out, "tensorboard")),
        ("plot of gap and psi", os.path.join(out, "gap_psi.png")),
        ("Keras model with optimizer state", model_path),
        ("summary", os.path.join(out, "summary.json")),
        ("SavedModel (clean weights)", export),
    ):
        if path:
            print(f"  {label:34s} {path}")
    return summary


def _load_for_scoring(path):
    import keras

    if os.path.isdir(path):
        if not os.path.exists(os.path.join(path, "saved_model.pb")):
            raise SystemExit(f"pacgen score: {path} is not a SavedModel folder (no saved_model.pb).")
        layer = keras.layers.TFSMLayer(path, call_endpoint="serve", trainable=True)
        return layer, None
    if not path.endswith(".keras") or not os.path.exists(path):
        raise SystemExit(f"pacgen score: {path} is neither a .keras file nor a SavedModel folder.")
    model = keras.models.load_model(path)
    return model, model.loss


def score(args) -> float:
    import keras

    import keras_pacgen as kp
    from keras_pacgen import datasets

    data = datasets.load(args.dataset, batch_size=args.batch_size, augment=False, shuffle=False,
                         data_dir=args.data_dir)
    loaded, loss = _load_for_scoring(args.path)
    if isinstance(loaded, keras.Model):
        model = loaded
    else:
        inputs = keras.Input(data.input_shape)
        model = keras.Model(inputs, loaded(inputs))
    loss = loss or keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    result = kp.pacgen_score(model, data.train, estimator=args.estimator, max_batches=args.max_batches,
                             loss=loss)
    print(result.summary())
    return result.psi


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    from keras_pacgen.datasets import DatasetUnavailableError

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*PerturbationCallback.*")
            if args.command == "train":
                train(args)
            else:
                score(args)
    except DatasetUnavailableError as err:
        print(f"pacgen: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
