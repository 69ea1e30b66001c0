"""95% intervals of the figures at an operating point: exact Clopper-Pearson for the proportions (at an
effective sample size when films cluster in patients), BCa bootstraps for F1 and balanced accuracy, and the
sentences that say how each was made, for reports and model cards."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .auc_intervals import AUC_INTERVAL, _auc_ci
from .inputs import _as_binary, _patient_codes, _ratio

ALPHA = 0.05  # every interval is a 95 % one
BOOTSTRAP_SEED = 0  # the same films give the same intervals, run after run
FEW_PATIENTS = 5  # a class of fewer patients than this is too few for a bootstrap of patients (:func:`_few_patients`)
# how each figure's interval is made (:func:`threshold_metrics_ci`,
# :func:`~pneumoscan.core.metrics.summaries.evaluate_multiclass`), by whether the intervals count patients (True)
# or films (False), for :func:`ci_method_sentence`
_CI_METHODS = {
    "auc": {True: f"for ROC AUC, {AUC_INTERVAL} summed by patient (Obuchowski), with a t quantile",
            False: f"for ROC AUC, {AUC_INTERVAL}, with a t quantile"},
    "f1": {True: "for F1, a BCa bootstrap of the patients (all films of a patient resampled together), widened to "
                 "hold F1 over the exact interval of a recall of 0 or 1, or, where every resample gives one value or "
                 f"the positive films are fewer than {FEW_PATIENTS} patients', the Bonferroni bound from recall's and "
                 "precision's intervals",
           False: "for F1, a BCa bootstrap of the films (resampled within each class), widened to hold F1 over the "
                  "exact interval of a recall of 0 or 1, or, where every resample gives one value or only one film is "
                  "positive, the Bonferroni bound from recall's and precision's intervals"},
    "balanced_accuracy": {
        True: "for balanced accuracy, a BCa bootstrap of the patients (all films of a patient resampled together), "
              "widened to hold it over the exact interval of a class's recall of 0 or 1 or of a class of fewer than "
              f"{FEW_PATIENTS} patients, or, where every resample gives one value, the Bonferroni bound from the "
              "classes' recall intervals",
        False: "for balanced accuracy, a BCa bootstrap of the films (resampled within each class), widened to hold "
               "it over the exact interval of a class's recall of 0 or 1, or, where every resample gives one value, "
               "the Bonferroni bound from the classes' recall intervals"},
    "macro_auc": {True: f"for macro AUC, {AUC_INTERVAL} summed by patient, with a t quantile",
                  False: f"for macro AUC, {AUC_INTERVAL}, with a t quantile"},
}
# what intervals that count films (``ci_unit`` "film") leave out, wherever figures with them are shown
FILM_UNIT_CAVEAT = ("The intervals count each film as an independent case: no two films share a patient id (from file "
                    "names, a manifest's patient column or DICOM headers), so with several films of one patient the "
                    "true uncertainty is larger than they show.")


def unit_caveat(result: Mapping[str, Any]) -> str:
    """What a result's intervals leave out of their unit, wherever they are shown ("" when nothing): counting films
    (:data:`FILM_UNIT_CAVEAT`), or counting patients with films among them that carry no patient id
    (``films_without_patient_id``, which evaluate records): each such film is a patient of its own, copies of one
    picture one, and that alone can make the unit "patient" (two copies) while the ids are unknown."""
    if result.get("ci_unit") != "patient":
        return FILM_UNIT_CAVEAT
    if without := result.get("films_without_patient_id"):
        return (f"{without} of the {result['n']} films carry no patient id (from file names, a manifest's patient "
                "column or DICOM headers) and are counted as patients of their own (copies of one picture as one), "
                "so with several films of one patient among them the true uncertainty is larger than the intervals "
                "show.")
    return ""


# why intervals count patients where they do: said by ci_method_sentence, or by a report's table beside it
PATIENT_UNIT = "count patients, not films, since one patient's films are scored alike"


def ci_method_sentence(unit: str, proportions: str, others: Sequence[str], of: str = "",
                       unit_said: bool = True) -> str:
    """How 95% CIs that count ``unit`` ("patient" or "film", as ``ci_unit`` records it) were made: Clopper-Pearson
    for the PROPORTIONS named (by patient at an effective sample size, :func:`proportion_ci`), and for each of the
    OTHERS ("auc", "f1", "balanced_accuracy", "macro_auc") its own method; ``of`` (" of DATA") says whose;
    ``unit_said`` False where the text beside it says that they count patients (:data:`PATIENT_UNIT`: a report's
    table). One wording for reports and model cards, so that none drifts from what this package computes."""
    how = "; ".join(_CI_METHODS[key][unit == "patient"] for key in others)
    if unit == "patient":
        return (f"95% CIs{of}{f' {PATIENT_UNIT}' if unit_said else ''}: Clopper-Pearson at the effective number of "
                f"cases (Korn-Graubard) for {proportions}; {how}.")
    return f"95% CIs{of}: exact Clopper-Pearson for {proportions}; {how}."


ROWS_AT_ONCE = 4_000_000  # resamples times units counted at once (:func:`_row_counts`)


def _row_counts(draws: np.ndarray, size: int) -> np.ndarray:
    """How often each of ``size`` units is drawn in each row of ``draws``, as floats (n_rows, size), counted a few
    rows at a time so that no more than the result is held beside the draws."""
    out = np.empty((draws.shape[0], size))
    step = max(1, ROWS_AT_ONCE // max(size, 1))
    for start in range(0, draws.shape[0], step):
        rows = draws[start:start + step]
        offsets = size * np.arange(rows.shape[0])[:, None]
        out[start:start + step] = np.bincount((rows + offsets).ravel(), minlength=rows.shape[0] * size).reshape(
            rows.shape[0], size)
    return out


def _bootstrap_counts(y: np.ndarray, patients: np.ndarray | None, n_boot: int,
                      seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n_boot, units): how many times each unit (patient, or film without ``patients``) is in each resample, and
    each film's unit: :func:`_bootstrap_weights` without a column a film, as a patient's films are drawn together. A
    sum over films in each resample is ``counts @ np.bincount(units, x)``: at 100,000 films of 40,000 patients
    the films' weights took 0.8 GB for 1,000 resamples, the patients' 0.3."""
    rng = np.random.default_rng(seed)
    if patients is None:
        classes = [np.flatnonzero(y == c) for c in np.unique(y)]
        draws = np.concatenate([g[rng.integers(0, g.size, size=(n_boot, g.size))] for g in classes], axis=1)
        return _row_counts(draws, y.size), np.arange(y.size)
    m = int(patients.max()) + 1
    return _row_counts(rng.integers(0, m, size=(n_boot, m)), m), patients


def _bootstrap_weights(y: np.ndarray, patients: np.ndarray | None, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n): how many times each film is in each resample.

    Without patients, films are resampled within their class, so class sizes stay fixed and AUC is defined in every
    resample. With them, patients are resampled and all films of a patient come along: one patient's films are
    scored alike, so they are one case, not several. Class sizes then vary, and a resample may lack a class.
    """
    counts, units = _bootstrap_counts(y, patients, n_boot, seed)
    return counts[:, units]


def _resampled_sums(counts: np.ndarray, units: np.ndarray, films: np.ndarray) -> np.ndarray:
    """Each resample's sum of ``films`` (one value a film) by :func:`_bootstrap_counts`' ``counts`` and ``units``:
    the films' weights times ``films``, summed by unit first (exact for counts and whole numbers)."""
    return counts @ np.bincount(units, films, counts.shape[1])


def clopper_pearson(k: int, n: int, alpha: float = ALPHA) -> list[float]:
    """Exact (Clopper-Pearson) interval of the proportion k / n, NaN when n = 0. Unlike a bootstrap it never has
    zero width: a bootstrap of 30 detected out of 30 only ever resamples 30 of 30, yet 30/30 is compatible with a
    true rate of 0.884."""
    if not n:
        return [math.nan, math.nan]
    return _beta_ends(float(k), float(n), alpha)


def _beta_ends(x: float, n: float, alpha: float) -> list[float]:
    """Clopper-Pearson's ends for x hits of n (both may be real-valued, as an effective sample size makes them):
    the beta quantiles that invert the binomial tails, taken from scipy's special function directly. scipy's
    ``binomtest(...).proportion_ci`` finds the same ends (within 1e-12) by root-finding on the binomial
    distribution and computes a p-value first: 2.7 ms an interval against a few microseconds, which was most of
    the time of an evaluation's intervals (five proportions a threshold)."""
    from scipy.special import betaincinv
    low = float(betaincinv(x, n - x + 1, alpha / 2)) if x > 0 else 0.0
    high = float(betaincinv(x + 1, n - x, 1 - alpha / 2)) if x < n else 1.0
    return [low, high]


def clustered_size(hits: np.ndarray, patients: np.ndarray, alpha: float = ALPHA) -> float:
    """The independent films a rate of ``hits`` (one bool a film) is worth where its films cluster in ``patients``
    (one id a film): Korn & Graubard's (1998) effective sample size, the survey-statistics standard for clustered
    proportions, the one rule of every clustered rate's interval (:func:`proportion_ci`,
    :func:`~.differences.paired_rate_ci`).

    One patient's films tend to be called alike, so k of n films carry less evidence than k of n patients would.
    The patients' (linearisation) variance of p = k / n, v = m / (m - 1) * sum_c (k_c - p n_c)^2 / n^2, against the
    binomial p (1 - p) / n gives the design effect d, and n_eff = n / max(d, 1) films are worth independent ones,
    never more than the m patients: at p = 0 or 1 (or with one patient) there is no spread to measure d from, and
    n_eff is m, as if each patient's films agreed fully (30 of 30 films of 10 patients are worth 10 of 10); near
    those rates d comes from the one or two patients with a miss and reads about 1, and without the cap one missed
    film gave a higher lower bound than none. Korn and Graubard's degrees-of-freedom factor (t_{n-1} / t_{m-1})^2
    then narrows n_eff for few patients. Films of as many patients (one film a patient) are the cases themselves:
    n. An AUC's films take another rule (:func:`~.auc_intervals._effective_sizes`: never fewer than the patients
    nor more than the films, no degrees-of-freedom factor), as counting patients made its interval 3-5 times too
    wide; a rate at that rule lets one missed film give a higher lower bound than none, and its intervals held
    the truth in as few as 0.927 of simulated sets (150 + 150 patients at rates of 0.97), where these held it in
    0.960-1.000, and a paired difference's in 0.980-1.000 (docs/results.md)."""
    from scipy.special import stdtrit

    hits = np.asarray(hits, dtype=bool)
    codes = np.unique(patients, return_inverse=True)[1]
    n, m = hits.size, int(codes.max()) + 1
    if m == n:
        return float(n)
    p = float(hits.mean())
    n_eff = float(m)
    if 0 < p < 1 and m > 1:
        spread = np.bincount(codes, weights=hits, minlength=m) - p * np.bincount(codes, minlength=m)
        v = m / (m - 1) * float((spread**2).sum()) / n**2
        n_eff = min(n / max(v / (p * (1 - p) / n), 1.0), float(m))
    if m > 1:
        n_eff *= (float(stdtrit(n - 1, 1 - alpha / 2)) / float(stdtrit(m - 1, 1 - alpha / 2))) ** 2
    return n_eff


def proportion_ci(hits: np.ndarray, patients: np.ndarray | None = None, alpha: float = ALPHA) -> list[float]:
    """Interval of the proportion of ``hits`` (one bool a film): Clopper-Pearson on the films, or, when films
    cluster in ``patients``, Clopper-Pearson at the effective sample size of :func:`clustered_size` (Korn &
    Graubard 1998), the beta quantiles taken at the real-valued x = p n_eff and n_eff. Films of as many patients
    (say, the normal films when only pneumonia patients have several) are the cases themselves: exact
    Clopper-Pearson."""
    k, n = int(hits.sum()), hits.size
    if patients is None or np.unique(patients).size == n:
        return clopper_pearson(k, n, alpha)
    n_eff = clustered_size(hits, patients, alpha)
    return _beta_ends(k / n * n_eff, n_eff, alpha)


def _one_value(samples: np.ndarray) -> bool:
    """Whether every defined resample gave the same value: a bootstrap that shows no spread, so no interval."""
    defined = samples[~np.isnan(samples)]
    return bool(defined.size) and float(defined.max() - defined.min()) == 0.0


def _few_patients(units: np.ndarray, patients: np.ndarray | None) -> bool:
    """Whether a class's films, by their ``units`` (patients, or films where ``patients`` is None), are too few
    patients' (fewer than FEW_PATIENTS) for a bootstrap of the patients to show the spread between them: a resample
    without the class is left out, so with one patient every resample kept has that patient's rate, and with two to
    four the resamples only reshuffle a few patients' rates, which are most of the uncertainty where a patient's
    films are called alike. There the bootstrap covered 0.71-0.92 of simulated sets (balanced accuracy with a class
    of 1 to 4 patients, F1 with 2 to 4 positive patients; 0.91-0.93 with five, 0.94-0.95 with 12 to 15), and the
    widenings this calls for 0.99-1.00. Films counted alone are resampled within their class, which covered 0.99-1.00
    with a class of 2 or 3 films: too few only when there is one."""
    return len(np.unique(units)) < (2 if patients is None else FEW_PATIENTS)


def _at_an_edge(hits: np.ndarray) -> bool:
    """Whether a proportion is 0 or 1 on these films: so in every resample too, so a bootstrap shows none of its
    uncertainty (:func:`_stretched`)."""
    return bool(hits.size) and (hits.all() or not hits.any())


def _stretched(ci: list[float], values: Sequence[float]) -> list[float]:
    """``ci`` widened to hold ``values``: a figure with a proportion at an edge (:func:`_at_an_edge`), or of too few
    patients (:func:`_few_patients`), taken at each end of that proportion's exact interval, the rest as observed. A
    bootstrap resamples a rate of 1 as 1 only, so a figure built on one (F1 with every positive film found, a
    balanced accuracy with a class all right) had an interval of the other parts' spread alone: F1's covered
    0.85-0.92 of simulated sets of 2 to 5 positive films among 50 to 100, balanced accuracy's 0.85 with a class of 5
    films beside two of 50 (stretched: 0.99-1.00; on benchmarks/bench_ci_coverage.py's sets of 12 and 30 patients a
    class, 2-9 % wider). An interval that is not given (NaN) stays so."""
    defined = [v for v in values if not math.isnan(v)]
    if math.isnan(ci[0]) or math.isnan(ci[1]) or not defined:
        return ci
    return [min(ci[0], *defined), max(ci[1], *defined)]


def _bca_ci(samples: np.ndarray, estimate: float, jackknife: np.ndarray, alpha: float) -> list[float]:
    """Bias-corrected and accelerated (BCa) bootstrap interval (Efron 1987, JASA 82:171; Efron & Tibshirani 1993,
    ch. 14): the percentile interval taken at levels moved by the bias z0 (where ``estimate`` falls among the
    resamples, ties half) and the acceleration a (the skewness of the leave-one-unit-out ``jackknife`` values).
    The plain percentile interval is too narrow on small sets (F1 at 12 + 12 patients: 0.89-0.93 coverage, BCa
    0.95-0.96). NaN when no resample is defined or the interval has no width ([x, x] would present x as certain),
    and where the levels are out of the formula's reach: the estimate outside every resample (z0 infinite), or
    a(z0 + z) >= 1."""
    from scipy.special import ndtr, ndtri  # the normal's cdf and quantile, without scipy.stats' checks per call
    defined = samples[~np.isnan(samples)]
    if not defined.size or math.isnan(estimate):
        return [math.nan, math.nan]
    z0 = ndtri((np.sum(defined < estimate) + np.sum(defined == estimate) / 2) / defined.size)
    spread = jackknife[~np.isnan(jackknife)]
    d = spread.mean() - spread if spread.size else spread
    ss = float((d**2).sum())
    accel = float((d**3).sum()) / (6 * ss**1.5) if ss > 0 else 0.0
    shift = z0 + ndtri(np.array([alpha / 2, 1 - alpha / 2]))
    if not math.isfinite(z0) or (accel * shift >= 1).any():
        return [math.nan, math.nan]
    levels = ndtr(z0 + shift / (1 - accel * shift))
    lo, hi = (float(v) for v in np.percentile(defined, 100 * levels))
    return [lo, hi] if lo < hi else [math.nan, math.nan]


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
    they are worth (:func:`~pneumoscan.core.metrics.auc_intervals._auc_ci`).
    F1 gets a BCa bootstrap (:func:`_bca_ci`), all thresholds sharing one set of resamples; resamples where F1 is
    undefined are left out. A plain percentile bootstrap covered only 0.86-0.89 (AUC) and 0.90-0.93 (F1) at
    12 + 12 patients. Where recall is 0 or 1, which no resample changes, the interval is widened to hold F1 over
    recall's exact interval (:func:`_stretched`); where the positive films are too few patients' for the bootstrap
    (:func:`_few_patients`), or every resample gives one value, F1 takes the Bonferroni bound from recall's and
    precision's exact intervals.

    ``groups`` (one patient id per film) makes the patient the unit where some patient has several films, since
    one patient's films are scored alike: the proportions take an effective sample size (:func:`proportion_ci`),
    AUC's variance sums by patient, and the bootstrap resamples patients (its jackknife leaves one out). Without
    ids, or with one film per patient, every film is an independent case and the bootstrap is stratified (each
    class resampled within itself, so both are in every resample).
    """
    y, p = _as_binary(y_true, prob)
    patients = _patient_codes(groups, y.size)
    counts, resampled = _bootstrap_counts(y, patients, n_boot, seed)
    positive = y == 1
    n_pos = _resampled_sums(counts, resampled, positive)
    auc = _auc_ci(p, positive, patients, ALPHA)
    out = []
    for threshold in thresholds:
        called = p >= threshold
        out.append({
            "auc": auc,
            "accuracy": proportion_ci(called == positive, patients),
            "sensitivity": _among(called, positive, patients),
            "specificity": _among(~called, ~positive, patients),
            "precision": _among(positive, called, patients),
            "npv": _among(~positive, ~called, patients),
            "f1": _f1_ci(called, positive, patients, counts, resampled, n_pos),
        })
    return out


def _among(hits: np.ndarray, films: np.ndarray, patients: np.ndarray | None, alpha: float = ALPHA) -> list[float]:
    """The exact interval of the share of ``films`` (a mask) that are ``hits``, by patient with ``patients``
    (:func:`proportion_ci`)."""
    return proportion_ci(hits[films], None if patients is None else patients[films], alpha)


def _units(patients: np.ndarray | None, size: int) -> np.ndarray:
    """What a bootstrap resamples and its jackknife leaves out: each film's patient, or each film alone."""
    return np.arange(size) if patients is None else patients


def _f1_ci(called: np.ndarray, positive: np.ndarray, patients: np.ndarray | None, counts: np.ndarray,
           resampled: np.ndarray, n_pos: np.ndarray) -> list[float]:
    """F1's interval at one threshold (:func:`threshold_metrics_ci`): a BCa bootstrap of the resamples every
    threshold shares (``counts`` of the ``resampled`` units, with ``n_pos`` positive films each), widened over
    recall's exact interval at a recall of 0 or 1 (:func:`_f1_at_recall_ends`), or the Bonferroni bound where the
    bootstrap cannot show the spread."""
    tp, fp = (_resampled_sums(counts, resampled, hits) for hits in (called & positive, called & ~positive))
    with np.errstate(divide="ignore", invalid="ignore"):  # 2 tp / (2 tp + fp + fn), with fn = n_pos - tp;
        # undefined (left out) in a resample without a positive film, where it had read 0 after a false positive
        f1 = np.where(n_pos > 0, 2 * tp / (tp + fp + n_pos), np.nan)
    units = _units(patients, called.size)
    if (_one_value(f1) or _few_patients(units[positive], patients)) and called.any() and positive.any():
        # every resample gave one value (a perfect call, say), or the positives are too few patients' for a
        # bootstrap of them to show the spread between them (:func:`_few_patients`): F1 = 2 P R / (P + R) grows
        # with precision P and recall R, so their exact intervals at alpha / 2 each (Bonferroni) bound it
        ends = zip(_among(called, positive, patients, ALPHA / 2), _among(positive, called, patients, ALPHA / 2))
        return [_ratio(2 * recall * precision, recall + precision) if recall + precision else 0.0
                for recall, precision in ends]
    num, den = 2.0 * (called & positive), called + positive.astype(float)  # per film
    return _stretched(_bca_ci(f1, _ratio(num.sum(), den.sum()), _ratio_jackknife(num, den, units), ALPHA),
                      _f1_at_recall_ends(called, positive, patients))


def _f1_at_recall_ends(called: np.ndarray, positive: np.ndarray, patients: np.ndarray | None) -> list[float]:
    """F1 = 2 R n / (n (1 + R) + fp), of the recall R over n positive films and the fp false positives, at each end of
    recall's exact interval (:func:`_among`), the false positives as observed, for :func:`_stretched`; none when
    recall is neither 0 nor 1. (A false-positive rate of 0 beside a recall below 1 needs none: on sets of 5 to 100
    positive films with one or two missed and 3 to 100 negative ones, the resampled misses always spread F1
    further.)"""
    if not _at_an_edge(called[positive]):
        return []
    n, fp = int(positive.sum()), int((called & ~positive).sum())
    return [_ratio(2 * r * n, n * (1 + r) + fp) for r in _among(called, positive, patients)]


def _balanced_accuracy_ci(y: np.ndarray, pred: np.ndarray, in_class: Sequence[np.ndarray],
                          patients: np.ndarray | None, balanced: float, n_boot: int) -> list[float]:
    """Interval of the balanced accuracy (the mean of the classes' recalls, ``balanced``): a BCa bootstrap of the
    films, or of the patients with ``patients``, as F1's (:func:`threshold_metrics_ci`): at a balanced accuracy of
    0.984 the percentile interval covered 0.81 of simulated sets of 30 patients a class, BCa 0.92
    (benchmarks/bench_ci_coverage.py). Where every resample gives one value, the mean of the classes' exact recall
    intervals at alpha / k (Bonferroni); where a class's recall is 0 or 1, or its films are too few patients' for the
    bootstrap (:func:`_few_patients`: 6 films of one patient, half right, had 0.698-0.801 beside two classes of 30,
    narrower than with 6 patients), widened to hold the balanced accuracy over that recall's exact interval
    (:func:`_stretched`), the other classes' recalls as observed."""
    counts, resampled = _bootstrap_counts(y, patients, n_boot, BOOTSTRAP_SEED)
    with np.errstate(divide="ignore", invalid="ignore"):  # a class without films: its recall and the mean are NaN
        boot = np.mean([_resampled_sums(counts, resampled, c & (pred == y)) / _resampled_sums(counts, resampled, c)
                        for c in in_class], axis=0)
    units = _units(patients, y.size)
    jackknife = np.mean([_ratio_jackknife((c & (pred == y)).astype(float), c.astype(float), units)
                         for c in in_class], axis=0)
    if _one_value(boot) and all(c.any() for c in in_class):
        recalls = [_among(pred == y, c, patients, ALPHA / len(in_class)) for c in in_class]
        return [float(end) for end in np.mean(recalls, axis=0)]
    # each class whose films are all right (or all wrong), or are too few patients', at either end of its exact
    # recall interval, the others as observed (:func:`_stretched`)
    right = [(pred == y)[c] for c in in_class]
    edges = [_among(pred == y, c, patients) if _at_an_edge(hits) or _few_patients(units[c], patients)
             else [_ratio(hits.sum(), hits.size)] * 2 for hits, c in zip(right, in_class)]
    return _stretched(_bca_ci(boot, balanced, jackknife, ALPHA), [float(np.mean(end)) for end in zip(*edges)])


def net_benefit_ci(y_true: Any, prob: Any, thresholds: Sequence[float], n_boot: int = 1000,
                   seed: int = BOOTSTRAP_SEED, groups: Any = None) -> list[list[float]]:
    """95% intervals of the net benefit TP/n - FP/n * pt / (1 - pt) of calling positive the films whose ``prob`` is at
    least each threshold probability pt (:func:`~pneumoscan.core.metrics.summaries.net_benefit`), one [low, high] a
    threshold: a BCa bootstrap (:func:`_bca_ci`) of the same resamples as F1's (:func:`_bootstrap_counts`: patients
    with ``groups``, all of a patient's films together, else films within their class), every threshold sharing
    them. Net benefit is Se P - (1 - Sp)(1 - P) pt / (1 - pt) at the films' prevalence P, rising with sensitivity Se
    and specificity Sp; where one of them is 0 or 1, which no resample changes, the interval is widened to hold net
    benefit over that rate's exact interval, the other as observed (:func:`_stretched`); where every resample gives
    one value (nothing called: 0 in each), or the positive films are too few patients' for a bootstrap of them
    (:func:`_few_patients`, as F1's interval), it is the Bonferroni bound from the exact intervals of both rates
    and of the prevalence (which resampled patients let vary, as a cohort's does) at 1 - 0.05/3 each. NaN where the
    films leave it undefined (a class without films and a rate at an edge)."""
    y, p = _as_binary(y_true, prob)
    pt = np.asarray(thresholds, dtype=float).ravel()
    if not ((pt > 0) & (pt < 1)).all():
        raise ValueError("a decision curve's threshold probabilities lie strictly between 0 and 1")
    patients = _patient_codes(groups, y.size)
    counts, resampled = _bootstrap_counts(y, patients, n_boot, seed)
    positive = y == 1
    films = _resampled_sums(counts, resampled, np.ones(y.size))
    called_at = p[None, :] >= pt[:, None]
    true_pos, false_pos = _positives_resampled(called_at, positive, counts, resampled)
    cached: dict[tuple[str, bytes, float], list[float]] = {}

    def rate_ends(name: str, hits: np.ndarray, of: np.ndarray, alpha: float) -> list[float]:
        """A rate's exact interval; the same hits among the same films (a rate at an edge, say) give the same one
        at every threshold, so it is computed once for them."""
        key = (name, hits[of].tobytes(), alpha)
        if key not in cached:
            cached[key] = _among(hits, of, patients, alpha)
        return cached[key]

    out = []
    for i, threshold in enumerate(pt):
        odds = threshold / (1 - threshold)
        # from each resample's counts: resamples of the same counts give one value
        samples = (true_pos[:, i] - odds * false_pos[:, i]) / films
        out.append(_net_benefit_interval(called_at[i], positive, odds, samples, patients, rate_ends))
    return [[float(v) for v in ci] for ci in out]


def _positives_resampled(called_at: np.ndarray, positive: np.ndarray, counts: np.ndarray,
                         resampled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each resample's true and false positives at every threshold (``called_at``: a row a threshold) at once,
    summed by unit first (whole numbers, so exact): one product, where a product a threshold took 2 s for 624 films
    and 100 thresholds."""
    by_unit = np.zeros((counts.shape[1], 2 * called_at.shape[0]))
    np.add.at(by_unit, resampled, np.concatenate([called_at & positive, called_at & ~positive]).T)
    true_pos, false_pos = np.split(counts @ by_unit, 2, axis=1)
    return true_pos, false_pos


def net_benefit_of_rates(sensitivity: Any, specificity: Any, prevalence: Any, odds: Any) -> Any:
    """Net benefit Se P - (1 - Sp)(1 - P) x odds of a test of this ``sensitivity`` Se and ``specificity`` Sp among
    films of this ``prevalence`` P, at threshold odds pt / (1 - pt): TP/n - FP/n x odds written by its rates, so it
    rises with both and can be recomputed at a clinic's prevalence. The one place the formula is written (arrays
    elementwise)."""
    return np.multiply(sensitivity, prevalence) - np.multiply(np.subtract(1, specificity),
                                                              np.subtract(1, prevalence)) * odds


def net_benefit_parts(called: np.ndarray, positive: np.ndarray, odds: Any) -> np.ndarray:
    """Each film's part of n times the net benefit TP/n - FP/n x odds: 1 a true positive, -odds a false positive, 0
    otherwise (``odds`` a column a row of ``called``, for several at once), whose mean over films is the net
    benefit."""
    return (called & positive) - odds * (called & ~positive)


def _net_benefit_interval(called: np.ndarray, positive: np.ndarray, odds: float, samples: np.ndarray,
                          patients: np.ndarray | None,
                          rate_ends: Callable[[str, np.ndarray, np.ndarray, float], list[float]]) -> list[float]:
    """The net benefit's interval at one threshold of ``odds`` (:func:`net_benefit_ci`): a BCa bootstrap of its
    resampled values (``samples``), widened over the exact interval of a sensitivity or specificity of 0 or 1
    (``rate_ends``), or the Bonferroni bound where every resample gives one value or the positive films are too few
    patients' for the bootstrap (:func:`_few_patients`, as F1's: 40 patients at a prevalence of 0.12, fewer than 5
    of them positive, had the bootstrap cover 0.889 at pt 0.3)."""
    prevalence = _ratio(int(positive.sum()), positive.size)
    value = net_benefit_parts(called, positive, odds)
    estimate = float(value.mean())

    def at(se: float, sp: float, share: float = prevalence) -> float:
        return float(net_benefit_of_rates(se, sp, share, odds))

    se, sp = _ratio(int((called & positive).sum()), int(positive.sum())), _ratio(
        int((~called & ~positive).sum()), int((~positive).sum()))
    units = _units(patients, called.size)
    if _one_value(samples) or (positive.any() and _few_patients(units[positive], patients)):
        # nothing called, say, or too few positive patients: no spread (or too little) for a bootstrap to show
        # it rises with Se, Sp and the prevalence P, so their exact intervals at alpha / 3 each bound it: resampled
        # patients let P vary as a cohort's does, and the rates' bound at P as observed (2 positive patients of 40,
        # say, where 0.12 was drawn) covered 0.60-0.96 of cohorts of 40 at 0.12 (benchmarks/bench_ci_coverage.py)
        (se_low, se_high), (sp_low, sp_high), (p_low, p_high) = (
            rate_ends("sensitivity", called, positive, ALPHA / 3),
            rate_ends("specificity", ~called, ~positive, ALPHA / 3),
            rate_ends("prevalence", positive, np.ones_like(positive), ALPHA / 3))
        return [at(se_low, sp_low, p_low), at(se_high, sp_high, p_high)]
    ends = ([at(end, sp) for end in rate_ends("sensitivity", called, positive, ALPHA)]
            if _at_an_edge(called[positive]) else [])
    ends += ([at(se, end) for end in rate_ends("specificity", ~called, ~positive, ALPHA)]
             if _at_an_edge(~called[~positive]) else [])
    jackknife = _ratio_jackknife(value, np.ones(called.size), units)
    return _stretched(_bca_ci(samples, estimate, jackknife, ALPHA), ends)
