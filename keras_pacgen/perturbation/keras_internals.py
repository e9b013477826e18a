"""The private Keras attributes keras-pacgen reads, in one place (Keras 3.6-3.15).

Each has no public route in Keras; if a Keras release renames one, this file is the only one to
change (the tests that build, train, save and score perturbed optimizers fail first).
"""

from __future__ import annotations


def variable_index(optimizer, variable) -> int:
    """The position of a model variable (or of one of its per-device copies) in the list the
    optimizer was built on, which is also the position of its slots. Keras keeps this map private
    (``_get_variable_index``); every built-in optimizer uses it to find its slots."""
    return optimizer._get_variable_index(variable)


def built_variables(optimizer) -> list:
    """The model variables the optimizer was built on, in slot order. Keras keeps the list private
    (``_trainable_variables``); the perturbation must be removed from all of them, including when
    the optimizer is used outside ``fit``."""
    return optimizer._trainable_variables


def holds_value(variable) -> bool:
    """Whether a variable holds a value. During ``fit`` Keras's JAX trainer keeps the values in
    its own state and empties the variables (``_purge_model_variables``); when the first train step
    fails, before any state comes back, they stay empty."""
    return variable._value is not None


def second_moments(optimizer) -> list | None:
    """The second-moment slots ``v`` of an Adam-family optimizer (Adam, AdamW, Nadam, RMSprop,
    ...), one per variable, or None. Keras has no accessor for one kind of slot; the paper's
    Hessian-diagonal estimate h is this ``v`` when the decays agree ("we follow Adam")."""
    return getattr(optimizer, "_velocities", None)


def distribution_strategy(optimizer):
    """The `tf.distribute.Strategy` the optimizer was created under (TensorFlow). Needed to remove or re-apply
    the perturbation from a callback, which may run outside that strategy's scope."""
    return optimizer._distribution_strategy


def compiled_loss(model):
    """The loss `compile(loss=...)` built, callable as ``loss(y, y_pred, sample_weight)``, without
    ``model.losses``. Keras keeps it private (``_compile_loss``); ``compute_loss`` always adds the
    regularisation losses, and the generalization measures are defined on the data loss alone."""
    return model._compile_loss
