"""PerturbedAdam under JAX's `keras.distribution.DataParallel` on 2 CPU devices against one
device; prints a JSON verdict. Run in its own process with KERAS_BACKEND=jax: the device count
must be set before JAX starts."""

import json
import os
import warnings

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_pacgen as kp  # noqa: E402

warnings.simplefilter("ignore")
rng = np.random.default_rng(0)
x = rng.normal(size=(64, 8)).astype("float32")
y = (np.abs(2 * x[:, 0] + x[:, 1]).astype("int64") % 3).astype("int32")
initial = [(0.4 * rng.normal(size=s)).astype("float32") for s in [(8, 16), (16,), (16, 3), (3,)]]


def train():
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="tanh"),
                              keras.layers.Dense(3)])
    model.set_weights(initial)
    model.compile(optimizer=kp.PerturbedAdam(1e-2, gamma=1.0, grad_threshold=10.0, seed=3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0,
              callbacks=[kp.PerturbationCallback()])
    model.optimizer.apply_perturbation()  # the perturbed weights too, to compare u
    return model


single = [v.numpy() for v in train().trainable_variables]
keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
model = train()
variables = [*model.trainable_variables, *model.optimizer.variables]
copies = [[np.asarray(shard.data) for shard in v.value.addressable_shards] for v in variables]
print(json.dumps({
    "devices": len(jax.devices()),
    "variables_checked": sum(len(c) > 1 for c in copies),
    "replicas_identical": all(all(np.array_equal(c[0], o) for o in c[1:]) for c in copies),
    "max_difference_to_one_device": max(float(np.max(np.abs(a - v.numpy())))
                                        for a, v in zip(single, model.trainable_variables)),
}))
