"""The native CPU kernels (keras_pacgen/native) against the TensorFlow ops they replace."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_pacgen as kp
from keras_pacgen import native
from keras_pacgen import perturbation as P

OPS = native.ops()
pytestmark = pytest.mark.skipif(OPS is None, reason="native kernels unavailable")

# sizes: tiny, not a multiple of the 16 lanes, several 16384-element blocks plus a tail
SIZES = [(3,), (7, 5), (3, 16384 + 37)]


def _inputs(shape, seed):
    rng = np.random.default_rng(seed)
    g = rng.normal(size=shape).astype("f4") * 0.1
    g.reshape(-1)[::7] = 0.5  # above the threshold: masked
    w_old = rng.normal(size=shape).astype("f4") * 0.05
    w_new = (w_old + rng.normal(size=shape) * 1e-3).astype("f4")
    h = np.abs(rng.normal(size=shape)).astype("f4") * 1e-2
    h.reshape(-1)[::11] = 0.0  # h = ρ = 0 gives σ = κ
    h_old = np.abs(h + rng.normal(size=shape).astype("f4") * 1e-3)
    return [tf.constant(a) for a in (g, h, h_old, w_new, w_old)]


@pytest.mark.parametrize("shape", SIZES)
@pytest.mark.parametrize("with_old", [False, True])
def test_statistics_match_the_tensorflow_reductions(shape, with_old):
    g, h, h_old, w_new, w_old = _inputs(shape, 0)
    old = h_old if with_old else None
    maximum, square, finite = OPS.pacgen_statistics(g, h, w_new, w_old, [] if old is None else [old])
    assert bool(finite)
    scale = P._hessian_difference_scale(old, 0.9)
    expected_max = P._max_change(g, h, old, decay=0.9, xla=False)
    np.testing.assert_array_equal(maximum.numpy() * scale, expected_max.numpy())  # max is exact
    np.testing.assert_allclose(square.numpy(), P._squared_distance(w_new, w_old, xla=False).numpy(),
                               rtol=1e-5)
    np.testing.assert_allclose(square.numpy(), np.sum((w_new.numpy().astype("f8") - w_old.numpy()) ** 2),
                               rtol=1e-6)


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("position", [0, 16, 3 * 16384 + 36])  # first lane, a later lane, the tail
def test_reductions_report_a_nonfinite_gradient_wherever_it_is(bad, position):
    """What lets a speculative step skip IsFinite for the gradients these kernels read anyway."""
    g, h, h_old, w_new, w_old = _inputs((3, 16384 + 37), 4)
    g = tf.tensor_scatter_nd_update(tf.reshape(g, [-1]), [[position]], [bad])
    g = tf.reshape(g, w_new.shape)
    for old in ([], [h_old]):
        assert not bool(OPS.pacgen_statistics(g, h, w_new, w_old, old)[2])
    assert not bool(OPS.pacgen_next_hessian(g, h, w_new, w_old, rate=0.1)[3])


@pytest.mark.parametrize("shape", SIZES)
@pytest.mark.parametrize("decay", [0.999, 0.0])
def test_next_hessian_is_bit_identical_to_the_tensorflow_update(shape, decay):
    g, h, _, w_new, w_old = _inputs(shape, 1)
    h_next, maximum, square, finite = OPS.pacgen_next_hessian(g, h, w_new, w_old, rate=1.0 - decay)
    assert bool(finite)
    expected_h, expected_max = P._next_hessian(g, h, decay=decay, xla=False)
    np.testing.assert_array_equal(h_next.numpy(), expected_h.numpy())
    np.testing.assert_array_equal(maximum.numpy(), expected_max.numpy())
    np.testing.assert_allclose(square.numpy(), P._squared_distance(w_new, w_old, xla=False).numpy(),
                               rtol=1e-5)


@pytest.mark.parametrize("shape", SIZES)
@pytest.mark.parametrize("with_old, kappa_previous", [(False, True), (True, False)])
def test_perturb_is_bit_identical_to_the_formula_in_tensorflow_ops(shape, with_old, kappa_previous):
    """σ and w + u from one loop equal `_new_perturbation` run as separate TensorFlow ops (no
    XLA, so no contraction into FMAs): every bit, masked and κ-capped coordinates included."""
    g, h, h_old, w_new, w_old = _inputs(shape, 2)
    old = h_old if with_old else None
    settings = dict(decay=0.9, threshold=0.3, eta=0.01, gamma=2.0, epsilon=1e-5, seed=123,
                    kappa_previous=kappa_previous, sigma_dtype=tf.bfloat16)
    log_epoch, step, inverse_norm = tf.math.log1p(3.0), tf.constant(17, tf.int64), tf.constant(40.0)
    expected = P._new_perturbation(g, w_new, w_old, h, old, inverse_norm, log_epoch, step, 5, **settings)
    got = P._native_perturbations(OPS, [g], [w_new], [w_old], [h], [old], [inverse_norm], log_epoch,
                                  step, indices=[5], **settings)
    sigma, noisy = got[0][0], got[1][0]
    assert sigma.dtype == tf.bfloat16
    np.testing.assert_array_equal(sigma.numpy().view(np.uint16), expected[0].numpy().view(np.uint16))
    np.testing.assert_array_equal(noisy.numpy(), expected[1].numpy())
    s = sigma.numpy().astype("f4")
    assert np.any(s == 0) and np.any(s > 0)  # masked coordinates and perturbed ones
    # the draw is the package's stateless noise: w + u is re-drawn bit for bit from σ
    np.testing.assert_array_equal(noisy.numpy(), P._fused["noisy"](w_new, sigma, step, 5, seed=123).numpy())


def test_perturb_matches_the_xla_kernel_up_to_its_fma_contraction():
    """XLA may fuse h + ρκ into an FMA: σ can differ in its last bfloat16 bit, rarely."""
    g, h, _, w_new, w_old = _inputs((3, 16384 + 37), 3)
    settings = dict(decay=0.9, threshold=0.3, eta=0.01, gamma=2.0, epsilon=1e-5, seed=7,
                    kappa_previous=True, sigma_dtype=tf.bfloat16)
    args = ([g], [w_new], [w_old], [h], [None], [tf.constant(40.0)], tf.math.log1p(1.0),
            tf.constant(3, tf.int64))
    xla_sigma, _ = P._fused["new_perturbations"](*args, indices=(2,), **settings)
    native_sigma, _ = P._native_perturbations(OPS, *args, indices=[2], **settings)
    a, b = xla_sigma[0].numpy().astype("f4"), native_sigma[0].numpy().astype("f4")
    differ = a != b
    assert differ.mean() < 1e-3
    np.testing.assert_allclose(a, b, rtol=2**-7)


def _fit(seed_model=0, epochs=2):
    keras.utils.set_random_seed(seed_model)
    x = np.random.default_rng(0).normal(size=(64, 6)).astype("f4")
    y = (x[:, :1] > 0).astype("f4")
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(1)])
    opt = kp.PerturbedSGD(learning_rate=0.05, momentum=0.9, gamma=1.0, eta=0.1, seed=3)
    model.compile(optimizer=opt, loss="mse")
    model.fit(x, y, batch_size=16, epochs=epochs, verbose=0, callbacks=[kp.PerturbationCallback()])
    return [v.numpy() for v in model.trainable_variables] + [np.asarray(v) for v in opt.variables]


def test_training_with_native_kernels_matches_the_xla_kernels(monkeypatch):
    native_run = _fit()
    monkeypatch.setenv("KERAS_PACGEN_NATIVE", "0")
    assert native.ops() is None
    xla_run = _fit()
    for a, b in zip(native_run, xla_run):
        np.testing.assert_allclose(np.asarray(a, "f8"), np.asarray(b, "f8"), rtol=1e-4, atol=1e-6)


def _python(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **env})


def test_builds_from_source_into_an_empty_cache(tmp_path):
    out = _python("from keras_pacgen import native; import tensorflow as tf; p = native.build(); "
                  "m = tf.load_op_library(str(p)); print(p.parent, hasattr(m, 'pacgen_perturb'))",
                  KERAS_PACGEN_CACHE=str(tmp_path))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [str(tmp_path), "True"]
    assert "compiling the native CPU kernels" in out.stderr
    assert len(list(tmp_path.glob("perturbation_ops-*.so"))) == 1
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]  # no half-built leftovers


def test_without_a_compiler_training_falls_back_to_xla_with_a_warning(tmp_path):
    code = (
        "import warnings, numpy as np, keras, keras_pacgen as kp\n"
        "from keras_pacgen import native\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    assert native.ops() is None\n"
        "assert any('could not be built' in str(w.message) for w in caught), caught\n"
        "m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])\n"
        "m.compile(optimizer=kp.PerturbedAdam(seed=0), loss='mse')\n"
        "m.fit(np.ones((8, 3)), np.ones((8, 1)), verbose=0, callbacks=[kp.PerturbationCallback()])\n"
        "print('trained')\n"
    )
    out = _python(code, KERAS_PACGEN_CACHE=str(tmp_path), CXX="/bin/false")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "trained"
