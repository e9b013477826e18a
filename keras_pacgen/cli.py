"""The ``pacgen`` command: ``pacgen train`` (the main job), ``pacgen score PATH`` and
``pacgen measure PATH``."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings


class UsageError(Exception):
    """A bad argument that argparse could not catch: printed, exit status 2."""


def _number(kind, low=None, high=None, low_open=False):
    def parse(text):
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
    from keras_pacgen.measures import ESTIMATORS, MEASURES
    from keras_pacgen.models import MODELS
    from keras_pacgen.perturbation import PERTURBATION_DEFAULTS as PERTURBATION
    from keras_pacgen.training import NAMES as OPTIMIZERS
    from keras_pacgen.training import RunConfig

    run = RunConfig()  # the driver's defaults

    parser = argparse.ArgumentParser(
        prog="pacgen",
        description="Train with perturbed optimizers (PertOPT), track the generalization gap and "
        "the pacGen metric ψ (Wang et al., AISTATS 2020), and measure trained models.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a model, log gap and ψ, plot, export a SavedModel")
    train.add_argument("--dataset", choices=NAMES, default=run.dataset,
                       help="dataset (mnist1d and digits work offline; default mnist1d)")
    train.add_argument("--model", choices=("auto", *MODELS), default="auto",
                       help="network; auto picks the paper's network for the dataset")
    train.add_argument("--depth", type=_number(int, 1), default=None,
                       help="depth (Wide ResNet: 6n+4, default 16; conv_net: convolutions, default 3)")
    train.add_argument("--width", type=_number(int, 1), default=None,
                       help="width (Wide ResNet widen factor, default 4; conv_net filters, default 32)")
    train.add_argument("--optimizer", choices=OPTIMIZERS, default=run.optimizer)
    train.add_argument("--dropout", type=_number(float, 0.0, 1.0), default=run.dropout)
    train.add_argument("--epochs", type=_number(int, 1), default=run.epochs)
    train.add_argument("--batch-size", type=_number(int, 1), default=run.batch_size)
    train.add_argument("--learning-rate", type=_number(float, 0.0, low_open=True), default=None,
                       help="default 1e-3 for Adam, 0.05 for SGD (momentum 0.9)")
    train.add_argument("--weight-decay", type=_number(float, 0.0), default=None)
    train.add_argument("--eta", type=_number(float, 0.0, low_open=True),
                       default=PERTURBATION["eta"], help="η (> 0)")
    train.add_argument("--gamma", type=_number(float, 0.0), default=PERTURBATION["gamma"],
                       help="γ (>= 0)")
    train.add_argument("--kappa-epsilon", type=_number(float, 0.0, low_open=True),
                       default=PERTURBATION["kappa_epsilon"], help="ε of κ (> 0)")
    train.add_argument("--grad-threshold", type=_number(float, 0.0),
                       default=PERTURBATION["grad_threshold"], help="β2 (>= 0)")
    train.add_argument("--rho", type=_number(float, 0.0, low_open=True), default=run.rho,
                       help="SAM's ρ (sam_adam, sam_sgd)")
    train.add_argument("--augment", choices=("auto", "on", "off"), default="auto")
    train.add_argument("--seed", type=_number(int, 0), default=run.seed)
    train.add_argument("--every", type=_number(int, 1), default=1, help="measure gap and ψ every N epochs")
    train.add_argument("--jit", action="store_true", help="compile the train step with XLA")
    train.add_argument("--out", default=None, help="run folder (default runs/<run name>)")
    train.add_argument("--export", default=None,
                       help="SavedModel folder (default saved_models/<run name>); 'none' skips")
    train.add_argument("--data-dir", default=None, help="TFDS data directory")
    train.add_argument("--verbose", type=_number(int, 0), default=1)

    for name, help_text in (("score", "print ψ and its parts for a saved model"),
                            ("measure", "print and save the generalization measures of a saved model")):
        command = sub.add_parser(name, help=help_text)
        command.add_argument("path", help="a .keras file (pacgen train writes runs/<run>/model.keras)")
        command.add_argument("--dataset", choices=NAMES, required=True)
        command.add_argument("--max-batches", type=_number(int, 1), default=10)
        command.add_argument("--batch-size", type=_number(int, 1), default=128)
        command.add_argument("--data-dir", default=None)
        command.add_argument("--seed", type=_number(int, 0), default=0)
        if name == "score":
            command.add_argument("--estimator", choices=ESTIMATORS, default="squared_gradients")
        else:
            command.add_argument("--measures", default=None,
                                 help=f"comma-separated, of: {', '.join(MEASURES)} (default: all "
                                 "but those from the initial weights, which a saved model lacks)")
            command.add_argument("--out", default=None, help="JSON file (default <path>.measures.json)")

    study = sub.add_parser("study", help="run a study of many networks (serially, or on Ray), "
                           "resumable, then its report")
    study.add_argument("name", choices=("measures", "pertopt"))
    study.add_argument("--quick", action="store_true", help="a smoke run: a few small networks")
    study.add_argument("--seeds", type=_number(int, 1), default=None,
                       help="seeds per setting (default: measures 3, pertopt 5)")
    study.add_argument("--workers", type=_number(int, 1), default=1,
                       help="trials at a time, each in its own process (Ray)")
    study.add_argument("--address", default=None, help="a Ray cluster's address (ray.init)")
    study.add_argument("--engine", choices=("auto", "serial", "ray"), default="auto",
                       help="auto: Ray when installed and --workers > 1 or --address")
    study.add_argument("--retries", type=_number(int, 0), default=0,
                       help="attempts after a failure, per trial")
    study.add_argument("--out", default=None,
                       help="results folder (default results/measures, results/pertopt)")
    study.add_argument("--resume", action="store_true", help="run only the trials --out lacks")
    return parser


def train(args) -> dict:
    import keras

    import keras_pacgen as kp
    from keras_pacgen import datasets, models, training

    model_name = models.default_for(args.dataset) if args.model == "auto" else args.model
    if model_name == "wide_resnet":  # WRN-16-4 unless told otherwise
        args.depth, args.width = args.depth or 16, args.width or 4
    config = training.RunConfig(
        dataset=args.dataset, model=args.model, width=args.width, depth=args.depth,
        dropout=args.dropout, optimizer=args.optimizer, learning_rate=args.learning_rate,
        weight_decay=args.weight_decay, batch_size=args.batch_size, epochs=args.epochs,
        eta=args.eta, gamma=args.gamma, kappa_epsilon=args.kappa_epsilon,
        grad_threshold=args.grad_threshold, rho=args.rho, seed=args.seed, jit_compile=args.jit,
    )
    augment = None if args.augment == "auto" else args.augment == "on"
    data = datasets.load(args.dataset, batch_size=args.batch_size, augment=augment, seed=args.seed,
                         data_dir=args.data_dir)
    run_name = f"{args.dataset}_{model_name}_{args.optimizer}_seed{args.seed}"
    out = os.path.abspath(args.out or os.path.join("runs", run_name))
    os.makedirs(out, exist_ok=True)
    pacgen = kp.PacGenCallback(
        data.train, data.test, every=args.every, train_batches=max(1, 2048 // args.batch_size),
        csv_path=os.path.join(out, "pacgen.csv"),
        tensorboard_dir=os.path.join(out, "tensorboard", "pacgen"),
        plot_path=os.path.join(out, "gap_psi.png"),
    )
    callbacks = [pacgen, keras.callbacks.CSVLogger(os.path.join(out, "history.csv")),
                 keras.callbacks.TensorBoard(os.path.join(out, "tensorboard"))]
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump({**vars(args), "model": model_name, "run": run_name}, f, indent=2, default=str)
    print(f"pacgen train: {run_name}: {data.num_train} training samples, {args.epochs} epochs")
    result = training.run(config, data=data, callbacks=callbacks, validation=True,
                          verbose=args.verbose)
    final = pacgen.rows[-1]
    summary = {"run": run_name, "seconds": round(result.seconds, 1),
               "test_accuracy": result.test_accuracy,
               **{k: final[k] for k in ("clean_train_loss", "clean_test_loss", "gen_gap", "pacgen")},
               "out": out}
    model_path = os.path.join(out, "model.keras")
    result.model.save(model_path)
    export = None
    if (args.export or "").lower() != "none" and keras.backend.backend() == "torch":
        # Keras's SavedModel export on PyTorch goes through torch.export, which fails on these
        # models (as on a plain keras.Sequential): the .keras file is the model there.
        print("SavedModel export skipped: Keras cannot export it on the PyTorch backend; "
              f"use {model_path} (or train with KERAS_BACKEND=jax or tensorflow).")
    elif (args.export or "").lower() != "none":
        export = os.path.abspath(args.export or os.path.join("saved_models", run_name))
        result.model.export(export, verbose=False)
    summary["export"] = export
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(f"\nTrained in {result.seconds:.0f} s: test accuracy {summary['test_accuracy']:.4f}, clean "
          f"gap {summary['gen_gap']:.4f}, psi {summary['pacgen']:.2f}")
    print("Wrote:")
    for label, path in (
        ("gap and psi per epoch (CSV)", os.path.join(out, "pacgen.csv")),
        ("Keras logs per epoch (CSV)", os.path.join(out, "history.csv")),
        ("TensorBoard logs", os.path.join(out, "tensorboard")),
        ("plot of gap and psi", os.path.join(out, "gap_psi.png")),
        ("Keras model", model_path),
        ("summary", os.path.join(out, "summary.json")),
        ("SavedModel (clean weights)", export),
    ):
        if path:
            print(f"  {label:34s} {path}")
    return summary


def _load(args):
    """The model of the .keras file `args.path`, compiled with its loss, and the dataset's
    training split."""
    import keras

    from keras_pacgen import datasets

    path = args.path
    if os.path.isdir(path):
        raise UsageError(
            f"{path} is a SavedModel folder: an export serves a traced function, which ψ and the "
            "measures cannot evaluate at other weights. Give the .keras file instead (pacgen "
            "train writes it as runs/<run>/model.keras).")
    if not path.endswith(".keras") or not os.path.exists(path):
        raise UsageError(f"{path} is not a .keras file.")
    model = keras.models.load_model(path)
    model = getattr(model, "model", model)  # the network inside a SAM wrapper
    data = datasets.load(args.dataset, batch_size=args.batch_size, augment=False, shuffle=False,
                         data_dir=args.data_dir)
    if getattr(model, "loss", None) is None:
        model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model, data


def score(args) -> float:
    import keras_pacgen as kp

    model, data = _load(args)
    result = kp.pacgen_score(model, data.train, estimator=args.estimator,
                             max_batches=args.max_batches, seed=args.seed)
    print(result.summary())
    return result.psi


def measure(args) -> dict:
    from keras_pacgen import measures

    names = None if args.measures is None else [n.strip() for n in args.measures.split(",") if n.strip()]
    try:  # before the model and the data are loaded
        names = measures.measure_names(names)
    except ValueError as err:
        raise UsageError(str(err)) from None
    model, data = _load(args)
    subset = data.train.take(args.max_batches)
    values = measures.compute_all(model, subset, measures=names, seed=args.seed, verbose=1)
    print(f"\n{'measure':26s} {'value':>14s}")
    for name, value in values.items():
        print(f"{name:26s} {value:>14.6g}")
    out = args.out or f"{args.path.rstrip('/')}.measures.json"
    with open(out, "w") as f:
        json.dump({"model": args.path, "dataset": args.dataset, "batches": args.max_batches,
                   "seed": args.seed, "measures": values}, f, indent=2)
    print(f"wrote {out}")
    return values


def study(args) -> dict:
    from keras_pacgen import studies
    from keras_pacgen.studies.store import StudyError

    try:
        return studies.run(args.name, args.out, quick=args.quick, seeds=args.seeds,
                           workers=args.workers, address=args.address, engine=args.engine,
                           resume=args.resume, retries=args.retries)
    except StudyError as err:  # a folder of another study, a missing Ray: say so, no traceback
        raise UsageError(str(err)) from None


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    from keras_pacgen.datasets import DatasetUnavailableError

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*PerturbationCallback.*")
            {"train": train, "score": score, "measure": measure, "study": study}[args.command](args)
    except DatasetUnavailableError as err:
        print(f"pacgen: {err}", file=sys.stderr)
        return 2
    except UsageError as err:
        print(f"pacgen {args.command}: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
