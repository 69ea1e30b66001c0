"""The operating point a bundle labels at: the temperature's figures and thresholds training, ``ensemble`` and
``export --int8`` write, and ``pneumoscan threshold``, which chooses a new one on labelled films as a new bundle."""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pneumoscan.core.atomic import building
from pneumoscan.core.metrics import (binary_metrics, choose_thresholds, describe_policy, fit_temperature, roc_auc,
                                     threshold_interval)
from pneumoscan.data.layouts import Record
from pneumoscan.data.tasks import binary_targets
from pneumoscan.inference.export import (INT8_NAME, ONNX_NAME, int8_model, read_sidecar, write_int8_spec,
                                         write_onnx_spec)
from pneumoscan.inference.predict import Predictor
from pneumoscan.models.card import BundleCard, card_task, load_card
from .evaluate import data_label, evaluate_probabilities, labelled_records, patient_groups
from .held_out import (HeldOutFindings, HeldOutPolicy, check_held_out, record_calibration_films,
                       refuse_test_films)
from .model_card import films_record, today, update_card, validation_figures, write_model_card

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class OperatingPoint:
    """The plain and TTA thresholds one policy chose on some films, where the same policy on other films like them
    would put each (:func:`~pneumoscan.core.metrics.threshold_interval`: a reading inside is near its threshold),
    and why the films may be too few to show the policy (:func:`warn_if_too_few_positives`; "" when they are not).
    Named as the card's fields, so every bundle records the same rule the same way."""

    threshold: float
    tta_threshold: float
    threshold_interval: list[float]
    tta_threshold_interval: list[float]
    threshold_caveat: str

    def card_fields(self) -> dict:
        """The :class:`BundleCard` fields this operating point sets."""
        return dataclasses.asdict(self)


def choose_operating_point(y: np.ndarray, plain: np.ndarray, tta: np.ndarray, target_sensitivity: float | None,
                           max_false_positive_rate: float | None, groups: Sequence[str] | np.ndarray | None = None,
                           caveat: str | None = None) -> OperatingPoint:
    """The rule that decides every label a bundle gives, written once for training, ``ensemble``, ``threshold`` and
    ``export --int8``: the plain and TTA thresholds by one policy on these films' binary targets ``y`` and positive
    scores (:func:`~pneumoscan.core.metrics.choose_thresholds`, which refuses a policy the scores cannot meet), their
    intervals (``groups``: the films' patients, resampled whole; None: films counted alone) and the caveat.
    ``caveat``: that of an operating point already chosen on the same films (an INT8 model's beside its FP32
    one's), not said twice; None: said here."""
    if caveat is None:
        caveat = warn_if_too_few_positives(y, target_sensitivity)
    threshold, tta_threshold = choose_thresholds(y, plain, tta, target_sensitivity, max_false_positive_rate)
    return OperatingPoint(
        threshold, tta_threshold, threshold_interval(y, plain, target_sensitivity, max_false_positive_rate, groups),
        threshold_interval(y, tta, target_sensitivity, max_false_positive_rate, groups), caveat)


def policy_text(target_sensitivity: float | None, max_false_positive_rate: float | None, on: str) -> str:
    """The policy a card records (:attr:`BundleCard.threshold_policy`): the rule, and the films it chose on."""
    return f"{describe_policy(target_sensitivity, max_false_positive_rate)} on {on}"


def write_operating_point(bundle: Path, card: BundleCard, probs: np.ndarray, tta_scores: np.ndarray,
                          targets: np.ndarray, target_sensitivity: float | None, max_false_positive_rate: float | None,
                          policy: str, groups: Sequence[str] | None = None, temperature_caveat: str = "",
                          ) -> tuple[BundleCard, dict]:
    """Choose the plain and TTA thresholds by one policy on these films' calibrated ``probs`` and TTA scores, and
    write them where every reader looks: ``card`` (temperature already set) with the thresholds, ``policy`` and
    the validation figures and the caveats of both (``temperature_caveat``: :func:`calibrated_temperature`'s),
    saved as bundle.json and MODEL_CARD.md, then the ONNX sidecar. The one way a training run and an ensemble finish
    their bundle (``threshold`` keeps the validation figures of the films it trained on, so it writes its own).
    Returns the card written and the films' metrics."""
    task = card_task(card, bundle)
    y, plain = binary_targets(targets), task.positive_probability(probs)
    point = choose_operating_point(y, plain, tta_scores, target_sensitivity, max_false_positive_rate, groups)
    metrics = evaluate_probabilities(probs, targets, task, point.threshold, groups=groups)
    card = dataclasses.replace(card, threshold_policy=policy, val_metrics=validation_figures(metrics),
                               temperature_caveat=temperature_caveat, **point.card_fields())
    update_card(bundle, card)
    write_onnx_spec(bundle, bundle / ONNX_NAME)  # after the card: the sidecar copies its thresholds
    return card, metrics


def int8_figures(y: np.ndarray, scores: np.ndarray, point: OperatingPoint, policy: str, chosen_on: str,
                 fp32_auc: float, change: float) -> dict:
    """What an INT8 sidecar says of the films that chose its thresholds: the plain and TTA thresholds of ``point``
    (its operating point on its plain ``scores``), their intervals and caveat, their policy and films, the FP32 and
    INT8 AUC on them, the largest change in probability quantisation made, and the INT8 model's figures at its
    threshold (what ``--backend onnx-int8`` shows as its validation figures). ``export --int8`` and ``threshold``
    both write them, so that neither leaves one about other films."""
    at = binary_metrics(y, scores, point.threshold) | {"auc": roc_auc(y, scores)}
    return {
        "int8_threshold": point.threshold, "int8_tta_threshold": point.tta_threshold, "threshold_policy": policy,
        "int8_threshold_interval": point.threshold_interval,
        "int8_tta_threshold_interval": point.tta_threshold_interval, "int8_threshold_caveat": point.threshold_caveat,
        "int8_thresholds_chosen_on": chosen_on, "validation_images": int(len(y)), "val_auc_fp32": fp32_auc,
        "val_auc_int8": at["auc"], "max_probability_change": change, "int8_val_metrics": validation_figures(at),
    }  # fmt: skip


def _scores(predictor: Predictor, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The plain and TTA positive scores of one way of scoring."""
    plain = predictor.positive(predictor.probabilities(images))
    return plain, predictor.positive(predictor.probabilities(images, tta=True))


def warn_if_too_few_positives(y: np.ndarray, target_sensitivity: float | None) -> str:
    """A sensitivity target is a statement about misses; with fewer than 1 / (1 - target) positives a single miss
    is already below it, so the threshold met it on these films by chance as much as by design. Said wherever a
    threshold that will be used is chosen (training, ``ensemble``, ``threshold`` and ``export --int8``), and
    returned for the bundle to keep (:attr:`BundleCard.threshold_caveat`); "" when the films are enough."""
    if target_sensitivity is None or target_sensitivity >= 1:
        return ""
    needed = math.ceil(round(1 / (1 - target_sensitivity), 6))  # 1 / (1 - 0.9) is 10.000000000000002
    if int(y.sum()) >= needed:
        return ""
    said = (f"only {int(y.sum())} positive films: a sensitivity of {target_sensitivity:.2f} cannot be shown on fewer "
            f"than {needed}, so this threshold is a guess; choose it on more labelled films")
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


def rethreshold(bundle: Path | str, data: Path | str, out: Path | str, split: str | None = None,
                target_sensitivity: float | None = None, max_false_positive_rate: float | None = None,
                data_name: str | None = None) -> BundleCard:
    """A copy of BUNDLE at OUT with a threshold (and a TTA threshold, from TTA scores) chosen on DATA by one policy:
    a sensitivity target, a false-positive-rate ceiling, or Youden's J when both are None (metrics.choose_threshold).
    Only bundle.json, MODEL_CARD.md and the ONNX sidecars (which hold the thresholds) differ from BUNDLE; an INT8
    model gets its own thresholds again, by the same policy on its own scores. BUNDLE is never changed. A policy
    the data cannot meet is refused before anything is written."""
    bundle, out = Path(bundle), Path(out)
    load_card(bundle)  # a folder that is no bundle is refused before any scoring
    if out.exists() or out.is_symlink():
        raise ValueError(f"--out {out} exists: the new bundle goes to a new folder")
    if out.resolve() == bundle.resolve() or bundle.resolve() in out.resolve().parents:
        raise ValueError(f"--out {out} is inside the bundle {bundle}: the new bundle goes beside it")
    # scored as predict and serve score it (ONNX Runtime when the bundle ships model.onnx), as ensemble chooses
    # its thresholds, and as the INT8 sidecar's FP32 figures are measured
    predictor = Predictor(bundle, backend="onnx" if (bundle / ONNX_NAME).exists() else "torch")
    card = predictor.card
    records, images, targets, errors = labelled_records(data, split, predictor.task, card.spec)
    refuse_test_films(records, data, "threshold")
    # checked as evaluate --add-to-card checks the films its record keeps: a run whose split.csv finds none of its
    # films is refused, one with no split.csv beside it is recorded as not checked (films_record)
    held_out = check_held_out([bundle], records, "choose the threshold",
                              policy=HeldOutPolicy(validation_warning=True, refuse_unchecked=True))
    # copies of one film under other names are one patient in the intervals; label conflicts are warned of, and
    # recorded as evaluate --add-to-card records them
    y, (_, patients, conflicts) = binary_targets(targets), patient_groups(records, data)
    policy_targets = (target_sensitivity, max_false_positive_rate)
    plain, tta = _scores(predictor, images)
    point = choose_operating_point(y, plain, tta, *policy_targets, patients)
    int8 = _int8_rescored(bundle, images, y, policy_targets, patients, point.threshold_caveat)
    name = data_label(data, split, data_name)
    policy = policy_text(*policy_targets, name)
    record = _threshold_record(bundle, card, policy, name, split, policy_targets, y, plain, tta, point,
                               int8[1:] if int8 else None, len(errors), held_out, conflicts)
    # the Predictor's card is BUNDLE's as loaded (only the INT8 backend's is another): a new list of records, so
    # that card is left as it was
    card = dataclasses.replace(card, threshold_policy=policy, threshold_records=[*card.threshold_records, record],
                               **point.card_fields())
    # every figure of the sidecar about the films that chose the thresholds is now about these films
    figures = None if int8 is None else int8_figures(y, int8[0], int8[1], policy, name, roc_auc(y, plain),
                                                     float(np.abs(plain - int8[0]).max()))
    # built beside OUT and renamed into place: a failure leaves no half bundle
    with building(out) as tmp:
        _write_copy(bundle, tmp, card, records, figures)
    log.debug("threshold %.4f (was %.4f), with --tta %.4f: %s; sensitivity %.3f, specificity %.3f on %d images -> %s",
             point.threshold, record["previous_threshold"], point.tta_threshold, policy, record["sensitivity"],
             record["specificity"], y.size, out)
    return card


def _int8_rescored(bundle: Path, images: np.ndarray, y: np.ndarray, policy_targets: tuple[float | None, float | None],
                   patients: Sequence[str] | np.ndarray, caveat: str) -> tuple[np.ndarray, OperatingPoint, dict] | None:
    """BUNDLE's INT8 model's plain scores on the films, its own operating point on them by the same policy
    (``caveat``: the FP32 one's, on the same films), and its sidecar (the thresholds it replaces); None when the
    bundle has no INT8 model."""
    if not (bundle / INT8_NAME).exists():
        return None
    # checked as --backend onnx-int8 checks it (checksums, weights), then scored without its old thresholds
    session, sidecar = int8_model(bundle)
    quantized = Predictor(bundle, backend="onnx", session=session)
    try:
        plain, tta = _scores(quantized, images)
        return plain, choose_operating_point(y, plain, tta, *policy_targets, patients, caveat=caveat), sidecar
    except ValueError as e:
        raise ValueError(f"INT8 model: {e}") from None


def _threshold_record(bundle: Path, card: BundleCard, policy: str, name: str, split: str | None,
                      policy_targets: tuple[float | None, float | None], y: np.ndarray, plain: np.ndarray,
                      tta: np.ndarray, point: OperatingPoint, int8: tuple[OperatingPoint, dict] | None,
                      unreadable: int, held_out: HeldOutFindings, conflicts: list[dict]) -> dict:
    """What the new bundle's card keeps of this choice (:attr:`BundleCard.threshold_records`): the films, the
    policy, the thresholds before and after (``int8``: the INT8 model's operating point and the sidecar it
    replaces), the figures at them, whether the films could be checked to be new to BUNDLE (``held_out``: the
    check of the films), the caveats, the threshold's own last, and the films whose labels their names or copies
    contradict (``conflicts``: :func:`~pneumoscan.evaluation.evaluate.patient_groups`'), as an evaluation's record
    keeps them: the threshold was chosen against those labels. A report of the new bundle names the one read at a
    threshold before as its predecessor."""
    at, at_tta = binary_metrics(y, plain, point.threshold), binary_metrics(y, tta, point.tta_threshold)
    int8_point, int8_before = int8 or (None, {})
    return {
        "date": today(), "policy": policy, "data": name, "split": split, "n": int(y.size),
        "n_positive": int(y.sum()), "n_negative": int(y.size - y.sum()), "unreadable": unreadable,
        "previous_threshold": card.threshold, "previous_tta_threshold": card.tta_threshold,
        "previous_policy": card.threshold_policy, "threshold": point.threshold, "tta_threshold": point.tta_threshold,
        "target_sensitivity": policy_targets[0], "max_false_positive_rate": policy_targets[1],
        "sensitivity": at["sensitivity"], "specificity": at["specificity"],
        "tta_sensitivity": at_tta["sensitivity"], "tta_specificity": at_tta["specificity"],
        "previous_int8_threshold": int8_before.get("int8_threshold"),
        "previous_int8_tta_threshold": int8_before.get("int8_tta_threshold"),
        "int8_threshold": int8_point.threshold if int8_point else None,
        "int8_tta_threshold": int8_point.tta_threshold if int8_point else None,
        "source_bundle": str(bundle.resolve()),  # where the weights were trained: its run's split.csv is beside it
        "label_conflicts": conflicts,  # MODEL_CARD.md says them among the record's caveats
        # films_checked, and caveats: why the figures on these films may flatter the model (MODEL_CARD.md says them)
        **films_record(bundle, held_out, [point.threshold_caveat] if point.threshold_caveat else []),
    }  # fmt: skip


def _write_copy(bundle: Path, tmp: Path, card: BundleCard, records: Sequence[Record], int8: dict | None) -> None:
    """BUNDLE copied to ``tmp`` with ``card`` (bundle.json, MODEL_CARD.md, the ONNX sidecar), the films that chose
    its thresholds, and the INT8 sidecar's figures about them (``int8``: :func:`int8_figures`, when it has one)."""
    shutil.copytree(bundle, tmp, symlinks=False)
    update_card(tmp, card)
    if (tmp / ONNX_NAME).exists():
        write_onnx_spec(tmp, tmp / ONNX_NAME)
    record_calibration_films(tmp, records)
    if int8 is not None:
        write_int8_spec(tmp, read_sidecar(tmp / INT8_NAME, strict=True) | int8)
        write_model_card(tmp, load_card(tmp))  # its INT8 section, from the sidecar just written
