"""Jiang et al.'s flatness measures: how far the weights can move before the training error rises
("Fantastic Generalization Measures and Where to Find Them", ICLR 2020, appendix C.6-C.7 and
D; equation numbers are the paper's).

Two searches give the radii every measure here is built from:

* σ′ (`pacbayes_sigma`): the largest σ such that Gaussian noise u ~ N(0, σ²I) (magnitude-aware:
  u_i ~ N(0, σ²w_i² + ε′²)) raises the training 0-1 error by the deviation d = 0.1 on average.
* α′ (`sharpness_alpha`): the largest α such that the worst u in the box |u_i| <= α
  (magnitude-aware: |u_i| <= α|w_i| + ε′), found by projected gradient ascent on the training
  loss, raises the training error by d.

Both are Jiang et al.'s bisection (their reference code's ``_pacbayes_sigma``:
nitarshan/robust-generalization-measures, ``data/generation/measures.py``): σ in [0, 2], at most
15 halvings, each step judged on fresh noise (10 draws for σ′; for α′ the worst of `restarts`
ascents), stopping once |deviation − d| < 0.01. ε′ = 1e-3. ``criterion="loss"`` judges the rise
of the data loss instead of the error (for models that are not classifiers, or to compare with
loss-based sharpness). Departures from the reference code, where it departs from the paper:
its noise std is ``sigma**2`` (and σ²w² + ε′² for the magnitude-aware noise), where the paper's
std is σ (and sqrt(σ²w² + ε′²)), which is followed here; its noise covers all parameters of the
BatchNorm-folded network, here all trainable variables of the network as it is. The reference
code has no sharpness measures: α′'s worst case follows the paper's description (gradient
ascent on the training loss, projected onto the box, from random starts), with the box's sign
steps and a start in half the box chosen here.

The bounds use the folded kernels w (ω entries, `norms.kernels`) and m, the number of samples.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from keras_pacgen import _validation as check
from keras_pacgen.measures import _common, norms

CRITERIA = ("error", "loss")
MAGNITUDE_EPSILON = 1e-3  # ε′


def _settings(criterion, deviation, tolerance, search_depth, upper):
    check.check_choice("criterion", criterion, CRITERIA)
    check.check_float("deviation", deviation, low=0.0, low_inclusive=False)
    check.check_float("tolerance", tolerance, low=0.0, low_inclusive=False)
    check.check_int("search_depth", search_depth, low=1)
    check.check_float("upper", upper, low=0.0, low_inclusive=False)


def _bisect(objective, criterion, deviation, tolerance, search_depth, upper, displaced, bar):
    """Jiang et al.'s bisection: the radius r in (0, upper] at which `displaced(r, step)` (the
    criterion after a perturbation of radius r) is the clean value plus `deviation`."""
    clean = objective.error() if criterion == "error" else objective.value()
    lower, radius = 0.0, upper / 2
    for step in range(search_depth):
        radius = (lower + upper) / 2
        displacement = abs(displaced(radius, step) - clean)
        _common.tick(bar, [("radius", radius), ("deviation", displacement)])
        if abs(displacement - deviation) < tolerance:
            break
        lower, upper = (lower, radius) if displacement > deviation else (radius, upper)
    return radius


def _gaussian(weights, z, sigma):
    """w + u, u = σ z ~ N(0, σ²)."""
    return [w + ops.cast(sigma, w.dtype) * n for w, n in zip(weights, z)]


def _magnitude_gaussian(weights, z, sigma):
    """w + u, u_k = sqrt(σ²w_k² + ε′²) z_k ~ N(0, σ²w_k² + ε′²) (magnitude-aware)."""
    return [w + ops.cast(ops.sqrt(sigma**2 * ops.square(w) + MAGNITUDE_EPSILON**2), w.dtype) * n
            for w, n in zip(weights, z)]


def _normal_draws(variables, seed, step, draws):
    """`draws` standard normal draws of every variable (stacked on a first axis), from numpy
    generators seeded by (seed, step, variable): the same on every backend."""
    return [np.random.default_rng(_common.seed_of(seed, step, k)).standard_normal(
        (draws, *v.shape)).astype(np.float32) for k, v in enumerate(variables)]


def pacbayes_sigma(model, data, *, magnitude_aware: bool = False, criterion: str = "error",
                   deviation: float = 0.1, tolerance: float = 0.01, search_depth: int = 15,
                   draws: int = 10, upper: float = 2.0, seed: int = 0,
                   include_regularization: bool = False, batch_size: int = 256,
                   max_samples: int | None = None, verbose: int = 0) -> float:
    """σ′ of Jiang et al.'s PAC-Bayes measures (appendix D, Algorithm 1): the largest σ with
    ``E_u[err(w + u)] − err(w) = deviation`` (± tolerance), the expectation a mean over `draws`
    fresh noise draws at each bisection step."""
    _settings(criterion, deviation, tolerance, search_depth, upper)
    check.check_int("draws", draws, low=1)
    objective = _common.objective(model, data, batch_size=batch_size, max_samples=max_samples,
                                  seed=seed, include_regularization=include_regularization)

    def compute():
        shift = _magnitude_gaussian if magnitude_aware else _gaussian

        def displaced(sigma, step):  # fresh draws at every step, in one compiled call per batch
            noises = _normal_draws(objective.variables, seed, step, draws)
            return float(np.mean(objective.values_at(shift, noises, (sigma,), criterion)))

        bar = _common.progress(verbose, search_depth, "step")
        return _bisect(objective, criterion, deviation, tolerance, search_depth, upper, displaced, bar)

    key = ("sigma", id(objective), magnitude_aware, criterion, deviation, tolerance, search_depth,
           draws, upper, seed)
    return _common.memo(key, compute)


def _box(weights, magnitude, alpha, epsilon):
    return [alpha * ops.abs(w) + epsilon if magnitude else alpha * ops.ones_like(w) for w in weights]


def _uniform_start(bounds, seed):
    """u uniform in half the box (so that the ascent has room to move)."""
    return [0.5 * b * keras.random.uniform(b.shape, -1.0, 1.0, dtype=b.dtype,
                                           seed=_common.seed_of(*seed, k))
            for k, b in enumerate(bounds)]


def _ascend(deltas, bounds, gradient, step_size):
    return [ops.clip(d + step_size * b * ops.sign(g), -b, b)
            for d, b, g in zip(deltas, bounds, gradient)]


def sharpness_alpha(model, data, *, magnitude_aware: bool = False, criterion: str = "error",
                    deviation: float = 0.1, tolerance: float = 0.01, search_depth: int = 15,
                    restarts: int = 1, ascent_steps: int = 10, step_size: float = 0.25,
                    upper: float = 2.0, seed: int = 0, include_regularization: bool = False,
                    batch_size: int = 256, max_samples: int | None = None, verbose: int = 0) -> float:
    """α′ of Jiang et al.'s sharpness measures (appendix D, Algorithm 2): the largest α whose
    worst case in the box raises the training error by `deviation` (± tolerance). The worst case
    of each bisection step is the largest error after `restarts` projected sign-gradient ascents
    on the training loss, each from a fresh uniform start in half the box, `ascent_steps` steps
    of `step_size` times the box (one minibatch of `batch_size` samples a step, in turn)."""
    _settings(criterion, deviation, tolerance, search_depth, upper)
    check.check_int("restarts", restarts, low=1)
    check.check_int("ascent_steps", ascent_steps, low=1)
    check.check_float("step_size", step_size, low=0.0, low_inclusive=False)
    objective = _common.objective(model, data, batch_size=batch_size, max_samples=max_samples,
                                  seed=seed, include_regularization=include_regularization)

    def compute():
        base = objective.weights
        batches = len(objective.batches)

        def displaced(alpha, step):
            bounds = _box(base, magnitude_aware, alpha, MAGNITUDE_EPSILON)
            worst = -math.inf
            for r in range(restarts):
                deltas = _uniform_start(bounds, (seed, step * restarts + r))
                for k in range(ascent_steps):
                    shifted = [w + d for w, d in zip(base, deltas)]
                    gradient = objective.batch_gradient(k % batches, shifted)
                    deltas = _ascend(deltas, bounds, gradient, step_size)
                shifted = [w + d for w, d in zip(base, deltas)]
                worst = max(worst, objective.error(shifted) if criterion == "error"
                            else objective.value(shifted))
            return worst

        bar = _common.progress(verbose, search_depth, "step")
        return _bisect(objective, criterion, deviation, tolerance, search_depth, upper, displaced, bar)

    key = ("alpha", id(objective), magnitude_aware, criterion, deviation, tolerance, search_depth,
           restarts, ascent_steps, step_size, upper, seed)
    return _common.memo(key, compute)


def _norms(model, initial_weights):
    """‖w‖², and ‖w − w⁰‖² and (w − w⁰)_i when `initial_weights` is given, ω."""
    w = np.concatenate([k.ravel() for k in norms.kernels(model)])
    if initial_weights is None:
        return float(w @ w), None, None, w.size
    difference = w - np.concatenate([k.ravel() for k in norms.kernels(model, initial_weights)])
    return float(w @ w), float(difference @ difference), difference, w.size


def _require(initial_weights, name):
    if initial_weights is None:
        raise ValueError(f"{name} needs the weights at initialisation: pass `initial_weights` (one "
                         "array per trainable variable, saved before training).")


def _num_samples(model, data, kwargs) -> int:
    """m, the number of samples the searches read."""
    keys = ("seed", "batch_size", "max_samples", "include_regularization")
    return _common.objective(model, data, **{k: kwargs[k] for k in keys if k in kwargs}).num_samples


def pacbayes_flatness(model, data, **kwargs) -> float:
    """1/σ′² (eq. 53, "pacbayes.flatness"). Keyword arguments: those of `pacbayes_sigma`."""
    return 1.0 / pacbayes_sigma(model, data, **kwargs) ** 2


def _bound(model, data, squared_norm, radius, scale, kwargs) -> float:
    """‖v‖² · scale / (4r²) + log(m/r) + 10, the form of eqs. 48-51."""
    return squared_norm * scale / (4 * radius**2) + math.log(_num_samples(model, data, kwargs) / radius) + 10


def pacbayes_init(model, data, *, initial_weights=None, **kwargs) -> float:
    """‖w − w⁰‖² / (4σ′²) + log(m/σ′) + 10 (eq. 48, "pacbayes.init")."""
    _require(initial_weights, "pacbayes_init")
    sigma = pacbayes_sigma(model, data, **kwargs)
    return _bound(model, data, _norms(model, initial_weights)[1], sigma, 1.0, kwargs)


def pacbayes_orig(model, data, **kwargs) -> float:
    """‖w‖² / (4σ′²) + log(m/σ′) + 10 (eq. 49, "pacbayes.orig")."""
    sigma = pacbayes_sigma(model, data, **kwargs)
    return _bound(model, data, _norms(model, None)[0], sigma, 1.0, kwargs)


def _mag_bound(model, data, radius, widen, initial_weights, origin: bool, kwargs) -> float:
    """(1/4) Σ_i log((ε′² + (r² + widen)‖v‖²/ω) / (ε′² + r²(w_i − w⁰_i)²)) + log(m/r) + 10, v = w
    (origin) or w − w⁰: eqs. 56-59 (the denominator is w − w⁰ in all four, as in the paper and
    its reference code)."""
    squared, distance, difference, omega = _norms(model, initial_weights)
    reference = squared if origin else distance
    eps2 = MAGNITUDE_EPSILON**2
    ratio = (eps2 + (radius**2 + widen) * reference / omega) / (eps2 + radius**2 * difference**2)
    return 0.25 * float(np.sum(np.log(ratio))) + math.log(_num_samples(model, data, kwargs) / radius) + 10


def pacbayes_mag_flatness(model, data, **kwargs) -> float:
    """1/σ′² with magnitude-aware noise (eq. 61, "pacbayes.mag.flatness")."""
    return 1.0 / pacbayes_sigma(model, data, magnitude_aware=True, **kwargs) ** 2


def pacbayes_mag_init(model, data, *, initial_weights=None, **kwargs) -> float:
    """Eq. 56, "pacbayes.mag.init" (see `_mag_bound`), σ′ magnitude-aware."""
    _require(initial_weights, "pacbayes_mag_init")
    sigma = pacbayes_sigma(model, data, magnitude_aware=True, **kwargs)
    return _mag_bound(model, data, sigma, 1.0, initial_weights, False, kwargs)


def pacbayes_mag_orig(model, data, *, initial_weights=None, **kwargs) -> float:
    """Eq. 57, "pacbayes.mag.orig" (see `_mag_bound`), σ′ magnitude-aware."""
    _require(initial_weights, "pacbayes_mag_orig")
    sigma = pacbayes_sigma(model, data, magnitude_aware=True, **kwargs)
    return _mag_bound(model, data, sigma, 1.0, initial_weights, True, kwargs)


def sharpness_flatness(model, data, **kwargs) -> float:
    """1/α′² (eq. 52, "sharpness.flatness"). Keyword arguments: those of `sharpness_alpha`."""
    return 1.0 / sharpness_alpha(model, data, **kwargs) ** 2


def sharpness_init(model, data, *, initial_weights=None, **kwargs) -> float:
    """‖w − w⁰‖² log(2ω) / (4α′²) + log(m/α′) + 10 (eq. 50, "sharpness.init"; the paper's log
    term reads log(m/σ), for which α′ stands here, as no σ is searched for this measure)."""
    _require(initial_weights, "sharpness_init")
    alpha = sharpness_alpha(model, data, **kwargs)
    _, distance, _, omega = _norms(model, initial_weights)
    return _bound(model, data, distance, alpha, math.log(2 * omega), kwargs)


def sharpness_orig(model, data, **kwargs) -> float:
    """‖w‖² log(2ω) / (4α′²) + log(m/α′) + 10 (eq. 51, "sharpness.orig")."""
    alpha = sharpness_alpha(model, data, **kwargs)
    squared, _, _, omega = _norms(model, None)
    return _bound(model, data, squared, alpha, math.log(2 * omega), kwargs)


def sharpness_mag_flatness(model, data, **kwargs) -> float:
    """1/α′² with the magnitude-aware box (eq. 60, "sharpness.mag.flatness")."""
    return 1.0 / sharpness_alpha(model, data, magnitude_aware=True, **kwargs) ** 2


def sharpness_mag_init(model, data, *, initial_weights=None, delta: float = 0.05, **kwargs) -> float:
    """Eq. 58, "sharpness.mag.init": `_mag_bound` with α′ (magnitude-aware) and
    ``widen = 4 log(2ω/δ)``; the paper leaves the confidence δ unset (`delta`, default 0.05)."""
    _require(initial_weights, "sharpness_mag_init")
    return _sharpness_mag(model, data, initial_weights, delta, False, kwargs)


def sharpness_mag_orig(model, data, *, initial_weights=None, delta: float = 0.05, **kwargs) -> float:
    """Eq. 59, "sharpness.mag.orig": as `sharpness_mag_init`, with ‖w‖² in the numerator."""
    _require(initial_weights, "sharpness_mag_orig")
    return _sharpness_mag(model, data, initial_weights, delta, True, kwargs)


def _sharpness_mag(model, data, initial_weights, delta, origin, kwargs) -> float:
    delta = check.check_float("delta", delta, low=0.0, high=1.0, low_inclusive=False)
    alpha = sharpness_alpha(model, data, magnitude_aware=True, **kwargs)
    omega = _norms(model, None)[3]
    return _mag_bound(model, data, alpha, 4 * math.log(2 * omega / delta), initial_weights, origin, kwargs)
