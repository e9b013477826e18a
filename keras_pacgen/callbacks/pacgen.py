"""`PacGenCallback`: the clean generalization gap and ψ while training (the paper's Figs. 4-5)."""

from __future__ import annotations

import csv
import math
import os

import numpy as np
import tensorflow as tf
from keras import ops

from keras_pacgen import _validation as check
from keras_pacgen import reporting
from keras_pacgen.callbacks.perturbation import PerturbationCallback
from keras_pacgen.measures import ESTIMATORS, pacgen_score, read

LOG_KEYS = ("clean_train_loss", "clean_test_loss", "gen_gap", "pacgen")


class PacGenCallback(PerturbationCallback):
    """Logs the generalization gap and ψ of the clean weights every `every` epochs.

    At the end of an epoch (after the perturbation of a perturbed optimizer is taken out, see
    `PerturbationCallback`, which this callback is) it evaluates

    * ``clean_train_loss``: the loss of the clean weights on a fixed training subset (the first
      `train_batches` batches of `train_data`), not the running average over perturbed steps that
      ``fit`` prints;
    * ``clean_test_loss``: the loss of the clean weights on `test_data`;
    * ``gen_gap`` = clean_test_loss − clean_train_loss;
    * ``pacgen`` = ψ, from the optimizer's estimates when it has them (perturbed or Adam-family,
      ``psi_estimator="auto"`` or ``"optimizer"``), otherwise by `pacgen_score` on the training
      subset (``"squared_gradients"`` or ``"hutchinson"``),

    and puts them into ``logs``, so ``History``, ``CSVLogger`` and ``TensorBoard`` placed after it
    see them. Optionally it writes its own CSV (`csv_path`), TensorBoard scalars and σ histograms
    (`tensorboard_dir`) and, at the end of training, a PNG of gap and ψ against epochs
    (`plot_path`). Works with any optimizer. Put it first in the callback list.
    """

    def __init__(
        self,
        train_data,
        test_data,
        *,
        every: int = 1,
        train_batches: int = 10,
        batch_size: int = 256,
        psi_estimator: str = "auto",
        gamma: float = 0.1,
        epsilon: float = 0.1,
        csv_path: str | None = None,
        tensorboard_dir: str | None = None,
        histograms: bool = True,
        plot_path: str | None = None,
    ):
        super().__init__()
        self.every = check.check_int("every", every, low=1)
        self.train_batches = check.check_int("train_batches", train_batches, low=1)
        self.batch_size = check.check_int("batch_size", batch_size, low=1)
        self.psi_estimator = check.check_choice(
            "psi_estimator", psi_estimator, ("auto", "optimizer", *ESTIMATORS)
        )
        self.gamma = check.check_float("gamma", gamma, low=0.0)
        self.epsilon = check.check_float("epsilon", epsilon, low=0.0, low_inclusive=False)
        if isinstance(train_data, tf.data.Dataset):  # read only the batches used
            train_data = train_data.take(self.train_batches)
        train = read(train_data, batch_size=self.batch_size, name="train_data")
        self._train = train.head(self.train_batches * self.batch_size)
        if isinstance(test_data, tf.data.Dataset):  # streamed: the test set may be large
            if test_data.cardinality() == 0 or not any(True for _ in test_data.take(1)):
                raise ValueError("`test_data` is empty: it yielded no batches.")
            self._test = test_data
        else:
            self._test = read(test_data, batch_size=self.batch_size, name="test_data").dataset()
        self.csv_path, self.tensorboard_dir, self.histograms, self.plot_path = (
            csv_path,
            tensorboard_dir,
            histograms,
            plot_path,
        )
        self.rows: list[dict[str, float]] = []
        self._writer = None

    # ------------------------------------------------------------------ hooks
    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.psi_estimator == "optimizer":
            from keras_pacgen.metrics import require_estimates

            require_estimates(self.model.optimizer)
        if self.tensorboard_dir and self._writer is None:
            self._writer = tf.summary.create_file_writer(self.tensorboard_dir)

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)  # clean weights from here on
        epochs = (self.params or {}).get("epochs")
        if (epoch + 1) % self.every and (epochs is None or epoch + 1 != epochs):
            return
        row = self.measure()
        row = {"epoch": epoch + 1, **row}
        self.rows.append(row)
        if logs is not None:
            logs.update({k: row[k] for k in LOG_KEYS})
        self._write_csv(row)
        self._write_tensorboard(epoch + 1, row)

    def on_train_end(self, logs=None):
        super().on_train_end(logs)
        if self.plot_path and self.rows:
            plot_gap_and_psi(self.rows, self.plot_path)
        if self._writer is not None:
            self._writer.flush()

    # ------------------------------------------------------------------ measurements
    def measure(self) -> dict[str, float]:
        """Clean train/test loss, gap and ψ of the model's current (clean) weights."""
        train_loss = self.model.evaluate(self._train.dataset(), verbose=0, return_dict=True)["loss"]
        test_loss = self.model.evaluate(self._test, verbose=0, return_dict=True)["loss"]
        return {
            "clean_train_loss": float(train_loss),
            "clean_test_loss": float(test_loss),
            "gen_gap": float(test_loss - train_loss),
            "pacgen": self.psi(),
        }

    def psi(self) -> float:
        from keras_pacgen.metrics import has_estimates, psi_from_optimizer

        estimator = self.psi_estimator
        if estimator == "auto":
            estimator = "optimizer" if has_estimates(self.model.optimizer) else "squared_gradients"
        if estimator == "optimizer":
            return float(psi_from_optimizer(self.model, gamma=self.gamma, epsilon=self.epsilon))
        score = pacgen_score(
            self.model, self._train, estimator=estimator, batch_size=self.batch_size,
            gamma=self.gamma, epsilon=self.epsilon, verbose=0,
        )
        return score.psi

    def _write_csv(self, row):
        if not self.csv_path:
            return
        os.makedirs(os.path.dirname(os.path.abspath(self.csv_path)), exist_ok=True)
        new = not os.path.exists(self.csv_path) or len(self.rows) == 1
        with open(self.csv_path, "w" if new else "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["epoch", *LOG_KEYS])
            if new:
                writer.writeheader()
            writer.writerow(row)

    def _write_tensorboard(self, step, row):
        if self._writer is None:
            return
        with self._writer.as_default():
            for key in LOG_KEYS:
                tf.summary.scalar(key, row[key], step=step)
            if self.histograms:
                for opt in self._optimizers:
                    for v in self.model.trainable_variables:
                        state = opt.perturbation_state(v)
                        name = getattr(v, "path", v.name)
                        tf.summary.histogram(f"sigma/{name}", ops.convert_to_numpy(state["sigma"]), step=step)
                        tf.summary.histogram(f"hessian/{name}", ops.convert_to_numpy(state["hessian"]),
                                             step=step)


def plot_gap_and_psi(rows, path: str, title: str | None = None) -> str:
    """PNG of the generalization gap (left axis) and ψ (right axis) against epochs."""
    epochs = [r["epoch"] for r in rows]
    fig = reporting.figure(6, 4)
    ax = fig.subplots()
    ax.plot(epochs, [r["gen_gap"] for r in rows], "o-", color="tab:blue", label="gap (test − train loss)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("generalization gap", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(epochs, [r["pacgen"] for r in rows], "s--", color="tab:red", label="ψ (pacGen)")
    ax2.set_ylabel("ψ", color="tab:red")
    if title:
        ax.set_title(title)
    finite = [r["pacgen"] for r in rows if math.isfinite(r["pacgen"])]
    if finite and np.ptp(finite) == 0:
        ax2.set_ylim(finite[0] - 1, finite[0] + 1)
    reporting.save_figure(fig, path)
    return path

