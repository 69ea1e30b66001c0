"""The operating point a bundle labels at: the temperature's figures and the thresholds chosen by one policy, as
training, ``ensemble``, ``export --int8`` and ``pneumoscan threshold`` (:mod:`.rethreshold`) write them."""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pneumoscan.core.metrics import (CHANCE_AUC, NO_RANGE, choose_thresholds, clopper_pearson, describe_policy,
                                     fit_temperature, format_figure, jsonable, macro_auc, roc_auc,
                                     threshold_range)
from pneumoscan.data.tasks import Task, binary_targets
from pneumoscan.inference.export import ONNX_NAME, write_onnx_spec
from pneumoscan.inference.onnx_runtime import Int8Key
from pneumoscan.models.card import BundleCard, card_task
from .evaluate import evaluate_probabilities
from .model_card import update_card, validation_figures

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class OperatingPoint:
    """The plain and TTA thresholds one policy chose on some films, the 95 % confidence interval of each
    (:func:`~pneumoscan.core.metrics.threshold_range`: a reading inside is near its threshold), and the caveat: why
    the films may be too few to show the policy (``films_caveat``, :func:`warn_if_too_few_films`), and why a range
    could not be measured (:func:`_no_range`); "" when neither. Named as the card's fields, so every bundle records
    the same rule the same way."""

    threshold: float
    tta_threshold: float
    threshold_interval: list[float]
    tta_threshold_interval: list[float]
    threshold_caveat: str
    films_caveat: str = ""  # the caveat's part an operating point on the same films shares (an INT8 model's)

    def card_fields(self) -> dict:
        """The :class:`BundleCard` fields this operating point sets."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "films_caveat"}


def check_better_than_chance(probs: np.ndarray, targets: np.ndarray, task: Task, scorer: str, films: str,
                             remedy: str, seen: str = "") -> None:
    """Refuse an operating point on films (``probs``: class probabilities, ``targets``: class indices) the scores
    rank no better than chance: an AUC of the positive call of 0.5 or less, or, for a task of more than two classes,
    a macro one-vs-rest AUC that low (classes told apart no better than a coin, which the positive call's AUC cannot
    see). Such a model reads films with probabilities and a threshold as a working one does, so it is given no
    bundle: a training run's best epoch, an ensemble's calibrated mean, a threshold chosen again on other films. The
    refusal says ``scorer`` ranks the films (``films``: what they are), the figures, ``seen`` (where more is said)
    and ``remedy``. An undefined AUC (films of one class, refused before) fails here too rather than pass. A
    temperature does not change the ranking, so the scores may be taken before it is fitted."""
    figures = {"AUC": roc_auc(binary_targets(targets), task.positive_probability(probs))}
    if task.multiclass:
        figures[f"macro AUC over the {len(task.classes)} classes"] = macro_auc(targets, probs)
    if all(value > CHANCE_AUC for value in figures.values()):
        return
    said = ", ".join(f"{name} {format_figure(value, 4)}" for name, value in figures.items())
    raise ValueError(f"no bundle written: {scorer} rank the {len(targets)} {films} no better than chance ({said}, "
                     f"where {CHANCE_AUC} is chance{seen}): {remedy}")


def choose_operating_point(y: np.ndarray, plain: np.ndarray, tta: np.ndarray, target_sensitivity: float | None,
                           max_false_positive_rate: float | None, groups: Sequence[str] | np.ndarray | None = None,
                           caveat: str | None = None) -> OperatingPoint:
    """The rule that decides every label a bundle gives, written once for training, ``ensemble``, ``threshold`` and
    ``export --int8``: the plain and TTA thresholds by one policy on these films' binary targets ``y`` and positive
    scores (:func:`~pneumoscan.core.metrics.choose_thresholds`, which refuses a policy the scores cannot meet), their
    intervals (``groups``: the films' patients, resampled whole; None: films counted alone) and the caveat.
    ``caveat``: the films caveat of an operating point already chosen on the same films (an INT8 model's beside its
    FP32 one's), not said twice; None: said here. Why a range is missing is said for these scores."""
    threshold, tta_threshold = choose_thresholds(y, plain, tta, target_sensitivity, max_false_positive_rate)
    if caveat is None:  # once chosen: a policy the scores cannot meet is refused with its own reason alone
        caveat = warn_if_too_few_films(y, target_sensitivity, max_false_positive_rate)
    (interval, why), (tta_interval, tta_why) = (
        threshold_range(y, scores, target_sensitivity, max_false_positive_rate, groups) for scores in (plain, tta))
    return OperatingPoint(threshold, tta_threshold, interval, tta_interval,
                          "; ".join(filter(None, (caveat, _no_range(why, tta_why)))), caveat)


def _no_range(why: str, tta_why: str) -> str:
    """Why no range near the plain or the TTA threshold could be measured (:func:`threshold_range`'s reasons),
    warned of: a bundle silent on it read as one whose threshold is known, and its predictions mark no reading as
    near it. "" when both ranges were measured."""
    if not why and not tta_why:
        return ""
    if why == tta_why:
        said = f"{NO_RANGE} or the TTA threshold could be measured: {why}"
    else:
        said = "; ".join(filter(None, (why and f"{NO_RANGE} could be measured: {why}",
                                       tta_why and f"{NO_RANGE} with test-time augmentation could be measured: "
                                                   f"{tta_why}")))
    said += ", so no reading is marked as near it"
    log.warning("%s", said)
    return said


def policy_text(target_sensitivity: float | None, max_false_positive_rate: float | None, on: str) -> str:
    """The policy a card records (:attr:`BundleCard.threshold_policy`): the rule, and the films it chose on."""
    return f"{describe_policy(target_sensitivity, max_false_positive_rate)} on {on}"


def write_operating_point(bundle: Path, card: BundleCard, probs: np.ndarray, tta_scores: np.ndarray,
                          targets: np.ndarray, target_sensitivity: float | None, max_false_positive_rate: float | None,
                          policy: str, groups: Sequence[str] | None = None, temperature_caveat: str = "",
                          left_out: list[dict] | None = None) -> tuple[BundleCard, dict]:
    """Choose the plain and TTA thresholds by one policy on these films' calibrated ``probs`` and TTA scores, and
    write them where every reader looks: ``card`` (temperature already set) with the thresholds, ``policy`` and
    the validation figures and the caveats of both (``temperature_caveat``: :func:`calibrated_temperature`'s),
    saved as bundle.json and MODEL_CARD.md, then the ONNX sidecar; ``left_out`` (None: not recorded), the files
    given with the films that the figures are not of, and why, recorded with them. The figures hold the ECE these
    films give calibrated probabilities by chance (``ece_chance``: :func:`~pneumoscan.core.metrics.ece_by_chance`),
    which the card's calibration caveat holds their ECE to. The one way a training run and an
    ensemble finish their bundle (``threshold`` keeps the validation figures of the films it trained on, so it writes
    its own).
    Returns the card written and the films' metrics."""
    task = card_task(card, bundle)
    y, plain = binary_targets(targets), task.positive_probability(probs)
    point = choose_operating_point(y, plain, tta_scores, target_sensitivity, max_false_positive_rate, groups)
    metrics = evaluate_probabilities(probs, targets, task, point.threshold, groups=groups)
    if left_out is not None:
        metrics["left_out"] = left_out
    card = dataclasses.replace(card, threshold_policy=policy, val_metrics=validation_figures(metrics),
                               temperature_caveat=temperature_caveat, **point.card_fields())
    update_card(bundle, card)
    write_onnx_spec(bundle, bundle / ONNX_NAME)  # after the card: the sidecar copies its thresholds
    return card, metrics


def int8_figures(probs: np.ndarray, targets: np.ndarray, task: Task, point: OperatingPoint, policy: str,
                 chosen_on: str, fp32_auc: float, fp32_classes: np.ndarray | float | None, change: float,
                 groups: Sequence[str] | np.ndarray | None, left: Sequence[dict]) -> dict:
    """What an INT8 sidecar says of the films that chose its thresholds, under :class:`Int8Key`'s keys: the plain
    and TTA thresholds of ``point`` (its operating point on the positive probability of its plain class
    probabilities ``probs``), their intervals and caveat, their policy and films, the files given with them that
    chose nothing, and why (``left``: :func:`~pneumoscan.data.labelled.left_out`), the FP32 and INT8 AUC on them (for
    a task of more than two classes their macro AUC too, under :attr:`Int8Key.THREE_CLASS`, as ``evaluate`` reports
    it: ``fp32_classes``, the FP32 class probabilities on the films or the macro AUC recorded on them; None: there
    is none, and the figure is None, as an undefined one is), the largest change in probability quantisation made,
    and the INT8 model's figures at its threshold (what
    ``--backend onnx-int8`` shows as its validation figures), measured as the FP32 model's are
    (:func:`~.evaluate.evaluate_probabilities`: the same fields, the three classes' for a multiclass task, and
    95 % CIs counting the films' patients, ``groups``: each film's unit, as its thresholds' intervals count them).
    ``export --int8`` and ``threshold`` both write them, so that neither leaves one about other films."""
    at = evaluate_probabilities(probs, targets, task, point.threshold, groups=groups)
    at["left_out"] = list(left)  # its validation figures say what they leave out, as the FP32 model's do
    figures = {
        Int8Key.THRESHOLD: point.threshold, Int8Key.TTA_THRESHOLD: point.tta_threshold,
        Int8Key.THRESHOLD_POLICY: policy, Int8Key.THRESHOLD_INTERVAL: point.threshold_interval,
        Int8Key.TTA_THRESHOLD_INTERVAL: point.tta_threshold_interval, Int8Key.THRESHOLD_CAVEAT: point.threshold_caveat,
        Int8Key.CHOSEN_ON: chosen_on, Int8Key.VALIDATION_IMAGES: at["n"], Int8Key.LEFT_OUT: list(left),
        Int8Key.VAL_AUC_FP32: fp32_auc,
        Int8Key.VAL_AUC_INT8: at["auc"], Int8Key.MAX_PROBABILITY_CHANGE: change,
        Int8Key.VAL_METRICS: validation_figures(at),
    }  # fmt: skip
    if task.multiclass:  # bacteria and virus told apart, which the AUC of the positive call cannot see
        fp32 = jsonable(macro_auc(targets, fp32_classes)) if isinstance(fp32_classes, np.ndarray) else fp32_classes
        figures[Int8Key.THREE_CLASS] = {Int8Key.MACRO_AUC_FP32: fp32,
                                        Int8Key.MACRO_AUC_INT8: jsonable(macro_auc(targets, probs)),
                                        "films": chosen_on, "n": at["n"]}
    return figures


def warn_if_too_few_films(y: np.ndarray, target_sensitivity: float | None,
                          max_false_positive_rate: float | None) -> str:
    """A sensitivity target is a statement about misses; with fewer than 1 / (1 - target) positives a single miss
    is already below it, so the threshold met it on these films by chance as much as by design. A false-positive
    ceiling F is one about false alarms, alike: with fewer than 1 / F negatives a single one is already above it.
    A target of 1 or a ceiling of 0 no number of films can show: every film met it here, and the exact interval of
    that still reaches past it, so it is said whatever the films (a card silent on it would read as a promise).
    Said wherever a threshold that will be used is chosen (training, ``ensemble``, ``threshold`` and ``export
    --int8``), and returned for the bundle to keep (:attr:`BundleCard.threshold_caveat`); "" when the films are
    enough."""
    positives = int(y.sum())
    if target_sensitivity is not None:
        films, what, share = positives, "positive", 1 - target_sensitivity
        rate = f"a sensitivity of {target_sensitivity:.2f}".replace("1.00", "1")
    elif max_false_positive_rate is not None:
        films, what, share = int(y.size) - positives, "negative", max_false_positive_rate
        rate = f"a false-positive rate of {max_false_positive_rate:g}"
    else:
        return ""
    if share == 0:  # every film met it here, and the exact interval of that reaches past it however many films
        low, high = clopper_pearson(films, films) if target_sensitivity is not None else clopper_pearson(0, films)
        bound = f"above {low:.3f}" if target_sensitivity is not None else f"below {high:.3f}"
        said = (f"{rate} cannot be shown on any number of films ({films} {what} films here, all called right, bound "
                f"it only {bound}, 95% exact), so this threshold is a guess; choose a "
                f"{'target below 1' if target_sensitivity is not None else 'ceiling above 0'}")
    else:
        needed = math.ceil(round(1 / share, 6))  # 1 / (1 - 0.9) is 10.000000000000002
        if films >= needed:
            return ""
        said = (f"only {films} {what} films: {rate} cannot be shown on fewer than {needed}, so this threshold is a "
                "guess; choose it on more labelled films")
    log.warning("%s", said)
    return said


def calibrated_temperature(logits: np.ndarray, targets: np.ndarray) -> tuple[float, str]:
    """:func:`~pneumoscan.core.metrics.fit_temperature`, and what it warned of (no error to fit on, a bound
    reached), for the bundle to keep (:attr:`BundleCard.temperature_caveat`) as well as the run's log."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        temperature = fit_temperature(logits, targets)
    said = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    for text in said:
        log.warning("%s", text)
    return temperature, "; ".join(said)
