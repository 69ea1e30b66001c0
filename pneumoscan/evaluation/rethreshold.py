"""``pneumoscan threshold``: a copy of a bundle with an operating point chosen again on labelled films (the rule
is :mod:`.operating_point`'s), the INT8 model's included, and a record of the choice in its card."""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pneumoscan.core.atomic import building
from pneumoscan.core.metrics import binary_metrics, roc_auc
from pneumoscan.data.labelled import labelled_films, left_out, patient_groups
from pneumoscan.data.layouts import Record
from pneumoscan.data.tasks import binary_targets
from pneumoscan.inference.export import ONNX_NAME, write_int8_spec, write_onnx_spec
from pneumoscan.inference.onnx_runtime import INT8_NAME, Int8Operating, int8_model, read_sidecar
from pneumoscan.inference.predict import Predictor
from pneumoscan.models.card import BundleCard, load_card
from .evaluate import data_label
from .held_out import HeldOutFindings, HeldOutPolicy, check_held_out, record_calibration_films, refuse_test_films
from .model_card import films_record, left_out_caveat, today, update_card, write_model_card
from .operating_point import (OperatingPoint, check_better_than_chance, choose_operating_point, int8_figures,
                              policy_text)

log = logging.getLogger(__name__)


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
        raise ValueError(f"out (--out) {out} exists: the new bundle goes to a new folder")
    if out.resolve() == bundle.resolve() or bundle.resolve() in out.resolve().parents:
        raise ValueError(f"out (--out) {out} is inside the bundle {bundle}: the new bundle goes beside it")
    # scored as predict and serve score it (ONNX Runtime when the bundle ships model.onnx), as ensemble chooses
    # its thresholds, and as the INT8 sidecar's FP32 figures are measured
    predictor = Predictor(bundle, backend="onnx" if (bundle / ONNX_NAME).exists() else "torch")
    card = predictor.card
    films = labelled_films(data, split, predictor.task, card.spec)
    records, images, targets = films.records, films.images, films.targets
    refuse_test_films(records, data, "threshold", card)
    # checked as evaluate --add-to-card checks the films its record keeps: a run whose split.csv finds none of its
    # films is refused, one with no split.csv beside it is recorded as not checked (films_record)
    held_out = check_held_out([bundle], records, "choose the threshold",
                              policy=HeldOutPolicy(validation_warning=True, refuse_unchecked=True,
                                                   refuse_copies=True))
    # copies of one film under other names are one patient in the intervals; label conflicts are warned of, and
    # recorded as evaluate --add-to-card records them
    y, (_, patients, conflicts) = binary_targets(targets), patient_groups(records, data)
    policy_targets = (target_sensitivity, max_false_positive_rate)
    probs, plain, tta = _scores(predictor, images)
    name = data_label(data, split, data_name)
    point = choose_operating_point(y, plain, tta, *policy_targets, patients)  # films of one class refused first
    # a threshold moved on films the model ranks no better than a coin meets its policy by calling films at random
    check_better_than_chance(probs, targets, predictor.task, f"{bundle}'s scores", f"films of {name}",
                             "a threshold cannot mend a model that does not tell these films apart: check their "
                             "labels, and whether the model applies to them (`pneumoscan evaluate`)")
    int8 = _int8_rescored(bundle, images, y, policy_targets, patients, point.films_caveat)
    policy, left = policy_text(*policy_targets, name), left_out(films, predictor.task)
    record = _threshold_record(bundle, card, policy, name, split, policy_targets, y, plain, tta, point,
                               int8[1:] if int8 else None, len(films.unreadable), left, held_out, conflicts)
    # the Predictor's card is BUNDLE's as loaded (only the INT8 backend's is another): a new list of records, so
    # that card is left as it was
    card = dataclasses.replace(card, threshold_policy=policy, threshold_records=[*card.threshold_records, record],
                               **point.card_fields())
    # every figure of the sidecar about the films that chose the thresholds is now about these films
    figures = None if int8 is None else int8_figures(
        int8[0], targets, predictor.task, int8[1], policy, name, roc_auc(y, plain), probs,
        float(np.abs(plain - predictor.positive_probability(int8[0])).max()), patients, left)
    # built beside OUT and renamed into place: a failure leaves no half bundle
    with building(out) as tmp:
        _write_copy(bundle, tmp, card, records, figures)
    log.debug("threshold %.4f (was %.4f), with --tta %.4f: %s; sensitivity %.3f, specificity %.3f on %d images -> %s",
             point.threshold, record["previous_threshold"], point.tta_threshold, policy, record["sensitivity"],
             record["specificity"], y.size, out)
    return card


def _scores(predictor: Predictor, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The plain class probabilities, and the plain and TTA positive scores, of one way of scoring."""
    probs = predictor.probabilities(images)
    tta = predictor.positive_probability(predictor.probabilities(images, tta=True))
    return probs, predictor.positive_probability(probs), tta


def _int8_rescored(bundle: Path, images: np.ndarray, y: np.ndarray, policy_targets: tuple[float | None, float | None],
                   patients: Sequence[str] | np.ndarray, caveat: str,
                   ) -> tuple[np.ndarray, OperatingPoint, Int8Operating] | None:
    """BUNDLE's INT8 model's plain class probabilities on the films (its figures are measured on them as the FP32
    model's are), its own operating point on them by the same policy
    (``caveat``: the FP32 one's, on the same films), and the operating point its sidecar gives (the thresholds it
    replaces); None when the bundle has no INT8 model."""
    if not (bundle / INT8_NAME).exists():
        return None
    # checked as --backend onnx-int8 checks it (checksums, weights), then scored without its old thresholds
    session, sidecar = int8_model(bundle)
    before = Int8Operating.from_figures(sidecar)  # int8_model refused a sidecar without it
    quantized = Predictor(bundle, backend="onnx", session=session)
    try:
        probs, plain, tta = _scores(quantized, images)
        return probs, choose_operating_point(y, plain, tta, *policy_targets, patients, caveat=caveat), before
    except ValueError as e:
        raise ValueError(f"INT8 model: {e}") from None


def _threshold_record(bundle: Path, card: BundleCard, policy: str, name: str, split: str | None,
                      policy_targets: tuple[float | None, float | None], y: np.ndarray, plain: np.ndarray,
                      tta: np.ndarray, point: OperatingPoint, int8: tuple[OperatingPoint, Int8Operating] | None,
                      unreadable: int, left: list[dict], held_out: HeldOutFindings, conflicts: list[dict]) -> dict:
    """What the new bundle's card keeps of this choice (:attr:`BundleCard.threshold_records`): the films, the
    policy, the thresholds before and after (``int8``: the INT8 model's operating point and the one its sidecar
    gave), the figures at them, the files given that chose nothing, and why (``left``: as evaluate's ``left_out``),
    whether the films could be checked to be new to BUNDLE (``held_out``: the check of the films), the caveats (what
    was left out among them), the threshold's own last, and the films whose labels their names or copies
    contradict (``conflicts``: :func:`~pneumoscan.data.labelled.patient_groups`'), as an evaluation's record
    keeps them: the threshold was chosen against those labels. A report of the new bundle names the one read at a
    threshold before as its predecessor."""
    at, at_tta = binary_metrics(y, plain, point.threshold), binary_metrics(y, tta, point.tta_threshold)
    int8_point, int8_before = int8 or (None, None)
    return {
        "date": today(), "policy": policy, "data": name, "split": split, "n": int(y.size),
        "n_positive": int(y.sum()), "n_negative": int(y.size - y.sum()), "unreadable": unreadable,
        "left_out": left,  # MODEL_CARD.md counts them beside n, and says why among the record's caveats
        "previous_threshold": card.threshold, "previous_tta_threshold": card.tta_threshold,
        "previous_policy": card.threshold_policy, "threshold": point.threshold, "tta_threshold": point.tta_threshold,
        "target_sensitivity": policy_targets[0], "max_false_positive_rate": policy_targets[1],
        "sensitivity": at["sensitivity"], "specificity": at["specificity"],
        "tta_sensitivity": at_tta["sensitivity"], "tta_specificity": at_tta["specificity"],
        "previous_int8_threshold": int8_before.threshold if int8_before else None,
        "previous_int8_tta_threshold": int8_before.tta_threshold if int8_before else None,
        "int8_threshold": int8_point.threshold if int8_point else None,
        "int8_tta_threshold": int8_point.tta_threshold if int8_point else None,
        "source_bundle": str(bundle.resolve()),  # where the weights were trained: its run's split.csv is beside it
        "label_conflicts": conflicts,  # MODEL_CARD.md says them among the record's caveats
        # films_checked, and caveats: why the figures on these films may flatter the model (MODEL_CARD.md says them)
        **films_record(bundle, held_out, left_out_caveat(left, int(y.size))
                       + ([point.threshold_caveat] if point.threshold_caveat else [])),
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
