"""PerturbedAdam under MultiWorkerMirroredStrategy: every worker ends with identical weights.

Run two workers on this machine (each in its own terminal, or let --launch start both):

    python examples/multi_worker.py --launch 2            # starts 2 workers on 127.0.0.1
    python examples/multi_worker.py --worker 0 --ports 23456,23457   # by hand, one per worker
    python examples/multi_worker.py --worker 1 --ports 23456,23457

Each worker prints one JSON line: its index, the number of steps and a fingerprint (sum and
SHA-256) of its final clean weights. Stateless noise drawn from (seed, step, variable) makes the
perturbation identical on all workers without any communication beyond the gradient all-reduce.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import subprocess
import sys


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def worker(index: int, ports: list[int], epochs: int) -> dict:
    os.environ["TF_CONFIG"] = json.dumps(
        {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]}, "task": {"type": "worker", "index": index}}
    )
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    import keras

    import keras_pacgen as kp
    from keras_pacgen import datasets, models

    x, y, _, _ = datasets.load("mnist1d").arrays
    global_batch = 64
    ds = tf.data.Dataset.from_tensor_slices((x[:1024], y[:1024])).batch(global_batch)
    dist_ds = strategy.experimental_distribute_dataset(ds)
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = models.conv_net()
        optimizer = kp.PerturbedAdam(learning_rate=3e-3, gamma=1.0, seed=0, steps_per_epoch=16)
        optimizer.build(model.trainable_variables)
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum")

    @tf.function
    def train_step(batch):
        def step(xb, yb):
            with tf.GradientTape() as tape:
                loss = loss_fn(yb, model(xb, training=True)) / global_batch
            optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)

        strategy.run(step, args=batch)

    # Keras 3.15's model.fit does not run under MultiWorkerMirroredStrategy
    # (keras-team/keras#20585, with any optimizer): a custom loop does.
    for _ in range(epochs):
        for batch in dist_ds:
            train_step(batch)
    optimizer.remove_perturbation()  # the clean weights
    weights = np.concatenate([v.numpy().ravel() for v in model.trainable_variables])
    return {
        "worker": index,
        "workers": strategy.num_replicas_in_sync,
        "steps": int(optimizer.iterations.numpy()),
        "sum": float(weights.astype(np.float64).sum()),
        "sha256": hashlib.sha256(weights.tobytes()).hexdigest(),
    }


def launch(n: int, epochs: int, timeout: float = 300) -> list[dict]:
    ports = free_ports(n)
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", str(i), "--ports", ",".join(map(str, ports)),
             "--epochs", str(epochs)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(n)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        if p.returncode:
            raise RuntimeError(f"worker failed ({p.returncode}):\n{err[-3000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--launch", type=int, default=0, help="start this many local workers")
    parser.add_argument("--worker", type=int, default=None)
    parser.add_argument("--ports", default="")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    if args.launch:
        results = launch(args.launch, args.epochs)
        for r in results:
            print(json.dumps(r))
        same = len({r["sha256"] for r in results}) == 1
        print(f"identical weights on all {len(results)} workers: {same}")
        return 0 if same else 1
    print(json.dumps(worker(args.worker, [int(p) for p in args.ports.split(",")], args.epochs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
