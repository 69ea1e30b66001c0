"""Whether a rate differs across groups more than chance would make it, and Holm's adjustment of many such tests.

The test (:func:`rate_difference`) is a permutation test over patients, chosen over the tables' usual tests:

- Films of one patient are alike (two views, follow-ups): a chi-square or Fisher test over films counts each as an
  independent case and gives p-values too small. Shuffling whole patients among the groups keeps each patient's
  films together, so the chance spread it measures against is the spread patients give.
- Groups are small (a site of 4 patients, an age band of 2): the chi-square's approximation fails with expected counts
  under 5, and Fisher's exact test is of a 2 x 2 table only. The permutation distribution needs neither: with few
  enough patients every assignment is counted (an exact test, as Fisher's conditions on the margins; where a group
  has a single patient, scipy counts every order of up to 7 patients), else 9,999 drawn with a fixed seed, so a run
  gives the same p-value each time.
- Its statistic is Pearson's chi-square of the groups' hits and misses over films (with one film a patient, the
  Freeman-Halton extension of Fisher's test to k groups, ordered by the chi-square).

:func:`auc_difference` asks the same of the ROC AUC, by the same shuffles of patients, each kept among the patients
of its class (those with positive films, with negative ones, with both): every group keeps the case mix it has, as an
AUC needs both classes and does not depend on their proportion. Every shuffle is counted where they are at most
9,999, else 9,999 are drawn, as for the rates.

:func:`paired_differences` asks whether two models differ on the same films: the same shuffles' idea, each
patient's scores swapped between the two models or not, as a sign on that patient's part of the difference.

:func:`delong_difference` answers the paired question by DeLong's test of correlated AUCs, the test papers in
medical imaging name (pROC's roc.test), in Obuchowski's (1997) clustered form: each patient's films summed as one
unit, so two films of one child are not taken as two children; with one film a patient it is DeLong's own. Its
interval is score-type on the same variance (:func:`~.auc_intervals.difference_ci`), as DeLong's Wald interval fell
short near an AUC of 1. :func:`delong_groups` asks :func:`auc_difference`'s question by DeLong's test of independent
AUCs, each group's variance so clustered and taken at the groups' common AUC; both read
:func:`~.auc_intervals.delong_covariance`, as evaluate's AUC interval does.

Each p says how it was found (:class:`Tested`): ``exact`` (every shuffle counted), ``drawn`` (:data:`RESAMPLES`
shuffles drawn with a fixed seed) or ``DeLong`` (a normal approximation).

What it does not tell: a small p says the groups' rates differ by more than reshuffling patients makes them, not why
(the groups may differ in case mix: a site of sicker children); a large p on small groups says little, as they could
not show a difference of any size. Its patients are assumed independent, each in one group of the field.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np

from ..options import AUC_TESTS
from .auc_intervals import _sides, delong_components, delong_covariance, difference_ci, variance_shape
from .intervals import (ALPHA, BOOTSTRAP_SEED, FEW_PATIENTS, _bootstrap_counts, _resampled_sums, clustered_size,
                        net_benefit_parts)
from .summaries import roc_auc

RESAMPLES = 9999  # shuffles drawn where counting every assignment of patients to groups would take more
BATCH = 500  # shuffles scored at once: 5,000 patients took 1.8 GB in one batch of 9,999
AUC_BATCH = 200  # :func:`auc_difference`'s shuffles drawn at once (the draws depend on it)
SCORED = 4_000_000  # :func:`auc_difference`'s films (twice the positive ones) times shuffles scored at once
EXACT, DRAWN, DELONG = "exact", "drawn", "DeLong"  # how a p was found (:class:`Tested`)
# why an AUC difference has no interval (``no_ci_reason``), in a reader's words, where DeLong's variance says it
RANKED_ALIKE = "both runs place every film alike against the other class (rank alike, or both separate the classes)"
NO_VARIANCE = "each run ranks the films of a class alike against the other class: no spread to scale the difference by"
FEW_OF_A_CLASS = "fewer than two patients with films of a class"
BOOTSTRAP = "bootstrap"  # a net benefit difference's interval from resampled patients (``ci_method``)
SCORE = "score-type"  # the AUC difference's interval (:func:`~.auc_intervals.difference_ci`)
NEWCOMBE = "Newcombe"  # a rate difference's interval (:func:`paired_rate_ci`)
# each way in a reader's words, as tables and reports say it beside the p
P_METHODS = {EXACT: "exact: every shuffle counted", DRAWN: f"drawn: {RESAMPLES:,} shuffles, fixed seed",
             DELONG: "DeLong: normal approximation, clustered by patient"}


class NoVariance(ValueError):
    """DeLong's variance of an AUC difference is 0 where the AUCs differ: nothing to scale the difference by."""


class Tested(NamedTuple):
    """A test's p-value and how it was found: :data:`EXACT`, :data:`DRAWN` or :data:`DELONG`."""

    p: float
    method: str


def rate_difference(hits: np.ndarray, groups: np.ndarray, patients: np.ndarray) -> Tested:
    """The p-value of the permutation test over ``patients`` (one a film) of whether the share of ``hits`` (one a film,
    true or false) differs across ``groups`` (one a film), each patient's films in one group, and whether it is exact
    (every assignment counted, as scipy does where they are at most :data:`RESAMPLES`) or drawn. Raises ValueError
    where a patient's films are in several groups: shuffling them as one would need a group to move them to."""
    from scipy.stats import permutation_test

    hits, groups = np.asarray(hits, dtype=bool), np.asarray(groups)
    units, unit_of, codes, k = _patient_groups(groups, patients)
    unit_hits = np.bincount(unit_of, weights=hits, minlength=units.size)
    unit_films = np.bincount(unit_of, minlength=units.size).astype(float)
    share = hits.mean()

    def chi_square(group_hits: np.ndarray, group_films: np.ndarray) -> np.ndarray:
        # Pearson's chi-square of the groups' films as hits and misses (groups on the last axis), less the factor
        # share * (1 - share), which no shuffle changes
        return ((group_hits - share * group_films) ** 2 / group_films).sum(axis=-1)

    def of_groups(*samples: np.ndarray, axis: int = -1) -> np.ndarray:  # each group's patients
        taken = [sample.astype(int) for sample in samples]
        return chi_square(np.stack([unit_hits[t].sum(axis=axis) for t in taken], axis=-1),
                          np.stack([unit_films[t].sum(axis=axis) for t in taken], axis=-1))

    def of_patients(labels: np.ndarray, axis: int = -1) -> np.ndarray:  # each patient's group
        labels = np.moveaxis(labels, axis, -1).astype(int)
        at = (labels + k * np.arange(labels[..., 0].size).reshape(labels.shape[:-1])[..., None]).ravel()
        sums = [np.bincount(at, np.broadcast_to(of, labels.shape).ravel(), k * labels[..., 0].size)
                .reshape(*labels.shape[:-1], k) for of in (unit_hits, unit_films)]
        return chi_square(*sums)

    settings = {"vectorized": True, "n_resamples": RESAMPLES, "alternative": "greater", "batch": BATCH,
                "random_state": np.random.default_rng(BOOTSTRAP_SEED)}
    sizes = np.bincount(codes)
    if sizes.min() >= 2:  # each assignment of patients to groups once (scipy's samples need two each)
        found = permutation_test([np.flatnonzero(codes == g) for g in range(k)], of_groups,
                                 permutation_type="independent", **settings)
        shuffles = math.factorial(units.size) // math.prod(map(math.factorial, sizes.tolist()))
    else:  # a group of one patient: the patients' groups shuffled (every order counted for 7 patients or fewer)
        found = permutation_test((codes,), of_patients, permutation_type="pairings", **settings)
        shuffles = math.factorial(units.size)
    return Tested(float(found.pvalue), EXACT if shuffles <= RESAMPLES else DRAWN)  # as scipy chooses


def _patient_groups(groups: np.ndarray, patients: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The distinct ``patients`` (one a film), each film's patient among them, each patient's group (0 to k - 1) and
    k, the number of ``groups`` (one a film), as every test across groups reads them. Raises ValueError
    where a patient's films are in several groups: each test takes a patient whole, shuffled as one or in one
    group's sample."""
    units, unit_of = np.unique(np.asarray(patients), return_inverse=True)
    unit_group = np.empty(units.size, dtype=groups.dtype)
    unit_group[unit_of] = groups
    if (unit_group[unit_of] != groups).any():
        raise ValueError("a patient's films are in several groups")
    codes = np.unique(unit_group, return_inverse=True)[1]
    return units, unit_of, codes, int(codes.max()) + 1


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of ``p_values`` (each test's p, in any order): the smallest times the number of
    tests, the next times one fewer, each at least the one before and at most 1. It holds the chance of any false
    finding among them at the level read, whatever their dependence, as Bonferroni does with more power."""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate(p[order] * (p.size - np.arange(p.size)))
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted.tolist()


def auc_difference(positive: np.ndarray, scores: np.ndarray, groups: np.ndarray, patients: np.ndarray) -> Tested:
    """The p-value, exact or drawn, of the permutation test over ``patients`` (one a film) of whether the ROC AUC of
    ``scores`` for ``positive`` (one a film) differs across ``groups`` (one a film, each with both classes), each
    patient's films in one group. Its statistic is the spread of the groups' AUCs, sum w (AUC - their w-weighted mean)^2
    with w = 1 / (1 / positive patients + 1 / negative patients), the inverse of about the AUC's variance: with two
    groups, the squared difference of their AUCs. Patients are shuffled among the groups within their class, as scipy's
    permutation_test cannot keep strata: every distinct shuffle counted once where they are at most :data:`RESAMPLES`
    (an exact test, p the share at least as far apart, the real assignment among them), as the rates' tests count
    theirs, else :data:`RESAMPLES` drawn with a fixed seed (p is (1 + shuffles at least as far apart) / (1 + shuffles)).
    Each shuffle's AUCs come from each positive film's place among the negatives, found once (ties counting half): the
    shuffle's films sorted by group (a radix sort, score order kept within a group) and each group's negatives below
    its positive films found from where they fall in that order, their places summed less their ranks, in integers,
    in time and memory that do not grow with the groups (a count a group and negative film took 62 s of CPU for 8
    sites of 100,000 films; counting the negatives up to every event by two cumulative sums, 50-53 s where this
    takes 33 s, docs/results.md); no sklearn roc_auc_score a shuffle. Raises ValueError where a patient's films are
    in several groups or a group lacks a class."""
    positive, scores, groups = np.asarray(positive, dtype=bool), np.asarray(scores, dtype=float), np.asarray(groups)
    units, unit_of, codes, k = _patient_groups(groups, patients)
    # each patient's class: 1 with positive films, 2 with negative ones, 3 with both
    unit_class = ((np.bincount(unit_of, positive, units.size) > 0)
                  + 2 * (np.bincount(unit_of, ~positive, units.size) > 0))
    sides = np.stack([np.bincount(codes, unit_class & side, k) for side in (1, 2)])  # each group's patients a class
    if (sides == 0).any():
        raise ValueError("a group without both positive and negative films has no AUC")
    spread = _AucSpread(scores, positive, unit_of, units.size, k, weight=1 / (1 / sides).sum(axis=0))
    observed = spread(codes[None])[0] * (1 - 1e-12)  # as far apart, rounding aside
    strata = [np.flatnonzero(unit_class == c) for c in (1, 2, 3)]
    # the distinct shuffles: in each class, the ways to deal its patients among the groups, as many as there were
    shuffles = math.prod(math.factorial(s.size) // math.prod(map(math.factorial, np.bincount(codes[s]).tolist()))
                         for s in strata)
    if shuffles <= RESAMPLES:
        return Tested(float(np.mean(spread(_every_shuffle(codes, strata, shuffles)) >= observed)), EXACT)
    beyond = sum(int((spread(shuffled) >= observed).sum()) for shuffled in _drawn_shuffles(codes, strata))
    return Tested((1 + beyond) / (1 + RESAMPLES), DRAWN)


class _AucSpread:
    """:func:`auc_difference`'s statistic of shuffles of patients among groups, its films' events in score order
    made once: each shuffle then costs a stable sort of its group labels and sums in integers, not an AUC a group."""

    def __init__(self, scores: np.ndarray, positive: np.ndarray, unit_of: np.ndarray, units: int, k: int,
                 weight: np.ndarray) -> None:
        self.k, self.weight = k, weight
        negatives, ends = _ranked_negatives(scores, positive)  # each positive film's place among them, made once
        positives = np.flatnonzero(positive)
        # the counts of negatives below each positive film, in score order: each negative film at its place, each
        # positive film twice, before the negatives it ties with (those below it) and after them (those not above it)
        place = np.concatenate([2 * np.arange(negatives.size) + 1, 2 * ends[0], 2 * ends[1]])
        order = np.argsort(place, kind="stable")
        self.event_unit = np.concatenate([unit_of[negatives], unit_of[positives], unit_of[positives]])[order]
        self.event_negative = order < negatives.size
        unit_negatives = np.bincount(unit_of[negatives], minlength=units)
        unit_positives = np.bincount(unit_of[positives], minlength=units)
        self.label = np.min_scalar_type(k)  # 8 or 16 bits: numpy's stable sort of such labels is a radix sort
        self.at_once = max(1, SCORED // self.event_unit.size)
        # each patient's films of each class, a row a shuffle of a batch, made once (np.tile each batch took a tenth)
        self.tiled = [np.tile(count.astype(float), self.at_once) for count in (unit_negatives, unit_positives)]

    def __call__(self, unit_groups: np.ndarray) -> np.ndarray:
        """Each shuffle's spread of the groups' AUCs (shuffles on the first axis, each patient's group), scored a
        few shuffles at a time: about :data:`SCORED` events in all, whose sorts hold memory that grows with them."""
        at_once = self.at_once
        return np.concatenate([self._spread(unit_groups[i:i + at_once])
                               for i in range(0, len(unit_groups), at_once)])

    def _spread(self, unit_groups: np.ndarray) -> np.ndarray:
        """sum w (AUC - their w-weighted mean)^2 over the groups, a shuffle a row."""
        auc = self._aucs(unit_groups)
        mean = (auc * self.weight).sum(axis=-1, keepdims=True) / self.weight.sum()
        return ((auc - mean) ** 2 * self.weight).sum(axis=-1)

    def _aucs(self, unit_groups: np.ndarray) -> np.ndarray:
        """Each group's AUC in each shuffle (shuffles, k), from where its events fall once sorted by group."""
        shape = (len(unit_groups), self.k)
        at = (np.arange(shape[0])[:, None] * self.k + unit_groups).ravel()  # each patient's (shuffle, group)
        negatives_in, positives_in = (np.bincount(at, count[:at.size], np.prod(shape)).astype(np.int64)
                                      .reshape(shape) for count in self.tiled)
        # each shuffle's events sorted by group, in score order within it (stable): a positive film's event at place
        # j, of the r-th positive event, has j - r negatives before it, those of its group below it and of the groups
        # before its own; summed over a group's positive events, their places less the r's (consecutive: the
        # positive events of the groups before, r0, to r0 + 2 positives_in - 1)
        events = self.event_unit.size
        by_group = np.argsort(unit_groups.astype(self.label)[:, self.event_unit], axis=1, kind="stable")
        placed = np.flatnonzero(~self.event_negative[by_group])  # the positive events' places, shuffle after shuffle
        sizes = negatives_in + 2 * positives_in  # each group's events (a negative film's one, a positive film's two)
        starts = np.cumsum(sizes, axis=1) - sizes + np.arange(shape[0])[:, None] * events  # in the flat places
        # every group has positive films in every shuffle (shuffled within classes), so no span is empty
        summed = np.add.reduceat(placed, np.searchsorted(placed, starts.ravel())).reshape(shape)
        twice_positives = 2 * positives_in
        first = np.cumsum(twice_positives, axis=1) - twice_positives  # r0
        twice = (summed - twice_positives * (np.arange(shape[0])[:, None] * events + first)
                 - twice_positives * (twice_positives - 1) // 2)
        before = np.cumsum(negatives_in, axis=1) - negatives_in  # negatives of the groups before each
        # twice each group's pairs in order (a tie once), exact in integers: their AUC as its pairs' share
        return ((twice - 2 * positives_in * before) / 2) / (positives_in * negatives_in)


def _every_shuffle(codes: np.ndarray, strata: list[np.ndarray], shuffles: int) -> np.ndarray:
    """Each distinct shuffle of patients among their groups (``codes``) within each stratum once, a row each (the
    real assignment among them): few enough to count them all is an exact test."""
    every = np.tile(codes, (shuffles, 1))
    # each class's arrangements (rows), all combined: the stratum's columns of row i from its own row of i
    made = [_arrangements(codes[s]) for s in strata]
    for stratum, rows, index in zip(strata, made, np.indices([len(r) for r in made]).reshape(len(made), -1)):
        every[:, stratum] = rows[index]
    return every


def _drawn_shuffles(codes: np.ndarray, strata: list[np.ndarray]) -> Iterator[np.ndarray]:
    """:data:`RESAMPLES` shuffles of patients among their groups (``codes``) within each stratum, drawn with a fixed
    seed, :data:`AUC_BATCH` rows at a time: the same draws on every run, so a run gives the same p each time."""
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    for done in range(0, RESAMPLES, AUC_BATCH):
        shuffled = np.tile(codes, (min(AUC_BATCH, RESAMPLES - done), 1))
        for stratum in strata:
            shuffled[:, stratum] = rng.permuted(shuffled[:, stratum], axis=1)
        yield shuffled


def _arrangements(labels: np.ndarray) -> np.ndarray:
    """Every distinct order of ``labels`` once (the permutations of a multiset), one a row: each value given its
    places among those left, by itertools' combinations."""
    rows: list[tuple[np.ndarray, tuple[int, ...]]] = [(labels.copy(), tuple(range(labels.size)))]
    for value, count in zip(*np.unique(labels, return_counts=True)):
        grown = []
        for row, free in rows:
            for places in itertools.combinations(free, int(count)):
                placed = row.copy()
                placed[list(places)] = value
                grown.append((placed, tuple(i for i in free if i not in places)))
        rows = grown
    return np.array([row for row, _ in rows]).reshape(len(rows), labels.size)


PAIRED_BOOTSTRAP = 2000  # patient resamples of a net benefit difference's interval


def paired_differences(positive: np.ndarray, scores: np.ndarray, called: np.ndarray, patients: np.ndarray,
                       auc_test: str = AUC_TESTS[0],
                       threshold: float | None = None) -> dict[str, dict[str, Any]]:
    """Two models' AUC, sensitivity and specificity on the same films, and the second's difference from the first,
    each with a permutation test over ``patients`` (one a film) of whether they differ and a 95% interval.

    ``scores`` and ``called`` hold a row a model (2, films): its score of each film and whether it called the film
    positive at its own threshold. Each shuffle swaps the two models' scores (or calls) of all of a patient's films
    or none, with chance one half a patient: under no difference between the models, which of them gave a patient's
    films their scores is chance, and a patient's films stay together, as :func:`rate_difference` keeps them. The AUC
    test swaps each film's ranks among each model's scores (mid-ranks), not its scores: two models' scores need not
    be on one scale (one may score everything higher), and swapping them would mix the scales (Bandos, Rockette and
    Gur, 2005). Its statistic is the absolute difference of the AUCs, or of the rates, two-sided. Either difference
    is a sum over patients, each patient's part changing sign where it is swapped (:func:`_auc_parts`), so a shuffle
    costs a product of signs and parts, not an AUC. Every one of the 2^patients swaps is counted where they are at
    most :data:`RESAMPLES` (an exact test), else :data:`RESAMPLES` drawn with a fixed seed (:func:`_sign_flip_p`).
    With ``auc_test`` "delong", the AUC's p is DeLong's, clustered by patient, instead; the rates' stay permutation
    tests. Each entry's ``p_method`` says how its p was found (:class:`Tested`) and ``ci_method`` how its interval
    was made.

    The AUC difference's interval, whichever the test, is the score-type one on DeLong's variance clustered by
    patient (:func:`_delong_paired`, :data:`SCORE`; none where that variance cannot be had: fewer than two patients
    with films of a class, or no spread to scale a difference by, as where the two models rank every film alike,
    said in the entry's ``no_ci_reason``): near an AUC of 1 the patients' percentile
    bootstrap held a true difference in 0.914-0.946 of simulated sets, and its BCa form no better, where the
    score-type interval held it in 0.952-0.994 (docs/results.md). A rate's is Newcombe's (:func:`paired_rate_ci`,
    :data:`NEWCOMBE`). Either interval is none where the figure's films are of fewer than
    :data:`~.intervals.FEW_PATIENTS` patients, and a rate's where the two models call differently the films of fewer
    than that (``differing_patients``, :func:`_paired`). A figure without films (AUC without both classes) is left
    out of the result.

    With a ``threshold`` probability pt in (0, 1) (compare gives the first model's), ``net_benefit`` too: each
    model's net benefit TP/n - FP/n pt/(1 - pt) where it calls positive the films it scores at least pt (as a decision
    curve compares models, :func:`~.summaries.net_benefit`), the difference with the 2.5th and 97.5th percentiles
    of the difference over :data:`PAIRED_BOOTSTRAP` resamples of patients (:func:`_paired_resamples`, each patient's
    films together in both models) as its interval (:data:`BOOTSTRAP`), and no test (p None, as evaluate's net
    benefit has an interval alone). Both at one pt, as decision-curve analysis compares them: a net benefit weighs a
    false positive by pt's odds, so two taken at each model's own threshold weigh it at other odds, and their
    difference answers no one clinical preference. The second model's
    net benefit here is at pt, not at its own threshold (where compare's table gives it), and it reads its scores as
    probabilities, which a poorly calibrated model's are not: that lowers its net benefit, as a decision curve
    would show."""
    if auc_test not in AUC_TESTS:
        raise ValueError(f"no paired AUC test {auc_test!r}: {' or '.join(AUC_TESTS)}")
    positive, scores, called = np.asarray(positive, dtype=bool), np.asarray(scores, float), np.asarray(called, bool)
    units, unit_of = np.unique(np.asarray(patients), return_inverse=True)
    out: dict[str, dict[str, Any]] = {}
    if positive.any() and (~positive).any():
        figures = np.array([[roc_auc(positive, s)] for s in scores])
        films = np.ones_like(positive)
        delong: tuple[Tested, list[float] | None] | None = None
        reason = None  # why the AUC difference has no interval, where DeLong's variance says it
        try:
            delong = _delong_paired(positive, scores, unit_of)
            reason = RANKED_ALIKE if delong[1] is None else None
        except ValueError as error:  # no DeLong variance: fewer than two patients of a class, or none to scale by
            if auc_test == "delong":
                raise
            reason = NO_VARIANCE if isinstance(error, NoVariance) else FEW_OF_A_CLASS
        tested = delong[0] if delong is not None and auc_test == "delong" else _sign_flip_p(
            np.bincount(unit_of, _auc_parts(scores, positive), units.size) / (positive.sum() * (~positive).sum()))
        out["auc"] = _paired(figures, tested, (None if delong is None else delong[1], SCORE), films, unit_of)
        out["auc"]["no_ci_reason"] = reason  # compare says it where the entry has no interval
    hits = (called == positive).astype(float)  # each model's right calls
    for name, films in (("sensitivity", positive), ("specificity", ~positive)):
        if films.any():
            parts = np.bincount(unit_of[films], hits[1, films] - hits[0, films], units.size) / films.sum()
            out[name] = _paired(hits[:, films].mean(axis=1)[:, None], _sign_flip_p(parts[np.unique(unit_of[films])]),
                                (paired_rate_ci(hits[:, films] > 0, unit_of[films]), NEWCOMBE), films, unit_of,
                                called[0] != called[1])
    if threshold is not None and 0 < threshold < 1:  # 0 or 1: odds 0 or infinite
        counts = _paired_resamples(positive, patients)[2]
        out["net_benefit"] = _net_benefit_differences(positive, scores, unit_of, counts, [threshold])[0]
    return out


def _paired_resamples(positive: np.ndarray, patients: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct ``patients`` (one a film), each film's patient among them, and the :data:`PAIRED_BOOTSTRAP`
    resamples of them (:func:`~.intervals._bootstrap_counts`, a fixed seed) that a net benefit difference's interval
    draws: the same patients give the same resamples to :func:`paired_differences` and
    :func:`net_benefit_differences`."""
    units, unit_of = np.unique(np.asarray(patients), return_inverse=True)
    return units, unit_of, _bootstrap_counts(positive, unit_of, PAIRED_BOOTSTRAP, BOOTSTRAP_SEED)[0]


def net_benefit_differences(positive: np.ndarray, scores: np.ndarray, patients: np.ndarray,
                            thresholds: Sequence[float]) -> list[dict[str, Any]]:
    """Two models' net benefits on the same films (``scores``: a row a model) at each of ``thresholds`` (each in
    (0, 1): a decision curve's threshold probabilities), and the second's difference from the first, each an entry
    as :func:`paired_differences` gives ``net_benefit`` (a model calling positive the films it scores at least pt;
    the difference's percentile interval over the same resamples of ``patients``, one a film, none where the two
    call differently the films of fewer than :data:`~.intervals.FEW_PATIENTS` patients; no test). The
    intervals are pointwise: each holds the difference at its pt with 95% confidence, and all of them together
    hold the curve of differences with less (no simultaneous band)."""
    pt = np.asarray(thresholds, dtype=float).ravel()
    if not ((pt > 0) & (pt < 1)).all():
        raise ValueError("a decision curve's threshold probabilities lie strictly between 0 and 1")
    positive, scores = np.asarray(positive, dtype=bool), np.asarray(scores, dtype=float)
    _, unit_of, counts = _paired_resamples(positive, patients)
    return _net_benefit_differences(positive, scores, unit_of, counts, pt.tolist())


def _net_benefit_differences(positive: np.ndarray, scores: np.ndarray, unit_of: np.ndarray, counts: np.ndarray,
                             thresholds: Sequence[float]) -> list[dict[str, Any]]:
    """:func:`net_benefit_differences` on resamples drawn (``counts`` of the units ``unit_of`` gives each film):
    each film's part of each model's net benefit at each threshold summed by patient, then each resample's sums at
    every threshold in one product a model."""
    films = np.ones_like(positive)
    pt = np.asarray(thresholds, dtype=float)[:, None]  # a row a threshold
    n = _resampled_sums(counts, unit_of, films)[:, None]
    values, drawn, calls = [], [], []
    for s in scores:
        calls.append(s >= pt)  # (thresholds, films)
        parts = net_benefit_parts(calls[-1], positive, pt / (1 - pt))
        values.append(parts.mean(axis=1))
        by_unit = np.stack([np.bincount(unit_of, part, counts.shape[1]) for part in parts], axis=1)
        drawn.append(counts @ by_unit / n)  # (resamples, thresholds)
    return [_paired(np.array([[v[i]] for v in values]), None, np.stack([d[:, i] for d in drawn]), films, unit_of,
                    calls[0][i] != calls[1][i])
            for i in range(pt.shape[0])]


def delong_difference(positive: np.ndarray, scores: np.ndarray, patients: np.ndarray) -> Tested:
    """The two-sided p of DeLong's test of whether two models' AUCs on the same films differ (``scores``: a row a
    model), in Obuchowski's clustered form over ``patients`` (one a film; Biometrics 1997, 53:567-578), a normal
    approximation: the difference t over the square root of its variance, the two AUCs' variances less twice their
    covariance (:func:`~.auc_intervals.delong_covariance`). With one film a patient this is DeLong's (1988) test.
    Raises ValueError where fewer than two patients have films of a class, or where the variance is 0 while the
    AUCs differ (every component alike: no spread to scale the difference by)."""
    return _delong_paired(positive, scores, patients)[0]


def _delong_paired(positive: np.ndarray, scores: np.ndarray, patients: np.ndarray,
                   ) -> tuple[Tested, list[float] | None]:
    """:func:`delong_difference`'s test with the difference's 95% interval, the score-type interval on the same
    clustered variance (:func:`~.auc_intervals.difference_ci`: never narrower than DeLong's Wald interval t +- z
    sqrt(variance), wider above or below it near an AUC of 1); None where the models rank every film alike (the
    variance 0): [0, 0] would read as a certain "no difference" where these films cannot tell one, as a rate's
    interval is none where the two models call every film alike (:func:`_paired`)."""
    from scipy.stats import norm

    positive, scores = np.asarray(positive, dtype=bool), np.asarray(scores, dtype=float)
    unit_of = np.unique(np.asarray(patients), return_inverse=True)[1]
    if min(_sides(positive, unit_of)) < 2:
        raise ValueError("DeLong's test needs positive and negative films of at least two patients each")
    components = delong_components(scores, positive)
    covariance = delong_covariance(components, positive, unit_of)
    aucs = components[:, positive].mean(axis=1)
    t = float(aucs[1] - aucs[0])
    variance = float(covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1])
    if variance <= 1e-15:
        if abs(t) <= 1e-12:
            return Tested(1.0, DELONG), None
        raise NoVariance("DeLong's test cannot scale an AUC difference of films ranked alike within each model "
                         "(its variance is 0): use the permutation test")
    return (Tested(float(2 * norm.sf(abs(t) / math.sqrt(variance))), DELONG),
            difference_ci(components, positive, unit_of, ALPHA))


def delong_groups(positive: np.ndarray, scores: np.ndarray, groups: np.ndarray, patients: np.ndarray) -> Tested:
    """The p of DeLong's test of whether the ROC AUC of ``scores`` for ``positive`` differs across ``groups`` (one a
    film), independent samples of ``patients`` (each patient's films in one group): each group's AUC A and its
    variance V, the statistic sum (A - their 1/V-weighted mean)^2 / V read against a chi-square on groups - 1
    degrees of freedom; with two groups, z = (A1 - A2) / sqrt(V1 + V2), two-sided. A normal approximation, as
    :func:`delong_difference`'s.

    V is the variance the group's AUC would have at the groups' common AUC (their mean weighted by 1 / DeLong's
    variance), as a score test takes it under the hypothesis tested: Newcombe's at that AUC
    (:func:`~.auc_intervals.variance_shape`, Stat Med 2006, 25:559), never below DeLong's clustered by patient
    (:func:`~.auc_intervals.delong_covariance`; Obuchowski 1997). Why not DeLong's alone: a small group's AUC
    and its DeLong variance move together near 1 (a set whose AUC comes out high measures a small variance), and
    its z grew with them: p < 0.05 in 0.139 of simulated sets of 35 patients against 165 with one AUC of 0.97,
    though that variance was about right on average over the sets (clustering by patient was not the cause).
    With V so taken it gave 0.038 there, 0.003-0.020 elsewhere (docs/results.md). Raises
    ValueError where a patient's films are in several groups, a group has fewer than two patients with films of
    a class, or a group's AUC has no spread (DeLong's variance 0: every one of its films placed alike)."""
    from scipy.stats import chi2

    positive, scores, groups = np.asarray(positive, dtype=bool), np.asarray(scores, dtype=float), np.asarray(groups)
    unit_of = _patient_groups(groups, patients)[1]
    aucs, variances, shapes = [], [], []
    for group in np.unique(groups):
        films = groups == group
        units = np.unique(unit_of[films], return_inverse=True)[1]
        if min(_sides(positive[films], units)) < 2:
            raise ValueError(f"DeLong's test needs positive and negative films of at least two patients in each "
                             f"group, which {group} lacks")
        components = delong_components(scores[films], positive[films])
        variance = float(delong_covariance(components, positive[films], units)[0, 0])
        if variance <= 1e-15:
            raise ValueError(f"DeLong's test cannot scale {group}'s AUC, whose variance is 0 (every film placed "
                             "alike): use the permutation test")
        aucs.append(float(components[0, positive[films]].mean()))
        variances.append(variance)
        shapes.append(variance_shape(components, positive[films], units, variance))
    common = float(np.average(aucs, weights=1 / np.asarray(variances)))
    weight = 1 / np.array([max(v, shape(common)) for v, shape in zip(variances, shapes)])
    mean = float((weight * aucs).sum() / weight.sum())
    statistic = float((weight * (np.asarray(aucs) - mean) ** 2).sum())
    return Tested(float(chi2.sf(statistic, len(aucs) - 1)), DELONG)


def _auc_parts(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """Each film's part of the second model's AUC less the first's, times positive films x negative films, such
    that swapping the two models' ranks of some patients' films changes the sign of those films' parts and nothing
    else. With H(x) 1 for x > 0, 1/2 for 0, and a, b each film's rank among the first and second model's scores,
    AUC(b) - AUC(a) over pairs of a positive film i and a negative one j sums d = H(b_i - b_j) - H(a_i - a_j). Where
    i's patient is swapped and j's is not, the pair gives c = H(a_i - b_j) - H(b_i - a_j) instead, and -c the other
    way round; both swapped, -d. So each pair gives (s_i + s_j) d / 2 + (s_j - s_i) c / 2, s = -1 where swapped,
    which sums to s_i (d - c) / 2 over j for positive film i, plus s_j (d + c) / 2 over i for negative film j: those
    sums are the parts, each four counts of films below a rank (ties half), found by sorting once."""
    from scipy.stats import rankdata

    a, b = (rankdata(s) for s in scores)

    def below(values: np.ndarray, of: np.ndarray) -> np.ndarray:  # films of ``of`` under each value, ties half
        of = np.sort(of)
        return (np.searchsorted(of, values, "left") + np.searchsorted(of, values, "right")) / 2

    parts = np.empty(positive.size)
    negative = ~positive
    parts[positive] = (below(b[positive], b[negative]) - below(a[positive], a[negative])
                       - below(a[positive], b[negative]) + below(b[positive], a[negative])) / 2
    n_pos = positive.sum()  # the positives above a negative film's rank: n_pos less those below, ties half
    parts[negative] = ((n_pos - below(b[negative], b[positive])) - (n_pos - below(a[negative], a[positive]))
                       + (n_pos - below(b[negative], a[positive])) - (n_pos - below(a[negative], b[positive]))) / 2
    return parts


def _sign_flip_p(parts: np.ndarray) -> Tested:
    """The p of the paired permutation test whose statistic is |sum of ``parts``| (a patient each), each shuffle
    changing the sign of each patient's part or not: every one of the 2^patients sign changes counted where they are
    at most :data:`RESAMPLES`, else :data:`RESAMPLES` drawn with a fixed seed, p = (1 + as far) / (1 + shuffles).
    Signs times parts, not scipy's permutation_test of pairs, which took 5 of 6 s at 5,216 films."""
    observed = abs(parts.sum()) - 1e-12 * np.abs(parts).sum()  # as far apart, rounding aside
    if 2 ** parts.size <= RESAMPLES:
        signs = 1 - 2 * ((np.arange(2 ** parts.size)[:, None] >> np.arange(parts.size)) & 1)
        return Tested(float((np.abs(signs @ parts) >= observed).mean()), EXACT)
    rng, beyond = np.random.default_rng(BOOTSTRAP_SEED), 0
    for done in range(0, RESAMPLES, BATCH):
        signs = rng.choice((-1.0, 1.0), (min(BATCH, RESAMPLES - done), parts.size))
        beyond += int((np.abs(signs @ parts) >= observed).sum())
    return Tested((1 + beyond) / (1 + RESAMPLES), DRAWN)


def _ranked_negatives(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """The negative films in order of score, and each positive film's place among them (in film order): the
    negatives scored below it and those not above it, whose mean counts a tie half. Found once, an AUC in each
    shuffle counts its own negatives up to each place (:func:`auc_difference`)."""
    negatives = np.flatnonzero(~positive)
    negatives = negatives[np.argsort(scores[negatives], kind="stable")]
    return negatives, [np.searchsorted(scores[negatives], scores[positive], side) for side in ("left", "right")]


def _paired(figures: np.ndarray, tested: Tested | None, interval: np.ndarray | tuple[list[float] | None, str],
            films: np.ndarray, unit_of: np.ndarray, differing: np.ndarray | None = None) -> dict[str, Any]:
    """A figure's entry of :func:`paired_differences`: the two models' values (``figures``, (2, 1)), the difference,
    its test's p and how it was found (``tested``; both None where it has none), its interval and how it was made
    (``ci_method``): the percentile interval over the resamples ``interval`` (2, resamples; nan where a resample
    lacks the figure's films), :data:`BOOTSTRAP`, or, where ``interval`` is an interval and its method (:data:`SCORE`,
    :data:`NEWCOMBE`), that one; and the films and patients it is of.

    A rate's or net benefit's difference comes only from the films the two models call differently (``differing``,
    one a film): ``differing_patients`` counts the figure's patients with such a film, and the interval is None
    where they are fewer than :data:`~.intervals.FEW_PATIENTS`. With none, every resample's difference is 0 and
    the percentile interval [0, 0] would read as a certain "no difference"; with 1 to 4, the resamples take a few
    values and the percentile interval holds the true difference less often than 95% (net benefit's). A rate's
    Newcombe interval keeps the rule: it covered without it too (docs/results.md), but the calls of so few
    patients say little of the difference."""
    patients = np.unique(unit_of[films]).size
    apart = None if differing is None else int(np.unique(unit_of[films & differing]).size)
    enough = patients >= FEW_PATIENTS and (apart is None or apart >= FEW_PATIENTS)
    if isinstance(interval, tuple):
        ci, ci_method = (interval[0] if enough else None), interval[1]
    else:
        difference = interval[1] - interval[0]
        difference = difference[np.isfinite(difference)]
        ci = (np.percentile(difference, [100 * ALPHA / 2, 100 * (1 - ALPHA / 2)]).tolist()
              if enough and difference.size else None)
        ci_method = BOOTSTRAP
    first, second = (float(f[0]) for f in figures)
    return {"first": first, "second": second, "difference": second - first, "ci": ci, "ci_method": ci_method,
            "p": None if tested is None else tested.p, "p_method": None if tested is None else tested.method,
            "films": int(films.sum()), "patients": patients, "differing_patients": apart}


def paired_rate_ci(hits: np.ndarray, unit_of: np.ndarray, alpha: float = ALPHA) -> list[float]:
    """The 95% interval (at ``alpha``) of the second model's rate of ``hits`` less the first's (a row a model, one
    bool a film, each film's patient ``unit_of``): Newcombe's hybrid score interval for paired proportions (his
    method 10; Stat Med 1998, 17:2635), each rate's Wilson interval [l, u] combined by the square-and-add (MOVER)
    rule with the correlation phi of the two rates: d - sqrt((p2 - l2)^2 + (u1 - p1)^2 - 2 phi (p2 - l2) (u1 - p1))
    to d + sqrt((u2 - p2)^2 + (p1 - l1)^2 - 2 phi (u2 - p2) (p1 - l1)), phi the films' phi coefficient with
    Newcombe's correction (AD - BC less n/2 where it exceeds n/2, 0 up to it; 0 where a margin is empty).

    Why not the patients' percentile bootstrap: where one model is right on every film and the other on none, every
    resample gives 1 and the interval was [1, 1], a certain answer from a few patients (Newcombe's: [0.448, 1] at 6
    patients); near rates of 0 and 1 the bootstrap held the truth less often than 95% (docs/results.md).

    Films of a patient: each rate's Wilson interval is at the independent films its films are worth
    (:func:`~.intervals.clustered_size`, the rule of every clustered rate's interval); phi is the two rates'
    correlation summed by patient, Newcombe's n/2 taken at the fewer of the two sizes, and 0 where a rate does not
    vary by patient (every patient's films with the same share of hits: nothing to correlate, where r was 0/0).
    With one film a patient it is Newcombe's own. Both ends are finite, in [-1, 1]."""
    from scipy.special import ndtri

    hits = np.asarray(hits, dtype=bool)
    size = int(unit_of.max()) + 1
    z = float(ndtri(1 - alpha / 2))
    rates = hits.mean(axis=1)
    films = np.bincount(unit_of, minlength=size)
    # each patient's hits less its films times the rate: the rates' variances and covariance summed by patient
    deviations = np.stack([np.bincount(unit_of, h, size) - p * films for h, p in zip(hits, rates)])
    summed = deviations @ deviations.T
    sizes, ends = [], []
    for p, h in zip(rates, hits):
        n_eff = clustered_size(h, unit_of, alpha)
        centre = p + z * z / (2 * n_eff)
        half = z * math.sqrt(p * (1 - p) / n_eff + z * z / (4 * n_eff * n_eff))
        sizes.append(n_eff)
        ends.append(((centre - half) / (1 + z * z / n_eff), (centre + half) / (1 + z * z / n_eff)))
    (p1, p2), ((l1, u1), (l2, u2)) = rates, ends
    margins = min(sizes) ** 4 * p1 * (1 - p1) * p2 * (1 - p2)  # the 2 x 2 table's margins at the fewer films
    phi = 0.0
    if margins > 0 and summed[0, 0] > 0 and summed[1, 1] > 0:
        r, shift = float(summed[0, 1] / math.sqrt(summed[0, 0] * summed[1, 1])), min(sizes) / 2 / math.sqrt(margins)
        phi = r - shift if r > shift else min(r, 0.0)
    below = (p2 - l2) ** 2 + (u1 - p1) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1)
    above = (u2 - p2) ** 2 + (p1 - l1) ** 2 - 2 * phi * (u2 - p2) * (p1 - l1)
    difference = float(p2 - p1)
    return [max(difference - math.sqrt(max(below, 0.0)), -1.0), min(difference + math.sqrt(max(above, 0.0)), 1.0)]
