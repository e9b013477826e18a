"""What a measure reads: arrays, (x, y, sample_weight), any batched tf.data.Dataset, read once
into a fixed set; the data loss by default; bad input refused by name."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_pacgen import measures, training
from keras_pacgen.measures import _common

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def conv_model(seed=0, l2=0.0):
    keras.utils.set_random_seed(seed)
    regularizer = keras.regularizers.L2(l2) if l2 else None
    model = keras.Sequential([keras.Input((12, 1)),
                              keras.layers.Conv1D(4, 3, activation="relu", kernel_regularizer=regularizer),
                              keras.layers.Flatten(), keras.layers.Dense(3, kernel_regularizer=regularizer)])
    model.compile(loss=LOSS)
    return model


def arrays(n=96, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 12, 1)).astype("float32"), rng.integers(0, 3, n).astype("int32")


def test_batched_datasets_with_or_without_drop_remainder_are_the_arrays():
    model = conv_model()
    x, y = arrays()
    expected = measures.hessian_trace(model, (x, y), samples=4, tol=0.0)
    for drop in (False, True):  # 96 = 3 × 32: nothing dropped
        ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(32, drop_remainder=drop)
        assert measures.hessian_trace(model, ds, samples=4, tol=0.0) == pytest.approx(expected, rel=1e-5)


def test_a_shuffled_dataset_gives_one_fixed_subset_for_a_seed():
    model = conv_model()
    x, y = arrays()
    ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(96, reshuffle_each_iteration=True).batch(8)
    first = measures.read(ds, model=model, max_samples=40, seed=3)
    second = measures.read(ds, model=model, max_samples=40, seed=3)
    np.testing.assert_array_equal(first.x, second.x)
    assert len(first) == 40
    assert not np.array_equal(first.x, measures.read(ds, model=model, max_samples=40, seed=4).x)
    value = measures.pacbayes_flatness(model, ds, max_samples=40, seed=3)
    assert value == measures.pacbayes_flatness(model, ds, max_samples=40, seed=3)


def test_sample_weights_count_as_keras_counts_them():
    model = conv_model()
    x, y = arrays()
    w = np.random.default_rng(1).uniform(0, 2, len(y)).astype("float32")
    objective = _common.objective(model, (x, y, w), batch_size=32)
    assert objective.value() == pytest.approx(
        model.evaluate(x, y, sample_weight=w, batch_size=32, verbose=0), rel=1e-5)
    wrong = np.argmax(model.predict(x, verbose=0), axis=1) != y
    assert objective.error() == pytest.approx(np.sum(w * wrong) / np.sum(w), rel=1e-6)
    ds = tf.data.Dataset.from_tensor_slices((x, y, w)).batch(16)
    assert _common.objective(model, ds, batch_size=32).value() == pytest.approx(objective.value(), rel=1e-5)


def test_the_data_loss_leaves_model_losses_out_unless_asked():
    model = conv_model(l2=0.05)
    x, y = arrays()
    data_loss = float(LOSS(y, model(x)))
    penalty = float(sum(model.losses))
    assert penalty > 0.1 * data_loss
    assert _common.objective(model, (x, y)).value() == pytest.approx(data_loss, rel=1e-5)
    assert _common.objective(model, (x, y), include_regularization=True).value() == pytest.approx(
        data_loss + penalty, rel=1e-5)
    stop = training.StopAtLoss((x, y), target=data_loss + 1e-3)
    stop.set_model(model)
    assert stop.loss() == pytest.approx(data_loss, rel=1e-5)
    stop.on_epoch_end(0, {})
    assert stop.converged  # the penalty would have kept it from converging
    strict = training.StopAtLoss((x, y), target=data_loss + 1e-3, include_regularization=True)
    strict.set_model(model)
    strict.on_epoch_end(0, {})
    assert not strict.converged


def test_bad_data_is_refused_by_name():
    model = conv_model()
    x, y = arrays()
    unbatched = tf.data.Dataset.from_tensor_slices((x, y))
    with pytest.raises(ValueError, match="unbatched"):
        measures.hessian_trace(model, unbatched)
    with pytest.raises(ValueError, match="infinite"):
        measures.hessian_trace(model, unbatched.batch(8).repeat())
    with pytest.raises(ValueError, match="different lengths"):
        measures.hessian_trace(model, (x, y[:-1]))
    with pytest.raises(ValueError, match="empty"):
        measures.hessian_trace(model, (x[:0], y[:0]))
    with pytest.raises(ValueError, match="sample weights"):
        measures.hessian_trace(model, (x, y, -np.ones(len(y))))
    with pytest.raises(ValueError, match="`data` must be"):
        measures.hessian_trace(model, x)
    with pytest.raises(ValueError, match="max_samples"):
        measures.hessian_trace(model, (x, y), max_samples=0)
