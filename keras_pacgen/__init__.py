"""keras-pacgen: PAC-Bayes local generalization (Wang et al., AISTATS 2020) for Keras 3, on JAX,
PyTorch and TensorFlow (what differs between them: `keras_pacgen.backends`).

* Perturbed optimizers (Algorithm 1, PertOPT): `PerturbedAdam`, `PerturbedSGD`, `perturbed()`
  and `perturb()` for any Keras optimizer.
* The pacGen metric ψ: `psi`, `optimal_sigma`, `pac_bayes_bound` (pure functions), `PacGen`
  (a Keras metric), `pacgen_score` (any trained model, from data).
* Callbacks: `PerturbationCallback` (clean weights for validation, checkpoints and export) and
  `PacGenCallback` (clean generalization gap and ψ while training).
"""

from keras_pacgen import backends

backends.check()  # before Keras is imported: a missing JAX or PyTorch must not hide the message

from keras_pacgen.callbacks import PacGenCallback, PerturbationCallback  # noqa: E402
from keras_pacgen.measures import PacGenScore, pacgen_score  # noqa: E402
from keras_pacgen.metrics import PacGen, optimizer_estimates, psi_from_optimizer  # noqa: E402
from keras_pacgen.optimizers import PerturbedAdam, PerturbedSGD, perturb, perturbed  # noqa: E402
from keras_pacgen.pacgen import optimal_sigma, pac_bayes_bound, psi, psi_terms  # noqa: E402
from keras_pacgen.perturbation import PerturbationMixin, perturbed_optimizers  # noqa: E402
from keras_pacgen.sam import SharpnessAwareMinimization  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "PacGen",
    "PacGenCallback",
    "PacGenScore",
    "PerturbationCallback",
    "PerturbationMixin",
    "PerturbedAdam",
    "PerturbedSGD",
    "SharpnessAwareMinimization",
    "optimal_sigma",
    "optimizer_estimates",
    "pac_bayes_bound",
    "pacgen_score",
    "perturb",
    "perturbed",
    "perturbed_optimizers",
    "psi",
    "psi_from_optimizer",
    "psi_terms",
]
