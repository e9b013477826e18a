"""PertOPT inside compile/fit, on every backend: exactness, clean weights, determinism, saving,
the non-finite guard."""

import warnings

import keras
import numpy as np
import pytest
from conftest import JIT, LOSS, gradients, small_model, toy_data
from keras import ops

import keras_pacgen as kp

PERT = dict(eta=0.01, gamma=1.0, grad_threshold=10.0, seed=5)


def weights(model):
    return [v.numpy() for v in model.trainable_variables]


def per_variable(cls):
    """`cls` as a subclass: on PyTorch Keras swaps the built-in Adam and SGD for `torch._foreach`
    versions (equal to float32 rounding), and the perturbed optimizers wrap the per-variable
    update that every backend shares; a subclass is not swapped."""
    return type(cls.__name__, (cls,), {})


def fit(opt, epochs=2, jit=False, callbacks=None, validation=False, model=None, **kw):
    x, y = toy_data()
    model = model or small_model()
    model.compile(optimizer=opt, loss=LOSS, jit_compile=jit)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(
            x, y, batch_size=32, epochs=epochs, shuffle=False, verbose=0,
            validation_data=(x[:64], y[:64]) if validation else None,
            callbacks=callbacks or [], **kw,
        )
    return model


@pytest.mark.parametrize("jit", JIT)
@pytest.mark.parametrize(
    "ours, theirs, kwargs",
    [
        (kp.PerturbedAdam, per_variable(keras.optimizers.Adam), dict(learning_rate=1e-2)),
        (kp.PerturbedSGD, per_variable(keras.optimizers.SGD), dict(learning_rate=0.1, momentum=0.9)),
    ],
)
def test_grad_threshold_zero_is_the_wrapped_optimizer_exactly(ours, theirs, kwargs, jit):
    a = fit(ours(grad_threshold=0.0, eta=0.01, gamma=10.0, seed=1, **kwargs), jit=jit,
            callbacks=[kp.PerturbationCallback()])
    b = fit(theirs(**kwargs), jit=jit)
    for wa, wb in zip(weights(a), weights(b)):
        np.testing.assert_array_equal(wa, wb)
    # and the perturbation does change training when it is on
    c = fit(ours(**PERT, **kwargs), jit=jit)
    assert any(not np.array_equal(wa, wc) for wa, wc in zip(weights(a), weights(c)))


@pytest.mark.parametrize(
    "base_kwargs",
    [
        dict(weight_decay=0.05),
        dict(clipnorm=0.01),
        dict(clipvalue=1e-3),
        dict(global_clipnorm=0.02),
        dict(use_ema=True, ema_momentum=0.9),
        dict(use_ema=True, ema_momentum=0.5, ema_overwrite_frequency=3),
    ],
)
def test_wrapped_features_act_on_clean_weights(base_kwargs):
    """A plain Adam fed the same gradients on a copy of the clean weights stays bit-identical."""
    x, y = toy_data()
    model = small_model(constraint=keras.constraints.NonNeg())
    shadow = small_model(constraint=keras.constraints.NonNeg())
    opt = kp.PerturbedAdam(learning_rate=1e-2, **PERT, **base_kwargs)
    ref = per_variable(keras.optimizers.Adam)(learning_rate=1e-2, **base_kwargs)
    pv, sv = model.trainable_variables, shadow.trainable_variables
    moved = 0.0
    for step in range(6):
        xb, yb = x[step * 16:(step + 1) * 16], y[step * 16:(step + 1) * 16]
        grads = gradients(model, xb, yb)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opt.apply(grads, pv)
        ref.apply(grads, sv)
        for p, s in zip(pv, sv):
            st = opt.perturbation_state(p)
            np.testing.assert_array_equal(np.asarray(st["clean_weights"]), s.numpy())
            moved = max(moved, float(np.max(np.abs(p.numpy() - s.numpy()))))
    assert moved > 0  # the model really held perturbed weights meanwhile
    if base_kwargs.get("use_ema"):
        for a, b in zip(opt._model_variables_moving_average, ref._model_variables_moving_average):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        opt.finalize_variable_values(pv)
        ref.finalize_variable_values(sv)
        for p, s in zip(pv, sv):
            np.testing.assert_array_equal(p.numpy(), s.numpy())


def test_validation_and_evaluate_see_clean_weights():
    x, y = toy_data()
    model = small_model()
    opt = kp.PerturbedAdam(learning_rate=1e-2, **PERT)
    model.compile(optimizer=opt, loss=LOSS)
    history = model.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0,
                        validation_data=(x[:64], y[:64]), callbacks=[kp.PerturbationCallback()])
    assert not opt.perturbation_is_applied  # fit returned the clean weights
    clean_val = model.evaluate(x[:64], y[:64], verbose=0)
    np.testing.assert_allclose(history.history["val_loss"][-1], clean_val, rtol=1e-6)
    opt.apply_perturbation()
    perturbed_val = model.evaluate(x[:64], y[:64], verbose=0)
    assert abs(perturbed_val - clean_val) > 1e-4


def test_clean_weights_context_and_idempotent_removal():
    model = fit(kp.PerturbedAdam(learning_rate=1e-2, **PERT), epochs=1)
    opt = model.optimizer
    clean = weights(model)
    opt.apply_perturbation()
    opt.apply_perturbation()  # twice: no double perturbation
    perturbed = weights(model)
    assert any(not np.array_equal(a, b) for a, b in zip(clean, perturbed))
    with opt.clean_weights():
        for a, b in zip(clean, weights(model)):
            np.testing.assert_array_equal(a, b)
    for a, b in zip(perturbed, weights(model)):
        np.testing.assert_array_equal(a, b)  # the same u, bit for bit
    opt.remove_perturbation()
    opt.remove_perturbation()  # twice: never subtracts u twice
    opt.finalize_variable_values(model.trainable_variables)
    for a, b in zip(clean, weights(model)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("jit", JIT)
def test_evaluating_between_epochs_does_not_change_training(jit):
    """Validation, checkpoints and epoch-end removal re-apply the perturbation exactly.

    Under XLA too: the re-applied u is computed outside the compiled step (see noise.py).
    """
    args = dict(learning_rate=1e-2, steps_per_epoch=4, **PERT)
    a = fit(kp.PerturbedAdam(**args), epochs=3, jit=jit, validation=True,
            callbacks=[kp.PerturbationCallback()])
    b = fit(kp.PerturbedAdam(**args), epochs=3, jit=jit)
    for wa, wb in zip(weights(a), weights(b)):
        np.testing.assert_array_equal(wa, wb)


def test_model_checkpoint_saves_clean_weights(tmp_path):
    path = str(tmp_path / "ckpt.weights.h5")
    model = fit(kp.PerturbedAdam(learning_rate=1e-2, **PERT), epochs=2, validation=True,
                callbacks=[kp.PerturbationCallback(),
                           keras.callbacks.ModelCheckpoint(path, save_weights_only=True)])
    fresh = small_model(seed=9)
    fresh.load_weights(path)
    for a, b in zip(weights(model), weights(fresh)):
        np.testing.assert_array_equal(a, b)


def test_checkpoint_before_the_callback_still_sees_clean_weights_at_epoch_end(tmp_path):
    path = str(tmp_path / "ckpt.weights.h5")
    model = fit(kp.PerturbedAdam(learning_rate=1e-2, **PERT), epochs=2,
                callbacks=[keras.callbacks.ModelCheckpoint(path, save_weights_only=True),
                           kp.PerturbationCallback()])
    fresh = small_model(seed=9)
    fresh.load_weights(path)
    for a, b in zip(weights(model), weights(fresh)):
        np.testing.assert_array_equal(a, b)


def test_same_seed_bit_identical_other_seed_differs():
    a = fit(kp.PerturbedAdam(learning_rate=1e-2, **PERT))
    b = fit(kp.PerturbedAdam(learning_rate=1e-2, **PERT))
    c = fit(kp.PerturbedAdam(learning_rate=1e-2, **{**PERT, "seed": 6}))
    for wa, wb in zip(weights(a), weights(b)):
        np.testing.assert_array_equal(wa, wb)
    assert any(not np.array_equal(wa, wc) for wa, wc in zip(weights(a), weights(c)))


def test_save_load_restores_every_slot_and_training_continues_identically(tmp_path):
    args = dict(learning_rate=1e-2, **PERT)
    cb = [kp.PerturbationCallback()]
    model = fit(kp.PerturbedAdam(**args), epochs=2, callbacks=cb)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.optimizer) is kp.PerturbedAdam
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    x, y = toy_data()
    for m in (model, loaded):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m.fit(x, y, batch_size=32, epochs=4, initial_epoch=2, shuffle=False, verbose=0,
                  callbacks=[kp.PerturbationCallback()])
    for a, b in zip(weights(model), weights(loaded)):
        np.testing.assert_array_equal(a, b)


def test_resumed_run_continues_as_if_never_stopped(tmp_path):
    args = dict(learning_rate=1e-2, **PERT)
    straight = fit(kp.PerturbedAdam(**args), epochs=4, callbacks=[kp.PerturbationCallback()])
    first = fit(kp.PerturbedAdam(**args), epochs=2, callbacks=[kp.PerturbationCallback()])
    path = str(tmp_path / "half.keras")
    first.save(path)
    resumed = keras.models.load_model(path)
    x, y = toy_data()
    resumed.fit(x, y, batch_size=32, epochs=4, initial_epoch=2, shuffle=False, verbose=0,
                callbacks=[kp.PerturbationCallback()])
    for a, b in zip(weights(straight), weights(resumed)):
        np.testing.assert_array_equal(a, b)


def test_perturbed_lion_saves_and_loads(tmp_path):
    opt = kp.perturb(keras.optimizers.Lion(learning_rate=1e-3), **PERT)
    model = fit(opt, epochs=1, callbacks=[kp.PerturbationCallback()])
    path = str(tmp_path / "lion.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.optimizer).__name__ == "PerturbedLion"


def test_warns_without_callback_and_not_with_it():
    x, y = toy_data()
    model = small_model()
    model.compile(optimizer=kp.PerturbedAdam(**PERT), loss=LOSS)
    with pytest.warns(UserWarning, match="PerturbationCallback"):
        model.fit(x, y, epochs=1, verbose=0)
    model = small_model()
    model.compile(optimizer=kp.PerturbedAdam(**PERT), loss=LOSS)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        model.fit(x, y, epochs=1, verbose=0, callbacks=[kp.PerturbationCallback()])


def _trained(opt):
    """A small model trained one epoch by `opt`, perturbed, and `apply(grads)` for it."""
    x, y = toy_data()
    model = small_model()
    model.compile(optimizer=opt, loss=LOSS)
    model.fit(x, y, epochs=1, verbose=0, callbacks=[kp.PerturbationCallback()])
    opt.apply_perturbation()

    def apply(grads):
        opt.apply([ops.convert_to_tensor(g) for g in grads], model.trainable_variables)

    return model, apply


def _state(model, opt):
    """The model's variables and every optimizer variable but the skipped-step counter."""
    skipped = id(opt.nonfinite_steps.value)
    return [v.numpy() for v in model.trainable_variables] + [
        np.asarray(v) for v in opt.variables if id(v.value) != skipped
    ]


def _gradients(model, k, position, value):
    """Gradients of 0.01, except entry `position` of gradient `k`."""
    grads = [np.full(v.shape, 0.01, np.float32) for v in model.trainable_variables]
    grads[k].reshape(-1)[position] = value
    return grads


@pytest.mark.parametrize("make", [
    lambda: kp.PerturbedAdam(learning_rate=1e-2, **PERT),
    lambda: kp.PerturbedSGD(learning_rate=1e-2, momentum=0.9, **PERT),
], ids=["adam", "sgd"])
def test_nonfinite_gradient_skips_the_step(make):
    """The wrapped update runs speculatively (before the finite check) and is undone: weights,
    every slot and the step counter come back bit for bit, also when only one gradient is bad."""
    opt = make()
    model, apply = _trained(opt)
    before = _state(model, opt)
    before_clean = [np.asarray(opt.perturbation_state(v)["clean_weights"])
                    for v in model.trainable_variables]
    iterations = int(opt.iterations.numpy())
    for bad_index in (None, 0):  # every gradient NaN; then only the first one Inf
        bad = [np.full(v.shape, np.nan if bad_index is None else 0.01, "float32")
               for v in model.trainable_variables]
        if bad_index is not None:
            bad[bad_index].reshape(-1)[0] = np.inf
        apply(bad)
        for a, b in zip(before, _state(model, opt)):
            np.testing.assert_array_equal(a, b)
    assert int(opt.nonfinite_steps.numpy()) == 2
    # a finite step afterwards still trains
    apply([np.full(v.shape, 0.01, "float32") for v in model.trainable_variables])
    assert int(opt.iterations.numpy()) == iterations + 1
    assert all(not np.array_equal(np.asarray(opt.perturbation_state(v)["clean_weights"]), a)
               for v, a in zip(model.trainable_variables, before_clean))


@pytest.mark.parametrize("make", [
    lambda: kp.PerturbedAdam(learning_rate=1e-2, **PERT),
    lambda: kp.PerturbedAdam(learning_rate=1e-2, beta_2=0.99, **PERT),
    lambda: kp.PerturbedAdam(learning_rate=1e-2, beta_2=0.0, **{**PERT, "hessian_decay": 0.0}),
    lambda: kp.PerturbedSGD(learning_rate=1e-2, momentum=0.9, **PERT),
    lambda: kp.PerturbedAdam(learning_rate=1e-2, clipvalue=1.0, **PERT),
    lambda: kp.PerturbedAdam(learning_rate=1e-2, clipnorm=1.0, **PERT),
    lambda: kp.PerturbedSGD(learning_rate=1e-2, global_clipnorm=1.0, **PERT),
], ids=["adam_shared_h", "adam_own_h", "adam_shared_h_decay0", "sgd", "adam_clipvalue",
        "adam_clipnorm", "sgd_global_clipnorm"])
def test_one_nonfinite_entry_anywhere_skips_the_step(make):
    """One NaN, +Inf or -Inf at the first, a middle or the last entry of any one gradient skips
    the whole step, bit for bit: with h shared with Adam or in its own slot, and with clipping
    (the check is on the gradients before clipping: clipvalue would make an Inf finite)."""
    opt = make()
    model, apply = _trained(opt)
    before = _state(model, opt)
    cases = 0
    for k, var in enumerate(model.trainable_variables):
        for position in sorted({0, int(np.prod(var.shape)) // 2, int(np.prod(var.shape)) - 1}):
            for value in (np.nan, np.inf, -np.inf):
                apply(_gradients(model, k, position, value))
                cases += 1
                for a, b in zip(before, _state(model, opt)):
                    np.testing.assert_array_equal(a, b)
    assert int(opt.nonfinite_steps.numpy()) == cases
    apply(_gradients(model, 0, 0, 0.01))  # and a finite step trains
    assert int(opt.nonfinite_steps.numpy()) == cases
    assert not np.array_equal(before[0], model.trainable_variables[0].numpy())


def test_float16_variables_train_and_skip_nonfinite_steps():
    """float16 variables (not mixed precision: the weights themselves): ρ is kept in float32
    whatever the variable's dtype, a large finite gradient (300, whose square overflows float16)
    trains, and a NaN is skipped."""
    x, y = toy_data()
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3, dtype="float16")])
    opt = kp.PerturbedSGD(learning_rate=1e-4, **PERT)
    model.compile(optimizer=opt, loss=LOSS)
    model.fit(x, y, epochs=1, verbose=0, callbacks=[kp.PerturbationCallback()])
    def apply(grads):
        opt.apply([ops.convert_to_tensor(g) for g in grads], model.trainable_variables)

    kernel = model.trainable_variables[0]
    grads = [np.full(v.shape, 300.0, v.dtype) for v in model.trainable_variables]
    before = kernel.numpy()
    apply(grads)
    assert int(opt.nonfinite_steps.numpy()) == 0
    assert not np.array_equal(before, kernel.numpy())
    apply([np.full(v.shape, np.nan, v.dtype) for v in model.trainable_variables])
    assert int(opt.nonfinite_steps.numpy()) == 1


def test_predict_sees_clean_weights_and_training_resumes_on_the_perturbed_point():
    x, _ = toy_data()
    model = fit(kp.PerturbedAdam(learning_rate=1e-2, **PERT), epochs=1)
    clean = model.predict(x, verbose=0)
    opt = model.optimizer
    opt.apply_perturbation()
    perturbed = [v.numpy() for v in model.trainable_variables]
    cb = kp.PerturbationCallback()
    cb.set_model(model)
    predicted = model.predict(x, verbose=0, callbacks=[cb])
    np.testing.assert_allclose(predicted, clean, atol=1e-6)
    cb.on_train_batch_begin(0)  # training resumes: the same u comes back
    for a, v in zip(perturbed, model.trainable_variables):
        np.testing.assert_array_equal(a, v.numpy())


def test_weights_set_while_unperturbed_are_adopted_by_the_next_step():
    """After fit() the model holds the clean weights and the user may change them; the next
    step (no callback: the optimizer's own restore) must train from the new weights."""
    x, y = toy_data()
    ours = fit(kp.PerturbedAdam(learning_rate=1e-2, grad_threshold=0.0, seed=1), epochs=1,
               callbacks=[kp.PerturbationCallback()])
    theirs = fit(per_variable(keras.optimizers.Adam)(learning_rate=1e-2), epochs=1)
    new = [0.5 * w + 0.1 for w in theirs.get_weights()]
    for model in (ours, theirs):
        model.set_weights(new)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.train_on_batch(x[:32], y[:32])
    for a, b in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(ours.get_weights()[0], new[0])  # it did train


class _Scaled(keras.layers.Layer):
    """Dense with an extra variable updated by `overwrite_with_gradient` (as float8 scales are)."""

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], 3), initializer="glorot_uniform")
        self.scale = self.add_weight(shape=(), initializer="ones")
        self.scale.overwrite_with_gradient = True

    def call(self, x):
        return keras.ops.matmul(x, self.kernel) * self.scale


def test_overwrite_with_gradient_variables_are_not_perturbed_and_are_restored_on_a_skipped_step():
    x, y = toy_data()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), _Scaled()])
    opt = kp.PerturbedAdam(learning_rate=1e-2, **PERT)
    model.compile(optimizer=opt, loss=LOSS)
    model.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[kp.PerturbationCallback()])
    layer = model.layers[0]
    with pytest.raises(ValueError, match="overwrite_with_gradient"):
        opt.perturbation_state(layer.scale)
    assert not np.allclose(layer.scale.numpy(), 1.0)  # overwritten by its gradient
    opt.remove_perturbation()
    clean = layer.scale.numpy()
    opt.apply_perturbation()
    np.testing.assert_array_equal(layer.scale.numpy(), clean)  # never perturbed
    assert not np.array_equal(layer.kernel.numpy(),
                              np.asarray(opt.perturbation_state(layer.kernel)["clean_weights"]))
    before = [v.numpy() for v in model.trainable_variables]
    def apply(grads):
        opt.apply([ops.convert_to_tensor(g, "float32") for g in grads], model.trainable_variables)

    apply([np.full(v.shape, np.nan) for v in model.trainable_variables])
    # only the unperturbed variable's gradient is bad
    apply([np.full(layer.kernel.shape, 0.01), np.array(np.inf)])
    for a, v in zip(before, model.trainable_variables):
        np.testing.assert_array_equal(a, v.numpy())
    assert int(opt.nonfinite_steps.numpy()) == 2


@pytest.mark.parametrize("jit", JIT)
def test_a_nonfinite_batch_inside_fit_is_skipped(jit):
    """The guard inside the (compiled) train step: a batch with a NaN input leaves the weights and
    every slot as they were, and the count is reported."""
    x, y = toy_data()
    model = small_model()
    opt = kp.PerturbedAdam(learning_rate=1e-2, **PERT)
    model.compile(optimizer=opt, loss=LOSS, jit_compile=jit)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[kp.PerturbationCallback()])
    before = _state(model, opt)
    bad = x[:32].copy()
    bad[3, 2] = np.nan
    model.train_on_batch(bad, y[:32])
    for a, b in zip(before, _state(model, opt)):
        np.testing.assert_array_equal(a, b)
    assert int(opt.nonfinite_steps.numpy()) == 1
