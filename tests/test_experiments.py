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
