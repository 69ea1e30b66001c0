"""Evaluate a bundle on labelled images: metrics at the bundle's threshold and at 0.5, CIs, curves, report,
per-image predictions, a sensitivity/specificity table over thresholds and the most confident errors. Whether the
films are new to the bundle is :mod:`.held_out`'s to say; a new threshold is :mod:`.operating_point`'s (the
``threshold`` command is :mod:`.rethreshold`)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from pneumoscan.core.atomic import file_stamp, unchanged, write_atomic
from pneumoscan.core.digests import bytes_sha256, file_sha256
from pneumoscan.core.metrics import (at_prevalence, binary_metrics, check_prevalences, choose_threshold,
                                     decision_thresholds, describe_policy, ece_by_chance, evaluate_binary,
                                     evaluate_multiclass, figure_beside, has_both_classes, jsonable, net_benefit,
                                     net_benefit_ci)
from pneumoscan.core.names import path_text, results_csv, shown
from pneumoscan.core.options import AUC_TESTS, DECISION_RANGE, look_up_option
from pneumoscan.data.cache import cache_dataset
from pneumoscan.data.decode import read_gray
from pneumoscan.data.labelled import (LabelledFilms, films_without_patient_id, labelled_films, left_out,
                                      patient_groups)
from pneumoscan.data.pixels import DecodeError
from pneumoscan.data.layouts import Record
from pneumoscan.data.preprocess import TTA_VIEWS
from pneumoscan.data.scope import describe, in_scope, outside_scope
from pneumoscan.data.tasks import Task, binary_targets, get_task, list_tasks
from pneumoscan.inference.onnx_runtime import INT8_NAME
from pneumoscan.inference.predict import NO_HEATMAP, Predictor, check_bundle_stages, stage_fields, stage_scope
from pneumoscan.models.card import WEIGHTS, BundleCard, load_card, proven_run_split, refuse_model_files
from pneumoscan.models.run_folder import PREDICTIONS, PREDICTIONS_CHECKSUM, TEST_SPLIT
from .held_out import HeldOutFindings, HeldOutPolicy, check_held_out, film_splits
from .methods import METHODS, methods_text, software
from .model_card import MODEL_CARD, add_evaluation, counted, evaluation_record, left_out_said
from .report import METRICS, MODEL_ID, THRESHOLD_DIGITS, report_files, write_report
from .subgroups import adjust, film_values, subgroup_figures

log = logging.getLogger(__name__)
# optimistic: whether metrics.json lists the film under optimistic_films (among the model's own data)
DECISION_CURVE = "decision_curve.csv"  # beside the report: the decision curve, a row a threshold probability
SENSITIVITY_TABLE = "sensitivity_table.csv"  # beside the report: its threshold table
PREDICTION_FIELDS = ("path", "label", "subtype", "patient", "probability", "called", "correct", "optimistic")
SCOPE_FIELDS = ("in_scope", "warnings")  # predictions.csv's columns before SPLIT: as predict's rows say them
# predictions.csv's last column (every other column keeps its place): each film's split (held_out.film_splits), read
# as a manifest's split column, so that the file copied anywhere or cut down to some rows is still known as test films
SPLIT = "split"
TWO_STAGE_CALLED = "two_stage_called"  # predictions.csv with a second stage: each film's call among the 1 + k
MOST_PROBABLE = "most_probable"  # predictions.csv of a multiclass bundle: the class its three-class figures call
TABLE_THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
TABLE_SENSITIVITIES = (0.9, 0.95, 0.97, 0.99)
# beneath the threshold table evaluate prints, in the words docs/evaluation.md gives it: what its column "npv" and its
# rules mean, which a clinical reader of the terminal is told nowhere else
THRESHOLD_TABLE_LEGEND = (
    "npv: negative predictive value, the share of the films called negative that are negative (precision: of those "
    "called positive, the share positive), at these films' prevalence. rule: fixed, a round threshold listed for "
    "comparison, chosen on no films; sensitivity >= X, the most specific threshold that reaches X on these films "
    "(optimistic on them); bundle threshold, the one the bundle labels at."
)
SCOPE_BATCH = 256  # films whose content is checked at once: the check holds each film turned four ways
GALLERY_SIZE = 8  # most confident false positives, and as many false negatives, in the report
GALLERY_CAM_SECONDS = 60.0  # Grad-CAM for the gallery stops here (about a second a film for a large model on CPU)
THUMBNAIL = 256


def evaluate_probabilities(probs: np.ndarray, targets: np.ndarray, task: Task, threshold: float,
                           groups: Sequence[str] | np.ndarray | None = None) -> dict:
    """Binary metrics for the task's positive class with a :func:`threshold_table`; multiclass tasks add a
    per-class block under ``multiclass``. ``groups`` (each film's patient, or its unit:
    :func:`~pneumoscan.data.labelled.patient_groups`) makes the CIs count patients. With the ECE comes the most
    chance gives these films' ECE were the probabilities calibrated (``ece_chance``:
    :func:`~pneumoscan.core.metrics.ece_by_chance`), the card's calibration caveat's yardstick: every set of
    figures (validation, an evaluation, an INT8 model's) holds the same fields."""
    y, prob = binary_targets(targets), task.positive_probability(probs)
    metrics = evaluate_binary(y, prob, threshold, class_names=(task.classes[0], task.positive), groups=groups)
    metrics["ece_chance"] = ece_by_chance(prob, groups)
    metrics["positive_class"] = task.positive
    metrics["threshold_table"] = threshold_table(y, prob, threshold)
    metrics.update(task.extra_metrics(targets, probs, groups))
    return metrics


def decision_curve(y: np.ndarray, scores: np.ndarray, threshold: float, points: np.ndarray,
                   groups: Sequence[str] | np.ndarray | None = None) -> dict:
    """metrics.json's ``decision_curve`` (:func:`~pneumoscan.core.metrics.net_benefit` at each of ``points``, with
    the 95% interval of the model's net benefit at each, ``net_benefit_low`` and ``net_benefit_high``:
    :func:`~pneumoscan.core.metrics.net_benefit_ci`, by patient with ``groups``) and ``net_benefit``, the model's
    (with its ``ci``), treat-all's and treat-none's at the bundle's own threshold, of the decision the bundle makes:
    P(positive) against its threshold, a multiclass bundle's too (pneumonia, whichever its type). A three-class
    decision (the most probable class, two stages) is no threshold on one probability, so it has no curve: one class
    against the rest would weigh a call the bundle never makes."""
    inside = 0 < threshold < 1  # 0 or 1: odds 0 or infinite
    # one set of resamples for the curve and the bundle's threshold
    intervals = net_benefit_ci(y, scores, [*points, *([threshold] if inside else [])], groups=groups)
    made = net_benefit(y, scores, points)
    curve = {"threshold": made.pop("threshold"), "net_benefit": made.pop("net_benefit"),  # its interval beside it
             "net_benefit_low": [ci[0] for ci in intervals[:len(points)]],
             "net_benefit_high": [ci[1] for ci in intervals[:len(points)]], **made}
    at = net_benefit(y, scores, [threshold]) if inside else None
    return {"decision_curve": curve,
            "net_benefit": at and {key: values[0] for key, values in at.items()
                                   if key in ("threshold", "net_benefit", "treat_all", "treat_none")}
            | {"ci": intervals[-1]}}


def two_stage_decision(first: np.ndarray, second: np.ndarray, first_threshold: float, second_threshold: float,
                       second_task: Task) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities (N, 1 + k) and decisions (0 the first stage's negative class, 1 + j the second stage's class j)
    of a first stage (``first``: P(pneumonia) per film) followed by a stage of k classes (``second``: its class
    probabilities, (N, k); bacteria vs virus), decided as ``predict --etiology`` decides: the first stage's negative
    class below its threshold, else the second stage's call at its threshold on its positive probability
    (:meth:`Task.positive_probability`: P(virus)), its first class below it. A stage of three or more classes calls
    its positive class, "not its first", at or above it (predict's label): the most probable of the classes that
    positive call sums, the one of them a 1 + k matrix can count, so that its threshold still decides its first
    class against the rest. The probabilities compose the stages' calibrated ones, P(normal) = 1 - p1,
    P(class j) = p1 q_j, for the AUCs and the reliability diagram; the decision is the thresholds', not their argmax."""
    first, second = np.asarray(first, float), np.asarray(second, float)
    probs = np.concatenate([1.0 - first[:, None], first[:, None] * second], axis=1)
    positive = second_task.positive_probability(second) >= second_threshold
    then = np.where(positive, 1 + np.argmax(second[:, 1:], axis=1), 0)
    return probs, np.where(first >= first_threshold, 1 + then, 0)


def _check_composable(bundle: Path | str, etiology: Path | str) -> None:
    """Refuse two bundles that do not chain (:func:`check_bundle_stages`), or whose first stage hands the second the
    films of its negative call: :func:`two_stage_decision` composes the route's classes from a first stage whose
    positive call hands a film over, and would score such a pair on the films predict never shows its second stage."""
    handoff, first = check_bundle_stages(bundle, etiology), load_card(bundle)
    if handoff != first.positive:
        raise ValueError(f"{etiology} reads the films {bundle} calls {handoff}, its negative call: evaluate with "
                         f"etiology (--etiology) composes the two stages' classes from a first stage that hands over "
                         f"its positive call ({first.positive}); evaluate each bundle on its own")


def two_stage_names(first: Task, second: Task) -> tuple[str, ...]:
    """The names of a two-stage route's 1 + k classes (the first stage's negative class, then the second stage's k),
    as a registered task with those classes spells them (the pneumonia task's NORMAL then etiology's bacteria and
    virus: the multiclass task's normal, bacteria, virus), so that the route's figures and calls sit beside that
    task's under one set of names; as the stages name them when no task has those classes."""
    composed = (first.classes[0], *second.classes)
    folded = [c.casefold() for c in composed]
    same = (get_task(name).classes for name in (first.name, *list_tasks()))
    return next((classes for classes in same if [c.casefold() for c in classes] == folded), composed)


def _two_stage(first: Predictor, first_scores: np.ndarray, films: LabelledFilms, data: Path | str,
               split: str | None, etiology: Path | str, tta: bool, backend: str, groups: np.ndarray,
               scope: Sequence[list[str]], by: dict[str, list[str]]) -> tuple[dict, dict[str, list], BundleCard]:
    """The 1 + k class figures of FIRST followed by the ETIOLOGY bundle (a stage of k classes) on the first stage's
    films (every film is scored by both stages, so the composed probabilities exist for all, and checked against
    both stages' training films), and predictions.csv's columns of the second stage, named as predict names them
    (:func:`stage_fields`: ``etiology_probability_virus``; a second stage of one's own is not reported as P(virus)):
    each film's probability (and class probabilities, for k of three or more), its 1 + k class call, and its scope
    (:func:`stage_scope`, the film's first-stage ``scope`` warnings with the second stage's content check); ``groups``
    as :func:`evaluate_probabilities` takes them (and ``by``'s groups: :func:`film_values`, their accuracy of the
    decision under ``subgroups``); and the second stage's card, whose threshold decides too. Refused
    when a film the first stage hands over does not say its class of the second stage (bacteria or virus)."""
    second = Predictor(etiology, backend=backend)  # the pair chains: evaluate checked it (check_stages)
    records = films.records
    images = _images_as_trained(second, first, records, films.images, data, split)
    task = second.task
    second_probs = second.probabilities(images, tta=tta)
    first_threshold, second_threshold = first.threshold(tta), second.threshold(tta)
    probs, called = two_stage_decision(first_scores, second_probs, first_threshold, second_threshold, task)
    truth = _two_stage_truth(first, task, records, films.targets, data)
    names = two_stage_names(first.task, task)
    among = f" (the most probable of {', '.join(task.classes[1:])})" if task.multiclass else ""
    metrics = evaluate_multiclass(truth, probs, names, predicted=called, groups=groups,
                                  decision=f"{first.card.positive} at {first_threshold:.4f}, then "
                                           f"{second.card.positive} at {second_threshold:.4f}{among}")
    # which second stage, while it holds these weights (compare checks), as the first stage is recorded, and what its
    # card says of its threshold and temperature (a guess, not fitted), which decide these calls as the first's do
    if by:
        metrics["subgroups"] = subgroup_figures(by, groups, decision=(truth, called))
    metrics |= {"etiology_bundle": os.path.realpath(etiology), "etiology_threshold": second_threshold,
                "etiology_bundle_weights": second.card.files.get(WEIGHTS, ""), "etiology_caveats": second.card.caveats}
    scopes, metrics["out_of_scope"] = _second_stage_scope(second, records, images, scope, data_label(data, split))
    fields = stage_fields(task)
    columns = {fields["probability"]: list(second.positive_probability(second_probs)),
               **{fields[c]: list(second_probs[:, i]) for i, c in enumerate(task.class_columns)},
               TWO_STAGE_CALLED: list(np.array(names)[called])}
    return metrics, columns | {fields[key]: [s[key] for s in scopes] for key in ("in_scope", "warnings")}, second.card


def _images_as_trained(second: Predictor, first: Predictor, records: list[Record], images: np.ndarray,
                       data: Path | str, split: str | None) -> np.ndarray:
    """The films as the second stage was trained to read them: the first stage's ``images``, or decoded again
    through the same cache where its preprocessing differs. Refused where it cannot read a film the first stage
    read: the two stages are scored on the same films, or not at all."""
    if second.card.spec == first.card.spec:
        return images
    _, cache = cache_dataset(data, second.card.spec, split, progress=True)
    try:
        return cache.images[cache.rows([r.path for r in records])]
    except KeyError as e:
        raise ValueError(f"the {second.task.name} stage cannot read a film the first stage read: {e.args[0]}; "
                         "evaluate the two stages on films both can read") from None


def _two_stage_truth(first: Predictor, task: Task, records: list[Record], targets: np.ndarray,
                     data: Path | str) -> np.ndarray:
    """Each film's true class among the 1 + k (0 the first stage's negative class, 1 + j the second stage's class
    j), refused where a film of the first stage's positive class names no class of the second: leaving it out would
    score the pipeline on other films than the first stage."""
    subtypes = [task.target(r) for r in records]
    unnamed = [r.path for r, t, s in zip(records, targets, subtypes) if t != 0 and s is None]
    if unnamed:
        raise ValueError(f"no {task.name} class ({', '.join(task.classes[:-1])} or {task.classes[-1]}) is named for "
                         f"{counted(len(unnamed), f'{first.card.positive.lower()} film')} of {data} (e.g. "
                         f"{unnamed[0]}): the two stages can only be scored as one decision among their classes on "
                         "films that name it")
    return np.array([0 if t == 0 else 1 + s for t, s in zip(targets, subtypes)])


def _second_stage_scope(second: Predictor, records: list[Record], images: np.ndarray, scope: Sequence[list[str]],
                        name: str) -> tuple[list[dict[str, object]], list[dict]]:
    """Each film's scope for the second stage (:func:`stage_scope`: its first-stage ``scope`` warnings with the
    second stage's content check), and the films that check flags, as metrics.json's ``out_of_scope`` lists them
    (the first stage's flags are the evaluation's own): warned of, as they are scored and counted like the rest."""
    scopes = [stage_scope(warnings, content) for warnings, content in zip(scope, _content_warnings(second, images))]
    outside = _outside(records, [s["warnings"] for s in scopes])
    if outside:
        record, found = outside[0]
        log.warning("%d film(s) of %s do not look like the films the %s stage was trained on (e.g. %s: %s): they are "
                    "scored and counted in the two-stage figures like the rest; predictions.csv marks them (%s false)",
                    len(outside), shown(name), second.task.name, shown(record.path), found[0][0],
                    stage_fields(second.task)["in_scope"])
    return scopes, _out_of_scope(outside)


def data_label(data: Path | str, split: str | None, data_name: str | None = None) -> str:
    """How a card and a report name the data a figure was measured on: ``data_name``, else DATA's name/split."""
    return data_name or Path(data).name + (f"/{split}" if split else "")


def films_digest(records: Sequence[Record]) -> str:
    """Which films, with which labels, the figures are on: a SHA-256 of each scored film's bytes (its content, so
    the same films moved, mounted elsewhere or listed by another manifest are the same, and a film rewritten in place
    another) and label. ``compare`` refuses runs that name their films alike (two sites' ``manifest.csv``) but were
    measured on different films, which its table would otherwise show as figures on one set."""
    lines = sorted(f"{file_sha256(r.path)}\t{r.label}" for r in records)
    return bytes_sha256("\n".join(lines).encode())


def threshold_table(y: np.ndarray, scores: np.ndarray, threshold: float) -> list[dict]:
    """Counts, sensitivity, specificity, precision and NPV at the bundle's threshold, at the most specific thresholds
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
            "sensitivity", "specificity", "precision", "npv", "tp", "fp", "tn", "fn")}})
    return jsonable(rows)  # an undefined rate (precision with nothing called positive) is None, not NaN


def _thumbnail(image: Image.Image, said: str | None) -> bytes:
    """A PNG at most THUMBNAIL pixels high (three panels wide for an overlay), so sixteen keep the report small; an
    overlay's (``said``: its caption) marked as pneumoscan output, as the full-size one is (saved from the report, it
    is refused as a film), its caption kept as its Description."""
    from pneumoscan.inference.explain import encode_png

    image.thumbnail((3 * THUMBNAIL, THUMBNAIL), Image.Resampling.BILINEAR)
    return encode_png(image, own="overlay" if said is not None else None, description=said)


def error_gallery(predictor: Predictor, records: list[Record], y: np.ndarray, scores: np.ndarray,
                  threshold: float, size: int = GALLERY_SIZE, cam_seconds: float = GALLERY_CAM_SECONDS,
                  tta: bool = False, scope: Sequence[list[str]] | None = None) -> dict[str, list[tuple[bytes, str]]]:
    """The ``size`` most confident false positives (highest scores among negatives called positive) and false
    negatives (lowest scores among positives called negative) as thumbnails, with Grad-CAM overlays while
    ``cam_seconds`` last and the model has a spatial feature map, plain films after that. ``tta`` (the scores are
    means of test-time views) and each film's ``scope`` warnings go into the overlays' captions, as predict's. An
    overlay is its panels alone, its caption the text's second line (the film's name and score the first): words
    drawn under a small film's panels made a strip many times as tall as wide, which no screen reader reads."""
    from pneumoscan.inference.explain import NoMapOfFilm, film_panels

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
            image, said, refused = Image.fromarray(gray), None, ""
            if cam and time.monotonic() < deadline:
                try:
                    image, said = film_panels(predictor, gray, label=predictor.card.positive if called[i] else
                                              predictor.card.classes[0], tta=tta, warnings=scope[i] if scope else ())
                except NoMapOfFilm as e:  # this film's map only: the next film's may be drawn
                    refused = f"  ({NO_HEATMAP}: {e})"
                except ValueError as e:  # a model without a spatial feature map, or an INT8 one
                    log.info("gallery without Grad-CAM: %s", e)
                    cam = False
            # at the decimals of the report's threshold, more where they would show the two alike
            caption = f"{Path(record.path).name}  P = {figure_beside(scores[i], threshold, THRESHOLD_DIGITS)}{refused}"
            items.append((_thumbnail(image, said), caption + (f"\n{said}" if said is not None else "")))
        gallery[title] = items
    return gallery


def _bundle_name(bundle: Path | str) -> str:
    """A bundle as a folder name says it: its run's name for a folder named ``bundle``, else its own."""
    path = Path(os.path.realpath(bundle))
    return path.parent.name if path.name == "bundle" else path.name


def default_out_dir(bundle: Path | str, data: Path | str, split: str | None, tta: bool,
                    etiology: Path | str | None = None, backend: str = "torch") -> Path:
    """Where ``evaluate`` writes without ``--out``: ``eval-<data name>[-<split>][-tta][-two-stage-<etiology
    bundle's name>][-int8]/`` beside the bundle, so evaluations of one bundle on different data, in different modes
    or with different second stages never overwrite each other. A bundle folder named other than ``bundle`` (a
    ``threshold`` copy beside it) puts its name first (``eval-<bundle name>-...``): the two bundles' evaluations
    must not overwrite each other either."""
    suffix = ((f"-{split}" if split else "") + ("-tta" if tta else "")
              + (f"-two-stage-{_bundle_name(etiology)}" if etiology is not None else "")
              + ("-int8" if backend == "onnx-int8" else ""))
    name = Path(os.path.realpath(bundle)).name
    return Path(bundle).parent / f"eval-{'' if name == 'bundle' else name + '-'}{Path(data).stem}{suffix}"


def evaluate(bundle: Path | str, data: Path | str, split: str | None = None, out_dir: Path | str | None = None,
             tta: bool = False, add_to_card: bool = False, data_name: str | None = None,
             etiology: Path | str | None = None, backend: str = "torch", by: Sequence[str] = (),
             auc_test: str = AUC_TESTS[0], decision_range: tuple[float, float] = DECISION_RANGE,
             prevalences: Sequence[float] = ()) -> dict:
    """Score every image of DATA (a dataset root, a NORMAL/PNEUMONIA folder or a manifest) that belongs to the
    bundle's task; with a dataset root, ``split`` picks train/val/test. With ``tta``, scores average the test-time
    views and are read at the bundle's TTA threshold, as ``predict --tta`` does. The result holds a
    ``threshold_table`` (:func:`threshold_table`). With ``out_dir``: metrics.json (the result, and the SHA-256 of
    the predictions.csv written with it, ``predictions_checksum``, which compare checks: the result itself is the
    same with and without ``out_dir``), report.html (with the most confident errors), its figures as PNG,
    predictions.csv and sensitivity_table.csv. With ``add_to_card``: the
    result is recorded in the bundle's card under ``data_name`` (bundle.json and MODEL_CARD.md; weights untouched).
    With ``etiology`` (a bundle that follows this one, as ``predict --etiology``), the two stages are also scored as
    one decision among their 1 + k classes (normal / bacteria / virus) under ``two_stage`` (:func:`two_stage_decision`),
    each film checked against the second stage's training films too. ``backend`` scores as ``predict
    --backend`` does: with ``onnx-int8``, the bundles' INT8 models at their own thresholds. A bundle copied out of its
    run, given that run's split.csv as DATA, has its films checked against it as against a split.csv beside it, once
    its card's data checksum proves it the run's, or its split checksum proves it the file its run wrote, its films
    changed since (:func:`~pneumoscan.models.card.proven_run_split`). ``by`` (fields:
    :func:`~.subgroups.film_values`) adds the figures of each of their groups at the same threshold under
    ``subgroups`` (:func:`~.subgroups.subgroup_figures`; a three-class decision's accuracy under its block's), each
    rate's test of a difference across the groups adjusted over all of them (:func:`~.subgroups.adjust`), AUC's by
    ``auc_test`` ("permutation" or "delong"), a field no film records refused before the films are scored. The
    decision curve of the bundle's own decision (P(positive) against its threshold; a three-class block has none:
    :func:`decision_curve`) spans ``decision_range``'s threshold probabilities. ``prevalences`` (each in (0, 1))
    add under ``at_prevalence`` the binary decision's precision, NPV, accuracy and net benefit, and its decision
    curve, recomputed at each from the films' sensitivity and specificity
    (:func:`~pneumoscan.core.metrics.at_prevalence`); a three-class decision's figures are not recomputed."""
    points, prevalences, results = _refuse_early(bundle, out_dir, etiology, add_to_card, backend, auc_test,
                                                 decision_range, prevalences)
    predictor = Predictor(bundle, backend=backend)
    card = predictor.card
    threshold = predictor.threshold(tta)
    task = predictor.task
    name = data_label(data, split, data_name)
    films = labelled_films(data, split, task, card.spec)
    held_out = _check_films(predictor, bundle, data, films, etiology, add_to_card, backend, prevalences)
    records, images, targets = films.records, films.images, films.targets
    scope, fields = _film_warnings(predictor, records, images)
    by_field = film_values(by, records, fields, name)  # an unknown field before the films are scored
    probs = predictor.probabilities(images, tta=tta)
    scores = predictor.positive_probability(probs)
    outside = _outside(records, scope)
    _say_outside(outside, name)  # once scored: a refusal of the scores (non-finite) is said alone
    copies, groups, conflicts = patient_groups(records, data)
    metrics = _figures(task, probs, scores, targets, threshold, points, groups, prevalences, by_field, auc_test)
    _annotate(metrics, bundle, card, backend, tta, name, copies, films.unreadable, held_out.caveats)
    _list_films(metrics, films, task, held_out, outside, conflicts)
    splits = film_splits(records, data)  # predictions.csv's split column
    # whether any film is test: threshold (an older pneumoscan's too) reads it beside predictions.csv, as film_splits
    # does, the only word on its films' split of a file without that column (an older pneumoscan's)
    metrics[TEST_SPLIT] = "test" in splits
    second: dict[str, list] | None = None  # predictions.csv's columns of the second stage
    second_card: BundleCard | None = None
    if etiology is not None:
        metrics["two_stage"], second, second_card = _two_stage(predictor, scores, films, data, split, etiology, tta,
                                                               backend, groups, scope, by_field)
        metrics["two_stage"]["films_without_patient_id"] = metrics["films_without_patient_id"]  # the same films
    adjust(metrics)  # the tests of a difference across groups, over every field and rate of this evaluation
    if out_dir is not None:
        header = _report_header(bundle, data, split, card, threshold, len(targets), metrics, tta, backend, etiology,
                                second_card)
        # made before the folder is locked: its Grad-CAMs take up to a minute, which another run would wait out
        gallery = error_gallery(predictor, records, binary_targets(targets), scores, threshold, tta=tta, scope=scope)
        with unchanged(Path(out_dir) / METRICS, results):
            _clear_earlier(Path(out_dir))
            _write_outputs(Path(out_dir), predictor, records, targets, probs, threshold, metrics,
                           f"{card.model} · {card.task} · {name}", header, second, gallery, scope, splits)
            # valid UTF-8 whatever a name's bytes, as the report writes them (caf\xe9)
            write_atomic(Path(out_dir) / METHODS, path_text(methods_text(metrics, header, card, second_card)).encode())
    if add_to_card:
        add_evaluation(bundle, evaluation_record(metrics, name, "tta" if tta else "plain", bundle, held_out))
        log.info("recorded the evaluation on %s in %s", name, Path(bundle) / MODEL_CARD)
    return metrics


def _clear_earlier(out_dir: Path) -> None:
    """Remove an earlier evaluation's outputs from ``out_dir`` before this one's are written: a run failing part-way
    (a full disk, a kill) left the other run's report, methods and figures beside its own new metrics.json and
    predictions.csv, one folder of two evaluations. The methods, metrics and report first: what a failure here leaves
    is never taken for them. A folder in a file's place is not this run's to remove (writing there fails)."""
    for path in (out_dir / METHODS, *report_files(out_dir), out_dir / PREDICTIONS, out_dir / SENSITIVITY_TABLE,
                 out_dir / DECISION_CURVE):
        if path.is_symlink() or not path.is_dir():
            path.unlink(missing_ok=True)


def _refuse_early(bundle: Path | str, out_dir: Path | str | None, etiology: Path | str | None, add_to_card: bool,
                  backend: str, auc_test: str, decision_range: tuple[float, float],
                  prevalences: Sequence[float]) -> tuple[np.ndarray, list[float], str | None]:
    """Refuse what the request alone makes wrong, before any film is read: a decision range that says nothing, a
    misspelt AUC test (never another test run in its name), a prevalence outside (0, 1), an INT8 model's figures for the
    card, a folder over a run's record or in a bundle, two bundles that do not chain. Gives the decision curve's
    threshold probabilities, the prevalences and the stamp of the report this run may replace (:func:`file_stamp`:
    another run's, written into the same folder meanwhile, is not)."""
    points = decision_thresholds(*decision_range)
    look_up_option(auc_test, AUC_TESTS, "AUC test")  # a misspelt test never runs another in its name
    prevalences = check_prevalences(prevalences)  # so is a prevalence outside (0, 1)
    if backend == "onnx-int8" and add_to_card:
        raise ValueError("add_to_card (--add-to-card) records evaluations of the bundle's FP32 model, which its card "
                         "describes; the INT8 model's figures stay in the report")
    if out_dir is not None:
        refuse_model_files(Path(out_dir) / METRICS, folder=True)  # over a run's record, or into a bundle
    results = file_stamp(Path(out_dir) / METRICS) if out_dir is not None else None
    if etiology is not None:  # a pair that does not chain is refused from the cards
        _check_composable(bundle, etiology)
    return points, prevalences, results


def _check_films(predictor: Predictor, bundle: Path | str, data: Path | str, films: LabelledFilms,
                 etiology: Path | str | None, add_to_card: bool, backend: str,
                 prevalences: Sequence[float]) -> HeldOutFindings:
    """The films checked against the bundles' own data (figures on training films flatter a model, and a card's
    "other data" must be other than its calibration films: :func:`check_held_out`), then refused for what needs
    films of both classes."""
    card, task = predictor.card, predictor.task
    proven = proven_run_split(bundle, data, films)  # a copied bundle's run split, from what was read
    held_out = check_held_out([bundle, *([etiology] if etiology is not None else [])], films.records,
                              "record an evaluation in the card" if add_to_card else "evaluate",
                              policy=HeldOutPolicy(validation_warning=True, refuse_validation=add_to_card,
                                                   int8=backend == "onnx-int8", refuse_unchecked=add_to_card),
                              cards=[card], run_split=data if proven.listed else None, run_records=films.every)
    both = has_both_classes(binary_targets(films.targets))
    if prevalences and not both:
        raise ValueError(f"prevalence (--prevalence) recomputes figures from sensitivity and specificity, which need "
                         f"films of both classes ({' and '.join(task.classes)}); the report still shows the rest "
                         "without it")
    if add_to_card and not both:
        raise ValueError(f"add_to_card (--add-to-card) needs films of both classes ({' and '.join(task.classes)}): "
                         "on one class a card's AUC, precision and F1 are undefined or meaningless; the report still "
                         "shows the rest")
    return held_out


def _figures(task: Task, probs: np.ndarray, scores: np.ndarray, targets: np.ndarray, threshold: float,
             points: np.ndarray, groups: np.ndarray, prevalences: Sequence[float], by_field: dict[str, list[str]],
             auc_test: str) -> dict:
    """The figures of the bundle's decision on the films (:func:`evaluate_probabilities`), its decision curve over
    ``points`` (:func:`decision_curve`), recomputed at each of ``prevalences``, and by ``by_field``'s groups."""
    y = binary_targets(targets)
    metrics = evaluate_probabilities(probs, targets, task, threshold, groups=groups)
    metrics |= decision_curve(y, scores, threshold, points, groups)
    if prevalences:  # of the decision the curve is of: P(positive) against the bundle's threshold
        metrics["at_prevalence"] = at_prevalence(y, scores, threshold, prevalences, metrics["decision_curve"], groups)
    if by_field:  # at the bundle's threshold, never one chosen per group
        metrics["subgroups"] = subgroup_figures(by_field, groups, binary=(y, scores, threshold), auc_test=auc_test)
        if task.multiclass:  # the decision the three-class figures are of: the most probable class
            metrics["multiclass"]["subgroups"] = subgroup_figures(by_field, groups,
                                                                  decision=(targets, np.argmax(probs, axis=1)))
    return metrics


def _list_films(metrics: dict, films: LabelledFilms, task: Task, held_out: HeldOutFindings,
                outside: list[tuple[Record, list]], conflicts: list[dict]) -> None:
    """Add to METRICS the films its figures may be flattered or muddied by, and which films they are of, for a
    researcher to leave some out or ``compare`` to check that runs named alike are on the same films."""
    # the sources of its weights whose training films are unknown here: these films may be among them
    metrics["unchecked"] = list(held_out.unknown_sources.values())
    # the films scored all the same that the check found among its own data (copies, its patients', its threshold's)
    metrics["optimistic_films"] = [path_text(path) for path in held_out.films]
    metrics["films"] = films_digest(films.records)  # compare checks that runs named alike are on the same films
    metrics["left_out"] = left_out(films, task)  # what of the files given the figures are not of, and why
    metrics["out_of_scope"] = _out_of_scope(outside)
    metrics["label_conflicts"] = conflicts  # films scored against a label their name or a copy contradicts
    # films that are patients of their own for want of an id: intervals by patient may then still be too narrow
    metrics["films_without_patient_id"] = films_without_patient_id(films.records)


def _film_warnings(predictor: Predictor, records: Sequence[Record],
                   images: np.ndarray) -> tuple[list[list[str]], list[dict[str, str]]]:
    """Each film's scope warnings, as ``predict`` gives them (its header's, then its pixels' at the model's input:
    ``images``), and each film's fields to group figures by, from the same read of its header
    (:func:`~pneumoscan.data.scope.grouping`)."""
    described = [describe(r.path, fields=True) for r in records]
    found = [d["warnings"] + c for d, c in zip(described, _content_warnings(predictor, images))]
    return found, [d["fields"] for d in described]


def _outside(records: Sequence[Record], scope: Sequence[list[str]]) -> list[tuple[Record, list]]:
    """Each film whose warnings put it outside the model's scope, with those warnings (:func:`outside_scope`)."""
    return [(r, found) for r, warnings in zip(records, scope) if (found := outside_scope(warnings))]


def _out_of_scope(outside: list[tuple[Record, list]]) -> list[dict]:
    """metrics.json's ``out_of_scope``: each film outside the scope (:func:`_outside`) and the warnings why."""
    return [{"path": path_text(r.path), "reasons": [w for w, _ in found]} for r, found in outside]


def _say_outside(outside: list[tuple[Record, list]], name: str) -> None:
    """A warning naming the films outside the model's scope (:func:`_outside`): a lateral, a CT or an inverted film
    is scored and counted in the figures like the rest (figures on the films given, as published figures are), but
    predictions.csv marks it (``in_scope`` false) and a card's record counts it; the warning says how to measure
    without them, which a site with a lateral among its films had to guess."""
    if outside:
        record, found = outside[0]
        log.warning("%d film(s) of %s are outside the model's scope (e.g. %s: %s): they are scored and counted in the "
                    "figures like the rest; predictions.csv marks them (in_scope false) and metrics.json lists them "
                    "(out_of_scope): leave them out of the films given to measure without them", len(outside),
                    shown(name), shown(record.path), found[0][0])


def _content_warnings(predictor: Predictor, images: np.ndarray) -> list[list[str]]:
    """Each film's warnings of ``predictor``'s content check (:meth:`Predictor.content_warnings`), a batch at a time."""
    return [w for start in range(0, len(images), SCOPE_BATCH)
            for w in predictor.content_warnings(images[start:start + SCOPE_BATCH])]


def _annotate(metrics: dict, bundle: Path | str, card: BundleCard, backend: str, tta: bool, name: str,
              copies: list[list[str]], errors: list[dict[str, str]], caveats: list[str]) -> None:
    """Add to METRICS what its figures are of and what may flatter them: the report shows these, and ``compare``
    checks that runs it sets side by side are of one bundle's weights and say on which films."""
    metrics["copies"] = copies
    metrics["unreadable"] = errors
    metrics["optimistic"] = caveats  # why these figures may flatter the model (films it chose or trained on)
    metrics["caveats"] = card.caveats  # what the card says of its threshold and temperature (a guess, not fitted)
    metrics["bundle"] = os.path.realpath(bundle)  # which card's threshold policy and model these figures are of
    metrics["bundle_weights"] = card.files.get(WEIGHTS, "")  # ... while it holds these weights (compare checks)
    metrics["backend"] = backend  # onnx-int8: the INT8 model's scores, at its own thresholds
    if backend == "onnx-int8":  # ... of this INT8 model: exported again, its scores and thresholds are others
        metrics["bundle_int8"] = card.files.get(INT8_NAME, "")
    metrics["tta"] = tta  # test-time augmentation's scores, at its own threshold: compare says which
    metrics["data"] = name  # compare says which films each run's figures are on
    metrics["software"] = software()  # the versions that made these figures (a paper's methods name them)


def _report_header(bundle: Path | str, data: Path | str, split: str | None, card: BundleCard, threshold: float,
                   images: int, metrics: dict, tta: bool, backend: str, etiology: Path | str | None,
                   second_card: BundleCard | None) -> dict[str, object]:
    """The report's table of what was measured, and how: which bundle and model, on which data (and which of its
    files the figures leave out, and why: :func:`~pneumoscan.data.labelled.left_out`), at which threshold (and where
    it was chosen), with the card's caveats about it, the pneumoscans that made the bundle and scored the films
    (metrics.json's ``software``), and how many films are outside the scope; with a second stage (``second_card``),
    its threshold, which decides the three-class calls too, its caveats and the films its own check flags. The data
    names its split: a dataset root holds the training films too."""
    mode = f"{len(TTA_VIEWS)}-view test-time augmentation" if tta else "plain"
    header = {
        "bundle": str(bundle), MODEL_ID: card.model_id, "data": f"{data}{f', split {split}' if split else ''}",
        "images": images,
        "left out of the figures": left_out_said(metrics["left_out"]) or "none",
        "scores": mode,
        "threshold": _threshold_said(card, threshold),
        "temperature": f"{card.temperature:.3f}", "bundle made with": f"pneumoscan {card.package_version}",
        "films scored with": f"pneumoscan {metrics['software']['pneumoscan']}", "backend": backend,
    } | ({"caveats": "; ".join(card.caveats)} if card.caveats else {}) | (
        {"etiology bundle": str(etiology)} if etiology else {})  # fmt: skip
    header["outside the model's scope"] = len(metrics["out_of_scope"])
    if second_card is not None:
        block = metrics["two_stage"]
        header["etiology threshold"] = _threshold_said(second_card, block["etiology_threshold"])
        if block["etiology_caveats"]:
            header["etiology caveats"] = "; ".join(block["etiology_caveats"])
        header["outside the second stage's scope"] = len(block["out_of_scope"])
    return header


def _threshold_said(card: BundleCard, threshold: float) -> str:
    """A threshold as the report's header says it: its value, the policy that chose it and how many films it was
    chosen on (a `threshold` record's own, else the validation films')."""
    films = card.threshold_records[-1].get("n") if card.threshold_records else card.val_metrics.get("n")
    return f"{threshold:.4f} ({card.threshold_policy}{'; chosen on ' + counted(films, 'film') if films else ''})"


def _write_outputs(out_dir: Path, predictor: Predictor, records: list[Record], targets: np.ndarray,
                   probs: np.ndarray, threshold: float, metrics: dict, title: str, header: dict[str, object],
                   second: dict[str, list] | None,
                   gallery: dict[str, list[tuple[bytes, str]]], scope: Sequence[list[str]],
                   splits: Sequence[str]) -> None:
    """predictions.csv (for a multiclass bundle with each class's probability and the most probable class, the
    decision its three-class figures are of, so they can be recomputed or split by subgroup from the file; with
    the second stage's columns, ``second`` (:func:`_two_stage`), when there is one),
    sensitivity_table.csv, decision_curve.csv (:func:`decision_curve`), and the report with its figures and the most
    confident errors (``gallery``: :func:`error_gallery`). Each row says whether its film is in the model's scope,
    with its warnings (``scope``: :func:`_film_warnings`), and whether it is among the model's own data
    (``optimistic``: metrics.json's ``optimistic_films``), for a researcher to leave those films out without joining
    the two by path; last, its split (``splits``: :func:`~.held_out.film_splits`), which ``threshold`` reads in the
    file wherever it goes."""
    card, task = predictor.card, predictor.task
    classes, scores = task.classes, task.positive_probability(probs)
    out_dir.mkdir(parents=True, exist_ok=True)
    y = binary_targets(targets)
    called = scores >= threshold
    optimistic = set(metrics["optimistic_films"])
    rows = [{"path": r.path, "label": classes[t], "subtype": r.subtype, "patient": r.patient,
             "probability": p, "called": card.positive if c else card.classes[0], "correct": bool(c == yy),
             "optimistic": path_text(r.path) in optimistic, "in_scope": in_scope(w), "warnings": w, SPLIT: s}
            for r, t, p, c, yy, w, s in zip(records, targets, scores, called, y, scope, splits)]  # fmt: skip
    class_fields: tuple[str, ...] = ()
    if task.multiclass:
        class_fields = (*task.class_columns, MOST_PROBABLE)
        for row, film in zip(rows, probs):
            row |= dict(zip(task.class_columns, film))
            row[MOST_PROBABLE] = classes[int(np.argmax(film))]
    second_fields = tuple(second or ())
    for column, values in (second or {}).items():
        for row, value in zip(rows, values):
            row[column] = value
    fields = PREDICTION_FIELDS + class_fields + second_fields + SCOPE_FIELDS + (SPLIT,)
    scored = results_csv(fields, rows).encode()
    write_atomic(out_dir / PREDICTIONS, scored)
    table = metrics["threshold_table"]
    write_atomic(out_dir / SENSITIVITY_TABLE, results_csv(list(table[0]), table).encode())
    curve = jsonable(metrics["decision_curve"])  # a rate of a class without films an empty cell, not "nan"
    for block in (metrics.get("at_prevalence") or {}).get("figures", ()):  # its columns at each prevalence asked
        curve |= {f"{key}_at_{block['prevalence']:g}": block["decision_curve"][key]
                  for key in ("net_benefit", "treat_all")}
    write_atomic(out_dir / DECISION_CURVE, results_csv(list(curve), [dict(zip(curve, row))
                                                                     for row in zip(*curve.values())]).encode())
    # metrics.json pairs with this predictions.csv alone (compare checks it); the figures evaluate returns stay the
    # same with and without --out, so the checksum goes into the file, not into ``metrics``
    write_report(metrics | {PREDICTIONS_CHECKSUM: bytes_sha256(scored)}, out_dir, title, extra=header,
                 figures=True, gallery=gallery,
                 beside={METHODS: "a draft of a paper's methods and results, with this report's figures"})
