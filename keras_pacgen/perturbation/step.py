"""One training step of Algorithm 1 (PertOPT), in the paper's order.

The caller's forward and backward pass has computed ``g_{t+1} = ∇L̂_t(w_t + u_t)``, the gradient at
the perturbed point (Algorithm 1 line 13). `PerturbationMixin.apply` then runs, on every replica
or, when a gradient is not finite, not at all (``backend.apply_if_finite``):

1. `clean_weights.restore_for_step`: the model variables go back from ``w_t + u_t`` to ``w_t``;
2. the wrapped optimizer's ``apply`` on ``w_t``: line 15, ``w_{t+1} = OPT(w_t)`` fed ``g_{t+1}``,
   with its own loss-scale unscaling, clipping, weight decay, EMA and constraints, and line 16,
   ``t ← t + 1`` (``optimizer.iterations``); an Adam-family OPT also does line 14,
   ``h_{t+1}``, which is its second moment;
3. `perturb` below: line 14 when h has a slot of its own, then lines 7-11 of the next iteration,
   ρ, κ, σ and ``u``; the model variables are left holding ``w_{t+1} + u_{t+1}``.

So in `next_perturbation` the paper's ``t`` has advanced: what lines 7-9 call ``h_t``, ``w_t``
and ``w_{t−1}`` are ``h`` (after line 14), ``weights`` (after line 15) and ``previous`` (the clean
slot before the update); ``g_t`` of the mask is the gradient just applied. The first step is
unperturbed (σ starts at 0).
"""

from __future__ import annotations

from typing import NamedTuple

from keras import ops

from keras_pacgen import backends
from keras_pacgen.perturbation import formulas
from keras_pacgen.perturbation.clean_weights import value

backend = backends.load()


class Settings(NamedTuple):
    """The constants of Algorithm 1 for one optimizer (see `PerturbationMixin`)."""

    eta: float  # η
    gamma: float  # γ
    epsilon: float  # ε of κ
    beta1: float  # β1, decay of h
    beta2: float  # β2, gradient threshold of the mask
    seed: int
    hessian_is_updated: bool  # h is the wrapped optimizer's second moment, already at h_{t+1}
    kappa_previous: bool  # κ from w_{t−1} (the literal reading) rather than w_t
    global_norm: bool  # ‖w_t − w_{t−1}‖ over all variables rather than each variable's own


class Slots(NamedTuple):
    """A perturbed model variable and its slots."""

    index: int  # position in the optimizer's variable list: the noise stream of the variable
    variable: object  # the model variable
    clean: object  # w, while the variable holds w + u
    sigma: object  # σ, kept at bfloat16 precision
    rho: object  # max_i ρ[i], the variable's share of ρ (for ψ)
    hessian: object  # h: its own slot, or the wrapped optimizer's second moment


def next_perturbation(g, h, weights, previous, inverse_change, log_epoch, step, index, s: Settings):
    """Lines 14 and 7-11 for one variable that OPT has just moved from `previous` to `weights`.

    Returns (σ, w + u, h_{t+1}, ρ). The formulas run in float32 whatever the variable's dtype (a
    float16 g² overflows for |g| > 256); w + u is in the variable's dtype.
    """
    g, h, w, w_prev = (ops.cast(x, "float32") for x in (g, h, weights, previous))
    if s.hessian_is_updated:  # line 14 was OPT's own update of its second moment
        h_change = formulas.hessian_change(h, g, beta1=s.beta1)
    else:  # line 14
        h, h_change = formulas.hessian_update(h, g, beta1=s.beta1)
    rho = formulas.hessian_lipschitz(h_change, inverse_change)  # line 7
    kappa = formulas.neighbourhood_radius(  # line 8
        w_prev if s.kappa_previous else w, gamma=s.gamma, epsilon=s.epsilon, log_epoch=log_epoch
    )
    mask = formulas.gradient_mask(g, beta2=s.beta2)
    sigma = formulas.perturbation_scale(h, rho, kappa, mask, eta=s.eta, log_epoch=log_epoch)  # line 9
    sigma = ops.cast(sigma, "bfloat16")  # bfloat16 precision makes u = σ·r exact (noise.py)
    noisy = formulas.perturbed_weights(weights, sigma, seed=s.seed, step=step, index=index)  # 10-11
    return sigma, noisy, h, rho


# The elementwise work of all variables on one device, compiled on its own where the backend
# would not compile it (TensorFlow without jit_compile; see `backend.compiled`).
def _next_perturbations(gradients, hessians, weights, previous, inverse_changes, log_epoch, step,
                        indices, settings):
    return [
        next_perturbation(g, h, w, p, n, log_epoch, step, i, settings)
        for g, h, w, p, n, i in zip(gradients, hessians, weights, previous, inverse_changes, indices)
    ]


_next_perturbations = backend.compiled(_next_perturbations)


def perturb(slots: list[Slots], gradients: dict, settings: Settings, *, applied_flag, step,
            log_epoch) -> None:
    """Lines 14 and 7-11 on every device, after OPT's update; leaves the variables at w + u.

    `gradients` maps (index, device of the variable's copy) to the gradient OPT's ``update_step``
    received there; a variable without one this step stays clean and unperturbed (σ = 0).
    """

    def on_device(device):
        keys = {s.index: (s.index, backend.device_of(backend.local(s.variable, device)))
                for s in slots}
        moved = [s for s in slots if keys[s.index] in gradients]
        for s in slots:
            if keys[s.index] not in gradients:
                backend.local(s.sigma, device).assign(ops.zeros(s.sigma.shape, s.sigma.dtype))
                backend.local(s.rho, device).assign(0.0)
        if moved:
            _perturb_device(moved, [gradients[keys[s.index]] for s in moved], device,
                            settings, step, log_epoch)
        backend.local(applied_flag, device).assign(1)

    backend.on_each_device(slots[0].variable, on_device)


def _perturb_device(slots, gradients, device, settings, step, log_epoch):
    local = backend.local
    weights = [value(local(s.variable, device)) for s in slots]  # w_t
    previous = [value(local(s.clean, device)) for s in slots]  # w_{t−1}
    hessians = [value(local(s.hessian, device)) for s in slots]
    squares = [ops.sum(ops.square(ops.cast(w, "float32") - ops.cast(p, "float32")))  # ‖w_t − w_{t−1}‖²
               for w, p in zip(weights, previous)]
    if settings.global_norm:
        inverse_changes = [formulas.inverse_norm(sum(squares))] * len(slots)
    else:
        inverse_changes = [formulas.inverse_norm(s) for s in squares]
    outputs = _next_perturbations(gradients, hessians, weights, previous, inverse_changes,
                                  log_epoch, step, tuple(s.index for s in slots), settings)
    for s, w, (sigma, noisy, h, rho) in zip(slots, weights, outputs):
        local(s.sigma, device).assign(ops.cast(sigma, s.sigma.dtype))
        local(s.rho, device).assign(ops.max(rho, initial=0.0))  # 0 for an empty variable
        if not settings.hessian_is_updated:
            local(s.hessian, device).assign(ops.cast(h, s.hessian.dtype))
        local(s.variable, device).assign(noisy)
        local(s.clean, device).assign(w)
