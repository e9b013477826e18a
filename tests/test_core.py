"""The shape of the perturbation core, and what it promises outside fit(): the epoch counter of a
custom loop, the backend check, no private TensorFlow imports."""

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_pacgen as kp

PACKAGE = Path(kp.__file__).parent


def test_set_epoch_before_the_first_step_of_a_custom_loop_is_kept():
    """set_epoch(3) on an unbuilt optimizer, then a tf.function loop: the first step already uses
    epoch 3 (κ = γ/log(1 + 3)·|w| + ε), and so do the next ones."""
    keras.utils.set_random_seed(0)
    layer = keras.layers.Dense(2)
    layer.build((None, 4))
    x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    w0 = [v.numpy() for v in layer.trainable_variables]
    # lr 0: the weights do not move; η tiny: σ is capped by κ on every coordinate
    opt = kp.PerturbedSGD(learning_rate=0.0, eta=1e-12, gamma=1.0, kappa_epsilon=1e-3,
                          grad_threshold=1e9, seed=1)
    opt.set_epoch(3)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(x) ** 2)
        opt.apply(tape.gradient(loss, layer.trainable_variables), layer.trainable_variables)

    for _ in range(2):
        step()
        assert int(opt.epoch.numpy()) == 3
        for v, w in zip(layer.trainable_variables, w0):
            kappa = 1.0 / math.log(1 + 3) * np.abs(w) + 1e-3
            np.testing.assert_allclose(opt.perturbation_state(v)["sigma"].numpy(), kappa, rtol=4e-3)
    opt.set_epoch(5)  # and after the build, too
    step()
    assert int(opt.epoch.numpy()) == 5


def _import_error(env):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **env}
    proc = subprocess.run([sys.executable, "-c", "import keras_pacgen"], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode != 0
    return proc.stderr.strip().splitlines()[-1]


def test_an_unsupported_backend_is_refused_with_what_to_select(tmp_path):
    last = _import_error({"KERAS_BACKEND": "numpy"})
    assert last.startswith("ImportError") and "'numpy'" in last and "KERAS_BACKEND" in last
    assert "tensorflow, jax, torch" in last
    (tmp_path / "keras.json").write_text('{"backend": "openvino"}')
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    last = _import_error({**env, "KERAS_HOME": str(tmp_path), "KERAS_BACKEND": ""})
    assert last.startswith("ImportError") and "'openvino'" in last


def test_a_backend_whose_package_is_missing_says_what_to_install(monkeypatch):
    from keras_pacgen import backends

    monkeypatch.setattr(backends, "configured", lambda: "torch")
    monkeypatch.setattr(backends.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match=r"pip install keras-pacgen\[torch\]"):
        backends.check()


def _sources():
    return {path: path.read_text() for path in PACKAGE.rglob("*.py")}


def test_no_private_tensorflow_imports_and_private_keras_attributes_in_one_place():
    private_keras = ("_get_variable_index", "_trainable_variables", "_velocities",
                     "_distribution_strategy", "_var_key", "_compile_loss")
    for path, text in _sources().items():
        assert not re.search(r"tensorflow\.python|tf\.__internal__|tf\.compat\.v1", text), path
        if path.name != "keras_internals.py":
            for name in private_keras:  # as an attribute (not inside non_trainable_variables)
                assert not re.search(rf"(?<![A-Za-z]){name}", text), f"{path}: {name}"


def test_modules_stay_small():
    for path, text in _sources().items():
        assert len(text.splitlines()) <= 400, path
    assert len((PACKAGE / "perturbation" / "mixin.py").read_text().splitlines()) < 250


def test_perturbed_weights_are_the_same_bits_with_and_without_xla():
    """σ on bfloat16 values and r on a 16-bit grid make u = σ·r exact, so w + u rounds once:
    the step (compiled or not) and a re-application outside XLA agree bit for bit."""
    from keras_pacgen.perturbation import formulas

    rng = np.random.default_rng(0)
    w = tf.constant(rng.normal(size=(300, 17)).astype("float32") * 3)
    sigma = tf.cast(tf.constant(np.abs(rng.normal(size=(300, 17))).astype("float32")), tf.bfloat16)

    def draw(w, sigma, step):
        return formulas.perturbed_weights(w, sigma, seed=7, step=step, index=3)

    step = tf.constant(12, tf.int64)
    eager = draw(w, sigma, step).numpy()
    np.testing.assert_array_equal(eager, tf.function(draw, jit_compile=True)(w, sigma, step).numpy())
    np.testing.assert_array_equal(eager, tf.function(draw)(w, sigma, step).numpy())
    assert not np.array_equal(eager, w.numpy())


def test_reapplying_after_an_xla_step_gives_the_perturbed_weights_back_bit_for_bit():
    from conftest import LOSS, small_model, toy_data

    x, y = toy_data()
    model = small_model()
    opt = kp.PerturbedAdam(learning_rate=1e-2, eta=0.01, gamma=1.0, grad_threshold=10.0, seed=3)
    model.compile(optimizer=opt, loss=LOSS, jit_compile=True)
    model.train_on_batch(x[:32], y[:32])
    model.train_on_batch(x[32:64], y[32:64])
    drawn = [v.numpy() for v in model.trainable_variables]
    opt.remove_perturbation()
    assert any(not np.array_equal(a, v.numpy()) for a, v in zip(drawn, model.trainable_variables))
    opt.apply_perturbation()
    for a, v in zip(drawn, model.trainable_variables):
        np.testing.assert_array_equal(a, v.numpy())
