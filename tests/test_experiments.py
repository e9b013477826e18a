"""The experiment scripts run end to end on tiny settings (the real runs are in the README)."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT))


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100", "tiny_imagenet"])
def test_paper_image_classification_runs_a_few_steps_on_mock_data(dataset, tmp_path):
    import paper_image_classification as paper

    with tfds.testing.mock_data(num_examples=16):
        summary = paper.main(["--dataset", dataset, "--epochs", "1", "--steps", "2", "--depth", "10",
                              "--width", "1", "--no-download", "--methods", "perturbed,dropout_0.1",
                              "--out", str(tmp_path)])
    assert set(summary) == {"perturbed", "dropout_0.1"}
    assert (tmp_path / "accuracy.png").exists() and (tmp_path / "curves.csv").exists()
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["settings"]["gamma"] == (1.0 if dataset == "tiny_imagenet" else 10.0)


def test_sweep_writes_curves_runs_and_plot(tmp_path):
    import sweep

    runs = sweep.main(["--vary", "batch_size", "--values", "256,1024", "--seeds", "1", "--epochs", "2",
                       "--dataset", "digits", "--out", str(tmp_path)])
    assert len(runs) == 2 and all("psi_paper" in r and "eps_sharpness" in r for r in runs)
    for name in ("curves.csv", "runs.csv", "curves.png", "summary.json"):
        assert (tmp_path / name).exists(), name


def test_accuracy_benchmark_runs(tmp_path):
    from benchmarks import accuracy

    table = accuracy.main(["--datasets", "digits", "--methods", "adam,perturbed_adam,sam_adam",
                           "--seeds", "1", "--epochs", "1", "--out", str(tmp_path)])
    assert [t["method"] for t in table] == ["adam", "perturbed_adam", "sam_adam"]
    assert os.path.exists(tmp_path / "accuracy.csv")


@pytest.mark.parametrize("kernels", ["native", "xla"])
def test_step_profile_finds_the_perturbation_kernel_after_the_last_gradient(tmp_path, monkeypatch, kernels):
    from benchmarks import step_profile
    from keras_pacgen import native

    if kernels == "xla":
        monkeypatch.setenv("KERAS_PACGEN_NATIVE", "0")
    elif native.ops() is None:
        pytest.skip("native kernels unavailable")
    medians = step_profile.main(["--optimizers", "adam,perturbed_adam", "--steps", "4", "--batch", "16",
                                 "--out", str(tmp_path)])
    for row in medians.values():
        assert row["steps"] == 2 and 0 < row["after_last_gradient_ms"] < row["step_ms"]
    assert medians["adam"]["kernel_ms"] == medians["adam"]["xla_call_ms"] == 0  # no kernel
    perturbed = medians["perturbed_adam"]  # σ and w + u wait for the last gradient
    if kernels == "native":  # a plain op: no XLA call
        assert perturbed["xla_call_ms"] == 0 and 0 < perturbed["kernel_ms"]
    else:
        assert 0 < perturbed["kernel_ms"] < perturbed["xla_call_ms"] < perturbed["after_last_gradient_ms"]
    assert json.loads((tmp_path / "step_profile.json").read_text())["medians"] == medians


def test_step_time_ratio_is_paired_by_round():
    """A slowdown that moves every configuration alike (the VM's drift) cancels round by round."""
    from benchmarks.step_time import paired_ratio

    drift = [1.0, 2.0, 1.0, 3.0, 1.5]
    baseline = [[d * 60.0, d * 61.0, d * 59.0] for d in drift]
    assert paired_ratio([[1.04 * t for t in ts] for ts in baseline], baseline) == pytest.approx((1.04,) * 3)
    # per-round ratios 1.00, 1.02, ..., 1.08: the median is 1.04, the interval spans the middle ones
    rounds = [[(1.0 + 0.02 * k) * t for t in ts] for k, ts in enumerate(baseline)]
    ratio, low, high = paired_ratio(rounds, baseline)
    assert ratio == pytest.approx(1.04) and 1.0 <= low < 1.04 < high <= 1.08
    # unpaired medians would mix the drift into the ratio
    unpaired = np.median(np.concatenate(rounds)) / np.median(np.concatenate(baseline))
    assert abs(unpaired - 1.04) > 0.01


def test_ab_revision_builds_the_optimizers_of_a_revision():
    """The A/B loads perturbation.py from git as a module of its own; against HEAD with an
    unchanged file it is the same code, so both versions train to the same bits."""
    import subprocess

    from conftest import LOSS, small_model, toy_data

    import keras_pacgen as kp
    from benchmarks import ab_revision, step_time
    from keras_pacgen import perturbation

    try:
        base = ab_revision._module_at("HEAD")
    except (subprocess.CalledProcessError, FileNotFoundError):
        pytest.skip("no git history here")
    assert base.PerturbationMixin is not perturbation.PerturbationMixin
    x, y = toy_data()
    weights = {}
    for name, make in [("installed", step_time.OPTIMIZERS["perturbed_adam"]),
                       *ab_revision.base_optimizers(base).items()]:
        model = small_model()
        model.compile(optimizer=make(), loss=LOSS)
        model.fit(x, y, epochs=1, shuffle=False, verbose=0, callbacks=[kp.PerturbationCallback()])
        weights[name] = [np.asarray(v) for v in model.trainable_variables]
        mixin = perturbation if name == "installed" else base
        assert isinstance(model.optimizer, mixin.PerturbationMixin)
    with open(perturbation.__file__) as f:
        unchanged = f.read() == ab_revision.source_at("HEAD")
    if unchanged:
        for a, b in zip(weights["installed"], weights["perturbed_adam_base"]):
            np.testing.assert_array_equal(a, b)


def test_toy_sharp_global_minimum_has_higher_psi_and_loses_under_perturbation():
    import toy_landscape as toy

    res = toy.analyse(toy.CONFIG, grid=61)
    sharp, flat = toy.pick_minima(res["minima"])
    assert sharp["loss"] < flat["loss"]  # the sharp minimum is the global one
    assert sharp["hessian_trace"] > 10 * flat["hessian_trace"]
    assert sharp["psi"] > flat["psi"]  # and ψ predicts it generalises worse
    little = {m: toy.expected_loss_at(res, s["w1"], s["w2"], 1000.0, 1000) for m, s in (("s", sharp), ("f", flat))}
    lots = {m: toy.expected_loss_at(res, s["w1"], s["w2"], 0.01, 1000) for m, s in (("s", sharp), ("f", flat))}
    assert little["s"] < little["f"]  # with little perturbation the sharp one stays lower
    assert lots["f"] < lots["s"]  # with enough perturbation the flat one becomes the lower
