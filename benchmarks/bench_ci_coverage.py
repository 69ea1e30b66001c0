"""How often the 95% intervals of ``threshold_metrics_ci`` cover the truth, on small and large simulated sets, with
one film per patient and with several (counted by film, the patient ids ignored, and by patient), and how long one
call takes.

    python benchmarks/bench_ci_coverage.py [--samples 400] [--boot 1000] [--patients 12 30 150] [--mean 1.2]
    python benchmarks/bench_ci_coverage.py --only regimes [--samples 300]
    python benchmarks/bench_ci_coverage.py --only prevalence|delong-paired|delong-groups [--samples 1000]
    python benchmarks/bench_ci_coverage.py --only net-benefit [--samples 400]
    python benchmarks/bench_ci_coverage.py --only paired-rates [--samples 400] [--films 1]

Each sample draws ``--patients`` pneumonia and as many normal patients, with 1 to 4 films each ("1-4 films") or
one ("1 film"). A film's logit is its class's mean (+-``--mean``: 1.2 gives AUC 0.915, 2.32 gives AUC 0.996 and
sensitivity 0.970, where the shipped models work), plus the patient's effect (sd 1.2, shared by the patient's
films), plus the film's own (sd 0.3): a patient's films are scored alike, as in the Kermany data. The
truths follow from the model in closed form: each class's logit is normal with sd hypot(1.2, 0.3), so
sensitivity = specificity = r = P(logit >= 0 | pneumonia); the classes have as many films on average, so precision,
accuracy and F1 at 0.5 are r too; ROC AUC = Phi(2 * 1.2 / (sd * sqrt 2)). A 95% interval should cover them in
about 95% of samples (+-0.02 at 400 samples). An interval that is not given (NaN; perfectly separated classes
and a perfect call get bounds instead) counts as not covering.

``--only regimes``: the AUC's interval alone where the binary tables do not look: unequal classes (30 + 300 and
300 + 30 patients, 12 + 120), films of a patient scored nearly independently (patient sd 0.3, film sd 1.2),
unequal spreads (positives' twice or half the negatives'), heavy tails (Student t, 2 df), a mixture (30 % of
pneumonia patients scored as normal ones), and beta-distributed scores; each at AUCs of 0.75 to 0.99, truths from
600,000 single films.

A second table does the same for the three-class macro AUC and balanced accuracy of ``evaluate_multiclass``, by
patient: each of
``--patients`` patients a class has 1 to 4 films, whose three logits are the patient's (sd 1.0, shared) plus the
film's (sd 0.3), with SEPARATION added to its class's; the truths are those of 600,000 patients' single films.

The last five tables, each only with ``--only``, measure what the newer methods promise, on sets like the Kermany
test split (120 pneumonia and 80 normal patients, 1 to ``--films`` (3) films each, about 400 films), the logits as
above (patient sd 1.2, film sd 0.3) with each class's mean set to give the sensitivity, specificity or AUC asked:

- ``prevalence``: ``at_prevalence``'s PPV, NPV, accuracy and net benefit (at 0.5) at prevalences 0.05, 0.1 and 0.3,
  by patient: each interval's coverage and mean width, truths by Bayes from the films' sensitivity and specificity;
  beside them Mercaldo, Lau and Zhou's (2007) logit intervals of PPV and NPV over films (0.5 added to each count
  where one is 0). At 0.5 net benefit is accuracy less 1 - prevalence, so the two cover alike.
- ``delong-paired``: ``compare --auc-test delong``'s interval of two models' AUC difference (score-type; the two
  models share the patient's and the film's effects, each adds its own noise, sd 0.5 a film), which ``compare``
  gives whichever the test, its coverage at a true difference of 0 and of about 0.02 near AUCs of 0.97-0.995 beside
  the alternatives (DeLong's Wald interval, Zou and Donner's MOVER from each AUC's Newcombe or logit interval, the
  patients' percentile bootstrap interval and its BCa form, 2,000 resamples), and the share of sets its test and
  the permutation test reject at 0.05 (at equal AUCs, the test's size).
- ``paired-rates``: ``compare``'s interval of two models' sensitivity difference (Newcombe's, ``paired_rate_ci``)
  beside the patients' percentile bootstrap, on 10 to 120 pneumonia patients with 1 to ``--films`` films each at
  true sensitivities of 0.5 to 0.99 (the two models share the patient's and the film's effects, each adds its own
  noise, sd 1.0 a film): coverage and mean width among the sets given an interval, the share given none (fewer than
  5 patients' calls differ), and Newcombe's coverage over every set.
- ``delong-groups``: the share of sets ``delong_groups`` (``evaluate --by FIELD --auc-test delong``), the same test
  with each group's variance DeLong's at its own AUC, and the permutation test (``auc_difference``) reject at 0.05
  where two or three groups of patients have one AUC.
- ``net-benefit``: ``net_benefit_ci``'s intervals of the decision curve (``evaluate``'s decision_curve.csv) at
  threshold probabilities 0.05 to 0.9, by patient, each one's coverage and mean width, in three designs: cohorts
  (each of 200, or 40, patients pneumonia with chance 0.6, so the set's prevalence varies as a clinic's sample's
  does), fixed classes (120 + 80 patients, as the tables above draw them), and cohorts of 40 at a prevalence of
  0.12 (mostly fewer than 5 positive patients). The truth is the net benefit at the cohort's prevalence (0.6 but in
  the last) of the model's sensitivity and specificity at each threshold probability, in closed form from the
  logits.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import numpy as np
from scipy.stats import norm

from pneumoscan.core.metrics import (at_prevalence, evaluate_multiclass, net_benefit_ci, softmax,
                                     threshold_metrics_ci)
from pneumoscan.core.metrics.differences import auc_difference, delong_groups, paired_differences
from pneumoscan.core.options import AUC_TESTS

SD_PATIENT, SD_FILM = 1.2, 0.3
FIGURES = ("auc", "f1", "sensitivity", "specificity", "precision", "accuracy")


def truths(mean: float) -> dict[str, float]:
    """A random film's figures under the model (see the module docstring)."""
    sd = math.hypot(SD_PATIENT, SD_FILM)
    rate = float(norm.cdf(mean / sd))
    return {name: rate for name in FIGURES} | {"auc": float(norm.cdf(2 * mean / (sd * math.sqrt(2))))}


def sample(rng: np.random.Generator, patients: int, mean: float, max_films: int = 4,
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, probabilities and patient ids of one simulated data set (patients 0..p-1 pneumonia, then normal)."""
    films = rng.integers(1, max_films + 1, 2 * patients)
    patient = np.repeat(np.arange(2 * patients), films)
    y = (patient < patients).astype(int)
    logit = mean * (2 * y - 1) + rng.normal(0, SD_PATIENT, 2 * patients)[patient] + rng.normal(0, SD_FILM, patient.size)
    return y, 1 / (1 + np.exp(-logit)), patient


def coverage(patients: int, max_films: int, samples: int, boot: int, mean: float) -> dict[str, tuple[dict, float]]:
    """Per unit ("film": ids ignored; "patient", where films cluster): each figure's coverage, and AUC's mean width."""
    truth = truths(mean)
    rng = np.random.default_rng(0)
    units = ("film", "patient") if max_films > 1 else ("film",)
    covered = {unit: dict.fromkeys(FIGURES, 0) for unit in units}
    widths: dict[str, list[float]] = {unit: [] for unit in units}
    for i in range(samples):
        y, prob, patient = sample(rng, patients, mean, max_films)
        for unit in units:
            groups = patient if unit == "patient" else None
            ci = threshold_metrics_ci(y, prob, [0.5], n_boot=boot, seed=i, groups=groups)[0]
            for name in FIGURES:
                lo, hi = ci[name]
                covered[unit][name] += bool(lo <= truth[name] <= hi)
            widths[unit].append(ci["auc"][1] - ci["auc"][0])
    return {unit: ({n: c / samples for n, c in covered[unit].items()}, float(np.nanmean(widths[unit])))
            for unit in units}


SEPARATIONS = (1.0, 2.5)  # macro AUC about 0.80 and 0.99


def three_classes(rng: np.random.Generator, patients: int, separation: float,
                  max_films: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Classes, probabilities and patient ids of one three-class data set (see the module docstring)."""
    films = rng.integers(1, max_films + 1, 3 * patients)
    patient = np.repeat(np.arange(3 * patients), films)
    cls = patient // patients
    logits = (separation * np.eye(3)[cls] + rng.normal(0, 1.0, (3 * patients, 3))[patient]
              + rng.normal(0, SD_FILM, (patient.size, 3)))
    return cls, softmax(logits), patient


def macro_coverage(patients: int, separation: float, samples: int, boot: int) -> dict[str, tuple[float, float, float]]:
    """(truth, coverage, mean width) of the macro AUC's and the balanced accuracy's intervals by patient."""
    from sklearn.metrics import roc_auc_score

    y, prob, _ = three_classes(np.random.default_rng(123), 200_000, separation, max_films=1)
    truth = {"macro_auc": float(roc_auc_score(y, prob, multi_class="ovr", average="macro")),
             "balanced_accuracy": float(np.mean([(prob.argmax(axis=1)[y == k] == k).mean() for k in range(3)]))}
    rng, covered, widths = np.random.default_rng(0), dict.fromkeys(truth, 0), {name: [] for name in truth}
    for _ in range(samples):
        y, prob, patient = three_classes(rng, patients, separation)
        ci = evaluate_multiclass(y, prob, ["a", "b", "c"], n_boot=boot, groups=patient)["ci"]
        for name in truth:
            lo, hi = ci[name]
            covered[name] += lo is not None and lo <= truth[name] <= hi
            widths[name].append(math.nan if lo is None else hi - lo)
    return {name: (truth[name], covered[name] / samples, float(np.nanmean(widths[name]))) for name in truth}


def _binormal(sd_patient: float, sd_film: float, positive_scale: float = 1.0) -> Callable:
    def scores(rng: np.random.Generator, positive: bool, shift: float, patient: np.ndarray) -> np.ndarray:
        scale = positive_scale if positive else 1.0
        patients = patient.max() + 1
        return (positive * shift + scale * (rng.normal(0, sd_patient, patients)[patient]
                                            + rng.normal(0, sd_film, patient.size)))
    return scores


def _heavy(df: float) -> Callable:
    def scores(rng: np.random.Generator, positive: bool, shift: float, patient: np.ndarray) -> np.ndarray:
        own = SD_FILM * rng.standard_t(df, patient.size)
        return positive * shift + rng.standard_t(df, patient.max() + 1)[patient] + own
    return scores


def _mixture(hard: float) -> Callable:
    def scores(rng: np.random.Generator, positive: bool, shift: float, patient: np.ndarray) -> np.ndarray:
        patients = patient.max() + 1
        easy = rng.random(patients) > hard
        return (positive * shift * easy[patient] + rng.normal(0, 1.0, patients)[patient]
                + rng.normal(0, SD_FILM, patient.size))
    return scores


def _beta(positive_ab: tuple[float, float], negative_ab: tuple[float, float]) -> Callable:
    """Class-specific beta scores through a Gaussian copula of the patient's and the film's effects."""
    from scipy.stats import beta

    def scores(rng: np.random.Generator, positive: bool, shift: float, patient: np.ndarray) -> np.ndarray:
        z = rng.normal(0, 1.0, patient.max() + 1)[patient] + rng.normal(0, SD_FILM, patient.size)
        return beta.ppf(norm.cdf(z / math.hypot(1.0, SD_FILM)), *(positive_ab if positive else negative_ab))
    return scores


def _true_auc(scores: Callable, shift: float, films: int = 600_000) -> float:
    from sklearn.metrics import roc_auc_score

    rng, each = np.random.default_rng(99), np.arange(films // 2)
    y = np.r_[np.ones(each.size), np.zeros(each.size)]
    return float(roc_auc_score(y, np.r_[scores(rng, True, shift, each), scores(rng, False, shift, each)]))


def regimes(samples: int) -> None:
    """The AUC interval's coverage and mean width by patient in the settings of ``--only regimes``."""
    from scipy.optimize import brentq

    from pneumoscan.core.metrics import _auc_ci

    shifted = {"binormal, films of a patient alike": _binormal(SD_PATIENT, SD_FILM),
               "binormal, films nearly independent": _binormal(SD_FILM, SD_PATIENT),
               "positives' spread x2": _binormal(SD_PATIENT, SD_FILM, 2.0),
               "positives' spread x0.5": _binormal(SD_PATIENT, SD_FILM, 0.5),
               "Student t, 2 df": _heavy(2), "30 % of pneumonia scored as normal": _mixture(0.3)}
    settings = [(name, scores, brentq(lambda s: _true_auc(scores, s, 100_000) - target, 0.0, 20.0, xtol=1e-3))
                for name, scores in shifted.items() for target in (0.75, 0.9, 0.99)
                if _true_auc(scores, 20.0, 100_000) > target]  # a mixture's AUC stays below 1 - its hard share
    settings += [(f"beta{a} vs beta{b}", _beta(a, b), 0.0) for a, b in (((5, 2), (2, 5)), ((20, 1), (1, 1)))]
    print("| scores | true AUC | patients | films each | coverage | mean width |")
    print("| --- " * 6 + "|")
    for name, scores, shift in settings:
        truth = _true_auc(scores, shift)
        for positives, negatives, max_films in ((30, 300, 4), (300, 30, 4), (12, 120, 4), (30, 30, 4), (150, 150, 4)):
            rng, covered, widths = np.random.default_rng(0), 0, []
            for _ in range(samples):
                films = rng.integers(1, max_films + 1, positives + negatives)
                patient = np.repeat(np.arange(positives + negatives), films)
                positive = patient < positives
                score = np.empty(patient.size)
                score[positive] = scores(rng, True, shift, patient[positive])
                score[~positive] = scores(rng, False, shift, patient[~positive] - positives)
                lo, hi = _auc_ci(score, positive, patient, 0.05)
                covered += bool(lo <= truth <= hi)
                widths.append(hi - lo)
            print(f"| {name} | {truth:.3f} | {positives} + {negatives} | 1-{max_films} | {covered / samples:.3f} | "
                  f"{np.nanmean(widths):.3f} |", flush=True)


SD_TOTAL = math.hypot(SD_PATIENT, SD_FILM)
SD_MODEL = 0.5  # each model's own noise on a film, beside the effects two models share (``delong-paired``)
PREVALENCES = (0.05, 0.1, 0.3)
KERMANY_LIKE = (120, 80)  # pneumonia and normal patients of the last three tables


def _patients(rng: np.random.Generator, positives: int, negatives: int, max_films: int,
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each film's class (positive), patient and shared logit noise (the patient's effect plus the film's)."""
    films = rng.integers(1, max_films + 1, positives + negatives)
    patient = np.repeat(np.arange(positives + negatives), films)
    noise = rng.normal(0, SD_PATIENT, positives + negatives)[patient] + rng.normal(0, SD_FILM, patient.size)
    return patient < positives, patient, noise


def _bayes(se: float, sp: float, prevalence: float) -> dict[str, float]:
    """The truths at a prevalence, written out here rather than taken from the code under test; net benefit at 0.5."""
    tp, fp, tn, fn = se * prevalence, (1 - sp) * (1 - prevalence), sp * (1 - prevalence), (1 - se) * prevalence
    return {"precision": tp / (tp + fp), "npv": tn / (tn + fn), "accuracy": tp + tn, "net_benefit": tp - fp}


def _mercaldo(se: float, sp: float, positives: int, negatives: int, prevalence: float) -> dict[str, list[float]]:
    """Mercaldo, Lau & Zhou's (2007) logit intervals of PPV and NPV from films' sensitivity and specificity, 0.5
    added to each of the four counts where one is 0 (a Haldane correction), which the plain logit cannot take."""
    hits, misses = np.array([se * positives, sp * negatives]), np.array([(1 - se) * positives, (1 - sp) * negatives])
    if (np.round(hits) == 0).any() or (np.round(misses) == 0).any():
        hits, misses = hits + 0.5, misses + 0.5
    (se, sp), (n_pos, n_neg) = hits / (hits + misses), hits + misses
    z, odds = float(norm.isf(0.025)), prevalence / (1 - prevalence)
    out = {}
    for name, logit, variance in (
            ("precision", math.log(se * odds / (1 - sp)), (1 - se) / (se * n_pos) + sp / ((1 - sp) * n_neg)),
            ("npv", math.log(sp / ((1 - se) * odds)), se / ((1 - se) * n_pos) + (1 - sp) / (sp * n_neg))):
        out[name] = [1 / (1 + math.exp(-(logit + side * z * math.sqrt(variance)))) for side in (-1, 1)]
    return out


def prevalence_coverage(samples: int, max_films: int) -> None:
    """``--only prevalence``: at_prevalence's intervals by patient, and Mercaldo's over films, at PREVALENCES."""
    positives, negatives = KERMANY_LIKE
    print(f"{samples} sets a setting of {positives} + {negatives} patients, 1-{max_films} films each; "
          "coverage (mean width); each coverage within about "
          f"{2 * math.sqrt(0.05 * 0.95 / samples):.3f} of its expectation at 0.95 (two standard errors)")
    print("| sensitivity, specificity | prevalence | PPV | NPV | accuracy | net benefit at 0.5 | PPV, Mercaldo | "
          "NPV, Mercaldo |")
    print("| --- " * 8 + "|")
    for se, sp in ((0.97, 0.85), (0.995, 0.99)):
        shift_pos, shift_neg = SD_TOTAL * float(norm.ppf(se)), SD_TOTAL * float(norm.ppf(sp))
        truth = {p: _bayes(se, sp, p) for p in PREVALENCES}
        names = ("precision", "npv", "accuracy", "net_benefit")
        covered = {(p, n): [] for p in PREVALENCES for n in (*names, "precision_m", "npv_m")}
        widths = {key: [] for key in covered}
        rng = np.random.default_rng(0)
        for _ in range(samples):
            positive, patient, noise = _patients(rng, positives, negatives, max_films)
            logit = np.where(positive, shift_pos, -shift_neg) + noise
            out = at_prevalence(positive.astype(int), 1 / (1 + np.exp(-logit)), 0.5, PREVALENCES, groups=patient)
            for block in out["figures"]:
                p = block["prevalence"]
                mercaldo = _mercaldo(out["sensitivity"], out["specificity"], int(positive.sum()),
                                     int((~positive).sum()), p)
                ends = block["ci"] | {f"{n}_m": mercaldo[n] for n in ("precision", "npv")}
                for key, (lo, hi) in ends.items():
                    covered[p, key].append(bool(lo <= truth[p][key.removesuffix("_m")] <= hi))
                    widths[p, key].append(hi - lo)
        for p in PREVALENCES:
            print(f"| {se}, {sp} | {p} | " + " | ".join(
                f"{np.mean(covered[p, key]):.3f} ({np.nanmean(widths[p, key]):.3f})"
                for key in (*names, "precision_m", "npv_m")) + " |", flush=True)


def _shift(auc: float) -> float:
    """The positives' mean logit above the negatives' that gives this AUC for a model of noise sd SD_MODEL."""
    return math.sqrt(2) * math.hypot(SD_TOTAL, SD_MODEL) * float(norm.ppf(auc))


def _wald(aucs: np.ndarray, covariance: np.ndarray) -> list[float]:
    """DeLong's Wald interval of the second AUC less the first: the difference +- z of its standard errors."""
    half = float(norm.isf(0.025)) * math.sqrt(covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1])
    return [aucs[1] - aucs[0] - half, aucs[1] - aucs[0] + half]


def _mover(aucs: np.ndarray, lows: list[float], highs: list[float], r: float) -> list[float]:
    """Zou and Donner's (2008, Stat Med 27:1693) MOVER interval of the second AUC less the first from each AUC's own
    interval and the correlation r of the two estimates: the variance each end needs recovered from the limits."""
    (a1, a2), (l1, l2), (u1, u2) = aucs, lows, highs
    below = (a2 - l2) ** 2 + (u1 - a1) ** 2 - 2 * r * (a2 - l2) * (u1 - a1)
    above = (u2 - a2) ** 2 + (a1 - l1) ** 2 - 2 * r * (u2 - a2) * (a1 - l1)
    return [a2 - a1 - math.sqrt(max(below, 0.0)), a2 - a1 + math.sqrt(max(above, 0.0))]


def _logit_ci(auc: float, variance: float) -> list[float]:
    """DeLong's interval of one AUC on the logit scale, back-transformed (an AUC of 0 or 1: [auc, auc])."""
    if auc in (0.0, 1.0) or variance <= 0:
        return [auc, auc]
    logit, half = math.log(auc / (1 - auc)), float(norm.isf(0.025)) * math.sqrt(variance) / (auc * (1 - auc))
    return [1 / (1 + math.exp(-(logit + side * half))) for side in (-1, 1)]


PAIRED_INTERVALS = ("score-type", "DeLong Wald", "MOVER, Newcombe", "MOVER, logit", "bootstrap", "BCa")


def _weighted_auc(scores: np.ndarray, positive: np.ndarray, counts: np.ndarray, units: np.ndarray) -> np.ndarray:
    """Each model's AUC in each resample (2, resamples), a film counted as often as its unit (``units``, one a film)
    is drawn in ``counts`` (resamples, units): each positive film's place among the negatives by score found once a
    model (ties counting half), and each resample's negatives counted up to it, a few resamples at a time (the films'
    weights of 2,000 resamples of 100,000 films took 1.6 GB, and this 4.8 GB at its peak, held at once): the
    bootstrap alternatives' AUCs, which compare does not give."""
    from pneumoscan.core.metrics.differences import _ranked_negatives
    from pneumoscan.core.metrics.intervals import ROWS_AT_ONCE

    out = []
    step = max(1, ROWS_AT_ONCE // units.size)
    for s in scores:
        negatives, ends = _ranked_negatives(s, positive)
        aucs = []
        for start in range(0, counts.shape[0], step):
            weights = counts[start:start + step, units]
            below = np.zeros((weights.shape[0], negatives.size + 1))
            np.cumsum(weights[:, negatives], axis=1, out=below[:, 1:])
            placed = (below[:, ends[0]] + below[:, ends[1]]) / 2
            with np.errstate(divide="ignore", invalid="ignore"):
                aucs.append((weights[:, positive] * placed).sum(axis=1)
                            / (weights[:, positive].sum(axis=1) * below[:, -1]))
        out.append(np.concatenate(aucs))
    return np.stack(out)


def _bootstrap_ends(positive: np.ndarray, scores: np.ndarray, patient: np.ndarray) -> dict[str, list[float]]:
    """The AUC difference's percentile and BCa intervals over compare's resamples of patients (2,000, fixed seed),
    BCa's acceleration from each patient left out in turn: the bootstrap alternatives to the score-type interval."""
    from pneumoscan.core.metrics.differences import _paired_resamples
    from pneumoscan.core.metrics.intervals import _bca_ci

    units, unit_of, counts = _paired_resamples(positive, patient)
    drawn = np.diff(_weighted_auc(scores, positive, counts, unit_of), axis=0)[0]
    left = np.diff(_weighted_auc(scores, positive, 1.0 - np.eye(units.size), unit_of), axis=0)[0]
    seen = float(np.diff(_weighted_auc(scores, positive, np.ones((1, units.size)), unit_of), axis=0)[0, 0])
    defined = drawn[np.isfinite(drawn)]
    return {"bootstrap": np.percentile(defined, [2.5, 97.5]).tolist(), "BCa": _bca_ci(defined, seen, left, 0.05)}


def delong_paired_coverage(samples: int, max_films: int) -> None:
    """``--only delong-paired``: the interval of a paired AUC difference ``compare --auc-test delong`` gives (score-
    type) beside the alternatives: DeLong's Wald interval, Zou and Donner's MOVER from each AUC's Newcombe score-type
    interval (evaluate's, ``_auc_ci``) or DeLong logit interval with DeLong's correlation, and the patients'
    bootstrap ``compare`` gives by default; and both tests' rejections at 0.05."""
    from pneumoscan.core.metrics import _auc_ci
    from pneumoscan.core.metrics.auc_intervals import delong_components, delong_covariance

    positives, negatives = KERMANY_LIKE
    print(f"{samples} sets a setting of {positives} + {negatives} patients, 1-{max_films} films each, two models "
          f"sharing the patient's and the film's effects, each its own noise (sd {SD_MODEL} a film); a share near "
          f"0.95 or 0.05 is within about {2 * math.sqrt(0.05 * 0.95 / samples):.3f} (two standard errors); coverage "
          "(mean width)")
    print("| true AUCs | difference | " + " | ".join(PAIRED_INTERVALS[:1]) + " | its misses above, below | "
          + " | ".join(PAIRED_INTERVALS[1:]) + " | rejected at 0.05: DeLong | permutation |")
    print("| --- " * (len(PAIRED_INTERVALS) + 5) + "|")
    for first, second in ((0.97, 0.97), (0.99, 0.99), (0.995, 0.995), (0.97, 0.99), (0.975, 0.995)):
        rng, truth = np.random.default_rng(0), second - first
        ends: dict[str, list[list[float]]] = {name: [] for name in PAIRED_INTERVALS}
        rejected = dict.fromkeys(AUC_TESTS, 0)
        for _ in range(samples):
            positive, patient, noise = _patients(rng, positives, negatives, max_films)
            scores = np.stack([positive * _shift(auc) + noise + rng.normal(0, SD_MODEL, positive.size)
                               for auc in (first, second)])
            called = scores >= np.median(scores, axis=1, keepdims=True)
            for test in AUC_TESTS:
                auc = paired_differences(positive, scores, called, patient, test)["auc"]
                rejected[test] += auc["p"] < 0.05
            ends["score-type"].append(auc["ci"])  # --auc-test delong's (the last), as difference_ci gives it
            for name, found in _bootstrap_ends(positive, scores, patient).items():
                ends[name].append(found)
            components = delong_components(scores, positive)
            covariance = delong_covariance(components, positive, patient)
            aucs = components[:, positive].mean(axis=1)
            r = covariance[0, 1] / math.sqrt(covariance[0, 0] * covariance[1, 1])
            ends["DeLong Wald"].append(_wald(aucs, covariance))
            for name, each in (("MOVER, Newcombe", [_auc_ci(s, positive, patient, 0.05) for s in scores]),
                               ("MOVER, logit", [_logit_ci(a, v) for a, v in zip(aucs, np.diag(covariance))])):
                ends[name].append(_mover(aucs, [e[0] for e in each], [e[1] for e in each], r))
        cells = {}
        for name, found in ends.items():
            lo, hi = np.array(found).T
            cells[name] = f"{np.mean((lo <= truth) & (truth <= hi)):.3f} ({np.mean(hi - lo):.4f})"
        lo, hi = np.array(ends["score-type"]).T
        print(f"| {first}, {second} | {truth:.3f} | {cells['score-type']} | {np.mean(lo > truth):.3f}, "
              f"{np.mean(hi < truth):.3f} | " + " | ".join(cells[name] for name in PAIRED_INTERVALS[1:])
              + f" | {rejected['delong'] / samples:.3f} | {rejected['permutation'] / samples:.3f} |", flush=True)


def _delong_at_estimates(positive: np.ndarray, scores: np.ndarray, group: np.ndarray, patient: np.ndarray) -> float:
    """The p of DeLong's test of independent AUCs with each group's variance DeLong's at its own AUC, the
    alternative ``delong_groups`` is measured against (refused, ValueError, where a group's variance is 0)."""
    from scipy.stats import chi2

    from pneumoscan.core.metrics.auc_intervals import delong_components, delong_covariance

    aucs, variances = [], []
    for g in np.unique(group):
        films = group == g
        components = delong_components(scores[films], positive[films])
        units = np.unique(patient[films], return_inverse=True)[1]
        variances.append(float(delong_covariance(components, positive[films], units)[0, 0]))
        aucs.append(float(components[0, positive[films]].mean()))
    if min(variances) <= 1e-15:
        raise ValueError("a group's AUC has no spread")
    weight = 1 / np.asarray(variances)
    mean = float((weight * aucs).sum() / weight.sum())
    return float(chi2.sf(float((weight * (np.asarray(aucs) - mean) ** 2).sum()), len(aucs) - 1))


def delong_groups_size(samples: int, max_films: int) -> None:
    """``--only delong-groups``: how often DeLong's test (``delong_groups``; beside it, each group's variance
    DeLong's at its own AUC) and the permutation test reject one AUC across groups at 0.05."""
    print(f"{samples} sets a setting, groups of patients with 1-{max_films} films each and one AUC; a share of 0.05 "
          f"is within about {2 * math.sqrt(0.05 * 0.95 / samples):.3f}")
    print("| true AUC | groups (pneumonia + normal patients each) | rejected at 0.05: DeLong | DeLong, variance at "
          "each group's AUC | permutation | DeLong refused |")
    print("| --- " * 6 + "|")
    for auc in (0.97, 0.99):
        for sizes in (((60, 40),) * 2, ((60, 40),) * 3, ((20, 15), (100, 65))):
            rng, rejected, refused = np.random.default_rng(0), {"delong": 0, "estimates": 0, "permutation": 0}, 0
            for _ in range(samples):
                parts = [_patients(rng, *size, max_films) for size in sizes]
                positive = np.concatenate([part[0] for part in parts])
                patient = np.concatenate([part[1] + 1000 * i for i, part in enumerate(parts)])
                group = np.concatenate([np.full(part[0].size, i) for i, part in enumerate(parts)])
                scores = positive * _shift(auc) + np.concatenate([part[2] for part in parts])
                scores += rng.normal(0, SD_MODEL, scores.size)
                try:
                    rejected["delong"] += delong_groups(positive, scores, group, patient).p < 0.05
                    rejected["estimates"] += _delong_at_estimates(positive, scores, group, patient) < 0.05
                except ValueError:  # a group's AUC of 1: no DeLong variance, the test is not made
                    refused += 1
                rejected["permutation"] += auc_difference(positive, scores, group, patient).p < 0.05
            made = samples - refused
            print(f"| {auc} | {' and '.join(f'{p} + {n}' for p, n in sizes)} | "
                  + " | ".join(f"{rejected[k] / made if made else math.nan:.3f}" for k in ("delong", "estimates"))
                  + f" | {rejected['permutation'] / samples:.3f} | {refused / samples:.3f} |", flush=True)


NET_BENEFIT_POINTS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)  # threshold probabilities of ``net-benefit``
COHORTS = (200, 40)  # patients of a ``net-benefit`` cohort, each pneumonia with chance P(positive) of KERMANY_LIKE
FEW_COHORT = (40, 0.12)  # a ``net-benefit`` cohort of 40 patients, each pneumonia with chance 0.12: most sets have
# fewer than 5 positive patients, where the interval is the Bonferroni bound (FEW_PATIENTS)


def net_benefit_coverage(samples: int, max_films: int) -> None:
    """``--only net-benefit``: net_benefit_ci's coverage and mean width by patient along the decision curve."""
    positives, negatives = KERMANY_LIKE
    share = positives / (positives + negatives)
    pt = np.array(NET_BENEFIT_POINTS)
    cut = np.log(pt / (1 - pt))  # a film is called at pt where its logit is at least this
    print(f"{samples} sets a setting, 1-{max_films} films a patient, 1000 resamples; coverage (mean width) at each "
          f"threshold probability; a coverage of 0.95 is within about {2 * math.sqrt(0.05 * 0.95 / samples):.3f}")
    print("| sensitivity, specificity at 0.5 | design | " + " | ".join(f"{p:g}" for p in pt) + " |")
    print("| --- " * (2 + pt.size) + "|")
    for se, sp in ((0.97, 0.85), (0.995, 0.99)):
        shift_pos, shift_neg = SD_TOTAL * float(norm.ppf(se)), SD_TOTAL * float(norm.ppf(sp))
        rates = norm.sf((cut - shift_pos) / SD_TOTAL), norm.cdf((cut + shift_neg) / SD_TOTAL)
        # None: the classes' patients fixed; last, a small cohort of few positive patients (FEW_COHORT)
        for cohort, chance in (*((c, share) for c in COHORTS), (None, share), FEW_COHORT):
            truth = chance * rates[0] - (1 - chance) * (1 - rates[1]) * pt / (1 - pt)
            rng, covered, widths = np.random.default_rng(0), [], []
            design = (f"cohort of {cohort}" + (f" at prevalence {chance:g}" if chance != share else "") if cohort
                      else f"{positives} + {negatives} fixed")
            for _ in range(samples):
                n_pos = int(rng.binomial(cohort, chance)) if cohort else positives
                n_neg = cohort - n_pos if cohort else negatives
                positive, patient, noise = _patients(rng, n_pos, n_neg, max_films)
                logit = np.where(positive, shift_pos, -shift_neg) + noise
                ci = np.array(net_benefit_ci(positive.astype(int), 1 / (1 + np.exp(-logit)), pt, groups=patient))
                covered.append((ci[:, 0] <= truth) & (truth <= ci[:, 1]))
                widths.append(ci[:, 1] - ci[:, 0])
            print(f"| {se}, {sp} | {design} | " + " | ".join(
                f"{c:.3f} ({w:.3f})" for c, w in zip(np.mean(covered, axis=0), np.nanmean(widths, axis=0))) + " |",
                flush=True)


RATE_PAIRS = ((0.9, 0.9), (0.8, 0.95), (0.95, 0.99), (0.5, 0.9))  # ``paired-rates``' true sensitivities
RATE_PATIENTS = (10, 20, 40, 120)  # ``paired-rates``' pneumonia patients
SD_CALLER = 1.0  # each model's own noise on a film in ``paired-rates``, so that the two differ on some patients


def paired_rates_coverage(samples: int, max_films: int) -> None:
    """``--only paired-rates``: the interval of two models' sensitivity difference on the same patients' films that
    ``compare`` gives (Newcombe's, ``paired_rate_ci``) beside the patients' percentile bootstrap (2,000 resamples),
    where the two share the patient's and the film's effects and each adds its own noise (sd SD_CALLER a film)."""
    from pneumoscan.core.metrics.differences import _paired_resamples, paired_rate_ci
    from pneumoscan.core.metrics.intervals import _resampled_sums

    sd = math.hypot(SD_TOTAL, SD_CALLER)
    print(f"{samples} sets a setting, pneumonia patients with 1-{max_films} films each; coverage (mean width) among "
          "the sets with an interval (none where fewer than 5 patients' calls differ: that share beside), and "
          "Newcombe's over every set, that rule aside; a share near 0.95 within about "
          f"{2 * math.sqrt(0.05 * 0.95 / samples):.3f}")
    print("| true sensitivities | patients | Newcombe | bootstrap | no interval | Newcombe, every set |")
    print("| --- " * 6 + "|")
    for first, second in RATE_PAIRS:
        truth = second - first
        for patients in RATE_PATIENTS:
            rng, ends, refused = np.random.default_rng(0), {"Newcombe": [], "bootstrap": [], "every": []}, 0
            for _ in range(samples):
                positive, patient, noise = _patients(rng, patients, 0, max_films)
                called = np.stack([noise + sd * float(norm.ppf(rate)) + rng.normal(0, SD_CALLER, positive.size) >= 0
                                   for rate in (first, second)])
                found = paired_differences(positive, np.zeros((2, positive.size)), called, patient)["sensitivity"]
                ends["every"].append(paired_rate_ci(called, np.unique(patient, return_inverse=True)[1]))
                if found["ci"] is None:
                    refused += 1
                    continue
                ends["Newcombe"].append(found["ci"])
                _, unit_of, counts = _paired_resamples(positive, patient)
                drawn = [_resampled_sums(counts, unit_of, c.astype(float)) for c in called]
                of = _resampled_sums(counts, unit_of, np.ones(positive.size))
                ends["bootstrap"].append(np.percentile((drawn[1] - drawn[0]) / of, [2.5, 97.5]).tolist())
            cells = []
            for found in (ends["Newcombe"], ends["bootstrap"]):
                lo, hi = np.array(found).reshape(-1, 2).T
                cells.append(f"{np.mean((lo <= truth) & (truth <= hi)):.3f} ({np.mean(hi - lo):.3f})" if lo.size
                             else "n/a")
            lo, hi = np.array(ends["every"]).T
            print(f"| {first}, {second} | {patients} | " + " | ".join(cells) + f" | {refused / samples:.3f} | "
                  f"{np.mean((lo <= truth) & (truth <= hi)):.3f} ({np.mean(hi - lo):.3f}) |", flush=True)


TABLES = {"prevalence": prevalence_coverage, "paired-rates": paired_rates_coverage,
          "delong-paired": delong_paired_coverage, "delong-groups": delong_groups_size,
          "net-benefit": net_benefit_coverage}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=400, help="simulated data sets per setting")
    parser.add_argument("--boot", type=int, default=1000, help="bootstrap resamples per interval")
    parser.add_argument("--patients", type=int, nargs="+", default=[12, 30, 150], help="patients of each class")
    parser.add_argument("--only", choices=("binary", "three-class", "regimes", *TABLES), help="one of the tables")
    parser.add_argument("--mean", type=float, default=1.2, help="the binary classes' mean logit, +-")
    parser.add_argument("--films", type=int, default=3, help="films a patient at most, in the last five tables")
    parser.add_argument("--separations", type=float, nargs="+", default=SEPARATIONS, help="three-class settings")
    args = parser.parse_args()
    if args.only == "regimes":
        return regimes(args.samples)
    if args.only in TABLES:
        return TABLES[args.only](args.samples, args.films)
    if args.only != "three-class":
        print(f"{args.samples} samples a setting, {args.boot} resamples; nominal coverage 0.95; truths "
              + ", ".join(f"{k} {v:.4f}" for k, v in truths(args.mean).items() if k in ("auc", "f1")))
        print("| patients | films each | unit | " + " | ".join(FIGURES) + " | AUC mean width |")
        print("| --- " * (len(FIGURES) + 4) + "|")
        for patients in args.patients:
            for max_films in (4, 1):
                for unit, (cov, width) in coverage(patients, max_films, args.samples, args.boot, args.mean).items():
                    films = "1-4" if max_films > 1 else "1"
                    print(f"| {patients} + {patients} | {films} | {unit} | "
                          + " | ".join(f"{cov[n]:.3f}" for n in FIGURES) + f" | {width:.3f} |", flush=True)
    if args.only != "binary":
        print("\n| patients a class | films each | macro AUC (truth) | coverage | mean width | balanced accuracy "
              "(truth) | coverage | mean width |\n| --- | --- | --- | --- | --- | --- | --- | --- |")
        for patients in args.patients:
            for separation in args.separations:
                figures = macro_coverage(patients, separation, args.samples, args.boot)
                print(f"| {patients} | 1-4 | " + " | ".join(f"{truth:.3f} | {covered:.3f} | {width:.3f}"
                                                          for truth, covered, width in figures.values()) + " |",
                      flush=True)
    y, prob, patient = sample(np.random.default_rng(1), 2000, args.mean)
    y, prob, patient = y[:5000], prob[:5000], patient[:5000]
    for unit, groups in (("film", None), ("patient", patient)):
        start = time.perf_counter()
        threshold_metrics_ci(y, prob, [0.5], n_boot=1000, groups=groups)
        print(f"one call, {y.size} films, 1000 resamples, by {unit}: {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
