"""How well a measure ranks generalization gaps, as Jiang et al. 2020 ("Fantastic Generalization
Measures and Where to Find Them", § 4) and the PGDL competition score it: Kendall's τ (eq. 2),
the granulated Ψ (eqs. 4-5) and the conditional mutual information (§ 4, eqs. 6-8).

`rows` are dicts, one per network, holding its hyperparameters, the measure and the gap (Jiang
et al. and PGDL: the 0-1 error gap, test error − training error).
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from keras_pacgen import _validation as check

TAU_VARIANTS = ("jiang", "b")


def _signs(values: np.ndarray) -> np.ndarray:
    """sign(v_i − v_j) for all pairs i < j."""
    upper = np.triu_indices(len(values), k=1)
    return np.sign(values[:, None] - values[None, :])[upper]


def kendall_tau(values: Sequence[float], gaps: Sequence[float], *, variant: str = "jiang") -> float:
    """Kendall's rank correlation between a measure's `values` and the generalization `gaps`: +1
    when the measure orders the networks exactly as their gaps, −1 when exactly reversed.

    ``variant="jiang"`` (the default) is Jiang et al.'s eq. 2, Kendall's τ_a::

        τ = Σ_{i≠j} sign(μ_i − μ_j) sign(g_i − g_j) / (n (n − 1))

    a pair tied in either sequence counts 0 (a constant measure has τ = 0). ``variant="b"`` is
    τ_b, (C − D) / sqrt((P − T_x)(P − T_y)), as `scipy.stats.kendalltau` (NaN when either sequence
    is constant). NaN for fewer than two networks.
    """
    check.check_choice("variant", variant, TAU_VARIANTS)
    x, y = np.asarray(values, np.float64), np.asarray(gaps, np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"`values` and `gaps` must be two sequences of one length; got shapes "
                         f"{x.shape} and {y.shape}.")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("`values` and `gaps` must be finite (a measure that overflowed or a "
                         "network that diverged has no rank).")
    dx, dy = _signs(x), _signs(y)
    if len(dx) == 0:
        return math.nan
    if variant == "jiang":
        return float(np.sum(dx * dy) / len(dx))
    denominator = math.sqrt(float(np.count_nonzero(dx)) * float(np.count_nonzero(dy)))
    return float(np.sum(dx * dy) / denominator) if denominator else math.nan


def per_hyperparameter_kendall(rows: Sequence[dict], measure: str, hyperparameters: Sequence[str],
                               *, gap: str = "gap", fixed: Sequence[str] = ("seed",),
                               variant: str = "jiang") -> dict:
    """ψ_h for each hyperparameter h (Jiang et al. eq. 4): the mean, over the groups of `rows` in
    which every other hyperparameter (and every column of `fixed`) is the same and h takes at
    least two values, of Kendall's τ between `measure` and `gap` within the group. NaN for a
    hyperparameter with no such group."""
    result = {}
    for h in hyperparameters:
        others = [k for k in (*hyperparameters, *fixed) if k != h and k in rows[0]]
        groups = defaultdict(list)
        for row in rows:
            groups[tuple(row[k] for k in others)].append(row)
        taus = [kendall_tau([r[measure] for r in g], [r[gap] for r in g], variant=variant)
                for g in groups.values() if len({r[h] for r in g}) > 1]
        taus = [t for t in taus if not math.isnan(t)]
        result[h] = float(np.mean(taus)) if taus else math.nan
    return result


def granulated_kendall(rows: Sequence[dict], measure: str, hyperparameters: Sequence[str], *,
                       gap: str = "gap", fixed: Sequence[str] = ("seed",),
                       variant: str = "jiang") -> float:
    """Jiang et al.'s granulated Kendall coefficient Ψ (eq. 5): the mean over the
    hyperparameters of `per_hyperparameter_kendall` (those with no group left out).

    Args:
        rows: one dict per network, holding its hyperparameters, `measure` and `gap`.
        measure: the key of the measure in each row.
        hyperparameters: the keys of the varied hyperparameters.
        gap: the key of the generalization gap.
        fixed: further keys that must agree within a group (by default the seed, so that a group
            holds networks that differ in one hyperparameter only).
        variant: Kendall's τ of the groups (see `kendall_tau`).
    """
    per = per_hyperparameter_kendall(rows, measure, hyperparameters, gap=gap, fixed=fixed,
                                     variant=variant)
    defined = [t for t in per.values() if not math.isnan(t)]
    return float(np.mean(defined)) if defined else math.nan


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-np.sum(p * np.log2(p)))


def _mutual_information(table: np.ndarray) -> float:
    """I(A; B) in bits of the joint counts `table` (rows: A, columns: B)."""
    joint = table / table.sum()
    outer = np.outer(joint.sum(axis=1), joint.sum(axis=0))
    nonzero = joint > 0
    return float(np.sum(joint[nonzero] * np.log2(joint[nonzero] / outer[nonzero])))


def mutual_information_by_set(rows: Sequence[dict], measure: str, hyperparameters: Sequence[str], *,
                              gap: str = "gap", max_set_size: int = 2) -> dict[tuple, float]:
    """Î(V_μ, V_g | U_S) for every set S of at most `max_set_size` hyperparameters (Jiang et al.
    § 4): over all ordered pairs (θ, θ′) of distinct networks, V_μ = sign(μ(θ) − μ(θ′)),
    V_g = sign(g(θ) − g(θ′)) (ties are a third value, 0), U_S the values of S in both networks;

        Î = I(V_μ, V_g | U_S) / H(V_g | U_S),   I(·|U_S) = Σ_u p(u) I(·|U_S = u)

    with p(u) the share of pairs in cell u. A set whose H(V_g | U_S) is 0 (the hyperparameters
    alone order every pair's gap) is left out. Values in [0, 1]; larger is better."""
    check.check_int("max_set_size", max_set_size, low=0)
    mu = np.array([r[measure] for r in rows], np.float64)
    g = np.array([r[gap] for r in rows], np.float64)
    if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(g))):
        raise ValueError(f"`{measure}` and `{gap}` must be finite in every row.")
    i, j = np.where(~np.eye(len(rows), dtype=bool))
    v_mu = np.sign(mu[i] - mu[j]).astype(int) + 1
    v_g = np.sign(g[i] - g[j]).astype(int) + 1
    codes = {h: np.unique([repr(r[h]) for r in rows], return_inverse=True)[1] for h in hyperparameters}
    result = {}
    for size in range(min(max_set_size, len(hyperparameters)) + 1):
        for subset in itertools.combinations(hyperparameters, size):
            keys = np.stack([c for h in subset for c in (codes[h][i], codes[h][j])] or
                            [np.zeros_like(i)], axis=1)
            cell = np.unique(keys, axis=0, return_inverse=True)[1].reshape(-1)
            tables = np.zeros((cell.max() + 1, 3, 3))
            np.add.at(tables, (cell, v_g, v_mu), 1)
            shares = tables.sum(axis=(1, 2)) / len(i)
            information = sum(p * _mutual_information(t) for p, t in zip(shares, tables))
            entropy = sum(p * _entropy(t.sum(axis=1)) for p, t in zip(shares, tables))
            if entropy > 0:
                result[subset] = information / entropy
    return result


def conditional_mutual_information(rows: Sequence[dict], measure: str,
                                   hyperparameters: Sequence[str], *, gap: str = "gap",
                                   max_set_size: int = 2) -> float:
    """Jiang et al.'s CMI score of a measure, K(μ) = min_S Î(V_μ, V_g | U_S) over the sets S of
    at most `max_set_size` hyperparameters (see `mutual_information_by_set`): the information
    the measure carries about the gap's ordering beyond what any such set of hyperparameters
    explains. PGDL scores a task the same way, with the minimum over pairs of hyperparameters
    (cadurosar/pgdl, ``scoring_program/mutual_information.py``, which also averages the cells
    uniformly, counts each network paired with itself and a tie as "−": on its complete grids of
    distinct values the same ordering). NaN when no set has an uncertain gap."""
    values = mutual_information_by_set(rows, measure, hyperparameters, gap=gap,
                                       max_set_size=max_set_size)
    return min(values.values()) if values else math.nan
