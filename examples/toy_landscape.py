"""The paper's toy example (§§ 2 and 5, Figs. 1-2): a 5-layer sigmoid MLP with two free parameters.

    python examples/toy_landscape.py [--out results/toy]

Model (`keras_pacgen.models.SharedMatrixMLP`): h_{k+1} = sigmoid(W h_k) for 5 layers, no biases,
W = [[w1, C12], [C21, w2]] shared by all layers, output logit A·(h[0] − h[1]), cross-entropy.
Data: 100 two-dimensional samples from a mixture of 3 Gaussians, labelled 1 when the distance to
the first component's mean is below its median (so half the labels are 1).

The paper gives neither the mixture nor the constants; the ones below were found by the search in
`search()` (run with --search) so that the surface has a sharp global minimum and a flat local one,
and are recorded here. Everything is computed in numpy on a grid over (w1, w2): the loss, the
Hessian diagonal and ρ by finite differences, ψ (γ = ε = 0.1), the eq. 11 bound at η = 39, and the
perturbed landscape E_u L(w + u) with u_i ~ U(−σ*_i, σ*_i), σ* of eq. 10 for η = 1000, 0.1, 0.01,
1e-5 (Monte Carlo). Writes fig1_landscape.png, fig2_perturbed.png and toy.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os

import numpy as np

from keras_pacgen import reporting

# Found by search(seed=...) and recorded (see the module docstring).
CONFIG = {"data_seed": 0, "c12": -2.0, "c21": 2.0, "scale": 60.0, "span": 12.0}


def make_data(seed: int, n: int = 100):
    rng = np.random.default_rng(seed)
    means = rng.uniform(-2, 2, size=(3, 2))
    comp = rng.integers(0, 3, n)
    x = means[comp] + rng.normal(scale=0.6, size=(n, 2))
    d = np.linalg.norm(x - means[0], axis=1)
    y = (d < np.median(d)).astype(np.float64)
    return x, y


def loss(w1, w2, x, y, c12, c21, scale, layers: int = 5):
    """Mean binary cross-entropy for arrays of parameters w1, w2 (any equal shapes)."""
    w1 = np.asarray(w1, np.float64)[..., None]
    w2 = np.asarray(w2, np.float64)[..., None]
    h0, h1 = x[:, 0], x[:, 1]
    for _ in range(layers):
        h0, h1 = 1 / (1 + np.exp(-(w1 * h0 + c12 * h1))), 1 / (1 + np.exp(-(c21 * h0 + w2 * h1)))
    z = scale * (h0 - h1)
    return np.mean(np.logaddexp(0, z) - y * z, axis=-1)


def curvature(f, w1, w2, d=1e-3):
    """Hessian diagonal and ρ = max_i |∂H_ii/∂w_i| (a Lipschitz estimate) by finite differences."""
    base = f(w1, w2)
    h11 = (f(w1 + d, w2) - 2 * base + f(w1 - d, w2)) / d**2
    h22 = (f(w1, w2 + d) - 2 * base + f(w1, w2 - d)) / d**2
    t1 = (f(w1 + 2 * d, w2) - 2 * f(w1 + d, w2) + 2 * f(w1 - d, w2) - f(w1 - 2 * d, w2)) / (2 * d**3)
    t2 = (f(w1, w2 + 2 * d) - 2 * f(w1, w2 + d) + 2 * f(w1, w2 - d) - f(w1, w2 - 2 * d)) / (2 * d**3)
    return base, h11, h22, np.maximum(np.abs(t1), np.abs(t2))


def psi(w1, w2, h11, h22, rho, gamma=0.1, eps=0.1):
    total = 0.0
    for w, h in ((w1, h11), (w2, h22)):
        k = gamma * np.abs(w) + eps
        a = h + rho * math.sqrt(2) * k
        total = total + np.log((np.abs(w) + k) * np.maximum(np.sqrt(np.maximum(a, 0)), 1 / k))
    return total


def sigma_star(w, h, rho, eta, gamma=0.1, eps=0.1):
    k = gamma * np.abs(w) + eps
    c = h / 3 + rho * math.sqrt(2) * k / 9
    return np.where(c > 0, np.minimum(np.sqrt(1 / (eta * np.where(c > 0, c, 1))), k), k)


def bound_eq11(lval, w1, w2, h11, h22, rho, eta=39.0, n=100, delta=0.05, gamma=0.1, eps=0.1):
    kl = 0.0
    for w, h in ((w1, h11), (w2, h22)):
        k = gamma * np.abs(w) + eps
        kl = kl + np.log((np.abs(w) + k) / sigma_star(w, h, rho, eta, gamma, eps))
    return lval + (2 / 2 + kl + math.log(1 / delta)) / eta + eta / (2 * n)


def local_minima(z):
    """Grid indices lower than their 8 neighbours (interior points)."""
    inner = z[1:-1, 1:-1]
    is_min = np.ones_like(inner, bool)
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            if di or dj:
                is_min &= inner < z[1 + di:z.shape[0] - 1 + di, 1 + dj:z.shape[1] - 1 + dj]
    return [(i + 1, j + 1) for i, j in zip(*np.nonzero(is_min))]


def analyse(config, grid: int = 121):
    x, y = make_data(config["data_seed"])
    args = (x, y, config["c12"], config["c21"], config["scale"])

    def f(a, b):
        return loss(a, b, *args)

    axis = np.linspace(-config["span"], config["span"], grid)
    W1, W2 = np.meshgrid(axis, axis, indexing="ij")
    L, H11, H22, RHO = curvature(f, W1, W2)
    PSI = psi(W1, W2, H11, H22, RHO)
    minima = sorted(local_minima(L), key=lambda ij: L[ij])
    info = [{"w1": float(W1[m]), "w2": float(W2[m]), "loss": float(L[m]), "psi": float(PSI[m]),
             "hessian_trace": float(H11[m] + H22[m])} for m in minima]
    return {"x": x, "y": y, "axis": axis, "W1": W1, "W2": W2, "L": L, "H11": H11, "H22": H22,
            "RHO": RHO, "PSI": PSI, "minima": info, "f": f}


def pick_minima(info):
    """The global minimum and the lowest-loss local minimum that is flatter than it."""
    if len(info) < 2:
        return None
    sharp = info[0]
    flat = [m for m in info[1:] if m["hessian_trace"] < sharp["hessian_trace"]]
    return (sharp, flat[0]) if flat else None


def perturbed_landscape(res, eta, samples=32, seed=0):
    rng = np.random.default_rng(seed)
    W1, W2 = res["W1"], res["W2"]
    s1 = sigma_star(W1, res["H11"], res["RHO"], eta)
    s2 = sigma_star(W2, res["H22"], res["RHO"], eta)
    total = np.zeros_like(W1)
    for _ in range(samples):
        u1 = rng.uniform(-1, 1, W1.shape) * s1
        u2 = rng.uniform(-1, 1, W2.shape) * s2
        total += res["f"](W1 + u1, W2 + u2)
    return total / samples


def expected_loss_at(res, w1, w2, eta, samples=4000, seed=0):
    rng = np.random.default_rng(seed)
    _, h11, h22, rho = curvature(res["f"], np.array(w1), np.array(w2))
    s1, s2 = sigma_star(np.array(w1), h11, rho, eta), sigma_star(np.array(w2), h22, rho, eta)
    u1, u2 = rng.uniform(-1, 1, samples) * s1, rng.uniform(-1, 1, samples) * s2
    return float(np.mean(res["f"](w1 + u1, w2 + u2)))


def search(seeds=range(6), scales=(20.0, 60.0),
           couplings=((2.0, -2.0), (0.0, 0.0), (3.0, 1.0), (-2.0, 2.0), (1.0, 1.0))):
    """Find a configuration with a sharp global minimum (higher ψ) and a flat local one that
    becomes the lower one under enough perturbation."""
    for seed in seeds:
        for scale in scales:
            for c12, c21 in couplings:
                config = {"data_seed": seed, "c12": c12, "c21": c21, "scale": scale, "span": 12.0}
                res = analyse(config, grid=61)
                pair = pick_minima(res["minima"])
                if pair is None:
                    continue
                sharp, flat = pair
                if sharp["psi"] <= flat["psi"] or flat["loss"] - sharp["loss"] < 1e-3:
                    continue
                e_sharp = expected_loss_at(res, sharp["w1"], sharp["w2"], 0.01, 500)
                e_flat = expected_loss_at(res, flat["w1"], flat["w2"], 0.01, 500)
                if e_flat < e_sharp:
                    return config, sharp, flat
    return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/toy")
    parser.add_argument("--grid", type=int, default=121)
    parser.add_argument("--search", action="store_true", help="search constants instead of CONFIG")
    args = parser.parse_args(argv)
    config = CONFIG
    if args.search:
        found = search()
        if found is None:
            raise SystemExit("no configuration found")
        config = found[0]
        print("found", config)
    res = analyse(config, args.grid)
    pair = pick_minima(res["minima"])
    if pair is None:
        raise SystemExit(f"CONFIG {config} does not give two minima; run with --search")
    sharp, flat = pair
    etas = (1000.0, 0.1, 0.01, 1e-5)
    expected = {str(eta): {"sharp": expected_loss_at(res, sharp["w1"], sharp["w2"], eta),
                           "flat": expected_loss_at(res, flat["w1"], flat["w2"], eta)} for eta in etas}
    os.makedirs(args.out, exist_ok=True)
    plot_fig1(res, sharp, flat, config, os.path.join(args.out, "fig1_landscape.png"))
    plot_fig2(res, sharp, flat, etas, os.path.join(args.out, "fig2_perturbed.png"))
    summary = {"config": config, "sharp_minimum": sharp, "flat_minimum": flat,
               "expected_loss_under_sigma_star": expected,
               "bound_eq11_eta39": {"sharp": float(bound_eq11(sharp["loss"], *(np.array(v) for v in
                                                     (sharp["w1"], sharp["w2"])), *_curv_at(res, sharp))),
                                    "flat": float(bound_eq11(flat["loss"], *(np.array(v) for v in
                                                    (flat["w1"], flat["w2"])), *_curv_at(res, flat)))}}
    with open(os.path.join(args.out, "toy.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps(summary, indent=2))
    return summary


def _curv_at(res, m):
    _, h11, h22, rho = curvature(res["f"], np.array(m["w1"]), np.array(m["w2"]))
    return h11, h22, rho


def plot_fig1(res, sharp, flat, config, path):
    from matplotlib import colormaps

    fig = reporting.figure(15, 4.8)
    ax = fig.add_subplot(1, 3, 1, projection="3d")
    W1, W2, L, PSI = res["W1"], res["W2"], res["L"], res["PSI"]
    colors = colormaps["viridis"]((PSI - PSI.min()) / (np.ptp(PSI) + 1e-12))
    ax.plot_surface(W1, W2, L, facecolors=colors, rstride=2, cstride=2, linewidth=0, antialiased=False)
    bound = bound_eq11(L, W1, W2, res["H11"], res["H22"], res["RHO"])
    floor = L.min() - 0.5 * np.ptp(L)
    ax.contourf(W1, W2, bound, zdir="z", offset=floor, cmap="coolwarm", alpha=0.7)
    for m, c in ((sharp, "red"), (flat, "white")):
        ax.scatter([m["w1"]], [m["w2"]], [m["loss"]], color=c, s=40)
    ax.set_zlim(floor, L.max())
    ax.set_xlabel("w1")
    ax.set_ylabel("w2")
    ax.set_title("loss (colour: ψ; floor: eq. 11 bound, η = 39)")
    x, y = res["x"], res["y"]
    gx, gy = np.meshgrid(np.linspace(x[:, 0].min() - 1, x[:, 0].max() + 1, 150),
                         np.linspace(x[:, 1].min() - 1, x[:, 1].max() + 1, 150))
    grid = np.stack([gx.ravel(), gy.ravel()], 1)
    for k, (m, name) in enumerate(((sharp, "sharp (global) minimum"), (flat, "flat (local) minimum"))):
        axk = fig.add_subplot(1, 3, 2 + k)
        logits = _logits(m["w1"], m["w2"], grid, config)
        axk.contourf(gx, gy, (logits > 0).reshape(gx.shape), alpha=0.3, cmap="coolwarm")
        axk.scatter(x[:, 0], x[:, 1], c=y, cmap="coolwarm", edgecolors="k", s=15)
        axk.set_title(f"{name}: loss {m['loss']:.3f}, ψ {m['psi']:.2f}")
    reporting.save_figure(fig, path)


def _logits(w1, w2, points, config):
    h0, h1 = points[:, 0], points[:, 1]
    for _ in range(5):
        h0, h1 = (1 / (1 + np.exp(-(w1 * h0 + config["c12"] * h1))),
                  1 / (1 + np.exp(-(config["c21"] * h0 + w2 * h1))))
    return config["scale"] * (h0 - h1)


def plot_fig2(res, sharp, flat, etas, path):
    fig = reporting.figure(4 * len(etas), 3.6)
    axes = fig.subplots(1, len(etas), squeeze=False)[0]
    for ax, eta in zip(axes, etas):
        z = perturbed_landscape(res, eta)
        cs = ax.contourf(res["W1"], res["W2"], z, levels=30, cmap="viridis")
        fig.colorbar(cs, ax=ax)
        ax.plot(sharp["w1"], sharp["w2"], "r*", ms=10)
        ax.plot(flat["w1"], flat["w2"], "w*", ms=10)
        ax.set_title(f"E_u L(w+u), η = {eta:g}")
        ax.set_xlabel("w1")
    axes[0].set_ylabel("w2")
    reporting.save_figure(fig, path)


if __name__ == "__main__":
    main()
