"""One training driver and one optimizer registry, shared by the ``pacgen`` command, the examples
and the benchmarks.

* `OPTIMIZERS` / `make_optimizer`: the optimizers by name, with one set of defaults;
* `RunConfig` / `run`: a network, its data and how it is trained (optimizer, SAM, dropout, weight
  decay, a fixed number of epochs or until the clean training loss reaches a target), with the
  clean train/test loss, gap and accuracies of the result.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from typing import Any

import keras

from keras_pacgen import _validation as check
from keras_pacgen import datasets, models
from keras_pacgen.callbacks import PerturbationCallback
from keras_pacgen.measures import _common, read
from keras_pacgen.optimizers import PerturbedAdam, PerturbedSGD
from keras_pacgen.perturbation import PERTURBATION_DEFAULTS
from keras_pacgen.sam import SharpnessAwareMinimization

# name -> (class, defaults); "sam_<name>" trains with SAM around "<name>".
OPTIMIZERS: dict[str, tuple[type, dict[str, Any]]] = {
    "adam": (keras.optimizers.Adam, {"learning_rate": 1e-3}),
    "perturbed_adam": (PerturbedAdam, {"learning_rate": 1e-3}),
    "sgd": (keras.optimizers.SGD, {"learning_rate": 0.05, "momentum": 0.9}),
    "perturbed_sgd": (PerturbedSGD, {"learning_rate": 0.05, "momentum": 0.9}),
}
NAMES = (*OPTIMIZERS, *(f"sam_{name}" for name in ("adam", "sgd")))


def make_optimizer(name: str, **overrides) -> keras.optimizers.Optimizer:
    """The optimizer registered as `name` (see `OPTIMIZERS`; for ``sam_<name>``, the one SAM
    wraps), its defaults updated by `overrides` (None values are left out). Perturbation
    arguments given to a plain optimizer are ignored."""
    check.check_choice("optimizer", name, NAMES)
    cls, defaults = OPTIMIZERS[name.removeprefix("sam_")]
    args = {**defaults, **{k: v for k, v in overrides.items() if v is not None}}
    if not issubclass(cls, (PerturbedAdam, PerturbedSGD)):
        args = {k: v for k, v in args.items() if k not in PERTURBATION_DEFAULTS}
    if cls is keras.optimizers.Adam or cls is PerturbedAdam:
        args.pop("momentum", None)
    return cls(**args)


@dataclasses.dataclass
class RunConfig:
    """A network and how it is trained. None means the registry's or the model's default."""

    dataset: str = "mnist1d"
    model: str = "auto"  # a name of models.MODELS, or "auto": the dataset's usual network
    width: int | None = None
    depth: int | None = None
    dropout: float = 0.0
    optimizer: str = "perturbed_adam"  # a name of NAMES
    learning_rate: float | None = None
    momentum: float | None = None
    weight_decay: float | None = None  # decoupled, the optimizer's `weight_decay`
    batch_size: int = 64
    epochs: int = 30  # the most epochs
    target_loss: float | None = None  # stop once the clean training loss is <= this
    max_steps: int | None = None  # and at the latest after this many steps (checked each epoch)
    eta: float | None = None
    gamma: float | None = None
    kappa_epsilon: float | None = None
    grad_threshold: float | None = None
    rho: float = 0.05  # SAM's radius
    seed: int = 0
    train_size: int | None = None  # use the first samples of the (shuffled) training split only
    validation_split: float = 0.0  # carved from the training data before `train_size`
    jit_compile: bool = False

    def network(self, input_shape, num_classes) -> keras.Model:
        name = models.default_for(self.dataset) if self.model == "auto" else self.model
        extra = {k: v for k, v in (("width", self.width), ("depth", self.depth)) if v is not None}
        return models.build(name, input_shape=input_shape, num_classes=num_classes,
                            dropout=self.dropout, **extra)


@dataclasses.dataclass
class RunResult:
    """The trained model and its clean numbers (losses are the compiled loss, cross-entropy)."""

    model: keras.Model  # the network (not the SAM wrapper), compiled with the loss
    optimizer: keras.optimizers.Optimizer
    config: RunConfig
    history: dict
    steps: int
    epochs: int
    converged: bool  # reached `target_loss` (True when there is none)
    train_loss: float
    test_loss: float
    train_accuracy: float
    test_accuracy: float
    val_accuracy: float = math.nan
    seconds: float = 0.0
    initial_weights: list = dataclasses.field(default_factory=list, repr=False)  # before training

    @property
    def gap(self) -> float:
        """The clean generalization gap: test loss − training loss."""
        return self.test_loss - self.train_loss


class StopAtLoss(keras.callbacks.Callback):
    """Stops training once the model's data loss on `data` (arrays (x, y); the clean weights: put
    it after a `PerturbationCallback`) is at most `target`, checked every epoch, or once
    `max_steps` steps are done; `converged` says which. Logs ``clean_train_loss``.

    The loss is the compiled loss without ``model.losses`` (Jiang et al.'s criterion: training
    cross-entropy 0.01), so that a strongly regularised network can converge too;
    ``include_regularization=True`` adds them."""

    def __init__(self, data, target: float | None, max_steps: int | None = None, *,
                 include_regularization: bool = False):
        super().__init__()
        self.data, self.target, self.max_steps = data, target, max_steps
        self.include_regularization = include_regularization
        self.converged = target is None
        self._loss = None

    def on_epoch_end(self, epoch, logs=None):
        if self.target is not None:
            loss = self.loss()
            if logs is not None:
                logs["clean_train_loss"] = loss
            self.converged = loss <= self.target
            self.model.stop_training = self.converged
        if self.max_steps and int(self.model.optimizer.iterations.numpy()) >= self.max_steps:
            self.model.stop_training = True

    def loss(self) -> float:
        """The loss on all of `data` (a traced function, built once: at every epoch of a small
        dataset `evaluate()`'s own overhead would cost more than the pass)."""
        if self._loss is None:
            self._loss = _common.Objective(self.model, read(self.data, batch_size=1024),
                                           include_regularization=self.include_regularization)
        self._loss.refresh()
        return self._loss.value()


def _evaluate(model, data) -> dict[str, float]:
    """`model.evaluate` on arrays (x, y) or on a dataset of batches."""
    if isinstance(data, tuple):
        return model.evaluate(*data, batch_size=1024, verbose=0, return_dict=True)
    return model.evaluate(data, verbose=0, return_dict=True)


def run(config: RunConfig, *, data: datasets.Data | None = None, callbacks=(),
        validation: bool = False, verbose: int = 0) -> RunResult:
    """Train `config`'s network and measure the clean result.

    Args:
        config: the run.
        data: the dataset (default ``datasets.load(config.dataset)``). The offline datasets are
            trained on as arrays, so that a subset and a validation split can be carved; the TFDS
            ones through their pipelines (then `train_size`, `validation_split` and
            `target_loss` are not available).
        callbacks: more Keras callbacks, after the `PerturbationCallback` (so they see the clean
            weights at epoch ends).
        validation: evaluate on the validation split (the test split without one) every epoch,
            as ``fit(validation_data=...)``.
        verbose: ``fit``'s verbosity (1: a progress bar).
    """
    keras.utils.set_random_seed(config.seed)
    data = data or datasets.load(config.dataset, batch_size=config.batch_size, seed=config.seed)
    if data.arrays is not None:
        train, val, test = datasets.split(data.arrays, validation_split=config.validation_split,
                                          train_size=config.train_size)
        fit_data = dict(x=train[0], y=train[1], batch_size=config.batch_size, shuffle=True)
        num_train, input_shape = len(train[0]), train[0].shape[1:]
    else:
        if config.train_size or config.validation_split or config.target_loss is not None:
            raise ValueError("`train_size`, `validation_split` and `target_loss` need an offline "
                             f"dataset ({', '.join(datasets.OFFLINE)}), trained on as arrays.")
        train, val, test = data.train, None, data.test
        fit_data = dict(x=data.train)
        num_train, input_shape = data.num_train, data.input_shape
    has_val = val is not None and len(val[0]) > 0
    network = config.network(input_shape, data.num_classes)
    initial_weights = [v.numpy() for v in network.trainable_variables]
    model = (SharpnessAwareMinimization(network, rho=config.rho)
             if config.optimizer.startswith("sam_") else network)
    optimizer = make_optimizer(
        config.optimizer, learning_rate=config.learning_rate, momentum=config.momentum,
        weight_decay=config.weight_decay or None, eta=config.eta, gamma=config.gamma,
        kappa_epsilon=config.kappa_epsilon, grad_threshold=config.grad_threshold,
        seed=config.seed, steps_per_epoch=math.ceil(num_train / config.batch_size),
    )
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"],
                  jit_compile=config.jit_compile)
    stop = StopAtLoss(train, config.target_loss, config.max_steps)
    start = time.time()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*PerturbationCallback.*")
        history = model.fit(**fit_data, epochs=config.epochs, verbose=verbose,
                            validation_data=(val if has_val else test) if validation else None,
                            callbacks=[PerturbationCallback(), *callbacks, stop])
    seconds = time.time() - start
    if model is not network:  # SAM trained the network inside: compile it for evaluation
        network.compile(loss=loss, metrics=["accuracy"])
    train_metrics, test_metrics = _evaluate(network, train), _evaluate(network, test)
    return RunResult(
        model=network, optimizer=optimizer, config=config, history=history.history,
        steps=int(optimizer.iterations.numpy()), epochs=len(history.history["loss"]),
        converged=stop.converged, train_loss=float(train_metrics["loss"]),
        test_loss=float(test_metrics["loss"]), train_accuracy=float(train_metrics["accuracy"]),
        test_accuracy=float(test_metrics["accuracy"]),
        val_accuracy=_evaluate(network, val)["accuracy"] if has_val else math.nan,
        seconds=seconds, initial_weights=initial_weights,
    )


def summary_row(result: RunResult, **extra) -> dict[str, Any]:
    """One CSV row: the config's fields, then the result's numbers, then `extra`."""
    row = dataclasses.asdict(result.config)
    row.update(steps=result.steps, epochs_run=result.epochs, converged=result.converged,
               train_loss=result.train_loss, test_loss=result.test_loss, gap=result.gap,
               train_accuracy=result.train_accuracy, test_accuracy=result.test_accuracy,
               val_accuracy=result.val_accuracy, seconds=round(result.seconds, 2), **extra)
    return row
