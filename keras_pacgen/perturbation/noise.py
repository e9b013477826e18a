"""Stateless uniform noise for the perturbation u of Algorithm 1 (line 11: u_t[i] ~ U(-σ_i, σ_i)).

The draw is a pure function of (seed, step, variable index, element index): no random-generator
state lives anywhere. Consequences the optimizer relies on:

* every replica of a `tf.distribute` run draws the same u for the same step, so mirrored copies
  stay bit-identical;
* a run resumed from a checkpoint draws exactly the u it would have drawn;
* u never has to be stored: the optimizer keeps σ and draws u = σ ⊙ r again whenever it re-applies
  the perturbation (after evaluation, say), bit for bit.

Why a counter-based integer hash and not `tf.random.stateless_uniform`: XLA's Philox does not give
the same bits as TensorFlow's own kernel, so a perturbation drawn in an XLA-compiled train step
could not be drawn again outside it; and on a CPU it is several times slower than this hash, which
XLA fuses into one loop of 32-bit multiplies, shifts and xors. The hash is plain 32-bit integer
arithmetic: the same bits under XLA, TensorFlow and on any device.

Each element gets ``r = 2^-15 · (lowbias32(i + key) >> 16) − 1``, a uniform on the 2^16-point
grid of [-1, 1), where ``lowbias32`` is C. Wellons' 32-bit integer hash (xor-shift-multiply, full
avalanche) and ``key`` hashes (seed, step, variable index) together.

Why 16 bits: r has at most 16 significant bits and the optimizer keeps σ at bfloat16 precision
(8 bits), so ``u = σ·r`` is exact in float32 and ``w + u`` is rounded once, whether or not a
compiler contracts the multiply and the add into an FMA. The perturbed weights computed inside an
XLA train step and computed again outside it are therefore the same bits.
"""

from __future__ import annotations

import math

import tensorflow as tf

_GOLDEN = 0x9E3779B9


def _u32(value: int) -> tf.Tensor:
    return tf.constant(value & 0xFFFFFFFF, tf.uint32)


def mix32(x: tf.Tensor) -> tf.Tensor:
    """lowbias32: a bijective 32-bit integer hash with good avalanche (uint32 in, uint32 out)."""
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, _u32(16)))
    x = x * _u32(0x7FEB352D)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, _u32(15)))
    x = x * _u32(0x846CA68B)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, _u32(16)))


def stream_key(seed: int, step, index) -> tf.Tensor:
    """A uint32 key for (seed, step, variable index); `step` is a scalar integer tensor."""
    step = tf.cast(step, tf.int64)
    low = tf.cast(tf.bitwise.bitwise_and(step, 0xFFFFFFFF), tf.uint32)
    high = tf.cast(tf.bitwise.right_shift(step, 32), tf.uint32)
    key = mix32(_u32(seed) ^ _u32(int(seed) >> 32) * _u32(_GOLDEN))
    key = mix32(key ^ low)
    index = tf.cast(index, tf.uint32)
    return mix32(key ^ high ^ (index * _u32(0x85EBCA6B) + _u32(1)))


def uniform_unit(shape, dtype, seed: int, step, index) -> tf.Tensor:
    """r ~ U(-1, 1) of `shape`, a deterministic function of (seed, step, index).

    Args:
        shape: static shape of the variable.
        dtype: floating dtype of the result (the variable's dtype).
        seed: the optimizer's integer seed.
        step: scalar integer tensor, the optimizer step that the draw belongs to.
        index: position of the variable in the optimizer's variable list (int or int tensor).
    """
    size = math.prod(int(d) for d in shape)
    counter = tf.bitcast(tf.range(size, dtype=tf.int32), tf.uint32)
    bits = mix32(counter + stream_key(seed, step, index))
    r = tf.cast(tf.bitwise.right_shift(bits, _u32(16)), tf.float32) * (2.0**-15) - 1.0
    return tf.cast(tf.reshape(r, shape), dtype)
