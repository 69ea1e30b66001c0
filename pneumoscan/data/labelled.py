"""Labelled films as figures are measured on them: a task's readable films of a dataset with their cached,
preprocessed images and targets, and the files of it they leave out (:func:`labelled_films`), and the patients their
confidence intervals count, copies of one film under other names as one (:func:`patient_groups`). Evaluation and the
threshold command load their films here, and so do training's validation, cross-validation, ensembles and the INT8
model's calibration and check.
"""

from __future__ import annotations

import functools
import logging
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pneumoscan.core.names import shown
from pneumoscan.data.cache import ImageCache, cache_dataset
from pneumoscan.data.copies import label_conflicts, picture_groups
from pneumoscan.data.layouts import Discovery, Record, absent_hint, discover, own_patient
from pneumoscan.data.preprocess import PreprocessSpec
from pneumoscan.data.split import patient_units, warn_conflicts
from pneumoscan.data.tasks import Task, select, warn_untyped

log = logging.getLogger(__name__)
UNREADABLE = "could not be read"  # a left_out reason: the files that could not be read (LabelledFilms.unreadable)


@dataclass(frozen=True)
class LabelledFilms:
    """A task's readable films of a dataset, as :func:`labelled_films` loads them, and the files of it they leave
    out, so that what reports their figures can say what the figures are not of."""

    records: list[Record]
    targets: np.ndarray
    unreadable: list[dict[str, str]]  # the files that could not be read: path and reason
    outside: list[Record]  # readable films the task cannot score (another class, or a pneumonia film without type)
    every: list[Record]  # DATA's records of every split, as read: what proves DATA a run's split reads no second time
    # the cache of DATA's records of the split read (of every one without a split), in their order, or the one the
    # caller gave that holds them (labelled_films' ``cache``)
    cache: ImageCache

    @functools.cached_property
    def images(self) -> np.ndarray:
        """The films' preprocessed uint8 images (N, S, S), copied out of the cache when first asked for."""
        return self.images_at(range(len(self.records)))

    def images_at(self, rows: Iterable[int]) -> np.ndarray:
        """The images of the films at ``rows`` of :attr:`records` alone: ``export --int8`` calibrates on 256 of
        thousands of training films, and copied them all."""
        return self.cache.images[self.cache.rows([self.records[i].path for i in rows])]


def labelled_films(data: Path | str, split: str | None, task: Task, spec: PreprocessSpec,
                   found: Discovery | None = None, cache: ImageCache | None = None) -> LabelledFilms:
    """The task's readable records of DATA, their preprocessed images and targets, and the files left out, warned
    of. With a dataset root, ``split`` picks train/val/test. ``found``: DATA's discovery as the caller made it
    (``export --int8`` reads two splits of one listing; default: made here); ``cache``: an image cache under
    ``spec`` that holds the split's records among others, as the caller opened it (``export --int8`` reads both
    splits from one; default: the split's own, built here)."""
    found = discover(data) if found is None else found
    records, cache = cache_dataset(data, spec, split, progress=True, found=found, cache=cache)
    given = {r.path for r in records}
    errors = [e for e in cache.errors if e["path"] in given]  # a cache given holds other splits' files too
    read = set(cache.paths)
    readable = [r for r in records if r.path in read]
    untyped = warn_untyped(readable, task, "evaluation")
    records, targets = select(readable, task)
    # films of a class the task does not read (NORMAL for etiology): left out, and said, as the figures are of the rest
    outside = Counter(r.label for r in readable if r.label != "PNEUMONIA" and task.target(r) is None)
    beyond = ", ".join(f"{n} {label}" for label, n in sorted(outside.items()))
    unreadable = "; ".join(f"{shown(e['path'])}: {shown(e['reason'])}" for e in errors[:3])
    if untyped and not any(r.label == "PNEUMONIA" for r in records):
        # figures of the normal films alone would pass for figures on every film given: a three-class accuracy of 1
        raise ValueError(f"the {untyped} PNEUMONIA film(s) of {shown(str(data))} say neither bacteria nor virus (in "
                         f"their names or a manifest's subtype column), which the {task.name} task needs, so it would "
                         "leave every one out"
                         + (f" and its figures would be of the {len(records)} NORMAL film(s) alone" if records else "")
                         + ": give each its type (a manifest's subtype column, bacteria or virus)"
                         + (", or measure a pneumonia bundle on them" if records else ""))
    if not records:
        raise ValueError(f"no readable film of {data}" + (f" ({split})" if split else "") + f" for the {task.name} task"
                         + (f": {beyond} film(s), which it does not read ({', '.join(task.classes)})"
                            if outside else "")
                         + (f": {len(errors)} could not be read ({unreadable})" if errors else "")
                         # a manifest's paths read from another folder than meant: where its films are, as split says
                         + (f"; {absent_hint(absent)}" if found.layout == "manifest" and
                            (absent := [e["path"] for e in errors if not os.path.exists(e["path"])]) else ""))
    if outside:
        log.warning("%s film(s) of %s are outside the %s task (%s) and are left out: the figures are of the other %d",
                    beyond, shown(str(data)), task.name, ", ".join(task.classes), len(records))
    if errors:  # films that fail to decode are no random sample: the figures are of the others only
        log.warning("%d film(s) of %s could not be read and are left out (%s%s)", len(errors), shown(str(data)),
                    unreadable, "; ..." if len(errors) > 3 else "")
    return LabelledFilms(records, targets, errors, [r for r in readable if task.target(r) is None], found.records,
                         cache)


def left_out(films: LabelledFilms, task: Task) -> list[dict]:
    """The files given that the figures are not of, counted by why: evaluate's ``left_out`` (metrics.json, the
    report's "left out of the figures", a card's record of an evaluation), a ``threshold`` record's, an ensemble's,
    cv.json's, a training run's validation figures' (:func:`files_left_out`) and an INT8 sidecar's (the films its
    thresholds were chosen on). Files that could not be read (``unreadable`` lists them), films of a class the task
    does not read (NORMAL films given to an etiology bundle), and pneumonia films without the type the task needs."""
    return files_left_out(len(films.unreadable), films.outside, task)


def files_left_out(unreadable: int, outside: Iterable[Record], task: Task) -> list[dict]:
    """:func:`left_out` of files read without :func:`labelled_films`: ``unreadable`` files that could not be read and
    the readable films ``outside`` the task (those ``task.target`` gives no target), as a training run's validation
    side has them (metrics.json and the card's ``val_metrics``)."""
    reasons = Counter(f"of class {r.label}, which the {task.name} task does not read ({', '.join(task.classes)})"
                      if r.label != "PNEUMONIA" else "of class PNEUMONIA that say neither bacteria nor virus (in their "
                      f"names or a manifest's subtype column), which the {task.name} task needs" for r in outside)
    return _by_reason(Counter({UNREADABLE: unreadable}) + reasons)


def pooled_left_out(parts: Iterable[Sequence[dict]]) -> list[dict]:
    """The :func:`left_out` lists of several sets of films that are given together, as one: each reason's films
    summed (cross-validation's folds, whose validation films are together every film given)."""
    return _by_reason(sum((Counter({e["reason"]: e["films"] for e in part}) for part in parts), Counter()))


def _by_reason(counts: Counter) -> list[dict]:
    """A ``left_out`` list: the unreadable files first, then each other reason in order, those without films
    dropped."""
    ordered = [(UNREADABLE, counts[UNREADABLE]), *sorted((r, n) for r, n in counts.items() if r != UNREADABLE)]
    return [{"films": n, "reason": reason} for reason, n in ordered if n]


def patient_groups(records: Sequence[Record], data: Path | str) -> tuple[list[list[str]], np.ndarray, list[dict]]:
    """The copies of one film under other names among RECORDS (warned of), each film's patient unit
    (:func:`patient_units`), and the label conflicts among them (warned of: a picture labelled NORMAL and PNEUMONIA
    is scored wrong under one of them, a name saying bacteria beside a virus label may be a misfiled film). The CIs
    count patients: one patient's films are scored alike (a film without a patient id is its own patient), and so
    are copies of one film under other names (one child's, filed twice)."""
    pictures = picture_groups([r.path for r in records])
    copies = [paths for _, paths in pictures]
    _say_copies(copies, records, data)
    warn_conflicts(conflicts := label_conflicts(records, pictures))
    return copies, patient_units(records, copies), conflicts


def films_without_patient_id(records: Sequence[Record]) -> int:
    """How many of RECORDS carry no patient id (:func:`~pneumoscan.data.layouts.own_patient`): each is a patient of
    its own in the intervals (:func:`patient_groups`), so with several films of one child among them the intervals
    are too narrow. metrics.json records it under this name, evaluate's and a training run's validation report
    alike, and :func:`~pneumoscan.core.metrics.unit_caveat` says it."""
    return sum(map(own_patient, records))


def _say_copies(copies: Sequence[Sequence[str]], records: Sequence[Record], data: Path | str) -> None:
    """Warn of copies of a film filed under another patient id (or none): a child filed twice, which only these copies
    tie together, and which a user can put right. Copies among one patient's own films (the public release's, each
    within one ``personN`` or study) change no interval and weigh in the figures as a patient's several films do:
    said as information, which ``-q`` hides, as there is nothing to put right and every command would repeat it."""
    patient = {r.path: r.patient for r in records}
    hidden = [paths for paths in copies if len({patient[p] for p in paths}) > 1]
    within = [paths for paths in copies if len({patient[p] for p in paths}) == 1]
    if hidden:
        log.warning("%d film(s) of %s are copies of others in it under other names (byte for byte or re-encoded; "
                    "e.g. %s): each group is counted as one patient in the intervals, but weighs once a film in the "
                    "figures; `pneumoscan audit` lists them", sum(map(len, hidden)), shown(str(data)),
                    " | ".join(map(shown, hidden[0])))
    if within:
        log.info("%d film(s) of %s are copies of another film of the same patient (byte for byte or re-encoded; "
                 "e.g. %s): they weigh once a film in the figures, as a patient's several films do, and change no "
                 "interval", sum(map(len, within)), shown(str(data)), " | ".join(map(shown, within[0])))
