"""Constructor arguments: Keras parity, validation with clear errors, config round trip."""

import inspect
import math

import keras
import pytest

import keras_pacgen as kp
from keras_pacgen.perturbation import PERTURBATION_DEFAULTS

PERTURBATION_ARGS = set(PERTURBATION_DEFAULTS)


@pytest.mark.parametrize(
    "ours, theirs", [(kp.PerturbedAdam, keras.optimizers.Adam), (kp.PerturbedSGD, keras.optimizers.SGD)]
)
def test_signature_is_the_wrapped_optimizers_plus_perturbation_args(ours, theirs):
    p_ours = inspect.signature(ours.__init__).parameters
    p_theirs = inspect.signature(theirs.__init__).parameters
    for name, param in p_theirs.items():
        assert name in p_ours, name
        if name not in ("name", "self", "kwargs"):
            assert p_ours[name].default == param.default, name
    assert set(p_ours) - set(p_theirs) == PERTURBATION_ARGS


def test_algorithm_1_defaults():
    opt = kp.PerturbedAdam()
    assert (opt.gamma, opt.kappa_epsilon, opt.grad_threshold, opt.hessian_decay) == (
        0.1,
        1e-5,
        0.1,
        0.999,
    )


BAD = [
    ("eta", 0.0, "(0.0, inf)"),
    ("eta", -1.0, "(0.0, inf)"),
    ("eta", math.nan, "finite"),
    ("eta", math.inf, "finite"),
    ("gamma", -0.1, "[0.0, inf)"),
    ("gamma", math.nan, "finite"),
    ("kappa_epsilon", 0.0, "(0.0, inf)"),
    ("kappa_epsilon", -1e-5, "(0.0, inf)"),
    ("grad_threshold", -1.0, "[0.0, inf)"),
    ("grad_threshold", math.inf, "finite"),
    ("hessian_decay", 1.0, "[0.0, 1.0)"),
    ("hessian_decay", -0.5, "[0.0, 1.0)"),
    ("hessian_decay", math.nan, "finite"),
    ("eta", "big", "finite"),
    ("seed", -1, "integer >= 0"),
    ("seed", 1.5, "integer >= 0"),
    ("steps_per_epoch", 0, "integer >= 1"),
    ("rho_norm", "layer", "'global', 'variable'"),
    ("kappa_weights", "next", "'previous', 'current'"),
    ("skip_nonfinite", "yes", "True or False"),
]


@pytest.mark.parametrize("cls", [kp.PerturbedAdam, kp.PerturbedSGD, kp.perturbed(keras.optimizers.Lion)])
@pytest.mark.parametrize("name, value, allowed", BAD)
def test_bad_values_name_the_argument_and_range(cls, name, value, allowed):
    with pytest.raises(ValueError) as err:
        cls(**{name: value})
    assert f"`{name}`" in str(err.value)
    assert allowed in str(err.value)


def test_gradient_accumulation_is_refused_clearly():
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        kp.PerturbedAdam(gradient_accumulation_steps=2)


def test_config_round_trip():
    opt = kp.PerturbedAdam(
        learning_rate=3e-4, beta_2=0.99, eta=0.5, gamma=2.0, seed=7, rho_norm="variable",
        steps_per_epoch=10, weight_decay=0.01,
    )
    config = opt.get_config()
    clone = kp.PerturbedAdam.from_config(config)
    assert clone.get_config() == config
    assert config["eta"] == 0.5 and config["seed"] == 7 and config["rho_norm"] == "variable"
    serialized = keras.optimizers.serialize(opt)
    again = keras.optimizers.deserialize(serialized)
    assert type(again) is kp.PerturbedAdam and again.get_config() == config


def test_seed_none_draws_a_seed_that_is_saved():
    a, b = kp.PerturbedSGD(), kp.PerturbedSGD()
    assert isinstance(a.seed, int) and a.get_config()["seed"] == a.seed
    assert a.seed != b.seed


def test_perturb_any_optimizer_keeps_its_config():
    schedule = keras.optimizers.schedules.ExponentialDecay(1e-3, 100, 0.9)
    base = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=0.05, clipnorm=1.0)
    opt = kp.perturb(base, eta=0.1, seed=3)
    assert type(opt).__name__ == "PerturbedAdamW"
    assert isinstance(opt, keras.optimizers.AdamW) and isinstance(opt, kp.PerturbationMixin)
    assert opt.weight_decay == 0.05 and opt.clipnorm == 1.0 and opt.eta == 0.1
    assert isinstance(opt.learning_rate, keras.optimizers.schedules.ExponentialDecay) or callable(
        opt._learning_rate
    )
    assert kp.perturbed(keras.optimizers.AdamW) is type(opt)
    assert kp.perturbed(keras.optimizers.Adam) is kp.PerturbedAdam
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert type(restored) is type(opt) and restored.get_config() == opt.get_config()


def test_perturb_rejects_wrong_things():
    with pytest.raises(TypeError, match="optimizer_class"):
        kp.perturbed(int)
    with pytest.raises(TypeError, match="inner optimizer"):
        kp.perturbed(keras.optimizers.LossScaleOptimizer)
    with pytest.raises(ValueError, match="Unknown perturbation argument"):
        kp.perturb(keras.optimizers.SGD(), etaa=1.0)
    with pytest.raises(TypeError, match="instance"):
        kp.perturb(keras.optimizers.SGD, eta=1.0)
