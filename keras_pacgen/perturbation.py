"""PertOPT (Algorithm 1 of Wang et al., AISTATS 2020) as a mixin for any Keras 3 optimizer.

One gradient per step, taken at the perturbed point ``w + u``; the wrapped optimizer updates the
clean ``w``. Between two steps the model variables hold ``w + u`` (that is how the next forward and
backward pass of ``fit`` runs at the perturbed point) and the optimizer keeps the clean ``w`` in a
slot. A step (``apply``) therefore:

1. restores the clean weights (exactly: they are copied back from the ``clean`` slot);
2. runs the wrapped optimizer's ``apply`` on them unchanged: loss-scale unscaling, gradient
   clipping, decoupled weight decay, ``update_step``, EMA and variable constraints all act on the
   clean weights, as they would without the perturbation;
3. with the gradient the wrapped ``update_step`` received and the updated weights, computes
   (Algorithm 1 lines 14 and 7-9, with ``t`` already advanced) the second moment
   ``h_{t+1} = β1 h_t + (1 - β1) g_{t+1}²``, the mask ``1{|g_{t+1}| < β2}`` and::

       ρ[i] = |h_t[i] - h_{t-1}[i]| / ‖w_t - w_{t-1}‖
       κ[i] = γ / log(1 + epoch) · |w_{t-1}[i]| + ε
       σ[i] = min( 1 / (log(1 + epoch) · sqrt(η (h_t[i] + ρ[i] κ[i]))),  κ[i] ) · 1{|g_t[i]| < β2}

   draws ``u = σ ⊙ r`` with ``r ~ U(-1, 1)`` from (seed, step, variable) (line 11) and leaves the
   variable holding ``w + u``.

The first step is unperturbed (σ starts at 0).

Decisions on the ambiguities of Algorithm 1 (SPEC section 4), each documented and, where a user
could want the other reading, a constructor argument:

* ``rho_norm="global"``: ``‖w_t - w_{t-1}‖`` is the Euclidean norm over all trainable parameters
  (the theory's reading, ρ is a Lipschitz constant of the whole Hessian); ``"variable"`` uses the
  norm over the variable's own tensor. When the weights did not move (norm 0) ρ is 0.
* ``kappa_weights="previous"``: κ uses the clean weights before the latest update, ``w_{t-1}``
  (the literal reading); ``"current"`` uses ``w_t``.
* The mask ``1{|g_t| < β2}`` uses the latest gradient, the one the step just applied (the literal
  reading). ``g`` is the gradient as the wrapped ``update_step`` receives it: after loss-scale
  unscaling, clipping and the cross-replica all-reduce. Without clipping that is the paper's
  ``∇L̂(w_t + u_t)``.
* The epoch starts at 1. It comes from ``steps_per_epoch`` when given
  (``epoch = iterations // steps_per_epoch + 1``, exact for every step) and otherwise from a
  variable that :class:`keras_pacgen.PerturbationCallback` (or ``PacGenCallback``) sets in
  ``on_epoch_begin``; then the σ drawn at the last step of an epoch, which perturbs the first step
  of the next, still uses the finished epoch's factor. Without either the epoch stays 1 and a
  warning says so. Either way the counter lives in a variable: one trace serves the whole run.
* Noise is stateless: u depends on (seed, step, variable index) only. Replicas draw the same u,
  runs with the same seed are bit-identical, resumed runs continue exactly.
* Non-finite gradients (``skip_nonfinite=True``): the whole step is skipped, as
  ``LossScaleOptimizer`` does; weights, u, h, ρ and σ keep their values and
  ``optimizer.nonfinite_steps`` counts the skipped steps. Without a distribution strategy the
  step runs speculatively and is undone (see ``_speculative_apply``): no update waits for the
  check of the last gradient. While it runs, TensorFlow keeps the previous values of the
  variables the step writes (about 14 bytes per parameter for Adam) until the step ends.

For Adam-family optimizers whose second-moment decay equals ``hessian_decay`` (Adam's default
``beta_2=0.999`` is Algorithm 1's β1) and that clip nothing, h *is* the wrapped optimizer's second
moment ``v``: the same number, so it is not stored twice.
"""

from __future__ import annotations

import contextlib
import random
import warnings
from typing import Any

import keras
import tensorflow as tf
from keras import ops
from tensorflow.python.ops import control_flow_util

from keras_pacgen import _validation as check
from keras_pacgen import native as native_kernels
from keras_pacgen.noise import stream_key, uniform_unit

PERTURBATION_DEFAULTS: dict[str, Any] = {
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

_NO_CALLBACK_WARNING = (
    "{name}: no PerturbationCallback or PacGenCallback is attached, so between training steps the "
    "model holds the perturbed weights w + u: validation inside fit(), callbacks that save or "
    "evaluate the model, and evaluate()/predict()/save() after train_on_batch() see perturbed "
    "weights. fit() restores the clean weights when it returns. Add "
    "keras_pacgen.PerturbationCallback() to fit(callbacks=[...]) (first in the list), or wrap your "
    "own evaluation in `with optimizer.clean_weights(): ...`.{epoch_note}"
)
_EPOCH_NOTE = (
    " The epoch counter of the log(1 + epoch) factors stays at 1: pass steps_per_epoch= or use "
    "the callback."
)


def neighbourhood_radius(weights, *, gamma: float, epsilon: float, log_epoch):
    """κ = γ / log(1 + epoch) · |w| + ε (Algorithm 1 line 8), clipped to the dtype's maximum."""
    weights = tf.convert_to_tensor(weights)
    kappa = (gamma / tf.cast(log_epoch, weights.dtype)) * tf.abs(weights) + epsilon
    return tf.minimum(kappa, weights.dtype.max)


def perturbation_scale(hessian, rho, kappa, mask, *, eta: float, log_epoch):
    """σ of Algorithm 1 line 9, for tensors of one shape::

        σ = min( 1 / (log(1 + epoch) · sqrt(η (h + ρ κ))),  κ ) · mask

    Written as ``min(sqrt(1 / (η (h + ρ κ))) / log(1 + epoch), κ)``: h = ρ = 0 gives
    sqrt(1/0) = ∞ and so κ, an overflowing η (h + ρ κ) gives 0; for finite h >= 0, ρ >= 0 and
    κ > 0, σ is finite and 0 <= σ <= κ. Not ``1 / sqrt(...)``: XLA rewrites that into an rsqrt,
    which its CPU backend computes about four times slower than a division and a square root.
    """
    inverse_log_epoch = 1.0 / tf.cast(log_epoch, kappa.dtype)
    bound = tf.sqrt(1.0 / (eta * (hessian + rho * kappa))) * inverse_log_epoch
    return tf.minimum(bound, kappa) * mask


def _hessian_difference(gradient, h, h_old, *, decay: float):
    """(d, c) with h_{t+1} − h_t = c · d (Algorithm 1 line 14), c > 0 a constant, from ``h``
    = h_{t+1} = β h_t + (1 − β) g², already updated (by the wrapped optimizer when h is its
    second moment, else by `_next_hessian`): d = g² − h_{t+1}, c = (1 − β)/β, no copy of h_t
    needed. For β = 0 that cannot be inverted and ``h_old`` is h_t: d = h − h_old, c = 1."""
    scale = _hessian_difference_scale(h_old, decay)
    if h_old is not None:
        return h - h_old, scale
    return tf.square(gradient) - h, scale


def _hessian_difference_scale(h_old, decay: float) -> float:
    """The constant c of `_hessian_difference`."""
    return 1.0 if h_old is not None else (1.0 - decay) / decay


def _next_hessian(gradient, h, *, decay: float, xla: bool):
    """h in its own slot: (h_{t+1}, max_i |h_{t+1}[i] − h_t[i]|) from h_t (Algorithm 1 line 14),
    with the one difference g² − h_t that both need."""
    difference = tf.square(gradient) - h
    return h + difference * (1.0 - decay), _max_abs(difference, xla=xla) * (1.0 - decay)


def _max_change(gradient, h, h_old, *, decay: float, xla: bool):
    """max_i |h_{t+1}[i] − h_t[i]|, the numerator of the variable's ρ, with the constant taken
    out of the max (the same number: rounding is monotonic), one pass fewer."""
    difference, scale = _hessian_difference(gradient, h, h_old, decay=decay)
    return _max_abs(difference, xla=xla) * scale


def _max_abs(x, *, xla: bool):
    """max_i |x[i]|."""
    if xla:
        return tf.reduce_max(_lanes(tf.reduce_max, tf.abs(x), 0.0))
    return tf.maximum(tf.reduce_max(x), -tf.reduce_min(x))  # two reads, no |·| copy


def _new_perturbation(gradient, w_new, w_prev, h, h_old, inverse_norm, log_epoch, step, index, *,
                      decay, threshold, eta, gamma, epsilon, seed, kappa_previous, sigma_dtype):
    """Algorithm 1 lines 7-11 for one variable, from h_{t+1} (``h``): returns (σ, w_t + u).

    ρ[i] = |h_{t+1}[i] − h_t[i]| / ‖w_t − w_{t−1}‖ (``inverse_norm`` is 1/‖·‖, 0 for a zero
    norm), κ from ``w_prev`` or ``w_new``, σ rounded to bfloat16 (see noise.py), u = σ ⊙ r.
    """
    dtype = w_new.dtype
    gradient, h = tf.cast(gradient, dtype), tf.cast(h, dtype)
    difference, scale = _hessian_difference(gradient, h, h_old, decay=decay)
    rho = tf.abs(difference) * scale * tf.cast(inverse_norm, dtype)
    kappa = neighbourhood_radius(
        w_prev if kappa_previous else w_new, gamma=gamma, epsilon=epsilon, log_epoch=log_epoch
    )
    mask = tf.cast(tf.abs(gradient) < threshold, dtype)
    sigma = tf.cast(perturbation_scale(h, rho, kappa, mask, eta=eta, log_epoch=log_epoch), tf.bfloat16)
    noisy = _noisy(w_new, sigma, step, index, seed=seed)
    return tf.cast(sigma, sigma_dtype), noisy


def _perturbation(sigma, shape, dtype, step, index, *, seed):
    """u = σ ⊙ r (Algorithm 1 line 11). σ has 8 significant bits, r 16: the product is exact."""
    return tf.cast(sigma, dtype) * uniform_unit(shape, dtype, seed, step, index)


def _noisy(w, sigma, step, index, *, seed):
    """w + u, rounded once (u is exact), the same bits inside and outside an XLA step."""
    return w + _perturbation(sigma, w.shape, w.dtype, step, index, seed=seed)


def _lanes(reduce, x, identity: float, lanes: int = 256):
    """`reduce` over all of x down to `lanes` partial results, which the caller reduces.

    For XLA only: its CPU backend reduces a long vector one element after another (it may not
    reorder float additions) and does not vectorise that; reducing 256 interleaved lanes it does,
    about 3x faster. TensorFlow's own reductions are faster without it.
    """
    x = tf.reshape(x, (-1,))
    if x.shape[0] < 4 * lanes:
        return reduce(x, keepdims=True) if x.shape[0] else tf.fill((1,), tf.cast(identity, x.dtype))
    x = tf.pad(x, [[0, -x.shape[0] % lanes]], constant_values=identity)
    return reduce(tf.reshape(x, (-1, lanes)), axis=0)


def _squared_distance(a, b, *, xla: bool):
    """‖a − b‖² in float32."""
    difference = tf.cast(a, tf.float32) - tf.cast(b, tf.float32)
    if xla:
        return tf.reduce_sum(_lanes(tf.reduce_sum, tf.square(difference), 0.0))
    return 2.0 * tf.nn.l2_loss(difference)  # one pass, no squared copy


def _in_xla_context() -> bool:
    """Whether ops built now are compiled by XLA (a ``jit_compile=True`` train step)."""
    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def _per_variable(values: list, count: int) -> list:
    """`values` for each of `count` variables: one value shared by all, or one per variable."""
    return values * count if len(values) == 1 else values


def _new_perturbations(gradients, news, olds, hs, h_olds, inverse_norms, log_epoch, step, *,
                       indices, **settings):
    """`_new_perturbation` for the variables at `indices` (Python ints: constants of the trace,
    not arguments). One inverse norm for all (``rho_norm="global"``) or one per variable."""
    inverse_norms = _per_variable(inverse_norms, len(indices))
    outputs = [
        _new_perturbation(g, w, o, h, ho, n, log_epoch, step, i, **settings)
        for g, w, o, h, ho, n, i in zip(gradients, news, olds, hs, h_olds, inverse_norms, indices)
    ]
    return [list(column) for column in zip(*outputs)]


# The elementwise work of a step that needs ‖w_t − w_{t−1}‖ (σ and w + u) runs as one XLA kernel
# per device even when the train step is not compiled: without fusion each elementwise op would be
# one more pass over the weights. (On a CPU outside XLA, float32 variables use the native kernels
# of keras_pacgen.native instead: the same formulas, one loop for both outputs and no XLA call;
# see `_native_perturbations`. This kernel is the one for XLA-compiled steps, GPUs and the rest.) It takes the lists of all variables of a device and returns new
# tensors rather than assign variables it also reads (which makes XLA copy them first). The two
# reductions stay TensorFlow ops, one per variable: they run while the backward pass still
# computes the other gradients, which a kernel over all variables would wait for. So does h's
# update when h has a slot of its own: in the kernel it would be one more loop (XLA gives each
# output its own) after the last gradient. Calling XLA from a graph that is not compiled costs per
# argument (the executable's lookup and the buffers of each input), so what is the same for every
# variable goes in once: the variable indices as constants of the trace, the global norm as one
# scalar.
_fused = {
    name: tf.function(fn, jit_compile=True, autograph=False)
    for name, fn in (
        ("new_perturbations", _new_perturbations),
        ("noisy", _noisy),
    )
}


def _native_ops(device: str, weights: list):
    """The native kernels (see `keras_pacgen.native`) when they apply to these variables: float32
    on a CPU, outside XLA; else None."""
    if any(w.dtype != tf.float32 for w in weights):
        return None
    device_type = tf.DeviceSpec.from_string(device or "").device_type
    if device_type not in (None, "CPU") or (device_type is None and tf.config.list_logical_devices("GPU")):
        return None
    return native_kernels.ops()


def _native_perturbations(native, gradients, news, olds, hs, h_olds, inverse_norms, log_epoch, step,
                          *, indices, decay, threshold, eta, gamma, epsilon, seed, kappa_previous,
                          sigma_dtype):
    """`_new_perturbations` with the native kernel: σ and w + u of each variable in one loop."""
    inverse_log_epoch = 1.0 / log_epoch
    kappa_scale = gamma / log_epoch
    outputs = []
    for g, w, o, h, h_old, inverse_norm, idx in zip(
        gradients, news, olds, hs, h_olds, _per_variable(inverse_norms, len(indices)), indices
    ):
        sigma, noisy = native.pacgen_perturb(
            g, h, w, o if kappa_previous else w,
            tf.stack([inverse_norm, kappa_scale, inverse_log_epoch]), stream_key(seed, step, idx),
            [] if h_old is None else [h_old], scale=_hessian_difference_scale(h_old, decay),
            eta=eta, epsilon=epsilon, threshold=threshold,
        )
        outputs.append((tf.cast(sigma, sigma_dtype), noisy))
    return [list(column) for column in zip(*outputs)]


def _replica_update(variables_and_fns):
    """Run `fn(variable_component)` on every device copy of each variable (any tf.distribute)."""

    def merge_fn(distribution, pairs):
        for var, fn in pairs:
            distribution.extended.update(var, fn, group=False)

    strategy = tf.distribute.get_strategy()
    if tf.distribute.in_cross_replica_context():
        merge_fn(strategy, variables_and_fns)
    else:
        # The pairs travel in the closure, not as merge_call arguments: MirroredStrategy would
        # regroup per-replica closures. The first replica's closures run on every device; what
        # they capture (a norm, the step) is identical on all replicas.
        tf.__internal__.distribute.interim.maybe_merge_call(
            lambda distribution: merge_fn(distribution, variables_and_fns), strategy
        )


def _tf_var(variable):
    return variable.value if isinstance(variable, keras.Variable) else variable


def _local(variable, device):
    """The copy of a (possibly distributed) variable that lives on `device`."""
    variable = _tf_var(variable)
    if not isinstance(variable, tf.distribute.DistributedValues):
        return variable
    for component in tf.distribute.get_strategy().experimental_local_results(variable):
        if component.device == device:
            return component
    raise ValueError(f"{variable.name} has no copy on {device}")


class PerturbationMixin:
    """Turns a Keras optimizer ``OPT`` into PertOPT (Algorithm 1). See the module docstring.

    Perturbation arguments (keyword-only; symbols of the paper):

    * ``eta`` (η > 0): the PAC-Bayes trade-off. Larger η, smaller perturbations
      (σ ∝ 1/sqrt(η h)). The paper used η = 0.01 with Adam on CIFAR and η = 100 with SGD on
      Tiny ImageNet.
    * ``gamma`` (γ >= 0): relative radius of the neighbourhood, κ = γ/log(1+epoch)·|w| + ε.
      Algorithm 1's default 0.1; the paper's experiments used 10 (CIFAR) and 1 (Tiny ImageNet).
    * ``kappa_epsilon`` (ε > 0): absolute radius added to κ. Default 1e-5.
    * ``grad_threshold`` (β2 >= 0): only coordinates with ``|g| < β2`` are perturbed. 0 perturbs
      nothing (the wrapped optimizer exactly). Default 0.1.
    * ``hessian_decay`` (β1 in [0, 1)): decay of the second-moment (Hessian diagonal) estimate
      h. Default 0.999.
    * ``seed``: integer seed of the stateless noise; None draws one at construction (it is then
      part of ``get_config()``, so a saved optimizer continues with the same noise).
    * ``steps_per_epoch``: steps per epoch, for an exact epoch counter inside the step; None takes
      the epoch from the callback.
    * ``rho_norm``: ``"global"`` or ``"variable"``, the norm of ``w_t - w_{t-1}`` in ρ.
    * ``kappa_weights``: ``"previous"`` (``w_{t-1}``) or ``"current"`` (``w_t``) in κ.
    * ``skip_nonfinite``: skip a step whose gradients contain NaN or Inf (default True).
    """

    # ("slot list attribute", "decay attribute") of a second moment that equals h; see build().
    _second_moment_source: tuple[str, str] | None = None

    def __init__(
        self,
        *args,
        eta: float = PERTURBATION_DEFAULTS["eta"],
        gamma: float = PERTURBATION_DEFAULTS["gamma"],
        kappa_epsilon: float = PERTURBATION_DEFAULTS["kappa_epsilon"],
        grad_threshold: float = PERTURBATION_DEFAULTS["grad_threshold"],
        hessian_decay: float = PERTURBATION_DEFAULTS["hessian_decay"],
        seed: int | None = None,
        steps_per_epoch: int | None = None,
        rho_norm: str = "global",
        kappa_weights: str = "previous",
        skip_nonfinite: bool = True,
        **kwargs,
    ):
        # Validate before the base class creates any variable.
        if seed is None:
            seed = random.SystemRandom().randrange(2**31)
        seed = check.check_int("seed", seed, low=0)
        if seed >= 2**40:
            raise ValueError(f"`seed` must be an integer in [0, 2**40). Received: seed={seed!r}")
        if not isinstance(skip_nonfinite, bool):
            raise ValueError(
                f"`skip_nonfinite` must be True or False. Received: skip_nonfinite={skip_nonfinite!r}"
            )
        if kwargs.get("gradient_accumulation_steps"):
            raise ValueError(
                "`gradient_accumulation_steps` is not supported by the perturbed optimizers: "
                "Algorithm 1 draws a new perturbation at every optimizer update. Use a larger "
                "batch instead. Received: gradient_accumulation_steps="
                f"{kwargs['gradient_accumulation_steps']}"
            )
        settings = {
            "eta": check.check_float("eta", eta, low=0.0, low_inclusive=False),
            "gamma": check.check_float("gamma", gamma, low=0.0),
            "kappa_epsilon": check.check_float(
                "kappa_epsilon", kappa_epsilon, low=0.0, low_inclusive=False
            ),
            "grad_threshold": check.check_float("grad_threshold", grad_threshold, low=0.0),
            "hessian_decay": check.check_float(
                "hessian_decay", hessian_decay, low=0.0, high=1.0, high_inclusive=False
            ),
            "seed": seed,
            "steps_per_epoch": check.check_int(
                "steps_per_epoch", steps_per_epoch, low=1, allow_none=True
            ),
            "rho_norm": check.check_choice("rho_norm", rho_norm, ("global", "variable")),
            "kappa_weights": check.check_choice(
                "kappa_weights", kappa_weights, ("previous", "current")
            ),
            "skip_nonfinite": skip_nonfinite,
        }
        super().__init__(*args, **kwargs)
        for key, value in settings.items():
            setattr(self, key, value)
        self._clean_weights_guards = 0  # callbacks that keep evaluation on clean weights
        self._epoch_is_driven = False  # set_epoch() was called
        self._warned_no_callback = False
        self._remove_fn = None
        self._reapply_fn = None
        self._step_gradients = {}  # (variable index, device) -> (gradient, copy of old h or None)
        self._out_of_place = frozenset()  # ids of variables that assign_add/assign_sub rewrite
        # variable index -> "its gradient is finite" from the native kernels, during a
        # speculative step (None: not wanted)
        self._native_checks = None

    # ------------------------------------------------------------------ state
    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._epoch = self.add_variable(
            (), initializer="ones", dtype="int32", name="perturbation_epoch"
        )
        self._perturbation_applied = self.add_variable(
            (), initializer="zeros", dtype="int32", name="perturbation_applied"
        )
        self._nonfinite_steps = self.add_variable(
            (), initializer="zeros", dtype="int32", name="nonfinite_steps"
        )
        shared = self._shared_second_moment()
        self._hessian_is_shared = shared is not None
        self._hessians = shared if shared is not None else self.add_optimizer_variables(var_list, "hessian")
        # σ in bfloat16 (see noise.py: it makes u = σ·r exact); ρ one number per variable, the max
        # over its coordinates (the per-coordinate ρ[i] only lives inside the step).
        # σ values are always rounded to bfloat16; MultiWorkerMirroredStrategy cannot broadcast a
        # bfloat16 variable (CollectiveBcastSend), so there they sit in a float32 slot.
        collective = isinstance(self._distribution_strategy, tf.distribute.MultiWorkerMirroredStrategy)
        sigma_dtype = "float32" if collective else "bfloat16"
        self._sigmas, self._rhos = [], []
        for var in var_list:
            if self._overwrite_variable_with_gradient(var):
                self._sigmas.append(None)
                self._rhos.append(None)
                continue
            prefix = getattr(var, "path", var.name).replace("/", "_")
            self._sigmas.append(
                self.add_variable(var.shape, dtype=sigma_dtype, name=f"{prefix}_sigma",
                                  layout=getattr(var, "_layout", None))
            )
            self._rhos.append(self.add_variable((), dtype="float32", name=f"{prefix}_rho"))
        self._clean_weights = self.add_optimizer_variables(var_list, "clean")

    def _shared_second_moment(self):
        if self._second_moment_source is None:
            return None
        slots_attr, decay_attr = self._second_moment_source
        clips = any(
            getattr(self, a, None) is not None for a in ("clipnorm", "clipvalue", "global_clipnorm")
        )
        if clips or float(getattr(self, decay_attr)) != self.hessian_decay:
            return None
        return getattr(self, slots_attr, None)

    @property
    def nonfinite_steps(self):
        """Number of steps skipped because a gradient was NaN or Inf."""
        return self._nonfinite_steps

    @property
    def epoch(self):
        """The epoch counter (starting at 1) of the log(1 + epoch) factors of Algorithm 1."""
        if self.steps_per_epoch:
            return ops.floor_divide(self.iterations, self.steps_per_epoch) + 1
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch counter (1-based) used when `steps_per_epoch` is None."""
        epoch = check.check_int("epoch", epoch, low=1)
        self._epoch_is_driven = True
        if self.built:
            self._epoch.assign(epoch)
        else:
            self._pending_epoch = epoch

    # ------------------------------------------------------------------ step
    def update_step(self, gradient, variable, learning_rate):
        """The wrapped update on the clean weights; notes the gradient for h, ρ and the mask.

        h, ρ and σ are computed after the whole update (``_perturb``): ρ needs
        ‖w_t − w_{t−1}‖ over all variables, and one pass per variable then does all of it.
        """
        idx = self._get_variable_index(variable)
        if not self._is_perturbed(idx):
            return super().update_step(gradient, variable, learning_rate)
        device, h_old = _tf_var(variable).device, None
        if self._hessian_is_shared and self.hessian_decay == 0:
            # β1 = 0: the old h cannot be recovered from the new one; keep a copy
            h_old = tf.identity(_local(self._hessians[idx], device))
        super().update_step(gradient, variable, learning_rate)
        dense = ops.cast(ops.convert_to_tensor(gradient), variable.dtype)
        self._step_gradients[(idx, device)] = (dense, h_old)

    def apply(self, grads, trainable_variables=None):
        if not self.built:
            if trainable_variables is None:
                raise ValueError(
                    "When passing `grads` without `variables`, the optimizer must already be "
                    "built on a list of variables. Call `optimizer.build(trainable_variables)`."
                )
            with keras.name_scope(self.name, caller=self):
                self.build(list(trainable_variables))
            self.built = True
        if hasattr(self, "_pending_epoch"):
            self._epoch.assign(self._pending_epoch)
            del self._pending_epoch
        variables = list(trainable_variables) if trainable_variables is not None else list(
            self._trainable_variables
        )
        grads = list(grads)
        if not grads:
            return
        self._warn_if_unguarded()
        # The clean weights come back before anything waits for the gradients: the restore only
        # has to follow the forward pass, so it overlaps the backward pass. A skipped step puts
        # the same w + u back (`_skip_step`).
        self._restore_for_step(variables)
        if not self.skip_nonfinite:
            self._perturbed_apply(grads, variables)
        elif not tf.distribute.has_strategy():
            self._speculative_apply(grads, variables)
        elif not (
            tf.__internal__.distribute.strategy_supports_no_merge_call()
        ) and not tf.distribute.in_cross_replica_context():
            self._distributed_guarded_apply(grads, variables)
        else:
            ops.cond(
                self._all_finite(grads),
                lambda: self._perturbed_apply(grads, variables),
                lambda: self._skip_step(variables),
            )

    def _all_finite(self, grads, variables=None):
        """Whether every gradient is finite. Plain TensorFlow ops, one check per gradient: each
        runs as soon as its gradient exists (during the backward pass) and TensorFlow's reductions
        use every core; only the final `all` waits for the last gradient. A gradient that the
        native kernels already read in this step (`_native_checks`) takes their check instead."""
        known = self._native_checks or {}

        def check(g, var):
            if isinstance(g, tf.IndexedSlices):
                return tf.reduce_all(tf.math.is_finite(g.values))
            found = known.get(self._get_variable_index(var)) if var is not None else None
            return found if found is not None else tf.reduce_all(tf.math.is_finite(g))

        variables = variables if variables is not None else [None] * len(grads)
        checks = [check(g, var) for g, var in zip(grads, variables) if g is not None]
        return tf.reduce_all(tf.stack(checks)) if checks else tf.constant(True)

    def _all_reduce_sum_gradients(self, grads_and_vars):
        # Without a distribution strategy the all-reduce is the identity, but Keras's version
        # passes all gradients through one IdentityN, so no variable could be updated before
        # the last gradient exists (plain Adam's graph optimiser removes that node; ours cannot).
        if not tf.distribute.has_strategy():
            return list(grads_and_vars)
        return super()._all_reduce_sum_gradients(grads_and_vars)

    def _speculative_apply(self, grads, variables):
        """The guarded step without a distribution strategy: the whole step (the wrapped update,
        then h, ρ, σ and w + u) runs without waiting for the finite check, each variable's update
        as soon as its gradient exists (overlapping the backward pass, as an unguarded optimizer
        does), and is undone when a gradient was not finite. The undo needs no stored copy: the
        values read here are kept by TensorFlow's copy-on-write while the step writes new ones.
        Only the undo, an empty branch on a finite step, waits for the check."""
        # overwrite_with_gradient variables: no clean slot to restore them from
        kept = [var for var in variables if not self._is_perturbed(self._get_variable_index(var))]
        counters = (id(self._nonfinite_steps), id(self._epoch))
        state = [var for var in self.variables if id(var) not in counters] + kept
        saved = [tf.identity(_tf_var(var)) for var in state]
        self._out_of_place = frozenset(id(_tf_var(var)) for var in state)
        self._native_checks = {} if self._update_step_sees_the_gradients() else None
        try:  # _perturb's own writes are plain assigns: only the wrapped update is affected
            self._perturbed_apply(grads, variables)
            finite = self._all_finite(grads, variables)
        finally:
            self._out_of_place = frozenset()
            self._native_checks = None
        ops.cond(finite, lambda: None, lambda: self._undo_step(state, saved, variables))

    def _update_step_sees_the_gradients(self) -> bool:
        """Whether `update_step` receives the gradients `apply` was given, up to dtype: then a
        gradient it gets is finite exactly when the one given is (no clipping, no loss scale)."""
        return getattr(self, "loss_scale_factor", None) is None and all(
            getattr(self, a, None) is None for a in ("clipnorm", "clipvalue", "global_clipnorm")
        )

    def assign_add(self, variable, value):
        """As the wrapped optimizer's; see `_out_of_place_update`."""
        return self._out_of_place_update(variable, value, tf.add, super().assign_add)

    def assign_sub(self, variable, value):
        """As the wrapped optimizer's; see `_out_of_place_update`."""
        return self._out_of_place_update(variable, value, tf.subtract, super().assign_sub)

    def _out_of_place_update(self, variable, value, combine, in_place):
        """During a speculative step a kept variable gets a new buffer (``v.assign(v ± value)``,
        the same bits): updating it in place would first copy the buffer that the undo keeps."""
        target = _tf_var(variable)
        if id(target) in self._out_of_place and not isinstance(value, tf.IndexedSlices):
            return target.assign(combine(tf.identity(target), tf.cast(value, target.dtype)))
        return in_place(variable, value)

    def _undo_step(self, state, saved, variables):
        """A speculative step whose gradients were not finite: every variable it wrote (the
        wrapped optimizer's, the clean weights, h, ρ, σ, the step counter) gets its value back."""
        for var, value in zip(state, saved):
            _tf_var(var).assign(value)
        self._skip_step(variables)

    def _skip_step(self, variables):
        """A skipped step: counted, and the model variables hold w + u again, re-drawn from the
        clean slot, σ and the step counter, all as before the step, so u is the same bits (or w
        when no perturbation is applied: the restore made the clean slot equal to it)."""
        self._nonfinite_steps.assign_add(1)
        applied = ops.greater(self._perturbation_applied, 0)

        def redraw(idx):
            def fn(v):
                clean = tf.identity(_local(self._clean_weights[idx], v.device))
                v.assign(tf.where(applied, self._noisy_weights(idx, clean, v.device), clean))

            return fn

        _replica_update([
            (_tf_var(self._trainable_variables[idx]), redraw(idx))
            for idx in self._perturbed_indices(variables)
        ])

    def _distributed_guarded_apply(self, grads, variables):
        # As LossScaleOptimizer: the cond must live in the cross-replica context. A step is skipped
        # on every replica when any replica's gradient is not finite (its all-reduce would not be).
        def cross_replica(distribution, grads, variables):
            per_replica = distribution.extended.call_for_each_replica(self._all_finite, args=(grads,))
            finite = tf.reduce_all(tf.stack(distribution.experimental_local_results(per_replica)))

            def step():
                distribution.extended.call_for_each_replica(
                    self._perturbed_apply, args=(grads, variables)
                )

            ops.cond(finite, step, lambda: self._skip_step(variables))

        tf.distribute.get_replica_context().merge_call(cross_replica, args=(grads, variables))

    def _perturbed_apply(self, grads, variables):
        """The wrapped optimizer's step on the (already restored) clean weights, then h, ρ, σ
        and w + u for the next step."""
        super().apply(grads, variables)
        self._perturb(variables, [g is not None for g in grads])

    def _is_perturbed(self, idx) -> bool:
        """Whether variable `idx` carries a perturbation: all but those updated by
        ``overwrite_with_gradient``, which have no clean, h, ρ or σ slot."""
        return self._clean_weights[idx] is not None

    def _perturbed_indices(self, variables):
        """Indices of the variables that carry a perturbation."""
        indices = [self._get_variable_index(var) for var in variables]
        return [idx for idx in indices if self._is_perturbed(idx)]

    def _restore_for_step(self, variables):
        """w_t ← the clean weights (an exact copy). When no perturbation is applied (first step,
        after ``remove_perturbation()``, after ``set_weights()``) the variable holds them already
        and the clean slot takes them from it. One branch for all the variables of a device."""
        applied = ops.greater(self._perturbation_applied, 0)
        indices = self._perturbed_indices(variables)
        if not indices:
            return

        def fn(v):
            device = v.device
            targets = [_local(self._trainable_variables[idx], device) for idx in indices]
            cleans = [_local(self._clean_weights[idx], device) for idx in indices]

            def restore():
                for target, clean in zip(targets, cleans):
                    target.assign(clean)

            def adopt():
                for target, clean in zip(targets, cleans):
                    clean.assign(target)

            tf.cond(applied, restore, adopt)

        _replica_update([(_tf_var(self._trainable_variables[indices[0]]), fn)])

    def _log_epoch(self):
        return ops.log1p(ops.cast(self.epoch, "float32"))

    def _perturb(self, variables, has_grad):
        """Algorithm 1 lines 7-11 and 14 for the next step; leaves the variables holding w + u.

        On each device, all variables at once: h_{t+1} (when it has a slot of its own) and the
        reductions (‖w_t − w_{t−1}‖² and max|Δh| per variable), each as soon as its variable is
        updated, then σ and w + u.
        """
        step = tf.identity(_tf_var(self._iterations))  # already advanced: the draw's step
        log_epoch = self._log_epoch()
        with_grad = {self._get_variable_index(var) for var, g in zip(variables, has_grad) if g}
        entries = [(idx, idx in with_grad) for idx in self._perturbed_indices(variables)]
        updates = [(_tf_var(self._perturbation_applied), lambda a: a.assign(1))]
        if entries:
            first = _tf_var(self._trainable_variables[entries[0][0]])
            updates.insert(0, (first, lambda v: self._perturb_device(entries, v.device, log_epoch, step)))
        _replica_update(updates)
        self._step_gradients.clear()

    def _perturb_device(self, entries, device, log_epoch, step):
        """The step's h, ρ, σ and w + u for the copies of all variables on `device`."""
        def local(slots, idx):
            return _local(slots[idx], device)

        updated = [idx for idx, has_grad in entries if has_grad]
        missing = [idx for idx, has_grad in entries if not has_grad]

        for idx in missing:  # no gradient this step: clean, unperturbed, no estimate
            local(self._clean_weights, idx).assign(local(self._trainable_variables, idx))
            local(self._sigmas, idx).assign(tf.zeros_like(local(self._sigmas, idx)))
            local(self._rhos, idx).assign(tf.zeros(()))
        if not updated:
            return
        inputs = [self._step_inputs(idx, device) for idx in updated]
        gradients, h_olds = [g for g, _ in inputs], [h_old for _, h_old in inputs]
        news = [tf.identity(local(self._trainable_variables, idx)) for idx in updated]
        olds = [tf.identity(local(self._clean_weights, idx)) for idx in updated]
        hs = [tf.identity(local(self._hessians, idx)) for idx in updated]
        # One reduction per variable, so that each runs as soon as its variable is updated.
        xla = _in_xla_context()
        native = None if xla else _native_ops(device, news)
        if native is not None:
            hs, h_olds, max_changes, squares, finite = self._native_statistics(
                native, gradients, news, olds, hs, h_olds
            )
            if self._native_checks is not None:
                for idx, check in zip(updated, finite):
                    self._native_checks[idx] = check
        else:
            hs, h_olds, max_changes, squares = self._statistics(gradients, news, olds, hs, h_olds, xla)
        if self.rho_norm == "variable":
            inverse_norms = [tf.math.divide_no_nan(1.0, tf.sqrt(s)) for s in squares]
        else:
            inverse_norms = [tf.math.divide_no_nan(1.0, tf.sqrt(tf.add_n(squares)))]
        settings = dict(
            decay=self.hessian_decay, threshold=self.grad_threshold, eta=self.eta, gamma=self.gamma,
            epsilon=self.kappa_epsilon, seed=self.seed, kappa_previous=self.kappa_weights == "previous",
            sigma_dtype=self._sigmas[updated[0]].dtype,
        )
        if native is not None:
            sigmas, noisies = _native_perturbations(
                native, gradients, news, olds, hs, h_olds, inverse_norms, log_epoch, step,
                indices=updated, **settings,
            )
        else:
            sigmas, noisies = _fused["new_perturbations"](
                gradients, news, olds, hs, h_olds, inverse_norms, log_epoch, step,
                indices=tuple(updated), **settings,
            )
        for k, (idx, inverse_norm) in enumerate(zip(updated, _per_variable(inverse_norms, len(updated)))):
            local(self._rhos, idx).assign(tf.cast(max_changes[k], tf.float32) * inverse_norm)
            local(self._sigmas, idx).assign(sigmas[k])
            if not self._hessian_is_shared:
                # After the kernel, its other reader, so that the slot takes the buffer over.
                with tf.control_dependencies([sigmas[k]]):
                    local(self._hessians, idx).assign(hs[k])
            perturbed = local(self._trainable_variables, idx).assign(noisies[k])
            # After the variable lets go of w_t's buffer, the clean slot takes it over (no copy).
            with tf.control_dependencies([perturbed]):
                local(self._clean_weights, idx).assign(news[k])

    def _statistics(self, gradients, news, olds, hs, h_olds, xla):
        """Per variable: (h_{t+1}, h_t or None, max |Δh|, ‖w_t − w_{t−1}‖²) as TensorFlow ops."""
        squares = [_squared_distance(a, b, xla=xla) for a, b in zip(news, olds)]
        if self._hessian_is_shared:  # hs hold h_{t+1} already
            max_changes = [
                _max_change(g, h, o, decay=self.hessian_decay, xla=xla)
                for g, h, o in zip(gradients, hs, h_olds)
            ]
            return hs, h_olds, max_changes, squares
        # h's own update, here with its max |Δh| rather than in the kernel: XLA would give
        # h_{t+1} a loop of its own after the last gradient; these ops run while the backward
        # pass computes the other gradients, and share g² − h_t with the max.
        h_olds = hs if self.hessian_decay == 0 else [None] * len(hs)
        hs, max_changes = map(list, zip(*(
            _next_hessian(g, h, decay=self.hessian_decay, xla=xla) for g, h in zip(gradients, hs)
        )))
        return hs, h_olds, max_changes, squares

    def _native_statistics(self, native, gradients, news, olds, hs, h_olds):
        """`_statistics` with the native kernels: one pass over each variable, which also tells
        whether its gradient is finite (the last list)."""
        if self._hessian_is_shared:
            outputs = [
                native.pacgen_statistics(g, h, a, b, [] if o is None else [o])
                for g, h, a, b, o in zip(gradients, hs, news, olds, h_olds)
            ]
            max_changes = [
                m * _hessian_difference_scale(o, self.hessian_decay)
                for (m, _, _), o in zip(outputs, h_olds)
            ]
            return hs, h_olds, max_changes, [s for _, s, _ in outputs], [f for _, _, f in outputs]
        h_olds = hs if self.hessian_decay == 0 else [None] * len(hs)
        outputs = [
            native.pacgen_next_hessian(g, h, a, b, rate=1.0 - self.hessian_decay)
            for g, h, a, b in zip(gradients, hs, news, olds)
        ]
        hs, max_changes, squares, finite = map(list, zip(*outputs))
        return hs, h_olds, max_changes, squares, finite

    def _step_inputs(self, idx, device):
        try:
            return self._step_gradients[(idx, device)]
        except KeyError:
            raise RuntimeError(
                f"{type(self).__name__}: update_step() was not called for "
                f"{self._trainable_variables[idx].path} on {device}; a perturbed optimizer must "
                "update every variable through its update_step()."
            ) from None

    # ------------------------------------------------------------------ clean weights
    def _draw(self, idx, variable):
        return _perturbation(
            _tf_var(self._sigmas[idx]), variable.shape, variable.dtype,
            tf.identity(_tf_var(self._iterations)), idx, seed=self.seed,
        )

    def _noisy_weights(self, idx, weights, device):
        """w + u for variable `idx` from clean `weights` (its copy on `device`), σ and the step:
        the same bits as the step drew."""
        return _fused["noisy"](
            weights, tf.identity(_local(self._sigmas[idx], device)),
            tf.identity(_tf_var(self._iterations)), tf.constant(idx, tf.int32), seed=self.seed,
        )

    def _remove_graph(self):
        applied = ops.greater(self._perturbation_applied, 0)
        def restore(idx):
            def fn(v):
                v.assign(tf.where(applied, tf.identity(_local(self._clean_weights[idx], v.device)), v))

            return fn

        pairs = [
            (_tf_var(self._trainable_variables[idx]), restore(idx))
            for idx in self._perturbed_indices(self._trainable_variables)
        ]
        pairs.append((_tf_var(self._perturbation_applied), lambda a: a.assign(0)))
        _replica_update(pairs)

    def _reapply_graph(self):
        applied = ops.greater(self._perturbation_applied, 0)
        pairs = []
        for idx in self._perturbed_indices(self._trainable_variables):

            def fn(v, idx=idx):
                w = tf.identity(v)
                noisy = self._noisy_weights(idx, w, v.device)
                clean = _local(self._clean_weights[idx], v.device)
                clean.assign(tf.where(applied, tf.identity(clean), w))
                v.assign(tf.where(applied, w, noisy))

            pairs.append((_tf_var(self._trainable_variables[idx]), fn))
        pairs.append((_tf_var(self._perturbation_applied), lambda a: a.assign(1)))
        _replica_update(pairs)

    def remove_perturbation(self) -> None:
        """Put the clean weights into the model variables. Idempotent (a flag in a variable)."""
        if not self.built:
            return
        if self._remove_fn is None:
            self._remove_fn = tf.function(self._remove_graph, autograph=False)
        with self._distribution_strategy.scope():
            self._remove_fn()

    def apply_perturbation(self) -> None:
        """Re-apply the current perturbation u (bit-identical to the one drawn). Idempotent."""
        if not self.built:
            return
        if self._reapply_fn is None:
            self._reapply_fn = tf.function(self._reapply_graph, autograph=False)
        with self._distribution_strategy.scope():
            self._reapply_fn()

    @property
    def perturbation_is_applied(self) -> bool:
        return bool(self.built and int(self._perturbation_applied.numpy()) > 0)

    @contextlib.contextmanager
    def clean_weights(self):
        """Context manager: the model holds the clean weights inside, the perturbed ones after."""
        was_applied = self.perturbation_is_applied
        self.remove_perturbation()
        try:
            yield
        finally:
            if was_applied:
                self.apply_perturbation()

    def finalize_variable_values(self, var_list):
        """Called by fit() at the end: clean weights first, then the wrapped optimizer's EMA."""
        self.remove_perturbation()
        super().finalize_variable_values(var_list)

    def perturbation_state(self, variable) -> dict[str, tf.Tensor]:
        """h, ρ, σ and u of `variable` (a model variable this optimizer was built with)."""
        if not self.built:
            raise ValueError("perturbation_state() needs a built optimizer: train a step first.")
        try:
            idx = self._get_variable_index(variable)
        except KeyError:
            raise ValueError(
                f"perturbation_state(): {getattr(variable, 'path', variable)} is not a variable "
                "this optimizer was built with."
            ) from None
        if not self._is_perturbed(idx):
            raise ValueError(
                f"perturbation_state(): {variable.path} is updated by overwrite_with_gradient "
                "and never perturbed."
            )
        return {
            "hessian": ops.convert_to_tensor(self._hessians[idx]),
            "rho": ops.convert_to_tensor(self._rhos[idx]),
            "sigma": tf.cast(ops.convert_to_tensor(self._sigmas[idx]), variable.dtype),
            "perturbation": self._draw(idx, variable),
            "clean_weights": ops.convert_to_tensor(self._clean_weights[idx])
            if self.perturbation_is_applied
            else ops.convert_to_tensor(variable),
        }

    # ------------------------------------------------------------------ misc
    def _attach_guard(self, attached: bool) -> None:
        self._clean_weights_guards += 1 if attached else -1

    def _warn_if_unguarded(self):
        if self._clean_weights_guards > 0 or self._warned_no_callback:
            return
        self._warned_no_callback = True
        note = "" if (self.steps_per_epoch or self._epoch_is_driven) else _EPOCH_NOTE
        warnings.warn(
            _NO_CALLBACK_WARNING.format(name=type(self).__name__, epoch_note=note), stacklevel=3
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "eta": self.eta,
                "gamma": self.gamma,
                "kappa_epsilon": self.kappa_epsilon,
                "grad_threshold": self.grad_threshold,
                "hessian_decay": self.hessian_decay,
                "seed": self.seed,
                "steps_per_epoch": self.steps_per_epoch,
                "rho_norm": self.rho_norm,
                "kappa_weights": self.kappa_weights,
                "skip_nonfinite": self.skip_nonfinite,
            }
        )
        return config
