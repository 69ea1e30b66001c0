"""The JSON-ready summaries that become ``metrics.json``: a binary task's figures at its threshold and at
0.5 with their intervals and thinned curves, a decision among classes with its macro AUC, and the plain AUC and
counts that training and cross-validation log."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .auc_intervals import _macro_auc_ci
from ..options import DECISION_RANGE
from .formatting import format_percent, jsonable
from .inputs import _as_binary, _as_multiclass, has_both_classes, _patient_codes, _ratio
from .intervals import (ALPHA, _among, _balanced_accuracy_ci, net_benefit_of_rates, proportion_ci,
                        threshold_metrics_ci)
from .probabilities import calibration

CURVE_POINTS = 200  # curves are thinned to about this many points so metrics.json stays small
# figures that say nothing of the model on films of one class, as they depend on the absent class too (every film
# called positive is right when there is no negative one: precision 1 whatever the model): undefined there
BOTH_CLASSES = ("precision", "npv", "f1")


def roc_auc(y_true: Any, prob: Any) -> float:
    """ROC AUC, or NaN when only one class is present: undefined there, which a summary reports, not an error."""
    y, p = _as_binary(y_true, prob)
    return _roc(y, p)[3]


def _roc(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """scikit-learn's ROC curve of binary targets ``y`` (fpr, tpr, thresholds) and the area under it, as its
    ``roc_auc_score`` computes a binary AUC (the trapezoids under this curve), from one curve: a summary that draws
    the curve too took its AUC from roc_auc_score's second, input-checked pass (2.5 ms a class). One class: no
    curve and a NaN area."""
    from sklearn.metrics import auc, roc_curve
    if not has_both_classes(y):
        return np.empty(0), np.empty(0), np.empty(0), math.nan
    fpr, tpr, thresholds = roc_curve(y, p)
    return fpr, tpr, thresholds, float(auc(fpr, tpr))


def binary_metrics(y_true: Any, prob: Any, threshold: float) -> dict[str, Any]:
    """Counts and rates at one threshold; a rate whose denominator is zero (e.g. sensitivity with no
    positives) is NaN rather than an error, so a one-class subset can still be summarised, and so are the figures of
    :data:`BOTH_CLASSES` on such a subset (a precision of 1 on pneumonia films alone describes the films). The four
    counts are one bincount of label and call, as scikit-learn's confusion matrix gives them (labels 0 and 1), which
    took 1.3 ms a threshold checking its inputs again."""
    y, p = _as_binary(y_true, prob)
    if not y.size:  # as scikit-learn refuses it: no films, no figures
        raise ValueError("no films to count at a threshold: y_true and prob are empty")
    tn, fp, fn, tp = (int(v) for v in np.bincount(2 * y + (p >= threshold), minlength=4))
    both = has_both_classes(y)
    return {
        "accuracy": _ratio(tp + tn, y.size),
        "precision": _ratio(tp, tp + fp) if both else math.nan,
        "npv": _ratio(tn, tn + fn) if both else math.nan,
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn) if both else math.nan,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "n": int(y.size),
        "threshold": float(threshold),
    }


DECISION_STEP = 0.01  # between a decision curve's threshold probabilities


def decision_thresholds(low: float = DECISION_RANGE[0], high: float = DECISION_RANGE[1]) -> np.ndarray:
    """The threshold probabilities of a decision curve: LOW to HIGH in steps of :data:`DECISION_STEP`, HIGH the last;
    refused outside (0, 1), where a threshold's odds pt / (1 - pt) are 0 or infinite and net benefit says nothing."""
    if not 0 < low < high < 1:
        raise ValueError(f"a decision curve's threshold probabilities run from LOW to HIGH with 0 < LOW < HIGH < 1, "
                         f"not {low} to {high}")
    return np.unique(np.round(np.r_[np.arange(low, high, DECISION_STEP), high], 6))


def net_benefit(y_true: Any, prob: Any, thresholds: Any) -> dict[str, list[float]]:
    """Decision curve analysis (Vickers & Elkin 2006) of calling positive the films whose ``prob`` is at least each
    threshold probability pt: the model's ``net_benefit`` TP/n - FP/n * pt / (1 - pt), that of calling every film
    positive ("treat all": prevalence - (1 - prevalence) * pt / (1 - pt)) and that of calling none ("treat none": 0),
    with each threshold's sensitivity and specificity, from which a reader recomputes the model's net benefit at
    another prevalence pi as sensitivity * pi - (1 - specificity) * (1 - pi) * pt / (1 - pt). Net benefit is in true
    positives per film: it holds at these films' prevalence only. A rate of a class without films is NaN."""
    y, p = _as_binary(y_true, prob)
    pt = np.asarray(thresholds, dtype=float).ravel()
    if not ((pt > 0) & (pt < 1)).all():
        raise ValueError("a decision curve's threshold probabilities lie strictly between 0 and 1")
    called = p[None, :] >= pt[:, None]
    tp, fp = (called & (y == 1)).sum(axis=1), (called & (y == 0)).sum(axis=1)
    positives, n = int(y.sum()), y.size
    odds = pt / (1 - pt)
    return {"threshold": pt.tolist(), "net_benefit": (tp / n - fp / n * odds).tolist(),
            "treat_all": (positives / n - (n - positives) / n * odds).tolist(), "treat_none": [0.0] * pt.size,
            "sensitivity": [_ratio(t, positives) for t in tp], "specificity": [_ratio(n - positives - f, n - positives)
                                                                              for f in fp]}


def check_prevalences(prevalences: Sequence[float]) -> list[float]:
    """The prevalences figures are recomputed at (:func:`at_prevalence`), refused outside (0, 1): at 0 or 1 PPV or
    NPV is a constant whatever the model, and 10 is a percentage given for a share."""
    shown: dict[str, float] = {}
    for value in prevalences:
        if not 0 < value < 1:  # NaN too
            raise ValueError(f"a prevalence lies strictly between 0 and 1 (0.1 for 10 %), not {value}")
        # each is a row of the report shown at 0.1 % and a column of decision_curve.csv named by its :g
        for name in (format_percent(value), f"{value:g}"):
            if name in shown:
                raise ValueError(f"prevalences {shown[name]} and {value} are both {name} as the report and "
                                 "decision_curve.csv name them: give each once, at most to 0.1 %")
            shown[name] = value
    return [float(value) for value in prevalences]


def _at(sensitivity: Any, specificity: Any, prevalence: float, odds: Any) -> dict[str, Any]:
    """Bayes: precision (PPV), NPV, accuracy and net benefit (at threshold odds ``odds``) of a test of this
    ``sensitivity`` and ``specificity`` among films of this ``prevalence``; each rises with both. NaN where undefined
    (PPV with nothing called positive)."""
    se, sp = np.asarray(sensitivity, float), np.asarray(specificity, float)
    true_pos, false_pos = se * prevalence, (1 - sp) * (1 - prevalence)
    true_neg, false_neg = sp * (1 - prevalence), (1 - se) * prevalence
    with np.errstate(divide="ignore", invalid="ignore"):
        return {"precision": true_pos / (true_pos + false_pos), "npv": true_neg / (true_neg + false_neg),
                "accuracy": true_pos + true_neg, "net_benefit": net_benefit_of_rates(se, sp, prevalence, odds)}


def at_prevalence(y_true: Any, prob: Any, threshold: float, prevalences: Sequence[float],
                  curve: dict[str, list[float]] | None = None, groups: Any = None) -> dict[str, Any]:
    """Precision (PPV), NPV, accuracy and net benefit at ``threshold`` recomputed at each of ``prevalences`` from these
    films' sensitivity and specificity (Bayes), for a clinic whose prevalence is not the set's; with ``curve``
    (:func:`net_benefit`'s) its net benefit and treat-all's at each threshold probability too. It assumes the
    sensitivity and specificity carry over to the clinic's films, which a different case mix (spectrum) breaks.

    Each figure rises with sensitivity and with specificity, so it is bounded by its values at the ends of their
    exact intervals at 97.5 % each (:func:`~pneumoscan.core.metrics.intervals.proportion_ci`, by patient with
    ``groups``): Bonferroni, at least 95 % together, so each figure's interval covers at least 95 % (conservative).
    Refused on films of one class, which leave sensitivity or specificity undefined."""
    y, p = _as_binary(y_true, prob)
    prevalences = check_prevalences(prevalences)
    if not has_both_classes(y):
        raise ValueError("figures at another prevalence come from sensitivity and specificity, which need films of "
                         "both classes")
    patients = _patient_codes(groups, y.size)
    called, positive = p >= threshold, y == 1
    at_threshold = binary_metrics(y, p, threshold)
    se, sp = at_threshold["sensitivity"], at_threshold["specificity"]
    ci = {"sensitivity": _among(called, positive, patients, ALPHA / 2),
          "specificity": _among(~called, ~positive, patients, ALPHA / 2)}
    odds = threshold / (1 - threshold) if 0 < threshold < 1 else math.nan  # 0 or 1: odds 0 or infinite
    figures = []
    for prevalence in prevalences:
        value, ends = _at(se, sp, prevalence, odds), _at(ci["sensitivity"], ci["specificity"], prevalence, odds)
        block: dict[str, Any] = {"prevalence": prevalence, **{key: float(v) for key, v in value.items()},
                                 "treat_all": prevalence - (1 - prevalence) * odds,
                                 "ci": {key: [float(v) for v in ends[key]] for key in value}}
        if curve is not None:
            pt = np.asarray(curve["threshold"], float)
            block["decision_curve"] = {
                "threshold": pt.tolist(),
                "net_benefit": _at(curve["sensitivity"], curve["specificity"], prevalence,
                                   pt / (1 - pt))["net_benefit"].tolist(),
                "treat_all": (prevalence - (1 - prevalence) * pt / (1 - pt)).tolist()}
        figures.append(block)
    return jsonable({"sensitivity": se, "specificity": sp, "ci": ci, "figures": figures})


def _unit(patients: np.ndarray | None) -> str:
    """What the intervals count as a case, as metrics.json records it (``ci_unit``)."""
    return "film" if patients is None else "patient"


def _row_normalised(counts: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return counts / counts.sum(axis=1, keepdims=True)


def _thin(*arrays: np.ndarray) -> list[list[float]]:
    """Keep about CURVE_POINTS evenly spaced points (ends included) of parallel curve arrays."""
    n = len(arrays[0])
    keep = np.unique(np.linspace(0, n - 1, CURVE_POINTS).round().astype(int)) if n > CURVE_POINTS else slice(None)
    return [np.asarray(a)[keep].tolist() for a in arrays]


def _operating_point(y: np.ndarray, p: np.ndarray, threshold: float, free: dict, ci: dict) -> dict[str, Any]:
    """One threshold's block of metrics.json; ``free`` holds the threshold-free auc, pr_auc and ece. On films of one
    class the figures of :data:`BOTH_CLASSES` are undefined, and so are their intervals."""
    m = binary_metrics(y, p, threshold)
    if not has_both_classes(y):
        ci = {k: None if k in BOTH_CLASSES else v for k, v in ci.items()}
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
    ``groups`` (a patient id per film) makes the CIs count patients
    (:func:`~pneumoscan.core.metrics.intervals.threshold_metrics_ci`); ``ci_unit`` says whether they count patients
    or films.
    """
    from sklearn.metrics import average_precision_score, precision_recall_curve
    y, p = _as_binary(y_true, prob)
    if not y.size:
        raise ValueError("no labelled films to measure")
    if len(class_names) != 2:
        raise ValueError("class_names must name (negative, positive)")
    curves: dict[str, Any] = {"roc": {"fpr": [], "tpr": [], "thresholds": []}, "pr": {"precision": [], "recall": []}}
    both = has_both_classes(y)
    fpr, tpr, roc_thresholds, area = _roc(y, p)
    if both:
        precision, recall, _ = precision_recall_curve(y, p)
        curves["roc"] = dict(zip(("fpr", "tpr", "thresholds"), _thin(fpr, tpr, roc_thresholds)))
        curves["pr"] = dict(zip(("precision", "recall"), _thin(precision, recall)))
    curves["calibration"] = calibration(y, p)
    free = {
        "auc": area,
        # scikit-learn sums precision over recall steps of 1 / positives, in floats: a perfect ranking of 14 positives
        # came to 0.9999999999999999, shown as 0.999 since no figure is rounded up to 1; that error is below 1e-12
        "pr_auc": round(float(average_precision_score(y, p)), 12) if both else math.nan,
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


def _class_rocs(y: np.ndarray, P: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, float]]:
    """Each class's one-vs-rest ROC curve and AUC (:func:`_roc`: none and NaN for a class without films, or with
    every film)."""
    return [_roc((y == k).astype(int), P[:, k]) for k in range(P.shape[1])]


def _mean_auc(class_aucs: Sequence[float]) -> float:
    """The macro AUC: the mean of the classes' one-vs-rest AUCs (:func:`_class_rocs`), NaN when one is undefined."""
    return float(np.mean(class_aucs))


def _per_class(y: np.ndarray, counts: np.ndarray, class_names: Sequence[str],
               rocs: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, float]],
               ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, list[float]]]]:
    """Each class's one-vs-rest AUC and thinned ROC curve (``rocs``: :func:`_class_rocs`, whose AUCs the macro AUC
    is the mean of; no curve for a class without films, or with every film), and its sensitivity, precision, f1 and
    support (from the confusion ``counts``)."""
    per_class: dict[str, dict[str, Any]] = {}
    roc: dict[str, dict[str, list[float]]] = {}
    for k, name in enumerate(class_names):
        tp, support, n_called = counts[k, k], counts[k].sum(), counts[:, k].sum()
        defined = has_both_classes((y == k).astype(int))
        per_class[name] = {
            "auc": rocs[k][3],
            "sensitivity": _ratio(tp, support),
            "precision": _ratio(tp, n_called),
            "f1": _ratio(2 * tp, support + n_called),
            "support": int(support),
        }
        roc[name] = dict(zip(("fpr", "tpr"), _thin(*rocs[k][:2]))) if defined else {"fpr": [], "tpr": []}
    return per_class, roc


def macro_auc(y_true: Any, probs: Any) -> float:
    """The macro (mean one-vs-rest) ROC AUC of class probabilities (N, C), as :func:`evaluate_multiclass` reports
    it, without the intervals, bootstrap and curves that come with it there; NaN when a class has no film."""
    y, P, _ = _as_multiclass(y_true, probs, np.shape(probs)[-1], None)
    return _mean_auc([auc for *_, auc in _class_rocs(y, P)])


def evaluate_multiclass(
    y_true: Any, probs: np.ndarray, class_names: Sequence[str], n_boot: int = 1000,
    predicted: Any = None, decision: str = "most probable class", groups: Any = None,
) -> dict[str, Any]:
    """Metrics for a decision among the classes, by default the argmax (``predicted`` gives another, e.g. two
    thresholded stages, named by ``decision``): accuracy, balanced accuracy, macro one-vs-rest AUC, per-class
    sensitivity / precision / f1 / AUC, confusion matrix, 95% CIs (accuracy: exact Clopper-Pearson; balanced
    accuracy: BCa bootstrap, :func:`~pneumoscan.core.metrics.intervals._balanced_accuracy_ci`; macro AUC:
    score-type, :func:`~pneumoscan.core.metrics.auc_intervals._macro_auc_ci`; by patient with ``groups``, as in
    :func:`~pneumoscan.core.metrics.intervals.threshold_metrics_ci`), per-class ROC curves and a reliability diagram
    of the decided class (its probability vs correctness). NaN -> None."""
    from sklearn.metrics import confusion_matrix
    n_classes = len(class_names)
    y, P, pred = _as_multiclass(y_true, probs, n_classes, predicted)
    counts = confusion_matrix(y, pred, labels=list(range(n_classes)))
    rocs = _class_rocs(y, P)
    per_class, roc = _per_class(y, counts, class_names, rocs)
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
            # the patients beside the films when the intervals count patients, as evaluate_binary gives them
            "patients": None if patients is None else {
                "all": int(np.unique(patients).size),
                "per_class": {name: int(np.unique(patients[y == k]).size) for k, name in enumerate(class_names)}},
            "accuracy": _ratio(np.trace(counts), y.size),
            "balanced_accuracy": balanced,
            "macro_auc": _mean_auc([auc for *_, auc in rocs]),
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
