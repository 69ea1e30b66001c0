"""The operating point a bundle labels at: the temperature's figures and thresholds training, ``ensemble`` and
``export --int8`` write, and ``pneumoscan threshold``, which chooses a new one on labelled films as a new bundle."""

from __future__ import annotations

import dataclasses
import json
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
from pneumoscan.data.tasks import binary_targets, get_task
from pneumoscan.inference.export import INT8_NAME, ONNX_NAME, int8_model, spec_path, write_int8_spec, write_onnx_spec
from pneumoscan.inference.predict import Predictor
from pneumoscan.models.card import BundleCard, load_card
from .evaluate import data_label, evaluate_probabilities, labelled_records
from .held_out import check_held_out, record_calibration_films, refuse_test_films
from .model_card import today, update_card, validation_figures, write_model_card

log = logging.getLogger(__name__)


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
    task = get_task(card.task)
    y, plain = binary_targets(targets), task.positive_probability(probs)
    guess = warn_if_too_few_positives(y, target_sensitivity)
    threshold, tta_threshold = choose_thresholds(y, plain, tta_scores, target_sensitivity, max_false_positive_rate)
    metrics = evaluate_probabilities(probs, targets, task, threshold, groups=groups)
    card = dataclasses.replace(card, threshold=threshold, tta_threshold=tta_threshold, threshold_policy=policy,
                               val_metrics=validation_figures(metrics), threshold_caveat=guess,
                               temperature_caveat=temperature_caveat,
                               **threshold_intervals(y, plain, tta_scores, target_sensitivity, max_false_positive_rate,
                                                     groups))
    update_card(bundle, card)
    write_onnx_spec(bundle, bundle / ONNX_NAME)  # after the card: the sidecar copies its thresholds
    return card, metrics


def threshold_intervals(y: np.ndarray, plain: np.ndarray, tta: np.ndarray, target_sensitivity: float | None,
                        max_false_positive_rate: float | None, groups: Sequence[str] | None = None,
                        ) -> dict[str, list[float]]:
    """Where the plain and the TTA threshold chosen by this policy on other films like these would fall
    (:func:`~pneumoscan.core.metrics.threshold_interval`), under the card's names: a reading inside is near its
    threshold."""
    return {"threshold_interval": threshold_interval(y, plain, target_sensitivity, max_false_positive_rate, groups),
            "tta_threshold_interval": threshold_interval(y, tta, target_sensitivity, max_false_positive_rate, groups)}


def int8_figures(y: np.ndarray, scores: np.ndarray, thresholds: tuple[float, float], policy: str, chosen_on: str,
                 fp32_auc: float, change: float, intervals: dict[str, list[float]], caveat: str) -> dict:
    """What an INT8 sidecar says of the films that chose its thresholds: the plain and TTA thresholds, their policy
    and films, the FP32 and INT8 AUC on them, the largest change in probability quantisation made, and the INT8
    model's figures at its threshold (what ``--backend onnx-int8`` shows as its validation figures). ``export
    --int8`` and ``threshold`` both write them, so that neither leaves one about other films."""
    at = binary_metrics(y, scores, thresholds[0]) | {"auc": roc_auc(y, scores)}
    return {
        "int8_threshold": thresholds[0], "int8_tta_threshold": thresholds[1], "threshold_policy": policy,
        **{f"int8_{name}": interval for name, interval in intervals.items()}, "int8_threshold_caveat": caveat,
        "int8_thresholds_chosen_on": chosen_on, "validation_images": int(len(y)), "val_auc_fp32": fp32_auc,
        "val_auc_int8": at["auc"], "max_probability_change": change, "int8_val_metrics": validation_figures(at),
    }  # fmt: skip


def _thresholds(predictor: Predictor, images: np.ndarray, y: np.ndarray, target_sensitivity: float | None,
                max_false_positive_rate: float | None) -> tuple[float, float, np.ndarray, np.ndarray]:
    """The policy's plain and TTA thresholds for one way of scoring, with the plain and TTA scores."""
    plain = predictor.positive(predictor.probabilities(images))
    tta = predictor.positive(predictor.probabilities(images, tta=True))
    return *choose_thresholds(y, plain, tta, target_sensitivity, max_false_positive_rate), plain, tta


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
    caveats = check_held_out([bundle], records, "choose the threshold", validation_warning=True)
    y = binary_targets(targets)
    if guess := warn_if_too_few_positives(y, target_sensitivity):
        caveats.append(guess)
    threshold, tta_threshold, plain, tta = _thresholds(predictor, images, y, target_sensitivity, max_false_positive_rate)
    int8 = None
    if (bundle / INT8_NAME).exists():
        # checked as --backend onnx-int8 checks it (checksums, weights), then scored without its old thresholds
        quantized = Predictor(bundle, backend="onnx", session=int8_model(bundle)[0])
        try:
            int8 = _thresholds(quantized, images, y, target_sensitivity, max_false_positive_rate)
        except ValueError as e:
            raise ValueError(f"INT8 model: {e}") from None
    name = data_label(data, split, data_name)
    policy = f"{describe_policy(target_sensitivity, max_false_positive_rate)} on {name}"
    at, at_tta = binary_metrics(y, plain, threshold), binary_metrics(y, tta, tta_threshold)
    record = {
        "date": today(), "policy": policy, "data": name, "split": split, "n": int(y.size),
        "n_positive": int(y.sum()), "n_negative": int(y.size - y.sum()), "unreadable": len(errors),
        "previous_threshold": card.threshold, "previous_tta_threshold": card.tta_threshold,
        "previous_policy": card.threshold_policy, "threshold": threshold, "tta_threshold": tta_threshold,
        "target_sensitivity": target_sensitivity, "max_false_positive_rate": max_false_positive_rate,
        "sensitivity": at["sensitivity"], "specificity": at["specificity"],
        "tta_sensitivity": at_tta["sensitivity"], "tta_specificity": at_tta["specificity"],
        "int8_threshold": int8[0] if int8 else None, "int8_tta_threshold": int8[1] if int8 else None,
        "source_bundle": str(bundle.resolve()),  # where the weights were trained: its run's split.csv is beside it
        "caveats": caveats,  # why the figures on these films may flatter the model (MODEL_CARD.md says them)
    }
    patients = [r.patient for r in records]
    # the Predictor's card is BUNDLE's as loaded (only the INT8 backend's is another): a new list of records, so
    # that card is left as it was
    card = dataclasses.replace(card, threshold=threshold, tta_threshold=tta_threshold, threshold_policy=policy,
                               threshold_caveat=guess, threshold_records=[*card.threshold_records, record],
                               **threshold_intervals(y, plain, tta, target_sensitivity, max_false_positive_rate, patients))
    # built beside OUT and renamed into place: a failure leaves no half bundle
    with building(out) as tmp:
        shutil.copytree(bundle, tmp, symlinks=False)
        update_card(tmp, card)
        if (tmp / ONNX_NAME).exists():
            write_onnx_spec(tmp, tmp / ONNX_NAME)
        record_calibration_films(tmp, records)
        if int8 is not None:
            # every figure of the sidecar about the films that chose the thresholds is now about these films
            write_int8_spec(tmp, json.loads(spec_path(tmp / INT8_NAME).read_text()) | int8_figures(
                y, int8[2], int8[:2], policy, name, roc_auc(y, plain), float(np.abs(plain - int8[2]).max()),
                threshold_intervals(y, int8[2], int8[3], target_sensitivity, max_false_positive_rate, patients),
                guess))
            write_model_card(tmp, load_card(tmp))  # its INT8 section, from the sidecar just written
    log.debug("threshold %.4f (was %.4f), with --tta %.4f: %s; sensitivity %.3f, specificity %.3f on %d images -> %s",
             threshold, record["previous_threshold"], tta_threshold, policy, at["sensitivity"], at["specificity"],
             y.size, out)
    return card
