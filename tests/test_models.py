"""The paper's networks."""

import keras
import numpy as np
import pytest

from keras_pacgen import models


def test_wrn_28_10_has_the_published_36_5m_parameters():
    model = models.wide_resnet(28, 10, num_classes=10)
    assert model.count_params() == pytest.approx(36.5e6, rel=0.002)


def test_wrn_58_3_builds_and_runs():
    model = models.wide_resnet(58, 3, num_classes=100, dropout=0.3)
    assert model.output_shape == (None, 100)
    assert any(isinstance(layer, keras.layers.Dropout) for layer in model.layers)
    assert not any(isinstance(layer, keras.layers.Dropout) for layer in models.wide_resnet(16, 2).layers)
    out = models.wide_resnet(10, 1, input_shape=(64, 64, 3), num_classes=200)(np.zeros((2, 64, 64, 3), "float32"))
    assert out.shape == (2, 200)


@pytest.mark.parametrize("depth", [27, 30, 8])
def test_wrn_depth_must_be_6n_plus_4(depth):
    with pytest.raises(ValueError, match="`depth`"):
        models.wide_resnet(depth, 2)


def test_mnist_cnn_is_the_pytorch_example():
    model = models.mnist_cnn()
    assert model.count_params() == 1_199_882  # the PyTorch MNIST example's count
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == ["Conv2D", "Conv2D", "MaxPooling2D", "Flatten", "Dense", "Dense"]
    assert "Dropout" in [type(layer).__name__ for layer in models.mnist_cnn(dropout=0.5).layers]


def test_mnist1d_and_toy_models():
    assert models.conv_net()(np.zeros((3, 40), "float32")).shape == (3, 10)
    toy = models.toy_model(1.0, -2.0, c12=0.5, c21=0.5)
    assert [w.shape for w in toy.trainable_weights] == [(2,)]
    assert toy(np.zeros((4, 2), "float32")).shape == (4, 1)


def test_bad_arguments():
    with pytest.raises(ValueError, match="`dropout`"):
        models.mnist_cnn(dropout=1.0)
    with pytest.raises(ValueError, match="`model`"):
        models.build("resnet50", input_shape=(32, 32, 3), num_classes=10)
