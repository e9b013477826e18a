"""The measures study's figures, drawn from its recorded trials."""

from __future__ import annotations

import math

import numpy as np

from keras_pacgen import reporting


def _finite(x) -> float:
    return x if isinstance(x, (int, float)) and math.isfinite(x) else -math.inf


def measures_vs_gap(rows, ranking, path) -> None:
    """ψ and the measure with the best CMI against the 0-1 error gap, a point a network,
    coloured by the hyperparameter moved."""
    from matplotlib import colormaps

    names = [d for d, entry in ranking.items() if entry["converged"]]
    if not names:
        return
    fig = reporting.figure(11, 4.2 * len(names))
    axes = fig.subplots(len(names), 2, squeeze=False)
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    colours = dict(zip(arms, colormaps["tab10"].colors))
    for row_axes, d in zip(axes, names):
        converged = [r for r in rows if r["dataset"] == d and r.get("converged")]
        scored = ranking[d]["measures"]
        best = max(scored, key=lambda n: _finite(scored[n]["error_gap"]["cmi"]))
        for ax, name in zip(row_axes, ("pacgen", best)):
            for arm in arms:
                sel = [r for r in converged if r["arm"] == arm]
                if sel:
                    ax.scatter([r[name] for r in sel], [r["error_gap"] for r in sel], s=18,
                               color=colours[arm], label=arm)
            m = scored[name]["error_gap"]
            ax.set_title(f"{d}: {name} (τ {m['tau']:+.2f}, Ψ {m['psi']:+.2f}, CMI {m['cmi']:.3f})",
                         fontsize=9)
            ax.set_xlabel(name)
            ax.set_ylabel("gap (test − train 0-1 error)")
            if all(r[name] > 0 for r in converged) and max(r[name] for r in converged) > 100 * min(
                    r[name] for r in converged):
                ax.set_xscale("log")
        row_axes[0].legend(fontsize=7, title="varied", title_fontsize=7)
    reporting.save_figure(fig, path)


def sweep_curves(points, spec, path) -> None:
    """Clean cross-entropy gap and ψ against steps along the centre-0 batch-size and learning-rate
    sweeps."""
    from matplotlib import colormaps

    centre = spec["centres"][0]
    sweeps = [h for h in ("batch_size", "learning_rate") if h in spec["hyperparameters"]]
    names = [d for d in spec["datasets"] if any(p["dataset"] == d for p in points)]
    fig = reporting.figure(5 * 2 * len(sweeps), 3.6 * len(names))
    axes = fig.subplots(len(names), 2 * len(sweeps), squeeze=False)
    for row_axes, d in zip(axes, names):
        for s, sweep in enumerate(sweeps):
            values = spec["hyperparameters"][sweep]
            for q, quantity in enumerate(("gap", "psi")):
                ax = row_axes[2 * s + q]
                for value, colour in zip(values, colormaps["viridis"](np.linspace(0, 0.9, len(values)))):
                    hyper = {**centre, sweep: value}
                    runs = {}
                    for p in points:
                        if p["dataset"] == d and all(p[h] == hyper[h] for h in hyper):
                            runs.setdefault(p["seed"], []).append(p)
                    for seed, run in sorted(runs.items()):
                        ax.plot([p["step"] for p in run], [p[quantity] for p in run], color=colour,
                                lw=1, label=f"{sweep} = {value}" if seed == min(runs) else None)
                ax.set_title(f"{d}: {'cross-entropy gap' if quantity == 'gap' else 'ψ'}, {sweep} varied")
                ax.set_xlabel("step")
                ax.set_xscale("log")
                ax.legend(fontsize=7)
    reporting.save_figure(fig, path)
