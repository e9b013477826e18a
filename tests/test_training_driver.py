"""The optimizer registry and the training driver that the command, examples and benchmarks share."""

import keras
import numpy as np
import pytest

import keras_pacgen as kp
from keras_pacgen import datasets, training


def test_registry_names_defaults_and_overrides():
    sgd = training.make_optimizer("sgd")
    assert isinstance(sgd, keras.optimizers.SGD) and sgd.momentum == 0.9
    assert float(sgd.learning_rate) == pytest.approx(0.05)
    pert = training.make_optimizer("perturbed_sgd", learning_rate=0.1, gamma=3.0, eta=None)
    assert isinstance(pert, kp.PerturbedSGD) and pert.gamma == 3.0 and pert.eta == 0.01
    assert float(pert.learning_rate) == pytest.approx(0.1)
    adam = training.make_optimizer("adam", momentum=0.9, gamma=3.0)  # not Adam's: left out
    assert type(adam) is keras.optimizers.Adam
    assert type(training.make_optimizer("sam_adam")) is keras.optimizers.Adam  # what SAM wraps
    with pytest.raises(ValueError, match="`optimizer` must be one of 'adam'"):
        training.make_optimizer("adamw")


def test_run_stops_at_the_target_loss_and_reports_clean_numbers():
    config = training.RunConfig(dataset="digits", model="conv_net", width=16, depth=2,
                                optimizer="sgd", learning_rate=0.05, batch_size=32, epochs=200,
                                target_loss=0.05, train_size=300, validation_split=0.2)
    result = training.run(config)
    assert result.converged and result.train_loss <= 0.05 and result.epochs < 200
    (x, y), (x_val, y_val), (x_test, y_test) = datasets.split(
        datasets.load("digits").arrays, validation_split=0.2, train_size=300)
    assert len(x) == 300 and len(x_val) == round(0.2 * 1437)
    train = result.model.evaluate(x, y, verbose=0, return_dict=True)
    assert result.train_loss == pytest.approx(train["loss"], rel=1e-5)
    assert result.gap == pytest.approx(result.test_loss - result.train_loss)
    assert result.val_accuracy == pytest.approx(
        result.model.evaluate(x_val, y_val, verbose=0, return_dict=True)["accuracy"])
    assert len(result.initial_weights) == len(result.model.trainable_variables)
    assert not np.array_equal(result.initial_weights[0], result.model.trainable_variables[0].numpy())


def test_run_caps_the_steps_and_trains_sam_and_pertopt():
    capped = training.run(training.RunConfig(dataset="digits", model="conv_net", width=8, depth=1,
                                             optimizer="sgd", learning_rate=1e-4, epochs=100,
                                             target_loss=0.01, max_steps=20, train_size=200,
                                             batch_size=50))
    assert not capped.converged and capped.steps == 20 and capped.train_loss > 0.01
    for name in ("sam_adam", "perturbed_adam"):
        result = training.run(training.RunConfig(dataset="digits", model="conv_net", width=8,
                                                 depth=1, optimizer=name, epochs=2,
                                                 train_size=200, gamma=1.0))
        assert result.model.name == "conv_net" and result.steps == 2 * 4
        assert result.epochs == 2 and np.isfinite(result.test_loss)
    assert isinstance(result.optimizer, kp.PerturbedAdam) and not result.optimizer.perturbation_is_applied


def test_run_refuses_subsets_of_tfds_data(tmp_path):
    from keras_pacgen.datasets import Data

    data = Data(name="cifar10", train=None, test=None, input_shape=(32, 32, 3), num_classes=10,
                num_train=10, num_test=10)
    with pytest.raises(ValueError, match="offline dataset"):
        training.run(training.RunConfig(dataset="cifar10", train_size=5), data=data)
