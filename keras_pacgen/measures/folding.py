"""The weights Jiang et al. measure: layer kernels, with BatchNorm folded into the layer before it.

Jiang et al. (2020, § C and their code's ``_reparam``, after Neyshabur's) measure norms on the
*weights* only (no biases, no BatchNorm γ/β) of the network in which every BatchNorm layer is
folded into the preceding convolution or dense layer: with ``s = γ / sqrt(moving_variance + ε)``
per channel, the kernel becomes ``s ⊙ W`` (on its output channels) and the bias
``β + s ⊙ (b − moving_mean)``, and the BatchNorm layer becomes the identity. Without the folding
a BatchNorm network's kernel norms mean nothing (the layer after divides any scale out).

A BatchNorm layer is folded when its input is the output of a layer with a kernel whose last
axis holds the normalised channels (``Dense``, ``Conv1D/2D/3D`` and the like, channels last); any
other BatchNorm (e.g. the pre-activation ones of a Wide ResNet, which follow an addition) stays
as it is, its γ and β not counted among the weights.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from keras_pacgen.measures import _common


@dataclasses.dataclass
class Folded:
    """The model's parameters with BatchNorm folded: values for ``model.trainable_variables``
    and ``model.non_trainable_variables`` (a model with these computes the same function), and
    the positions of the kernels among the trainable ones."""

    trainable: list[np.ndarray]
    non_trainable: list[np.ndarray]
    kernel_indices: list[int]

    @property
    def kernels(self) -> list[np.ndarray]:
        """Jiang et al.'s weights W_1 ... W_d, in layer order."""
        return [self.trainable[k] for k in self.kernel_indices]


def _feeds(source, target) -> bool:
    """Whether `target`'s input is `source`'s output in the model's graph."""
    try:
        return any(a is b for a in keras.tree.flatten(target.input)
                   for b in keras.tree.flatten(source.output))
    except (AttributeError, ValueError):
        return False


def fold(model, trainable_values=None) -> Folded:
    """The folded parameters of `model` (its current weights, or `trainable_values`: one array
    per trainable variable, e.g. the weights at initialisation; non-trainable values are the
    model's own, except that BatchNorm statistics of initial weights are taken as mean 0,
    variance 1, their initial values)."""
    trainable = list(model.trainable_variables)
    position = {id(v): k for k, v in enumerate(trainable)}
    values = [_common.to_numpy(v) for v in trainable]
    if trainable_values is not None:
        values = [_common.to_numpy(a) for a in trainable_values]
    at_initialisation = trainable_values is not None
    non_trainable = list(model.non_trainable_variables)
    fixed = {id(v): k for k, v in enumerate(non_trainable)}
    fixed_values = [_common.to_numpy(v) for v in non_trainable]
    kernels, previous = [], None
    for layer in _common.layers(model):
        kernel = getattr(layer, "kernel", None)
        if kernel is not None and id(kernel) in position:
            kernels.append(position[id(kernel)])
            previous = layer
            continue
        if (isinstance(layer, keras.layers.BatchNormalization) and previous is not None
                and _feeds(previous, layer)):
            _fold_one(layer, previous, values, position, fixed_values, fixed, at_initialisation)
        previous = None
    return Folded(values, fixed_values, kernels)


def _fold_one(bn, layer, values, position, fixed_values, fixed, at_initialisation):
    k = position[id(layer.kernel)]
    if values[k].shape[-1] != bn.moving_mean.shape[0] or bn.axis not in (-1, len(bn.input.shape) - 1):
        return
    gamma = values[position[id(bn.gamma)]] if bn.scale else 1.0
    beta = values[position[id(bn.beta)]] if bn.center else 0.0
    mean = 0.0 if at_initialisation else fixed_values[fixed[id(bn.moving_mean)]]
    variance = 1.0 if at_initialisation else fixed_values[fixed[id(bn.moving_variance)]]
    scale = gamma / np.sqrt(variance + bn.epsilon)
    values[k] = values[k] * scale
    bias = getattr(layer, "bias", None)
    if bias is not None and id(bias) in position:
        b = position[id(bias)]
        values[b] = beta + scale * (values[b] - mean)
        new_mean = 0.0
    else:  # no bias to take the shift: the BatchNorm layer keeps it as its mean
        new_mean = scale * mean - beta
    if bn.scale:
        values[position[id(bn.gamma)]] = np.ones_like(values[position[id(bn.gamma)]])
    if bn.center:
        values[position[id(bn.beta)]] = np.zeros_like(values[position[id(bn.beta)]])
    m, v = fixed[id(bn.moving_mean)], fixed[id(bn.moving_variance)]
    fixed_values[m] = np.zeros_like(fixed_values[m]) + new_mean
    fixed_values[v] = np.full_like(fixed_values[v], 1.0 - bn.epsilon)  # divides by exactly 1
