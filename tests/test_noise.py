"""The stateless noise: deterministic, uniform, independent streams, identical under XLA."""

import numpy as np
import tensorflow as tf

from keras_pacgen.perturbation.noise import uniform_unit


def draw(shape=(512, 33), seed=5, step=3, index=2, jit=False):
    fn = tf.function(lambda s: uniform_unit(shape, tf.float32, seed, s, index), jit_compile=jit)
    return fn(tf.constant(step, tf.int64)).numpy()


def test_deterministic_and_identical_under_xla():
    a = draw()
    np.testing.assert_array_equal(a, draw())
    np.testing.assert_array_equal(a, draw(jit=True))
    np.testing.assert_array_equal(a, uniform_unit((512, 33), tf.float32, 5, tf.constant(3), 2).numpy())


def test_uniform_on_a_16_bit_grid():
    r = draw(shape=(1 << 20,), step=2**40 + 7)
    assert r.min() >= -1.0 and r.max() < 1.0
    assert abs(r.mean()) < 3e-3 and abs(r.std() - 3**-0.5) < 3e-3
    counts, _ = np.histogram(r, bins=16, range=(-1, 1))
    expected = r.size / 16
    assert np.sum((counts - expected) ** 2 / expected) < 50  # chi-square, 15 dof (p < 1e-4 at 44)
    np.testing.assert_array_equal(r, np.round((r + 1) * 2**15) / 2**15 - 1)  # the 16-bit grid


def test_streams_are_independent():
    base = draw().ravel()
    for other in (draw(step=4), draw(index=3), draw(seed=6)):
        assert abs(np.corrcoef(base, other.ravel())[0, 1]) < 0.03
