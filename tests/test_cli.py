"""The main job end to end, the score command, bad flags, and the committed reference SavedModel."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from keras_pacgen import cli

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "saved_models" / "reference" / "mnist1d_cnn_perturbed_adam"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    out, export = tmp / "run", tmp / "export"
    assert cli.main(["train", "--epochs", "3", "--out", str(out), "--export", str(export), "--verbose", "0"]) == 0
    return out, export


def test_main_job_writes_everything_it_promises(run, capsys):
    out, export = run
    rows = list(csv.DictReader(open(out / "pacgen.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert all(np.isfinite(float(r[k])) for r in rows for k in ("gen_gap", "pacgen", "clean_train_loss"))
    history = list(csv.DictReader(open(out / "history.csv")))
    assert len(history) == 3 and {"gen_gap", "pacgen", "val_loss", "accuracy"} <= set(history[0])
    assert any("tfevents" in f for _, _, fs in os.walk(out / "tensorboard") for f in fs)
    assert any("tfevents" in f for _, _, fs in os.walk(out / "tensorboard" / "pacgen") for f in fs)
    assert (out / "gap_psi.png").stat().st_size > 5000
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_accuracy"] > 0.3  # three epochs on MNIST-1D, ten classes
    assert (out / "model.keras").exists()
    served = tf.saved_model.load(str(export))
    from keras_pacgen import datasets

    x = datasets.load("mnist1d").arrays[2][:32]
    import keras

    model = keras.models.load_model(out / "model.keras")
    np.testing.assert_allclose(served.serve(tf.constant(x)).numpy(), model.predict(x, verbose=0), atol=1e-6)


def test_score_and_measure_read_the_keras_file_and_refuse_an_export(run, capsys, tmp_path):
    out, export = run
    assert cli.main(["score", str(out / "model.keras"), "--dataset", "mnist1d", "--max-batches", "2"]) == 0
    printed = capsys.readouterr().out
    assert "pacGen psi" in printed and "kappa term" in printed
    json_path = tmp_path / "m.json"
    names = ["pacgen", "keskar_sharpness", "param_norm", "top_hessian_eigenvalue"]
    assert cli.main(["measure", str(out / "model.keras"), "--dataset", "mnist1d", "--max-batches", "2",
                     "--measures", ",".join(names), "--out", str(json_path)]) == 0
    printed = capsys.readouterr().out
    saved = json.loads(json_path.read_text())["measures"]
    assert list(saved) == names
    assert all(name in printed for name in saved) and all(np.isfinite(list(saved.values())))
    assert saved["keskar_sharpness"] > 0 and saved["top_hessian_eigenvalue"] > 0
    for command in ("score", "measure"):  # a served function cannot be moved to other weights
        assert cli.main([command, str(export), "--dataset", "mnist1d"]) == 2
        assert "Give the .keras file instead" in capsys.readouterr().err
    assert cli.main(["measure", str(out / "model.keras"), "--dataset", "mnist1d", "--measures",
                     "sharpnes"]) == 2
    err = capsys.readouterr().err
    assert "unknown measure(s) sharpnes" in err and "valid: pacgen," in err


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["train", "--optimizer", "rmsprop"], "invalid choice: 'rmsprop'"),
        (["train", "--dataset", "imagenet"], "choose from"),
        (["train", "--eta", "0"], "must be > 0.0"),
        (["train", "--epochs", "0"], "must be >= 1"),
        (["train", "--gamma", "nan"], "must be finite"),
        (["score", "x.keras"], "--dataset"),
        (["measure", "x.keras", "--dataset", "mnist"+"2d"], "invalid choice"),
    ],
)
def test_bad_flags_give_usage_errors(argv, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: pacgen" in err and expected in err


def test_python_dash_m_is_the_same_command():
    proc = subprocess.run([sys.executable, "-m", "keras_pacgen", "train", "--optimizer", "rmsprop"],
                          capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 2 and "invalid choice: 'rmsprop'" in proc.stderr


def test_unavailable_dataset_is_a_clear_message_not_a_traceback(tmp_path, capsys):
    code = cli.main(["train", "--dataset", "cifar10", "--data-dir", str(tmp_path), "--epochs", "1"])
    assert code == 2
    err = capsys.readouterr().err
    assert "not available" in err and "Traceback" not in err


def test_reference_saved_model_still_loads():
    reference = np.load(REFERENCE / "reference_io.npz")
    served = tf.saved_model.load(str(REFERENCE))
    np.testing.assert_allclose(served.serve(tf.constant(reference["x"])).numpy(), reference["y"], atol=1e-5)
