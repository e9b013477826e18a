"""PyTorch: eager steps (a Python `if` decides the non-finite skip), `torch.autograd`."""

from __future__ import annotations

import torch
from keras import ops
from keras import tree as keras_tree

from keras_pacgen.backends._one_array import (  # noqa: F401
    all_finite,
    dense,
    device_of,
    local,
    on_each_device,
)

WIDE_FLOAT = "float64"


def is_concrete(value) -> bool:
    return True


def snapshot(variable):
    """The value of a variable as a tensor: a copy, outside autograd."""
    return ops.convert_to_tensor(variable).detach().clone()


def apply_if_finite(step, grads, variables, *, optimizer) -> None:
    """Run ``step(grads, variables)`` when every gradient is finite (one host sync for all of
    them), else count the step in ``optimizer.nonfinite_steps``."""
    if bool(all_finite([None if g is None else ops.convert_to_tensor(g) for g in grads])):
        step(grads, variables)
    else:
        optimizer.nonfinite_steps.assign_add(1)


def compiled(fn):
    return fn


def sigma_dtype(optimizer) -> str:
    return "bfloat16"


def outside_step(optimizer, cache: dict, name: str, fn) -> None:
    with torch.no_grad():
        fn()


def _watched(weights):
    return [ops.convert_to_tensor(w).detach().requires_grad_(True) for w in weights]


def _gradients(value, weights, create_graph=False):
    grads = torch.autograd.grad(value, weights, allow_unused=True, create_graph=create_graph)
    return [torch.zeros_like(w) if g is None else g for g, w in zip(grads, weights)]


def function(fn):
    """`fn` itself: PyTorch runs eagerly."""
    return fn


def value_and_gradients(fn, weights):
    """``fn(weights)`` and its gradient with respect to `weights` (a list of tensors)."""
    weights = _watched(weights)
    with torch.enable_grad():
        value = fn(weights)
        grads = _gradients(value, weights)
    return value.detach(), grads


def hessian_vector_product(fn, weights, vector):
    """H v of the scalar ``fn`` at `weights`: the gradient of ∇fn · v, exact."""
    weights = _watched(weights)
    with torch.enable_grad():
        grads = _gradients(fn(weights), weights, create_graph=True)
        dot = sum(torch.sum(g * ops.convert_to_tensor(v)) for g, v in zip(grads, vector))
        return [h.detach() for h in _gradients(dot, weights)]


def training_gradients(model, x, y, sample_weight, variables, *, reduce: bool = True):
    """(loss, outputs, gradients) of `model`'s training loss (``compute_loss``, scaled by the
    optimizer's loss scale) with respect to `variables`, as Keras's torch trainer takes them."""
    model.zero_grad()
    with torch.enable_grad():
        y_pred = model(x, training=True)
        loss = model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                                  training=True)
        model.optimizer.scale_loss(loss).backward()
    grads = [torch.zeros_like(v.value) if v.value.grad is None else v.value.grad.clone()
             for v in variables]
    y_pred = keras_tree.map_structure(lambda t: t.detach(), y_pred)
    return loss.detach(), y_pred, grads


def without_gradients(fn):
    """``fn()`` outside autograd (writes to variables that no gradient must see)."""
    with torch.no_grad():
        return fn()


def per_sample_squared_norms(loss, weights, x, y):
    """‖∇_w loss(w, x_i, y_i)‖² for each sample i of a batch (float64), one sample at a time."""
    norms = []
    for i in range(int(y.shape[0])):
        _, grads = value_and_gradients(lambda w, i=i: loss(w, x[i:i + 1], y[i:i + 1]), weights)
        norms.append(sum(torch.sum(torch.square(g.to(torch.float64))) for g in grads))
    return torch.stack(norms)
