"""Evaluation metrics: operating-point metrics with 95% CIs, threshold choice, temperature scaling,
calibration, and the JSON-ready summaries that become ``metrics.json``.

Binary tasks use ``y_true`` in {0, 1} and ``prob`` = P(positive) (PNEUMONIA for the pneumonia task, virus for
etiology); a case is called positive when ``prob >= threshold``, the same rule scikit-learn's curves use.
A screening report needs sensitivity and specificity at the threshold that will actually be deployed, with
their uncertainty, so everything here is computed at an explicit threshold.

One module a subject, each importing only the ones before it: :mod:`.inputs` (labels, scores and patient ids,
checked), :mod:`.formatting` (figures as text and JSON), :mod:`.auc_intervals` (an AUC's interval, and two
models' AUC difference's), :mod:`.intervals` (the other intervals and the sentences naming their methods),
:mod:`.thresholds` (threshold choice), :mod:`.probabilities` (softmax, temperature scaling, calibration) and
:mod:`.summaries` (``metrics.json``).

scipy and scikit-learn are imported by the functions that use them: predicting and serving need only
:func:`~pneumoscan.core.metrics.probabilities.softmax` and the formatting helpers, and those imports took half a
second of every start.
"""

from __future__ import annotations

from .auc_intervals import AUC_INTERVAL, CHANCE_AUC, _auc_ci
from .formatting import (figure_beside, format_figure, format_percent, jsonable, net_benefit_interval, short_of_one,
                         with_ci)
from .inputs import has_both_classes, is_net_benefit, is_net_benefit_interval
from .intervals import (ALPHA, BOOTSTRAP_SEED, FILM_UNIT_CAVEAT, PATIENT_UNIT, _bca_ci, _bootstrap_weights,
                        _ratio_jackknife, ci_method_sentence, clopper_pearson, net_benefit_ci, proportion_ci,
                        threshold_metrics_ci, unit_caveat)
from .probabilities import (ECE_BINS, ECE_TOLERANCE, TEMPERATURE_BOUNDS, calibration, ece_by_chance,
                            ece_chance_margin, fit_temperature, softmax)
from .summaries import (BOTH_CLASSES, CURVE_POINTS, at_prevalence, binary_metrics, check_prevalences,
                        decision_thresholds,
                        evaluate_binary, evaluate_multiclass, macro_auc, net_benefit, roc_auc)
from .thresholds import (NO_RANGE, choose_threshold, choose_thresholds, describe_policy, threshold_interval,
                         threshold_range)

__all__ = ["ALPHA", "AUC_INTERVAL", "BOOTSTRAP_SEED", "BOTH_CLASSES", "CHANCE_AUC", "CURVE_POINTS", "ECE_BINS",
           "ECE_TOLERANCE", "FILM_UNIT_CAVEAT", "NO_RANGE", "PATIENT_UNIT", "TEMPERATURE_BOUNDS", "at_prevalence",
           "binary_metrics",
           "calibration",
           "check_prevalences", "choose_threshold", "choose_thresholds",
           "ci_method_sentence", "clopper_pearson", "decision_thresholds",
           "describe_policy",
           "ece_by_chance", "ece_chance_margin", "evaluate_binary", "evaluate_multiclass", "figure_beside",
           "fit_temperature", "format_figure", "format_percent", "has_both_classes",
           "is_net_benefit", "is_net_benefit_interval", "jsonable", "macro_auc",
           "net_benefit", "net_benefit_ci", "net_benefit_interval",
           "proportion_ci", "roc_auc", "short_of_one", "softmax", "threshold_interval",
           "threshold_metrics_ci",
           "threshold_range", "unit_caveat", "with_ci",
           # private helpers that the tests and benchmarks/bench_ci_coverage.py check through the package
           "_auc_ci", "_bca_ci", "_bootstrap_weights", "_ratio_jackknife"]
