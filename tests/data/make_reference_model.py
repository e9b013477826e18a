"""Recreate saved_models/reference/: a small SavedModel exported by this version, with I/O pairs.

    python tests/data/make_reference_model.py

The test `tests/test_cli.py::test_reference_saved_model_still_loads` loads it and checks the
outputs, so that SavedModels exported by earlier versions keep loading and keep their outputs.
"""

import os
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
TARGET = ROOT / "saved_models" / "reference" / "mnist1d_cnn_perturbed_adam"


def main():
    import tensorflow as tf

    from keras_pacgen import cli, datasets

    if TARGET.exists():
        shutil.rmtree(TARGET)
    cli.main(["train", "--epochs", "2", "--out", "/tmp/pacgen_reference_run", "--export", str(TARGET),
              "--verbose", "0"])
    x = datasets.load("mnist1d").arrays[2][:16].astype("float32")  # standardised test inputs
    loaded = tf.saved_model.load(str(TARGET))
    y = loaded.serve(tf.constant(x)).numpy()
    np.savez(TARGET / "reference_io.npz", x=x, y=y)
    print("wrote", TARGET, sum(f.stat().st_size for f in TARGET.rglob("*") if f.is_file()), "bytes")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.exit(main())
