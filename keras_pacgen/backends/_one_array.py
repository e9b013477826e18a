"""What JAX and PyTorch share: one array per variable (no per-device copies to keep in step, as
`tf.distribute` has; JAX's data parallelism shards one array and runs one program)."""

from __future__ import annotations

from keras import ops


def local(variable, device):
    """The variable itself."""
    return variable


def device_of(variable):
    return None


def on_each_device(anchor, fn) -> None:
    """``fn(None)``, once."""
    fn(None)


def dense(gradient):
    return gradient


def all_finite(grads):
    """Whether every entry of every gradient is finite (a boolean scalar tensor)."""
    flags = [ops.all(ops.isfinite(g)) for g in grads if g is not None]
    return ops.all(ops.stack(flags)) if flags else ops.convert_to_tensor(True)
