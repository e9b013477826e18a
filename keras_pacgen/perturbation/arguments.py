"""The perturbation arguments of every perturbed optimizer: defaults, documentation and checks."""

from __future__ import annotations

import random
from typing import Any

from keras_pacgen import _validation as check

DEFAULTS: dict[str, Any] = {
    "eta": 0.01,
    "gamma": 0.1,
    "kappa_epsilon": 1e-5,
    "grad_threshold": 0.1,
    "hessian_decay": 0.999,
    "seed": None,
    "steps_per_epoch": None,
    "rho_norm": "global",
    "kappa_weights": "previous",
    "skip_nonfinite": True,
}

DOC = """

    * ``eta`` (η > 0): the PAC-Bayes trade-off. Larger η, smaller perturbations
      (σ ∝ 1/sqrt(η h)). The paper used η = 0.01 with Adam on CIFAR and η = 100 with SGD on
      Tiny ImageNet.
    * ``gamma`` (γ >= 0): relative radius of the neighbourhood, κ = γ/log(1+epoch)·|w| + ε.
      Algorithm 1's default 0.1; the paper's experiments used 10 (CIFAR) and 1 (Tiny ImageNet).
    * ``kappa_epsilon`` (ε > 0): absolute radius added to κ. Default 1e-5.
    * ``grad_threshold`` (β2 >= 0): only coordinates with ``|g| < β2`` are perturbed. 0 perturbs
      nothing (the wrapped optimizer exactly). Default 0.1.
    * ``hessian_decay`` (β1 in [0, 1)): decay of the Hessian-diagonal estimate
      h = β1 h + (1 − β1) g². Default 0.999.
    * ``seed``: integer seed of the stateless noise; None draws one at construction (it is then
      part of ``get_config()``, so a saved optimizer continues with the same noise).
    * ``steps_per_epoch``: steps per epoch, for an exact epoch counter inside the step; None takes
      the epoch from `set_epoch` (which the callbacks call at every epoch).
    * ``rho_norm``: ``"global"`` or ``"variable"``, the norm of ``w_t − w_{t−1}`` in ρ.
    * ``kappa_weights``: ``"previous"`` (``w_{t−1}``) or ``"current"`` (``w_t``) in κ.
    * ``skip_nonfinite``: skip a step whose gradients contain NaN or Inf (default True).
"""


def validated(
    *, eta, gamma, kappa_epsilon, grad_threshold, hessian_decay, seed, steps_per_epoch, rho_norm,
    kappa_weights, skip_nonfinite,
) -> dict[str, Any]:
    """The perturbation arguments, checked; a `ValueError` names any bad one and its range."""
    if seed is None:
        seed = random.SystemRandom().randrange(2**31)
    seed = check.check_int("seed", seed, low=0)
    if seed >= 2**40:
        raise ValueError(f"`seed` must be an integer in [0, 2**40). Received: seed={seed!r}")
    if not isinstance(skip_nonfinite, bool):
        raise ValueError(
            f"`skip_nonfinite` must be True or False. Received: skip_nonfinite={skip_nonfinite!r}"
        )
    return {
        "eta": check.check_float("eta", eta, low=0.0, low_inclusive=False),
        "gamma": check.check_float("gamma", gamma, low=0.0),
        "kappa_epsilon": check.check_float("kappa_epsilon", kappa_epsilon, low=0.0,
                                           low_inclusive=False),
        "grad_threshold": check.check_float("grad_threshold", grad_threshold, low=0.0),
        "hessian_decay": check.check_float("hessian_decay", hessian_decay, low=0.0, high=1.0,
                                           high_inclusive=False),
        "seed": seed,
        "steps_per_epoch": check.check_int("steps_per_epoch", steps_per_epoch, low=1,
                                           allow_none=True),
        "rho_norm": check.check_choice("rho_norm", rho_norm, ("global", "variable")),
        "kappa_weights": check.check_choice("kappa_weights", kappa_weights,
                                            ("previous", "current")),
        "skip_nonfinite": skip_nonfinite,
    }


def take(kwargs: dict) -> dict[str, Any]:
    """The perturbation arguments, popped from a constructor's `kwargs` (defaults filled in). A
    perturbed optimizer refuses gradient accumulation: Algorithm 1 draws a new perturbation at every
    update."""
    steps = kwargs.get("gradient_accumulation_steps")
    if steps:
        raise ValueError(
            "`gradient_accumulation_steps` is not supported by the perturbed optimizers: "
            "Algorithm 1 draws a new perturbation at every optimizer update. Use a larger batch "
            f"instead. Received: gradient_accumulation_steps={steps}"
        )
    return {key: kwargs.pop(key, default) for key, default in DEFAULTS.items()}
