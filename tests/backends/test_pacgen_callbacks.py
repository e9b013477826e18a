"""ψ while training, on every backend: the PacGen metric (from the optimizer's state) and
PacGenCallback (the clean gap and ψ into the logs, CSV, TensorBoard and a plot)."""

import math
import os
import warnings

import keras
import numpy as np
import pytest
from conftest import JIT, LOSS, small_model, toy_data

import keras_pacgen as kp


def reference_psi_from_state(opt, model, gamma=0.1):
    ws, hs, rho = [], [], 0.0
    t = int(opt.iterations.numpy())
    for v in model.trainable_variables:
        st = {k: np.asarray(a, np.float64) for k, a in opt.perturbation_state(v).items()}
        ws.append(st["clean_weights"])
        hs.append(st["hessian"] / (1 - opt.hessian_decay**t))
        rho = max(rho, float(np.max(st["rho"])))
    m = sum(w.size for w in ws)
    total = 0.0
    for w, h in zip(ws, hs):
        k = gamma * np.abs(w) + 0.1
        a = h + rho * math.sqrt(m) * k
        total += np.sum(np.log((np.abs(w) + k) * np.maximum(np.sqrt(np.maximum(a, 0)), 1 / k)))
    return total


@pytest.mark.parametrize("jit", JIT)
def test_pacgen_metric_reports_psi_of_the_clean_weights(jit):
    x, y = toy_data()
    model = small_model()
    opt = kp.PerturbedAdam(learning_rate=1e-2, eta=0.01, gamma=1.0, grad_threshold=10.0, seed=2)
    metrics = [kp.PacGen(model, update_every=1), kp.PacGen(model, gamma=1.0, update_every=1, name="pacgen_1")]
    model.compile(optimizer=opt, loss=LOSS, metrics=metrics, jit_compile=jit)
    history = model.fit(x, y, epochs=2, batch_size=32, verbose=0, validation_data=(x[:64], y[:64]),
                        callbacks=[kp.PerturbationCallback()]).history
    expected = reference_psi_from_state(opt, model)
    assert history["pacgen"][-1] == pytest.approx(expected, rel=1e-5)
    # a second ψ metric (another γ) reads the same state
    assert history["pacgen_1"][-1] == pytest.approx(reference_psi_from_state(opt, model, 1.0), rel=1e-5)
    assert history["val_pacgen"][-1] == pytest.approx(expected, rel=1e-5)  # the weights of the step
    assert history["pacgen"][0] != pytest.approx(expected, rel=1e-5)  # updated, not a constant
    assert model.evaluate(x, y, verbose=0, return_dict=True)["pacgen"] == pytest.approx(expected, rel=1e-5)


def test_pacgen_metric_with_adam_and_error_with_sgd():
    x, y = toy_data()
    model = small_model()
    model.compile(optimizer="adam", loss=LOSS, metrics=[kp.PacGen(model)])
    if keras.backend.backend() == "jax":  # Adam's state is not kept for a metric there
        with pytest.raises(ValueError, match="PacGenCallback"):
            model.fit(x, y, epochs=1, verbose=0)
    else:
        history = model.fit(x, y, epochs=1, verbose=0)
        assert math.isfinite(history.history["pacgen"][-1])
    model = small_model()
    model.compile(optimizer="sgd", loss=LOSS, metrics=[kp.PacGen(model)])
    with pytest.raises(ValueError, match="pacgen_score"):
        model.fit(x, y, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="needs the model"):
        kp.PacGen().update_state()


def test_callback_logs_gap_and_psi_everywhere(tmp_path):
    x, y = toy_data()
    xt, yt = toy_data(n=64, seed=9)
    model = small_model()
    model.compile(optimizer=kp.PerturbedAdam(learning_rate=1e-2, gamma=1.0, seed=1), loss=LOSS)
    cb = kp.PacGenCallback((x, y), (xt, yt), train_batches=2, batch_size=32,
                           csv_path=str(tmp_path / "m.csv"), tensorboard_dir=str(tmp_path / "tb"),
                           plot_path=str(tmp_path / "gap.png"))
    csv_logger = keras.callbacks.CSVLogger(str(tmp_path / "keras.csv"))
    history = model.fit(x, y, epochs=3, batch_size=32, verbose=0, callbacks=[cb, csv_logger])
    for key in ("gen_gap", "pacgen", "clean_train_loss", "clean_test_loss"):
        assert len(history.history[key]) == 3
    # the last values are those of the final clean model
    test_loss = model.evaluate(xt, yt, verbose=0)
    train_loss = model.evaluate(x[:64], y[:64], verbose=0)
    assert history.history["clean_test_loss"][-1] == pytest.approx(test_loss, rel=1e-5)
    assert history.history["clean_train_loss"][-1] == pytest.approx(train_loss, rel=1e-5)
    assert history.history["gen_gap"][-1] == pytest.approx(test_loss - train_loss, rel=1e-4, abs=1e-6)
    assert "gen_gap" in open(tmp_path / "keras.csv").readline()
    assert len(open(tmp_path / "m.csv").read().strip().splitlines()) == 4
    assert os.path.getsize(tmp_path / "gap.png") > 1000
    events = [f for _, _, fs in os.walk(tmp_path / "tb") for f in fs if "tfevents" in f]
    assert events


def test_callback_restores_the_perturbation_and_works_with_any_optimizer():
    x, y = toy_data()
    args = dict(learning_rate=1e-2, gamma=1.0, grad_threshold=10.0, seed=1, steps_per_epoch=4)
    runs = []
    for cbs in ([kp.PacGenCallback((x, y), (x[:64], y[:64]))], [kp.PerturbationCallback()]):
        model = small_model()
        model.compile(optimizer=kp.PerturbedAdam(**args), loss=LOSS)
        model.fit(x, y, epochs=3, batch_size=32, shuffle=False, verbose=0, callbacks=cbs)
        runs.append([v.numpy() for v in model.trainable_variables])
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)
    model = small_model()
    model.compile(optimizer="sgd", loss=LOSS)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        history = model.fit(x, y, epochs=2, verbose=0, callbacks=[kp.PacGenCallback((x, y), (x, y))])
    assert all(math.isfinite(p) for p in history.history["pacgen"])


def test_the_pacgen_metric_says_what_to_use_on_jax():
    if keras.backend.backend() != "jax":
        pytest.skip("JAX only")
    x, y = toy_data()
    model = small_model()
    opt = keras.optimizers.LossScaleOptimizer(kp.PerturbedAdam(seed=0))
    model.compile(optimizer=opt, loss=LOSS, metrics=[kp.PacGen(model)])
    with pytest.raises(ValueError, match="LossScaleOptimizer.*PacGenCallback"):
        model.fit(x, y, epochs=1, verbose=0)
