"""Jiang et al.'s norm, margin and path-norm measures against numpy on networks with BatchNorm,
folded by hand: s = γ / sqrt(var + ε), kernel s ⊙ W, bias β + s ⊙ (b − μ)."""

import math

import keras
import numpy as np
import pytest

from keras_pacgen import measures
from keras_pacgen.measures import folding


def _batchnorm_statistics(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            size = layer.gamma.shape[0]
            layer.gamma.assign(rng.uniform(0.5, 2.0, size))
            layer.beta.assign(rng.normal(size=size))
            layer.moving_mean.assign(rng.normal(size=size))
            layer.moving_variance.assign(rng.uniform(0.2, 3.0, size))


def mlp(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5), keras.layers.BatchNormalization(),
                              keras.layers.ReLU(), keras.layers.Dense(3)])
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    _batchnorm_statistics(model, seed)
    return model


def conv(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((8, 2)), keras.layers.Conv1D(4, 3, use_bias=False),
                              keras.layers.BatchNormalization(), keras.layers.ReLU(),
                              keras.layers.Flatten(), keras.layers.Dense(3)])
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    _batchnorm_statistics(model, seed)
    return model


def folded_mlp(model):
    dense1, bn, _, dense2 = model.layers
    w1, b1 = (v.numpy().astype(np.float64) for v in dense1.weights)
    mean, var = (v.numpy().astype(np.float64) for v in (bn.moving_mean, bn.moving_variance))
    s = bn.gamma.numpy() / np.sqrt(var + bn.epsilon)
    return [w1 * s, dense2.kernel.numpy().astype(np.float64)], \
        [bn.beta.numpy() + s * (b1 - mean), dense2.bias.numpy().astype(np.float64)]


def data(n=200, seed=0, shape=(6,)):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, *shape)).astype("float32"), rng.integers(0, 3, n).astype("int32")


@pytest.mark.parametrize("build", [mlp, conv])
def test_folding_keeps_the_function(build):
    model = build()
    x, _ = data(shape=model.inputs[0].shape[1:])
    folded = folding.fold(model)
    as_folded = model.stateless_call([np.float32(a) for a in folded.trainable],
                                     [np.float32(a) for a in folded.non_trainable], x, training=False)[0]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(as_folded),
                               keras.ops.convert_to_numpy(model(x, training=False)), rtol=1e-4, atol=1e-5)
    assert len(folded.kernels) == 2
    assert not np.allclose(folded.kernels[0], model.layers[0].kernel.numpy())  # BatchNorm went in


def test_norm_measures_are_jiang_et_al_s_on_the_folded_kernels():
    model = mlp()
    x, y = data()
    kernels, _ = folded_mlp(model)
    rng = np.random.default_rng(1)
    initial = [v.numpy() + rng.normal(size=v.shape).astype("float32") for v in model.trainable_variables]
    # at initialisation BatchNorm's statistics are mean 0, variance 1: s0 = γ0 / sqrt(1 + ε)
    s0 = initial[2] / np.sqrt(1 + model.layers[1].epsilon)
    differences = [kernels[0] - initial[0] * s0, kernels[1] - initial[4]]
    spec = np.array([np.linalg.norm(k, 2) ** 2 for k in kernels])
    fro = np.array([np.sum(k**2) for k in kernels])
    logits = model.predict(x, verbose=0).astype(np.float64)
    others = logits.copy()
    others[np.arange(len(y)), y] = -np.inf
    margins = np.sort(logits[np.arange(len(y)), y] - others.max(1))
    gamma = abs(margins[len(y) // 10 - 1])
    d = 2
    expected = {
        "params": 6 * 5 + 5 * 3,
        "inverse_margin": 1 / gamma**2,
        "log_prod_of_spec": np.sum(np.log(spec)),
        "log_prod_of_spec_over_margin": np.sum(np.log(spec)) - 2 * math.log(gamma),
        "log_spec_init_main": np.sum(np.log(spec)) - 2 * math.log(gamma)
        + math.log(np.sum([np.sum(a**2) for a in differences] / spec)),
        "log_spec_orig_main": np.sum(np.log(spec)) - 2 * math.log(gamma) + math.log(np.sum(fro / spec)),
        "fro_over_spec": np.sum(fro / spec),
        "log_sum_of_spec": math.log(d) + np.sum(np.log(spec)) / d,
        "log_sum_of_spec_over_margin": math.log(d) + (np.sum(np.log(spec)) - 2 * math.log(gamma)) / d,
        "log_prod_of_fro": np.sum(np.log(fro)),
        "log_prod_of_fro_over_margin": np.sum(np.log(fro)) - 2 * math.log(gamma),
        "log_sum_of_fro": math.log(d) + np.sum(np.log(fro)) / d,
        "log_sum_of_fro_over_margin": math.log(d) + (np.sum(np.log(fro)) - 2 * math.log(gamma)) / d,
        "fro_dist": sum(np.sum(a**2) for a in differences),
        "dist_spec_init": sum(np.linalg.norm(a, 2) ** 2 for a in differences),
        "param_norm": np.sum(fro),
    }
    for name, value in expected.items():
        kwargs = {"initial_weights": initial} if name in measures.NEED_INITIAL_WEIGHTS else {}
        assert measures.MEASURES[name](model, (x, y), **kwargs) == pytest.approx(value, rel=1e-6), name
    together = measures.compute_all(model, (x, y), measures=list(expected), initial_weights=initial)
    assert together == pytest.approx(expected, rel=1e-6)


def test_path_norm_is_the_squared_network_on_ones():
    model = mlp()
    x, y = data()
    kernels, biases = folded_mlp(model)
    hidden = np.maximum(np.ones(6) @ kernels[0] ** 2 + biases[0] ** 2, 0.0)  # BatchNorm: identity
    expected = np.sum(hidden @ kernels[1] ** 2 + biases[1] ** 2)
    assert measures.path_norm(model, (x, y)) == pytest.approx(expected, rel=1e-5)
    gamma = 1 / math.sqrt(measures.inverse_margin(model, (x, y)))
    assert measures.path_norm_over_margin(model, (x, y)) == pytest.approx(expected / gamma**2, rel=1e-5)


def test_products_stay_finite_where_the_product_overflows():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), *[keras.layers.Dense(64) for _ in range(60)],
                              keras.layers.Dense(2)])
    for layer in model.layers:
        layer.kernel.assign(layer.kernel.numpy() * 1000)
    spec = measures.log_prod_of_spec(model)
    assert math.isfinite(spec) and spec > 709  # e^709: the largest double
    measures.kendall_tau([spec, spec - 1, spec + 1], [0.2, 0.1, 0.3])  # ranks without overflow
