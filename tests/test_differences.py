"""The test of whether a rate differs across groups (a permutation test over patients) and Holm's adjustment,
checked against scipy's exact tests where they answer the same question."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import chi2_contingency, fisher_exact, norm, rankdata
from sklearn.metrics import roc_auc_score

from pneumoscan.core.metrics import net_benefit
from pneumoscan.core.metrics.differences import (BOOTSTRAP, DELONG, DRAWN, EXACT, NEWCOMBE, SCORE, auc_difference,
                                                  delong_difference, delong_groups, holm, net_benefit_differences,
                                                  paired_differences, paired_rate_ci, rate_difference)


def test_one_film_a_patient_gives_fishers_exact_p() -> None:
    """With one film a patient and two groups of six, every assignment is counted: the p-value is Fisher's exact
    two-sided one (equal groups order the tables alike), 6 of 6 against 1 of 6 hits."""
    hits = np.array([True] * 6 + [True] + [False] * 5)
    groups = np.array(["A"] * 6 + ["B"] * 6)
    assert rate_difference(hits, groups, np.arange(12)) == (pytest.approx(fisher_exact([[6, 0], [1, 5]]).pvalue),
                                                            EXACT)  # 924 assignments, each counted


def test_a_group_of_one_patient_is_tested_too() -> None:
    """A group of a single patient (a site of one child) is compared with the rest, every order of 7 patients
    counted: Fisher's exact p of 5 of 6 against 0 of 1; of more patients, about Fisher's p."""
    hits = np.array([True, True, True, True, False, True, False])
    assert rate_difference(hits, np.array(list("AAAAAAB")), np.arange(7)) == (pytest.approx(
        fisher_exact([[5, 1], [0, 1]]).pvalue), EXACT)
    # 80 patients, one of them a group of its own: 9,999 orders drawn, about Fisher's p (its Monte Carlo error 0.005)
    hits = np.array([True] * 60 + [False] * 19 + [False])
    assert rate_difference(hits, np.array(["A"] * 79 + ["B"]), np.arange(80)) == (pytest.approx(
        fisher_exact([[60, 19], [0, 1]]).pvalue, abs=0.015), DRAWN)


def test_a_patients_films_count_once_not_as_independent_cases() -> None:
    """Each patient filmed twice, both films called alike: the evidence is that of the patients, and the p-value
    is the one film a patient gives, where Fisher's test over the films (each taken as a case) gives one 200 times
    smaller."""
    hits = np.array([True] * 6 + [True] + [False] * 5)
    groups = np.array(["A"] * 6 + ["B"] * 6)
    once = rate_difference(hits, groups, np.arange(12))
    twice = rate_difference(np.repeat(hits, 2), np.repeat(groups, 2), np.repeat(np.arange(12), 2))
    assert twice.p == pytest.approx(once.p)
    assert fisher_exact([[12, 0], [2, 10]]).pvalue < once.p / 200


def test_many_patients_in_three_groups_agree_with_the_chi_square() -> None:
    """300 patients in 3 groups (too many assignments to count: 9,999 drawn) give about the chi-square's p, the
    approximation that holds for large groups; the same p run after run."""
    rng = np.random.default_rng(1)
    groups = rng.integers(0, 3, 300)
    hits = rng.random(300) < np.array([0.7, 0.6, 0.8])[groups]
    table = [[(hits & (groups == g)).sum(), (~hits & (groups == g)).sum()] for g in range(3)]
    p = rate_difference(hits, groups, np.arange(300))
    assert p == (pytest.approx(chi2_contingency(table, correction=False).pvalue, abs=0.005), DRAWN)
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


def _auc(positive: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by its definition: the share of positive-negative pairs scored in order, a tie counting half."""
    above = scores[positive][:, None] - scores[~positive][None, :]
    return float(np.mean((above > 0) + (above == 0) / 2))


def _every_shuffle_p(positive: np.ndarray, scores: np.ndarray, groups: np.ndarray, patients: np.ndarray) -> float:
    """AUC's permutation p by hand: every assignment of patients to groups that keeps each group's patients of each
    class (positive films only, negative only, both), each group's AUC by its pairs, their spread weighted by
    1 / (1 / positive patients + 1 / negative patients); the share at least as spread as the real groups."""
    from itertools import permutations, product

    units = np.unique(patients)
    unit_group = np.array([groups[patients == u][0] for u in units])
    unit_class = np.array([(positive[patients == u].any(), (~positive[patients == u]).any()) for u in units])
    strata = [np.flatnonzero((unit_class == c).all(axis=1)) for c in ((True, False), (False, True), (True, True))]
    k = groups.max() + 1
    sides = np.array([[unit_class[unit_group == g, side].sum() for g in range(k)] for side in (0, 1)])
    weight = 1 / (1 / sides).sum(axis=0)

    def spread(assigned: np.ndarray) -> float:
        film_group = assigned[np.searchsorted(units, patients)]
        auc = np.array([_auc(positive[film_group == g], scores[film_group == g]) for g in range(k)])
        return float((weight * (auc - (weight * auc).sum() / weight.sum()) ** 2).sum())

    observed, spreads = spread(unit_group), []
    for orders in product(*(set(permutations(unit_group[s].tolist())) for s in strata)):
        assigned = unit_group.copy()
        for stratum, order in zip(strata, orders):
            assigned[stratum] = order
        spreads.append(spread(assigned))
    return float(np.mean(np.array(spreads) >= observed - 1e-12))


def test_auc_difference_agrees_with_every_shuffle_counted_by_hand() -> None:
    """The vectorised AUCs and shuffles within each class give the p of every assignment counted, each AUC by its
    pairs (sklearn's, checked; fewer than 9,999 shuffles, each counted): three groups of tied scores and patients of
    two films; two groups with patients of a positive and a negative film."""
    patients = np.array([0, 0, 1, 2, 3, 3, 4, 5, 6, 7, 8, 9, 10, 11, 11])
    positive = np.array([True] * 8 + [False] * 7)
    groups = np.array([0, 0, 0, 1, 2, 2, 1, 2, 0, 0, 1, 1, 2, 2, 2])
    scores = np.array([0.9, 0.8, 0.7, 0.9, 0.4, 0.6, 0.6, 0.3, 0.2, 0.3, 0.1, 0.6, 0.5, 0.5, 0.3])
    exact = _every_shuffle_p(positive, scores, groups, patients)
    assert _auc(positive, scores) == pytest.approx(roc_auc_score(positive, scores))
    assert 0.02 < exact < 0.5
    assert auc_difference(positive, scores, groups, patients) == (pytest.approx(exact, rel=1e-12), EXACT)
    patients = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 10, 11, 11])
    positive = np.array([True] * 5 + [False] * 5 + [True, False, True, False])
    groups = np.array([0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 0, 0, 1, 1])
    scores = np.array([0.9, 0.8, 0.6, 0.5, 0.4, 0.3, 0.2, 0.6, 0.45, 0.3, 0.7, 0.5, 0.6, 0.5])
    exact = _every_shuffle_p(positive, scores, groups, patients)
    assert 0.02 < exact < 0.5
    assert auc_difference(positive, scores, groups, patients) == (pytest.approx(exact, rel=1e-12), EXACT)


def test_auc_difference_counts_every_shuffle_where_they_are_few() -> None:
    """3 positive and 3 negative patients (one filmed twice) in two groups: the shuffles that keep each group's
    patients of each class are 3 x 3, each counted, and p is their share at least as far apart, counted by hand: the
    first group ranks all its pairs right, the second all wrong, and only the real assignment is as far apart, p 1/9.
    9,999 drawn gave a p near it, never one of the 9 shares it can be. Where the shuffles are more than 9,999, they
    are drawn, p (1 + as far) / 10,000."""
    patients = np.array([0, 0, 1, 2, 3, 4, 5])
    positive = np.array([True, True, True, True, False, False, False])
    groups = np.array([0, 0, 0, 1, 0, 1, 1])
    scores = np.array([0.9, 0.8, 0.7, 0.2, 0.1, 0.6, 0.5])
    exact = _every_shuffle_p(positive, scores, groups, patients)
    assert exact == pytest.approx(1 / 9)
    assert auc_difference(positive, scores, groups, patients) == (pytest.approx(exact, rel=1e-12), EXACT)
    rng = np.random.default_rng(3)  # 40 patients of each class in two groups of 20: far more than 9,999 shuffles
    positive, groups = np.arange(80) % 2 == 0, np.arange(80) // 40
    drawn, method = auc_difference(positive, rng.random(80), groups, np.arange(80))
    assert (10_000 * drawn, method) == (pytest.approx(round(10_000 * drawn)), DRAWN)


def test_auc_difference_counts_a_patients_films_once() -> None:
    """Each patient filmed twice, both films scored alike: the evidence is the patients', so the p-value is the one
    film a patient gives; the same films taken as patients of their own would give a far smaller one."""
    rng = np.random.default_rng(2)
    positive = np.arange(80) % 2 == 0
    groups = np.arange(80) // 40
    scores = rng.random(80) + positive * np.where(groups == 0, 0.6, 0.15)
    once = auc_difference(positive, scores, groups, np.arange(80)).p
    twice = np.repeat(np.arange(80), 2)
    assert auc_difference(positive[twice], scores[twice], groups[twice], twice).p == pytest.approx(once)
    assert auc_difference(positive[twice], scores[twice], groups[twice], np.arange(160)).p < once / 5


def test_auc_difference_refuses_what_it_cannot_test() -> None:
    """A patient in two groups cannot be shuffled as one, and a group without both classes has no AUC."""
    with pytest.raises(ValueError, match="a patient's films are in several groups"):
        auc_difference(np.array([True, False, True, False]), np.arange(4.0), np.array([0, 1, 1, 0]),
                       np.array([0, 0, 1, 2]))
    with pytest.raises(ValueError, match="a group without both positive and negative films has no AUC"):
        auc_difference(np.array([True, False, True, True]), np.arange(4.0), np.array([0, 0, 1, 1]), np.arange(4))


def _every_swap_p(positive: np.ndarray, scores: np.ndarray, called: np.ndarray,
                  patients: np.ndarray) -> dict[str, float]:
    """The paired test's p of each figure with every swap of the two models' ranks and calls, patient by patient,
    counted: each AUC by sklearn from the swapped ranks, each rate by its films."""
    ranks = np.stack([rankdata(s) for s in scores])
    hits = called == positive
    units = np.unique(patients)

    def apart(swapped: np.ndarray) -> dict[str, float]:
        mixed = np.where(swapped, ranks[::-1], ranks)
        rates = np.where(swapped, hits[::-1], hits)
        return {"auc": abs(roc_auc_score(positive, mixed[1]) - roc_auc_score(positive, mixed[0])),
                "sensitivity": abs(rates[1][positive].mean() - rates[0][positive].mean()),
                "specificity": abs(rates[1][~positive].mean() - rates[0][~positive].mean())}

    observed = apart(np.zeros(positive.size, dtype=bool))
    swaps = [apart(np.isin(patients, units[np.array(bits, dtype=bool)]))
             for bits in np.ndindex(*(2,) * units.size)]
    return {name: float(np.mean([s[name] >= observed[name] - 1e-12 for s in swaps])) for name in observed}


def test_paired_differences_agree_with_every_swap_counted_by_hand() -> None:
    """On 8 patients (two with two films, one of them a positive and a negative film) every one of the 256 swaps
    is counted, so the p of each figure is the exact one: the second model's scores are on another scale (a tenth
    higher), which swapping ranks, not scores, leaves out of the test; the difference is the second's less the
    first's."""
    patients = np.array([0, 0, 1, 2, 3, 3, 4, 5, 6, 7])
    positive = np.array([1, 1, 0, 0, 1, 0, 1, 0, 0, 1], dtype=bool)
    first = np.array([0.2, 0.9, 0.5, 0.1, 0.6, 0.7, 0.3, 0.4, 0.8, 0.55])
    second = np.array([0.95, 0.9, 0.3, 0.2, 0.8, 0.5, 0.7, 0.35, 0.6, 0.75]) + 0.1
    called = np.stack([first >= 0.5, second >= 0.6])
    exact = _every_swap_p(positive, np.stack([first, second]), called, patients)
    found = paired_differences(positive, np.stack([first, second]), called, patients)
    assert {name: entry["p"] for name, entry in found.items()} == pytest.approx(exact)
    assert exact["auc"] < 0.2 and exact["sensitivity"] < 1  # not every swap is as far apart
    assert found["auc"]["difference"] == pytest.approx(roc_auc_score(positive, second) - roc_auc_score(positive, first))
    assert found["sensitivity"]["difference"] == pytest.approx(1.0 - 0.6)
    assert (found["auc"]["patients"], found["sensitivity"]["films"], found["specificity"]["patients"]) == (8, 5, 5)


def test_paired_differences_give_both_models_net_benefit_at_one_threshold_and_the_difference_without_a_test() -> None:
    """With a threshold probability pt, each model's net benefit calling positive the films it scores at least pt
    (net_benefit's of its scores at pt, as a decision curve compares them: one odds for a false positive), not at the
    second's own threshold; the second's less the first's with the patients' percentile interval, which a copy of the
    first model narrows to nothing; no p. Without a threshold, or with one of 0 (odds 0), there is none."""
    rng = np.random.default_rng(5)
    patients = np.repeat(np.arange(40), 2)
    positive = patients % 2 == 0
    scores = np.stack([rng.random(80) + positive * 0.4, rng.random(80) + positive * 0.6]).clip(0, 0.999)
    called = np.stack([scores[0] >= 0.5, scores[1] >= 0.6])  # the second model's own threshold is 0.6
    found = paired_differences(positive, scores, called, patients, threshold=0.5)["net_benefit"]
    first, second = (net_benefit(positive.astype(int), s, [0.5])["net_benefit"][0] for s in scores)
    assert second != net_benefit(positive.astype(int), scores[1], [0.6])["net_benefit"][0]
    assert (found["first"], found["second"]) == pytest.approx((first, second))
    assert found["difference"] == pytest.approx(second - first)
    assert found["ci"][0] < found["difference"] < found["ci"][1] and found["ci_method"] == "bootstrap"
    assert (found["p"], found["p_method"], found["films"], found["patients"]) == (None, None, 80, 40)
    same = paired_differences(positive, scores[[0, 0]], called[[0, 0]], patients, threshold=0.5)
    assert same["net_benefit"]["difference"] == 0 and same["net_benefit"]["differing_patients"] == 0
    assert same["net_benefit"]["ci"] is None  # every resample's 0 is no certainty of no difference
    assert "net_benefit" not in paired_differences(positive, scores, called, patients)
    assert "net_benefit" not in paired_differences(positive, scores, called, patients, threshold=0.0)


def test_net_benefit_differences_across_thresholds_agree_with_a_hand_worked_example() -> None:
    """Two models' net benefits on the same ten films of ten patients at each threshold probability pt, and the
    second's less the first's, by hand: at pt 0.5 (odds 1) the first calls films 0, 2, 4, 6 and 9 (3 true, 2 false
    positives: 3/10 - 2/10 = 0.1), the second films 0, 1, 4, 6 and 7 (4 true, 1 false: 0.3), a difference of 0.2; at
    pt 0.25 (odds 1/3) the first calls 4 true and 4 false positives (0.4 - 4/30), the second 5 and 2 (0.5 - 2/30), a
    difference of 2/30 + 0.1. Each pt's interval is the 2.5th and 97.5th percentiles of the difference over the
    paired test's resamples of patients, each film weighted by its patient's draws (the bootstrap's weights, film by
    film): at the reference's pt the interval compare_paired.csv gives, so one set of resamples makes both. The
    ten films are taken three times, as 30 patients: on the ten alone the models call differently the films of 3
    and 4 patients, too few for an interval."""
    from pneumoscan.core.metrics.differences import PAIRED_BOOTSTRAP
    from pneumoscan.core.metrics.intervals import BOOTSTRAP_SEED, _bootstrap_weights

    positive = np.array([1, 1, 0, 0, 1, 0, 1, 0, 1, 0], bool)
    scores = np.array([[0.9, 0.4, 0.6, 0.1, 0.8, 0.3, 0.55, 0.45, 0.2, 0.7],
                       [0.9, 0.7, 0.2, 0.1, 0.85, 0.35, 0.6, 0.5, 0.3, 0.2]])
    few = net_benefit_differences(positive, scores, np.arange(10), [0.25, 0.5])
    assert [(at["differing_patients"], at["ci"]) for at in few] == [(3, None), (4, None)]
    positive, scores = np.tile(positive, 3), np.tile(scores, 3)
    patients = np.arange(30)
    found = net_benefit_differences(positive, scores, patients, [0.25, 0.5])
    assert [at[key] for at in found for key in ("first", "second", "difference")] == pytest.approx(
        [0.4 - 4 / 30, 0.5 - 2 / 30, 0.1 + 2 / 30, 0.1, 0.3, 0.2])
    weights = _bootstrap_weights(positive, patients, PAIRED_BOOTSTRAP, BOOTSTRAP_SEED)
    for pt, at in zip((0.25, 0.5), found):
        called = scores >= pt
        drawn = [weights @ ((c & positive) - pt / (1 - pt) * (c & ~positive)) / weights.sum(axis=1) for c in called]
        assert at["ci"] == pytest.approx(np.percentile(drawn[1] - drawn[0], [2.5, 97.5]).tolist(), abs=1e-12)
        assert at["ci"][0] < at["difference"] < at["ci"][1]
        assert (at["p"], at["ci_method"], at["films"], at["patients"]) == (None, BOOTSTRAP, 30, 30)
    alone = paired_differences(positive, scores, scores >= 0.5, patients, threshold=0.5)["net_benefit"]
    assert alone == found[1] | {"ci": pytest.approx(found[1]["ci"], abs=1e-12)}
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        net_benefit_differences(positive, scores, patients, [0.5, 1.0])


def test_a_difference_from_films_both_models_call_alike_has_no_interval() -> None:
    """Where the two models call the same films at a pt (at 0.99 neither calls any; a copy of a model calls what it
    calls), every resample's net benefit difference is 0: no interval, not [0, 0], which would read as a certain
    "no difference"; nor where they call differently the films of 4 patients, whose few distinct resampled values
    the percentile interval covers too little. Sensitivity and specificity, made of the same calls, alike; where
    the calls differ for 5 patients or more each is given."""
    rng = np.random.default_rng(8)
    patients = np.repeat(np.arange(40), 2)
    positive = patients % 2 == 0
    scores = np.stack([rng.random(80) * 0.9, rng.random(80) * 0.9])  # none at 0.99
    scores[1, :8] = scores[0, :8] = 0.5  # the first four patients' films
    scores[1, 8:] = scores[0, 8:]  # alike elsewhere: calls at 0.5 differ for patients 0-3 only once moved
    scores[1, [0, 2, 4, 6]] = 0.95  # patients 0-3 each get a film the second calls at 0.6 and the first does not
    found = net_benefit_differences(positive, scores, patients, [0.6, 0.99])
    assert [(at["differing_patients"], at["ci"]) for at in found] == [(4, None), (0, None)]
    assert found[0]["difference"] != 0
    called = scores >= 0.6
    figures = paired_differences(positive, scores, called, patients, threshold=0.6)
    assert all(figures[name]["ci"] is None for name in ("sensitivity", "specificity", "net_benefit"))
    scores[1, 8:18] = 0.95  # five patients more, each with a film called apart
    found = net_benefit_differences(positive, scores, patients, [0.6])[0]
    assert found["differing_patients"] == 9 and found["ci"][0] < found["ci"][1]


def test_paired_differences_count_a_patients_films_once() -> None:
    """Each patient filmed twice, both films scored alike: the p and interval are the one film a patient gives;
    the same films taken as patients of their own give a smaller p and a narrower interval."""
    rng = np.random.default_rng(3)
    positive = np.arange(60) % 2 == 0
    first = rng.random(60) + positive * 0.5
    second = first + rng.normal(0, 0.25, 60) + positive * 0.1
    scores, called = np.stack([first, second]), np.stack([first > 0.65, second > 0.65])  # 5 and 6 patients apart
    once = paired_differences(positive, scores, called, np.arange(60))
    twice = np.repeat(np.arange(60), 2)
    again = paired_differences(positive[twice], scores[:, twice], called[:, twice], twice)
    apart = paired_differences(positive[twice], scores[:, twice], called[:, twice], np.arange(120))
    for name in ("auc", "sensitivity", "specificity"):
        assert again[name]["p"] == pytest.approx(once[name]["p"], abs=0.02)  # 9,999 random swaps each
        assert np.ptp(again[name]["ci"]) == pytest.approx(np.ptp(once[name]["ci"]), rel=0.15)
        assert np.ptp(apart[name]["ci"]) < np.ptp(again[name]["ci"]) * 0.85
    assert apart["auc"]["p"] < again["auc"]["p"]


def _delong_1988_covariance(positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong, DeLong and Clarke-Pearson (Biometrics 1988, 44:837-845), written from the paper, pair by pair: psi
    of each positive and negative film, each film's structural components V10 and V01, their covariance matrices
    S10 and S01 over the models; the models' AUCs and the covariance S10 / m + S01 / n of their estimates."""
    x, y = scores[:, positive], scores[:, ~positive]
    m, n = x.shape[1], y.shape[1]
    psi = (x[:, :, None] > y[:, None, :]) + 0.5 * (x[:, :, None] == y[:, None, :])  # (model, positive, negative)
    v10, v01 = psi.mean(axis=2), psi.mean(axis=1)
    auc = psi.mean(axis=(1, 2))
    s10 = (v10 - auc[:, None]) @ (v10 - auc[:, None]).T / (m - 1)
    s01 = (v01 - auc[:, None]) @ (v01 - auc[:, None]).T / (n - 1)
    return auc, s10 / m + s01 / n


def _delong_1988(positive: np.ndarray, scores: np.ndarray, contrast: np.ndarray) -> tuple[float, float]:
    """The contrast L of the AUCs with its variance L S L' (:func:`_delong_1988_covariance`)."""
    auc, covariance = _delong_1988_covariance(positive, scores)
    return float(contrast @ auc), float(contrast @ covariance @ contrast)


def _hanley_mcneil(theta: float, m: int, n: int) -> float:
    """The variance of an AUC of theta from m positive and n negative independent films, Hanley and McNeil's (1982)
    with both m - 1 and n - 1 replaced by (m + n) / 2 - 1 (Newcombe 2006)."""
    q1, q2, star = theta / (2 - theta), 2 * theta**2 / (1 + theta), (m + n) / 2 - 1
    return (theta * (1 - theta) + star * (q1 - theta**2) + star * (q2 - theta**2)) / (m * n)


def _delong_1988_p(positive: np.ndarray, scores: np.ndarray) -> float:
    """The two-sided p of DeLong's 1988 test of two models' AUCs (:func:`_delong_1988`)."""
    difference, variance = _delong_1988(positive, scores, np.array([-1.0, 1.0]))
    return float(2 * norm.sf(abs(difference) / np.sqrt(variance)))


def test_delong_with_one_film_a_patient_is_delongs_own() -> None:
    """One film a patient: the clustered test's p is DeLong's 1988 one computed pair by pair from the paper's
    formulas (ties among and across the models' scores included), and says it is DeLong's."""
    positive = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 1], dtype=bool)
    first = np.array([0.9, 0.8, 0.4, 0.7, 0.5, 0.3, 0.5, 0.2, 0.6, 0.1, 0.4, 0.35])
    second = np.array([0.8, 0.9, 0.6, 0.6, 0.75, 0.2, 0.3, 0.2, 0.7, 0.3, 0.6, 0.65])
    scores = np.stack([first, second])
    expected = _delong_1988_p(positive, scores)
    found = delong_difference(positive, scores, np.arange(12))
    assert 0.05 < expected < 0.95  # a case where the difference is neither nothing nor all
    assert found == (pytest.approx(expected, rel=1e-9), DELONG)


def _score_type_gap(positive: np.ndarray, scores: np.ndarray, delta: float) -> float:
    """(d - delta)^2 - 1.96^2 max(V, V(delta)) of the score-type interval of the AUC difference, written out from
    the paper's covariance (one film a patient, so each class's films are its independent units): the AUCs moved
    along their covariance with the difference to differ by delta, each one's variance Hanley and McNeil's there,
    scaled to DeLong's at the AUC seen, the two correlated as DeLong's are. Inside the interval where <= 0."""
    m, n = int(positive.sum()), int((~positive).sum())
    aucs, covariance = _delong_1988_covariance(positive, scores)
    towards = covariance @ np.array([-1.0, 1.0])
    variance, seen = towards[1] - towards[0], aucs[1] - aucs[0]
    moved = np.clip(aucs + towards * (delta - seen) / variance, 0, 1)
    first, second = (covariance[k, k] / _hanley_mcneil(aucs[k], m, n) * _hanley_mcneil(moved[k], m, n)
                     for k in (0, 1))
    r = covariance[0, 1] / np.sqrt(covariance[0, 0] * covariance[1, 1])
    return (seen - delta) ** 2 - norm.isf(0.025) ** 2 * max(variance, first + second - 2 * r * np.sqrt(first * second))


def test_a_delong_difference_has_a_score_type_interval() -> None:
    """--auc-test delong: the AUC difference's 95% interval is the score-type one, said so: its ends are where the
    difference's distance from the one seen reaches 1.96 standard errors, each taken as the larger of DeLong's and
    the one the difference there would have (written out from the papers, one film a patient), so it holds
    DeLong's Wald interval; it lies in [-1, 1] and holds the difference seen. Where the better model's AUC is near
    1 it reaches further above the difference than below it (a weaker model's AUC seen too high shows too small a
    difference and too small a variance alike), where the Wald interval is symmetric."""
    positive = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 1], dtype=bool)
    scores = np.stack([np.array([0.9, 0.8, 0.4, 0.7, 0.5, 0.3, 0.5, 0.2, 0.6, 0.1, 0.4, 0.35]),
                       np.array([0.8, 0.9, 0.6, 0.6, 0.75, 0.2, 0.3, 0.2, 0.7, 0.3, 0.6, 0.65])])
    auc = paired_differences(positive, scores, scores >= 0.5, np.arange(12), auc_test="delong")["auc"]
    assert (auc["ci_method"], auc["p_method"]) == (SCORE, DELONG)
    low, high = auc["ci"]
    for end, outside in ((low, low - 1e-4), (high, high + 1e-4)):
        scale = (auc["difference"] - end) ** 2
        assert _score_type_gap(positive, scores, end) == pytest.approx(0, abs=1e-9 * scale)
        assert _score_type_gap(positive, scores, outside) > 0
    assert all(_score_type_gap(positive, scores, d) < 0 for d in np.linspace(low + 1e-4, high - 1e-4, 50))
    difference, variance = _delong_1988(positive, scores, np.array([-1.0, 1.0]))
    half = norm.isf(0.025) * np.sqrt(variance)
    assert -1 <= low <= difference - half < difference < difference + half <= high <= 1
    rng = np.random.default_rng(4)
    positive = np.arange(80) % 2 == 0
    shared = rng.normal(0, 1, 80)
    scores = np.stack([shared + 2.0 * positive, shared + rng.normal(0, 0.3, 80) + 3.6 * positive])
    auc = paired_differences(positive, scores, scores >= 1, np.arange(80), auc_test="delong")["auc"]
    assert auc["second"] > 0.98 > 0.95 > auc["first"]
    low, high = auc["ci"]
    assert high - auc["difference"] > 1.2 * (auc["difference"] - low)


def test_delong_groups_is_delongs_test_of_independent_aucs() -> None:
    """--by with DeLong: two groups' AUCs, independent samples, are compared by z = (A1 - A2) / sqrt(V1 + V2); three
    groups by the Wald chi-square of the contrasts A1 - A2, A2 - A3 (2 degrees of freedom). Each V is the variance
    the group's AUC would have at the groups' common AUC (their mean weighted by 1 / DeLong's variance): Hanley and
    McNeil's there (Newcombe's form), never below DeLong's, both written from the papers (one film a patient);
    here it is above DeLong's for some groups, so the p is larger than DeLong's variances alone give. Each patient
    filmed twice, scored alike, gives the same p. A group with one patient of a class, or a patient in two groups,
    is refused."""
    from scipy.stats import chi2

    rng = np.random.default_rng(3)
    groups = np.repeat(["A", "B", "C"], [12, 10, 14])
    positive = np.arange(36) % 3 == 0
    scores = positive * np.repeat([1.2, 0.4, 0.8], [12, 10, 14]) + rng.normal(0, 0.6, 36)
    one = [_delong_1988(positive[groups == g], scores[None, groups == g], np.array([1.0])) for g in "ABC"]
    aucs, delong = np.array([a for a, _ in one]), np.array([v for _, v in one])

    def at_common(of: np.ndarray) -> np.ndarray:  # each group's variance at the groups' common AUC
        common = np.average(aucs[of], weights=1 / delong[of])
        model = [_hanley_mcneil(common, int(positive[groups == g].sum()), int((~positive[groups == g]).sum()))
                 for g in np.array(list("ABC"))[of]]
        return np.maximum(delong[of], model)

    two = groups != "C"
    variances = at_common(np.array([0, 1]))
    assert (variances > delong[:2]).any()
    z = (aucs[0] - aucs[1]) / np.sqrt(variances.sum())
    assert 0.05 < 2 * norm.sf(abs(z)) < 0.95
    assert delong_groups(positive[two], scores[two], groups[two], np.arange(22)) == (
        pytest.approx(2 * norm.sf(abs(z)), rel=1e-9), DELONG)
    assert 2 * norm.sf(abs(z)) > 2 * norm.sf(abs(aucs[0] - aucs[1]) / np.sqrt(delong[:2].sum()))
    contrasts = np.array([[1.0, -1.0, 0.0], [0.0, 1.0, -1.0]])
    covariance = np.diag(at_common(np.arange(3)))
    wald = contrasts @ aucs @ np.linalg.solve(contrasts @ covariance @ contrasts.T, contrasts @ aucs)
    assert delong_groups(positive, scores, groups, np.arange(36)).p == pytest.approx(chi2.sf(wald, 2), rel=1e-9)
    twice = np.repeat(np.arange(36), 2)
    assert delong_groups(positive[twice], scores[twice], groups[twice], twice).p == pytest.approx(
        chi2.sf(wald, 2), rel=1e-9)
    with pytest.raises(ValueError, match="at least two patients in each group, which B lacks"):
        delong_groups(positive[:15], scores[:15], groups[:15], np.arange(15))  # one positive film in B
    with pytest.raises(ValueError, match="a patient's films are in several groups"):
        delong_groups(positive, scores, groups, np.arange(36) % 30)


def test_delong_counts_a_patients_films_as_one_unit() -> None:
    """Each patient filmed twice, scored alike: the clustered test gives the p of one film a patient exactly, where
    DeLong's over films (each taken as a patient) gives a far smaller one. Films of a patient scored apart: its
    variance is about the jackknife's over patients (leave each patient out, the AUC difference's spread), as
    Obuchowski's is that estimate's large-sample form."""
    rng = np.random.default_rng(5)
    positive = np.arange(80) % 2 == 0
    first = rng.random(80) + positive * 0.5
    second = first + rng.normal(0, 0.3, 80) + positive * 0.15
    scores = np.stack([first, second])
    once = delong_difference(positive, scores, np.arange(80)).p
    twice = np.repeat(np.arange(80), 2)
    assert delong_difference(positive[twice], scores[:, twice], twice).p == pytest.approx(once, rel=1e-9)
    apart = delong_difference(positive[twice], scores[:, twice], np.arange(160)).p  # as if 160 patients
    assert norm.isf(apart / 2) == pytest.approx(np.sqrt(2) * norm.isf(once / 2), rel=0.02)
    # 150 patients of 1 to 3 films, each patient's films sharing a part of their scores and their class
    patients = np.repeat(np.arange(150), rng.integers(1, 4, 150))
    positive = (rng.random(150) < 0.4)[patients] ^ (rng.random(patients.size) < 0.1)
    shared = rng.normal(0, 0.6, (2, 150))[:, patients]
    scores = positive + shared + rng.normal(0, 0.5, (2, patients.size)) + np.array([[0.0], [0.2]]) * positive
    tested = delong_difference(positive, scores, patients)
    difference = roc_auc_score(positive, scores[1]) - roc_auc_score(positive, scores[0])
    variance = (difference / norm.isf(tested.p / 2)) ** 2
    left = np.array([roc_auc_score(positive[keep], scores[1, keep]) - roc_auc_score(positive[keep], scores[0, keep])
                     for keep in (patients != i for i in range(150))])
    jackknife = 149 / 150 * ((left - left.mean()) ** 2).sum()
    assert variance == pytest.approx(jackknife, rel=0.05)  # 0.98 of it; over films as patients, 0.61
    assert delong_difference(positive, scores, np.arange(patients.size)).p < tested.p  # films as patients: too small


def test_delong_refuses_what_it_cannot_scale() -> None:
    """A class of one patient's films has no spread to estimate; two models that rank every film alike differ by
    nothing (p 1); a difference with no spread at all is refused, not given p 0."""
    with pytest.raises(ValueError, match="at least two patients"):
        delong_difference(np.array([True, True, False, False]), np.stack([np.arange(4.0)] * 2), np.array([0, 0, 1, 2]))
    same = np.stack([np.array([0.9, 0.2, 0.8, 0.1])] * 2)
    assert delong_difference(np.array([True, False, True, False]), same, np.arange(4)) == (1.0, DELONG)
    with pytest.raises(ValueError, match="variance is 0"):
        delong_difference(np.array([True, False, True, False]), np.stack([same[0], np.full(4, 0.5)]), np.arange(4))


def test_two_models_ranking_every_film_alike_have_no_auc_interval() -> None:
    """A model and its scores squared order the films alike: their AUCs are equal on every resample and DeLong's
    variance of the difference is 0, so the score-type interval was [0, 0], a certain "no difference" from 12
    patients. It has none, under either test, and compare says why, as it does of rates called alike."""
    from pneumoscan.core.metrics.differences import RANKED_ALIKE
    from pneumoscan.evaluation.compare import no_interval

    positive = np.arange(12) % 2 == 0
    first = np.array([0.9, 0.2, 0.8, 0.6, 0.4, 0.3, 0.7, 0.1, 0.95, 0.5, 0.65, 0.35])
    scores = np.stack([first, first ** 2])
    for auc_test in ("permutation", "delong"):
        auc = paired_differences(positive, scores, scores >= 0.5, np.arange(12), auc_test=auc_test)["auc"]
        assert auc["difference"] == 0 and auc["ci"] is None and auc["ci_method"] == SCORE
        assert no_interval(auc) == RANKED_ALIKE
    apart = paired_differences(positive, np.stack([first, first[::-1]]), scores >= 0.5, np.arange(12))["auc"]
    assert apart["ci"] is not None and apart["no_ci_reason"] is None
    separate = positive + np.linspace(0, 0.5, 12)  # each separates the classes, in another order of the films
    both = paired_differences(positive, np.stack([separate, separate[::-1] + 2 * positive]), scores >= 0.5,
                              np.arange(12))["auc"]
    assert both["ci"] is None and no_interval(both) == RANKED_ALIKE


def test_an_auc_difference_without_delongs_variance_says_why_not_too_few_patients() -> None:
    """Twelve patients, yet no AUC interval: one model separates the classes, the other reverses them (each film of a
    class placed alike against the other class: DeLong's variance 0 where the AUCs differ by 1), or a class has one
    patient. compare said "too few patients" of both; it says what it is."""
    from pneumoscan.core.metrics.differences import FEW_OF_A_CLASS, NO_VARIANCE
    from pneumoscan.evaluation.compare import no_interval

    positive = np.arange(12) % 2 == 0
    perfect = positive.astype(float)
    auc = paired_differences(positive, np.stack([perfect, 1 - perfect]), np.stack([positive, ~positive]),
                             np.arange(12))["auc"]
    assert auc["difference"] == -1 and auc["ci"] is None and no_interval(auc) == NO_VARIANCE
    one = np.arange(12) == 0  # one positive patient among twelve
    scores = np.stack([np.linspace(0, 1, 12), np.linspace(1, 0, 12) ** 2])
    auc = paired_differences(one, scores, scores >= 0.5, np.arange(12))["auc"]
    assert auc["ci"] is None and no_interval(auc) == FEW_OF_A_CLASS


def test_paired_differences_test_auc_by_delong_where_asked() -> None:
    """--auc-test delong: the AUC's p is the clustered DeLong test's, said so; the rates' stay permutation tests,
    each saying whether every swap was counted (8 patients: 256) or 9,999 drawn (60 patients)."""
    patients = np.array([0, 0, 1, 2, 3, 3, 4, 5, 6, 7])
    positive = np.array([1, 1, 0, 0, 1, 0, 1, 0, 0, 1], dtype=bool)
    scores = np.stack([np.array([0.2, 0.9, 0.5, 0.1, 0.6, 0.7, 0.3, 0.4, 0.8, 0.55]),
                       np.array([0.95, 0.9, 0.3, 0.2, 0.8, 0.5, 0.7, 0.35, 0.6, 0.75])])
    called = scores >= 0.5
    permuted = paired_differences(positive, scores, called, patients)
    delong = paired_differences(positive, scores, called, patients, auc_test="delong")
    assert {name: entry["p_method"] for name, entry in permuted.items()} == dict.fromkeys(permuted, EXACT)
    assert (delong["auc"]["p"], delong["auc"]["p_method"]) == (delong_difference(positive, scores, patients).p, DELONG)
    assert (permuted["auc"]["ci_method"], delong["auc"]["ci_method"]) == (SCORE, SCORE)
    assert delong["sensitivity"] == permuted["sensitivity"] and delong["sensitivity"]["ci_method"] == NEWCOMBE
    many = paired_differences(np.arange(60) % 2 == 0, np.random.default_rng(0).random((2, 60)),
                              np.zeros((2, 60), dtype=bool) | (np.arange(60) < 30), np.arange(60))
    assert {entry["p_method"] for entry in many.values()} == {DRAWN}
    with pytest.raises(ValueError, match="no paired AUC test 'wilcoxon'"):
        paired_differences(positive, scores, called, patients, auc_test="wilcoxon")


def test_auc_difference_drawn_shuffles_agree_with_each_shuffle_scored_by_its_pairs() -> None:
    """Where the shuffles are drawn (more than 9,999), p is that of the same draws with each group's AUC counted by
    its pairs (ties half): 70 patients, some filmed twice (one with a positive and a negative film), in three
    groups, scores rounded to tie, and in two groups; the shuffles drawn in AUC_BATCH rows, each class's patients
    permuted among themselves, as auc_difference draws them."""
    from pneumoscan.core.metrics.differences import AUC_BATCH, BOOTSTRAP_SEED, RESAMPLES

    rng = np.random.default_rng(5)
    patients = np.sort(rng.integers(0, 70, 110))
    patients = np.unique(patients, return_inverse=True)[1]
    m = patients.max() + 1
    positive = rng.random(110) < 0.45
    for k in (3, 2):
        groups = (np.arange(m) % k)[patients]
        scores = np.round(rng.random(110) + positive * (0.4 + 0.15 * (groups == 0)), 1)
        pairs = scores[positive][:, None] - scores[~positive][None, :]
        in_order = (pairs > 0) + (pairs == 0) / 2
        unit_class = ((np.bincount(patients, positive, m) > 0) + 2 * (np.bincount(patients, ~positive, m) > 0))
        unit_group = (np.arange(m) % k)
        sides = np.stack([np.bincount(unit_group, unit_class & side, k) for side in (1, 2)])
        weight = 1 / (1 / sides).sum(axis=0)

        def spread(assigned: np.ndarray) -> np.ndarray:  # shuffles on the first axis, by each group's pairs
            films = assigned[:, patients]
            aucs = []
            for g in range(k):
                at_pos, at_neg = films[:, positive] == g, films[:, ~positive] == g
                aucs.append(np.einsum("bi,ij,bj->b", at_pos, in_order, at_neg)
                            / (at_pos.sum(axis=1) * at_neg.sum(axis=1)))
            auc = np.stack(aucs, axis=1)
            mean = (auc * weight).sum(axis=1, keepdims=True) / weight.sum()
            return ((auc - mean) ** 2 * weight).sum(axis=1)

        observed = spread(unit_group[None])[0] - 1e-12
        draw, beyond, done = np.random.default_rng(BOOTSTRAP_SEED), 0, 0
        while done < RESAMPLES:
            shuffled = np.tile(unit_group, (min(AUC_BATCH, RESAMPLES - done), 1))
            for c in (1, 2, 3):
                stratum = np.flatnonzero(unit_class == c)
                shuffled[:, stratum] = draw.permuted(shuffled[:, stratum], axis=1)
            beyond += int((spread(shuffled) >= observed).sum())
            done += len(shuffled)
        p, method = auc_difference(positive, scores, groups, patients)
        assert p == pytest.approx((1 + beyond) / (1 + RESAMPLES), rel=1e-12) and method == "drawn"
        assert 0.001 < p < 0.9


def test_a_rate_difference_has_newcombes_paired_interval() -> None:
    """Sensitivity's difference has Newcombe's (1998) method-10 interval, said so: on Cavo et al.'s table of 161
    patients (59 right by both, 6 by the first classification only, 16 by the second only, 80 by neither), the
    first's rate less the second's is -0.0621 with the interval -0.1186 to -0.0046, as Fagerland, Lydersen and
    Laake's worked example (Statistical Analysis of Contingency Tables, 2017, ch. 8) gives. Where one model is right
    on all of 6 patients and the other on none the interval is not a certain [1, 1] (every resample's 1) but, by
    hand, 1 - sqrt(2) z^2 / (6 + z^2) to 1: the Wilson ends of 6 of 6 and 0 of 6 squared and added, phi 0 (a margin
    empty); each in [-1, 1] and holding the difference."""
    row = np.array([1] * 65 + [0] * 96, dtype=bool)
    column = np.array([1] * 59 + [0] * 6 + [1] * 16 + [0] * 80, dtype=bool)
    assert paired_rate_ci(np.stack([column, row]), np.arange(161)) == pytest.approx([-0.1186, -0.0046], abs=5e-5)
    found = paired_differences(np.ones(161, bool), np.zeros((2, 161)), np.stack([column, row]), np.arange(161))
    assert list(found) == ["sensitivity"] and found["sensitivity"]["ci_method"] == NEWCOMBE
    assert found["sensitivity"]["difference"] == pytest.approx(-10 / 161)
    z2 = norm.isf(0.025) ** 2
    none_all = paired_differences(np.ones(6, bool), np.zeros((2, 6)), np.array([[False] * 6, [True] * 6]),
                                  np.arange(6))["sensitivity"]
    assert (none_all["difference"], none_all["differing_patients"], none_all["ci_method"]) == (1.0, 6, NEWCOMBE)
    assert none_all["ci"] == pytest.approx([1 - np.sqrt(2) * z2 / (6 + z2), 1.0])
    for entry in (found["sensitivity"], none_all):
        low, high = entry["ci"]
        assert -1 <= low < high <= 1 and low <= entry["difference"] <= high


def test_a_rate_differences_interval_counts_a_patients_films_once() -> None:
    """Films of a patient called alike by each model count as one, at evaluate's rule for a clustered rate
    (:func:`~pneumoscan.core.metrics.intervals.clustered_size`): 0 against all of 6 patients' 12 films gives the
    interval of 6 patients, by hand 1 - sqrt(2) z^2 / (n + z^2) to 1, n = 6 narrowed by Korn and Graubard's
    degrees-of-freedom factor (t_11 / t_5)^2; twice the Cavo table's films, each patient's two alike, about the
    table's own (its 161 patients' 160 degrees of freedom), a little wider; the same films as patients of their own
    a narrower one."""
    from scipy.special import stdtrit

    z2 = norm.isf(0.025) ** 2
    n = 6 * (stdtrit(11, 0.975) / stdtrit(5, 0.975)) ** 2
    twice = np.repeat(np.arange(6), 2)
    assert paired_rate_ci(np.array([[False] * 12, [True] * 12]), twice) == pytest.approx(
        [1 - np.sqrt(2) * z2 / (n + z2), 1.0])
    hits = np.stack([np.array([1] * 59 + [0] * 6 + [1] * 16 + [0] * 80, bool), np.array([1] * 65 + [0] * 96, bool)])
    once = paired_rate_ci(hits, np.arange(161))
    doubled = paired_rate_ci(np.repeat(hits, 2, axis=1), np.repeat(np.arange(161), 2))
    apart = paired_rate_ci(np.repeat(hits, 2, axis=1), np.arange(322))
    assert doubled[0] < once[0] < apart[0] < apart[1] < once[1] < doubled[1]
    assert doubled == pytest.approx(once, abs=0.002)


def test_one_missed_film_never_gives_a_rate_difference_a_higher_lower_bound_than_none() -> None:
    """0 against 30 of 30 films of 10 patients (3 each), and against 29 of 30: the films of a rate of 1 are worth
    its patients, and a rate a miss short of it was worth its 30 films (never fewer than its patients, the rule an
    AUC's films take), so the miss gave the higher lower bound (0.657 against 0.608). At evaluate's rule, a rate's
    films never worth more than its patients, the lower bound falls with the miss."""
    unit_of = np.repeat(np.arange(10), 3)
    missed = np.arange(30) > 0
    every, one_short = (paired_rate_ci(np.stack([np.zeros(30, bool), right]), unit_of)
                        for right in (np.ones(30, bool), missed))
    assert one_short[0] < every[0] and one_short[1] < every[1] == 1.0


def test_a_rate_differences_interval_is_finite_where_a_rate_does_not_vary_by_patient() -> None:
    """8 patients of 2 films, the second model right on exactly one of each patient's (every patient's rate 1/2, so
    its variance by patient 0), the first on 5 films: the two rates' correlation by patient was 0/0 and the interval
    [nan, nan] (compare printed "+0.188 (+nan to +nan)"). It is the rates' Wilson intervals squared and added with
    phi 0, finite and holding the difference."""
    unit_of = np.repeat(np.arange(8), 2)
    hits = np.stack([np.arange(16) < 5, np.arange(16) % 2 == 0])
    low, high = paired_rate_ci(hits, unit_of)
    assert np.isfinite([low, high]).all() and -1 <= low < 3 / 16 < high <= 1
    from scipy.special import ndtri

    from pneumoscan.core.metrics.intervals import clustered_size

    z = float(ndtri(0.975))
    (p1, p2), wilson = hits.mean(axis=1), []
    for p, h in zip(hits.mean(axis=1), hits):
        n = clustered_size(h, unit_of)
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        wilson.append([(p + z * z / (2 * n) + side * half) / (1 + z * z / n) for side in (-1, 1)])
    (l1, u1), (l2, u2) = wilson
    assert [low, high] == pytest.approx([p2 - p1 - np.hypot(p2 - l2, u1 - p1), p2 - p1 + np.hypot(u2 - p2, p1 - l1)])
    found = paired_differences(np.ones(16, bool), np.zeros((2, 16)), hits, unit_of)["sensitivity"]
    assert found["difference"] == pytest.approx(3 / 16) and found["ci"] == pytest.approx([low, high])


def test_the_auc_differences_interval_is_score_type_whichever_the_test() -> None:
    """The AUC difference's interval with the permutation test (the default) is the score-type one DeLong's test
    gives (the bootstrap's fell short near an AUC of 1), said so, its p still the permutation test's; where DeLong's
    variance cannot be had (one patient with negative films) there is none rather than a bootstrap's."""
    rng = np.random.default_rng(4)
    positive = np.arange(40) % 2 == 0
    scores = np.stack([rng.random(40) + positive * 0.6, rng.random(40) + positive * 0.9])
    permuted = paired_differences(positive, scores, scores >= 0.8, np.arange(40))["auc"]
    delong = paired_differences(positive, scores, scores >= 0.8, np.arange(40), auc_test="delong")["auc"]
    assert (permuted["ci_method"], permuted["p_method"]) == (SCORE, DRAWN)
    assert permuted["ci"] == delong["ci"] and permuted["p"] != delong["p"]
    low, high = permuted["ci"]
    assert -1 <= low < permuted["difference"] < high <= 1
    one_negative = np.array([0, 0, 1, 2, 3, 4, 5])
    lone = paired_differences(np.array([0, 0, 1, 1, 1, 1, 1], bool), rng.random((2, 7)), np.ones((2, 7), bool),
                              one_negative)["auc"]
    assert (lone["ci"], lone["ci_method"], lone["patients"]) == (None, SCORE, 6)
