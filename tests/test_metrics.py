import json
import math
import warnings

import numpy as np
import pytest
from scipy.stats import beta, binomtest, norm
from scipy.stats import t as student_t
from sklearn.metrics import recall_score, roc_auc_score

from pneumoscan.core import metrics
from pneumoscan.core.metrics import summaries
from pneumoscan.core.metrics import (
    binary_metrics,
    calibration,
    choose_threshold,
    evaluate_binary,
    evaluate_multiclass,
    fit_temperature,
    format_figure,
    macro_auc,
    roc_auc,
    softmax,
    threshold_interval,
    threshold_metrics_ci,
    with_ci,
)

# 4 positives, 6 negatives. At threshold 0.5 (positive when prob >= 0.5):
#   positives 0.9 0.8 0.7 -> TP = 3, 0.3 -> FN = 1
#   negatives 0.6 0.5 -> FP = 2 (0.5 counts as positive), 0.2 0.1 0.4 0.05 -> TN = 4
Y_SMALL = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
P_SMALL = [0.9, 0.8, 0.7, 0.3, 0.6, 0.2, 0.1, 0.4, 0.05, 0.5]


def synthetic_binary(n: int, seed: int = 0, separation: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    prob = 1 / (1 + np.exp(-(rng.normal(size=n) + separation * (2 * y - 1))))
    return y, prob


def test_binary_metrics_hand_checked():
    m = binary_metrics(Y_SMALL, P_SMALL, 0.5)
    assert (m["tp"], m["fp"], m["tn"], m["fn"], m["n"]) == (3, 2, 4, 1, 10)
    assert m["sensitivity"] == pytest.approx(3 / 4)  # TP / (TP + FN)
    assert m["specificity"] == pytest.approx(4 / 6)  # TN / (TN + FP)
    assert m["precision"] == pytest.approx(3 / 5)
    assert m["accuracy"] == pytest.approx(7 / 10)
    assert m["f1"] == pytest.approx(2 * 0.6 * 0.75 / (0.6 + 0.75))
    assert m["threshold"] == 0.5


def test_binary_metrics_missing_class_gives_nan_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = binary_metrics([0, 0, 0], [0.1, 0.7, 0.2], 0.5)
        result = evaluate_binary([0, 0, 0], [0.1, 0.7, 0.2], 0.5, n_boot=50)
    assert math.isnan(m["sensitivity"])  # no positives: undefined, not 0
    # with no positive film any positive call is wrong, and every negative call right: figures of the films, not
    # of the model, so undefined as the report shows them
    assert all(math.isnan(m[k]) for k in ("precision", "npv", "f1"))
    assert m["specificity"] == pytest.approx(2 / 3)
    assert result["auc"] is None and result["sensitivity"] is None and result["ci"]["auc"] == [None, None]
    assert result["curves"]["roc"]["fpr"] == []
    json.dumps(result, allow_nan=False)


def test_binary_metrics_rejects_non_binary_labels():
    with pytest.raises(ValueError):
        binary_metrics([0, 2], [0.1, 0.9], 0.5)
    with pytest.raises(ValueError, match="only 0 and 1"):  # a cast would have read 0.9 as 0
        roc_auc([0.9, 0.2, 1.0, 0.0], [0.8, 0.7, 0.9, 0.1])


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_score_that_is_not_a_number_is_refused_not_called_negative(bad):
    """A failed model's NaN must not count as a confident NORMAL call in any figure."""
    for figure in (lambda: binary_metrics([0, 1, 1], [0.1, bad, 0.9], 0.5), lambda: calibration([0, 1], [bad, 0.9]),
                   lambda: evaluate_binary([0, 1, 1, 0], [0.1, bad, 0.9, 0.2], 0.5, n_boot=10)):
        with pytest.raises(ValueError, match="1 of .* scores are not finite"):
            figure()
    with pytest.raises(ValueError, match="not finite"):
        evaluate_multiclass([0, 1, 2], np.array([[1, 0, 0], [0, bad, 0], [0, 0, 1.0]]), ["a", "b", "c"], n_boot=10)


def _deciding_score(prob: np.ndarray, threshold: float) -> float:
    """The lowest score called positive; the threshold sits midway between it and the next lower score."""
    below = prob[prob < threshold]
    deciding = prob[prob >= threshold].min()
    assert (below.max() if below.size else 0.0) < threshold < deciding
    assert threshold == pytest.approx((deciding + (below.max() if below.size else 0.0)) / 2)
    return deciding


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95, 1.0])
def test_choose_threshold_meets_sensitivity_floor_and_is_highest(target):
    y, prob = synthetic_binary(400, seed=1)
    t = choose_threshold(y, prob, target)
    deciding = _deciding_score(prob, t)
    assert binary_metrics(y, prob, t)["sensitivity"] >= target
    assert binary_metrics(y, prob, deciding)["sensitivity"] >= target
    higher = np.unique(prob[prob > deciding])
    assert higher.size, "a threshold at the maximum score would be suspicious here"
    assert binary_metrics(y, prob, higher[0])["sensitivity"] < target


def test_choose_threshold_youden_matches_brute_force():
    y, prob = synthetic_binary(300, seed=2)
    prob = prob.round(2)  # ties, so several thresholds can share a J
    j = {
        t: binary_metrics(y, prob, t)["sensitivity"] + binary_metrics(y, prob, t)["specificity"] - 1
        for t in np.unique(prob)
    }
    best = max(j.values())
    deciding = _deciding_score(prob, choose_threshold(y, prob, None))
    assert j[deciding] == pytest.approx(best)
    assert deciding == max(t for t, v in j.items() if v == pytest.approx(best))


def test_choose_threshold_youden_tie_goes_to_the_higher_threshold():
    # J = 0.5 at both 0.9 (tpr 1/2, fpr 0) and 0.7 (tpr 1, fpr 1/2): the more specific one wins.
    t = choose_threshold([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.2], None)
    assert t == pytest.approx((0.9 + 0.8) / 2)


def test_choose_threshold_youden_tie_is_exact_not_floating_point():
    # J = 1/3 exactly at 0.7 (tpr 1/3, fpr 0) and at 0.1 (tpr 1, fpr 2/3), but 1 - 2/3 > 1/3 in floating point
    y, prob = [1, 0, 0, 1, 1, 0], [0.7, 0.4, 0.6, 0.4, 0.1, 0.0]
    assert choose_threshold(y, prob, None) == pytest.approx((0.7 + 0.6) / 2)


def test_choose_threshold_needs_both_classes():
    with pytest.raises(ValueError):
        choose_threshold([1, 1, 1], [0.2, 0.5, 0.9])


def _overconfident_logits(n_classes: int, seed: int, n: int = 6000, scale: float = 3.0):
    """Labels drawn from softmax(z) (so z is calibrated), logits reported as scale * z."""
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=1.5, size=(n, n_classes))
    p = softmax(z)
    y = (rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
    return scale * z, y


@pytest.mark.parametrize("n_classes", [2, 3])
def test_fit_temperature_recovers_known_scale(n_classes):
    logits, y = _overconfident_logits(n_classes, seed=n_classes)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an ordinary fit stays inside the bounds and says nothing
        t = fit_temperature(logits, y)
    assert t == pytest.approx(3.0, rel=0.15)


def test_fit_temperature_warns_when_it_hits_a_bound():
    y = np.array([0, 1] * 20)
    wrong = np.stack([5.0 * (2 * y - 1), -5.0 * (2 * y - 1)], axis=1)  # every logit on the wrong side: T -> inf
    with pytest.warns(UserWarning, match="at its bound"):
        t = fit_temperature(wrong, y)
    assert t == pytest.approx(metrics.TEMPERATURE_BOUNDS[1], rel=1e-2)


def test_fit_temperature_keeps_one_when_validation_has_no_error():
    # every film on its side: the NLL falls without end as T -> 0, and the bound would make a margin of 0.3 read
    # as 0.9975; T = 1 keeps the model's own scale and says why
    y = np.array([0, 1] * 8)
    margin = np.linspace(0.3, 4.0, y.size) * (2 * y - 1)
    separable = np.stack([-margin / 2, margin / 2], axis=1)
    with pytest.warns(UserWarning, match="without a single error"):
        t = fit_temperature(separable, y)
    assert t == 1.0
    # wide margins: the NLL underflows to a constant and the search stopped short of its bound, at T ~ 0.07 with no
    # warning, so a later film with a logit gap of 1 read as certain
    wide = np.random.default_rng(2).uniform(2, 8, y.size) * (2 * y - 1)
    with pytest.warns(UserWarning, match="without a single error"):
        assert fit_temperature(np.stack([-wide / 2, wide / 2], axis=1), y) == 1.0
    one_error = separable.copy()
    one_error[0] = one_error[0, ::-1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one film on the wrong side gives the NLL a minimum inside the bounds
        assert metrics.TEMPERATURE_BOUNDS[0] < fit_temperature(one_error, y) < metrics.TEMPERATURE_BOUNDS[1]
    # errors, but logits too close together for any T to spread: the bound, said as such, not "no error"
    rng = np.random.default_rng(0)
    close = np.stack([np.zeros(1000),
                      0.02 * (2 * (y_many := rng.integers(0, 2, 1000)) - 1) + rng.normal(0, 0.01, 1000)], axis=1)
    assert (close.argmax(axis=1) != y_many).any()
    with pytest.warns(UserWarning, match="too close together"):
        assert fit_temperature(close, y_many) == pytest.approx(metrics.TEMPERATURE_BOUNDS[0], rel=1e-2)


def test_fit_temperature_keeps_one_on_films_of_one_class():
    """On films of one class the NLL falls as every film leans further to it, whatever the logits say: T = 20, the
    bound, had been kept with a warning that blamed the logits' signal. T = 1, saying why."""
    y = np.zeros(20, dtype=int)
    logits = np.stack([np.linspace(-1, 2, 20), np.zeros(20)], axis=1)  # some called wrongly
    with pytest.warns(UserWarning, match="all of one class, so no temperature can be fitted"):
        assert fit_temperature(logits, y) == 1.0


def test_temperature_scaling_lowers_ece():
    logits, y = _overconfident_logits(2, seed=7)
    t = fit_temperature(logits, y)
    before = calibration(y, softmax(logits)[:, 1])["ece"]
    after = calibration(y, softmax(logits, t)[:, 1])["ece"]
    assert after < before / 2


def test_calibration_hand_checked():
    cal = calibration([0, 1, 1, 1], [0.05, 0.15, 0.95, 1.0], n_bins=10)
    assert cal["counts"] == [1, 1, 0, 0, 0, 0, 0, 0, 0, 2]  # 1.0 falls into the last bin
    assert cal["mean_predicted"][9] == pytest.approx(0.975)
    assert math.isnan(cal["observed_frequency"][5])
    assert cal["ece"] == pytest.approx((0.05 + 0.85 + 2 * 0.025) / 4)


def test_calibration_bins_are_closed_below_at_exact_edges():
    cal = calibration([1, 1, 1, 0], [0.3, 0.6, 0.7, 0.29], n_bins=10)
    assert cal["counts"][2:8] == [1, 1, 0, 0, 1, 1]  # 0.3 in [0.3, 0.4), not in the bin below
    assert cal["bin_edges"][3] == 0.3


def test_roc_auc_is_nan_for_one_class_and_sklearn_otherwise():
    assert math.isnan(metrics.roc_auc([1, 1, 1], [0.2, 0.5, 0.9]))
    assert metrics.roc_auc([0, 1, 0, 1], [0.1, 0.4, 0.35, 0.8]) == roc_auc_score([0, 1, 0, 1], [0.1, 0.4, 0.35, 0.8])


def test_bootstrap_ci_contains_estimate_narrows_and_is_deterministic():
    y, prob = synthetic_binary(200, seed=4)
    small = threshold_metrics_ci(y, prob, [0.5], n_boot=500, seed=0)[0]
    point = binary_metrics(y, prob, 0.5) | {"auc": roc_auc_score(y, prob)}
    for name, (lo, hi) in small.items():
        assert lo <= point[name] <= hi, name
    y_big, prob_big = synthetic_binary(2000, seed=4)
    big = threshold_metrics_ci(y_big, prob_big, [0.5], n_boot=500, seed=0)[0]
    for name in ("auc", "accuracy", "sensitivity", "specificity"):
        assert big[name][1] - big[name][0] < 0.6 * (small[name][1] - small[name][0]), name
    assert threshold_metrics_ci(y, prob, [0.5], n_boot=500, seed=0)[0] == small
    assert threshold_metrics_ci(y, prob, [0.5], n_boot=500, seed=1)[0] != small
    # several thresholds share one set of resamples: the same intervals as one call per threshold
    assert threshold_metrics_ci(y, prob, [0.3, 0.5], n_boot=500, seed=0) == [
        threshold_metrics_ci(y, prob, [0.3], n_boot=500, seed=0)[0], small
    ]


def test_a_perfect_ranking_has_an_average_precision_of_one() -> None:
    """scikit-learn sums average precision over recall steps of 1/n, which comes to 0.9999999999999999 for 10 or 14
    positives ranked first: the report, which never rounds a figure up to 1, showed PR AUC 0.999 beside ROC AUC
    1.000 and every film called right."""
    for n in (7, 10, 14):
        y = np.r_[np.zeros(n, int), np.ones(n, int)]
        result = evaluate_binary(y, np.r_[np.linspace(0.0, 0.4, n), np.linspace(0.6, 1.0, n)], 0.5, n_boot=50)
        assert result["auc"] == result["pr_auc"] == 1.0 and format_figure(result["pr_auc"]) == "1.000"


def test_evaluate_binary_structure_and_json():
    y, prob = synthetic_binary(500, seed=5)
    result = evaluate_binary(y, prob, 0.3, n_boot=200, class_names=("NORMAL", "PNEUMONIA"))
    text = json.dumps(result, allow_nan=False)
    assert json.loads(text) == result
    block_keys = {
        "auc",
        "accuracy",
        "sensitivity",
        "specificity",
        "precision",
        "npv",
        "f1",
        "threshold",
        "n",
        "pr_auc",
        "ece",
        "confusion_matrix",
        "ci",
    }
    assert block_keys <= result.keys() and block_keys == result["at_0_5"].keys()
    assert result["ci_unit"] == "film"
    assert result["threshold"] == 0.3 and result["at_0_5"]["threshold"] == 0.5
    assert result["auc"] == pytest.approx(roc_auc_score(y, prob))
    assert result["sensitivity"] > result["at_0_5"]["sensitivity"]
    assert result["confusion_matrix"] != result["at_0_5"]["confusion_matrix"]
    m = binary_metrics(y, prob, 0.3)
    assert result["confusion_matrix"]["counts"] == [[m["tn"], m["fp"]], [m["fn"], m["tp"]]]
    assert result["confusion_matrix"]["normalized"][1][1] == pytest.approx(m["sensitivity"])
    assert set(result["ci"]) == {"auc", "accuracy", "sensitivity", "specificity", "precision", "npv", "f1"}
    roc, pr = result["curves"]["roc"], result["curves"]["pr"]
    assert 2 < len(roc["fpr"]) == len(roc["tpr"]) == len(roc["thresholds"]) <= metrics.CURVE_POINTS
    assert len(pr["precision"]) == len(pr["recall"]) == metrics.CURVE_POINTS  # 500 distinct scores, thinned
    assert roc["thresholds"][0] is None  # sklearn's leading +inf is not valid JSON
    assert sum(result["curves"]["calibration"]["counts"]) == 500


def test_evaluate_multiclass_three_classes():
    rng = np.random.default_rng(6)
    y = rng.integers(0, 3, 600)
    probs = softmax(rng.normal(size=(600, 3)) + 2 * np.eye(3)[y])
    names = ["normal", "bacteria", "virus"]
    result = evaluate_multiclass(y, probs, names, n_boot=200)
    json.dumps(result, allow_nan=False)
    pred = probs.argmax(axis=1)
    assert result["accuracy"] == pytest.approx((pred == y).mean())
    assert result["macro_auc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    assert macro_auc(y, probs) == result["macro_auc"]  # the same figure without its intervals (INT8's gate)
    recalls = recall_score(y, pred, average=None)
    for name, recall in zip(names, recalls):
        assert result["per_class"][name]["sensitivity"] == pytest.approx(recall)
    assert result["balanced_accuracy"] == pytest.approx(recalls.mean())
    counts = np.array(result["confusion_matrix"]["counts"])
    assert counts.sum() == 600 and counts.trace() == (pred == y).sum()
    np.testing.assert_allclose(np.array(result["confusion_matrix"]["normalized"]).sum(axis=1), 1.0)
    for name in ("accuracy", "balanced_accuracy", "macro_auc"):
        lo, hi = result["ci"][name]
        assert lo < result[name] < hi, name
    assert set(result["curves"]["roc"]) == set(names)


def test_the_three_class_block_computes_each_class_auc_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The macro AUC is the mean of the per-class AUCs the block reports, each computed once, not again for the
    macro figure, and stays the figure macro_auc gives alone."""
    rng = np.random.default_rng(7)
    y = rng.integers(0, 3, 90)
    probs = softmax(rng.normal(size=(90, 3)) + 1.5 * np.eye(3)[y])
    computed = []
    roc = summaries._roc

    def counted(y_true, prob):  # the real curve and AUC, counted
        computed.append(1)
        return roc(y_true, prob)

    monkeypatch.setattr(summaries, "_roc", counted)  # where the per-class curves and AUCs look it up
    result = evaluate_multiclass(y, probs, ["normal", "bacteria", "virus"], n_boot=50)
    assert len(computed) == 3, "one curve and AUC a class"
    assert [c["auc"] for c in result["per_class"].values()] == [roc_auc_score(y == k, probs[:, k]) for k in range(3)]
    assert result["macro_auc"] == pytest.approx(np.mean([c["auc"] for c in result["per_class"].values()]))
    assert macro_auc(y, probs) == result["macro_auc"]


def _exact(k: int, n: int, level: float = 0.95) -> list[float]:
    ci = binomtest(k, n).proportion_ci(confidence_level=level, method="exact")
    return [ci.low, ci.high]


def test_proportions_get_exact_intervals_that_keep_width_at_a_rate_of_one():
    """30 of 30 positives found: a bootstrap only resamples 30 of 30 and said [1, 1]; 30/30 allows 0.884."""
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(30, int), np.zeros(300, int)]
    prob = np.r_[rng.uniform(0.6, 1.0, 30), rng.uniform(0.0, 0.7, 300)]
    ci = threshold_metrics_ci(y, prob, [0.55, 0.71], n_boot=200)
    for block, threshold in zip(ci, (0.55, 0.71)):
        m = binary_metrics(y, prob, threshold)
        assert block["sensitivity"] == pytest.approx(_exact(m["tp"], 30))
        assert block["specificity"] == pytest.approx(_exact(m["tn"], 300))
        assert block["precision"] == pytest.approx(_exact(m["tp"], m["tp"] + m["fp"]))
        assert block["accuracy"] == pytest.approx(_exact(m["tp"] + m["tn"], 330))
    assert ci[0]["sensitivity"] == pytest.approx([beta.ppf(0.025, 30, 1), 1.0]) and ci[0]["sensitivity"][0] < 0.89
    assert binary_metrics(y, prob, 0.71)["fp"] == 0 and ci[1]["specificity"][0] == pytest.approx(0.025 ** (1 / 300))
    assert threshold_metrics_ci([1, 1, 1, 0], [0.9, 0.8, 0.2, 0.1], [0.5])[0]["sensitivity"] == pytest.approx(
        [beta.ppf(0.025, 2, 2), beta.ppf(0.975, 3, 1)])  # 2 of 3: not a 3-point bootstrap distribution


def test_a_bootstrap_without_spread_is_no_interval_and_a_perfect_auc_gets_an_exact_bound():
    """Classes perfectly separated: every resample has AUC 1 and F1 1. The AUC's interval is the exact bound from
    min(n_pos, n_neg) disjoint pairs all ordered rightly; F1's, rather than [1, 1] (or none, as it had been), the
    harmonic means of the exact recall and precision intervals at 97.5% each (Bonferroni): F1 grows with both."""
    y = np.r_[np.ones(20, int), np.zeros(50, int)]
    prob = np.r_[np.linspace(0.6, 0.9, 20), np.linspace(0.1, 0.4, 50)]
    result = evaluate_binary(y, prob, 0.5, n_boot=200)
    assert result["auc"] == 1.0 and result["ci"]["auc"] == pytest.approx([0.025 ** (1 / 20), 1.0])
    assert result["f1"] == 1.0 and result["ci"]["f1"] == pytest.approx([0.0125 ** (1 / 20), 1.0])
    assert result["ci"]["sensitivity"] == pytest.approx(_exact(20, 20))
    reversed_ci = threshold_metrics_ci(y, 1 - prob, [0.5], n_boot=200)[0]["auc"]
    assert reversed_ci == pytest.approx([0.0, 1 - 0.025 ** (1 / 20)])
    tied = threshold_metrics_ci(y, np.full(y.size, 0.5), [0.5], n_boot=200)[0]  # every score the same: AUC 0.5
    assert all(math.isnan(v) for v in tied["auc"])
    harmonic = [2 * r * p / (r + p) for r, p in zip(_exact(20, 20, 0.975), _exact(20, 70, 0.975))]
    assert tied["f1"] == pytest.approx(harmonic)  # F1 2 * 20 / 90 in every resample
    assert tied["sensitivity"] == pytest.approx(_exact(20, 20)) and tied["specificity"] == pytest.approx(_exact(0, 50))


def test_multiclass_intervals_accuracy_exact_balanced_accuracy_bootstrapped_perfect_macro_auc_bounded():
    y = np.repeat([0, 1, 2], [40, 30, 10])
    probs = softmax(8 * np.eye(3)[y] + np.random.default_rng(1).normal(0, 0.1, (80, 3)))
    result = evaluate_multiclass(y, probs, ["normal", "bacteria", "virus"], n_boot=200)
    assert result["accuracy"] == 1.0 and result["ci"]["accuracy"] == pytest.approx(_exact(80, 80))
    # every resample all right: the mean of the classes' exact recall intervals at 1 - 5% / 3 each (Bonferroni)
    recalls = np.mean([_exact(n, n, 1 - 0.05 / 3) for n in (40, 30, 10)], axis=0)
    assert result["balanced_accuracy"] == 1.0 and result["ci"]["balanced_accuracy"] == pytest.approx(recalls)
    # each one-vs-rest AUC is 1: its exact bound, Bonferroni over the three (2.5% / 3 each), averaged
    bounds = [(0.025 / 3) ** (1 / min(n, 80 - n)) for n in (40, 30, 10)]
    assert result["macro_auc"] == 1.0 and result["ci"]["macro_auc"] == pytest.approx([np.mean(bounds), 1.0])
    called = y.copy()
    called[[0, 1, 40, 70, 71]] = [1, 2, 0, 0, 1]  # errors: balanced accuracy now varies over the resamples
    result = evaluate_multiclass(y, probs, ["normal", "bacteria", "virus"], n_boot=500, predicted=called)
    lo, hi = result["ci"]["balanced_accuracy"]
    assert result["balanced_accuracy"] == pytest.approx((38 / 40 + 29 / 30 + 8 / 10) / 3)
    assert lo < result["balanced_accuracy"] < hi
    assert result["ci"]["accuracy"] == pytest.approx(_exact(75, 80))


def _patient_films(n_patients: int = 40, films: int = 3, seed: int = 7) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, probabilities and patient ids of ``n_patients`` patients (the first half pneumonia) whose ``films``
    films each are copies of one another: one case each, written out ``films`` times."""
    rng = np.random.default_rng(seed)
    y = (np.arange(n_patients) < n_patients // 2).astype(int)
    prob = 1 / (1 + np.exp(-(rng.normal(size=n_patients) + 1.0 * (2 * y - 1))))
    return np.repeat(y, films), np.repeat(prob, films), np.repeat([f"person{i}" for i in range(n_patients)], films)


def test_without_shared_patients_the_intervals_are_the_film_intervals_exactly():
    y, prob = synthetic_binary(300, seed=8)
    films = threshold_metrics_ci(y, prob, [0.3, 0.5], n_boot=300, seed=2)
    assert threshold_metrics_ci(y, prob, [0.3, 0.5], n_boot=300, seed=2, groups=None) == films
    assert threshold_metrics_ci(y, prob, [0.3, 0.5], n_boot=300, seed=2, groups=[f"p{i}" for i in range(300)]) == films
    assert evaluate_binary(y, prob, 0.3, n_boot=300, groups=np.arange(300)) == evaluate_binary(y, prob, 0.3, n_boot=300)
    three = np.random.default_rng(8).integers(0, 3, 300)
    probs = softmax(np.random.default_rng(9).normal(size=(300, 3)) + np.eye(3)[three])
    multi = evaluate_multiclass(three, probs, ["a", "b", "c"], n_boot=300)
    assert multi["ci_unit"] == "film" and evaluate_multiclass(three, probs, ["a", "b", "c"], n_boot=300,
                                                              groups=np.arange(300)) == multi
    with pytest.raises(ValueError, match="groups has 2 patient ids but there are 300 films"):
        threshold_metrics_ci(y, prob, [0.5], groups=["a", "b"])


def _beta_interval(x: float, n: float) -> list[float]:
    """Clopper-Pearson's beta quantiles at a real-valued count x of n."""
    return [beta.ppf(0.025, x, n - x + 1) if x else 0.0, beta.ppf(0.975, x + 1, n - x) if x < n else 1.0]


def _kg(films: int, patients: int) -> float:
    """Korn and Graubard's degrees-of-freedom factor on the effective sample size: (t_{films-1} / t_{patients-1})^2."""
    return (student_t.ppf(0.975, films - 1) / student_t.ppf(0.975, patients - 1)) ** 2


def test_proportions_of_patients_whose_films_agree_count_patients_not_films():
    """40 patients with 3 identical films each: the design effect of the patients' spread is 120 / 39, so the films
    count as 39 cases (m - 1: the m / (m - 1) of the cluster variance), about one a patient, fewer still by Korn and
    Graubard's degrees of freedom; the interval holds Clopper-Pearson's on the patient counts and is much wider
    than the one on the films."""
    y, prob, patient = _patient_films()
    ci = threshold_metrics_ci(y, prob, [0.5], n_boot=300, groups=patient)[0]
    films = threshold_metrics_ci(y, prob, [0.5], n_boot=300)[0]
    m = binary_metrics(y, prob, 0.5)
    tp, tn = m["tp"] // 3, m["tn"] // 3  # patients found, patients cleared (20 of each class)
    assert 0 < tp < 20 and 0 < tn < 20
    for name, k, n in (("sensitivity", tp, 20), ("specificity", tn, 20), ("accuracy", tp + tn, 40)):
        n_eff = (n - 1) * _kg(3 * n, n)
        assert ci[name] == pytest.approx(_beta_interval(k / n * n_eff, n_eff)), name
        exact = _exact(k, n)
        assert ci[name][0] <= exact[0] + 1e-9 and ci[name][1] >= exact[1] - 1e-9, name
        assert ci[name][1] - ci[name][0] > 1.5 * (films[name][1] - films[name][0]), name
    # rates of 0 and 1 have no spread to measure: one case a patient, 30 of 30 films of 10 patients is 10 of 10, at
    # the degrees of freedom of 10 patients
    n_eff = 10 * _kg(30, 10)
    hits = metrics.proportion_ci(np.ones(30, bool), np.repeat(np.arange(10), 3))
    assert hits == pytest.approx(_beta_interval(n_eff, n_eff)) and metrics.proportion_ci(np.zeros(30, bool), np.repeat(
        np.arange(10), 3)) == pytest.approx(_beta_interval(0, n_eff))
    # one missed film never reads better than none: the effective size near a rate of 1 is capped at the patients
    # (a design effect measured on the one patient with a miss read about 1, and 29 of 30 got a higher lower bound)
    missed = np.r_[False, np.ones(29, bool)]
    assert metrics.proportion_ci(missed, np.repeat(np.arange(10), 3))[0] < hits[0]
    many = np.repeat(np.arange(150), 2)[:299]
    assert metrics.proportion_ci(np.r_[False, np.ones(298, bool)], many)[0] < metrics.proportion_ci(
        np.ones(299, bool), many)[0]
    # patients whose films disagree as often as independent films would: counted as patients all the same
    mixed = np.tile([True, False], 20)
    n_eff = 20 * _kg(40, 20)
    assert metrics.proportion_ci(mixed, np.repeat(np.arange(20), 2)) == pytest.approx(_beta_interval(n_eff / 2, n_eff))
    # one film a patient among the films counted (normals, when only pneumonia patients have several): exact
    sick = y == 1
    singles = threshold_metrics_ci(np.r_[y[sick], np.zeros(50, int)], np.r_[prob[sick], np.linspace(0, 0.6, 50)],
                                   [0.5], n_boot=50, groups=np.r_[patient[sick], [f"normal{i}" for i in range(50)]])[0]
    # 41 of the 50 normal films are below 0.5: the films' own Clopper-Pearson interval, which is scipy's
    assert singles["specificity"] == metrics.clopper_pearson(41, 50) == pytest.approx(_exact(41, 50))
    assert singles["sensitivity"] == ci["sensitivity"]


def test_bootstrap_and_perfect_auc_bound_resample_patients():
    y, prob, patient = _patient_films()
    ci = threshold_metrics_ci(y, prob, [0.5], n_boot=500, groups=patient)[0]
    films = threshold_metrics_ci(y, prob, [0.5], n_boot=500)[0]
    for name in ("auc", "f1"):
        assert ci[name][1] - ci[name][0] > 1.4 * (films[name][1] - films[name][0]), name
    assert threshold_metrics_ci(y, prob, [0.5], n_boot=500, groups=patient)[0] == ci, "the same seed, the same CI"
    assert threshold_metrics_ci(y, prob, [0.5], n_boot=500, seed=1, groups=patient)[0] != ci
    # separated: the bound counts patients, 20 with a positive film and 20 with a negative one, not 60 films
    separated = np.where(y == 1, 0.6 + prob / 10, prob / 10)
    result = evaluate_binary(y, separated, 0.5, n_boot=200, groups=patient)
    assert result["ci_unit"] == "patient" and result["ci"]["auc"] == pytest.approx([0.025 ** (1 / 20), 1.0])
    n_eff = 20 * _kg(int((y == 1).sum()), 20)
    assert result["ci"]["sensitivity"] == pytest.approx(_beta_interval(n_eff, n_eff))
    # 3 + 3 patients: a resample lacks a class one time in 32, and is left out of the AUC's interval
    few_y, few_patient = np.repeat([1, 1, 1, 0, 0, 0], 3), np.repeat(np.arange(6), 3)
    few = threshold_metrics_ci(few_y, np.repeat([0.3, 0.6, 0.8, 0.2, 0.5, 0.7], 3), [0.5], n_boot=200,
                               groups=few_patient)[0]
    assert 0 <= few["auc"][0] < 6 / 9 < few["auc"][1] <= 1
    apart = threshold_metrics_ci(few_y, np.repeat([0.6, 0.7, 0.8, 0.1, 0.2, 0.3], 3), [0.5], n_boot=200,
                                 groups=few_patient)[0]
    assert apart["auc"] == pytest.approx([0.025 ** (1 / 3), 1.0])


def test_multiclass_intervals_count_patients():
    rng = np.random.default_rng(10)
    cls = np.repeat([0, 1, 2], [16, 14, 10])
    probs = softmax(rng.normal(size=(40, 3)) + 1.5 * np.eye(3)[cls])
    y, P, patient = np.repeat(cls, 3), np.repeat(probs, 3, axis=0), np.repeat(np.arange(40), 3)
    names = ["normal", "bacteria", "virus"]
    result = evaluate_multiclass(y, P, names, n_boot=300, groups=patient)
    films = evaluate_multiclass(y, P, names, n_boot=300)
    assert result["ci_unit"] == "patient" and films["ci_unit"] == "film"
    correct = int((probs.argmax(axis=1) == cls).sum())
    n_eff = 39 * _kg(120, 40)
    assert result["ci"]["accuracy"] == pytest.approx(_beta_interval(correct / 40 * n_eff, n_eff))
    for name in ("accuracy", "balanced_accuracy", "macro_auc"):
        lo, hi = result["ci"][name]
        assert lo < result[name] < hi and hi - lo > 1.4 * (films["ci"][name][1] - films["ci"][name][0]), name
    perfect = evaluate_multiclass(y, np.eye(3)[y] * 0.9 + 0.05, names, n_boot=100, groups=patient)
    bounds = [(0.025 / 3) ** (1 / min(n, 40 - n)) for n in (16, 14, 10)]  # patients, not films
    assert perfect["ci"]["macro_auc"] == pytest.approx([np.mean(bounds), 1.0])


def test_multiclass_figures_of_one_patients_films_have_no_macro_auc_interval():
    """Every film under one patient id (a manifest or DICOM headers anonymised to one PatientID): the macro AUC's
    interval divided by the patients less one, and `evaluate` of a multiclass bundle, or with --etiology, ended in a
    ZeroDivisionError traceback. With one patient on a side the spread between patients cannot be measured: no
    interval, as for the binary AUC."""
    rng = np.random.default_rng(3)
    y = np.repeat([0, 1, 2], 4)
    result = evaluate_multiclass(y, softmax(rng.normal(size=(12, 3)) + np.eye(3)[y]), ["normal", "bacteria", "virus"],
                                 n_boot=50, groups=["ANON"] * 12)
    assert result["ci_unit"] == "patient" and 0 < result["macro_auc"] < 1 and result["ci"]["macro_auc"] == [None, None]
    lo, hi = result["ci"]["accuracy"]
    assert lo < result["accuracy"] < hi


def test_a_figure_with_its_interval_or_said_to_have_none() -> None:
    assert with_ci(0.91234, [0.88, 0.94]) == "0.912 (95% CI 0.880-0.940)"
    assert with_ci(0.91234, [0.88, 0.94], 4) == "0.9123 (95% CI 0.8800-0.9400)"  # bounds at the value's decimals
    assert with_ci(1.0, None) == with_ci(1.0, [None, None]) == "1.000 (no 95% CI)"
    assert with_ci(None, None) == with_ci(float("nan"), [None, None]) == "n/a"


def test_a_figure_short_of_one_never_reads_as_one() -> None:
    """One missed film in 2,500 is a sensitivity of 0.9996: shown as 1.000 it reads as "misses nothing"."""
    assert format_figure(0.9996) == "0.999" and format_figure(0.99996, 4) == "0.9999"
    assert format_figure(1.0) == "1.000" and format_figure(0.9994) == "0.999" and format_figure(0.12345) == "0.123"
    assert with_ci(0.9996, [0.9978, 1.0]) == "0.999 (95% CI 0.998-1.000)"  # a bound of exactly 1 stays 1


def _clustered_set(
    rng: np.random.Generator, patients: int, max_films: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """bench_ci_coverage's model: ``patients`` pneumonia then as many normal patients, 1..max_films films each, a
    film's logit = class mean (+-1.2) + the patient's effect (sd 1.2) + its own (sd 0.3)."""
    films = rng.integers(1, max_films + 1, 2 * patients)
    patient = np.repeat(np.arange(2 * patients), films)
    y = (patient < patients).astype(int)
    logit = 1.2 * (2 * y - 1) + rng.normal(0, 1.2, 2 * patients)[patient] + rng.normal(0, 0.3, patient.size)
    return y, 1 / (1 + np.exp(-logit)), patient


def test_auc_and_f1_intervals_cover_about_95_percent_at_12_and_12_patients():
    """The percentile bootstrap covered the AUC in about 86% of such sets and F1 (one film a patient) in about 90%;
    the logit DeLong (by patient) and BCa intervals should cover about 95%. Truths: AUC Phi(2.4 / (sqrt 2 sd)); with
    as many films of each class on average, F1 at 0.5 is the sensitivity, Phi(1.2 / sd), sd = hypot(1.2, 0.3)."""
    sd = math.hypot(1.2, 0.3)
    auc_truth, f1_truth = norm.cdf(2 * 1.2 / (math.sqrt(2) * sd)), norm.cdf(1.2 / sd)
    rng = np.random.default_rng(2024)
    covered = {"auc": 0, "f1": 0}
    draws = 300
    for i in range(draws):
        y, prob, patient = _clustered_set(rng, 12, 4)
        lo, hi = threshold_metrics_ci(y, prob, [0.5], n_boot=300, seed=i, groups=patient)[0]["auc"]
        covered["auc"] += lo <= auc_truth <= hi
        y, prob, _ = _clustered_set(rng, 12, 1)
        lo, hi = threshold_metrics_ci(y, prob, [0.5], n_boot=300, seed=i)[0]["f1"]
        covered["f1"] += lo <= f1_truth <= hi
    assert 0.92 <= covered["auc"] / draws <= 0.99
    assert 0.92 <= covered["f1"] / draws <= 0.99


def _newcombe(theta: float, n_pos: float, n_neg: float) -> float:
    """Hanley & McNeil 1982 as they wrote it, (A (1 - A) + (n_pos - 1)(Q1 - A^2) + (n_neg - 1)(Q2 - A^2)) / (n_pos
    n_neg), Q1 = A / (2 - A), Q2 = 2 A^2 / (1 + A), with both n - 1 replaced by N* = (n_pos + n_neg) / 2 - 1 as
    Newcombe (2006) does."""
    q1, q2, n_star = theta / (2 - theta), 2 * theta**2 / (1 + theta), (n_pos + n_neg) / 2 - 1
    return (theta * (1 - theta) + n_star * (q1 - theta**2) + n_star * (q2 - theta**2)) / (n_pos * n_neg)


def _worth(films: tuple[int, int], patients: tuple[int, int], by_patient: float, by_film: float) -> tuple[float, ...]:
    """Each side's films over the design effect by_patient / by_film (at least 1), between its patients and its
    films."""
    d = max(by_patient / by_film, 1.0)
    return tuple(min(max(n / d, m), n) for n, m in zip(films, patients))


def _score_set(estimate: float, variance_at, measured: float, df: int) -> list[float]:
    """The ends of {theta : (estimate - theta)^2 <= q^2 max(measured / V(estimate), 1) V(theta)} on a grid of a
    million AUCs (no root finder)."""
    theta = np.linspace(0, 1, 1_000_001)
    scale = max(measured / variance_at(estimate), 1.0)
    inside = theta[(estimate - theta) ** 2 <= student_t.ppf(0.975, df) ** 2 * scale * variance_at(theta)]
    return [inside.min(), inside.max()]


def test_auc_interval_is_newcombes_score_interval_at_the_units_the_films_are_worth():
    """Against the formulas written out pair by pair: placements V10 / V01 from all positive-negative pairs (ties
    half), summed by patient, Obuchowski's S10, S01 and S11 (patients holding films of both classes) for the
    measured variance; the same by film for the design effect; Newcombe's variance at each side's films over the
    design effect (between its patients and its films) for V(theta); the interval from a grid."""
    rng = np.random.default_rng(5)
    scores = rng.integers(0, 8, 40).astype(float)
    positive = rng.random(40) < 0.5
    patient = rng.permutation(np.arange(40) % 12)  # 12 patients, some with films of both classes
    psi = (scores[positive][:, None] > scores[~positive]) + 0.5 * (scores[positive][:, None] == scores[~positive])
    n_pos, n_neg, auc = positive.sum(), (~positive).sum(), psi.mean()
    v10 = np.array([psi.mean(axis=1)[patient[positive] == c].sum() for c in range(12)])
    v01 = np.array([psi.mean(axis=0)[patient[~positive] == c].sum() for c in range(12)])
    m10 = np.array([(patient[positive] == c).sum() for c in range(12)])
    m01 = np.array([(patient[~positive] == c).sum() for c in range(12)])
    i10, i01 = (m10 > 0).sum(), (m01 > 0).sum()
    s10 = i10 / ((i10 - 1) * n_pos) * ((v10 - m10 * auc) ** 2).sum()
    s01 = i01 / ((i01 - 1) * n_neg) * ((v01 - m01 * auc) ** 2).sum()
    s11 = 12 / 11 * ((v10 - m10 * auc) * (v01 - m01 * auc)).sum()
    measured = s10 / n_pos + s01 / n_neg + 2 * s11 / (n_pos * n_neg)
    by_film = (((psi.mean(axis=1) - auc) ** 2).sum() / ((n_pos - 1) * n_pos)
               + ((psi.mean(axis=0) - auc) ** 2).sum() / ((n_neg - 1) * n_neg))
    sizes = _worth((n_pos, n_neg), (i10, i01), measured, by_film)
    assert sizes != (i10, i01)  # the design effect is measured here, not taken as the patients
    expected = _score_set(auc, lambda theta: _newcombe(theta, *sizes), measured, min(i10, i01) - 1)
    ci = threshold_metrics_ci(positive.astype(int), scores, [4], n_boot=50, groups=patient)[0]["auc"]
    assert ci == pytest.approx(expected, abs=2e-6)
    assert ci[0] < auc < ci[1]


def test_the_auc_interval_does_not_depend_on_which_class_is_called_positive() -> None:
    """Hanley-McNeil's variance with n_pos - 1 and n_neg - 1 is small when negatives are few: the same films with
    the classes swapped (and the scores negated, the same AUC) had [0.930, 0.9998] one way, [0.985, 0.999] the
    other. Newcombe's N* for both makes it one interval."""
    rng = np.random.default_rng(3)
    films = rng.integers(1, 5, 330)
    patient = np.repeat(np.arange(330), films)
    y = (patient < 300).astype(int)  # 300 positive patients, 30 negative
    score = 2.9 * y + rng.normal(0, 1.2, 330)[patient] + rng.normal(0, 0.3, patient.size)
    one = metrics._auc_ci(score, y == 1, patient, 0.05)
    other = metrics._auc_ci(-score, y == 0, patient, 0.05)
    assert one == pytest.approx(other, abs=1e-9) and one[0] < roc_auc_score(y, score) < one[1]


def test_macro_auc_interval_is_the_score_interval_of_the_mean_of_the_one_vs_rest_aucs():
    """Against the formula written out pair by pair: each class's one-vs-rest placements from all its
    positive-negative pairs (ties half), each film's influence on that AUC, averaged over the classes and summed by
    patient (patients holding films of several classes) for the measured variance, by film for the design effect;
    V(theta) the mean of the classes' Newcombe variances at the units their films are worth, over 3; a t quantile
    on the fewest patients on a side of any class, minus one; the interval from a grid."""
    rng = np.random.default_rng(6)
    y = rng.integers(0, 3, 45)
    probs = softmax(rng.integers(0, 4, (45, 3)).astype(float))  # ties within each class's column
    patient = rng.permutation(np.arange(45) % 15)
    influence, per_film, aucs, films, sides = np.zeros(15), np.zeros(45), [], [], []
    for k in range(3):
        pos, neg = y == k, y != k
        psi = (probs[pos, k][:, None] > probs[neg, k]) + 0.5 * (probs[pos, k][:, None] == probs[neg, k])
        auc = psi.mean()
        film = np.zeros(45)
        film[pos] = (psi.mean(axis=1) - auc) / pos.sum()
        film[neg] = (psi.mean(axis=0) - auc) / neg.sum()
        influence += np.array([film[patient == c].sum() for c in range(15)]) / 3
        per_film += film / 3
        aucs.append(auc)
        films.append((pos.sum(), neg.sum()))
        sides.append((np.unique(patient[pos]).size, np.unique(patient[neg]).size))
    macro, measured = np.mean(aucs), 15 / 14 * (influence**2).sum()
    sizes = [_worth(n, m, measured, 45 / 44 * (per_film**2).sum()) for n, m in zip(films, sides)]
    expected = _score_set(macro, lambda theta: sum(_newcombe(theta, *size) for size in sizes) / 9, measured,
                          min(min(side) for side in sides) - 1)
    result = evaluate_multiclass(y, probs, ["a", "b", "c"], n_boot=50, groups=patient)
    assert result["macro_auc"] == pytest.approx(macro)
    assert result["ci"]["macro_auc"] == pytest.approx(expected, abs=2e-6)


def test_auc_interval_degenerate_cases():
    """Perfect separation keeps the exact bound (not [1, 1], which would say certain); a single positive patient
    (or all films from one patient) leaves no spread between patients of a class to measure: no interval, unless
    separated, when the bound for m = 1 pair, [0.025, 1], still says honestly how little is known."""
    y = np.r_[np.ones(6, int), np.zeros(30, int)]
    prob = np.r_[np.linspace(0.55, 0.9, 6), np.linspace(0.05, 0.6, 30)]  # some negatives above some positives
    one_sick = np.r_[np.zeros(6, int), np.arange(1, 31)]  # the six positive films are one patient's
    ci = threshold_metrics_ci(y, prob, [0.5], n_boot=200, groups=one_sick)[0]
    assert all(math.isnan(v) for v in ci["auc"])
    films = threshold_metrics_ci(y, prob, [0.5], n_boot=200)[0]["auc"]  # as six patients it has an interval
    assert 0 < films[0] < roc_auc_score(y, prob) < films[1] < 1
    separated = np.where(y == 1, prob + 1, prob) / 2
    assert threshold_metrics_ci(y, separated, [0.5], n_boot=200, groups=one_sick)[0]["auc"] == pytest.approx(
        [0.025, 1.0])
    alone = np.zeros(y.size, int)  # every film one patient's
    lone = threshold_metrics_ci(y, prob, [0.5], n_boot=200, groups=alone)[0]
    assert all(math.isnan(v) for v in lone["auc"])
    assert lone["f1"][0] < 0.01 and lone["f1"][1] > 0.99  # one patient's worth of evidence: next to nothing known
    assert threshold_metrics_ci(y, separated, [0.5], n_boot=200, groups=alone)[0]["auc"] == pytest.approx([0.025, 1.0])
    # one pair misordered of 6 x 30: a real interval, below 1 and not reaching it
    close = separated.copy()
    close[0] = 0.2
    lo, hi = threshold_metrics_ci(y, close, [0.5], n_boot=200)[0]["auc"]
    assert lo < roc_auc_score(y, close) < hi < 1


def test_bca_without_bias_or_skew_is_the_percentile_interval_and_the_f1_jackknife_leaves_patients_out():
    samples = np.r_[np.linspace(0.2, 0.8, 401), math.nan]
    assert metrics._bca_ci(samples, 0.5, np.full(10, 0.5), 0.05) == pytest.approx(
        np.percentile(samples[:-1], [2.5, 97.5]))
    assert all(math.isnan(v) for v in metrics._bca_ci(samples, 0.9, np.full(10, 0.5), 0.05))  # beyond every one
    called = np.array([1, 1, 0, 1, 0, 0, 1], bool)
    positive = np.array([1, 1, 1, 0, 0, 1, 0], bool)
    patient = np.array([0, 0, 1, 1, 2, 3, 3])
    left = metrics._ratio_jackknife(2.0 * (called & positive), called + positive.astype(float), patient)
    expected = [binary_metrics(positive[patient != c], called[patient != c].astype(float), 0.5)["f1"]
                for c in range(4)]
    np.testing.assert_allclose(left, expected)


def test_calibration_refuses_scores_that_are_no_probabilities_and_an_empty_set_is_said() -> None:
    with pytest.raises(ValueError, match=r"calibration needs probabilities in \[0, 1\], got scores from -0.2 to 1.7"):
        calibration([0, 1, 1], [-0.2, 0.5, 1.7])
    with pytest.raises(ValueError, match="no labelled films to measure"):  # was numpy's "need at least one array"
        evaluate_binary([], [], 0.5)


def test_the_threshold_interval_narrows_with_more_films_and_holds_the_threshold() -> None:
    """Where the policy's threshold falls on other films like these (a bootstrap of them): around the threshold the
    films chose, narrower on ten times as many, the same on a rerun, and by patient when patients are given."""
    rng = np.random.default_rng(5)

    def films(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 2, n)
        return y, 1 / (1 + np.exp(-(rng.normal(0, 1, n) + 2.5 * (2 * y - 1))))

    widths = []
    for n in (200, 2000):
        y, p = films(n)
        low, high = threshold_interval(y, p, 0.95, None)
        assert low <= choose_threshold(y, p, 0.95) <= high
        assert threshold_interval(y, p, 0.95, None) == [low, high]
        widths.append(high - low)
    assert widths[1] < widths[0] / 2
    y, p = films(300)
    patients = np.repeat(np.arange(100), 3)  # three films a patient, each patient's alike: fewer independent cases
    y, p = np.repeat(y[:100], 3), np.repeat(p[:100], 3)
    by_film, by_patient = threshold_interval(y, p, None, 0.1), threshold_interval(y, p, None, 0.1, patients)
    assert by_patient[1] - by_patient[0] > by_film[1] - by_film[0]


def test_no_threshold_interval_when_most_resamples_cannot_meet_the_policy() -> None:
    """One negative film among many positives: a false-positive ceiling of 0 holds in no resample that draws that
    film above every positive, so no interval is given rather than one from the few resamples that could."""
    y = np.r_[np.ones(40, int), 0]
    p = np.r_[np.linspace(0.1, 0.9, 40), 0.95]  # the negative film scores highest: no positive found under a 0 ceiling
    assert threshold_interval(y, p, None, 0.0) == []


@pytest.mark.parametrize("target, ceiling", [(0.95, None), (1.0, None), (None, 0.1), (None, 0.0), (None, None)])
def test_each_resample_of_the_threshold_interval_chooses_as_choose_threshold_does(target, ceiling) -> None:
    """The interval chooses the threshold of every resample at once: on each, the very threshold choose_threshold
    chooses on that resample's films (ties, scores a float apart, patients resampled whole), and none where it
    refuses or where the resample holds one class."""
    from pneumoscan.core.metrics.intervals import _bootstrap_weights
    from pneumoscan.core.metrics.thresholds import _resampled_thresholds

    rng = np.random.default_rng(3)
    for trial in range(12):
        n = int(rng.integers(4, 40))
        y = rng.integers(0, 2, n)
        p = (rng.integers(0, 5, n) / 4, rng.random(n), np.nextafter(0.5, np.arange(n) % 3))[trial % 3]
        p = np.where(y == 1, np.minimum(p + 0.2 * rng.random(), 1), p)
        patients = rng.integers(0, n // 2, n) if trial % 2 else None
        counts = _bootstrap_weights(y, np.unique(patients, return_inverse=True)[1] if trial % 2 else None, 40, trial)
        expected, one_class = [], 0
        for row in counts:
            films = np.repeat(np.arange(n), row.astype(int))
            if y[films].min() == y[films].max():
                one_class += 1
                expected.append(np.nan)
                continue
            try:
                expected.append(choose_threshold(y[films], p[films], target, ceiling))
            except ValueError:
                expected.append(np.nan)
        chosen, counted = _resampled_thresholds(y, p, counts, target, ceiling, chunk=7)
        assert counted == one_class and np.array_equal(chosen, expected, equal_nan=True), trial


def test_f1_is_left_out_of_resamples_without_a_positive_film(monkeypatch: pytest.MonkeyPatch) -> None:
    """4 positive films of 2 patients among 12 negatives: a resample of patients without a positive film had counted
    F1 as 0 after a false positive, pulling the interval's lower end to 0 though F1 is undefined there. One positive
    film is missed, so that recall is neither 0 nor 1 (whose exact interval widens F1's) and the bootstrap alone
    decides: two positive patients are too few for it (F1 then takes the Bonferroni bound), so it is made to decide
    here, where resamples without a positive patient are common enough to show."""
    monkeypatch.setattr("pneumoscan.core.metrics.intervals.FEW_PATIENTS", 2)
    y = np.r_[1, 1, 1, 1, np.zeros(12, int)]
    prob = np.r_[0.9, 0.45, 0.8, 0.7, 0.6, np.linspace(0.05, 0.4, 11)]  # one negative above 0.5
    patients = np.r_[0, 0, 1, 1, np.arange(2, 14)]
    lo, hi = threshold_metrics_ci(y, prob, [0.5], n_boot=1000, groups=patients)[0]["f1"]
    assert lo > 0.3 and hi == pytest.approx(1.0)


def test_the_auc_interval_covers_the_truth_near_an_auc_of_one() -> None:
    """At an AUC of 0.996 (the shipped models' ground) with 150 + 150 patients of 1-4 alike-scored films,
    DeLong's logit interval covered the truth in about 0.91 of sets, most misses a lower bound above it: a set whose
    AUC comes out high also measures a small variance. The score interval should cover about 0.95 or more."""
    sd, mean = math.hypot(1.2, 0.3), 2.32
    truth = norm.cdf(2 * mean / (math.sqrt(2) * sd))
    rng, covered, draws = np.random.default_rng(7), 0, 200
    for _ in range(draws):
        films = rng.integers(1, 5, 300)
        patient = np.repeat(np.arange(300), films)
        y = (patient < 150).astype(int)
        logit = mean * (2 * y - 1) + rng.normal(0, 1.2, 300)[patient] + rng.normal(0, 0.3, patient.size)
        lo, hi = metrics._auc_ci(logit, y == 1, patient, 0.05)
        covered += lo <= truth <= hi
        assert 0 < lo < hi < 1
    assert covered / draws >= 0.95


def test_the_balanced_accuracy_interval_is_bca_over_patients() -> None:
    """Its percentile interval covered 0.79-0.93 of simulated sets: BCa, with the leave-one-patient-out jackknife
    of the classes' recalls, as F1's."""
    rng = np.random.default_rng(11)
    cls = np.repeat([0, 1, 2], 14)
    probs = softmax(rng.normal(size=(42, 3)) + 3.0 * np.eye(3)[cls])
    y, P, patient = np.repeat(cls, 2), np.repeat(probs, 2, axis=0), np.repeat(np.arange(42), 2)
    result = evaluate_multiclass(y, P, ["a", "b", "c"], n_boot=500, groups=patient)
    correct, weights = P.argmax(axis=1) == y, metrics._bootstrap_weights(y, patient, 500, metrics.BOOTSTRAP_SEED)
    in_class = [y == k for k in range(3)]
    resampled = np.mean([weights @ (c & correct) / (weights @ c) for c in in_class], axis=0)
    jackknife = np.mean([[(correct & c & (patient != u)).sum() / (c & (patient != u)).sum() for u in range(42)]
                         for c in in_class], axis=0)
    expected = metrics._bca_ci(resampled, result["balanced_accuracy"], jackknife, 0.05)
    assert result["ci"]["balanced_accuracy"] == pytest.approx(expected)
    assert expected != pytest.approx(list(np.percentile(resampled, [2.5, 97.5])))


def test_npv_prevalence_and_patients_are_reported_beside_precision_and_the_films() -> None:
    """A researcher publishing the figures needs the NPV (it was nowhere), the prevalence PPV and NPV hold at, and
    how many patients the patient-counted intervals rest on (every n counted films)."""
    y = np.r_[np.zeros(40), np.ones(30)]
    p = np.r_[np.linspace(0.0, 0.6, 40), np.linspace(0.3, 1.0, 30)]
    groups = [f"n{i // 2}" for i in range(40)] + [f"p{i // 3}" for i in range(30)]
    m = metrics.evaluate_binary(y, p, 0.5, groups=groups)
    called = p >= 0.5
    tn, fn = int((~called & (y == 0)).sum()), int((~called & (y == 1)).sum())
    assert m["npv"] == pytest.approx(tn / (tn + fn)) and m["at_0_5"]["npv"] == m["npv"]
    low, high = m["ci"]["npv"]
    assert low < m["npv"] < high <= 1
    assert m["prevalence"] == pytest.approx(30 / 70)
    assert m["patients"] == {"positive": 10, "negative": 20, "all": 30} and m["ci_unit"] == "patient"
    assert metrics.evaluate_binary(y, p, 0.5)["patients"] is None  # films are the unit: no patients to count


def test_f1_of_one_positive_patient_gets_the_bound_not_a_bootstrap() -> None:
    """Three films of one child among 69 normal ones: resamples without the child were left out, so every resample
    kept had the child's recall, and F1's interval (0.44-0.86) was narrower than recall's and precision's allow."""
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(69), np.ones(3)]
    p = np.r_[rng.uniform(0.0, 0.6, 69), [0.7, 0.8, 0.9]]
    groups = [f"n{i}" for i in range(69)] + ["child"] * 3
    m = metrics.evaluate_binary(y, p, 0.5, groups=groups)
    recall, precision = (metrics.proportion_ci(hits, units, metrics.ALPHA / 2) for hits, units in (
        (p[y == 1] >= 0.5, np.zeros(3)), (y[p >= 0.5] == 1, np.asarray(groups)[p >= 0.5])))
    low = 2 * recall[0] * precision[0] / (recall[0] + precision[0])
    assert m["ci"]["f1"] == pytest.approx([low, 2 * recall[1] * precision[1] / (recall[1] + precision[1])])
    assert m["ci"]["f1"][0] < 0.05 and m["ci"]["f1"][0] <= m["f1"] <= m["ci"]["f1"][1]


@pytest.mark.parametrize("seed", range(5))
def test_the_fast_roc_points_are_sklearns(seed: int) -> None:
    """The threshold rules' own ROC points (a millisecond less a call, on a thousand resamples) are scikit-learn's
    roc_curve(drop_intermediate=False) less its leading +inf point, on scores with many ties."""
    from sklearn.metrics import roc_curve

    from pneumoscan.core.metrics.thresholds import _roc_points

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 200)
    y[:2] = (0, 1)
    p = np.round(rng.random(200), 1 + seed % 3)  # one or two decimals: many ties
    fpr, tpr, thresholds = roc_curve(y, p, drop_intermediate=False)
    ours = _roc_points(y, p)
    for theirs, mine in zip((fpr[1:], tpr[1:], thresholds[1:]), ours):
        np.testing.assert_allclose(mine, theirs, rtol=0, atol=1e-12)


def test_net_benefit_is_vickers_and_elkins_on_a_hand_worked_example() -> None:
    """10 films, 3 positive. At pt 0.25 (odds 1/3) the films at or above it are 0.9, 0.6 (positive), 0.7 and 0.3
    (negative): 2/10 - 2/10 / 3 = 0.1333; treat all 3/10 - 7/10 / 3 = 0.0667. At pt 0.5 (odds 1): 0.9, 0.6 and
    0.7: 2/10 - 1/10 = 0.1; treat all 0.3 - 0.7 = -0.4. Sensitivity and specificity recompute each."""
    y = [1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
    p = [0.9, 0.6, 0.2, 0.7, 0.3, 0.1, 0.1, 0.05, 0.2, 0.15]
    curve = metrics.net_benefit(y, p, [0.25, 0.5])
    assert curve["threshold"] == [0.25, 0.5]
    assert np.allclose(curve["net_benefit"], [0.2 - 0.2 / 3, 0.1])
    assert np.allclose(curve["treat_all"], [0.3 - 0.7 / 3, -0.4]) and curve["treat_none"] == [0.0, 0.0]
    assert np.allclose(curve["sensitivity"], [2 / 3, 2 / 3]) and np.allclose(curve["specificity"], [5 / 7, 6 / 7])
    prevalence, odds = 0.3, np.array([1 / 3, 1.0])  # the docstring's recomputation at a prevalence gives the same
    recomputed = (np.array(curve["sensitivity"]) * prevalence
                  - (1 - np.array(curve["specificity"])) * (1 - prevalence) * odds)
    assert np.allclose(recomputed, curve["net_benefit"])


def test_net_benefit_interval_with_nothing_called_is_the_bonferroni_bound_of_the_exact_rates() -> None:
    """Above every score no film is called: net benefit is 0 in every resample, which shows none of its uncertainty,
    so its interval is Se P - (1 - Sp)(1 - P) pt/(1 - pt) at the ends of sensitivity's (0 of 4), specificity's
    (6 of 6) and the prevalence's (4 of 10) exact intervals at 1 - 0.05/3 each, written out here from scipy's
    Clopper-Pearson."""
    pt = 0.95
    odds = pt / (1 - pt)
    (low, high), = metrics.net_benefit_ci(Y_SMALL, P_SMALL, [pt])
    level = 1 - 0.05 / 3
    se_high = binomtest(0, 4).proportion_ci(level, "exact").high
    sp_low = binomtest(6, 6).proportion_ci(level, "exact").low
    prevalence = binomtest(4, 10).proportion_ci(level, "exact")
    assert (low, high) == pytest.approx((-(1 - prevalence.low) * (1 - sp_low) * odds, prevalence.high * se_high))


def test_net_benefit_interval_holds_it_over_a_sensitivity_of_1s_exact_interval() -> None:
    """At pt 0.3 every positive film is called (sensitivity 4 of 4, which no resample changes) and half the
    negative ones: the interval reaches down to the net benefit at sensitivity's exact lower end, specificity as
    observed, and holds the figure; at 0.5 (sensitivity 3 of 4, specificity 4 of 6) it is the bootstrap's alone,
    around the figure and within what the films allow (at most the prevalence)."""
    curve = metrics.net_benefit(Y_SMALL, P_SMALL, [0.3, 0.5])
    (low, high), (low_5, high_5) = metrics.net_benefit_ci(Y_SMALL, P_SMALL, [0.3, 0.5])
    se_low = binomtest(4, 4).proportion_ci(0.95, "exact").low
    assert low == pytest.approx(0.4 * se_low - 0.6 * 0.5 * 0.3 / 0.7) and low < curve["net_benefit"][0] < high
    assert low_5 < curve["net_benefit"][1] < high_5 <= 0.4


def test_net_benefit_interval_of_too_few_positive_patients_is_a_bonferroni_bound_with_prevalence() -> None:
    """40 patients, 3 of them positive (two films each): too few for a bootstrap of patients to show their spread
    (FEW_PATIENTS, as F1's interval), so the interval at pt 0.3 is Se P - (1 - Sp)(1 - P) pt/(1 - pt) at the ends of
    sensitivity's, specificity's and the prevalence's exact intervals by patient at 1 - 0.05/3 each, as
    proportion_ci gives them (the prevalence's too, which a cohort's few positive patients leave uncertain), and
    holds the figure."""
    y, p = synthetic_binary(40, seed=2)
    y = (np.arange(40) < 3).astype(int)  # three positive patients
    groups = np.repeat(np.arange(40), 2)
    y, p = y[groups], np.clip(p[groups] + 0.3 * y[groups], 0, 1)
    pt = 0.3
    called = p >= pt
    odds = pt / (1 - pt)
    (low, high), = metrics.net_benefit_ci(y, p, [pt], groups=groups)
    se = metrics.proportion_ci(called[y == 1], groups[y == 1], 0.05 / 3)
    sp = metrics.proportion_ci(~called[y == 0], groups[y == 0], 0.05 / 3)
    shares = metrics.proportion_ci(y == 1, groups, 0.05 / 3)
    assert (low, high) == pytest.approx([share * s - (1 - share) * (1 - q) * odds
                                         for s, q, share in zip(se, sp, shares)])
    assert low < metrics.net_benefit(y, p, [pt])["net_benefit"][0] < high


def test_net_benefit_interval_counts_a_patients_films_once() -> None:
    """Each of 80 patients filmed three times, the films scored alike: counted by patient, the interval is about
    that of the patients' single films, and wider than that of the same films taken as independent cases."""
    y, p = synthetic_binary(80, seed=4)
    three = np.repeat(np.arange(80), 3)
    pts = [0.2, 0.5]
    single = metrics.net_benefit_ci(y, p, pts, groups=np.arange(80) % 79)  # one patient with two films: by patient
    clustered = metrics.net_benefit_ci(y[three], p[three], pts, groups=three)
    apart = metrics.net_benefit_ci(y[three], p[three], pts)
    for one, by_patient, by_film in zip(single, clustered, apart):
        assert np.ptp(by_patient) == pytest.approx(np.ptp(one), rel=0.2)
        assert np.ptp(by_film) < 0.75 * np.ptp(by_patient)


def test_a_decision_curve_spans_its_range_in_steps_and_refuses_one_outside_0_to_1() -> None:
    """0.01 to 0.99 is 99 thresholds; a range of its own ends at its HIGH; 0 or 1 (odds 0 or infinite), a reversed
    range and a threshold of 1 given to net_benefit are refused."""
    default = metrics.decision_thresholds()
    assert default.size == 99 and default[0] == 0.01 and default[-1] == 0.99
    assert np.allclose(np.diff(default), 0.01)
    assert metrics.decision_thresholds(0.05, 0.333).tolist()[-2:] == [0.33, 0.333]
    for low, high in ((0.0, 0.5), (0.2, 1.0), (0.5, 0.2)):
        with pytest.raises(ValueError, match="0 < LOW < HIGH < 1"):
            metrics.decision_thresholds(low, high)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        metrics.net_benefit([0, 1], [0.2, 0.8], [1.0])


# 10 pneumonia films, 9 called (sensitivity 0.9), and 10 normal ones, 2 called (specificity 0.8), at threshold 0.5
_AT_PREVALENCE = ([1] * 10 + [0] * 10, [0.9] * 9 + [0.1] + [0.9] * 2 + [0.1] * 8)


def test_figures_at_a_prevalence_are_bayes_from_sensitivity_and_specificity() -> None:
    """Sensitivity 0.9 and specificity 0.8 at a prevalence of 10 %: PPV = 0.09 / (0.09 + 0.2 × 0.9) = 1/3, NPV =
    0.72 / (0.72 + 0.1 × 0.1) = 0.72 / 0.73, accuracy 0.09 + 0.72 = 0.81; at threshold probability 0.5 (odds 1) net
    benefit 0.09 - 0.18 = -0.09, treat all 0.1 - 0.9 = -0.8. At the set's own prevalence (50 %) they are the set's
    figures: precision 9/11, NPV 8/9, accuracy 17/20."""
    y, p = _AT_PREVALENCE
    block = metrics.at_prevalence(y, p, 0.5, [0.1, 0.5])
    assert (block["sensitivity"], block["specificity"]) == pytest.approx((0.9, 0.8))
    clinic, own = block["figures"]
    assert clinic["prevalence"] == 0.1
    assert (clinic["precision"], clinic["npv"], clinic["accuracy"]) == pytest.approx((1 / 3, 0.72 / 0.73, 0.81))
    assert (clinic["net_benefit"], clinic["treat_all"]) == pytest.approx((-0.09, -0.8))
    at_own = metrics.binary_metrics(y, p, 0.5)
    assert (own["precision"], own["npv"], own["accuracy"]) == pytest.approx((9 / 11, 8 / 9, 17 / 20))
    assert (own["precision"], own["npv"], own["accuracy"]) == pytest.approx(
        (at_own["precision"], at_own["npv"], at_own["accuracy"]))
    curve = metrics.net_benefit(y, p, [0.25, 0.5])  # each row of a decision curve at the clinic's prevalence
    again = metrics.at_prevalence(y, p, 0.5, [0.1], curve)["figures"][0]["decision_curve"]
    assert again["threshold"] == [0.25, 0.5]
    assert again["net_benefit"] == pytest.approx([0.09 - 0.18 / 3, -0.09])
    assert again["treat_all"] == pytest.approx([0.1 - 0.9 / 3, -0.8])


def test_the_interval_of_a_figure_at_a_prevalence_is_bayes_at_the_bonferroni_ends_of_sensitivity_and_specificity(
) -> None:
    """Each figure rises with sensitivity and with specificity, so the box of their exact (Clopper-Pearson) 97.5 %
    intervals (Bonferroni: 95 % together) bounds it: computed here from the beta quantiles themselves, 9 of 10
    sensitivity [0.5094, 0.9987] and 8 of 10 specificity [0.4010, 0.9825], PPV at 10 % [0.0863, 0.8640], NPV
    [0.88031, 0.99986], accuracy [0.4118, 0.9842]. Each interval holds its figure."""
    y, p = _AT_PREVALENCE
    block = metrics.at_prevalence(y, p, 0.5, [0.1])
    low, high = 0.025 / 2, 1 - 0.025 / 2
    se = (beta.ppf(low, 9, 2), beta.ppf(high, 10, 1))
    sp = (beta.ppf(low, 8, 3), beta.ppf(high, 9, 2))
    assert block["ci"]["sensitivity"] == pytest.approx(se) and block["ci"]["specificity"] == pytest.approx(sp)
    assert se == pytest.approx((0.5094, 0.9987), abs=1e-4) and sp == pytest.approx((0.4010, 0.9825), abs=1e-4)
    figures = block["figures"][0]
    assert figures["ci"]["precision"] == pytest.approx([0.0863, 0.8640], abs=1e-4)
    assert figures["ci"]["npv"] == pytest.approx([0.88031, 0.99986], abs=1e-5)
    assert figures["ci"]["accuracy"] == pytest.approx([0.4118, 0.9842], abs=1e-4)
    assert figures["ci"]["net_benefit"] == pytest.approx([s * 0.1 - (1 - c) * 0.9 for s, c in zip(se, sp)])
    for key in ("precision", "npv", "accuracy", "net_benefit"):
        assert figures["ci"][key][0] <= figures[key] <= figures["ci"][key][1], key


def test_a_prevalence_outside_0_to_1_is_refused() -> None:
    """A prevalence of 0 or 1 leaves PPV or NPV a constant, and 10 (a percentage) is none."""
    for wrong in (0.0, 1.0, 10.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match=r"a prevalence lies strictly between 0 and 1"):
            metrics.check_prevalences([0.1, wrong])


def test_prevalences_the_report_or_the_csv_would_show_alike_are_refused() -> None:
    """Each prevalence is a row of the report, at 0.1 %, and a column of decision_curve.csv named by its ``:g``: two
    that read alike there (one column overwriting the other) are refused, naming both."""
    assert metrics.check_prevalences([0.1, 0.3, 0.101]) == [0.1, 0.3, 0.101]
    for twins in ([0.1, 0.1], [0.1, 0.1001], [0.1234561, 0.1234564]):
        with pytest.raises(ValueError, match=rf"prevalences {twins[0]} and {twins[1]} are both "):
            metrics.check_prevalences(twins)
