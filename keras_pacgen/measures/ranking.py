"""How well a measure ranks generalization gaps: Kendall's τ and Jiang et al.'s granulated Ψ."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

import numpy as np


def kendall_tau(values: Sequence[float], gaps: Sequence[float]) -> float:
    """Kendall's rank correlation τ_b between a measure's `values` and the generalization `gaps`
    (Kendall 1945; the statistic of Jiang et al. 2020, eq. 2): +1 when the measure orders the
    networks exactly as their gaps, −1 when exactly reversed::

        τ_b = (C − D) / sqrt((P − T_x)(P − T_y))

    over the P = n(n−1)/2 pairs: C concordant, D discordant, T_x and T_y tied in one of the two.
    NaN when either sequence is constant or has fewer than two entries (the same as
    `scipy.stats.kendalltau`).
    """
    x, y = np.asarray(values, np.float64), np.asarray(gaps, np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"`values` and `gaps` must be two sequences of one length; got shapes "
                         f"{x.shape} and {y.shape}.")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("`values` and `gaps` must be finite.")
    upper = np.triu_indices(len(x), k=1)
    dx = np.sign(x[:, None] - x[None, :])[upper]
    dy = np.sign(y[:, None] - y[None, :])[upper]
    pairs = len(dx)
    denominator = math.sqrt(float(np.count_nonzero(dx)) * float(np.count_nonzero(dy)))
    return float(np.sum(dx * dy) / denominator) if pairs and denominator else math.nan


def per_hyperparameter_kendall(rows: Sequence[dict], measure: str, hyperparameters: Sequence[str],
                               *, gap: str = "gap", fixed: Sequence[str] = ("seed",)) -> dict:
    """For each hyperparameter h: the mean, over the groups of `rows` in which every other
    hyperparameter (and every column in `fixed`) is the same, of Kendall's τ between `measure`
    and `gap` within the group (Jiang et al. 2020, eq. 4). Groups of fewer than two rows, or
    where τ is undefined, are left out; a hyperparameter with no group left gets NaN."""
    result = {}
    for h in hyperparameters:
        others = [k for k in (*hyperparameters, *fixed) if k != h and k in rows[0]]
        groups = defaultdict(list)
        for row in rows:
            groups[tuple(row[k] for k in others)].append(row)
        taus = [kendall_tau([r[measure] for r in g], [r[gap] for r in g]) for g in groups.values()
                if len({r[h] for r in g}) > 1]
        taus = [t for t in taus if not math.isnan(t)]
        result[h] = float(np.mean(taus)) if taus else math.nan
    return result


def granulated_kendall(rows: Sequence[dict], measure: str, hyperparameters: Sequence[str], *,
                       gap: str = "gap", fixed: Sequence[str] = ("seed",)) -> float:
    """Jiang et al.'s granulated Kendall coefficient Ψ (2020, eq. 5): the mean over the
    hyperparameters of `per_hyperparameter_kendall` (those with no defined τ left out).

    Args:
        rows: one dict per network, holding its hyperparameters, `measure` and `gap`.
        measure: the key of the measure in each row.
        hyperparameters: the keys of the varied hyperparameters.
        gap: the key of the generalization gap.
        fixed: further keys that must agree within a group (by default the seed, so that a group
            holds networks that differ in one hyperparameter only).
    """
    per = per_hyperparameter_kendall(rows, measure, hyperparameters, gap=gap, fixed=fixed)
    defined = [t for t in per.values() if not math.isnan(t)]
    return float(np.mean(defined)) if defined else math.nan
