"""Native CPU kernels of the perturbation step, built from ``perturbation_ops.cc`` on first use.

Why: on a CPU without XLA, a perturbed step adds to the wrapped optimizer's step (a) the
reductions of each variable (max |Δh| for ρ, ‖w_t − w_{t−1}‖², h_{t+1} when h has its own
slot), which TensorFlow runs as four to six separate passes over the variable, and (b) σ and
w + u, which XLA compiles into two loops (its CPU backend gives each output its own loop) behind
an XLA call. The native kernels do (a) in one pass and (b) in one loop that writes both
outputs, as plain TensorFlow ops. Same formulas, same rounding of every operation (contraction
into FMAs is off); see ``perturbation_ops.cc``.

They are used for float32 variables on the CPU outside XLA-compiled steps; everywhere else
(``jit_compile=True``, GPUs, other dtypes) the XLA kernels of ``perturbation.py`` run. The
library is compiled once per TensorFlow version, compiler and CPU into a cache directory
(``$KERAS_PACGEN_CACHE``, default ``~/.cache/keras_pacgen``), about 10 s. Without a C++
compiler, or if the build fails, a warning says so and the XLA kernels are used.
``KERAS_PACGEN_NATIVE=0`` turns the native kernels off.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import tensorflow as tf

SOURCE = Path(__file__).with_name("perturbation_ops.cc")
_FLAGS = ["-shared", "-fPIC", "-O3", "-ffp-contract=off", "-fno-math-errno",
          "-Wno-deprecated-declarations"]

_lock = threading.Lock()
_loaded: dict[str, object] = {}


def enabled() -> bool:
    """Whether the native kernels may be used (``KERAS_PACGEN_NATIVE`` is not ``0``)."""
    return os.environ.get("KERAS_PACGEN_NATIVE", "1").strip().lower() not in ("0", "false", "no")


def ops():
    """The module of native ops, built and loaded on the first call; None when they are turned
    off or cannot be built (a warning then says why, once)."""
    if not enabled():
        return None
    with _lock:
        if "module" not in _loaded:
            try:
                _loaded["module"] = tf.load_op_library(str(build()))
            except Exception as error:  # noqa: BLE001 - any failure falls back to XLA
                _loaded["module"] = None
                warnings.warn(
                    "keras_pacgen: the native CPU kernels of the perturbed optimizers could not be "
                    f"built or loaded ({type(error).__name__}: {str(error)[-500:]}); using the XLA "
                    "kernels, which compute the same formulas more slowly on a CPU. Install a C++ "
                    "compiler (or set CXX), point KERAS_PACGEN_CACHE at a writable directory, or "
                    "set KERAS_PACGEN_NATIVE=0 to silence this.",
                    stacklevel=2,
                )
        return _loaded["module"]


def cache_dir() -> Path:
    return Path(os.environ.get("KERAS_PACGEN_CACHE") or Path.home() / ".cache" / "keras_pacgen")


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _command(compiler: str, source: Path, output: Path, native_arch: bool) -> list[str]:
    arch = ["-march=native"] if native_arch else []
    link = tf.sysconfig.get_link_flags()
    if sys.platform == "darwin":
        link = [*link, "-undefined", "dynamic_lookup"]
    return [compiler, *_FLAGS, *arch, *tf.sysconfig.get_compile_flags(), str(source),
            "-o", str(output), *link]


def build(directory: Path | None = None) -> Path:
    """Compile ``perturbation_ops.cc`` (unless a build for this TensorFlow, compiler and CPU is
    cached) and return the shared library's path. Raises on failure."""
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not compiler:
        raise RuntimeError("no C++ compiler found (set CXX)")
    directory = Path(directory) if directory is not None else cache_dir()
    key = hashlib.sha256(
        b"\0".join(s.encode() for s in (
            SOURCE.read_text(), tf.__version__, tf.sysconfig.get_build_info().get("cpu_compiler", ""),
            " ".join(_command(compiler, Path(SOURCE.name), Path("out"), True)), _cpu_flags(),
            platform.platform(),
        ))
    ).hexdigest()[:20]
    library = directory / f"perturbation_ops-{key}.so"
    if library.exists():
        return library
    directory.mkdir(parents=True, exist_ok=True)
    print(f"keras_pacgen: compiling the native CPU kernels (once, ~10 s) into {directory}",
          file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(dir=directory) as scratch:
        partial = Path(scratch) / library.name
        errors = ""
        for native_arch in (True, False):  # -march=native is not known to every compiler
            result = subprocess.run(_command(compiler, SOURCE, partial, native_arch),
                                    capture_output=True, text=True, timeout=600)
            if result.returncode == 0:
                os.replace(partial, library)  # atomic: concurrent builds cannot see half a file
                return library
            errors = result.stderr
        raise RuntimeError(f"{compiler} failed: {errors[-2000:]}")
