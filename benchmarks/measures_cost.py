"""What each generalization measure costs on the measures study's network, against training it.

    python benchmarks/measures_cost.py [--dataset mnist1d] [--out benchmarks/results]

The network of the measures study's first centre (`conv_net`, width 32, depth 3, on the
first 1000 training samples, SGD with momentum 0.9, batch 128, learning rate 0.02) is trained
until its clean training cross-entropy is <= 0.01. Then, on the same 1000 samples:

* every measure of `keras_pacgen.measures.MEASURES` alone (nothing shared, its functions traced
  anew), in seconds and in gradient evaluations: its seconds over the median seconds of one
  gradient of the data loss over the 1000 samples (measured in the same process);
* `compute_all` (every measure, sharing the data, traced functions, σ′, α′ and the per-sample
  gradients), against the training time.

Goal (the measures issue): every measure together at most 4x the training time, none over 1x.
Wall time on a shared 2-core VM drifts, so the ratios, taken in one process, are what to compare.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from keras_pacgen import datasets, measures, reporting, training  # noqa: E402

CONFIG = dict(model="conv_net", optimizer="sgd", batch_size=128, learning_rate=0.02, width=32,
              depth=3, epochs=100_000, target_loss=0.01, max_steps=4000, train_size=1000, seed=0)


def gradient_seconds(model, samples, repeats: int = 20) -> float:
    """The median wall time of one gradient of the data loss over all of `samples`."""
    objective = measures._common.Objective(model, samples)
    objective.gradient()  # trace
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        [g.numpy() for g in objective.gradient()]
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist1d", choices=datasets.OFFLINE)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)

    result = training.run(training.RunConfig(dataset=args.dataset, **CONFIG))
    (x, y), _, _ = datasets.split(datasets.load(args.dataset).arrays, train_size=CONFIG["train_size"])
    samples = measures.read((x, y))
    model, initial = result.model, result.initial_weights
    print(f"trained to cross-entropy {result.train_loss:.4f} in {result.steps} steps, "
          f"{result.seconds:.2f} s (converged: {result.converged})")
    gradient = gradient_seconds(model, samples)
    print(f"one gradient over {len(samples)} samples: {1000 * gradient:.2f} ms\n")

    rows = []
    print(f"{'measure':30s} {'seconds':>9s} {'gradients':>10s} {'/ training':>11s} {'value':>12s}")
    for name in measures.MEASURES:
        kwargs = {"initial_weights": initial} if name in measures.NEED_INITIAL_WEIGHTS else {}
        start = time.perf_counter()
        value = measures.MEASURES[name](model, (x, y), seed=0, **kwargs)
        seconds = time.perf_counter() - start
        rows.append({"measure": name, "seconds": round(seconds, 3),
                     "gradients": round(seconds / gradient, 1),
                     "training_ratio": round(seconds / result.seconds, 3), "value": value})
        print(f"{name:30s} {seconds:9.2f} {seconds / gradient:10.0f} {seconds / result.seconds:11.3f} "
              f"{value:12.5g}", flush=True)

    start = time.perf_counter()
    measures.compute_all(model, (x, y), initial_weights=initial, seed=0)
    together = time.perf_counter() - start
    # the training time again, in this process's current speed
    again = training.run(training.RunConfig(dataset=args.dataset, **CONFIG))
    summary = {
        "dataset": args.dataset, "config": CONFIG, "train_steps": result.steps,
        "train_seconds": [round(result.seconds, 2), round(again.seconds, 2)],
        "gradient_seconds": gradient, "compute_all_seconds": round(together, 2),
        "compute_all_over_training": round(together / statistics.mean([result.seconds, again.seconds]), 2),
        "largest_single_over_training": max(r["training_ratio"] for r in rows),
        "measures": rows,
    }
    print(f"\ncompute_all (every measure, shared): {together:.2f} s = "
          f"{summary['compute_all_over_training']:.2f}x training ({result.seconds:.2f} s and "
          f"{again.seconds:.2f} s); the costliest single measure: "
          f"{summary['largest_single_over_training']:.2f}x")
    path = reporting.write_json(os.path.join(args.out, f"measures_cost_{args.dataset}.json"), summary)
    print(f"wrote {path}")
    return summary


if __name__ == "__main__":
    main()
