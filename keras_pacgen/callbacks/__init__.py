"""Keras callbacks of keras-pacgen."""

from keras_pacgen.callbacks.perturbation import PerturbationCallback, perturbed_optimizers

__all__ = ["PerturbationCallback", "perturbed_optimizers"]
