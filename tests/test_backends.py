"""keras-pacgen on every backend, from the one test command: tests/backends run in this process
on TensorFlow and here in a process of their own on JAX and on PyTorch; one model, data and seed
give the same numbers on all three; JAX's data parallelism keeps replicas identical."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).parent.parent
SCRIPTS = Path(__file__).parent / "scripts"
OTHER_BACKENDS = ("jax", "torch")


def run(backend, *args, timeout=900):
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=ROOT)


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_the_backend_tests_pass_on(backend):
    proc = run(backend, "-m", "pytest", "tests/backends", "-n", "0", "-q", "-p", "no:cacheprovider",
               "-W", "ignore::DeprecationWarning")
    assert proc.returncode == 0, f"on {backend}:\n{proc.stdout[-8000:]}\n{proc.stderr[-3000:]}"


def test_one_seed_gives_the_same_numbers_on_every_backend(tmp_path):
    """16 PerturbedAdam steps (the noise u is the package's own counter-based draw) and ψ, then
    the measures that draw no random numbers of the backend, of TensorFlow's trained weights on
    every backend: all to 1e-4 relative."""
    results = {}
    weights = tmp_path / "tensorflow_weights.npz"  # written by the TensorFlow run, read by the others
    for backend in ("tensorflow", *OTHER_BACKENDS):
        proc = run(backend, SCRIPTS / "same_numbers.py", weights)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[backend] = json.loads(proc.stdout.strip().splitlines()[-1])
    reference = results["tensorflow"]
    flat = lambda r: np.concatenate([np.array(w) for w in r["weights"]])  # noqa: E731
    for backend in OTHER_BACKENDS:
        assert results[backend]["steps"] == reference["steps"] == 16
        np.testing.assert_allclose(flat(results[backend]), flat(reference), rtol=1e-4, atol=1e-6)
        for name, value in reference["measures"].items():
            assert results[backend]["measures"][name] == pytest.approx(value, rel=1e-4), name


def test_jax_data_parallel_replicas_are_identical_and_match_one_device():
    proc = run("jax", SCRIPTS / "jax_data_parallel.py", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["devices"] == 2 and result["variables_checked"] > 10
    assert result["replicas_identical"]
    assert result["max_difference_to_one_device"] < 1e-5
