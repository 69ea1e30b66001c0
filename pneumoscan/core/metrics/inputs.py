"""Labels, scores and patient ids as every figure takes them: checked before anything is computed (a label of
0.9 or a NaN score is refused, not cast), and the rate that is NaN, not an error, without a denominator."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


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


def has_both_classes(y: np.ndarray) -> bool:
    """Whether binary targets ``y`` (0 and 1) hold films of each class: an AUC or a threshold needs both."""
    return 0 < int(y.sum()) < y.size


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


def is_net_benefit(value: object) -> bool:
    """Whether ``value`` can be a net benefit TP/n - FP/n x pt/(1 - pt) read back from a file: a finite number (not a
    bool) at most 1; below 0 where a strategy harms. One check for every reader of a stored net benefit."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value <= 1


def is_net_benefit_interval(interval: object) -> bool:
    """Whether ``interval`` can be a net benefit's stored 95% CI: None or [None, None] where the films gave none,
    else two net benefits (:func:`is_net_benefit`), low to high."""
    if interval is None or interval == [None, None]:
        return True
    return (isinstance(interval, list) and len(interval) == 2 and all(map(is_net_benefit, interval))
            and interval[0] <= interval[1])
