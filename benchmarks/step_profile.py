"""Where a training step's time goes after its last gradient: profile of perturbed and plain steps.

    python benchmarks/step_profile.py [--model mnist_cnn] [--optimizers adam,perturbed_adam,sgd,perturbed_sgd]
                                      [--jit false] [--steps 10] [--out benchmarks/results]

Builds each configuration as `step_time.py` does, warms it up, then records `--steps` training
steps with TensorFlow's profiler. For every recorded step (the first and last are dropped) it
takes, from the trace:

* ``step``: the step's duration (the ``multi_step_on_iterator`` event);
* ``after last gradient``: from the end of the last op that computes a gradient (the
  backpropagation ops of convolutions and dense layers, ``BiasAddGrad``) to the end of the step.
  For plain Adam this is the update of the first layer (whose gradient comes last) and the
  function's return; for a perturbed optimizer it also holds the work that needs
  ‖w_t − w_{t−1}‖ over all variables: σ and w + u for every variable;
* ``kernel``: the time of the σ and w + u kernels inside that interval: the native
  ``PacgenPerturb`` ops (`keras_pacgen.native`, the default on a CPU) or, with
  ``KERAS_PACGEN_NATIVE=0``, the XLA fusions of `perturbation.py`;
* ``XLA call``: from the start of the op that runs the XLA kernel (a ``PartitionedCall`` that
  TensorFlow's executor runs asynchronously) to the end of its completion callback; 0 with the
  native kernels. What it holds beyond the kernel is the cost of calling XLA from a graph that
  is not compiled: looking up the executable for its arguments, allocating the outputs, and
  handing the work to XLA's threads and the result back.

Prints the medians and writes ``step_profile.json``. The trace is read with TensorFlow's
profiler plug-in (``_pywrap_profiler_plugin.xspace_to_tools_data``, a private API of the
installed TensorFlow).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys
import tempfile
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # noqa: E402
from tensorflow.python.profiler.internal import _pywrap_profiler_plugin  # noqa: E402

from benchmarks.step_time import build, stepper  # noqa: E402

_GRADIENT_OPS = ("Backprop", "BiasAddGrad", "MatMul")  # forward MatMuls end before the backward pass
_KERNEL_OPS = ("fusion", "PacgenPerturb")  # XLA's loops, or the native kernel


def trace_events(steps, run_step) -> list[dict]:
    """The complete ("X") events of `steps` calls of `run_step`, from TensorFlow's profiler."""
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        for _ in range(steps):
            run_step()
        tf.profiler.experimental.stop()
        xspace = sorted(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True))[-1]
        data, _ = _pywrap_profiler_plugin.xspace_to_tools_data([xspace], "trace_viewer@", {})
    return [e for e in json.loads(data).get("traceEvents", []) if e.get("ph") == "X"]


def step_intervals(events) -> list[dict]:
    """Per recorded step (first and last dropped): duration, time after the last gradient op,
    the time of the σ and w + u kernels (native ops or XLA fusions) in that interval, and the
    duration of the XLA call in it, in ms."""
    steps = sorted((e for e in events if e["name"] == "multi_step_on_iterator"), key=lambda e: e["ts"])
    rows = []
    for step in steps[1:-1]:
        start, end = step["ts"], step["ts"] + step["dur"]
        inside = [e for e in events if start <= e["ts"] <= end]
        gradient_ends = [e["ts"] + e["dur"] for e in inside if any(k in e["name"] for k in _GRADIENT_OPS)]
        if not gradient_ends:
            continue
        last = max(gradient_ends)
        kernel = sum(
            e["dur"] for e in inside
            if e["ts"] >= last and any(k in e["name"] for k in _KERNEL_OPS)
            and not e["name"].startswith("end:")
        )
        rows.append({"step_ms": step["dur"] / 1e3, "after_last_gradient_ms": (end - last) / 1e3,
                     "kernel_ms": kernel / 1e3, "xla_call_ms": _async_calls(inside, last) / 1e3})
    return rows


def _async_calls(events, after) -> float:
    """Total time, in µs, of the asynchronous function calls (the XLA kernel's op) that start
    after `after`: from ``ProcessAsync::Start`` to the end of the matching ``ProcessAsync::Done``."""
    def calls(phase):
        return sorted(
            (e for e in events if e["name"] == f"ExecutorState::ProcessAsync::{phase}"
             and e.get("args", {}).get("kernel_type") == "PartitionedCall"),
            key=lambda e: e["ts"],
        )

    total, dones = 0.0, calls("Done")
    for start in (e for e in calls("Start") if e["ts"] >= after):
        done = next((e for e in dones if e["ts"] >= start["ts"]
                     and e["args"].get("name") == start["args"].get("name")), None)
        if done is not None:
            total += done["ts"] + done["dur"] - start["ts"]
    return total


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mnist_cnn")
    parser.add_argument("--optimizers", default="adam,perturbed_adam,sgd,perturbed_sgd")
    parser.add_argument("--jit", default="false", choices=["false", "true"])
    parser.add_argument("--steps", type=int, default=10, help="profiled steps per optimizer (>= 3)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    if args.steps < 3:
        parser.error(f"--steps must be >= 3 (the first and last recorded steps are dropped), got {args.steps}")
    warnings.filterwarnings("ignore")
    results = {}
    for opt in args.optimizers.split(","):
        run_step = stepper(*build(args.model, opt, args.jit == "true", args.batch))
        for _ in range(5):
            run_step()
        rows = step_intervals(trace_events(args.steps, run_step))
        results[opt] = {key: round(statistics.median(r[key] for r in rows), 3) for key in rows[0]}
        results[opt]["steps"] = len(rows)
    print(f"\n{args.model}, jit_compile={args.jit}, batch {args.batch}: medians over the recorded steps\n")
    print("| optimizer | step ms | after last gradient ms | of which σ and w + u kernels ms | XLA call ms |")
    print("|---|---|---|---|---|")
    for opt, r in results.items():
        print(f"| {opt} | {r['step_ms']:.1f} | {r['after_last_gradient_ms']:.2f} | {r['kernel_ms']:.2f} | "
              f"{r['xla_call_ms']:.2f} |")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "step_profile.json"), "w") as f:
        json.dump({"model": args.model, "jit_compile": args.jit == "true", "batch": args.batch,
                   "medians": results}, f, indent=2)
    return results


if __name__ == "__main__":
    main()
