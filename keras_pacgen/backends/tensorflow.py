"""TensorFlow: `tf.distribute` (per-device copies, merge_call), XLA for the step's elementwise work,
GradientTape."""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_pacgen.perturbation import keras_internals


def _tf_variable(variable):
    return variable.value if isinstance(variable, keras.Variable) else variable


WIDE_FLOAT = "float64"


def is_concrete(value) -> bool:
    """Whether `value` holds numbers now (not a symbol being traced)."""
    return tf.executing_eagerly()


def local(variable, device):
    """The copy of a distributed variable that lives on `device`; a variable that is not
    distributed, wherever it lives."""
    variable = _tf_variable(variable)
    copies = tf.distribute.get_strategy().experimental_local_results(variable)
    if len(copies) == 1:
        return copies[0]
    for component in copies:
        if component.device == device:
            return component
    raise ValueError(f"{variable.name} has no copy on {device}")


def device_of(variable):
    """The device of a variable (or of one of its copies), to tell the copies apart."""
    return variable.device


def dense(gradient):
    """A gradient as a dense tensor (an Embedding's is `tf.IndexedSlices`)."""
    return tf.convert_to_tensor(gradient)


def snapshot(variable):
    """The value of a variable as a tensor, a copy."""
    return tf.identity(variable)


def on_each_device(anchor, fn) -> None:
    """Run ``fn(device)`` once on every device that holds a copy of `anchor` (a model variable),
    from a replica or a cross-replica context, under any strategy or none."""

    def cross_replica(strategy):
        strategy.extended.update(_tf_variable(anchor), lambda copy: fn(copy.device), group=False)

    context = tf.distribute.get_replica_context()
    if context is None:  # already in the cross-replica context
        cross_replica(tf.distribute.get_strategy())
    else:
        context.merge_call(cross_replica)


def _count_nonfinite(grads):
    counts = [
        tf.cast(tf.logical_not(tf.reduce_all(tf.math.is_finite(
            g.values if isinstance(g, tf.IndexedSlices) else g))), tf.int32)
        for g in grads if g is not None
    ]
    return tf.add_n(counts) if counts else tf.constant(0)


def apply_if_finite(step, grads, variables, *, optimizer) -> None:
    """Run ``step(grads, variables)`` on every replica when every gradient of every replica is
    finite, else count the step in ``optimizer.nonfinite_steps``.

    The decision is taken in the cross-replica context, from the counts of all replicas (of all
    workers), and the step runs on every replica or on none: a `tf.cond` whose branch calls
    ``merge_call`` (as every optimizer update does under a strategy) cannot live in a replica
    context. Without a strategy this is a plain `tf.cond` on the default strategy.
    """

    def cross_replica(strategy, grads, variables):
        per_replica = strategy.extended.call_for_each_replica(_count_nonfinite, args=(grads,))
        nonfinite = strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

        def run_step():
            strategy.extended.call_for_each_replica(step, args=(grads, variables))

        def skip_step():
            optimizer.nonfinite_steps.assign_add(1)

        tf.cond(tf.equal(nonfinite, 0), run_step, skip_step)

    context = tf.distribute.get_replica_context()
    if context is None:  # already in the cross-replica context
        cross_replica(tf.distribute.get_strategy(), grads, variables)
    else:
        context.merge_call(cross_replica, args=(grads, variables))


def compiled(fn):
    """`fn` compiled by XLA: the step's elementwise work on all variables becomes a few loops instead
    of some forty passes over the weights (inside a train step compiled already it is part of it).
    The reductions stay outside: XLA's CPU backend reduces a long vector slower than TensorFlow."""
    return tf.function(fn, jit_compile=True, autograph=False)


def sigma_dtype(optimizer) -> str:
    """σ is kept at bfloat16 precision (noise.py); MultiWorkerMirroredStrategy cannot broadcast a
    bfloat16 variable, so there it sits in a float32 slot."""
    collective = isinstance(keras_internals.distribution_strategy(optimizer), tf.distribute.MultiWorkerMirroredStrategy)
    return "float32" if collective else "bfloat16"


def outside_step(optimizer, cache: dict, name: str, fn) -> None:
    """Run ``fn`` (which writes the optimizer's and the model's variables) between two steps: traced
    once, in the optimizer's strategy (a callback may run outside its scope)."""
    if name not in cache:
        cache[name] = tf.function(fn, autograph=False)
    with keras_internals.distribution_strategy(optimizer).scope():
        cache[name]()


def training_gradients(model, x, y, sample_weight, variables, *, reduce: bool = True):
    """(loss, outputs, gradients) of `model`'s training loss (``compute_loss``, scaled by the
    optimizer's loss scale) with respect to `variables`; `reduce`: under ``tf.distribute``, the
    gradients summed over the replicas (the gradient of the global batch)."""
    with tf.GradientTape() as tape:
        y_pred = model(x, training=True)
        loss = model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                                  training=True)
        scaled = model.optimizer.scale_loss(loss)
    grads = tape.gradient(scaled, variables, unconnected_gradients="zero")
    replica = tf.distribute.get_replica_context()
    if reduce and replica is not None and replica.num_replicas_in_sync > 1:
        grads = replica.all_reduce("sum", grads)
    return loss, y_pred, grads


def without_gradients(fn):
    """``fn()`` (writes to variables that no gradient must see)."""
    return fn()


def function(fn):
    """`fn` (of tensors and lists of tensors) traced once per input signature."""
    return tf.function(fn, reduce_retracing=True)


def value_and_gradients(fn, weights):
    """``fn(weights)`` and its gradient with respect to `weights` (a list of tensors)."""
    weights = list(weights)
    with tf.GradientTape() as tape:
        tape.watch(weights)
        value = fn(weights)
    return value, tape.gradient(value, weights, unconnected_gradients="zero")


def hessian_vector_product(fn, weights, vector):
    """H v of the scalar ``fn`` at `weights`: the gradient of ∇fn · v, exact."""
    weights = list(weights)
    with tf.GradientTape() as outer:
        outer.watch(weights)
        _, grads = value_and_gradients(fn, weights)
        dot = tf.add_n([tf.reduce_sum(g * v) for g, v in zip(grads, vector)])
    return outer.gradient(dot, weights, unconnected_gradients="zero")


def per_sample_squared_norms(loss, weights, x, y):
    """‖∇_w loss(w, x_i, y_i)‖² for each sample i of a batch (float64), vectorized."""

    def one(sample):
        xi, yi = sample
        _, grads = value_and_gradients(lambda w: loss(w, xi[None], yi[None]), weights)
        return tf.add_n([tf.reduce_sum(tf.square(tf.cast(g, tf.float64))) for g in grads])

    return tf.vectorized_map(one, (x, y))
