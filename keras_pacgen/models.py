"""The paper's networks. All classifiers output logits (use ``from_logits=True`` losses)."""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from keras_pacgen import _validation as check


def _block(x, filters: int, stride: int, dropout: float, weight_decay: float, name: str):
    """Pre-activation wide basic block: BN-ReLU-conv3×3, dropout, BN-ReLU-conv3×3, shortcut."""
    reg = keras.regularizers.L2(weight_decay) if weight_decay else None
    conv = dict(padding="same", use_bias=False, kernel_initializer="he_normal", kernel_regularizer=reg)
    pre = layers.BatchNormalization(name=f"{name}_bn1")(x)
    pre = layers.Activation("relu", name=f"{name}_relu1")(pre)
    y = layers.Conv2D(filters, 3, strides=stride, name=f"{name}_conv1", **conv)(pre)
    y = layers.BatchNormalization(name=f"{name}_bn2")(y)
    y = layers.Activation("relu", name=f"{name}_relu2")(y)
    if dropout:
        y = layers.Dropout(dropout, name=f"{name}_dropout")(y)
    y = layers.Conv2D(filters, 3, strides=1, name=f"{name}_conv2", **conv)(y)
    if stride != 1 or x.shape[-1] != filters:
        x = layers.Conv2D(filters, 1, strides=stride, name=f"{name}_shortcut", **conv)(pre)
    return layers.Add(name=f"{name}_add")([x, y])


def wide_resnet(
    depth: int = 58,
    width: int = 3,
    dropout: float = 0.0,
    num_classes: int = 10,
    input_shape: tuple[int, ...] = (32, 32, 3),
    weight_decay: float = 0.0,
    name: str | None = None,
) -> keras.Model:
    """Wide ResNet WRN-depth-width (Zagoruyko & Komodakis 2016), pre-activation, as in the paper.

    ``depth = 6n + 4``: a 3×3 stem of 16 filters, three groups of n wide basic blocks with
    16·width, 32·width and 64·width filters (strides 1, 2, 2), BN-ReLU, global average pooling and
    a dense layer. Dropout (between the two convolutions of a block) is the paper's baseline;
    the paper's PertOPT runs use WRN-58-3 with dropout off. WRN-28-10 on CIFAR-10 has 36.5M
    parameters, as published.
    """
    depth = check.check_int("depth", depth, low=10)
    if (depth - 4) % 6:
        raise ValueError(
            f"`depth` must be 6n + 4 (10, 16, 22, 28, ..., 58, ...). Received: depth={depth}"
        )
    width = check.check_int("width", width, low=1)
    dropout = check.check_float("dropout", dropout, low=0.0, high=1.0, high_inclusive=False)
    num_classes = check.check_int("num_classes", num_classes, low=2)
    n = (depth - 4) // 6
    inputs = keras.Input(input_shape)
    reg = keras.regularizers.L2(weight_decay) if weight_decay else None
    x = layers.Conv2D(16, 3, padding="same", use_bias=False, kernel_initializer="he_normal",
                      kernel_regularizer=reg, name="stem")(inputs)
    for group, (filters, stride) in enumerate(((16 * width, 1), (32 * width, 2), (64 * width, 2))):
        for block in range(n):
            x = _block(x, filters, stride if block == 0 else 1, dropout, weight_decay,
                       f"group{group + 1}_block{block + 1}")
    x = layers.BatchNormalization(name="final_bn")(x)
    x = layers.Activation("relu", name="final_relu")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(num_classes, kernel_regularizer=reg, name="logits")(x)
    return keras.Model(inputs, outputs, name=name or f"wrn_{depth}_{width}")


def mnist_cnn(
    dropout: float = 0.0, num_classes: int = 10, input_shape: tuple[int, ...] = (28, 28, 1)
) -> keras.Model:
    """The PyTorch MNIST example network (the paper's Figs. 4-5), without dropout by default.

    conv 32@3×3 → conv 64@3×3 → max-pool 2 → (dropout) → dense 128 → (dropout) → dense 10, ReLU.
    """
    dropout = check.check_float("dropout", dropout, low=0.0, high=1.0, high_inclusive=False)
    model = keras.Sequential(name="mnist_cnn")
    model.add(keras.Input(input_shape))
    model.add(layers.Conv2D(32, 3, activation="relu"))
    model.add(layers.Conv2D(64, 3, activation="relu"))
    model.add(layers.MaxPooling2D(2))
    if dropout:
        model.add(layers.Dropout(dropout / 2))
    model.add(layers.Flatten())
    model.add(layers.Dense(128, activation="relu"))
    if dropout:
        model.add(layers.Dropout(dropout))
    model.add(layers.Dense(num_classes))
    return model


def conv_net(
    dropout: float = 0.0,
    num_classes: int = 10,
    input_shape: tuple[int, ...] = (40,),
    width: int = 32,
    depth: int = 3,
) -> keras.Model:
    """A small convolutional network, the MNIST-style network of the paper's Figs. 4-5 with a
    width and a depth to vary: `depth` convolutions of `width` filters (ReLU, "same" padding), then
    flatten, (dropout) and a dense layer to the logits.

    For 1-D inputs (MNIST-1D's 40 features) the convolutions are 1-D, the first of size 5 with
    stride 2, the others of size 3; for images (height, width, channels) they are 3×3.
    """
    dropout = check.check_float("dropout", dropout, low=0.0, high=1.0, high_inclusive=False)
    width = check.check_int("width", width, low=1)
    depth = check.check_int("depth", depth, low=1)
    one_d = len(input_shape) == 1
    model = keras.Sequential(name="conv_net")
    model.add(keras.Input(input_shape))
    if one_d:
        model.add(layers.Reshape((input_shape[0], 1)))
    for k in range(depth):
        if one_d:
            model.add(layers.Conv1D(width, 5 if k == 0 else 3, strides=2 if k == 0 else 1,
                                    padding="same", activation="relu"))
        else:
            model.add(layers.Conv2D(width, 3, padding="same", activation="relu"))
    model.add(layers.Flatten())
    if dropout:
        model.add(layers.Dropout(dropout))
    model.add(layers.Dense(num_classes))
    return model


def mlp(
    hidden: tuple[int, ...] = (128, 128),
    dropout: float = 0.0,
    num_classes: int = 10,
    input_shape: tuple[int, ...] = (40,),
) -> keras.Model:
    """A ReLU multi-layer perceptron (for width sweeps)."""
    dropout = check.check_float("dropout", dropout, low=0.0, high=1.0, high_inclusive=False)
    model = keras.Sequential(name="mlp")
    model.add(keras.Input(input_shape))
    model.add(layers.Flatten())
    for units in hidden:
        model.add(layers.Dense(units, activation="relu"))
        if dropout:
            model.add(layers.Dropout(dropout))
    model.add(layers.Dense(num_classes))
    return model


@keras.saving.register_keras_serializable(package="keras_pacgen")
class SharedMatrixMLP(keras.layers.Layer):
    """The toy model of the paper's § 2: a 5-layer sigmoid MLP, no biases, one shared 2×2 matrix.

    ``W = [[w1, c12], [c21, w2]]`` with free parameters ``(w1, w2)`` and constants
    ``c12, c21``; ``h_{k+1} = sigmoid(W h_k)`` for ``layers`` layers; the output is the logit
    ``a·(h_L[0] − h_L[1])``. The paper gives neither the constants nor the output layer; the
    values used by `examples/toy_landscape.py` are recorded there.
    """

    def __init__(self, w1: float = 0.0, w2: float = 0.0, c12: float = 0.0, c21: float = 0.0,
                 num_layers: int = 5, output_scale: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.c12, self.c21, self.num_layers, self.output_scale = c12, c21, num_layers, output_scale
        self.init = (w1, w2)
        self.w = self.add_weight(shape=(2,), initializer=keras.initializers.Constant(np.array(self.init)),
                                 name="w")

    def matrix(self, w=None):
        w = self.w if w is None else w
        return ops.stack([ops.stack([w[0], ops.cast(self.c12, w.dtype)]),
                          ops.stack([ops.cast(self.c21, w.dtype), w[1]])])

    def call(self, x, w=None):
        matrix = self.matrix(w)
        h = x
        for _ in range(self.num_layers):
            h = ops.sigmoid(ops.matmul(h, ops.transpose(matrix)))
        return self.output_scale * (h[:, 0] - h[:, 1])[:, None]

    def get_config(self):
        return {**super().get_config(), "w1": self.init[0], "w2": self.init[1], "c12": self.c12,
                "c21": self.c21, "num_layers": self.num_layers, "output_scale": self.output_scale}


def toy_model(w1: float = 0.0, w2: float = 0.0, **kwargs) -> keras.Model:
    """Keras model around `SharedMatrixMLP`: 2-d input, one logit (binary cross-entropy)."""
    inputs = keras.Input((2,))
    return keras.Model(inputs, SharedMatrixMLP(w1, w2, **kwargs)(inputs), name="toy_mlp")


MODELS = {
    "conv_net": conv_net,
    "mnist_cnn": mnist_cnn,
    "mlp": mlp,
    "wide_resnet": wide_resnet,
}


_DEFAULTS = {"mnist1d": "conv_net", "digits": "mnist_cnn", "mnist": "mnist_cnn",
             "cifar10": "wide_resnet", "cifar100": "wide_resnet", "tiny_imagenet": "wide_resnet"}


def default_for(dataset: str) -> str:
    """The network of the paper (or its stand-in) for `dataset`."""
    return _DEFAULTS[dataset]


def build(name: str, *, input_shape, num_classes: int, dropout: float = 0.0, **kwargs) -> keras.Model:
    """A model by name for a dataset: ``build("wide_resnet", input_shape=..., num_classes=10)``."""
    check.check_choice("model", name, tuple(MODELS))
    return MODELS[name](dropout=dropout, num_classes=num_classes, input_shape=tuple(input_shape), **kwargs)
