"""Knowledge distillation: a student learns its teachers' calibrated probabilities as well as the labels.

An ensemble ranks films better than any of its members (docs/results.md) but costs all its members' time at every
prediction. A student, one model the size of one member, learns on each training film the mixed target
``(1 - distill_weight) * one_hot(label) + distill_weight * teachers``, where ``teachers`` is the softmax of the
teachers' averaged calibrated logits (the average an ensemble bundle takes of its members, without the ensemble's
own temperature, which is fitted on held-out films these teachers have none of), computed once on the unaugmented
films (Hinton et al. 2015, offline). The class-weighted cross-entropy takes the mixed target as it takes a mixup one.

A teacher that trained on the student's validation films would carry their labels into the student, whose
threshold, temperature and best epoch are chosen on those films: such a teacher is refused. For the same reason
evaluation counts the teachers' training films as the student's own (``held_out.check_held_out``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from pneumoscan.core.metrics import softmax
from pneumoscan.data.cache import build_cache
from pneumoscan.data.layouts import Record
from pneumoscan.data.tasks import Task
from pneumoscan.evaluation.held_out import check_held_out
from pneumoscan.inference.predict import Predictor
from pneumoscan.models.card import (TEACHER_CARDS, WEIGHTS, BundleCard, TrainingSource, bundle_checksums, load_card,
                                    refused_as, taught_sources, teacher_label, teachers_sample, verify_file)
from .config import TrainConfig
from .ensemble import member_named_logits, refuse_repeated_models

log = logging.getLogger(__name__)


def check_teachers(cfg: TrainConfig, records: Sequence[Record],
                   task: Task) -> tuple[dict[str, Any], list[TrainingSource]]:
    """Refuse a distillation the student's validation could not judge honestly: a teacher of another task, one given
    twice or a copy of another (it would weigh double), one that trained on any of the student's validation films or
    whose training films are unknown here (its probabilities carry what it learnt of them into every film the student
    learns from), a weight outside (0, 1), or mixup/CutMix (they mix two films, the teachers' targets belong to one).
    A distill_weight without teachers is the config's to refuse (:meth:`TrainConfig.check_distill_weight`).
    Returns what the student's card records of its teachers, read with their cards as the run starts (empty without
    teachers): their bundle.json checksums (:data:`~pneumoscan.models.card.TEACHER_CARDS`), which tell them from a
    bundle trained again at a teacher's path during the run, and their samples of patients
    (:func:`~pneumoscan.models.card.teachers_sample`), since the student learnt from those patients too; and the
    teachers' training data (:func:`~pneumoscan.models.card.taught_sources`), which its card names beside its own
    films, since it learnt from those films too."""
    if not cfg.teacher:
        return {}, []
    if cfg.distill_weight is None or not 0 < cfg.distill_weight < 1:  # None: teachers set after the config was made
        raise ValueError("distill_weight is the teachers' share of the target, between 0 and 1: got "
                         f"{cfg.distill_weight}")
    if cfg.augment.mixup or cfg.augment.cutmix:
        raise ValueError("distillation learns each film's own teacher probabilities; mixup and CutMix mix two films: "
                         "turn them off (--set augment.mixup=0 --set augment.cutmix=0) or train without --teacher")
    cards = [_teacher_card(cfg.teacher, i) for i in range(len(cfg.teacher))]
    labels = [teacher_label(i, len(cfg.teacher), teacher) for i, teacher in enumerate(cfg.teacher)]
    for label, card in zip(labels, cards):
        if card.task != task.name:
            raise ValueError(f"{label} was trained for the {card.task} task, not {task.name}")
    refuse_repeated_models(cards, cfg.teacher, "its probabilities would weigh double in the student's targets")
    # the one walk of each teacher's weight sources: the check of their training films also finds those unknown here
    findings = check_held_out(cfg.teacher, [r for r in records if r.split == "val"], "validate the distilled model",
                              hint=" (with cv, give --teacher-cv runs made with the same --folds, --seed and data)",
                              names=labels)
    for teacher in cfg.teacher:  # refused, not only warned of as evaluation does: see the docstring
        if (unknown := findings.unknown_source(teacher)) is not None:
            raise ValueError(unknown)
    return {TEACHER_CARDS: bundle_checksums(cfg.teacher), **teachers_sample(cards)}, taught_sources(cards)


def _teacher_card(teachers: Sequence[str], i: int) -> BundleCard:
    """Teacher ``i``'s card and its weights (their SHA-256: refused before the run folder is made, not after the
    films are read); one damaged or edited is refused naming the teacher, since the student's own files are sound.
    An ensemble teacher's members' own cards are read, and refused by name, by the check of their training films."""
    with refused_as(teacher_label(i, len(teachers), teachers[i])):
        card = load_card(teachers[i])
        verify_file(teachers[i], card, WEIGHTS)
    return card


def teacher_probabilities(teachers: Sequence[str], paths: Sequence[str], among: Sequence[str],
                          batch_size: int) -> np.ndarray:
    """The teachers' averaged calibrated probabilities (N, classes) on the films ``paths``: the softmax of the mean
    of their calibrated logits. Each teacher reads them with its own preprocessing, from the cache of the films
    ``among`` (the run's: the student's own cache when a teacher preprocesses as the student does)."""
    calibrated = []
    for i, teacher in enumerate(teachers):
        # damaged weights or model.onnx, a film unread, a NaN score
        with refused_as(teacher_label(i, len(teachers), teacher)):
            predictor = Predictor(teacher, batch_size, backend="onnx")
            cache = build_cache(list(among), predictor.card.spec)
            try:
                images = cache.images[cache.rows(paths)]
            except KeyError as e:
                raise ValueError(f"could not read a training film: {e.args[0]}") from None
            # in float64: large finite float32 logits over a temperature below 1, or their mean, would overflow to
            # infinity, and their softmax would be NaN targets
            calibrated.append(member_named_logits(predictor, images).astype(np.float64) / predictor.card.temperature)
        log.info("distillation: %s scored the %d training films", teacher, len(paths))
    return softmax(np.mean(calibrated, axis=0))


def distilled_targets(targets: np.ndarray, teacher_probs: np.ndarray, weight: float) -> np.ndarray:
    """``(1 - weight) * one_hot(targets) + weight * teacher_probs``, float32 rows that sum to one."""
    one_hot = np.eye(teacher_probs.shape[1], dtype=np.float32)[targets]
    return ((1 - weight) * one_hot + weight * teacher_probs).astype(np.float32)
