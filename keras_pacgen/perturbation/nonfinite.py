"""The non-finite guard: a step whose gradients hold NaN or Inf is skipped entirely.

One policy, as `keras.optimizers.LossScaleOptimizer` has for the loss scale: if any entry of any
gradient on any replica is NaN or ±Inf, no variable is written (weights, the perturbation u and
the wrapped optimizer's slots keep their values, the step counter does not advance) and only the
count of skipped steps goes up. The gradients are checked as ``apply`` receives them, before
clipping (``clipvalue`` would turn an Inf into a finite number) and before the all-reduce.

The decision is taken in the cross-replica context, from the counts of all replicas (of all
workers), and the step then runs on every replica or on none: a `tf.cond` whose branch calls
``merge_call`` (as every optimizer update does under a strategy) cannot live in a replica context.
Without a strategy the same code runs on TensorFlow's default strategy, where it is a plain
`tf.cond`.
"""

from __future__ import annotations

import tensorflow as tf


def count_nonfinite(grads) -> tf.Tensor:
    """The number of gradients (of `grads`, None entries ignored) that hold a NaN or an Inf."""
    counts = [
        tf.cast(tf.logical_not(tf.reduce_all(tf.math.is_finite(_values(g)))), tf.int32)
        for g in grads
        if g is not None
    ]
    return tf.add_n(counts) if counts else tf.constant(0)


def _values(gradient):
    return gradient.values if isinstance(gradient, tf.IndexedSlices) else gradient


def apply_if_finite(step, skip, grads, variables) -> None:
    """Run ``step(grads, variables)`` on every replica when every gradient of every replica is
    finite, else ``skip()`` once."""

    def cross_replica(strategy, grads, variables):
        per_replica = strategy.extended.call_for_each_replica(count_nonfinite, args=(grads,))
        nonfinite = strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

        def run_step():
            strategy.extended.call_for_each_replica(step, args=(grads, variables))

        def skip_step():
            skip()

        tf.cond(tf.equal(nonfinite, 0), run_step, skip_step)

    context = tf.distribute.get_replica_context()
    if context is None:  # already in the cross-replica context
        cross_replica(tf.distribute.get_strategy(), grads, variables)
    else:
        context.merge_call(cross_replica, args=(grads, variables))
