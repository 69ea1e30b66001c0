"""Evaluate a bundle on labelled images: metrics at the bundle's threshold and at 0.5, CIs, curves, report,
per-image predictions, a sensitivity/specificity table over thresholds and the most confident errors; and choose
a new operating threshold on labelled data as a new bundle (``pneumoscan threshold``)."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from pneumoscan.core.atomic import building, write_csv
from pneumoscan.core.metrics import (binary_metrics, choose_threshold, choose_thresholds, describe_policy, evaluate_binary,
                                     evaluate_multiclass, format_figure, jsonable, roc_auc)
from pneumoscan.core.names import path_text, shown
from pneumoscan.data.audit import exact_duplicate_groups
from pneumoscan.data.cache import cache_dataset
from pneumoscan.data.decode import read_gray
from pneumoscan.data.pixels import DecodeError
from pneumoscan.data.layouts import Record, discover, own_patient, write_manifest
from pneumoscan.data.preprocess import TTA_VIEWS, PreprocessSpec
from pneumoscan.data.tasks import Task, binary_targets, get_task, select, warn_untyped
from pneumoscan.inference.export import INT8_NAME, ONNX_NAME, int8_model, spec_path, write_int8_spec, write_onnx_spec
from pneumoscan.inference.predict import Predictor, check_stages
from pneumoscan.models.card import CARD, ENSEMBLE, WEIGHTS, BundleCard, load_card, member_sources, replaced_members
from pneumoscan.models.run_folder import RunFolder
from .model_card import (MODEL_CARD, add_evaluation, evaluation_record, today, update_card, validation_figures,
                         write_model_card)
from .report import write_report

log = logging.getLogger(__name__)
PREDICTION_FIELDS = ("path", "label", "subtype", "patient", "probability", "called", "correct")
TWO_STAGE_FIELDS = ("etiology_probability", "two_stage_called")  # predictions.csv with a second stage
TABLE_THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
TABLE_SENSITIVITIES = (0.9, 0.95, 0.97, 0.99)
GALLERY_SIZE = 8  # most confident false positives, and as many false negatives, in the report
GALLERY_CAM_SECONDS = 60.0  # Grad-CAM for the gallery stops here (about a second a film for a large model on CPU)
THUMBNAIL = 256


def evaluate_probabilities(probs: np.ndarray, targets: np.ndarray, task: Task, threshold: float,
                           groups: Sequence[str] | None = None) -> dict:
    """Binary metrics for the task's positive class with a :func:`threshold_table`; multiclass tasks add a
    per-class block under ``multiclass``. ``groups`` (each film's patient) makes the CIs count patients."""
    y, prob = binary_targets(targets), task.positive_probability(probs)
    metrics = evaluate_binary(y, prob, threshold, class_names=(task.classes[0], task.positive), groups=groups)
    metrics["positive_class"] = task.positive
    metrics["threshold_table"] = threshold_table(y, prob, threshold)
    metrics.update(task.extra_metrics(targets, probs, groups))
    return metrics


def two_stage_decision(first: np.ndarray, second: np.ndarray, first_threshold: float,
                       second_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Three-class probabilities (N, 3) and decisions (0 normal, 1 bacteria, 2 virus) of a pneumonia stage
    (P(pneumonia) per film) followed by a bacteria-vs-virus stage (P(virus)), decided as ``predict --etiology``
    decides: normal below the first threshold, else bacteria or virus at the second. The probabilities compose the
    stages' calibrated ones, P(normal) = 1 - p1, P(bacteria) = p1 (1 - p2), P(virus) = p1 p2, for the AUCs and the
    reliability diagram; the decision is the thresholds', not their argmax."""
    first, second = np.asarray(first, float), np.asarray(second, float)
    probs = np.stack([1.0 - first, first * (1.0 - second), first * second], axis=1)
    return probs, np.where(first >= first_threshold, 1 + (second >= second_threshold), 0)


def _two_stage(first: Predictor, first_scores: np.ndarray, records: list[Record], images: np.ndarray,
               targets: np.ndarray, data: Path | str, split: str | None, etiology: Path | str,
               tta: bool, backend: str) -> tuple[dict, np.ndarray, np.ndarray]:
    """The three-class figures of FIRST followed by the ETIOLOGY bundle on the first stage's films (every film is
    scored by both stages, so the composed probabilities exist for all), with each film's P(virus) and three-class
    call. Refused when a pneumonia film's record does not say bacteria or virus."""
    second = Predictor(etiology, backend=backend)
    check_stages(first.card.task, second.card.task)
    if second.card.spec != first.card.spec:  # decoded as the second stage was trained, through the same cache
        _, cache = cache_dataset(data, second.card.spec, split, progress=True)
        images = cache.images[cache.rows([r.path for r in records])]
    second_scores = second.positive(second.probabilities(images, tta=tta))
    first_threshold, second_threshold = first.threshold(tta), second.threshold(tta)
    probs, called = two_stage_decision(first_scores, second_scores, first_threshold, second_threshold)
    subtypes = [second.task.target(r) for r in records]
    unnamed = [r.path for r, t, s in zip(records, targets, subtypes) if t != 0 and s is None]
    if unnamed:  # leaving them out would score the pipeline on other films than the first stage
        raise ValueError(f"{len(unnamed)} pneumonia films of {data} do not say whether they are bacterial or viral "
                         f"(e.g. {unnamed[0]}): the two stages can only be scored as three classes on films that do")
    three = np.array([0 if t == 0 else 1 + s for t, s in zip(targets, subtypes)])
    names = (first.card.classes[0], *second.card.classes)
    metrics = evaluate_multiclass(three, probs, names, predicted=called, groups=[r.patient for r in records],
                                  decision=f"{first.card.positive} at {first_threshold:.4f}, then "
                                           f"{second.card.positive} at {second_threshold:.4f}")
    metrics |= {"etiology_bundle": str(etiology), "etiology_threshold": second_threshold}
    return metrics, second_scores, np.array(names)[called]


def _weight_sources(bundle: Path, seen: frozenset[str] = frozenset()) -> list[tuple[Path, str]]:
    """The bundles whose training made BUNDLE's weights, each with how BUNDLE came by them: itself (""), an
    ensemble's members as recorded when it was built ("member"), the bundle that ``threshold`` copied it from
    ("copy": the same weights, but no run's split.csv beside the copy), a distilled model's teachers ("teacher":
    their training films' labels reached it through their probabilities), and the bundle it started from ("init":
    its weights had learnt those films). A source that is gone, or was trained again since an ensemble recorded
    it, is kept as a path, which :func:`check_held_out` then warns about."""
    seen = seen | {os.path.realpath(bundle)}

    def sources(path: Path, how: str) -> list[tuple[Path, str]]:
        if os.path.realpath(path) in seen:  # a run fine-tuned from its own earlier bundle (--init RUN/bundle)
            return []
        if not (path / CARD).exists():
            return [(path, how)]
        return [(p, "replaced" if inner == "replaced" else how) for p, inner in _weight_sources(path, seen)]

    card = load_card(bundle)
    if card.model == ENSEMBLE:
        replaced = set(replaced_members(card))
        return [s for member in member_sources(card)
                for s in ([(member, "replaced")] if member in replaced else sources(member, "member"))]
    origins = [Path(r["source_bundle"]) for r in card.threshold_records if r.get("source_bundle")]
    if origin := next((o for o in origins if (o / CARD).exists()), None):
        return sources(origin, "copy")
    config = card.train_config or {}
    teachers = [Path(t) for t in config.get("teacher") or []]
    init = [Path(config["init"])] if config.get("init") else []
    return [(bundle, ""), *(s for teacher in teachers for s in sources(teacher, "teacher")),
            *(s for start in init for s in sources(start, "init"))]


CALIBRATION_FILMS = "calibration_films.csv"  # in a bundle whose temperature or threshold was chosen on other films
INT8_CALIBRATION_FILMS = "int8_calibration_films.csv"  # the films `export --int8 --data` chose the INT8 thresholds on


def record_calibration_films(bundle: Path, records: Sequence[Record], name: str = CALIBRATION_FILMS) -> None:
    """Add to BUNDLE/calibration_films.csv the films ``threshold`` or ``ensemble --data`` chose its threshold (and
    temperature) on, which are not its run's validation films, so that :func:`check_held_out` knows them as it
    knows those (absolute paths: the bundle may move); ``name`` INT8_CALIBRATION_FILMS for those that chose the INT8
    thresholds. Films already listed stay: a ``threshold`` copy keeps its temperature, and so the films that chose
    it."""
    listed = bundle / name
    films = {r.path: r for r in (discover(listed).records if listed.exists() else [])}
    films |= {os.path.realpath(r.path): dataclasses.replace(r, path=os.path.realpath(r.path)) for r in records}
    write_manifest(list(films.values()), listed)


def check_held_out(bundles: Sequence[Path | str], records: Sequence[Record], purpose: str, hint: str = "",
                   validation_warning: bool = False, refuse_validation: bool = False, int8: bool = False,
                   refuse_unchecked: bool = False) -> list[str]:
    """Refuse films a bundle (an ensemble: any member) trained on for PURPOSE, such as choosing a threshold: its
    scores on them are too good, so a threshold for a sensitivity target comes out too high. The training films are
    those of the run's split.csv (RUN/bundle's parent); a bundle without one is trusted, with a warning. With
    ``validation_warning``, films on which a bundle's own temperature and threshold were chosen are warned about;
    with ``refuse_validation``, refused too; with ``int8`` (the INT8 model's scores), those that chose its INT8
    thresholds as well. A run whose split.csv lists no film where it says (moved) is a warning, refused with
    ``refuse_unchecked``. Returns the warnings (each also logged): why figures on these films would be optimistic,
    for the reports made of them to say so."""
    real = {r.path: os.path.realpath(r.path) for r in records}
    given = set(real.values())
    all_trained: set[str] = set()
    all_validation: set[str] = set()
    caveats: list[str] = []

    def warn(text: str) -> None:
        log.warning("%s", text)
        caveats.append(text)

    listed = [(CALIBRATION_FILMS, "threshold"), *([(INT8_CALIBRATION_FILMS, "INT8 threshold")] if int8 else [])]
    for bundle in map(Path, bundles):
        for name, what in listed:
            if (chosen := _check_calibration_films(bundle, given, purpose, hint, refuse_validation, name)) and \
                    validation_warning:
                warn(f"{chosen} film(s) given to {purpose} chose {bundle}'s {what} ({name}): the figures on them "
                     "are optimistic")
        # (source, how BUNDLE has its weights, its run's films by real path, their training films among them)
        runs = []
        for path, how in _weight_sources(bundle):
            run, unresolved = _run_films(path, purpose, how)
            if unresolved and refuse_unchecked:
                raise ValueError(f"{unresolved}; run it where the run's split.csv finds its films")
            if unresolved:  # a run moved away from its split's paths: said with the figures, not only logged
                warn(unresolved)
            if run:
                runs.append((path, how, run, _side(run, "train")))
        trained = [(path, how, films) for path, how, _, train in runs if (films := sorted(train & given))]
        if trained:
            path, how, films = trained[0]
            total = len(set().union(*(set(f) for _, _, f in trained)))
            among = (f"; {total} counting the training splits of all {len(trained)} bundles its weights come from"
                     if len(trained) > 1 else "")
            raise ValueError(f"{len(films)} of the films given to {purpose} were in {path}'s training split "
                             f"(e.g. {films[0]}{among}): {purpose} on films {path} did not train on{hint}"
                             f"{_SOURCE_NOTES[how].format(bundle=bundle)}")
        for path, _, run, train in runs:
            validation = sorted(_side(run, "val") & given)
            if validation and refuse_validation:
                raise ValueError(f"{len(validation)} of the films given to {purpose} are {path}'s validation films "
                                 f"(e.g. {validation[0]}), on which its own temperature and threshold were chosen: "
                                 f"{purpose} on films new to it{hint}")
            if validation and validation_warning:
                warn(f"{len(validation)} film(s) given to {purpose} are {path}'s validation films, on which its own "
                     "temperature and threshold were chosen: the figures on them are optimistic")
            all_trained |= train
            all_validation |= _side(run, "val")
            patients = {r.patient for r in run.values() if r.split == "train"}
            if kin := [r.patient for r in records
                       if r.patient in patients and not own_patient(r) and real[r.path] not in run]:
                warn(f"{len(kin)} film(s) given to {purpose} are other files of patients in {path}'s training split "
                     f"(by their patient ids: file names, a manifest's patient column or DICOM headers; e.g. "
                     f"{shown(kin[0])}): if they are the same patients, "
                     "the figures are optimistic")
    # copies under other names, of training films and (with validation_warning) of the films that chose its numbers
    sides = {"training": ("", all_trained)}
    if validation_warning:
        sides["validation"] = (", on which its own temperature and threshold were chosen", all_validation - all_trained)
    for (side, (why, _)), copies in zip(sides.items(), _copies(given, [films for _, films in sides.values()])):
        if copies:
            warn(f"{len(copies)} film(s) given to {purpose} are byte-for-byte copies of {side} films under other "
                 f"names (e.g. {shown(copies[0][0])} of {shown(copies[0][1])}){why}: the figures on them are "
                 "optimistic")
    return caveats


def check_sources_known(bundles: Sequence[Path | str], purpose: str) -> None:
    """Refuse bundles whose weights come (:func:`_weight_sources`) from a run whose training films are unknown
    here: no run's split.csv beside it (a bundle copied out of its run folder, or made on another machine), or an
    ensemble member trained again since. For distillation teachers: their probabilities carry what they learnt of
    their training films into every film the student learns from, so a teacher that may have trained on the
    validation films flatters the student's threshold and figures, where :func:`check_held_out` only warns."""
    for bundle in map(Path, bundles):
        for path, how in _weight_sources(bundle):
            split = RunFolder.of(path).split
            if how == "replaced" or not split.exists():
                why = ("it was trained again since the ensemble recorded it" if how == "replaced" else
                       f"no {split.name} of its run beside it: copied out of its run folder, or made elsewhere?")
                raise ValueError(f"{bundle}: its weights come from {path} ({why}), so it cannot be checked that it "
                                 f"never trained on the films given to {purpose}; give it in its run folder "
                                 f"(RUN/bundle beside RUN/{split.name})")


def _copies(given: set[str], sides: Sequence[set[str]]) -> list[list[tuple[str, str]]]:
    """For each side's films (training, validation), (given film, the film of that side it is a copy of) for each
    given film whose bytes one of them has: a test film copied into train/ under another name escapes every check
    by path. Every film is hashed once, whatever the number of sides. A warning, not a refusal: a public dataset may
    hold the same film twice across its own splits, and its test figures must still be measurable."""
    groups = exact_duplicate_groups(sorted(given.union(*sides))) if any(sides) else []
    found: list[list[tuple[str, str]]] = []
    for side in sides:
        found.append([])
        for group in groups:
            if source := next((f for f in group if f in side), None):
                found[-1] += [(f, source) for f in group if f in given and f not in side]
    return found


# Why a source's training films are BUNDLE's own, by how BUNDLE came by its weights (:func:`_weight_sources`).
_SOURCE_NOTES = {
    "": "",
    "member": (" (an ensemble of cv runs has no such film among its runs' films: `ensemble --cv` and `export --int8 "
               "--cv` choose its thresholds on out-of-fold scores)"),
    "copy": " ({bundle} is a copy of it with a new threshold, so its training films are {bundle}'s own)",
    "teacher": " ({bundle} was distilled from it, so its training films count as {bundle}'s own)",
    "init": " ({bundle} started from its weights, so its training films count as {bundle}'s own)",
}


def _run_films(path: Path, purpose: str, how: str) -> tuple[dict[str, Record], str | None]:
    """The films of the split.csv beside a bundle (its run's films and their sides) by real path, or none and why
    the films given cannot be checked when none is where the file says (a run folder copied or moved away from
    relative paths: the films given may be those very films, so the reason goes with the figures, and their
    patients are not matched, which would call them other files of the same patients). None, with a logged
    warning only, when there is no such file to check against: none beside it (a bundle shipped alone), or another
    model's (an ensemble member trained again)."""
    split = RunFolder.of(path).split
    cannot = f"so it cannot be checked that the films given to {purpose} are new to it"
    if how == "replaced":
        log.warning("%s holds other weights than the ensemble recorded (trained again since?), %s", path, cannot)
        return {}, None
    if not split.exists():
        log.warning("%s: no %s beside it, %s", path, split, cannot)
        return {}, None
    films = {os.path.realpath(r.path): r for r in discover(split).records}
    if films and not any(os.path.exists(f) for f in films):
        return {}, (f"{path}: none of the films {split} lists is where it says (a run folder copied or moved?), "
                    f"{cannot}: they may be its training films")
    return films, None


def _side(run: dict[str, Record], side: str) -> set[str]:
    """The real paths of a run's films on one side of its split."""
    return {path for path, r in run.items() if r.split == side}


def _check_calibration_films(bundle: Path, given: set[str], purpose: str, hint: str, refuse: bool,
                             name: str = CALIBRATION_FILMS) -> int:
    """How many films given chose BUNDLE's own threshold (calibration_films.csv, or ``name``), judged as its
    validation films are: refused with ``refuse``."""
    listed = bundle / name
    if not listed.exists():
        return 0
    chosen = sorted({os.path.realpath(r.path) for r in discover(listed).records} & given)
    if chosen and refuse:
        raise ValueError(f"{len(chosen)} of the films given to {purpose} chose {bundle}'s threshold (e.g. "
                         f"{chosen[0]}; {name}): {purpose} on films new to it{hint}")
    return len(chosen)


def labelled_records(
    data: Path | str, split: str | None, task: Task, spec: PreprocessSpec
) -> tuple[list[Record], np.ndarray, np.ndarray, list[dict[str, str]]]:
    """The task's readable records of DATA, their preprocessed uint8 images (N, S, S), their targets, and the
    files that could not be read. With a dataset root, ``split`` picks train/val/test."""
    records, cache = cache_dataset(data, spec, split, progress=True)
    read = set(cache.paths)
    readable = [r for r in records if r.path in read]
    warn_untyped(readable, task, "evaluation")
    records, targets = select(readable, task)
    unreadable = "; ".join(f"{shown(e['path'])}: {shown(e['reason'])}" for e in cache.errors[:3])
    if not records:
        raise ValueError(f"no readable film of {data}" + (f" ({split})" if split else "") + f" for the {task.name} task"
                         + (f": {len(cache.errors)} could not be read ({unreadable})" if cache.errors else ""))
    if cache.errors:  # films that fail to decode are no random sample: the figures are of the others only
        log.warning("%d film(s) of %s could not be read and are left out (%s%s)", len(cache.errors), shown(str(data)),
                    unreadable, "; ..." if len(cache.errors) > 3 else "")
    return records, cache.images[cache.rows([r.path for r in records])], targets, cache.errors


def refuse_test_films(records: Sequence[Record], data: Path | str, what: str) -> None:
    """Refuse test-split films for choosing a bundle's ``what`` (its threshold, its temperature): the test split
    measures a bundle, and figures on films that chose its numbers are optimistic."""
    if any(r.split == "test" for r in records):
        raise ValueError(f"{data}: the test split measures a bundle and never chooses its {what}; choose it on "
                         f"validation films (--split val, or a manifest of your own labelled films)")


def data_label(data: Path | str, split: str | None, data_name: str | None = None) -> str:
    """How a card and a report name the data a figure was measured on: ``data_name``, else DATA's name/split."""
    return data_name or Path(data).name + (f"/{split}" if split else "")


def labelled_images(
    data: Path | str, split: str | None, task: Task, spec: PreprocessSpec
) -> tuple[np.ndarray, np.ndarray, list[dict[str, str]]]:
    """:func:`labelled_records` without the records."""
    return labelled_records(data, split, task, spec)[1:]


def write_operating_point(bundle: Path, card: BundleCard, probs: np.ndarray, tta_scores: np.ndarray,
                          targets: np.ndarray, target_sensitivity: float | None, max_false_positive_rate: float | None,
                          policy: str, groups: Sequence[str] | None = None) -> tuple[BundleCard, dict]:
    """Choose the plain and TTA thresholds by one policy on these films' calibrated ``probs`` and TTA scores, and
    write them where every reader looks: ``card`` (temperature already set) with the thresholds, ``policy`` and
    the validation figures, saved as bundle.json and MODEL_CARD.md, then the ONNX sidecar. The one way a training
    run and an ensemble finish their bundle (``threshold`` keeps the validation figures of the films it trained
    on, so it writes its own). Returns the card written and the films' metrics."""
    task = get_task(card.task)
    warn_if_too_few_positives(binary_targets(targets), target_sensitivity)
    threshold, tta_threshold = choose_thresholds(binary_targets(targets), task.positive_probability(probs), tta_scores,
                                                 target_sensitivity, max_false_positive_rate)
    metrics = evaluate_probabilities(probs, targets, task, threshold, groups=groups)
    card = dataclasses.replace(card, threshold=threshold, tta_threshold=tta_threshold, threshold_policy=policy,
                               val_metrics=validation_figures(metrics))
    update_card(bundle, card)
    write_onnx_spec(bundle, bundle / ONNX_NAME)  # after the card: the sidecar copies its thresholds
    return card, metrics


def threshold_table(y: np.ndarray, scores: np.ndarray, threshold: float) -> list[dict]:
    """Counts, sensitivity, specificity and precision at the bundle's threshold, at the most specific thresholds
    that reach a few sensitivity targets on these images, and at fixed thresholds: the figures a user picks an
    operating point from. Rows in increasing threshold; one row per threshold, its rules joined."""
    rules: dict[float, list[str]] = {}

    def add(t: float, rule: str) -> None:
        # one row for thresholds that read alike at four decimals and call every film alike: the bundle's, chosen
        # on torch scores, and the same rule's on ONNX scores here (0.43549057 and 0.43549211 for one bundle)
        same = next((known for known in rules if abs(known - t) < 5e-5
                     and not ((scores >= min(known, t)) & (scores < max(known, t))).any()), float(t))
        rules.setdefault(same, []).append(rule)

    add(threshold, "bundle threshold")
    if 0 < int(y.sum()) < y.size:
        for target in TABLE_SENSITIVITIES:
            add(choose_threshold(y, scores, target), describe_policy(target, None))
    for t in TABLE_THRESHOLDS:
        add(t, "fixed")
    rows = []
    for t in sorted(rules):
        m = binary_metrics(y, scores, t)
        rows.append({"threshold": t, "rule": ", ".join(rules[t]), **{k: m[k] for k in (
            "sensitivity", "specificity", "precision", "tp", "fp", "tn", "fn")}})
    return jsonable(rows)  # an undefined rate (precision with nothing called positive) is None, not NaN


def _thumbnail(image: Image.Image, overlay: bool) -> bytes:
    """A PNG at most THUMBNAIL pixels high (three panels wide for an overlay), so sixteen keep the report small; an
    overlay's marked as pneumoscan output, as the full-size one is (saved from the report, it is refused as a film)."""
    from pneumoscan.inference.explain import encode_png

    image.thumbnail((3 * THUMBNAIL, THUMBNAIL), Image.Resampling.BILINEAR)
    return encode_png(image, own="overlay" if overlay else None)


def error_gallery(predictor: Predictor, records: list[Record], y: np.ndarray, scores: np.ndarray,
                  threshold: float, size: int = GALLERY_SIZE,
                  cam_seconds: float = GALLERY_CAM_SECONDS) -> dict[str, list[tuple[bytes, str]]]:
    """The ``size`` most confident false positives (highest scores among negatives called positive) and false
    negatives (lowest scores among positives called negative) as thumbnails, with Grad-CAM overlays while
    ``cam_seconds`` last and the model has a spatial feature map, plain films after that."""
    from pneumoscan.inference.explain import explain_array, overlay_png

    called = scores >= threshold
    false_pos = np.flatnonzero((y == 0) & called)
    false_neg = np.flatnonzero((y == 1) & ~called)
    groups = {
        f"False positives: called {predictor.card.positive}, truly {predictor.card.classes[0]} (highest scores first)":
            false_pos[np.argsort(-scores[false_pos], kind="stable")][:size],
        f"False negatives: called {predictor.card.classes[0]}, truly {predictor.card.positive} (lowest scores first)":
            false_neg[np.argsort(scores[false_neg], kind="stable")][:size],
    }
    deadline = time.monotonic() + cam_seconds
    cam = True
    gallery: dict[str, list[tuple[bytes, str]]] = {}
    for title, indices in groups.items():
        items = []
        for i in indices:
            record = records[i]
            try:
                gray = read_gray(record.path, target=predictor.card.spec.decode_target)
            except DecodeError as e:  # changed since the cache was built: say so, do not stop the report
                log.warning("gallery: %s: %s", record.path, e)
                continue
            image, overlay = Image.fromarray(gray), False
            if cam and time.monotonic() < deadline:
                try:
                    image, overlay = Image.open(io.BytesIO(overlay_png(gray, explain_array(predictor, gray),
                                                                 predictor.card.positive))), True
                except ValueError as e:  # a model without a spatial feature map
                    log.info("gallery without Grad-CAM: %s", e)
                    cam = False
            items.append((_thumbnail(image, overlay), f"{Path(record.path).name}  P = {format_figure(scores[i])}"))
        gallery[title] = items
    return gallery


def default_out_dir(bundle: Path | str, data: Path | str, split: str | None, tta: bool, two_stage: bool,
                    backend: str = "torch") -> Path:
    """Where ``evaluate`` writes without ``--out``: ``eval-<data name>[-<split>][-tta][-two-stage][-int8]/`` beside the
    bundle, so evaluations of one bundle on different data or in different modes never overwrite each other. A
    bundle folder named other than ``bundle`` (a ``threshold`` copy beside it) puts its name first
    (``eval-<bundle name>-...``): the two bundles' evaluations must not overwrite each other either."""
    suffix = ((f"-{split}" if split else "") + ("-tta" if tta else "") + ("-two-stage" if two_stage else "")
              + ("-int8" if backend == "onnx-int8" else ""))
    name = Path(os.path.realpath(bundle)).name
    return Path(bundle).parent / f"eval-{'' if name == 'bundle' else name + '-'}{Path(data).stem}{suffix}"


def evaluate(bundle: Path | str, data: Path | str, split: str | None = None, out_dir: Path | str | None = None,
             tta: bool = False, add_to_card: bool = False, data_name: str | None = None,
             etiology: Path | str | None = None, backend: str = "torch") -> dict:
    """Score every image of DATA (a dataset root, a NORMAL/PNEUMONIA folder or a manifest) that belongs to the
    bundle's task; with a dataset root, ``split`` picks train/val/test. With ``tta``, scores average the test-time
    views and are read at the bundle's TTA threshold, as ``predict --tta`` does. The result holds a
    ``threshold_table`` (:func:`threshold_table`). With ``out_dir``: metrics.json, report.html (with the most
    confident errors), its figures as PNG, predictions.csv and sensitivity_table.csv. With ``add_to_card``: the
    result is recorded in the bundle's card under ``data_name`` (bundle.json and MODEL_CARD.md; weights untouched).
    With ``etiology`` (a bundle that follows this one, as ``predict --etiology``), the two stages are also scored as
    normal / bacteria / virus under ``two_stage`` (:func:`two_stage_decision`). ``backend`` scores as ``predict
    --backend`` does: with ``onnx-int8``, the bundles' INT8 models at their own thresholds."""
    if backend == "onnx-int8" and add_to_card:
        raise ValueError("--add-to-card records evaluations of the bundle's FP32 model, which its card describes; "
                         "the INT8 model's figures stay in the report")
    predictor = Predictor(bundle, backend=backend)
    card = predictor.card
    threshold = predictor.threshold(tta)
    task = get_task(card.task)
    records, images, targets, errors = labelled_records(data, split, task, card.spec)
    # figures on training films flatter a model, and a card's "other data" must be other than its calibration films
    caveats = check_held_out([bundle, *([etiology] if etiology is not None else [])], records,
                             "record an evaluation in the card" if add_to_card else "evaluate",
                             validation_warning=True, refuse_validation=add_to_card, int8=backend == "onnx-int8",
                             refuse_unchecked=add_to_card)
    probs = predictor.probabilities(images, tta=tta)
    scores, y = predictor.positive(probs), binary_targets(targets)
    # the CIs count patients: one patient's films are scored alike (a film without a patient id is its own patient)
    metrics = evaluate_probabilities(probs, targets, task, threshold, groups=[r.patient for r in records])
    metrics["unreadable"] = errors
    metrics["optimistic"] = caveats  # why these figures may flatter the model (films it chose or trained on)
    metrics["bundle"] = os.path.realpath(bundle)  # which card's threshold policy and model these figures are of
    metrics["bundle_weights"] = card.files.get(WEIGHTS, "")  # ... while it holds these weights (compare checks)
    metrics["backend"] = backend  # onnx-int8: the INT8 model's scores, at its own thresholds
    metrics["data"] = data_label(data, split, data_name)  # compare says which films each run's figures are on
    if etiology is not None:
        metrics["two_stage"], second_scores, two_stage_called = _two_stage(
            predictor, scores, records, images, targets, data, split, etiology, tta, backend)
    mode = f"{len(TTA_VIEWS)}-view test-time augmentation" if tta else "plain"
    name = data_label(data, split, data_name)
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        called = scores >= threshold
        rows = [{"path": path_text(r.path), "label": task.classes[t], "subtype": r.subtype,  # a results file: UTF-8
                 "patient": path_text(r.patient), "probability": f"{p:.6f}",
                 "called": card.positive if c else card.classes[0], "correct": bool(c == yy)}
                for r, t, p, c, yy in zip(records, targets, scores, called, y)]  # fmt: skip
        if etiology is not None:
            for row, p, c in zip(rows, second_scores, two_stage_called):
                row |= {"etiology_probability": f"{p:.6f}", "two_stage_called": c}
        write_csv(out_dir / "predictions.csv", PREDICTION_FIELDS + (TWO_STAGE_FIELDS if etiology else ()), rows)
        table = metrics["threshold_table"]
        write_csv(out_dir / "sensitivity_table.csv", list(table[0]), table)
        header = {
            "bundle": str(bundle), "model id": card.model_id, "data": str(data), "images": len(targets),
            "unreadable": len(errors), "scores": mode, "threshold": f"{threshold:.4f} ({card.threshold_policy})",
            "temperature": f"{card.temperature:.3f}", "package version": card.package_version, "backend": backend,
        } | ({"etiology bundle": str(etiology)} if etiology else {})  # fmt: skip
        write_report(metrics, out_dir, f"{card.model} · {card.task} · {name}", extra=header, figures=True,
                     gallery=error_gallery(predictor, records, y, scores, threshold))
    if add_to_card:
        add_evaluation(bundle, evaluation_record(metrics, name, "tta" if tta else "plain"))
        log.info("recorded the evaluation on %s in %s", name, Path(bundle) / MODEL_CARD)
    return metrics


def int8_figures(y: np.ndarray, scores: np.ndarray, thresholds: tuple[float, float], policy: str, chosen_on: str,
                 fp32_auc: float, change: float) -> dict:
    """What an INT8 sidecar says of the films that chose its thresholds: the plain and TTA thresholds, their policy
    and films, the FP32 and INT8 AUC on them, the largest change in probability quantisation made, and the INT8
    model's figures at its threshold (what ``--backend onnx-int8`` shows as its validation figures). ``export
    --int8`` and ``threshold`` both write them, so that neither leaves one about other films."""
    at = binary_metrics(y, scores, thresholds[0]) | {"auc": roc_auc(y, scores)}
    return {
        "int8_threshold": thresholds[0], "int8_tta_threshold": thresholds[1], "threshold_policy": policy,
        "int8_thresholds_chosen_on": chosen_on, "validation_images": int(len(y)), "val_auc_fp32": fp32_auc,
        "val_auc_int8": at["auc"], "max_probability_change": change, "int8_val_metrics": validation_figures(at),
    }  # fmt: skip


def _thresholds(predictor: Predictor, images: np.ndarray, y: np.ndarray, target_sensitivity: float | None,
                max_false_positive_rate: float | None) -> tuple[float, float, np.ndarray, np.ndarray]:
    """The policy's plain and TTA thresholds for one way of scoring, with the plain and TTA scores."""
    plain = predictor.positive(predictor.probabilities(images))
    tta = predictor.positive(predictor.probabilities(images, tta=True))
    return *choose_thresholds(y, plain, tta, target_sensitivity, max_false_positive_rate), plain, tta


def warn_if_too_few_positives(y: np.ndarray, target_sensitivity: float | None) -> None:
    """A sensitivity target is a statement about misses; with fewer than 1 / (1 - target) positives a single miss
    is already below it, so the threshold met it on these films by chance as much as by design. Said wherever a
    threshold that will be used is chosen: training, ``ensemble``, ``threshold`` and ``export --int8``."""
    if target_sensitivity is None or target_sensitivity >= 1:
        return
    needed = math.ceil(round(1 / (1 - target_sensitivity), 6))  # 1 / (1 - 0.9) is 10.000000000000002
    if int(y.sum()) < needed:
        log.warning("only %d positive films: a sensitivity of %.2f cannot be shown on fewer than %d, so this threshold "
                    "is a guess; choose it on more labelled films", int(y.sum()), target_sensitivity, needed)


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
    warn_if_too_few_positives(y, target_sensitivity)
    threshold, tta_threshold, plain, tta = _thresholds(predictor, images, y, target_sensitivity, max_false_positive_rate)
    int8 = None
    if (bundle / INT8_NAME).exists():
        # checked as --backend onnx-int8 checks it (checksums, weights), then scored without its old thresholds
        quantized = Predictor(bundle, backend="onnx", session=int8_model(bundle)[0])
        try:
            int8 = _thresholds(quantized, images, y, target_sensitivity, max_false_positive_rate)[:3]
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
    card = load_card(bundle)
    card.threshold, card.tta_threshold, card.threshold_policy = threshold, tta_threshold, policy
    card.threshold_records.append(record)
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
                y, int8[2], int8[:2], policy, name, roc_auc(y, plain), float(np.abs(plain - int8[2]).max())))
            write_model_card(tmp, load_card(tmp))  # its INT8 section, from the sidecar just written
    log.debug("threshold %.4f (was %.4f), with --tta %.4f: %s; sensitivity %.3f, specificity %.3f on %d images -> %s",
             threshold, record["previous_threshold"], tta_threshold, policy, at["sensitivity"], at["specificity"],
             y.size, out)
    return card
