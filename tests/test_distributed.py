"""MirroredStrategy over 2 logical CPUs: replicas stay bit-identical (stateless noise), and a
non-finite gradient on one replica skips the step on all; MultiWorkerMirroredStrategy on localhost."""

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parent / "scripts" / "mirrored_run.py"


def test_mirrored_replicas_identical_and_match_single_device():
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "3"], capture_output=True, text=True, env=env, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    assert result["mirrored_variables_checked"] > 10  # weights and every optimizer slot
    assert result["identical"]
    assert result["max_diff_vs_single"] < 1e-5
    # a NaN gradient on one replica skips the step on every replica, and nothing changes
    assert result["nonfinite_skipped"] == 1
    assert result["nonfinite_left_state_unchanged"]
    assert result["finite_step_trained"]
    # SAM's ε from the gradient of the global batch: the same step on 2 replicas as on one device
    assert result["sam_replicas_identical"]
    assert result["sam_max_diff_vs_single"] < 1e-5


def test_multi_worker_mirrored_two_processes_on_localhost():
    """examples/multi_worker.py: two workers on 127.0.0.1 end with bit-identical weights."""
    example = Path(__file__).resolve().parents[1] / "examples" / "multi_worker.py"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, str(example), "--launch", "2", "--epochs", "1"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 2 and all(r["workers"] == 2 and r["steps"] == 16 for r in lines)
    assert lines[0]["sha256"] == lines[1]["sha256"]
    assert "identical weights on all 2 workers: True" in out.stdout
