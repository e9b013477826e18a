"""The study and example scripts run end to end on tiny settings (the real runs are in the README)."""

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from keras_pacgen import cli, measures, studies

ROOT = Path(__file__).resolve().parents[1]


def script(relative: str):
    """A script of the repository, imported as a module (scripts are not a package)."""
    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# CIFAR-100 differs from CIFAR-10 only in its class count (its pipeline: test_datasets.py)
@pytest.mark.parametrize("dataset", ["cifar10", "tiny_imagenet"])
def test_paper_image_classification_runs_a_few_steps_on_mock_data(dataset, tmp_path):
    paper = script("examples/paper_image_classification.py")
    methods = ["perturbed", "dropout_0.1"] if dataset == "cifar10" else ["perturbed"]
    with tfds.testing.mock_data(num_examples=16):
        summary = paper.main(["--dataset", dataset, "--epochs", "1", "--steps", "2", "--depth", "10",
                              "--width", "1", "--no-download", "--methods", ",".join(methods),
                              "--out", str(tmp_path)])
    assert set(summary) == set(methods)
    assert (tmp_path / "accuracy.png").exists() and (tmp_path / "curves.csv").exists()
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["settings"]["gamma"] == (1.0 if dataset == "tiny_imagenet" else 10.0)


def test_measures_study_quick_runs_through_the_runner_and_reports_from_the_store(tmp_path):
    out = tmp_path / "measures"
    assert cli.main(["study", "measures", "--quick", "--out", str(out)]) == 0
    entries = studies.results(str(out))
    assert len(entries) == 2 and all(e["status"] == "ok" for e in entries)
    rows = list(csv.DictReader(open(out / "runs.csv")))
    for column in ("dataset", "batch_size", "seed", "steps", "converged", "train_loss", "error_gap",
                   "loss_gap", "pacgen", "psi_per_parameter", *studies.measures_study.QUICK["measures"]):
        assert column in rows[0], column
    # every converged network stopped at the criterion: clean training cross-entropy <= 0.01
    assert all(float(r["train_loss"]) <= 0.01 for r in rows if r["converged"] == "True")
    ranking = json.loads((out / "ranking.json").read_text())["ranking"]["digits"]
    assert ranking["networks"] == 2
    assert set(ranking["measures"]["pacgen"]) == {"non_finite", "error_gap", "loss_gap"}
    assert ranking["measures"]["pacgen"]["non_finite"] == 0  # ψ is finite on both networks
    converged = [r for r in rows if r["converged"] == "True"]
    tau = measures.kendall_tau([float(r["keskar_sharpness"]) for r in converged],
                               [float(r["error_gap"]) for r in converged])
    assert ranking["measures"]["keskar_sharpness"]["error_gap"]["tau"] == pytest.approx(tau, nan_ok=True)
    for name in ("measures_vs_gap.png", "sweep_curves.png"):
        assert (out / name).stat().st_size > 1000, name
    assert entries[0]["outputs"]["curve"]  # gap and ψ along the sweep, stored with the trial


def test_pertopt_study_quick_declares_its_second_stage_and_reports(tmp_path):
    summary = studies.run("pertopt", str(tmp_path), quick=True, verbose=0)
    entries = studies.results(str(tmp_path))
    methods = [e["hyperparameters"]["method"] for e in entries]
    assert set(methods) == {"adam", "dropout", "sam", "pertopt", "pertopt_paper", "pertopt_dropout"}
    assert methods[-1] == "pertopt_dropout" and all(e["status"] == "ok" for e in entries)
    rows = list(csv.DictReader(open(tmp_path / "runs.csv")))
    pertopt = [r for r in rows if r["method"] == "pertopt"]
    assert all(0 <= float(r["capped_share"]) <= 1 for r in pertopt)
    chosen = {c["method"]: c for c in summary["datasets"]["digits"]["chosen"]}
    assert chosen["pertopt"]["val_accuracy"] == pytest.approx(max(float(r["val_accuracy"]) for r in pertopt))
    assert (tmp_path / "pertopt_heatmap.png").stat().st_size > 1000


def test_step_time_ratio_is_paired_by_round():
    """A slowdown that moves every configuration alike (the VM's drift) cancels round by round."""
    paired_ratio = script("benchmarks/step_time.py").paired_ratio

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


def test_step_time_update_only_leaves_out_lines_7_to_14_traced_or_eager():
    """The diagnostic `_update_only` step: OPT's update without a perturbation (σ stays 0, the
    model holds the clean weights, which moved), whether the step is traced inside the context
    (TensorFlow, JAX) or runs eagerly inside it at every call (PyTorch); a step traced outside
    draws one."""
    import keras
    import tensorflow as tf

    import keras_pacgen as kp
    from keras_pacgen.perturbation import step

    step_time = script("benchmarks/step_time.py")
    original = step._perturb_device
    x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    y = np.arange(16) % 2

    def trained(included):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        model.compile(optimizer=kp.PerturbedSGD(learning_rate=0.1, gamma=1.0, seed=0),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        start = [v.numpy() for v in model.trainable_variables]
        with step_time.lines_7_to_14(included=included):
            model.train_on_batch(x, y)  # traced here
        model.train_on_batch(x, y)  # the same trace, outside
        states = [model.optimizer.perturbation_state(v) for v in model.trainable_variables]
        return model, start, states

    model, start, states = trained(included=False)
    assert step._perturb_device is original
    for v, w0, state in zip(model.trainable_variables, start, states):
        assert not np.any(state["sigma"].numpy())
        np.testing.assert_array_equal(v.numpy(), state["clean_weights"].numpy())
        assert not np.array_equal(v.numpy(), w0)
    _, _, states = trained(included=True)
    assert any(np.any(tf.abs(s["sigma"]).numpy() > 0) for s in states)

    # An eager step (PyTorch's, here TensorFlow's run_eagerly) calls `_perturb_device` each time
    # it runs: the wrapped step leaves lines 7-14 out at every call.
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer=kp.PerturbedSGD(learning_rate=0.1, gamma=1.0, seed=0), run_eagerly=True,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    eager_step = step_time.without_lines_7_to_14(lambda: model.train_on_batch(x, y))
    eager_step()
    eager_step()
    assert step._perturb_device is original
    assert not any(np.any(model.optimizer.perturbation_state(v)["sigma"].numpy())
                   for v in model.trainable_variables)
    model.train_on_batch(x, y)  # unwrapped: the perturbation is drawn again
    assert any(np.any(model.optimizer.perturbation_state(v)["sigma"].numpy())
               for v in model.trainable_variables)


def test_toy_sharp_global_minimum_has_higher_psi_and_loses_under_perturbation():
    toy = script("examples/toy_landscape.py")

    res = toy.analyse(toy.CONFIG, grid=61)
    sharp, flat = toy.pick_minima(res["minima"])
    assert sharp["loss"] < flat["loss"]  # the sharp minimum is the global one
    assert sharp["hessian_trace"] > 10 * flat["hessian_trace"]
    assert sharp["psi"] > flat["psi"]  # and ψ predicts it generalises worse
    little = {m: toy.expected_loss_at(res, s["w1"], s["w2"], 1000.0, 1000) for m, s in (("s", sharp), ("f", flat))}
    lots = {m: toy.expected_loss_at(res, s["w1"], s["w2"], 0.01, 1000) for m, s in (("s", sharp), ("f", flat))}
    assert little["s"] < little["f"]  # with little perturbation the sharp one stays lower
    assert lots["f"] < lots["s"]  # with enough perturbation the flat one becomes the lower
