"""Evaluation metrics: operating-point metrics with 95% CIs, threshold choice, temperature scaling,
calibration, and the JSON-ready summaries that become ``metrics.json``.

Binary tasks use ``y_true`` in {0, 1} and ``prob`` = P(positive) (PNEUMONIA for the pneumonia task, virus for
etiology); a case is called positive when ``prob >= threshold``, the same rule scikit-learn's curves use.
A screening report needs sensitivity and specificity at the threshold that will actually be deployed, with
their uncertainty, so everything here is computed at an explicit threshold.

scipy and scikit-learn are imported by the functions that use them: predicting and serving need only
:func:`softmax` and the formatting helpers, and those imports took half a second of every start.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .names import json_ready

CURVE_POINTS = 200  # curves are thinned to about this many points so metrics.json stays small
ALPHA = 0.05  # every interval is a 95 % one
BOOTSTRAP_SEED = 0  # the same films give the same intervals, run after run
TEMPERATURE_BOUNDS = (0.05, 20.0)  # a fitted T outside this range means the model or the data is broken
# how :func:`_auc_ci` and :func:`_macro_auc_ci` make an AUC's interval, as reports and model cards name it
AUC_INTERVAL = "Newcombe's score-type interval, its variance at the estimate never below DeLong's"
# how each figure's interval is made (:func:`threshold_metrics_ci`, :func:`evaluate_multiclass`), by whether the
# intervals count patients (True) or films (False), for :func:`ci_method_sentence`
_CI_METHODS = {
    "auc": {True: f"for ROC AUC, {AUC_INTERVAL} summed by patient (Obuchowski), with a t quantile",
            False: f"for ROC AUC, {AUC_INTERVAL}, with a t quantile"},
    "f1": {True: "for F1, a BCa bootstrap of the patients (all films of a patient resampled together), or, where "
                 "every resample gives one value or the positive films are all one patient's, the Bonferroni bound "
                 "from recall's and precision's intervals",
           False: "for F1, a BCa bootstrap of the films (resampled within each class), or, where every resample gives "
                  "one value or only one film is positive, the Bonferroni bound from recall's and precision's "
                  "intervals"},
    "balanced_accuracy": {
        True: "for balanced accuracy, a BCa bootstrap of the patients (all films of a patient resampled together), "
              "or, where every resample gives one value, the Bonferroni bound from the classes' recall intervals",
        False: "for balanced accuracy, a BCa bootstrap of the films (resampled within each class), or, where every "
               "resample gives one value, the Bonferroni bound from the classes' recall intervals"},
    "macro_auc": {True: f"for macro AUC, {AUC_INTERVAL} summed by patient, with a t quantile",
                  False: f"for macro AUC, {AUC_INTERVAL}, with a t quantile"},
}
# what intervals that count films (``ci_unit`` "film") leave out, wherever figures with them are shown
FILM_UNIT_CAVEAT = ("The intervals count each film as an independent case: no two films share a patient id (from file "
                    "names, a manifest's patient column or DICOM headers), so with several films of one patient the "
                    "true uncertainty is larger than they show.")


def ci_method_sentence(unit: str, proportions: str, others: Sequence[str], of: str = "") -> str:
    """How 95% CIs that count ``unit`` ("patient" or "film", as ``ci_unit`` records it) were made: Clopper-Pearson
    for the PROPORTIONS named (by patient at an effective sample size, :func:`proportion_ci`), and for each of the
    OTHERS ("auc", "f1", "balanced_accuracy", "macro_auc") its own method; ``of`` (" of DATA") says whose. One
    wording for reports and model cards, so that none drifts from what this module computes."""
    how = "; ".join(_CI_METHODS[key][unit == "patient"] for key in others)
    if unit == "patient":
        return (f"95% CIs{of} count patients, not films, since one patient's films are scored alike: Clopper-Pearson "
                f"at the effective number of cases (Korn-Graubard) for {proportions}; {how}.")
    return f"95% CIs{of}: exact Clopper-Pearson for {proportions}; {how}."


def jsonable(obj: Any) -> Any:
    """A tree of figures for json.dumps (:func:`~pneumoscan.core.names.json_ready`: numpy as Python, strings valid
    UTF-8), an undefined figure (NaN, an infinity) as None."""
    return json_ready(obj, undefined_as_null=True)


def short_of_one(value: float, digits: int) -> float:
    """``value`` as it may be shown at ``digits`` decimals: one that is not 1 but would round to it is cut down
    (0.9996 -> 0.999), so a sensitivity that missed a film never reads as a perfect 1.000 (or 100.0%)."""
    return math.floor(value * 10**digits) / 10**digits if value < 1 <= round(value, digits) else value


def format_figure(value: float | None, digits: int = 3) -> str:
    """A figure for a table or a log line: ``digits`` decimals (:func:`short_of_one`), "n/a" when undefined (None
    or NaN)."""
    return "n/a" if value is None or math.isnan(value) else f"{short_of_one(value, digits):.{digits}f}"


def format_percent(share: float) -> str:
    """A share as a percentage at one decimal, never rounded up to 100.0% (:func:`short_of_one`)."""
    return f"{100 * short_of_one(share, 3):.1f}%"


def with_ci(value: float | None, ci: Sequence[float | None] | None, digits: int = 3) -> str:
    """``0.912 (95% CI 0.880-0.940)`` for plain text, the bounds at the value's decimals; a defined figure without
    an interval says so, lest the bare value read as certain."""
    lo, hi = ci or (None, None)
    if lo is not None and hi is not None:
        return f"{format_figure(value, digits)} (95% CI {format_figure(lo, digits)}-{format_figure(hi, digits)})"
    return format_figure(value, digits) + (" (no 95% CI)" if value is not None and not math.isnan(value) else "")


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else math.nan


def _as_binary(y_true: Any, prob: Any) -> tuple[np.ndarray, np.ndarray]:
    """Labels and scores checked before any figure is computed: a label of 0.9 would become 0 by a cast, and a
    NaN score would count as a negative call (a failed model scored as a confident one)."""
    labels = np.asarray(y_true).ravel()
    p = np.asarray(prob, dtype=float).ravel()
    if labels.shape != p.shape:
        raise ValueError(f"y_true has {labels.size} items but prob has {p.size}")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("y_true must contain only 0 and 1")
    _check_finite(p)
    return labels.astype(int), p


def _check_finite(prob: np.ndarray) -> None:
    bad = int((~np.isfinite(prob)).sum())
    if bad:
        raise ValueError(f"{bad} of {prob.size} scores are not finite numbers (NaN or infinite): the model that "
                         f"gave them has failed, and no figure is computed from them")


def _has_both_classes(y: np.ndarray) -> bool:
    return 0 < int(y.sum()) < y.size


def roc_auc(y_true: Any, prob: Any) -> float:
    """ROC AUC, or NaN when only one class is present: undefined there, which a summary reports, not an error."""
    from sklearn.metrics import roc_auc_score
    y, p = _as_binary(y_true, prob)
    return float(roc_auc_score(y, p)) if _has_both_classes(y) else math.nan


def binary_metrics(y_true: Any, prob: Any, threshold: float) -> dict[str, Any]:
    """Counts and rates at one threshold; a rate whose denominator is zero (e.g. sensitivity with no
    positives) is NaN rather than an error, so a one-class subset can still be summarised."""
    from sklearn.metrics import confusion_matrix
    y, p = _as_binary(y_true, prob)
    pred = (p >= threshold).astype(int)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y, pred, labels=[0, 1]).ravel())
    return {
        "accuracy": _ratio(tp + tn, y.size),
        "precision": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "n": int(y.size),
        "threshold": float(threshold),
    }


def _patient_codes(groups: Any, n: int) -> np.ndarray | None:
    """Each film's patient as an index 0..m-1, or None when the film is the unit: no ids given, or no patient with
    two films (then every figure is the film-level one, exactly)."""
    if groups is None:
        return None
    ids = np.asarray(groups).ravel()
    if ids.size != n:
        raise ValueError(f"groups has {ids.size} patient ids but there are {n} films")
    unique, codes = np.unique(ids, return_inverse=True)
    return codes if unique.size < n else None


def _unit(patients: np.ndarray | None) -> str:
    """What the intervals count as a case, as metrics.json records it (``ci_unit``)."""
    return "film" if patients is None else "patient"


def _row_counts(draws: np.ndarray, size: int) -> np.ndarray:
    """How often each of ``size`` units is drawn in each row of ``draws``, as floats (n_rows, size)."""
    offsets = size * np.arange(draws.shape[0])[:, None]
    counts = np.bincount((draws + offsets).ravel(), minlength=draws.shape[0] * size)
    return counts.reshape(draws.shape[0], size).astype(float)


def _bootstrap_weights(y: np.ndarray, patients: np.ndarray | None, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n): how many times each film is in each resample.

    Without patients, films are resampled within their class, so class sizes stay fixed and AUC is defined in every
    resample. With them, patients are resampled and all films of a patient come along: one patient's films are
    scored alike, so they are one case, not several. Class sizes then vary, and a resample may lack a class.
    """
    rng = np.random.default_rng(seed)
    if patients is None:
        classes = [np.flatnonzero(y == c) for c in np.unique(y)]
        draws = np.concatenate([g[rng.integers(0, g.size, size=(n_boot, g.size))] for g in classes], axis=1)
        return _row_counts(draws, y.size)
    m = int(patients.max()) + 1
    return _row_counts(rng.integers(0, m, size=(n_boot, m)), m)[:, patients]


def _sides(positive: np.ndarray, patients: np.ndarray | None) -> tuple[int, int]:
    """The units (films, or patients) with a positive film and those with a negative one: the sizes an AUC's
    interval counts, and the smaller is m of the perfect-AUC bound."""
    units = np.arange(positive.size) if patients is None else patients
    return np.unique(units[positive]).size, np.unique(units[~positive]).size


def clopper_pearson(k: int, n: int, alpha: float = ALPHA) -> list[float]:
    """Exact (Clopper-Pearson) interval of the proportion k / n, NaN when n = 0. Unlike a bootstrap it never has
    zero width: a bootstrap of 30 detected out of 30 only ever resamples 30 of 30, yet 30/30 is compatible with a
    true rate of 0.884."""
    from scipy.stats import binomtest
    if not n:
        return [math.nan, math.nan]
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=1 - alpha, method="exact")
    return [float(ci.low), float(ci.high)]


def proportion_ci(hits: np.ndarray, patients: np.ndarray | None = None, alpha: float = ALPHA) -> list[float]:
    """Interval of the proportion of ``hits`` (one bool a film): Clopper-Pearson on the films, or, when films
    cluster in ``patients``, Clopper-Pearson at an effective sample size (Korn & Graubard 1998, the survey-statistics
    standard for clustered proportions).

    One patient's films tend to be called alike, so k of n films carry less evidence than k of n patients would.
    The patients' (linearisation) variance of p = k / n, v = m / (m - 1) * sum_c (k_c - p n_c)^2 / n^2, against the
    binomial p (1 - p) / n gives the design effect d, and n_eff = n / max(d, 1) films are worth independent ones,
    never more than the m patients: at p = 0 or 1 (or with one patient) there is no spread to measure d from, and
    n_eff is m, as if each patient's films agreed fully (30 of 30 films of 10 patients gets the interval of 10 of 10);
    near those rates d comes from the one or two patients with a miss and reads about 1, and without the cap one
    missed film gave a higher lower bound than none. Korn and Graubard's degrees-of-freedom factor
    (t_{n-1} / t_{m-1})^2 then narrows n_eff for few patients. The beta quantiles take the real-valued x = p n_eff
    and n_eff. Films of as many patients (say, the normal films when only pneumonia patients have several) are the
    cases themselves: exact Clopper-Pearson.
    """
    from scipy.stats import beta, t
    k, n = int(hits.sum()), hits.size
    if patients is None or np.unique(patients).size == n:
        return clopper_pearson(k, n, alpha)
    codes = np.unique(patients, return_inverse=True)[1]
    m = int(codes.max()) + 1
    p = k / n
    n_eff = float(m)
    if 0 < p < 1 and m > 1:
        spread = np.bincount(codes, weights=hits, minlength=m) - p * np.bincount(codes, minlength=m)
        v = m / (m - 1) * float((spread**2).sum()) / n**2
        n_eff = min(n / max(v / (p * (1 - p) / n), 1.0), float(m))
    if m > 1:
        n_eff *= (float(t.ppf(1 - alpha / 2, n - 1)) / float(t.ppf(1 - alpha / 2, m - 1))) ** 2
    x = p * n_eff
    low = float(beta.ppf(alpha / 2, x, n_eff - x + 1)) if x > 0 else 0.0
    high = float(beta.ppf(1 - alpha / 2, x + 1, n_eff - x)) if x < n_eff else 1.0
    return [low, high]


def _one_value(samples: np.ndarray) -> bool:
    """Whether every defined resample gave the same value: a bootstrap that shows no spread, so no interval."""
    defined = samples[~np.isnan(samples)]
    return bool(defined.size) and float(defined.max() - defined.min()) == 0.0


def _bca_ci(samples: np.ndarray, estimate: float, jackknife: np.ndarray, alpha: float) -> list[float]:
    """Bias-corrected and accelerated (BCa) bootstrap interval (Efron 1987, JASA 82:171; Efron & Tibshirani 1993,
    ch. 14): the percentile interval taken at levels moved by the bias z0 (where ``estimate`` falls among the
    resamples, ties half) and the acceleration a (the skewness of the leave-one-unit-out ``jackknife`` values).
    The plain percentile interval is too narrow on small sets (F1 at 12 + 12 patients: 0.89-0.93 coverage, BCa
    0.95-0.96). NaN when no resample is defined or the interval has no width ([x, x] would present x as certain),
    and where the levels are out of the formula's reach: the estimate outside every resample (z0 infinite), or
    a(z0 + z) >= 1."""
    from scipy.stats import norm
    defined = samples[~np.isnan(samples)]
    if not defined.size or math.isnan(estimate):
        return [math.nan, math.nan]
    z0 = norm.ppf((np.sum(defined < estimate) + np.sum(defined == estimate) / 2) / defined.size)
    spread = jackknife[~np.isnan(jackknife)]
    d = spread.mean() - spread if spread.size else spread
    ss = float((d**2).sum())
    accel = float((d**3).sum()) / (6 * ss**1.5) if ss > 0 else 0.0
    shift = z0 + norm.ppf([alpha / 2, 1 - alpha / 2])
    if not math.isfinite(z0) or (accel * shift >= 1).any():
        return [math.nan, math.nan]
    levels = norm.cdf(z0 + shift / (1 - accel * shift))
    lo, hi = (float(v) for v in np.percentile(defined, 100 * levels))
    return [lo, hi] if lo < hi else [math.nan, math.nan]


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
    spread by film (d unknown), the patients."""
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
    from scipy.stats import t

    q2c = float(t.ppf(1 - alpha / 2, df)) ** 2 * max(measured / variance_at(estimate), 1.0)

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
    macro, variance = float(np.mean(aucs)), size / (size - 1) * float((np.bincount(units, influence, size)**2).sum())
    fewest = min(min(side) for side in sides)
    if fewest < 2 or not variance > 0 or macro in (0.0, 1.0):
        return [math.nan, math.nan]
    by_film = influence.size / (influence.size - 1) * float((influence**2).sum())
    sizes = [_effective_sizes(n, m, variance, by_film) for n, m in zip(films, sides)]

    def variance_at(theta: float) -> float:
        return sum(_newcombe_variance(theta, *side) for side in sizes) / len(sizes) ** 2

    return _score_interval(macro, variance_at, variance, fewest - 1, alpha)


def _delong_variance(placed: np.ndarray, positive: np.ndarray, units: np.ndarray, auc: float) -> float:
    """DeLong's variance of the AUC (DeLong, DeLong & Clarke-Pearson 1988, Biometrics 44:837) from its
    :func:`_placements`, summed by ``units`` as Obuchowski (1997, Biometrics 53:567) does for clustered data
    (patients holding films of both classes count their covariance). Needs two units on each side."""
    n_pos, n_neg = float(positive.sum()), float((~positive).sum())
    size = int(units.max()) + 1
    pos_placed, neg_placed = (np.bincount(units, placed * side, size) for side in (positive, ~positive))
    pos_films, neg_films = (np.bincount(units, side, size) for side in (positive, ~positive))
    with_pos, with_neg = int((pos_films > 0).sum()), int((neg_films > 0).sum())
    d10, d01 = pos_placed / n_neg - pos_films * auc, neg_placed / n_pos - neg_films * auc
    return (with_pos / (with_pos - 1) * (d10**2).sum() / n_pos**2 + with_neg / (with_neg - 1) * (d01**2).sum()
            / n_neg**2 + 2 * size / (size - 1) * (d10 * d01).sum() / (n_pos * n_neg))


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
    variance = _delong_variance(placed, positive, units, auc)
    if not variance > 0:
        return [math.nan, math.nan]
    by_film = variance if patients is None else _delong_variance(placed, positive, np.arange(scores.size), auc)
    sizes = _effective_sizes((n_pos, n_neg), (with_pos, with_neg), variance, by_film)
    return _score_interval(auc, lambda theta: _newcombe_variance(theta, *sizes), variance,
                           min(with_pos, with_neg) - 1, alpha)


def _ratio_jackknife(num: np.ndarray, den: np.ndarray, units: np.ndarray) -> np.ndarray:
    """sum(num) / sum(den) with each unit's films left out in turn (NaN where nothing is left): the jackknife
    values of a ratio such as F1 = 2 tp / (tp + fp + positives), for :func:`_bca_ci`'s acceleration."""
    size = int(units.max()) + 1
    left_num = num.sum() - np.bincount(units, num, size)
    left_den = den.sum() - np.bincount(units, den, size)
    with np.errstate(divide="ignore", invalid="ignore"):
        return left_num / left_den


def threshold_metrics_ci(
    y_true: Any, prob: Any, thresholds: Sequence[float], n_boot: int = 1000, seed: int = BOOTSTRAP_SEED,
    groups: Any = None,
) -> list[dict[str, list[float]]]:
    """CIs for auc, accuracy, sensitivity, specificity, precision, npv and f1, one dict per threshold.

    The proportions (accuracy, sensitivity, specificity, precision, npv) get exact Clopper-Pearson intervals from the
    counts, the standard of diagnostic-accuracy reporting (STARD), which stay honest at a rate of 0 or 1. AUC and
    F1 are no such proportions. AUC gets a score-type interval with its films counted as the independent cases
    they are worth (:func:`_auc_ci`).
    F1 gets a BCa bootstrap (:func:`_bca_ci`), all thresholds sharing one set of resamples; resamples where F1 is
    undefined are left out. A plain percentile bootstrap covered only 0.86-0.89 (AUC) and 0.90-0.93 (F1) at
    12 + 12 patients.

    ``groups`` (one patient id per film) makes the patient the unit where some patient has several films, since
    one patient's films are scored alike: the proportions take an effective sample size (:func:`proportion_ci`),
    AUC's variance sums by patient, and the bootstrap resamples patients (its jackknife leaves one out). Without
    ids, or with one film per patient, every film is an independent case and the bootstrap is stratified (each
    class resampled within itself, so both are in every resample).
    """
    y, p = _as_binary(y_true, prob)
    patients = _patient_codes(groups, y.size)
    weights = _bootstrap_weights(y, patients, n_boot, seed)
    positive = y == 1
    n_pos = weights @ positive
    auc = _auc_ci(p, positive, patients, ALPHA)
    units = np.arange(y.size) if patients is None else patients

    def among(hits: np.ndarray, films: np.ndarray, alpha: float = ALPHA) -> list[float]:
        return proportion_ci(hits[films], None if patients is None else patients[films], alpha)

    out = []
    for threshold in thresholds:
        called = p >= threshold
        tp, fp = weights @ (called & positive), weights @ (called & ~positive)
        with np.errstate(divide="ignore", invalid="ignore"):  # 2 tp / (2 tp + fp + fn), with fn = n_pos - tp;
            # undefined (left out) in a resample without a positive film, where it had read 0 after a false positive
            f1 = np.where(n_pos > 0, 2 * tp / (tp + fp + n_pos), np.nan)
        num, den = 2.0 * (called & positive), called + positive.astype(float)  # per film
        f1_ci = _bca_ci(f1, _ratio(num.sum(), den.sum()), _ratio_jackknife(num, den, units), ALPHA)
        if (_one_value(f1) or len(np.unique(units[positive])) < 2) and called.any() and positive.any():
            # every resample gave one value (a perfect call, say), or the positives are one patient's (resamples
            # without them are left out, so every resample kept had that patient's recall): F1 = 2 P R / (P + R)
            # grows with precision P and recall R, so their exact intervals at alpha / 2 each (Bonferroni) bound it
            ends = zip(among(called, positive, ALPHA / 2), among(positive, called, ALPHA / 2))
            f1_ci = [_ratio(2 * recall * precision, recall + precision) if recall + precision else 0.0
                     for recall, precision in ends]
        out.append({
            "auc": auc,
            "accuracy": proportion_ci(called == positive, patients),
            "sensitivity": among(called, positive),
            "specificity": among(~called, ~positive),
            "precision": among(positive, called),
            "npv": among(~positive, ~called),
            "f1": f1_ci,
        })
    return out


def choose_threshold(
    y_true: Any, prob: Any, target_sensitivity: float | None = 0.95, max_false_positive_rate: float | None = None
) -> float:
    """Operating threshold from validation data, placed midway between the deciding validation score and the
    next lower one, so rounding differences (another backend, another device) cannot flip the deciding image.

    With ``target_sensitivity``: the highest threshold whose sensitivity is >= the target, i.e. the most
    specific rule that still meets the sensitivity floor (the next higher distinct score falls below it).
    With ``max_false_positive_rate`` (and ``target_sensitivity=None``): the lowest threshold whose false-positive
    rate (1 - specificity) is <= the ceiling, i.e. the most sensitive rule within it; a ceiling that no threshold
    finding at least one positive case can keep is refused. With neither: the threshold maximising Youden's J =
    sensitivity + specificity - 1; among tied maximisers the highest (most specific) threshold wins.
    Raises ValueError unless both classes are present.
    """
    y, p = _as_binary(y_true, prob)
    if not _has_both_classes(y):
        raise ValueError("choosing a threshold needs both classes in the labelled data")
    if target_sensitivity is not None and max_false_positive_rate is not None:
        raise ValueError("give a target sensitivity or a maximum false-positive rate, not both")
    fpr, tpr, thresholds = _roc_points(y, p)
    positives = int(y.sum())
    negatives = y.size - positives
    if max_false_positive_rate is not None:
        if not 0 <= max_false_positive_rate < 1:
            raise ValueError(f"max_false_positive_rate must be in [0, 1), got {max_false_positive_rate}")
        # whole counts again: fp <= ceiling x negatives, without the last-bit noise of a float rate
        within = np.flatnonzero(np.rint(fpr * negatives) <= max_false_positive_rate * negatives + 1e-9)
        if not within.size or tpr[within[-1]] == 0:
            raise ValueError(f"no threshold finds any positive case while keeping the false-positive rate at or "
                             f"below {max_false_positive_rate:g} on this data: negative cases hold the highest scores")
        k = int(within[-1])
    elif target_sensitivity is None:
        # J in whole counts (tp * N - fp * P): as floats, two equal J can differ in the last bit and the tie would
        # go to the lower threshold
        k = int(np.argmax(np.rint(tpr * positives) * negatives - np.rint(fpr * negatives) * positives))
    elif not 0 < target_sensitivity <= 1:
        raise ValueError(f"target_sensitivity must be in (0, 1], got {target_sensitivity}")
    else:
        k = int(np.argmax(tpr >= target_sensitivity))
    lower = thresholds[k + 1] if k + 1 < len(thresholds) else 0.0
    return float((thresholds[k] + lower) / 2)


def _roc_points(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """fpr, tpr and threshold at each distinct score, descending: sklearn's ``roc_curve(drop_intermediate=False)``
    less its leading +inf point and its input checks (:func:`_as_binary` made them), which took a millisecond a call,
    and :func:`threshold_interval` chooses a threshold on a thousand resamples."""
    order = np.argsort(p, kind="stable")[::-1]
    p, y = p[order], y[order]
    last = np.append(np.flatnonzero(np.diff(p)), p.size - 1)  # each distinct score's last film
    tps = np.cumsum(y, dtype=float)[last]
    fps = 1 + last - tps
    return fps / fps[-1], tps / tps[-1], p[last]


def choose_thresholds(
    y_true: Any, plain: Any, tta: Any, target_sensitivity: float | None, max_false_positive_rate: float | None
) -> tuple[float, float]:
    """The plain and the TTA threshold by one policy (:func:`choose_threshold`): averaging views shifts the scores,
    so TTA gets its own threshold from its own scores; a policy its scores cannot meet is refused as TTA's."""
    threshold = choose_threshold(y_true, plain, target_sensitivity, max_false_positive_rate)
    try:
        return threshold, choose_threshold(y_true, tta, target_sensitivity, max_false_positive_rate)
    except ValueError as e:
        raise ValueError(f"with test-time augmentation: {e}") from None


def threshold_interval(
    y_true: Any, prob: Any, target_sensitivity: float | None, max_false_positive_rate: float | None,
    groups: Any = None, n_boot: int = 1000, seed: int = BOOTSTRAP_SEED,
) -> list[float]:
    """The 95 % percentile-bootstrap interval of the threshold :func:`choose_threshold` chooses by this policy, the
    films resampled within their class (or, with ``groups``, the patients whole): a threshold chosen on other films
    like these would fall in it, so a reading inside it could have been called either way, and is near the
    threshold. Resamples the policy cannot be met on (one class only) are skipped; [] when half of them are."""
    y, p = _as_binary(y_true, prob)
    found = []
    for counts in _bootstrap_weights(y, _patient_codes(groups, y.size), n_boot, seed):
        films = np.repeat(np.arange(y.size), counts.astype(int))
        try:
            found.append(choose_threshold(y[films], p[films], target_sensitivity, max_false_positive_rate))
        except ValueError:  # a resample without both classes, or one the ceiling cannot be kept on
            continue
    if len(found) < n_boot / 2:
        return []
    return [float(v) for v in np.percentile(found, [100 * ALPHA / 2, 100 * (1 - ALPHA / 2)])]


def describe_policy(target_sensitivity: float | None, max_false_positive_rate: float | None) -> str:
    """How :func:`choose_threshold` chose, in the words the bundle card records."""
    if target_sensitivity is not None:
        return f"sensitivity >= {target_sensitivity:g}"
    if max_false_positive_rate is not None:
        return f"false-positive rate <= {max_false_positive_rate:g}"
    return "Youden's J"


def softmax(logits: Any, temperature: float = 1.0) -> np.ndarray:
    """Class probabilities from logits (last axis), softened by ``temperature`` (T > 1 = less confident): scipy's
    formula (shifted by the row maximum), in numpy alone."""
    z = np.asarray(logits, dtype=float) / temperature
    shifted = np.exp(z - np.max(z, axis=-1, keepdims=True))
    return shifted / np.sum(shifted, axis=-1, keepdims=True)


def fit_temperature(logits: np.ndarray, y_true: np.ndarray) -> float:
    """Temperature T minimising the validation NLL of softmax(logits / T) (Guo et al. 2017).

    Searches log T (bounded, see TEMPERATURE_BOUNDS) so T stays positive. One scalar cannot change the argmax,
    and with two classes it keeps the order of P(positive), so accuracy and AUC are unchanged. With three classes
    the order of 1 - P(normal) can change, which is why the threshold is always chosen after calibration.
    """
    from scipy.optimize import minimize_scalar
    from scipy.special import log_softmax
    z = np.asarray(logits, dtype=float)
    y = np.asarray(y_true).astype(int).ravel()
    if z.ndim != 2 or z.shape[0] != y.size:
        raise ValueError(f"logits must be (N, C) with N = len(y_true); got {z.shape} and {y.size} labels")
    rows = np.arange(y.size)
    if np.array_equal(z.argmax(axis=1), y):
        # every film on its side: the NLL only falls as T -> 0 (until it underflows, where the search stops short of
        # its bound at T ~ 0.07), and any such T would make every later score look certain
        warnings.warn(
            "the validation films are classified without a single error, so no temperature can be fitted on them: "
            "T = 1 is kept, and the probabilities are the model's own, not calibrated; validate on more films",
            stacklevel=2,
        )
        return 1.0

    def nll(log_t: float) -> float:
        return float(-log_softmax(z / math.exp(log_t), axis=1)[rows, y].mean())

    lo, hi = (math.log(b) for b in TEMPERATURE_BOUNDS)
    result = minimize_scalar(nll, bounds=(lo, hi), method="bounded", options={"xatol": 1e-5})
    t = float(math.exp(result.x))
    if abs(result.x - hi) < 1e-3:
        warnings.warn(
            f"temperature {t:.3g} is at its bound {TEMPERATURE_BOUNDS}: the validation logits carry no signal or "
            "are ranked the wrong way round, so the probabilities are not calibrated",
            stacklevel=2,
        )
    elif abs(result.x - lo) < 1e-3:  # with errors: logits so close together that even T = 0.05 does not spread them
        warnings.warn(
            f"temperature {t:.3g} is at its bound {TEMPERATURE_BOUNDS}: the validation logits are too close together "
            "to calibrate, so the probabilities are not calibrated",
            stacklevel=2,
        )
    return t


def calibration(y_true: Any, prob: Any, n_bins: int = 10) -> dict[str, Any]:
    """Reliability-diagram data over equal-width bins of ``prob`` plus the expected calibration error
    ECE = sum_b (n_b / n) * |observed_b - predicted_b|. Empty bins have NaN means and count 0. Scores outside
    [0, 1] are refused: they are no probabilities, and a bin would take them silently (-0.2 in the first)."""
    y, p = _as_binary(y_true, prob)
    if ((p < 0) | (p > 1)).any():
        raise ValueError(f"calibration needs probabilities in [0, 1], got scores from {p.min():g} to {p.max():g}")
    # [a, b) bins with edges k / n_bins exactly (np.linspace's 0.30000000000000004 put 0.3 in the bin below);
    # 1.0 lands in the last bin
    bins = np.clip((p * n_bins).astype(int), 0, n_bins - 1)
    edges = np.arange(n_bins + 1) / n_bins
    counts = np.bincount(bins, minlength=n_bins)
    sum_pred = np.bincount(bins, weights=p, minlength=n_bins)
    sum_obs = np.bincount(bins, weights=y, minlength=n_bins)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_pred = sum_pred / counts
        observed = sum_obs / counts
    return {
        "bin_edges": edges.tolist(),
        "mean_predicted": mean_pred.tolist(),
        "observed_frequency": observed.tolist(),
        "counts": counts.tolist(),
        "ece": _ratio(np.abs(sum_obs - sum_pred).sum(), y.size),
    }


def _row_normalised(counts: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return counts / counts.sum(axis=1, keepdims=True)


def _thin(*arrays: np.ndarray) -> list[list[float]]:
    """Keep about CURVE_POINTS evenly spaced points (ends included) of parallel curve arrays."""
    n = len(arrays[0])
    keep = np.unique(np.linspace(0, n - 1, CURVE_POINTS).round().astype(int)) if n > CURVE_POINTS else slice(None)
    return [np.asarray(a)[keep].tolist() for a in arrays]


def _operating_point(y: np.ndarray, p: np.ndarray, threshold: float, free: dict, ci: dict) -> dict[str, Any]:
    """One threshold's block of metrics.json; ``free`` holds the threshold-free auc, pr_auc and ece."""
    m = binary_metrics(y, p, threshold)
    counts = np.array([[m["tn"], m["fp"]], [m["fn"], m["tp"]]])
    return {
        "auc": free["auc"],
        "accuracy": m["accuracy"],
        "sensitivity": m["sensitivity"],
        "specificity": m["specificity"],
        "precision": m["precision"],
        "npv": m["npv"],
        "f1": m["f1"],
        "threshold": m["threshold"],
        "n": m["n"],
        "pr_auc": free["pr_auc"],
        "ece": free["ece"],
        "confusion_matrix": {"counts": counts, "normalized": _row_normalised(counts)},
        "ci": ci,
    }


def evaluate_binary(
    y_true: Any,
    prob: Any,
    threshold: float,
    n_boot: int = 1000,
    class_names: Sequence[str] = ("negative", "positive"),
    groups: Any = None,
) -> dict[str, Any]:
    """The metrics.json dict: metrics at the bundle's ``threshold`` at the top level, the same block at 0.5
    under ``at_0_5``, and thinned ROC / PR / calibration curves. NaN (undefined) values become None.

    ``class_names`` (negative, positive) only label the report; confusion matrices are [[tn, fp], [fn, tp]].
    ``groups`` (a patient id per film) makes the CIs count patients (:func:`threshold_metrics_ci`); ``ci_unit``
    says whether they count patients or films.
    """
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_curve
    y, p = _as_binary(y_true, prob)
    if not y.size:
        raise ValueError("no labelled films to measure")
    if len(class_names) != 2:
        raise ValueError("class_names must name (negative, positive)")
    curves: dict[str, Any] = {"roc": {"fpr": [], "tpr": [], "thresholds": []}, "pr": {"precision": [], "recall": []}}
    both = _has_both_classes(y)
    if both:
        fpr, tpr, roc_thresholds = roc_curve(y, p)
        precision, recall, _ = precision_recall_curve(y, p)
        curves["roc"] = dict(zip(("fpr", "tpr", "thresholds"), _thin(fpr, tpr, roc_thresholds)))
        curves["pr"] = dict(zip(("precision", "recall"), _thin(precision, recall)))
    curves["calibration"] = calibration(y, p)
    free = {
        "auc": roc_auc(y, p),
        "pr_auc": float(average_precision_score(y, p)) if both else math.nan,
        "ece": curves["calibration"]["ece"],
    }
    chosen, half = (
        _operating_point(y, p, t, free, ci)
        for t, ci in zip((threshold, 0.5), threshold_metrics_ci(y, p, (threshold, 0.5), n_boot, groups=groups))
    )
    return jsonable(
        {
            "kind": "binary",
            "class_names": list(class_names),
            "ci_unit": _unit(codes := _patient_codes(groups, y.size)),
            "n_positive": int(y.sum()),
            "n_negative": int(y.size - y.sum()),
            # the share of positive films, which precision and npv depend on: at another prevalence they differ
            "prevalence": _ratio(int(y.sum()), y.size),
            # patients a class, beside the films, when the intervals count patients (a patient may have films of
            # both classes, so the two may add up to more than the patients)
            "patients": None if codes is None else {"positive": int(np.unique(codes[y == 1]).size),
                                                    "negative": int(np.unique(codes[y == 0]).size),
                                                    "all": int(np.unique(codes).size)},
            **chosen,
            "at_0_5": half,
            "curves": curves,
        }
    )


def _as_multiclass(y_true: Any, probs: Any, n_classes: int,
                   predicted: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, probabilities (N, n_classes) and decided classes, checked before any figure is computed, as
    :func:`_as_binary` checks a binary task's."""
    labels = np.asarray(y_true).ravel()
    P = np.asarray(probs, dtype=float)
    if P.shape != (labels.size, n_classes):
        raise ValueError(f"probs must be (N, {n_classes}) for N = {labels.size} labels; got {P.shape}")
    if not labels.size:
        raise ValueError("no labelled films to measure")
    if not np.isin(labels, range(n_classes)).all():
        raise ValueError(f"y_true must contain class indices 0..{n_classes - 1}")
    _check_finite(P)
    y = labels.astype(int)
    pred = P.argmax(axis=1) if predicted is None else np.asarray(predicted).astype(int).ravel()
    if pred.shape != y.shape or not np.isin(pred, range(n_classes)).all():
        raise ValueError(f"predicted must be N = {y.size} class indices 0..{n_classes - 1}")
    return y, P, pred


def _class_aucs(y: np.ndarray, P: np.ndarray) -> list[float]:
    """Each class's one-vs-rest ROC AUC (NaN for a class without films, or with every film)."""
    return [roc_auc(y == k, P[:, k]) for k in range(P.shape[1])]


def _mean_auc(class_aucs: Sequence[float]) -> float:
    """The macro AUC: the mean of the classes' one-vs-rest AUCs (:func:`_class_aucs`), NaN when one is undefined."""
    return float(np.mean(class_aucs))


def _per_class(y: np.ndarray, P: np.ndarray, counts: np.ndarray, class_names: Sequence[str],
               class_aucs: Sequence[float]) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, list[float]]]]:
    """Each class's one-vs-rest AUC (``class_aucs``: :func:`_class_aucs`, which the macro AUC is the mean of),
    sensitivity, precision, f1 and support (from the confusion ``counts``), and its thinned ROC curve (none for a
    class without films, or with every film)."""
    from sklearn.metrics import roc_curve
    per_class: dict[str, dict[str, Any]] = {}
    roc: dict[str, dict[str, list[float]]] = {}
    for k, name in enumerate(class_names):
        is_k = y == k
        tp, support, n_called = counts[k, k], counts[k].sum(), counts[:, k].sum()
        defined = _has_both_classes(is_k.astype(int))
        per_class[name] = {
            "auc": class_aucs[k],
            "sensitivity": _ratio(tp, support),
            "precision": _ratio(tp, n_called),
            "f1": _ratio(2 * tp, support + n_called),
            "support": int(support),
        }
        roc[name] = (
            dict(zip(("fpr", "tpr"), _thin(*roc_curve(is_k, P[:, k])[:2]))) if defined else {"fpr": [], "tpr": []}
        )
    return per_class, roc


def macro_auc(y_true: Any, probs: Any) -> float:
    """The macro (mean one-vs-rest) ROC AUC of class probabilities (N, C), as :func:`evaluate_multiclass` reports
    it, without the intervals, bootstrap and curves that come with it there; NaN when a class has no film."""
    y, P, _ = _as_multiclass(y_true, probs, np.shape(probs)[-1], None)
    return _mean_auc(_class_aucs(y, P))


def _balanced_accuracy_ci(y: np.ndarray, pred: np.ndarray, in_class: Sequence[np.ndarray],
                          patients: np.ndarray | None, balanced: float, n_boot: int) -> list[float]:
    """Interval of the balanced accuracy (the mean of the classes' recalls, ``balanced``): a BCa bootstrap of the
    films, or of the patients with ``patients``, as F1's (:func:`threshold_metrics_ci`): at a balanced accuracy of
    0.984 the percentile interval covered 0.81 of simulated sets of 30 patients a class, BCa 0.92
    (benchmarks/bench_ci_coverage.py). Where every resample gives one value, the mean of the classes' exact recall
    intervals at alpha / k (Bonferroni)."""
    weights = _bootstrap_weights(y, patients, n_boot, BOOTSTRAP_SEED)
    with np.errstate(divide="ignore", invalid="ignore"):  # a class without films: its recall and the mean are NaN
        boot = np.mean([weights @ (c & (pred == y)) / (weights @ c) for c in in_class], axis=0)
    units = np.arange(y.size) if patients is None else patients
    jackknife = np.mean([_ratio_jackknife((c & (pred == y)).astype(float), c.astype(float), units)
                         for c in in_class], axis=0)
    if _one_value(boot) and all(c.any() for c in in_class):
        recalls = [proportion_ci((pred == y)[c], None if patients is None else patients[c], ALPHA / len(in_class))
                   for c in in_class]
        return [float(end) for end in np.mean(recalls, axis=0)]
    return _bca_ci(boot, balanced, jackknife, ALPHA)


def evaluate_multiclass(
    y_true: Any, probs: np.ndarray, class_names: Sequence[str], n_boot: int = 1000,
    predicted: Any = None, decision: str = "most probable class", groups: Any = None,
) -> dict[str, Any]:
    """Metrics for a decision among the classes, by default the argmax (``predicted`` gives another, e.g. two
    thresholded stages, named by ``decision``): accuracy, balanced accuracy, macro one-vs-rest AUC, per-class
    sensitivity / precision / f1 / AUC, confusion matrix, 95% CIs (accuracy: exact Clopper-Pearson; balanced
    accuracy: BCa bootstrap, :func:`_balanced_accuracy_ci`; macro AUC: score-type, :func:`_macro_auc_ci`; by patient
    with ``groups``, as in :func:`threshold_metrics_ci`), per-class ROC curves and a reliability diagram of the
    decided class (its probability vs correctness). NaN -> None."""
    from sklearn.metrics import confusion_matrix
    n_classes = len(class_names)
    y, P, pred = _as_multiclass(y_true, probs, n_classes, predicted)
    counts = confusion_matrix(y, pred, labels=list(range(n_classes)))
    class_aucs = _class_aucs(y, P)
    per_class, roc = _per_class(y, P, counts, class_names, class_aucs)
    rows = list(per_class.values())
    patients = _patient_codes(groups, y.size)
    in_class = [y == k for k in range(n_classes)]
    balanced = float(np.mean([r["sensitivity"] for r in rows]))
    top_label = calibration(pred == y, P[np.arange(y.size), pred])
    return jsonable(
        {
            "kind": "multiclass",
            "decision": decision,
            "class_names": list(class_names),
            "n": int(y.size),
            "ci_unit": _unit(patients),
            "accuracy": _ratio(np.trace(counts), y.size),
            "balanced_accuracy": balanced,
            "macro_auc": _mean_auc(class_aucs),
            "macro_f1": float(np.mean([r["f1"] for r in rows])),
            "ece": top_label["ece"],
            "per_class": per_class,
            "confusion_matrix": {"counts": counts, "normalized": _row_normalised(counts)},
            "ci": {
                "accuracy": proportion_ci(pred == y, patients),
                "balanced_accuracy": _balanced_accuracy_ci(y, pred, in_class, patients, balanced, n_boot),
                "macro_auc": _macro_auc_ci(P, in_class, patients, ALPHA),
            },
            "curves": {"roc": roc, "calibration": top_label},
        }
    )
