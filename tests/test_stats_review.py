"""Evaluation statistics checked against their definitions and scikit-learn, on the edge cases a review found."""

import re

import numpy as np
import pytest
from scipy.stats import binomtest
from sklearn.metrics import confusion_matrix

from pneumoscan.core.metrics import (binary_metrics, choose_threshold, evaluate_multiclass, fit_temperature,
                                     proportion_ci, threshold_interval, threshold_metrics_ci, threshold_range)
from pneumoscan.evaluation.model_card import _threshold_section
from pneumoscan.evaluation.operating_point import choose_operating_point
from pneumoscan.models.card import BundleCard

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


def _three_classes(right: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Probabilities that decide each film's class as ``right`` says: its own class, or the next one."""
    probs = np.full((y.size, 3), 0.1)
    probs[np.arange(y.size), np.where(right, y, (y + 1) % 3)] = 0.8
    return probs


def test_balanced_accuracy_with_a_class_of_one_patient_is_no_surer_than_that_patient_recall() -> None:
    """6 films of one patient, 3 right, beside two classes of 30 patients: resamples without that patient were left
    out, so every one kept had its recall of 0.5, and the interval (0.698-0.801) was narrower than with 6 patients,
    though one patient's recall is compatible with almost any rate. It holds the balanced accuracy with that recall at
    each end of its own interval, the others as observed."""
    y = np.r_[np.zeros(30, int), np.ones(30, int), np.full(6, 2)]
    right = np.ones(y.size, bool)
    right[[0, 1, 2, 30, 31, 32, 33, 60, 61, 62]] = False
    groups = np.r_[[f"a{i}" for i in range(30)], [f"b{i}" for i in range(30)], ["v1"] * 6]
    result = evaluate_multiclass(y, _three_classes(right, y), ["normal", "bacteria", "virus"], groups=groups)
    assert result["ci_unit"] == "patient"
    lo, hi = result["ci"]["balanced_accuracy"]
    others = (27 / 30 + 26 / 30) / 3
    virus_lo, virus_hi = proportion_ci(right[60:], groups[60:])
    assert lo <= others + virus_lo / 3 + 1e-9 and hi >= others + virus_hi / 3 - 1e-9
    assert hi - lo > 0.3


def test_balanced_accuracy_interval_covers_the_truth_with_a_class_of_two_patients() -> None:
    """A class of 2 patients of 4 films (each patient's recall drawn from Beta(4, 2)) beside two of 15 patients
    (recall 0.85): the patient bootstrap covered the true balanced accuracy in 0.86 of simulated sets."""
    rng = np.random.default_rng(0)
    truth = (0.85 + 0.85 + 4 / 6) / 3
    y = np.r_[np.zeros(15, int), np.ones(15, int), np.full(8, 2)]
    groups = np.r_[[f"a{i}" for i in range(30)], np.repeat(["v0", "v1"], 4)]
    covered = 0
    for _ in range(150):
        right = np.r_[rng.random(30) < 0.85, (rng.random((2, 4)) < rng.beta(4, 2, 2)[:, None]).ravel()]
        lo, hi = evaluate_multiclass(y, _three_classes(right, y), ["n", "b", "v"], n_boot=300,
                                     groups=groups)["ci"]["balanced_accuracy"]
        covered += lo is not None and lo <= truth <= hi
    assert covered / 150 >= 0.93


def test_f1_interval_covers_the_truth_when_the_positives_are_two_patients() -> None:
    """Positive films of 2 patients (5 each, each patient's recall drawn from Beta(4, 2)) among 20 negative patients
    (a false-positive rate of 0.1): the patient bootstrap covered the true F1 in 0.85 of simulated sets, the
    conservative bound having been kept for one positive patient only."""
    rng = np.random.default_rng(7)
    pi = 10 / 30
    truth = 2 * (4 / 6) * pi / (pi * (1 + 4 / 6) + (1 - pi) * 0.1)
    y = np.r_[np.ones(10, int), np.zeros(20, int)]
    groups = np.r_[np.repeat(["p0", "p1"], 5), [f"n{i}" for i in range(20)]]
    covered = 0
    for i in range(150):
        called = np.r_[(rng.random((2, 5)) < rng.beta(4, 2, 2)[:, None]).ravel(), rng.random(20) < 0.1]
        lo, hi = threshold_metrics_ci(y, np.where(called, 0.9, 0.1), [0.5], n_boot=300, seed=i,
                                      groups=groups)[0]["f1"]
        covered += lo <= truth <= hi
    assert covered / 150 >= 0.93


@pytest.mark.parametrize(("policy", "one_patient"), [((0.95, None), "positive"), ((None, 0.1), "negative"),
                                                     ((None, None), "positive"), ((None, None), "negative")],
                         ids=["sensitivity target", "false-positive ceiling", "Youden, positives",
                              "Youden, negatives"])
def test_no_threshold_interval_when_the_class_the_policy_reads_is_one_patient(policy: tuple, one_patient: str) -> None:
    """The films of the class a policy reads all one patient's: every resample repeated that patient's scores, and
    the range came out narrow (zero wide with every film one patient's) as if the threshold were well known, where
    nothing shows how another patient would score. No range, as the AUC has no interval with one patient on a side;
    the class the policy does not read may be one patient's (a sensitivity target reads the positive films only)."""
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(30, int), np.ones(30, int)]
    p = np.r_[rng.uniform(0.0, 0.6, 30), rng.uniform(0.4, 1.0, 30)]
    patients = np.r_[[f"n{i}" for i in range(30)], [f"p{i}" for i in range(30)]].astype(object)
    patients[y == (1 if one_patient == "positive" else 0)] = "alone"
    assert threshold_interval(y, p, *policy, groups=patients) == []
    assert threshold_interval([0, 1, 0, 1], [0.1, 0.8, 0.3, 0.6], *policy, groups=["a"] * 4) == []
    if policy != (None, None):  # the other class one patient's: the range stands
        patients[y == (0 if one_patient == "positive" else 1)] = "other"
        patients[y == (1 if one_patient == "positive" else 0)] = [f"x{i}" for i in range(30)]
        low, high = threshold_interval(y, p, *policy, groups=patients)
        assert low <= choose_threshold(y, p, *policy) <= high


def _card(interval: list[float], policy: str = "sensitivity >= 0.95") -> BundleCard:
    return BundleCard("simple_cnn", "pneumonia", ["NORMAL", "PNEUMONIA"], "PNEUMONIA", 32, "squash", 0.5, 0.25,
                      threshold=0.42, threshold_policy=policy, tta_threshold=0.44, threshold_interval=interval,
                      tta_threshold_interval=interval)


def test_the_card_calls_the_threshold_range_a_confidence_interval_and_says_why_there_is_none() -> None:
    """The card read the range as where the same policy on other films like those would put the threshold; it is a
    95 % confidence interval of the population's threshold (a fresh set's threshold fell inside it 0.83 of the
    time). A policy's threshold without a range said nothing of it, as if it were known."""
    text = _threshold_section(_card([0.3, 0.55]))
    assert "would put the threshold" not in text
    assert "lies between 0.3000 and 0.5500" in text and "95 % confidence interval" in text
    assert "another set of films would scatter more widely" in text
    text = _threshold_section(_card([]))
    assert "No range near the threshold is recorded, so predictions mark no reading as near it" in text
    assert "fewer than two patients (or films) of the class its policy reads" in text
    assert "No range" not in _threshold_section(_card([], "fixed 0.5"))  # chosen on no films


def test_why_no_threshold_range_could_be_measured_is_recorded_with_the_threshold(
        caplog: pytest.LogCaptureFixture) -> None:
    """The card, the INT8 sidecar and MODEL_CARD.md recorded an empty range with no cause (the card listed three
    it could be): the caveat beside the threshold says which condition failed, on how many films or resamples, and
    the run says it as it chooses. One patient's positive films under a sensitivity target; most resamples unable to
    keep a false-positive ceiling of 0; a range measured says nothing."""
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(30, int), np.ones(8, int)]
    p = np.r_[rng.uniform(0.0, 0.6, 30), rng.uniform(0.4, 1.0, 8)]
    patients = [f"n{i}" for i in range(30)] + ["alone"] * 8
    with caplog.at_level("WARNING"):
        point = choose_operating_point(y, p, p, 0.9, None, patients)
    why = ("no range near the threshold or the TTA threshold could be measured: the positive films, which its policy "
           "reads, are 8 films of one patient: a bootstrap of them shows nothing of how another patient would score, "
           "so no reading is marked as near it")
    assert point.threshold_interval == [] and point.threshold_caveat.endswith(why) and why in caplog.text
    assert point.films_caveat and point.threshold_caveat.startswith(point.films_caveat)  # too few positives too
    card = BundleCard(**{**_card([]).__dict__, **point.card_fields()})
    text = _threshold_section(card)
    assert f"**Caveat:** {point.threshold_caveat}." in text and "No range near the threshold is recorded" not in text
    y = np.r_[np.ones(40, int), np.zeros(5, int)]
    p = np.r_[np.linspace(0.1, 0.9, 40), 0.95, 0.01, 0.02, 0.03, 0.04]  # most resamples draw the top negative
    interval, why = threshold_range(y, p, None, 0.0)
    assert interval == [] and re.fullmatch(r"only \d+ of 1000 bootstrap resamples of the 45 films could meet its "
                                           r"policy \(in \d+ no threshold found a positive case at a false-positive "
                                           r"rate at or below 0\)", why), why
    assert threshold_range(y[:-1], p[:-1], 0.9, None)[1] == ""  # a range measured: nothing to say


@pytest.mark.parametrize(("logits", "labels", "refusal"), [
    ([[2.0, 0.0], [0.5, np.nan], [0.0, 1.5], [1.0, 0.2]], [0, 0, 1, 1], "1 of 8 scores are not finite"),
    ([[2.0, 0.0], [0.5, np.inf], [0.0, 1.5], [1.0, 0.2]], [0, 0, 1, 1], "1 of 8 scores are not finite"),
    ([[2.0, 0.0], [0.5, 1.0], [0.0, 1.5], [1.0, 0.2]], [0.2, 0.9, 1.0, 1.0], r"class indices 0\.\.1"),
    ([[2.0, 0.0], [0.5, 1.0], [0.0, 1.5], [1.0, 0.2]], [0, 2, 1, 1], r"class indices 0\.\.1"),
    (np.zeros((0, 2)), np.zeros(0, int), "no labelled films"),
], ids=["NaN logit", "infinite logit", "labels 0.2 and 0.9", "label 2 of two classes", "no films"])
def test_fit_temperature_refuses_what_no_figure_is_computed_from(logits: list, labels: list, refusal: str) -> None:
    """A NaN logit gave T = 0.49 fitted to nothing, an infinite one T = 20 with a warning that blamed the logits'
    signal, labels 0.2 and 0.9 were cast to 0 and fitted, a label 2 of two classes raised an IndexError and no films
    gave T = 1 with a warning of no error: refused, as every figure refuses them."""
    with pytest.raises(ValueError, match=refusal):
        fit_temperature(np.asarray(logits, dtype=float), np.asarray(labels))
