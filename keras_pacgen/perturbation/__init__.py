"""PertOPT, Algorithm 1 of Wang et al. (AISTATS 2020), for any Keras 3 optimizer.

* `formulas`: κ, σ, h, ρ and w + u, pure functions in the paper's notation;
* `step`: one training step, Algorithm 1's lines in the paper's order;
* `clean_weights`: the clean weights (remove, re-apply, per-device updates);
* `noise`: the stateless uniform draw;
* `mixin`: `PerturbationMixin`, the Keras optimizer around all of it;
* `state_after_step`: the values of the last ``stateless_apply``, for a metric (JAX);
* `arguments`: the perturbation arguments (defaults, documentation, checks);
* `keras_internals`: the private Keras attributes used, in one place.

What differs between backends (the non-finite guard, per-device copies) is in `keras_pacgen.backends`.
"""

from keras_pacgen.perturbation.arguments import DEFAULTS as PERTURBATION_DEFAULTS
from keras_pacgen.perturbation.formulas import neighbourhood_radius, perturbation_scale
from keras_pacgen.perturbation.mixin import PerturbationMixin

__all__ = [
    "PERTURBATION_DEFAULTS",
    "PerturbationMixin",
    "neighbourhood_radius",
    "perturbation_scale",
    "perturbed_optimizers",
]


def perturbed_optimizers(optimizer) -> list[PerturbationMixin]:
    """The perturbed optimizers in `optimizer`: itself, or inside wrappers that hold others in
    ``inner_optimizer`` (LossScaleOptimizer) or ``optimizers``."""
    if optimizer is None:
        return []
    if isinstance(optimizer, PerturbationMixin):
        return [optimizer]
    inner = [getattr(optimizer, "inner_optimizer", None), *(getattr(optimizer, "optimizers", None) or [])]
    return [found for opt in inner if opt is not None for found in perturbed_optimizers(opt)]
