"""The test of whether a rate differs across groups (a permutation test over patients) and Holm's adjustment,
checked against scipy's exact tests where they answer the same question."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import chi2_contingency, fisher_exact

from pneumoscan.core.metrics.differences import holm, rate_difference


def test_one_film_a_patient_gives_fishers_exact_p() -> None:
    """With one film a patient and two groups of six, every assignment is counted: the p-value is Fisher's exact
    two-sided one (equal groups order the tables alike), 6 of 6 against 1 of 6 hits."""
    hits = np.array([True] * 6 + [True] + [False] * 5)
    groups = np.array(["A"] * 6 + ["B"] * 6)
    assert rate_difference(hits, groups, np.arange(12)) == pytest.approx(fisher_exact([[6, 0], [1, 5]]).pvalue)


def test_a_group_of_one_patient_is_tested_too() -> None:
    """A group of a single patient (a site of one child) is compared with the rest, every order of 7 patients
    counted: Fisher's exact p of 5 of 6 against 0 of 1; of more patients, about Fisher's p."""
    hits = np.array([True, True, True, True, False, True, False])
    assert rate_difference(hits, np.array(list("AAAAAAB")), np.arange(7)) == pytest.approx(
        fisher_exact([[5, 1], [0, 1]]).pvalue)
    # 80 patients, one of them a group of its own: 9,999 orders drawn, about Fisher's p (its Monte Carlo error 0.005)
    hits = np.array([True] * 60 + [False] * 19 + [False])
    assert rate_difference(hits, np.array(["A"] * 79 + ["B"]), np.arange(80)) == pytest.approx(
        fisher_exact([[60, 19], [0, 1]]).pvalue, abs=0.015)


def test_a_patients_films_count_once_not_as_independent_cases() -> None:
    """Each patient filmed twice, both films called alike: the evidence is that of the patients, and the p-value
    is the one film a patient gives, where Fisher's test over the films (each taken as a case) gives one 200 times
    smaller."""
    hits = np.array([True] * 6 + [True] + [False] * 5)
    groups = np.array(["A"] * 6 + ["B"] * 6)
    once = rate_difference(hits, groups, np.arange(12))
    twice = rate_difference(np.repeat(hits, 2), np.repeat(groups, 2), np.repeat(np.arange(12), 2))
    assert twice == pytest.approx(once)
    assert fisher_exact([[12, 0], [2, 10]]).pvalue < once / 200


def test_many_patients_in_three_groups_agree_with_the_chi_square() -> None:
    """300 patients in 3 groups (too many assignments to count: 9,999 drawn) give about the chi-square's p, the
    approximation that holds for large groups; the same p run after run."""
    rng = np.random.default_rng(1)
    groups = rng.integers(0, 3, 300)
    hits = rng.random(300) < np.array([0.7, 0.6, 0.8])[groups]
    table = [[(hits & (groups == g)).sum(), (~hits & (groups == g)).sum()] for g in range(3)]
    p = rate_difference(hits, groups, np.arange(300))
    assert p == pytest.approx(chi2_contingency(table, correction=False).pvalue, abs=0.005)
    assert rate_difference(hits, groups, np.arange(300)) == p


def test_a_patient_in_two_groups_is_refused() -> None:
    """A patient whose films are in two groups cannot be shuffled as one: the groups are not apart."""
    with pytest.raises(ValueError, match="a patient's films are in several groups"):
        rate_difference(np.array([True, False, True, False]), np.array(["A", "B", "B", "B"]), np.array([1, 1, 2, 3]))


def test_holm_steps_down_from_the_smallest_p() -> None:
    """Holm's adjustment by hand: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 (0.02, 0.03, 0.06, 0.04), each at
    least the one before (0.04 -> 0.06), back in the order given; never above 1."""
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == [1.0, 1.0]
    assert holm([]) == []
