"""Stateless uniform noise for the perturbation u of Algorithm 1 (line 11: u_t[i] ~ U(-σ_i, σ_i)).

The draw is a pure function of (seed, step, variable index): no random-generator state lives
anywhere. Consequences the optimizer relies on:

* every replica of a `tf.distribute` run draws the same u for the same step, so mirrored copies
  stay bit-identical;
* a run resumed from a checkpoint draws exactly the u it would have drawn;
* u never has to be stored: the optimizer keeps σ and regenerates u = σ ⊙ r whenever it needs to
  re-apply the perturbation (after evaluation, say), bit-identically.
"""

from __future__ import annotations

import tensorflow as tf

# Variable indices are packed into the low bits of the first Philox key word.
_INDEX_BITS = 20


def uniform_unit(shape, dtype, seed: int, step, index: int) -> tf.Tensor:
    """r ~ U(-1, 1) of `shape`, a deterministic function of (seed, step, index).

    Args:
        shape: static shape of the variable.
        dtype: floating dtype of the result (the variable's dtype).
        seed: the optimizer's integer seed.
        step: scalar integer tensor, the optimizer step that the draw belongs to.
        index: position of the variable in the optimizer's variable list.
    """
    key = tf.constant((int(seed) << _INDEX_BITS) + int(index), dtype=tf.int64)
    counter = tf.cast(step, tf.int64)
    r = tf.random.stateless_uniform(
        shape, seed=tf.stack([key, counter]), minval=-1.0, maxval=1.0, dtype=tf.float32, alg="philox"
    )
    return r if dtype == tf.float32 else tf.cast(r, dtype)
