"""Jiang et al.'s norm- and margin-based measures ("Fantastic Generalization Measures and Where to
Find Them", ICLR 2020, appendix C.1-C.5; equation numbers are the paper's).

They read Jiang et al.'s weights W_1 ... W_d: the layers' kernels with BatchNorm folded in
(`folding`), a convolution kernel taken as the matrix (k_h·k_w·c_in, c_out); d is the number of
kernels and ω the number of their entries. Products over layers are reported as their logarithm
(``log_...``), as the paper's reference code (nitarshan/robust-generalization-measures,
``data/generation/measures.py``) does, so that they never overflow. The margin γ is the 10th
percentile of the output margins (the correct class's logit minus the largest other one) on the
training `data`; as in the reference code its absolute value is used. The reference code then
rescales every measure to sqrt(μ/m) (log measures: (μ − log m)/2), a monotone map for a fixed
training-set size m that no rank statistic sees; the values here are the paper's μ.
Measures of the distance from initialisation take `initial_weights`: one array per trainable
variable, in ``model.trainable_variables`` order, saved before training.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from keras_pacgen.measures import _common, folding
from keras_pacgen.measures import data as data_module


def kernels(model, initial_weights=None) -> list[np.ndarray]:
    """W_1 ... W_d as matrices (BatchNorm folded): of the current weights, or of `initial_weights`."""
    _common.check_model(model, needs_loss=False)

    def compute():
        initial = None if initial_weights is None else _check_initial(model, initial_weights)
        return [w.reshape(-1, w.shape[-1]) if w.ndim > 1 else w[None, :]
                for w in folding.fold(model, initial).kernels]

    return _common.memo(("kernels", id(model), id(initial_weights)), compute)


def _check_initial(model, initial_weights) -> list[np.ndarray]:
    initial = [_common.to_numpy(w) for w in initial_weights]
    shapes = [tuple(v.shape) for v in model.trainable_variables]
    if [a.shape for a in initial] != shapes:
        raise ValueError("`initial_weights` must hold one array per trainable variable of the model, "
                         f"with its shape: expected {shapes}, received {[a.shape for a in initial]}.")
    return initial


def _differences(model, initial_weights) -> list[np.ndarray]:
    if initial_weights is None:
        raise ValueError("This measure needs the weights at initialisation: pass `initial_weights` "
                         "(one array per trainable variable, saved before training).")
    return [w - w0 for w, w0 in zip(kernels(model), kernels(model, initial_weights))]


def _spectral(matrices) -> np.ndarray:
    """‖W_i‖₂² of each matrix."""
    return np.array([np.linalg.norm(w, ord=2) ** 2 for w in matrices])


def _frobenius(matrices) -> np.ndarray:
    """‖W_i‖_F² of each matrix."""
    return np.array([np.sum(w * w) for w in matrices])


def margin(model, data, *, seed: int = 0, batch_size: int = 256, max_samples: int | None = None) -> float:
    """|γ|, γ the 10th percentile of the margins f(x)[y] − max_{j≠y} f(x)[j] over `data` (the
    reference code's ``kthvalue(m // 10)``)."""
    objective = _common.objective(model, data, batch_size=batch_size, max_samples=max_samples,
                                  seed=seed, needs_loss=False)

    def compute():
        margins = []
        for x, y, _ in objective.batches:
            logits = _common.to_numpy(objective.predict(objective.weights, x))
            if logits.shape[-1] < 2:
                raise ValueError("Margins need a classifier with one output per class.")
            y = _common.to_numpy(y)
            labels = (y.reshape(-1).astype(int) if y.ndim < logits.ndim or y.shape[-1] != logits.shape[-1]
                      else np.argmax(y, -1))
            rows = np.arange(len(labels))
            correct = logits[rows, labels]
            others = logits.copy()
            others[rows, labels] = -np.inf
            margins.append(correct - np.max(others, axis=-1))
        margins = np.sort(np.concatenate(margins).astype(np.float64))
        return abs(float(margins[max(len(margins) // 10, 1) - 1]))

    return _common.memo(("margin", id(model), id(objective)), compute)


def params(model, data=None, *, seed: int = 0, verbose: int = 0) -> float:
    """ω, the number of weights (eq. 20, "params")."""
    return float(sum(w.size for w in kernels(model)))


def inverse_margin(model, data, *, seed: int = 0, verbose: int = 0, batch_size: int = 256,
                   max_samples: int | None = None) -> float:
    """1/γ² (eq. 22, "inverse.margin")."""
    return 1.0 / margin(model, data, seed=seed, batch_size=batch_size, max_samples=max_samples) ** 2


def _log_prod_of_spec(model) -> float:
    return float(np.sum(np.log(_spectral(kernels(model)))))


def _log_prod_of_fro(model) -> float:
    return float(np.sum(np.log(_frobenius(kernels(model)))))


def _log_margin2(model, data, kwargs) -> float:
    options = {k: kwargs[k] for k in ("seed", "batch_size", "max_samples") if k in kwargs}
    return 2.0 * math.log(margin(model, data, **options))


def log_prod_of_spec(model, data=None, *, seed: int = 0, verbose: int = 0) -> float:
    """log Π_i ‖W_i‖₂² (eq. 32, "log.prod.of.spec")."""
    return _log_prod_of_spec(model)


def log_prod_of_spec_over_margin(model, data, *, seed: int = 0, verbose: int = 0, **kwargs) -> float:
    """log(Π_i ‖W_i‖₂² / γ²) (eq. 31)."""
    return _log_prod_of_spec(model) - _log_margin2(model, data, {"seed": seed, **kwargs})


def log_spec_init_main(model, data, *, initial_weights=None, seed: int = 0, verbose: int = 0,
                       **kwargs) -> float:
    """log(Π_i ‖W_i‖₂² / γ² · Σ_i ‖W_i − W_i⁰‖_F² / ‖W_i‖₂²) (eq. 29, "log.spec.init.main")."""
    ratio = np.sum(_frobenius(_differences(model, initial_weights)) / _spectral(kernels(model)))
    return log_prod_of_spec_over_margin(model, data, seed=seed, **kwargs) + math.log(ratio)


def log_spec_orig_main(model, data, *, seed: int = 0, verbose: int = 0, **kwargs) -> float:
    """log(Π_i ‖W_i‖₂² / γ² · Σ_i ‖W_i‖_F² / ‖W_i‖₂²) (eq. 30, "log.spec.orig.main")."""
    return log_prod_of_spec_over_margin(model, data, seed=seed, **kwargs) + math.log(fro_over_spec(model))


def fro_over_spec(model, data=None, *, seed: int = 0, verbose: int = 0) -> float:
    """Σ_i ‖W_i‖_F² / ‖W_i‖₂² (eq. 33, "fro.over.spec")."""
    matrices = kernels(model)
    return float(np.sum(_frobenius(matrices) / _spectral(matrices)))


def log_sum_of_spec(model, data=None, *, seed: int = 0, verbose: int = 0) -> float:
    """log(d (Π_i ‖W_i‖₂²)^(1/d)) (eq. 35, "log.sum.of.spec")."""
    d = len(kernels(model))
    return math.log(d) + _log_prod_of_spec(model) / d


def log_sum_of_spec_over_margin(model, data, *, seed: int = 0, verbose: int = 0, **kwargs) -> float:
    """log(d (Π_i ‖W_i‖₂² / γ²)^(1/d)) (eq. 34)."""
    d = len(kernels(model))
    return math.log(d) + log_prod_of_spec_over_margin(model, data, seed=seed, **kwargs) / d


def log_prod_of_fro(model, data=None, *, seed: int = 0, verbose: int = 0) -> float:
    """log Π_i ‖W_i‖_F² (eq. 37, "log.prod.of.fro")."""
    return _log_prod_of_fro(model)


def log_prod_of_fro_over_margin(model, data, *, seed: int = 0, verbose: int = 0, **kwargs) -> float:
    """log(Π_i ‖W_i‖_F² / γ²) (eq. 36)."""
    return _log_prod_of_fro(model) - _log_margin2(model, data, {"seed": seed, **kwargs})


def log_sum_of_fro(model, data=None, *, seed: int = 0, verbose: int = 0) -> float:
    """log(d (Π_i ‖W_i‖_F²)^(1/d)) (eq. 39, "log.sum.of.fro")."""
    d = len(kernels(model))
    return math.log(d) + _log_prod_of_fro(model) / d


def log_sum_of_fro_over_margin(model, data, *, seed: int = 0, verbose: int = 0, **kwargs) -> float:
    """log(d (Π_i ‖W_i‖_F² / γ²)^(1/d)) (eq. 38)."""
    d = len(kernels(model))
    return math.log(d) + log_prod_of_fro_over_margin(model, data, seed=seed, **kwargs) / d


def fro_dist(model, data=None, *, initial_weights=None, seed: int = 0, verbose: int = 0) -> float:
    """Σ_i ‖W_i − W_i⁰‖_F² (eq. 40, "frob.distance")."""
    return float(np.sum(_frobenius(_differences(model, initial_weights))))


def dist_spec_init(model, data=None, *, initial_weights=None, seed: int = 0, verbose: int = 0) -> float:
    """Σ_i ‖W_i − W_i⁰‖₂² (eq. 41, "dist.spec.init")."""
    return float(np.sum(_spectral(_differences(model, initial_weights))))


def param_norm(model, data=None, *, seed: int = 0, verbose: int = 0) -> float:
    """Σ_i ‖W_i‖_F² (eq. 42, "param.norm")."""
    return float(np.sum(_frobenius(kernels(model))))


def path_norm(model, data, *, seed: int = 0, verbose: int = 0) -> float:
    """Σ_j f_{w²}(1)[j] (eq. 44, "path.norm"): every parameter of the folded network squared,
    evaluated on an input of ones (one sample of `data`'s shape), its outputs summed."""
    _common.check_model(model, needs_loss=False)
    samples = data_module.read(data, model=model, batch_size=1, max_samples=1, seed=seed)
    folded = folding.fold(model)
    ones = keras.tree.map_structure(lambda a: ops.ones((1, *a.shape[1:]), "float32"), samples.x)
    squared = [ops.convert_to_tensor(w**2, v.dtype)
               for w, v in zip(folded.trainable, model.trainable_variables)]
    fixed = [ops.convert_to_tensor(w, v.dtype)
             for w, v in zip(folded.non_trainable, model.non_trainable_variables)]
    outputs = model.stateless_call(squared, fixed, ones, training=False)[0]
    return float(np.sum(_common.to_numpy(outputs)))


def path_norm_over_margin(model, data, *, seed: int = 0, verbose: int = 0, **kwargs) -> float:
    """Σ_j f_{w²}(1)[j] / γ² (eq. 43, "path.norm.over.margin")."""
    return path_norm(model, data, seed=seed) / margin(model, data, seed=seed, **kwargs) ** 2
