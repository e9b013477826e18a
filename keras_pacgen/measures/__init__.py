"""Generalization measures of a trained Keras model, as the literature defines them, and the rank
statistics that judge them.

Every measure is ``f(model, data, *, seed=0, ...) -> float``, larger predicting a larger
generalization gap, deterministic for a seed. `data` is the training data: arrays ``(x, y)`` or
``(x, y, sample_weight)``, or a batched `tf.data.Dataset` of them (`keras_pacgen.measures.data`).
Loss-based measures use the **data loss** (the compiled loss without ``model.losses``;
``include_regularization=True`` adds them). Measures of the distance from initialisation take
``initial_weights`` (one array per trainable variable, saved before training).

* Wang et al. 2020 (`pacgen`): ψ and the eq. 11 PAC-Bayes bound.
* Jiang et al. 2020, "Fantastic Generalization Measures" (`flatness`, `norms`): the PAC-Bayes
  and sharpness measures from σ′ and α′, norm, margin and path-norm measures over the kernels
  with BatchNorm folded; `gradient_noise`.
* Keskar et al. 2017 (`sharpness`): ε-sharpness, as `keskar_sharpness`.
* Curvature (`curvature`): the Hessian's trace and top eigenvalue as PyHessian computes them;
  the Fisher trace with sampled (true Fisher) or empirical labels.
* Rank statistics (`ranking`): Kendall's τ (Jiang et al.'s eq. 2), the granulated Ψ and the
  conditional mutual information (CMI) that Jiang et al. and PGDL score with.

`MEASURES` names every measure; `compute_all` runs several on one model, sharing what they can
(the data read, the traced functions, σ′, α′, the margin, the per-sample gradients).
"""

from __future__ import annotations

import functools

from keras_pacgen.measures import _common, norms
from keras_pacgen.measures.curvature import (
    FISHER_LABELS,
    fisher_trace,
    gradient_noise,
    hessian_trace,
    top_hessian_eigenvalue,
)
from keras_pacgen.measures.data import Samples, read
from keras_pacgen.measures.flatness import (
    CRITERIA,
    pacbayes_flatness,
    pacbayes_init,
    pacbayes_mag_flatness,
    pacbayes_mag_init,
    pacbayes_mag_orig,
    pacbayes_orig,
    pacbayes_sigma,
    sharpness_alpha,
    sharpness_flatness,
    sharpness_init,
    sharpness_mag_flatness,
    sharpness_mag_init,
    sharpness_mag_orig,
    sharpness_orig,
)
from keras_pacgen.measures.norms import (
    dist_spec_init,
    fro_dist,
    fro_over_spec,
    inverse_margin,
    log_prod_of_fro,
    log_prod_of_fro_over_margin,
    log_prod_of_spec,
    log_prod_of_spec_over_margin,
    log_spec_init_main,
    log_spec_orig_main,
    log_sum_of_fro,
    log_sum_of_fro_over_margin,
    log_sum_of_spec,
    log_sum_of_spec_over_margin,
    param_norm,
    params,
    path_norm,
    path_norm_over_margin,
)
from keras_pacgen.measures.pacgen import (
    ESTIMATORS,
    PacGenScore,
    pac_bayes_bound,
    pacgen,
    pacgen_score,
)
from keras_pacgen.measures.ranking import (
    conditional_mutual_information,
    granulated_kendall,
    kendall_tau,
    mutual_information_by_set,
    per_hyperparameter_kendall,
)
from keras_pacgen.measures.sharpness import keskar_sharpness

# name -> measure, as `compute_all` and `pacgen measure` know them (Jiang et al.'s names, with _)
MEASURES = {
    "pacgen": pacgen,
    "pacgen_hutchinson": functools.partial(pacgen, estimator="hutchinson"),
    "pac_bayes_bound": pac_bayes_bound,
    "pacbayes_flatness": pacbayes_flatness,
    "pacbayes_init": pacbayes_init,
    "pacbayes_orig": pacbayes_orig,
    "pacbayes_mag_flatness": pacbayes_mag_flatness,
    "pacbayes_mag_init": pacbayes_mag_init,
    "pacbayes_mag_orig": pacbayes_mag_orig,
    "sharpness_flatness": sharpness_flatness,
    "sharpness_init": sharpness_init,
    "sharpness_orig": sharpness_orig,
    "sharpness_mag_flatness": sharpness_mag_flatness,
    "sharpness_mag_init": sharpness_mag_init,
    "sharpness_mag_orig": sharpness_mag_orig,
    "keskar_sharpness": keskar_sharpness,
    "hessian_trace": hessian_trace,
    "top_hessian_eigenvalue": top_hessian_eigenvalue,
    "fisher_trace": fisher_trace,
    "gradient_noise": gradient_noise,
    "params": params,
    "inverse_margin": inverse_margin,
    "log_prod_of_spec": log_prod_of_spec,
    "log_prod_of_spec_over_margin": log_prod_of_spec_over_margin,
    "log_spec_init_main": log_spec_init_main,
    "log_spec_orig_main": log_spec_orig_main,
    "fro_over_spec": fro_over_spec,
    "log_sum_of_spec": log_sum_of_spec,
    "log_sum_of_spec_over_margin": log_sum_of_spec_over_margin,
    "log_prod_of_fro": log_prod_of_fro,
    "log_prod_of_fro_over_margin": log_prod_of_fro_over_margin,
    "log_sum_of_fro": log_sum_of_fro,
    "log_sum_of_fro_over_margin": log_sum_of_fro_over_margin,
    "fro_dist": fro_dist,
    "dist_spec_init": dist_spec_init,
    "param_norm": param_norm,
    "path_norm": path_norm,
    "path_norm_over_margin": path_norm_over_margin,
}
# the measures of the distance from initialisation: they need `initial_weights`
NEED_INITIAL_WEIGHTS = ("pacbayes_init", "pacbayes_mag_init", "pacbayes_mag_orig", "sharpness_init",
                        "sharpness_mag_init", "sharpness_mag_orig", "log_spec_init_main",
                        "fro_dist", "dist_spec_init")
# the measures that read no loss (a model without one can have them): weights and outputs only
NEED_NO_LOSS = tuple(name for name, fn in MEASURES.items() if fn.__module__ == norms.__name__)


def measure_names(measures=None, *, has_initial_weights: bool = False) -> list[str]:
    """The names `compute_all` runs: `measures` checked against `MEASURES`, or by default all of
    them, without those of `NEED_INITIAL_WEIGHTS` when there are no initial weights."""
    if measures is None:
        return [n for n in MEASURES if n not in NEED_INITIAL_WEIGHTS or has_initial_weights]
    names = list(measures)
    unknown = [n for n in names if n not in MEASURES]
    if unknown or not names:
        raise ValueError(f"unknown measure(s) {', '.join(unknown) or '(none given)'}; valid: "
                         f"{', '.join(MEASURES)}")
    needing = [n for n in names if n in NEED_INITIAL_WEIGHTS]
    if needing and not has_initial_weights:
        raise ValueError(f"{', '.join(needing)} need(s) the weights at initialisation "
                         "(`initial_weights`, one array per trainable variable), which a saved "
                         "model does not hold.")
    return names


def compute_all(model, data, *, measures=None, seed: int = 0, initial_weights=None,
                max_samples: int | None = None, include_regularization: bool = False,
                verbose: int = 0) -> dict[str, float]:
    """``{name: value}`` of the `measures` named (default: all of `MEASURES`, without those of
    `NEED_INITIAL_WEIGHTS` unless `initial_weights` is given), each with `seed`, on `data` read
    once (at most `max_samples` samples, drawn from `seed`), sharing what the measures share."""
    names = measure_names(measures, has_initial_weights=initial_weights is not None)
    _common.check_model(model, needs_loss=any(n not in NEED_NO_LOSS for n in names))
    samples = read(data, model=model, max_samples=max_samples, seed=seed)
    bar = _common.progress(verbose, len(names), "measure")
    results = {}
    with _common.shared():
        for name in names:
            kwargs = {"initial_weights": initial_weights} if name in NEED_INITIAL_WEIGHTS else {}
            if name not in NEED_NO_LOSS:
                kwargs["include_regularization"] = include_regularization
            results[name] = float(MEASURES[name](model, samples, seed=seed, **kwargs))
            _common.tick(bar, [(name, results[name])] if verbose > 1 else None)
    return results


__all__ = [
    "CRITERIA",
    "ESTIMATORS",
    "FISHER_LABELS",
    "MEASURES",
    "NEED_INITIAL_WEIGHTS",
    "NEED_NO_LOSS",
    "PacGenScore",
    "Samples",
    "compute_all",
    "conditional_mutual_information",
    "dist_spec_init",
    "fisher_trace",
    "fro_dist",
    "fro_over_spec",
    "gradient_noise",
    "granulated_kendall",
    "hessian_trace",
    "inverse_margin",
    "kendall_tau",
    "keskar_sharpness",
    "log_prod_of_fro",
    "log_prod_of_fro_over_margin",
    "log_prod_of_spec",
    "log_prod_of_spec_over_margin",
    "log_spec_init_main",
    "log_spec_orig_main",
    "log_sum_of_fro",
    "log_sum_of_fro_over_margin",
    "log_sum_of_spec",
    "log_sum_of_spec_over_margin",
    "measure_names",
    "mutual_information_by_set",
    "pac_bayes_bound",
    "pacbayes_flatness",
    "pacbayes_init",
    "pacbayes_mag_flatness",
    "pacbayes_mag_init",
    "pacbayes_mag_orig",
    "pacbayes_orig",
    "pacbayes_sigma",
    "pacgen",
    "pacgen_score",
    "param_norm",
    "params",
    "path_norm",
    "path_norm_over_margin",
    "per_hyperparameter_kendall",
    "read",
    "sharpness_alpha",
    "sharpness_flatness",
    "sharpness_init",
    "sharpness_mag_flatness",
    "sharpness_mag_init",
    "sharpness_mag_orig",
    "sharpness_orig",
    "top_hessian_eigenvalue",
]
