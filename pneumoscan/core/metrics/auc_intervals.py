"""The 95% interval of a ROC AUC, binary or macro (one-vs-rest): DeLong's placements and variance (summed by
patient), Newcombe's score-type interval, and the exact bound where the classes are perfectly separated; the
variance an AUC would have at another value (:func:`variance_shape`), and the score-type interval of two models'
AUC difference on the same films (:func:`difference_ci`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

CHANCE_AUC = 0.5  # a model that ranks films no better than a coin toss
# how :func:`_auc_ci` and :func:`_macro_auc_ci` make an AUC's interval, as reports and model cards name it
AUC_INTERVAL = "Newcombe's score-type interval, its variance at the estimate never below DeLong's"


def _sides(positive: np.ndarray, patients: np.ndarray | None) -> tuple[int, int]:
    """The units (films, or patients) with a positive film and those with a negative one: the sizes an AUC's
    interval counts, and the smaller is m of the perfect-AUC bound."""
    units = np.arange(positive.size) if patients is None else patients
    return np.unique(units[positive]).size, np.unique(units[~positive]).size


def _separated_ci(aucs: Sequence[float], pairs: Sequence[int], alpha: float) -> list[float]:
    """Interval of the mean of AUCs that are each exactly 1 or 0 (classes perfectly separated, or in reverse).

    No spread is seen there (every resample, every placement is perfect), and [1, 1] would present 1 as certain,
    so the interval comes from an exact one-sided argument instead: m = min(positives, negatives) disjoint
    positive-negative pairs (of films, or of patients when films cluster in patients) are independent trials, each
    ordered rightly with a probability of at most the AUC, and all m were; the Clopper-Pearson bound for m of m,
    (alpha / 2) ** (1 / m), then bounds the AUC from below (Bonferroni over the AUCs of a mean). It ignores the
    other pairs, so it is conservative, never falsely certain.
    """
    lows, highs = [], []
    for auc, m in zip(aucs, pairs):
        bound = (alpha / (2 * len(aucs))) ** (1 / m)
        lows.append(bound if auc == 1 else 0.0)
        highs.append(1.0 if auc == 1 else 1 - bound)
    return [float(np.mean(lows)), float(np.mean(highs))]


def _placements(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, float, float] | None:
    """DeLong's placements: for each positive film the negatives scored below it, for each negative the positives
    scored above it (ties counting half), with the numbers of positives and negatives; None without both."""
    order = np.argsort(scores, kind="stable")
    ordered, pos_sorted = scores[order], positive[order]
    new = np.r_[True, ordered[1:] != ordered[:-1]]
    starts, block = np.flatnonzero(new), np.cumsum(new) - 1
    pos = np.add.reduceat(pos_sorted.astype(float), starts)
    neg = np.add.reduceat((~pos_sorted).astype(float), starts)
    n_pos, n_neg = float(pos.sum()), float(neg.sum())
    if not n_pos or not n_neg:
        return None
    placed = np.empty(scores.size)
    placed[order] = np.where(pos_sorted, (np.cumsum(neg) - neg / 2)[block], (n_pos - np.cumsum(pos) + pos / 2)[block])
    return placed, n_pos, n_neg


def _newcombe_variance(auc: float, n_pos: float, n_neg: float) -> float:
    """The variance of an AUC from ``n_pos`` positive and ``n_neg`` negative independent units, as a function of
    the AUC alone: Hanley & McNeil's (1982, Radiology 143:29; Q1 - A^2 = A (1 - A)^2 / (2 - A), Q2 - A^2 = A^2
    (1 - A) / (1 + A)) with both n_pos - 1 and n_neg - 1 replaced by N* = (n_pos + n_neg) / 2 - 1, as Newcombe
    (2006) does so that the interval does not depend on which class is called positive: unmodified, it was small
    when negatives are few and under-covered there (0.78-0.89 at 300 + 30 patients near an AUC of 1)."""
    n_star = (n_pos + n_neg) / 2 - 1
    return auc * (1 - auc) * (1 + n_star * ((1 - auc) / (2 - auc) + auc / (1 + auc))) / (n_pos * n_neg)


def _effective_sizes(films: tuple[float, float], patients: tuple[int, int], by_patient: float,
                     by_film: float) -> tuple[float, ...]:
    """The independent units a side's films are worth: its films over the design effect d (the AUC's variance
    summed by patient over the same with every film its own unit), never fewer than its patients nor more than its
    films. Films of one patient scored alike count about once (d near films per patient); films scored
    independently count each (d near 1), where counting patients had made the interval 3-5 times too wide. With no
    spread by film (d unknown), the patients. A rate's films take another rule (:func:`~.intervals.clustered_size`:
    never more than the patients, with Korn and Graubard's degrees-of-freedom factor): at this one a rate's interval
    fell short of 95 % and let one missed film give a higher lower bound than none."""
    d = by_patient / by_film if by_film > 0 else math.inf
    return tuple(min(max(n / max(d, 1.0), m), n) for n, m in zip(films, patients))


def _score_interval(estimate: float, variance_at: Callable[[float], float], measured: float, df: int,
                    alpha: float) -> list[float]:
    """The AUCs theta with (estimate - theta)^2 <= q^2 c V(theta): a score-type interval (Newcombe 2006, Stat Med
    25:559, his method 5), q a t quantile on ``df`` degrees of freedom, V the variance an AUC of theta would have
    (``variance_at``, :func:`_newcombe_variance`), c = max(measured / V(estimate), 1) with ``measured`` the variance
    seen in the data (DeLong's, summed by patient).

    Why not the estimate +- q times the measured standard error (a Wald interval, even on the logit scale): near an
    AUC of 1 a set whose AUC comes out high also measures a small variance, and that interval covered the truth in
    0.90-0.92 of simulated sets of 30 or 150 patients a class at AUC 0.996, most misses a lower bound above it.
    Taking V at each candidate theta, not at the estimate, removes that link; c keeps what the data show when it
    is more (films of a patient scored alike, AUCs of a macro mean that move together). Both ends are in [0, 1].
    """
    from scipy.optimize import brentq
    from scipy.special import stdtrit  # the t quantile, without scipy.stats' checks per call

    q2c = float(stdtrit(df, 1 - alpha / 2)) ** 2 * max(measured / variance_at(estimate), 1.0)

    def gap(theta: float) -> float:  # > 0 outside the interval; V(0) = V(1) = 0, so it is > 0 at 0 and 1
        return (estimate - theta) ** 2 - q2c * variance_at(theta)

    return [float(brentq(gap, 0.0, estimate)), float(brentq(gap, estimate, 1.0))]


def _macro_auc_ci(probs: np.ndarray, in_class: Sequence[np.ndarray], patients: np.ndarray | None,
                  alpha: float) -> list[float]:
    """Interval of the macro (mean one-vs-rest) AUC, as :func:`_auc_ci` gives the binary one: the score-type
    interval of :func:`_score_interval`, V(theta) the mean of the classes' :func:`_newcombe_variance` at theta
    (at :func:`_effective_sizes`) over the number of classes, the measured variance from each AUC's DeLong
    influence on each film, averaged over the classes and summed by patient (the classes' AUCs share films, so
    their covariances count), with a t quantile on the fewest patients on a side of any class, minus one. Every
    AUC exactly 1 (or 0): :func:`_separated_ci`'s bound; a class without films, fewer than two patients on a side,
    or no variance (all scores tied): no interval (NaN)."""
    units = np.arange(probs.shape[0]) if patients is None else patients
    size = int(units.max()) + 1
    influence, aucs, films, sides = np.zeros(probs.shape[0]), [], [], []
    for k, positive in enumerate(in_class):
        if (placing := _placements(probs[:, k], positive)) is None:
            return [math.nan, math.nan]
        placed, n_pos, n_neg = placing
        auc = float(placed[positive].sum() / (n_pos * n_neg))
        influence += np.where(positive, (placed / n_neg - auc) / n_pos, (placed / n_pos - auc) / n_neg) / len(in_class)
        aucs.append(auc)
        films.append((n_pos, n_neg))
        sides.append(_sides(positive, patients))
    if all(auc in (0.0, 1.0) for auc in aucs):
        return _separated_ci(aucs, [min(side) for side in sides], alpha)
    fewest = min(min(side) for side in sides)
    if fewest < 2:  # before the variance, whose factor size / (size - 1) divides by zero with one patient
        return [math.nan, math.nan]
    macro, variance = float(np.mean(aucs)), size / (size - 1) * float((np.bincount(units, influence, size)**2).sum())
    if not variance > 0 or macro in (0.0, 1.0):
        return [math.nan, math.nan]
    by_film = influence.size / (influence.size - 1) * float((influence**2).sum())
    sizes = [_effective_sizes(n, m, variance, by_film) for n, m in zip(films, sides)]

    def variance_at(theta: float) -> float:
        return sum(_newcombe_variance(theta, *side) for side in sizes) / len(sizes) ** 2

    return _score_interval(macro, variance_at, variance, fewest - 1, alpha)


def delong_components(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """DeLong's structural components of each model's AUC (``scores``: a row a model, one a film; ``positive`` with
    films of both classes): for a positive film the share of negative films scored below it, for a negative film the
    share of positive films scored above it, ties half (:func:`_placements`). A model's AUC is the mean of either
    class's components."""
    rows = []
    for s in np.atleast_2d(scores):
        if (placing := _placements(s, positive)) is None:
            raise ValueError("an AUC needs both positive and negative films")
        placed, n_pos, n_neg = placing
        rows.append(np.where(positive, placed / n_neg, placed / n_pos))
    return np.stack(rows)


def delong_covariance(components: np.ndarray, positive: np.ndarray, units: np.ndarray) -> np.ndarray:
    """The covariance of the AUCs of :func:`delong_components` (a row a model), DeLong's (DeLong, DeLong &
    Clarke-Pearson 1988, Biometrics 44:837) summed by ``units`` (0 to size - 1, one a film) as Obuchowski (1997,
    Biometrics 53:567) does for clustered data: with M and N the films of each class, I10 and I01 the units with
    any, I all, and each unit's V10 (and V01) its positive (negative) films' components less m (n) times the AUC,
    m (n) its films of the class, it is S10 / M + S01 / N + (S11 + S11') / (M N): S10 = I10 / ((I10 - 1) M) sum
    V10 V10', S01 = I01 / ((I01 - 1) N) sum V01 V01', S11 = I / (I - 1) sum V10 V01'. With one film a unit S11 is 0
    and this is DeLong's. The one implementation of it: evaluate's AUC interval, compare's DeLong test and
    interval and the groups' DeLong test all read it. Needs two units on each side."""
    components = np.atleast_2d(components)
    size = int(units.max()) + 1
    aucs = components[:, positive].mean(axis=1, keepdims=True)
    deviations, factors = [], []
    for films in (positive, ~positive):
        counted = np.bincount(units[films], minlength=size)
        summed = np.stack([np.bincount(units[films], c[films], size) for c in components])
        deviations.append(summed - counted * aucs)
        with_films = int((counted > 0).sum())
        factors.append(with_films / (with_films - 1) / float(films.sum()) ** 2)
    (v10, v01), (f10, f01) = deviations, factors
    cross = v10 @ v01.T
    return (f10 * v10 @ v10.T + f01 * v01 @ v01.T
            + size / (size - 1) * (cross + cross.T) / (float(positive.sum()) * float((~positive).sum())))


def _delong_variance(placed: np.ndarray, positive: np.ndarray, units: np.ndarray) -> float:
    """:func:`delong_covariance`'s variance of one AUC from its :func:`_placements`, summed by ``units``."""
    n_pos, n_neg = float(positive.sum()), float((~positive).sum())
    return float(delong_covariance(np.where(positive, placed / n_neg, placed / n_pos), positive, units)[0, 0])


def _auc_ci(scores: np.ndarray, positive: np.ndarray, patients: np.ndarray | None, alpha: float) -> list[float]:
    """Interval of the binary ROC AUC: the score-type interval of :func:`_score_interval`, V(theta)
    :func:`_newcombe_variance` at the independent units each class's films are worth (:func:`_effective_sizes`),
    the measured variance :func:`_delong_variance` summed by patient, a t quantile on min(positive, negative
    patients) - 1 degrees of freedom.

    The unit is the patient, or each film when ``patients`` is None. It covered the truth in 0.96-0.98 of simulated
    sets of 12, 30 or 150 patients a class at an AUC of 0.915 and 0.97-0.995 at 0.996, where DeLong's logit
    interval alone covered 0.90-0.92 at 30 and 150 (benchmarks/bench_ci_coverage.py). An AUC of exactly 1 or 0
    gets the bound of :func:`_separated_ci`. With fewer than two patients (or films) on a side, the spread between
    them cannot be measured: no interval (NaN), as for a variance of zero (all scores tied).
    """
    units = np.arange(scores.size) if patients is None else patients
    if (placing := _placements(scores, positive)) is None:
        return [math.nan, math.nan]
    placed, n_pos, n_neg = placing
    auc = float(placed[positive].sum() / (n_pos * n_neg))
    with_pos, with_neg = _sides(positive, patients)
    if auc in (0.0, 1.0):
        return _separated_ci([auc], [min(with_pos, with_neg)], alpha)
    if min(with_pos, with_neg) < 2:
        return [math.nan, math.nan]
    variance = _delong_variance(placed, positive, units)
    if not variance > 0:
        return [math.nan, math.nan]
    by_film = variance if patients is None else _delong_variance(placed, positive, np.arange(scores.size))
    sizes = _effective_sizes((n_pos, n_neg), (with_pos, with_neg), variance, by_film)
    return _score_interval(auc, lambda theta: _newcombe_variance(theta, *sizes), variance,
                           min(with_pos, with_neg) - 1, alpha)


def variance_shape(components: np.ndarray, positive: np.ndarray, units: np.ndarray,
                   measured: float) -> Callable[[float], float]:
    """The variance one model's AUC would have were it theta: :func:`_newcombe_variance` at the independent units
    its films are worth (:func:`_effective_sizes`, from ``measured``, its variance summed by ``units``, and the same
    with every film its own unit), for its :func:`delong_components` (one row). What a score-type interval or test
    reads where the variance at the estimate is linked to the estimate itself (near an AUC of 1, a set whose AUC
    comes out high measures a small variance)."""
    by_film = float(delong_covariance(components, positive, np.arange(positive.size))[0, 0])
    sizes = _effective_sizes((float(positive.sum()), float((~positive).sum())), _sides(positive, units), measured,
                             by_film)
    return lambda theta: _newcombe_variance(theta, *sizes)


def difference_ci(components: np.ndarray, positive: np.ndarray, units: np.ndarray, alpha: float) -> list[float]:
    """The 95% interval (at ``alpha``) of the second model's AUC less the first's on the same films (``components``
    of :func:`delong_components`, a row a model; ``units`` the patients, 0 to size - 1), a score-type interval: the
    differences delta with (d - delta)^2 <= z^2 max(V, V(delta)), d the difference seen, V its variance DeLong's
    summed by patient (:func:`delong_covariance`, DeLong 1988, Obuchowski 1997), and V(delta) the variance of the
    difference were it delta. V(delta) takes each model's AUC where the difference delta moves it most plausibly,
    the AUCs seen moved along DeLong's covariance with the difference (the restricted estimate of the score
    intervals of a difference, Miettinen & Nurminen 1985, Stat Med 4:213), each model's variance there Newcombe's
    at that AUC (:func:`variance_shape`; his score-type idea, Stat Med 2006, 25:559) scaled to DeLong's at the
    AUC seen, the two correlated as DeLong's are.

    Why: near an AUC of 1 the Wald interval d +- z sqrt(V) covered a true difference of 0.02 (0.97 against 0.99) in
    0.906-0.916 of simulated sets of 200 patients, nearly every miss an upper end below the truth: a set where the
    weaker model's AUC comes out high shows a small difference and measures a small variance alike. Taking the
    variance at each candidate difference removes that link, as :func:`_score_interval` does for one AUC; never
    below V, it keeps the Wald interval's coverage where the two models' AUCs are alike: 0.952-0.994 at the five
    settings of the benchmark, 1.1-1.3 times the Wald interval's width at equal AUCs. Zou and Donner's MOVER (2008,
    Stat Med 27:1693), each AUC's own interval combined with DeLong's correlation, either went the other way (from
    DeLong's logit intervals: 0.876-0.908 at the difference of 0.02, lower ends above the truth; with models this
    correlated it adds the two AUCs' asymmetries, not the difference's) or was 2.3-5.4 times as wide at equal AUCs
    (from :func:`_auc_ci`'s, conservative near 1) (docs/results.md). The interval holds DeLong's: where it leaves 0
    out, DeLong's test gives p < 0.05; it lies in [-1, 1]. A model whose AUC is 0 or 1 (no spread) is held there.
    Needs V > 0."""
    from scipy.optimize import brentq
    from scipy.stats import norm

    covariance = delong_covariance(components, positive, units)
    aucs = components[:, positive].mean(axis=1)
    towards = covariance @ np.array([-1.0, 1.0])  # each AUC's covariance with the difference
    variance, seen = float(towards[1] - towards[0]), float(aucs[1] - aucs[0])
    spread = np.sqrt(np.diag(covariance))
    shapes = [variance_shape(row[None], positive, units, float(v)) for row, v in zip(components, np.diag(covariance))]
    # each model's variance over Newcombe's at its AUC; 0 where it has no spread (an AUC of 0 or 1), held there
    scales = [float(v) / shape(float(a)) if v > 0 else 0.0 for v, shape, a in zip(np.diag(covariance), shapes, aucs)]
    r = float(covariance[0, 1] / (spread[0] * spread[1])) if spread.all() else 0.0
    q2 = float(norm.isf(alpha / 2)) ** 2

    def gap(delta: float) -> float:  # > 0 outside the interval
        theta = np.clip(aucs + towards * (delta - seen) / variance, 0.0, 1.0)
        first, second = (scale * shape(float(t)) for scale, shape, t in zip(scales, shapes, theta))
        at = first + second - 2 * r * math.sqrt(first * second)
        return (seen - delta) ** 2 - q2 * max(variance, at)

    return [-1.0 if gap(-1.0) <= 0 else float(brentq(gap, -1.0, seen)),
            1.0 if gap(1.0) <= 0 else float(brentq(gap, seen, 1.0))]
