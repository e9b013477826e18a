"""PerturbedAdam, PerturbedSGD and `perturbed()` / `perturb()` for any other Keras optimizer.

Every class here is ``PerturbationMixin`` (Algorithm 1, PertOPT) on top of a stock Keras
optimizer, which stays the ``OPT`` of line 15: its arguments, defaults and update are unchanged.
"""

from __future__ import annotations

import keras

from keras_pacgen.perturbation import PERTURBATION_DEFAULTS, PerturbationMixin
from keras_pacgen.perturbation.arguments import DOC as _PERTURBATION_ARGS_DOC

_PACKAGE = "keras_pacgen"
_CLASSES: dict[type, type] = {}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PerturbedAdam(PerturbationMixin, keras.optimizers.Adam):
    """Adam with Algorithm 1's perturbation: PertOPT with OPT = Adam (the paper's CIFAR setting).

    All of `keras.optimizers.Adam`'s arguments and defaults, plus the perturbation arguments.
    With the default ``beta_2 == hessian_decay`` (0.999) the Hessian-diagonal estimate h is Adam's
    own second moment ``v``, as in the paper ("we follow Adam").

    Paper (CIFAR-10/100, WRN-58-3)::

        PerturbedAdam(learning_rate=1e-4, eta=0.01, gamma=10.0, kappa_epsilon=1e-5)

    Perturbation arguments:""" + _PERTURBATION_ARGS_DOC

    _second_moment_decay = "beta_2"

    def __init__(
        self,
        learning_rate=0.001,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-7,
        amsgrad=False,
        weight_decay=None,
        clipnorm=None,
        clipvalue=None,
        global_clipnorm=None,
        use_ema=False,
        ema_momentum=0.99,
        ema_overwrite_frequency=None,
        loss_scale_factor=None,
        gradient_accumulation_steps=None,
        name="perturbed_adam",
        *,
        eta: float = PERTURBATION_DEFAULTS["eta"],
        gamma: float = PERTURBATION_DEFAULTS["gamma"],
        kappa_epsilon: float = PERTURBATION_DEFAULTS["kappa_epsilon"],
        grad_threshold: float = PERTURBATION_DEFAULTS["grad_threshold"],
        hessian_decay: float = PERTURBATION_DEFAULTS["hessian_decay"],
        seed: int | None = None,
        steps_per_epoch: int | None = None,
        rho_norm: str = "global",
        kappa_weights: str = "previous",
        skip_nonfinite: bool = True,
        **kwargs,
    ):
        super().__init__(
            learning_rate=learning_rate,
            beta_1=beta_1,
            beta_2=beta_2,
            epsilon=epsilon,
            amsgrad=amsgrad,
            weight_decay=weight_decay,
            clipnorm=clipnorm,
            clipvalue=clipvalue,
            global_clipnorm=global_clipnorm,
            use_ema=use_ema,
            ema_momentum=ema_momentum,
            ema_overwrite_frequency=ema_overwrite_frequency,
            loss_scale_factor=loss_scale_factor,
            gradient_accumulation_steps=gradient_accumulation_steps,
            name=name,
            eta=eta,
            gamma=gamma,
            kappa_epsilon=kappa_epsilon,
            grad_threshold=grad_threshold,
            hessian_decay=hessian_decay,
            seed=seed,
            steps_per_epoch=steps_per_epoch,
            rho_norm=rho_norm,
            kappa_weights=kappa_weights,
            skip_nonfinite=skip_nonfinite,
            **kwargs,
        )


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PerturbedSGD(PerturbationMixin, keras.optimizers.SGD):
    """SGD with Algorithm 1's perturbation: PertOPT with OPT = SGD (the paper's Tiny ImageNet setting).

    All of `keras.optimizers.SGD`'s arguments and defaults, plus the perturbation arguments.
    SGD keeps no second moment, so h has its own slot.

    Paper (Tiny ImageNet, WRN-58-3)::

        PerturbedSGD(learning_rate=1e-2, eta=100.0, gamma=1.0, kappa_epsilon=1e-5)

    Perturbation arguments:""" + _PERTURBATION_ARGS_DOC

    def __init__(
        self,
        learning_rate=0.01,
        momentum=0.0,
        nesterov=False,
        weight_decay=None,
        clipnorm=None,
        clipvalue=None,
        global_clipnorm=None,
        use_ema=False,
        ema_momentum=0.99,
        ema_overwrite_frequency=None,
        loss_scale_factor=None,
        gradient_accumulation_steps=None,
        name="perturbed_sgd",
        *,
        eta: float = PERTURBATION_DEFAULTS["eta"],
        gamma: float = PERTURBATION_DEFAULTS["gamma"],
        kappa_epsilon: float = PERTURBATION_DEFAULTS["kappa_epsilon"],
        grad_threshold: float = PERTURBATION_DEFAULTS["grad_threshold"],
        hessian_decay: float = PERTURBATION_DEFAULTS["hessian_decay"],
        seed: int | None = None,
        steps_per_epoch: int | None = None,
        rho_norm: str = "global",
        kappa_weights: str = "previous",
        skip_nonfinite: bool = True,
        **kwargs,
    ):
        super().__init__(
            learning_rate=learning_rate,
            momentum=momentum,
            nesterov=nesterov,
            weight_decay=weight_decay,
            clipnorm=clipnorm,
            clipvalue=clipvalue,
            global_clipnorm=global_clipnorm,
            use_ema=use_ema,
            ema_momentum=ema_momentum,
            ema_overwrite_frequency=ema_overwrite_frequency,
            loss_scale_factor=loss_scale_factor,
            gradient_accumulation_steps=gradient_accumulation_steps,
            name=name,
            eta=eta,
            gamma=gamma,
            kappa_epsilon=kappa_epsilon,
            grad_threshold=grad_threshold,
            hessian_decay=hessian_decay,
            seed=seed,
            steps_per_epoch=steps_per_epoch,
            rho_norm=rho_norm,
            kappa_weights=kappa_weights,
            skip_nonfinite=skip_nonfinite,
            **kwargs,
        )


_CLASSES[keras.optimizers.Adam] = PerturbedAdam
_CLASSES[keras.optimizers.SGD] = PerturbedSGD

# Second moments v that are h when their decay equals hessian_decay (see PerturbationMixin.build):
# the class and the name of its decay argument.
_SECOND_MOMENTS = (
    ("Adam", "beta_2"),  # covers AdamW
    ("Nadam", "beta_2"),
    ("RMSprop", "rho"),
)


def perturbed(optimizer_class: type) -> type:
    """The PertOPT version of a Keras optimizer class: ``perturbed(keras.optimizers.Lion)``.

    The returned class takes the wrapped class's arguments plus the perturbation arguments, and is
    registered for saving as ``keras_pacgen>Perturbed<Name>``. The built-in Keras optimizers are
    registered when `keras_pacgen` is imported; for your own optimizer class call `perturbed()`
    before `keras.models.load_model`, as for any custom object.
    """
    if isinstance(optimizer_class, type) and issubclass(optimizer_class, PerturbationMixin):
        return optimizer_class
    if not (
        isinstance(optimizer_class, type)
        and issubclass(optimizer_class, keras.optimizers.Optimizer)
    ):
        raise TypeError(
            "`optimizer_class` must be a keras.optimizers.Optimizer subclass. Received: "
            f"optimizer_class={optimizer_class!r}"
        )
    if issubclass(optimizer_class, keras.optimizers.LossScaleOptimizer):
        raise TypeError(
            "Perturb the inner optimizer, not the LossScaleOptimizer: "
            "LossScaleOptimizer(keras_pacgen.perturb(inner)). compile() does this itself under "
            "the mixed_float16 policy."
        )
    if optimizer_class in _CLASSES:
        return _CLASSES[optimizer_class]
    decay = None
    for base_name, decay_name in _SECOND_MOMENTS:
        base = getattr(keras.optimizers, base_name, None)
        if base is not None and issubclass(optimizer_class, base):
            decay = decay_name
            break
    name = f"Perturbed{optimizer_class.__name__}"
    cls = type(
        name,
        (PerturbationMixin, optimizer_class),
        {
            "__module__": __name__,
            "__doc__": f"{optimizer_class.__name__} with Algorithm 1's perturbation (PertOPT).\n\n"
            f"All of `{optimizer_class.__module__}.{optimizer_class.__name__}`'s arguments plus the "
            "perturbation arguments:" + _PERTURBATION_ARGS_DOC,
            "_second_moment_decay": decay,
        },
    )
    cls = keras.saving.register_keras_serializable(package=_PACKAGE, name=name)(cls)
    _CLASSES[optimizer_class] = cls
    return cls


def perturb(optimizer: keras.optimizers.Optimizer, **perturbation_args) -> keras.optimizers.Optimizer:
    """A PertOPT copy of an optimizer instance: ``perturb(keras.optimizers.AdamW(1e-3), eta=0.01)``.

    The copy has the same configuration (learning rate or schedule, weight decay, clipping, EMA...)
    and fresh state. `perturbation_args` are the perturbation arguments of `PerturbationMixin`.
    """
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        raise TypeError(
            f"`optimizer` must be a keras.optimizers.Optimizer instance. Received: {optimizer!r}"
        )
    unknown = set(perturbation_args) - set(PERTURBATION_DEFAULTS)
    if unknown:
        raise ValueError(
            f"Unknown perturbation argument(s) {sorted(unknown)}; allowed: "
            f"{sorted(PERTURBATION_DEFAULTS)}."
        )
    if optimizer.built:
        raise ValueError(
            "perturb() takes an optimizer that has not been used yet (its state cannot carry over)."
        )
    cls = perturbed(type(optimizer))
    config = optimizer.get_config()
    config.update(perturbation_args)
    return cls.from_config(config)


for _name in (
    "Adadelta",
    "Adafactor",
    "Adagrad",
    "AdamW",
    "Adamax",
    "Ftrl",
    "Lamb",
    "Lion",
    "Nadam",
    "RMSprop",
):
    _cls = getattr(keras.optimizers, _name, None)
    if _cls is not None:
        globals()[f"Perturbed{_name}"] = perturbed(_cls)
