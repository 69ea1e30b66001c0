"""Evaluation statistics checked against their definitions and scikit-learn, on the edge cases a review found."""

import numpy as np
import pytest
from scipy.stats import binomtest
from sklearn.metrics import confusion_matrix

from pneumoscan.core.metrics import binary_metrics, choose_threshold, evaluate_multiclass, threshold_metrics_ci
from pneumoscan.evaluation.operating_point import choose_operating_point

# two scores one float apart whose sum rounds down to the lower one: no number lies between them
DECIDING = float(np.nextafter(0.75, 1.0))
LOWER = 0.75


@pytest.mark.parametrize("policy", [{"target_sensitivity": 1.0}, {"target_sensitivity": None},
                                    {"target_sensitivity": None, "max_false_positive_rate": 0.0}],
                         ids=["sensitivity target", "Youden", "false-positive ceiling"])
def test_a_threshold_between_adjacent_scores_calls_the_lower_one_negative(policy: dict) -> None:
    """The positive film scores one float above a negative one: every policy separates them, so the negative must
    stay negative (the midpoint of the two had rounded to the negative's score, which the rule p >= t then called
    positive: a false-positive ceiling of 0 broken, a specificity of 0.67 where 1 was chosen)."""
    assert (DECIDING + LOWER) / 2 == LOWER, "the case this test is about: the midpoint collapses onto the lower score"
    y = np.array([1, 0, 0, 0])
    p = np.array([DECIDING, LOWER, 0.1, 0.2])
    t = choose_threshold(y, p, **policy)
    m = binary_metrics(y, p, t)
    assert LOWER < t <= DECIDING
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (1, 0, 3, 0)
    assert [[m["tn"], m["fp"]], [m["fn"], m["tp"]]] == confusion_matrix(y, p >= t, labels=[0, 1]).tolist()


def test_every_policy_keeps_its_promise_on_scores_that_tie_or_sit_a_float_apart() -> None:
    """Random small sets whose scores tie and sit a float apart: the rule at the chosen threshold calls exactly the
    films at or above the deciding validation score, and meets the sensitivity floor or false-positive ceiling."""
    rng = np.random.default_rng(7)
    checked = 0
    for _ in range(300):
        n = int(rng.integers(4, 16))
        y = rng.integers(0, 2, n)
        if not 0 < y.sum() < n:
            continue
        base = rng.choice([0.25, 0.5, 0.75, 0.9], n)
        p = np.where(rng.random(n) < 0.5, base, np.nextafter(base, 1.0))  # ties, and neighbours one float apart
        for target, ceiling in ((0.5, None), (0.8, None), (1.0, None), (None, None), (None, 0.0), (None, 0.5)):
            try:
                t = choose_threshold(y, p, target, ceiling)
            except ValueError:  # a ceiling that no useful threshold keeps on this set
                continue
            deciding = p[p >= t].min()
            assert ((p >= t) == (p >= deciding)).all()
            m = binary_metrics(y, p, t)
            if target is not None:
                assert m["sensitivity"] >= target
            if ceiling is not None:
                assert m["fp"] <= ceiling * (n - y.sum())
            checked += 1
    assert checked > 500


def _f1_at(recall: float, false_positives: float, positives: int) -> float:
    return 2 * recall * positives / (positives * (1 + recall) + false_positives)


def _exact(k: int, n: int) -> tuple[float, float]:
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    return ci.low, ci.high


def test_f1_with_every_positive_film_found_is_no_surer_than_its_recall() -> None:
    """2 positive films, both found, among 50 negatives (26 called positive): every resample finds both, so the
    bootstrap saw precision's spread alone and gave F1 0.105-0.174, though 2 of 2 is compatible with a recall of
    0.16. The interval holds F1 at recall's exact lower bound, the false positives as observed."""
    y = np.r_[1, 1, np.zeros(50, int)]
    p = np.r_[0.9, 0.6, np.linspace(0.98, 0.02, 50)]
    m = binary_metrics(y, p, 0.5)
    assert (m["tp"], m["fn"]) == (2, 0)
    lo, hi = threshold_metrics_ci(y, p, [0.5])[0]["f1"]
    floor = _f1_at(_exact(2, 2)[0], m["fp"], 2)
    assert lo <= floor + 1e-9 and lo <= m["f1"] <= hi
    assert lo > 0  # still an interval, not "anything"


def test_f1_interval_covers_the_truth_with_two_positive_films() -> None:
    """Simulated sets of 2 positive and 50 negative films (sensitivity 0.9, specificity 0.5): F1's interval covered
    the truth in 0.85 of them, mostly sets that found both positives."""
    rng = np.random.default_rng(0)
    truth = _f1_at(0.9, 0.5 * 50, 2)
    y = np.r_[1, 1, np.zeros(50, int)]
    covered = 0
    for i in range(200):
        called = np.r_[rng.random(2) < 0.9, rng.random(50) < 0.5]
        lo, hi = threshold_metrics_ci(y, np.where(called, 0.75, 0.25), [0.5], n_boot=500, seed=i)[0]["f1"]
        covered += lo <= truth <= hi
    assert covered / 200 >= 0.94


def test_balanced_accuracy_with_a_small_class_all_right_is_no_surer_than_that_class_recall() -> None:
    """A class of 5 films all right beside two of 50: its recall is 1 in every resample, so the interval holds the
    balanced accuracy with that recall at its exact lower bound (5 of 5: 0.48), the others as observed."""
    sizes = (5, 50, 50)
    y = np.repeat(np.arange(3), sizes)
    pred = y.copy()
    pred[5:15] = 2  # 10 of class 1 called 2
    pred[55:62] = 0  # 7 of class 2 called 0
    probs = np.full((y.size, 3), 0.2)
    probs[np.arange(y.size), pred] = 0.6
    result = evaluate_multiclass(y, probs, ["a", "b", "c"], n_boot=500)
    recalls = [1.0, 40 / 50, 43 / 50]
    assert result["balanced_accuracy"] == pytest.approx(np.mean(recalls))
    lo, hi = result["ci"]["balanced_accuracy"]
    assert lo <= np.mean([_exact(5, 5)[0], *recalls[1:]]) + 1e-9 and hi >= result["balanced_accuracy"]


def test_a_false_positive_ceiling_on_too_few_negative_films_is_said_to_be_a_guess(
        caplog: pytest.LogCaptureFixture) -> None:
    """A ceiling of 0.05 on 12 negative films: one false alarm is already 0.083, so the threshold kept the ceiling
    on these films by allowing none, by chance as much as by design, as a sensitivity target on too few positive
    films is (whose caveat the bundle keeps); on 20 negative films it can be shown."""
    rng = np.random.default_rng(3)
    y = np.r_[np.ones(30, int), np.zeros(12, int)]
    p = np.r_[rng.uniform(0.3, 1.0, 30), rng.uniform(0.0, 0.7, 12)]
    point = choose_operating_point(y, p, p, None, 0.05)
    assert point.threshold_caveat == ("only 12 negative films: a false-positive rate of 0.05 cannot be shown on fewer "
                                      "than 20, so this threshold is a guess; choose it on more labelled films")
    assert point.threshold_caveat in caplog.text
    y, p = np.r_[y, np.zeros(8, int)], np.r_[p, rng.uniform(0.0, 0.3, 8)]
    assert choose_operating_point(y, p, p, None, 0.05).threshold_caveat == ""


def test_a_target_no_number_of_films_can_show_is_said_to_be_a_guess(caplog: pytest.LogCaptureFixture) -> None:
    """A sensitivity of 1 or a false-positive rate of 0 is met by every threshold chosen for it on the films it was
    chosen on, and never shown: 50 of 50 positive films found bound the sensitivity only above 0.929. A card that
    recorded such a threshold without a caveat would read as a promise of no miss (or no false alarm)."""
    rng = np.random.default_rng(4)
    y = np.r_[np.ones(50, int), np.zeros(34, int)]
    p = np.r_[rng.uniform(0.3, 1.0, 50), rng.uniform(0.0, 0.7, 34)]
    caveat = choose_operating_point(y, p, p, 1.0, None).threshold_caveat
    assert caveat == ("a sensitivity of 1 cannot be shown on any number of films (50 positive films here, all called "
                      "right, bound it only above 0.929, 95% exact), so this threshold is a guess; choose a target "
                      "below 1")
    assert caveat in caplog.text
    caveat = choose_operating_point(y, p, p, None, 0.0).threshold_caveat
    assert caveat.startswith("a false-positive rate of 0 cannot be shown on any number of films (34 negative films "
                             "here, all called right, bound it only below 0.103, 95% exact)")
