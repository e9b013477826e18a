"""Generalization measures of a trained Keras model, to compare ψ with the measures people trust.

Every measure is ``f(model, data, *, seed=0, ...) -> float`` on the model's compiled loss plus
``model.losses`` over `data` (a `tf.data.Dataset` of (x, y) batches or a tuple (x, y) of arrays),
deterministic for a seed. Larger means a larger predicted generalization gap for all of them.

=======================  ====================================================================
``pacgen``               ψ, Wang et al. 2020 § 7 (``estimator="squared_gradients"`` or
                         ``"hutchinson"``)
``pac_bayes_bound``      the PAC-Bayes bound at σ*, Wang et al. 2020 eq. 11
``sharpness``            ε-sharpness, Keskar et al. 2017
``pacbayes_flatness``    PAC-Bayes flatness 1/σ'², Jiang et al. 2020 (``magnitude_aware``)
``hessian_trace``        tr ∇²L̂ by Hutchinson's estimator
``top_hessian_eigenvalue``  λ_max(∇²L̂) by power iteration
``fisher_trace``         trace of the empirical Fisher, (1/n) Σ_i ‖∇ℓ_i‖²
``weight_norm``          ‖w‖², Jiang et al.'s params.norm
``distance_from_init``   ‖w − w_0‖², Jiang et al.'s dist.init
``spectral_norm_product``  Π σ_max(W), Jiang et al.'s prod.of.spec
=======================  ====================================================================

`compute_all` runs several at once; `kendall_tau`, `per_hyperparameter_kendall` and
`granulated_kendall` rank them against observed gaps (Jiang et al.'s τ and Ψ).
"""

from __future__ import annotations

import functools

from keras_pacgen.measures.curvature import fisher_trace, hessian_trace, top_hessian_eigenvalue
from keras_pacgen.measures.norms import distance_from_init, spectral_norm_product, weight_norm
from keras_pacgen.measures.pacgen import (
    ESTIMATORS,
    PacGenScore,
    pac_bayes_bound,
    pacgen,
    pacgen_score,
)
from keras_pacgen.measures.ranking import (
    granulated_kendall,
    kendall_tau,
    per_hyperparameter_kendall,
)
from keras_pacgen.measures.sharpness import pacbayes_flatness, sharpness

# name -> measure, as `compute_all` and `pacgen measure` know them
MEASURES = {
    "pacgen": pacgen,
    "pacgen_hutchinson": functools.partial(pacgen, estimator="hutchinson"),
    "pac_bayes_bound": pac_bayes_bound,
    "sharpness": sharpness,
    "pacbayes_flatness": pacbayes_flatness,
    "pacbayes_mag_flatness": functools.partial(pacbayes_flatness, magnitude_aware=True),
    "hessian_trace": hessian_trace,
    "top_hessian_eigenvalue": top_hessian_eigenvalue,
    "fisher_trace": fisher_trace,
    "weight_norm": weight_norm,
    "distance_from_init": distance_from_init,
    "spectral_norm_product": spectral_norm_product,
}


def measure_names(measures=None, *, has_initial_weights: bool = False) -> list[str]:
    """The names `compute_all` runs: `measures` checked against `MEASURES`, or by default all of
    them, without ``distance_from_init`` when there are no initial weights."""
    if measures is None:
        return [n for n in MEASURES if n != "distance_from_init" or has_initial_weights]
    names = list(measures)
    unknown = [n for n in names if n not in MEASURES]
    if unknown or not names:
        raise ValueError(f"unknown measure(s) {', '.join(unknown) or '(none given)'}; valid: "
                         f"{', '.join(MEASURES)}")
    if "distance_from_init" in names and not has_initial_weights:
        raise ValueError("distance_from_init needs the weights at initialisation "
                         "(`initial_weights`, one array per trainable variable), which a saved "
                         "model does not hold.")
    return names


def compute_all(model, data, *, measures=None, seed: int = 0, initial_weights=None,
                verbose: int = 0) -> dict[str, float]:
    """``{name: value}`` of the `measures` named (default: all of `MEASURES`, without
    ``distance_from_init`` unless `initial_weights` is given), each with `seed`."""
    names = measure_names(measures, has_initial_weights=initial_weights is not None)
    results = {}
    for name in names:
        kwargs = {"initial_weights": initial_weights} if name == "distance_from_init" else {}
        results[name] = float(MEASURES[name](model, data, seed=seed, verbose=verbose, **kwargs))
    return results


__all__ = [
    "ESTIMATORS",
    "MEASURES",
    "PacGenScore",
    "compute_all",
    "distance_from_init",
    "fisher_trace",
    "granulated_kendall",
    "hessian_trace",
    "kendall_tau",
    "measure_names",
    "pac_bayes_bound",
    "pacbayes_flatness",
    "pacgen",
    "pacgen_score",
    "per_hyperparameter_kendall",
    "sharpness",
    "spectral_norm_product",
    "top_hessian_eigenvalue",
    "weight_norm",
]
