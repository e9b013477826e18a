"""Kendall's τ, the granulated Ψ and the conditional mutual information, computed by hand."""

import math

import numpy as np
import pytest
from scipy import stats

from keras_pacgen import measures


def test_kendall_tau_is_jiang_et_al_s_eq_2_with_tau_b_as_an_option():
    # (1, 2, 3, 3) against (1, 2, 3, 4): five concordant pairs, one tie, no discordant pair
    assert measures.kendall_tau([1, 2, 3, 3], [1, 2, 3, 4]) == pytest.approx(5 / 6)
    assert measures.kendall_tau([1, 2, 3, 3], [1, 2, 3, 4], variant="b") == pytest.approx(5 / math.sqrt(30))
    assert measures.kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    assert measures.kendall_tau([1, 2, 3], [3, 2, 1]) == -1.0
    assert measures.kendall_tau([1, 1, 1], [1, 2, 3]) == 0.0  # a constant measure: no information
    assert math.isnan(measures.kendall_tau([1, 1, 1], [1, 2, 3], variant="b"))
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = rng.integers(0, 5, size=15), rng.normal(size=15).round(1)  # with ties
        assert measures.kendall_tau(a, b, variant="b") == pytest.approx(stats.kendalltau(a, b).statistic)
        n = len(a)
        by_hand = sum(np.sign(a[i] - a[j]) * np.sign(b[i] - b[j]) for i in range(n) for j in range(n)
                      if i != j) / (n * (n - 1))
        assert measures.kendall_tau(a, b) == pytest.approx(by_hand)
    with pytest.raises(ValueError, match="finite"):
        measures.kendall_tau([1.0, math.inf], [1.0, 2.0])
    with pytest.raises(ValueError, match="variant"):
        measures.kendall_tau([1, 2], [1, 2], variant="c")


def _grid(gap, m):
    return [{"a": a, "b": b, "seed": 0, "gap": gap[a, b], "m": m[a, b]} for a in (0, 1) for b in (0, 1, 2)]


def test_granulated_kendall_by_hand():
    """Two hyperparameters a ∈ {0, 1}, b ∈ {0, 1, 2}, one seed.

    a varies (b fixed): b = 0: gap 1→2, m 1→5; b = 1: 2→3, 2→4; b = 2: 3→1, 3→0.5: τ = +1 in all
    three groups. b varies (a fixed): a = 0: gap (1, 2, 3), m (1, 2, 3): τ = +1; a = 1: gap
    (2, 3, 1), m (5, 4, 0.5): pairs (b0, b1) discordant, (b0, b2) and (b1, b2) concordant, τ = 1/3.
    So τ_a = 1, τ_b = 2/3 and Ψ = 5/6.
    """
    gap = {(0, 0): 1, (0, 1): 2, (0, 2): 3, (1, 0): 2, (1, 1): 3, (1, 2): 1}
    m = {(0, 0): 1, (0, 1): 2, (0, 2): 3, (1, 0): 5, (1, 1): 4, (1, 2): 0.5}
    rows = _grid(gap, m)
    per = measures.per_hyperparameter_kendall(rows, "m", ["a", "b"])
    assert per == pytest.approx({"a": 1.0, "b": 2 / 3})
    assert measures.granulated_kendall(rows, "m", ["a", "b"]) == pytest.approx(5 / 6)
    # networks of another seed are never in the same group: here they rank the gap backwards
    more = rows + [{**r, "seed": 1, "m": -r["m"]} for r in rows]
    assert measures.per_hyperparameter_kendall(more, "m", ["a", "b"])["a"] == pytest.approx(0.0)


def test_a_measure_constant_along_one_hyperparameter_gets_psi_one_half():
    """m follows the gap along b exactly and is the same for both values of a: τ_a = 0 in every
    group (Jiang et al. count its ties as 0), τ_b = 1, so Ψ = 0.5 (τ_b would drop a: Ψ = 1)."""
    gap = {(a, b): 1 + b + 0.5 * a for a in (0, 1) for b in (0, 1, 2)}
    m = {(a, b): 10 * b for a in (0, 1) for b in (0, 1, 2)}
    rows = _grid(gap, m)
    assert measures.granulated_kendall(rows, "m", ["a", "b"]) == pytest.approx(0.5)
    assert measures.granulated_kendall(rows, "m", ["a", "b"], variant="b") == pytest.approx(1.0)


def test_conditional_mutual_information_by_hand():
    """Four networks, h ∈ {0, 0, 1, 1}, gaps 1, 2, 3, 4, measure 1, 2, 4, 3.

    No conditioning: of the 12 ordered pairs 10 are concordant, 2 discordant: p(+,+) = p(−,−) =
    5/12, p(+,−) = p(−,+) = 1/12, H(V_g) = 1, so Î = (5/6) log₂(5/3) − (1/6) log₂ 3 = 0.34998.
    Given h of both networks: cells (0,0) and (1,1) hold 2 pairs each, perfectly (anti)aligned:
    1 bit of information and 1 bit of gap entropy; cells (0,1) and (1,0), 4 pairs each, have one
    gap sign (entropy 0). I = H = 4/12, Î = 1. The score is the minimum, 0.34998.
    """
    rows = [{"h": h, "gap": g, "m": m} for h, g, m in ((0, 1, 1), (0, 2, 2), (1, 3, 4), (1, 4, 3))]
    by_set = measures.mutual_information_by_set(rows, "m", ["h"])
    unconditioned = 5 / 6 * math.log2(5 / 3) - 1 / 6 * math.log2(3)
    assert by_set == pytest.approx({(): unconditioned, ("h",): 1.0})
    assert measures.conditional_mutual_information(rows, "m", ["h"]) == pytest.approx(unconditioned)
    # a measure that is the gap carries all of it; a constant one none
    exact = [{**r, "m": r["gap"]} for r in rows]
    assert measures.conditional_mutual_information(exact, "m", ["h"]) == pytest.approx(1.0)
    constant = [{**r, "m": 7.0} for r in rows]
    assert measures.conditional_mutual_information(constant, "m", ["h"]) == pytest.approx(0.0)


def test_conditional_mutual_information_conditions_on_pairs_of_hyperparameters():
    """When two hyperparameters together decide the gap's order, conditioning on both leaves a
    measure that only follows them nothing to add; the minimum over sets of up to two finds it."""
    rng = np.random.default_rng(0)
    rows = []
    for a in (0, 1, 2):
        for b in (0, 1, 2):
            for seed in range(3):
                gap = a + 3 * b + 0.1 * rng.normal()
                rows.append({"a": a, "b": b, "seed": seed, "gap": gap, "follows": a + 3 * b,
                             "noise": rng.normal()})
    sets = measures.mutual_information_by_set(rows, "follows", ["a", "b"])
    assert set(sets) == {(), ("a",), ("b",), ("a", "b")}
    assert sets[()] > 0.5 and sets[("a", "b")] == pytest.approx(0.0)
    assert measures.conditional_mutual_information(rows, "follows", ["a", "b"], max_set_size=1) > 0.3
    assert measures.conditional_mutual_information(rows, "noise", ["a", "b"]) < 0.1
