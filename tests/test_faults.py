"""Resume, mixed precision, non-finite gradients, property tests, unusual models."""

import math
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import LOSS, small_model, toy_data
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import keras_pacgen as kp
from keras_pacgen.perturbation import neighbourhood_radius, perturbation_scale

PERT = dict(eta=0.01, gamma=1.0, grad_threshold=10.0, seed=5)


class Interrupt(keras.callbacks.Callback):
    def __init__(self, epoch, batch):
        super().__init__()
        self.at, self.epoch = (epoch, batch), 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            raise RuntimeError("interrupted")


def _fit(model, callbacks, epochs=4):
    x, y = toy_data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(x, y, batch_size=32, epochs=epochs, shuffle=False, verbose=0, callbacks=callbacks)


def _compiled():
    model = small_model()
    model.compile(optimizer=kp.PerturbedAdam(learning_rate=1e-2, **PERT), loss=LOSS)
    return model


def test_backup_and_restore_resume_mid_epoch_is_bit_identical(tmp_path):
    straight = _compiled()
    _fit(straight, [kp.PerturbationCallback(), keras.callbacks.BackupAndRestore(str(tmp_path / "a"))])
    backup = str(tmp_path / "b")
    first = _compiled()
    with pytest.raises(RuntimeError, match="interrupted"):
        _fit(first, [kp.PerturbationCallback(), keras.callbacks.BackupAndRestore(backup), Interrupt(2, 1)])
    resumed = _compiled()  # a fresh model and optimizer, as in a new process
    _fit(resumed, [kp.PerturbationCallback(), keras.callbacks.BackupAndRestore(backup)])
    assert int(resumed.optimizer.iterations.numpy()) == int(straight.optimizer.iterations.numpy())
    for a, b in zip(straight.trainable_variables, resumed.trainable_variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_nonfinite_gradient_without_loss_scaling_is_skipped_and_reported():
    x, y = toy_data()
    x_bad = x.copy()
    x_bad[40] = np.nan  # the second batch has a NaN input: its gradients are NaN
    model = small_model()
    opt = kp.PerturbedAdam(learning_rate=1e-2, **PERT)
    model.compile(optimizer=opt, loss=LOSS)
    with pytest.warns(UserWarning, match="NaN or Inf gradients"):
        history = model.fit(x_bad, y, batch_size=32, epochs=2, shuffle=False, verbose=0,
                            callbacks=[kp.PerturbationCallback()])
    assert int(opt.nonfinite_steps.numpy()) == 2  # once per epoch
    assert history.history["nonfinite_steps"] == [1, 2]
    for v in model.trainable_variables:
        st_ = opt.perturbation_state(v)
        assert all(np.all(np.isfinite(t.numpy())) for t in st_.values())
        assert np.all(np.isfinite(v.numpy()))


finite32 = st.floats(allow_nan=False, allow_infinity=False, width=32)  # every finite float32
nonneg32 = st.floats(min_value=0.0, allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=300, deadline=None)
@given(
    w=hnp.arrays(np.float32, 8, elements=finite32),
    h=hnp.arrays(np.float32, 8, elements=nonneg32),
    rho=hnp.arrays(np.float32, 8, elements=nonneg32),
    mask=hnp.arrays(np.float32, 8, elements=st.sampled_from([0.0, 1.0])),
    eta=st.floats(1e-6, 1e6),
    gamma=st.floats(0, 100),
    epsilon=st.floats(1e-8, 1.0),
    epoch=st.integers(1, 10_000),
)
def test_sigma_rule_is_finite_and_within_kappa(w, h, rho, mask, eta, gamma, epsilon, epoch):
    log_epoch = math.log1p(epoch)
    kappa = neighbourhood_radius(w, gamma=gamma, epsilon=epsilon, log_epoch=log_epoch)
    sigma = perturbation_scale(tf.constant(h), tf.constant(rho), kappa, tf.constant(mask), eta=eta,
                               log_epoch=log_epoch).numpy()
    kappa = kappa.numpy()
    assert np.all(np.isfinite(kappa)) and np.all(kappa > 0)
    assert np.all(np.isfinite(sigma))
    assert np.all(sigma >= 0) and np.all(sigma <= kappa)
    assert np.all(sigma[mask == 0] == 0)


@settings(max_examples=200, deadline=None)
@given(
    w=hnp.arrays(np.float32, st.integers(1, 6), elements=finite32),
    data=st.data(),
    rho=nonneg32,
)
def test_psi_is_finite_for_any_finite_input(w, data, rho):
    h = data.draw(hnp.arrays(np.float32, w.shape, elements=nonneg32))
    value = kp.psi([w], [h], rho)
    assert math.isfinite(value)
    sigma = kp.optimal_sigma([w], [h], rho, eta=1.0)[0]
    assert np.all(np.isfinite(sigma)) and np.all(sigma > 0)


def test_batchnorm_embedding_and_zero_size_variables():
    """Sparse gradients, non-trainable state and empty variables: exact vs Adam when unperturbed."""

    class Empty(keras.layers.Layer):
        def build(self, input_shape):
            self.empty = self.add_weight(shape=(0,), initializer="zeros", name="empty")

        def call(self, x):
            return x + tf.reduce_sum(self.empty)

    def model():
        keras.utils.set_random_seed(4)
        inputs = keras.Input((5,), dtype="int32")
        h = keras.layers.Embedding(50, 8)(inputs)
        h = keras.layers.BatchNormalization()(h)
        h = Empty()(keras.layers.GlobalAveragePooling1D()(h))
        return keras.Model(inputs, keras.layers.Dense(3)(h))

    rng = np.random.default_rng(0)
    x = rng.integers(0, 50, size=(64, 5)).astype("int32")
    y = rng.integers(0, 3, size=64).astype("int32")
    runs = []
    for opt in (kp.PerturbedAdam(grad_threshold=0.0, seed=1), keras.optimizers.Adam()):
        m = model()
        m.compile(optimizer=opt, loss=LOSS)
        m.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0, callbacks=[kp.PerturbationCallback()])
        runs.append(m)
    for a, b in zip(runs[0].weights, runs[1].weights):  # trainable and BatchNorm statistics
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    m = model()
    opt = kp.PerturbedAdam(**PERT)
    m.compile(optimizer=opt, loss=LOSS)
    m.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[kp.PerturbationCallback()])
    embedding = m.layers[1].embeddings
    assert float(tf.reduce_max(opt.perturbation_state(embedding)["sigma"])) > 0
    for v in m.non_trainable_variables:  # BatchNorm statistics are state, never perturbed
        with pytest.raises(ValueError, match="not a variable this optimizer"):
            opt.perturbation_state(v)


def test_trainable_integer_variable_is_left_alone():
    class IntLayer(keras.layers.Layer):
        def build(self, input_shape):
            self.k = self.add_weight(shape=(3,), initializer="ones", dtype="int32", name="k")
            self.w = self.add_weight(shape=(3, 1), initializer="ones", name="w")

        def call(self, x):
            return tf.matmul(x, self.w) + tf.cast(tf.reduce_sum(self.k), x.dtype)

    inputs = keras.Input((3,))
    layer = IntLayer()
    model = keras.Model(inputs, layer(inputs))
    opt = kp.PerturbedAdam(**PERT)
    model.compile(optimizer=opt, loss="mse")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras: no gradient for the integer variable
        model.fit(np.ones((8, 3), "float32"), np.zeros((8, 1), "float32"), epochs=2, verbose=0,
                  callbacks=[kp.PerturbationCallback()])
    np.testing.assert_array_equal(layer.k.numpy(), [1, 1, 1])
    assert int(tf.reduce_max(opt.perturbation_state(layer.k)["sigma"])) == 0
    assert not np.allclose(layer.w.numpy(), 1.0)


def test_loss_scale_optimizer_around_a_perturbed_one_works_and_the_reverse_is_refused():
    x, y = toy_data()
    model = small_model()
    opt = keras.optimizers.LossScaleOptimizer(kp.PerturbedAdam(learning_rate=1e-2, **PERT))
    model.compile(optimizer=opt, loss=LOSS)
    model.fit(x, y, epochs=2, verbose=0, callbacks=[kp.PerturbationCallback()])
    assert not opt.inner_optimizer.perturbation_is_applied
    with pytest.raises(TypeError, match="inner optimizer"):
        kp.perturb(keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam()))
