"""keras-pacgen: PAC-Bayes local generalization (Wang et al., AISTATS 2020) for Keras 3.

* Perturbed optimizers (Algorithm 1, PertOPT): `PerturbedAdam`, `PerturbedSGD`, `perturbed()`
  and `perturb()` for any Keras optimizer.
* `PerturbationCallback`: clean weights for validation, evaluation, checkpoints and export.
"""

from keras_pacgen.callbacks import PerturbationCallback
from keras_pacgen.optimizers import PerturbedAdam, PerturbedSGD, perturb, perturbed
from keras_pacgen.perturbation import PerturbationMixin

__version__ = "0.1.0"

__all__ = [
    "PerturbationCallback",
    "PerturbationMixin",
    "PerturbedAdam",
    "PerturbedSGD",
    "perturb",
    "perturbed",
]
