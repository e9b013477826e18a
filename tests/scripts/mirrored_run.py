"""Run PerturbedAdam under MirroredStrategy on 2 logical CPUs; print a JSON verdict.

Run in its own process: logical devices must be configured before TensorFlow starts.
"""

import json
import os
import sys
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)
import keras  # noqa: E402

import keras_pacgen as kp  # noqa: E402

warnings.simplefilter("ignore")


def make_model():
    keras.utils.set_random_seed(1)
    return keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, activation="tanh"), keras.layers.Dense(3)]
    )


def data(n):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 8)).astype("float32")
    return x, (np.abs(x[:, 0] * 2 + x[:, 1]).astype("int64") % 3).astype("int32")


def run(strategy):
    x, y = data(128)
    with strategy.scope():
        model = make_model()
        opt = kp.PerturbedAdam(learning_rate=1e-2, eta=0.01, gamma=1.0, grad_threshold=10.0, seed=5)
        model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    model.fit(ds, epochs=steps, verbose=0, callbacks=[kp.PerturbationCallback()])
    opt.apply_perturbation()  # compare perturbed weights and every slot
    return model, opt


def components(var):
    v = var.value if isinstance(var, keras.Variable) else var
    values = getattr(v, "values", None)
    return [np.asarray(c) for c in values] if values is not None else [np.asarray(v)]


mirrored = tf.distribute.MirroredStrategy(["CPU:0", "CPU:1"])
model, opt = run(mirrored)
identical, checked = True, 0
for var in list(model.trainable_variables) + list(opt.variables):
    comps = components(var)
    if len(comps) > 1:
        checked += 1
        identical &= all(np.array_equal(comps[0], c) for c in comps[1:])
single_model, single_opt = run(tf.distribute.get_strategy())
max_diff = max(
    float(np.max(np.abs(components(a)[0] - b.numpy())))
    for a, b in zip(model.trainable_variables, single_model.trainable_variables)
)


def snapshot():
    """Every copy of every weight and optimizer variable, but the count of skipped steps."""
    state = [v for v in opt.variables if v is not opt.nonfinite_steps]
    return [c for var in list(model.trainable_variables) + state for c in components(var)]


def apply_on_replicas(bad_replica):
    """One optimizer step inside strategy.run; replica `bad_replica` (if any) has a NaN gradient."""

    @tf.function
    def step():
        def replica_fn():
            replica = tf.distribute.get_replica_context().replica_id_in_sync_group
            grads = [tf.where(tf.equal(replica, bad_replica), np.nan, 0.01) * tf.ones_like(v)
                     for v in model.trainable_variables]
            opt.apply(grads, model.trainable_variables)

        mirrored.run(replica_fn)

    step()


before, skipped_before = snapshot(), int(opt.nonfinite_steps.numpy())
apply_on_replicas(bad_replica=1)  # only the second replica's gradient is NaN: skipped everywhere
unchanged = all(np.array_equal(a, b) for a, b in zip(before, snapshot()))
skipped = int(opt.nonfinite_steps.numpy()) - skipped_before
apply_on_replicas(bad_replica=-1)  # all finite: trains, replicas stay identical
after = [c for var in model.trainable_variables for c in components(var)]
trained = not np.array_equal(before[0], after[0]) and np.array_equal(after[0], after[1])


def run_sam(strategy):
    """Three SAM steps on a global batch of 32: ε from the gradient of the whole batch."""
    x, y = data(96)
    with strategy.scope():
        sam = kp.SharpnessAwareMinimization(make_model(), rho=0.5)
        sam.compile(optimizer=keras.optimizers.SGD(0.1),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    sam.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(32), epochs=1, verbose=0)
    return sam.model.trainable_variables


sam_mirrored, sam_single = run_sam(mirrored), run_sam(tf.distribute.get_strategy())
sam_identical = all(np.array_equal(components(v)[0], components(v)[1]) for v in sam_mirrored)
sam_diff = max(float(np.max(np.abs(components(a)[0] - b.numpy())))
               for a, b in zip(sam_mirrored, sam_single))
print(json.dumps({"sam_replicas_identical": bool(sam_identical), "sam_max_diff_vs_single": sam_diff,
                  "replicas": mirrored.num_replicas_in_sync, "mirrored_variables_checked": checked,
                  "identical": bool(identical), "max_diff_vs_single": max_diff,
                  "nonfinite_skipped": skipped, "nonfinite_left_state_unchanged": bool(unchanged),
                  "finite_step_trained": bool(trained)}))
