"""MirroredStrategy over 2 logical CPUs: replicas stay bit-identical (stateless noise)."""

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
