"""Mixed precision (a LossScaleOptimizer around a perturbed one) and the SavedModel export of the
clean weights, on every backend that has them."""

import warnings

import keras
import numpy as np
import pytest
from conftest import LOSS, small_model, toy_data

import keras_pacgen as kp

PERT = dict(eta=0.01, gamma=1.0, grad_threshold=10.0, seed=5)


@pytest.fixture
def mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    yield
    keras.mixed_precision.set_global_policy("float32")


def test_mixed_precision_wraps_trains_and_skips_nonfinite_steps(mixed_precision):
    x, y = toy_data()
    model = small_model()
    opt = kp.PerturbedAdam(learning_rate=1e-2, **PERT)
    model.compile(optimizer=opt, loss=LOSS)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert model.optimizer.inner_optimizer is opt
    history = model.fit(x, y, batch_size=32, epochs=4, shuffle=False, verbose=0,
                        callbacks=[kp.PerturbationCallback()])
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert any(np.max(np.asarray(opt.perturbation_state(v)["sigma"])) > 0
               for v in model.trainable_variables)
    # a batch with non-finite (scaled) gradients: LossScaleOptimizer skips the inner apply
    weights = [v.numpy() for v in model.trainable_variables]
    state = [v.numpy() for v in opt.variables]
    scale = float(model.optimizer.dynamic_scale.numpy())
    bad = x[:32].copy()
    bad[0, 0] = np.inf
    model.train_on_batch(bad, y[:32])
    for a, v in zip(weights, model.trainable_variables):
        np.testing.assert_array_equal(a, v.numpy())
    for a, v in zip(state, opt.variables):
        np.testing.assert_array_equal(a, v.numpy())
    assert float(model.optimizer.dynamic_scale.numpy()) == scale / 2


def test_export_serves_the_clean_model(tmp_path):
    if keras.backend.backend() == "torch":
        pytest.skip("Keras's SavedModel export fails on PyTorch (torch.export), for any model")
    import tensorflow as tf

    x, y = toy_data()
    model = small_model()
    model.compile(optimizer=kp.PerturbedAdam(learning_rate=1e-2, **PERT), loss=LOSS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0,
                  callbacks=[kp.PerturbationCallback()])
    path = str(tmp_path / "exported")
    model.export(path, verbose=False)
    reloaded = tf.saved_model.load(path)  # keep a reference: its variables die with it
    served = reloaded.serve(tf.constant(x)).numpy()
    clean = keras.ops.convert_to_numpy(model.predict(x, verbose=0))
    np.testing.assert_allclose(served, clean, atol=1e-6)
    model.optimizer.apply_perturbation()  # perturbed weights really differ
    assert np.max(np.abs(served - model.predict(x, verbose=0))) > 1e-4
