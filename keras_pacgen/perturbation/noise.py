"""Stateless uniform noise for the perturbation u of Algorithm 1 (line 11: u_t[i] ~ U(-σ_i, σ_i)).

The draw is a pure function of (seed, step, variable index, element index), computed with integer
`keras.ops`: no random-generator state lives anywhere, and one seed gives the same u on JAX,
PyTorch and TensorFlow (`keras.random` draws differ between backends). Consequences the optimizer
relies on:

* every replica of a data-parallel run draws the same u for the same step, so the copies of the
  weights stay bit-identical;
* a run resumed from a checkpoint draws exactly the u it would have drawn;
* u never has to be stored: the optimizer keeps σ and draws u = σ ⊙ r again whenever it re-applies
  the perturbation (after evaluation, say), bit for bit, inside or outside a compiled step.

Each element gets ``r = 2^-15 · (lowbias32(i + key) >> 16) − 1``, a uniform on the 2^16-point
grid of [-1, 1), where ``lowbias32`` is C. Wellons' 32-bit integer hash (xor-shift-multiply, full
avalanche) and ``key`` hashes (seed, step mod 2^32, variable index) together. The arithmetic is
int32 that wraps around (two's complement on every backend and under XLA: the same bits as
uint32); JAX has no 64-bit integers by default, and PyTorch multiplies no uint32.

Why 16 bits: r has at most 16 significant bits and the optimizer keeps σ at bfloat16 precision
(8 bits), so ``u = σ·r`` is exact in float32 and ``w + u`` is rounded once, whether or not a
compiler contracts the multiply and the add into an FMA.
"""

from __future__ import annotations

import math

import numpy as np
from keras import ops

_GOLDEN = 0x9E3779B9


def _i32(value: int) -> int:
    """The int32 with the bits of the uint32 `value`."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def _shift_right(x, bits: int):
    """The logical (unsigned) right shift of an int32 tensor."""
    return ops.bitwise_and(ops.right_shift(x, bits), (1 << (32 - bits)) - 1)


def mix32(x):
    """lowbias32: a bijective 32-bit integer hash with good avalanche (int32 bits in and out)."""
    x = ops.bitwise_xor(x, _shift_right(x, 16))
    x = ops.multiply(x, ops.convert_to_tensor(_i32(0x7FEB352D), "int32"))
    x = ops.bitwise_xor(x, _shift_right(x, 15))
    x = ops.multiply(x, ops.convert_to_tensor(_i32(0x846CA68B), "int32"))
    return ops.bitwise_xor(x, _shift_right(x, 16))


def mix32_int(x: int) -> int:
    """`mix32` of a Python integer (the seed's part of the key, computed once)."""
    with np.errstate(over="ignore"):
        x = np.uint32(x & 0xFFFFFFFF)
        x ^= x >> np.uint32(16)
        x *= np.uint32(0x7FEB352D)
        x ^= x >> np.uint32(15)
        x *= np.uint32(0x846CA68B)
        x ^= x >> np.uint32(16)
    return int(x)


def stream_key(seed: int, step, index):
    """An int32 key for (seed, step, variable index); `step` is a scalar integer tensor."""
    seed_key = mix32_int(seed ^ ((int(seed) >> 32) * _GOLDEN))
    step = ops.convert_to_tensor(step)
    low = ops.cast(step, "int32") if ops.dtype(step) == "int32" else _low_bits(step)
    key = mix32(ops.bitwise_xor(ops.convert_to_tensor(_i32(seed_key), "int32"), low))
    index = ops.cast(index, "int32")
    index_key = ops.add(ops.multiply(index, ops.convert_to_tensor(_i32(0x85EBCA6B), "int32")), 1)
    return mix32(ops.bitwise_xor(key, index_key))


def _low_bits(step):
    """The low 32 bits of an int64 step, as int32 bits."""
    low = ops.bitwise_and(ops.cast(step, "int64"), 0xFFFFFFFF)
    return ops.cast(ops.where(low >= 1 << 31, low - (1 << 32), low), "int32")


def uniform_unit(shape, dtype, seed: int, step, index):
    """r ~ U(-1, 1) of `shape`, a deterministic function of (seed, step, index).

    Args:
        shape: static shape of the variable.
        dtype: floating dtype of the result (the variable's dtype).
        seed: the optimizer's integer seed.
        step: scalar integer tensor, the optimizer step that the draw belongs to.
        index: position of the variable in the optimizer's variable list (int or int tensor).
    """
    size = math.prod(int(d) for d in shape)
    counter = ops.arange(size, dtype="int32")
    bits = mix32(ops.add(counter, stream_key(seed, step, index)))
    r = ops.cast(_shift_right(bits, 16), "float32") * (2.0**-15) - 1.0
    return ops.cast(ops.reshape(r, shape), dtype)
