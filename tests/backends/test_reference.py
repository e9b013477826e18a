"""Algorithm 1 against an independent numpy implementation (float64) over several steps.

The model is linear regression y = x W + b with the mean squared error, whose gradient numpy
computes in closed form, at the weights the model holds (w + u): the optimizer is fed that
gradient, as `fit` would feed it. The uniform draw r ~ U(-1, 1) (u = σ ⊙ r) is numpy's own
lowbias32 hash (`numpy_uniform`), so one seed gives these numbers on every backend. The package
keeps σ at bfloat16 precision, documented; the reference rounds σ the same way.
"""


import keras
import ml_dtypes
import numpy as np
import pytest

import keras_pacgen as kp
from keras_pacgen.perturbation.noise import uniform_unit


def _mix(x):
    """lowbias32 on uint32 numpy arrays."""
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x7FEB352D)
    x = x ^ (x >> np.uint32(15))
    x = x * np.uint32(0x846CA68B)
    return x ^ (x >> np.uint32(16))


def numpy_uniform(shape, seed, step, index):
    """noise.py's r, written again in numpy uint32 (the step's low 32 bits)."""
    with np.errstate(over="ignore"):
        u32 = lambda v: np.uint32(v & 0xFFFFFFFF)  # noqa: E731
        key = _mix(u32(seed) ^ u32((seed >> 32) * 0x9E3779B9))
        key = _mix(key ^ u32(step))
        key = _mix(key ^ (u32(index) * np.uint32(0x85EBCA6B) + np.uint32(1)))
        bits = _mix(np.arange(int(np.prod(shape)), dtype=np.uint32) + key)
    return ((bits >> np.uint32(16)).astype(np.float64) * 2.0**-15 - 1.0).reshape(shape)


@pytest.mark.parametrize("seed, step, index", [(5, 3, 2), (2**40 - 1, 2**31 - 5, 7), (0, 0, 0)])
def test_the_noise_is_the_numpy_hash_bit_for_bit(seed, step, index):
    r = keras.ops.convert_to_numpy(uniform_unit((37, 11), "float32", seed, step, index))
    np.testing.assert_array_equal(r, numpy_uniform((37, 11), seed, step, index))


def bf16(a):
    return a.astype(np.float32).astype(ml_dtypes.bfloat16).astype(np.float64)


ETA, GAMMA, EPS, BETA2, BETA1 = 0.05, 0.5, 1e-3, 0.5, 0.9
LR, SEED, SPE, STEPS = 0.05, 11, 3, 8


def reference_step(opt_name, w, u, h, state, g, t, idx_shapes, rho_norm, kappa_weights, decay):
    """One step of Algorithm 1 on lists of float64 arrays, with β1 = `decay`. Returns the new
    (w, u, h, rho, sigma)."""
    h_new = [hh + (gg**2 - hh) * (1 - decay) for hh, gg in zip(h, g)]
    w_new = []
    for i, (ww, gg) in enumerate(zip(w, g)):
        if opt_name == "sgd":
            w_new.append(ww - LR * gg)
        else:  # Keras Adam, epsilon 1e-7, beta_1 0.9, beta_2 = β1 (so h is Adam's v)
            m, v = state[i]
            m = m + (gg - m) * (1 - 0.9)
            v = v + (gg**2 - v) * (1 - decay)
            alpha = LR * np.sqrt(1 - decay ** (t + 1)) / (1 - 0.9 ** (t + 1))
            state[i] = (m, v)
            w_new.append(ww - m * alpha / (np.sqrt(v) + 1e-7))
    t_next = t + 1
    log_epoch = np.log(1 + (t_next // SPE + 1))
    global_norm = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(w_new, w)))
    rho, sigma, u_new = [], [], []
    for i, (wn, wp, hn, hp, gg) in enumerate(zip(w_new, w, h_new, h, g)):
        norm = global_norm if rho_norm == "global" else np.sqrt(np.sum((wn - wp) ** 2))
        r_i = np.abs(hn - hp) / norm
        kw = wp if kappa_weights == "previous" else wn
        kappa = GAMMA / log_epoch * np.abs(kw) + EPS
        s = np.minimum(1.0 / (log_epoch * np.sqrt(ETA * (hn + r_i * kappa))), kappa)
        s = bf16(s * (np.abs(gg) < BETA2))
        draw = numpy_uniform(idx_shapes[i], SEED, t_next, i)
        rho.append(np.max(np.abs(hn - hp)) / norm)  # the slot keeps max_i ρ[i] per variable
        sigma.append(s)
        u_new.append(s * draw)
    return w_new, u_new, h_new, rho, sigma


def mse_grad(w, u, x, y):
    W, b = w[0] + u[0], w[1] + u[1]
    err = x @ W + b - y  # (n, k)
    n, k = err.shape
    gW = 2.0 * x.T @ err / (n * k)
    gb = 2.0 * err.sum(axis=0) / (n * k)
    return [gW, gb]


@pytest.mark.parametrize("opt_name, decay", [("sgd", BETA1), ("adam", BETA1), ("sgd", 0.0)],
                         ids=["sgd", "adam", "sgd_decay0"])
@pytest.mark.parametrize("rho_norm, kappa_weights", [("global", "previous"), ("variable", "current")])
def test_optimizer_matches_numpy_reference(opt_name, decay, rho_norm, kappa_weights):
    """h as Adam's v or in its own slot (SGD), for β1 = 0.9 and, in its own slot, β1 = 0 (where
    h_{t+1} − h_t cannot be recovered from h_{t+1} and g alone). Adam with β2 = 0 divides by |g|
    and leaves float64 behind within a few steps, so it is not compared here."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype("float32")
    y = (x @ rng.normal(size=(4, 2)) + 0.3 * rng.normal(size=(32, 2))).astype("float32")
    keras.utils.set_random_seed(0)
    layer = keras.layers.Dense(2)
    layer.build((None, 4))
    variables = layer.trainable_variables
    args = dict(
        learning_rate=LR, eta=ETA, gamma=GAMMA, kappa_epsilon=EPS, grad_threshold=BETA2,
        hessian_decay=decay, seed=SEED, steps_per_epoch=SPE, rho_norm=rho_norm,
        kappa_weights=kappa_weights,
    )
    opt = kp.PerturbedSGD(**args) if opt_name == "sgd" else kp.PerturbedAdam(beta_2=decay, **args)

    w = [v.numpy().astype(np.float64) for v in variables]
    u = [np.zeros_like(a) for a in w]
    h = [np.zeros_like(a) for a in w]
    state = [(np.zeros_like(a), np.zeros_like(a)) for a in w]
    shapes = [a.shape for a in w]
    perturbed_coordinates = 0
    for t in range(STEPS):
        g = mse_grad(w, u, x.astype(np.float64), y.astype(np.float64))
        # The optimizer is fed the gradient at the weights the model holds, w + u.
        held = [v.numpy().astype(np.float64) for v in variables]
        zeros = [np.zeros_like(a) for a in held]
        grads = [a.astype("float32") for a in mse_grad(held, zeros, x.astype(np.float64),
                                                        y.astype(np.float64))]
        for gg, gt in zip(g, grads):
            np.testing.assert_allclose(gt, gg, rtol=2e-4, atol=1e-6)
        opt.apply(grads, variables)
        w, u, h, rho, sigma = reference_step(
            opt_name, w, u, h, state, g, t, shapes, rho_norm, kappa_weights, decay
        )
        for i, v in enumerate(variables):
            st = opt.perturbation_state(v)
            np.testing.assert_allclose(np.asarray(st["hessian"]), h[i], rtol=2e-4, atol=1e-9)
            np.testing.assert_allclose(np.asarray(st["rho"]), rho[i], rtol=2e-3, atol=1e-9)
            np.testing.assert_allclose(np.asarray(st["sigma"]), sigma[i], rtol=8e-3, atol=1e-9)
            np.testing.assert_allclose(np.asarray(st["clean_weights"]), w[i], rtol=1e-4, atol=1e-6)
            # u is exactly σ ⊙ r for the package's σ, and within its bound.
            pert = np.asarray(st["perturbation"])
            draw = numpy_uniform(v.shape, SEED, t + 1, i).astype(np.float32)
            np.testing.assert_array_equal(pert, np.asarray(st["sigma"]) * draw)
            assert np.all(np.abs(pert) <= np.asarray(st["sigma"]))
            np.testing.assert_allclose(pert, u[i], rtol=8e-3, atol=1e-9)
            # The variable holds w + u.
            np.testing.assert_array_equal(v.numpy(), np.asarray(st["clean_weights"]) + pert)
            perturbed_coordinates += int(np.sum(sigma[i] > 0))
    # The scenario exercises the formula: some coordinates perturbed, some masked or capped by κ.
    assert perturbed_coordinates > 0
    assert int(keras.ops.convert_to_numpy(opt.epoch)) == (STEPS // SPE) + 1
    # h is Adam's v (no slot of its own), SGD's own slot
    assert any("hessian" in v.name for v in opt.variables) == (opt_name == "sgd")


def test_first_step_is_unperturbed():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 4)).astype("float32")
    keras.utils.set_random_seed(0)
    layer = keras.layers.Dense(2)
    layer.build((None, 4))
    before = [v.numpy() for v in layer.trainable_variables]
    opt = kp.PerturbedSGD(learning_rate=0.0, eta=1e-3, gamma=1.0, grad_threshold=1e9, seed=1)
    out = x @ before[0] + before[1]  # the gradient of Σ (x W + b)²
    grads = [(2 * x.T @ out).astype("float32"), (2 * out.sum(axis=0)).astype("float32")]
    # Nothing applied before the first step: the first gradient is at the clean weights.
    for a, v in zip(before, layer.trainable_variables):
        np.testing.assert_array_equal(a, v.numpy())
    opt.apply(grads, layer.trainable_variables)
    # With lr 0 the weights did not move, ρ = 0, and the new σ is positive.
    assert all(float(np.max(np.asarray(opt.perturbation_state(v)["sigma"]))) > 0
               for v in layer.trainable_variables)
    assert all(float(np.asarray(opt.perturbation_state(v)["rho"])) == 0 for v in layer.trainable_variables)
