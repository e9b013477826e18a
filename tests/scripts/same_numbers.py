"""One fixed dense model, data and seed on the backend KERAS_BACKEND names: the weights after 16
PerturbedAdam steps and ψ of the optimizer's estimates, then every deterministic measure of one set
of weights, as JSON on stdout.

    python same_numbers.py WEIGHTS.npz

The measures are taken of the weights in WEIGHTS.npz when it exists (another backend's trained
weights), else of this run's, which are then written there: so that every backend measures the
same weights, and a difference is the measure's, not the training's.
"""

import json
import os
import sys
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_pacgen as kp  # noqa: E402
from keras_pacgen import measures  # noqa: E402

warnings.simplefilter("ignore")
# Measures that draw no random numbers of the backend (numpy draws, or none).
DETERMINISTIC = [
    "hessian_trace", "top_hessian_eigenvalue", "gradient_noise", "keskar_sharpness",
    "pacgen", "pacgen_hutchinson", "pac_bayes_bound", "path_norm", "path_norm_over_margin",
    "inverse_margin", "log_prod_of_spec", "log_sum_of_fro", "log_spec_init_main", "fro_dist",
    "dist_spec_init", "param_norm",
]

rng = np.random.default_rng(0)
x = rng.normal(size=(64, 6)).astype("float32")
y = (np.abs(2 * x[:, 0] + x[:, 1]).astype("int64") % 3).astype("int32")
model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(12, activation="tanh"),
                          keras.layers.Dense(3)])
initial = [(0.4 * rng.normal(size=v.shape)).astype("float32") for v in model.trainable_variables]
model.set_weights(initial)
model.compile(optimizer=kp.PerturbedAdam(1e-2, gamma=1.0, grad_threshold=10.0, seed=7),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
model.fit(x, y, batch_size=16, epochs=4, shuffle=False, verbose=0,
          callbacks=[kp.PerturbationCallback()])
trained = model.get_weights()
psi = float(kp.psi_from_optimizer(model))
weights_file = sys.argv[1]
if os.path.exists(weights_file):
    with np.load(weights_file) as stored:
        model.set_weights([stored[f"arr_{i}"] for i in range(len(stored.files))])
else:
    np.savez(weights_file, *trained)
values = measures.compute_all(model, (x, y), measures=DETERMINISTIC, initial_weights=initial)
values["fisher_trace_empirical"] = measures.fisher_trace(model, (x, y), labels="empirical")
values["psi_from_optimizer"] = psi
print(json.dumps({
    "backend": keras.backend.backend(),
    "steps": int(keras.ops.convert_to_numpy(model.optimizer.iterations)),
    "weights": [w.ravel().tolist() for w in trained],
    "measures": values,
}))
