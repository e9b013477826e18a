"""JAX: one array per variable (a data-parallel `keras.distribution` shards it, the program is one),
no `cond` in the optimizer (its updates run in a `StatelessScope`), `jax.grad`."""

from __future__ import annotations

import jax
import keras
from keras import ops

from keras_pacgen.backends._one_array import (  # noqa: F401
    all_finite,
    dense,
    device_of,
    local,
    on_each_device,
)

WIDE_FLOAT = "float64" if jax.config.read("jax_enable_x64") else "float32"


def is_concrete(value) -> bool:
    """Whether `value` holds numbers now (not a symbol being traced)."""
    return not isinstance(value, jax.core.Tracer)


def snapshot(variable):
    """The value of a variable as an array (immutable: no copy needed)."""
    return ops.convert_to_tensor(variable)


def apply_if_finite(step, grads, variables, *, optimizer) -> None:
    """Run ``step(grads, variables)``, then keep its writes only when every gradient is finite:
    the optimizer's and the model's variables are selected with `where` against their values
    before the step, as `keras.optimizers.LossScaleOptimizer` does under JAX (a `cond` whose
    branches write variables is not allowed in the stateless optimizer step)."""
    finite = all_finite(grads)
    state = [*optimizer.variables, *variables]
    before = [ops.convert_to_tensor(v) for v in state]
    step(grads, variables)
    for v, old in zip(state, before):
        v.assign(ops.where(finite, ops.convert_to_tensor(v), old))
    optimizer.nonfinite_steps.assign_add(ops.cast(ops.logical_not(finite), "int32"))


def compiled(fn):
    """`fn` itself: inside ``fit`` the whole train step is compiled by XLA already."""
    return fn


def sigma_dtype(optimizer) -> str:
    return "bfloat16"


def outside_step(optimizer, cache: dict, name: str, fn) -> None:
    fn()


def function(fn):
    """`fn` (of arrays and lists of arrays) compiled by XLA."""
    return jax.jit(fn)


def value_and_gradients(fn, weights):
    """``fn(weights)`` and its gradient with respect to `weights` (a list of tensors)."""
    return jax.value_and_grad(fn)(list(weights))


def hessian_vector_product(fn, weights, vector):
    """H v of the scalar ``fn`` at `weights`: forward-over-reverse, exact."""
    return jax.jvp(jax.grad(fn), (list(weights),), (list(vector),))[1]


def sam_train_step(sam, state, data):
    """`SharpnessAwareMinimization`'s step in the form of Keras's JAX trainer (pure: state in,
    state out): g at w, ε, the gradient at w + ε with the non-trainable state of the first pass
    (floating-point statistics kept, the dropout seed advanced by the second), the optimizer's
    ``stateless_apply``, the metrics from the first pass."""
    trainable, non_trainable, optimizer_variables, metrics_variables = state
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    grad_fn = jax.value_and_grad(sam.compute_loss_and_updates, has_aux=True)
    keep = sam.statistics()

    def sharp_gradients(x, y, sample_weight):
        nonlocal non_trainable, metrics_variables
        (_, (loss, y_pred, first, metrics_variables)), g = grad_fn(
            trainable, non_trainable, metrics_variables, x, y, sample_weight, training=True,
            optimizer_variables=optimizer_variables)
        shifted = [w + e for w, e in zip(trainable, sam.ascent(g, trainable))]
        (_, (_, _, second, metrics_variables)), g = grad_fn(
            shifted, first, metrics_variables, x, y, sample_weight, training=True,
            optimizer_variables=optimizer_variables)
        non_trainable = [a if k else b for a, b, k in zip(first, second, keep)]
        return loss, y_pred, g

    loss, y_pred, grads = sam.mean_over_parts((x, y, sample_weight), sharp_gradients)
    trainable, optimizer_variables = sam.optimizer.stateless_apply(optimizer_variables, grads,
                                                                   trainable)
    with keras.StatelessScope(state_mapping=list(zip(sam.metrics_variables,
                                                     metrics_variables))) as scope:
        logs = sam.update_metrics(loss, y, y_pred, sample_weight)
    metrics_variables = [scope.get_current_value(v) for v in sam.metrics_variables]
    return logs, (trainable, non_trainable, optimizer_variables, metrics_variables)


def per_sample_squared_norms(loss, weights, x, y):
    """‖∇_w loss(w, x_i, y_i)‖² for each sample i of a batch, vectorized (`jax.vmap`)."""

    def one(xi, yi):
        grads = jax.grad(lambda w: loss(w, xi[None], yi[None]))(list(weights))
        return sum(ops.sum(ops.square(ops.cast(g, WIDE_FLOAT))) for g in grads)

    return jax.vmap(one)(x, y)
