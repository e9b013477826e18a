"""Keras callbacks of keras-pacgen."""

from keras_pacgen.callbacks.pacgen import PacGenCallback, plot_gap_and_psi
from keras_pacgen.callbacks.perturbation import PerturbationCallback, perturbed_optimizers

__all__ = ["PacGenCallback", "PerturbationCallback", "perturbed_optimizers", "plot_gap_and_psi"]
