"""The operating threshold chosen on validation data by a policy (a sensitivity floor, a false-positive
ceiling, or Youden's J), the 95 % confidence interval of the threshold that policy would choose on the population
the films come from, and the policy in the bundle card's words."""

from __future__ import annotations

from typing import Any

import numpy as np

from .auc_intervals import _sides
from .inputs import _as_binary, has_both_classes, _patient_codes
from .intervals import ALPHA, BOOTSTRAP_SEED, _bootstrap_weights


def choose_threshold(
    y_true: Any, prob: Any, target_sensitivity: float | None = 0.95, max_false_positive_rate: float | None = None
) -> float:
    """Operating threshold from validation data, placed midway between the deciding validation score and the
    next lower one, so rounding differences (another backend, another device) cannot flip the deciding image; at
    the deciding score itself where the two are adjacent floats, with nothing between them.

    With ``target_sensitivity``: the highest threshold whose sensitivity is >= the target, i.e. the most
    specific rule that still meets the sensitivity floor (the next higher distinct score falls below it).
    With ``max_false_positive_rate`` (and ``target_sensitivity=None``): the lowest threshold whose false-positive
    rate (1 - specificity) is <= the ceiling, i.e. the most sensitive rule within it; a ceiling that no threshold
    finding at least one positive case can keep is refused. With neither: the threshold maximising Youden's J =
    sensitivity + specificity - 1; among tied maximisers the highest (most specific) threshold wins.
    Raises ValueError unless both classes are present.
    """
    y, p = _as_binary(y_true, prob)
    if not has_both_classes(y):
        raise ValueError("choosing a threshold needs both classes in the labelled data")
    _check_policy(target_sensitivity, max_false_positive_rate)
    fpr, tpr, thresholds = _roc_points(y, p)
    positives = int(y.sum())
    negatives = y.size - positives
    if max_false_positive_rate is not None:
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
    else:
        k = int(np.argmax(tpr >= target_sensitivity))
    deciding = float(thresholds[k])
    lower = float(thresholds[k + 1]) if k + 1 < len(thresholds) else 0.0
    midway = (deciding + lower) / 2
    # two scores one float apart have no number between them, and their sum can round to the lower one, whose films
    # the rule would then call positive too (a false-positive ceiling broken, a specificity not the chosen one)
    return midway if lower < midway <= deciding else deciding


def _check_policy(target_sensitivity: float | None, max_false_positive_rate: float | None) -> None:
    """A policy :func:`choose_threshold` can follow: one of the two limits, each within its range, or neither."""
    if target_sensitivity is not None and max_false_positive_rate is not None:
        raise ValueError("give a target sensitivity or a maximum false-positive rate, not both")
    if max_false_positive_rate is not None and not 0 <= max_false_positive_rate < 1:
        raise ValueError(f"max_false_positive_rate must be in [0, 1), got {max_false_positive_rate}")
    if target_sensitivity is not None and not 0 < target_sensitivity <= 1:
        raise ValueError(f"target_sensitivity must be in (0, 1], got {target_sensitivity}")


def _roc_points(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """fpr, tpr and threshold at each distinct score, descending: sklearn's ``roc_curve(drop_intermediate=False)``
    less its leading +inf point and its input checks (:func:`~pneumoscan.core.metrics.inputs._as_binary` made them),
    which took a millisecond a call, and :func:`threshold_interval` chooses a threshold on a thousand resamples."""
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


# how a bundle's caveat begins where no range near its threshold could be measured (:func:`threshold_range`'s why)
NO_RANGE = "no range near the threshold"


def threshold_interval(
    y_true: Any, prob: Any, target_sensitivity: float | None, max_false_positive_rate: float | None,
    groups: Any = None, n_boot: int = 1000, seed: int = BOOTSTRAP_SEED,
) -> list[float]:
    """:func:`threshold_range`'s interval alone."""
    return threshold_range(y_true, prob, target_sensitivity, max_false_positive_rate, groups, n_boot, seed)[0]


def threshold_range(
    y_true: Any, prob: Any, target_sensitivity: float | None, max_false_positive_rate: float | None,
    groups: Any = None, n_boot: int = 1000, seed: int = BOOTSTRAP_SEED,
) -> tuple[list[float], str]:
    """The 95 % percentile-bootstrap confidence interval of the threshold :func:`choose_threshold` would choose by
    this policy on the whole population these films come from, the films resampled within their class (or, with
    ``groups``, the patients whole): a reading inside it could have been called either way by the population's own
    threshold, and is near the threshold. It is not where a threshold chosen on another set of films would fall,
    which scatters more, with that set's own chance on top: a fresh set of 150 + 150 films put its threshold inside
    the range of the first 0.83-0.84 of the time. Resamples the policy cannot be met on (one class only) are
    skipped; [] when half of them are, and when the class the policy reads (the positive films for a sensitivity
    target, the negative ones for a false-positive ceiling, both for Youden's J) is one patient's (or one film):
    every resample would then repeat that patient's scores, and the range would read as a well-known threshold
    (zero wide when all the films are one patient's) where nothing shows how another patient would score, as the
    AUC has no interval with one patient on a side. With the interval, why there is none ("" when there is one):
    which condition failed, on how many films or resamples, for the bundle to record beside its threshold."""
    y, p = _as_binary(y_true, prob)
    patients = _patient_codes(groups, y.size)
    with_pos, with_neg = _sides(y == 1, patients)
    if target_sensitivity is not None:
        read, side = with_pos, "positive"
    elif max_false_positive_rate is not None:
        read, side = with_neg, "negative"
    else:
        read, side = min((with_pos, "positive"), (with_neg, "negative"))
    if read < 2:
        films = int((y == (side == "positive")).sum())
        what = "none" if not films else "one film" if films == 1 else f"{films} films of one patient"
        return [], (f"the {side} films, which its policy reads, are {what}: a bootstrap of them shows nothing of how "
                    "another patient would score")
    _check_policy(target_sensitivity, max_false_positive_rate)
    chosen, one_class = _resampled_thresholds(y, p, _bootstrap_weights(y, patients, n_boot, seed),
                                              target_sensitivity, max_false_positive_rate)
    found = chosen[np.isfinite(chosen)]
    if len(found) < n_boot / 2:
        unmet = n_boot - len(found) - one_class
        why = [f"{one_class} held one class only"] if one_class else []
        why += [f"in {unmet} no threshold found a positive case at a false-positive rate at or below "
                f"{max_false_positive_rate:g}"] if unmet else []
        return [], (f"only {len(found)} of {n_boot} bootstrap resamples of the {y.size} films could meet its policy "
                    f"({'; '.join(why)})")
    return [float(v) for v in np.percentile(found, [100 * ALPHA / 2, 100 * (1 - ALPHA / 2)])], ""


def _resampled_thresholds(
    y: np.ndarray, p: np.ndarray, counts: np.ndarray, target_sensitivity: float | None,
    max_false_positive_rate: float | None, chunk: int = 100,
) -> tuple[np.ndarray, int]:
    """The threshold :func:`choose_threshold` chooses on each resample (``counts``: (n_boot, n) copies of each
    film), NaN where the resample cannot meet the policy, and how many resamples held one class only. The same
    choice, in the same whole counts, on every resample at once: a loop of choose_threshold calls took 59 ms for
    200 films, 9 ms so (docs/results.md, "Test suite"). Each distinct score is a column; a score no film of a
    resample carries is no threshold of that resample."""
    order = np.argsort(p, kind="stable")[::-1]
    p, y = p[order], y[order]
    starts = np.append(0, np.flatnonzero(np.diff(p)) + 1)  # each distinct score's first film
    scores = p[starts]
    columns = np.arange(scores.size)
    chosen, one_class = [], 0
    for block in np.array_split(counts[:, order], max(1, -(-counts.shape[0] // chunk))):
        pos = np.add.reduceat(block * y, starts, axis=1)
        neg = np.add.reduceat(block * (1 - y), starts, axis=1)
        present = (pos + neg) > 0
        tps, fps = np.cumsum(pos, axis=1), np.cumsum(neg, axis=1)
        positives, negatives = tps[:, -1:], fps[:, -1:]
        both = (positives[:, 0] > 0) & (negatives[:, 0] > 0)
        one_class += int((~both).sum())
        with np.errstate(divide="ignore", invalid="ignore"):
            tpr, fpr = tps / positives, fps / negatives
        met = both.copy()
        if max_false_positive_rate is not None:
            within = present & (np.rint(fpr * negatives) <= max_false_positive_rate * negatives + 1e-9)
            k = np.where(within.any(axis=1), scores.size - 1 - np.argmax(within[:, ::-1], axis=1), 0)
            met &= within.any(axis=1) & (tpr[np.arange(k.size), k] > 0)
        elif target_sensitivity is None:
            youden = np.rint(tpr * positives) * negatives - np.rint(fpr * negatives) * positives
            k = np.argmax(np.where(present, youden, -np.inf), axis=1)
        else:
            k = np.argmax(tpr >= target_sensitivity, axis=1)  # the first column to reach it carries a positive film
        # the next lower score a film of the resample carries, 0 where none does
        later = np.where(present & (columns > k[:, None]), columns, scores.size)
        below = later.min(axis=1)
        deciding = scores[k]
        lower = np.where(below < scores.size, scores[np.minimum(below, scores.size - 1)], 0.0)
        midway = (deciding + lower) / 2
        # as choose_threshold: two scores one float apart have no number between them
        picked = np.where((lower < midway) & (midway <= deciding), midway, deciding)
        chosen.append(np.where(met, picked, np.nan))
    return np.concatenate(chosen), one_class


def describe_policy(target_sensitivity: float | None, max_false_positive_rate: float | None) -> str:
    """How :func:`choose_threshold` chose, in the words the bundle card records."""
    if target_sensitivity is not None:
        return f"sensitivity >= {target_sensitivity:g}"
    if max_false_positive_rate is not None:
        return f"false-positive rate <= {max_false_positive_rate:g}"
    return "Youden's J"
