"""Ensembles of bundles as one bundle: members' calibrated logits averaged, with the ensemble's own temperature and
thresholds.

Layout (one bundle = one folder with everything): ``model.safetensors`` holds every member's weights (keys
``members.K.net.*``) under the bundle's one checksum; ``bundle.json`` says ``model: "ensemble"`` and lists the
members (architecture, input size, normalisation, temperature, heatmap scale, provenance) in
``model_kwargs["members"]``; so ``load_bundle``, ``model.onnx`` (ONE graph), the INT8 path and every command read it
as any other bundle.

Input: the largest member size, normalised to [0, 1] (card mean 0, std 1). Each member resizes it to its own size
(bilinear, ``antialias=False``: ONNX opset 17 has no antialiased resize) and normalises it as it was trained.
Members must agree on everything else that turns a film into pixels (task, classes, resize policy, source size and
quality), so one decode serves them all; anything else is refused.

Combination: the mean of ``logits_m / T_m`` (each member's own calibration). This is the same as averaging
calibrated log-probabilities: ``log_softmax`` differs from the scaled logits by one constant per row and member,
which softmax cancels; logits are kept because they are what the graph already outputs.

Calibration films are scored (each plain and in the five TTA views) by ONNX Runtime: held-out data by the ensemble's
shipped graph, a cv run's films by each member's graph exported in memory; both are checked against torch. A
five-fold run's 5,232 films took 3 minutes on a 2-core CPU at 224 px, where eager torch had taken half an hour at
192 px (on a shared machine).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from pneumoscan.core.digests import bytes_sha256, hex_part
from pneumoscan.core.logs import progress as progress_bar
from pneumoscan.core.metrics import has_both_classes, softmax
from pneumoscan.core.names import path_list
from pneumoscan.data.labelled import labelled_films, left_out, patient_groups, pooled_left_out
from pneumoscan.data.layouts import Record, discover
from pneumoscan.data.preprocess import TTA_VIEWS
from pneumoscan.data.tasks import Task, binary_targets
from pneumoscan.evaluation.evaluate import data_label
from pneumoscan.evaluation.held_out import (HeldOutFindings, HeldOutPolicy, check_held_out, record_calibration_films,
                                            refuse_test_films)
from pneumoscan.evaluation.operating_point import check_better_than_chance
from pneumoscan.inference.export import check_usable, module_session
from pneumoscan.inference.predict import NonFiniteScore, Predictor, session_logits, tta_views
from pneumoscan.models import registry
from pneumoscan.models.bundle import load_bundle
from pneumoscan.models.card import (CARD, ENSEMBLE, MEMBER_SAMPLES, MEMBERS_OWN_SCALE, OUT_OF_FOLD, WEIGHTS,
                                   BundleCard, card_task, films_as_trained, learnt_from_teachers, load_appearance,
                                   load_card, member_label, pooled_sources, refused_as, runtime_versions,
                                   trained_sample)
from pneumoscan.models.ensemble_net import EnsembleNet, Member
from pneumoscan.models.run_folder import CvFolder, RunFolder
from .resume import split_change
from .finish import ScoredFilms, finish_bundle

SHARED = ("task", "classes", "positive", "resize_policy", "source_size", "source_quality")
log = logging.getLogger(__name__)


def member_named_logits(predictor: Predictor, images: np.ndarray) -> np.ndarray:
    """The logits of ``predictor`` on ``images``; for an ensemble, NaN or infinite scores (:class:`NonFiniteScore`)
    are refused naming the member that gives them (:func:`member_label`), each member scored by torch on the films
    concerned: the ensemble's one graph says only that their mean is not finite, and its own files are sound."""
    try:
        return predictor.logits(images)
    except NonFiniteScore as e:
        if predictor.card.model != ENSEMBLE:
            raise
        with torch.inference_mode():
            x = predictor.inputs(images[e.bad])
            bad = [i for i, net in enumerate(predictor.model.members) if not torch.isfinite(net(x)).all()]
        if bad:
            raise ValueError(f"{predictor.model.member_label(bad[0])}: {e}") from None
        raise


def _check_members(cards: Sequence[BundleCard], paths: Sequence[Path]) -> None:
    """Members that can be averaged: at least two, none an ensemble, reading films alike, no two the same weights."""
    if len(cards) < 2:
        raise ValueError("an ensemble needs at least two member bundles")
    for card, path in zip(cards, paths):
        if card.model == ENSEMBLE:
            raise ValueError(f"{path}: an ensemble cannot be a member; list its members instead")
    for card, path in zip(cards[1:], paths[1:]):
        for name in SHARED:
            if getattr(card, name) != getattr(cards[0], name):
                raise ValueError(f"{path} has {_shared_value(name, getattr(card, name))}, {paths[0]} has "
                                 f"{_shared_value(name, getattr(cards[0], name))}: "
                                 "members must read films alike (only the input size and normalisation may differ): "
                                 "choose bundles of one task trained on the same data")
    refuse_repeated_models(cards, paths, "the ensemble would claim members it does not have")


def _shared_value(name: str, value: str | int | list[str] | None) -> str:
    """One of the :data:`SHARED` card fields in words, as a refusal of members that read films differently says it:
    Python's own spelling (``source_size None``, ``classes ['NORMAL', 'PNEUMONIA']``) is not a user's, and a card
    without a source size means a step the other member takes is missing."""
    if name == "source_size":
        return (f"source size {value} px (larger films are first brought down to it, as its training files were made)"
                if value is not None else "no source size (no step first brings larger films down to its training "
                                          "files' size)")
    if name == "source_quality":
        return f"source JPEG quality {value}" if value is not None else "no source JPEG quality"
    if isinstance(value, list):
        return f"{name} {', '.join(value)}"
    return f"{'positive class' if name == 'positive' else name.replace('_', ' ')} {value}"


def refuse_repeated_models(cards: Sequence[BundleCard], paths: Sequence[Path | str], why: str) -> None:
    """Refuse bundles whose logits are averaged (members, teachers) when two hold the same weights (one bundle given
    twice, or a copy of it): that model would weigh double in the mean, unseen. ``why``: what else it would do."""
    holder: dict[str, int] = {}  # each weights checksum -> the index of the first bundle holding them
    for i, (card, path) in enumerate(zip(cards, paths)):
        if (digest := card.files.get(WEIGHTS)) and (first := holder.setdefault(digest, i)) != i:
            same = "is given twice" if os.path.realpath(path) == os.path.realpath(paths[first]) else \
                f"holds the same weights as {paths[first]} (a copy)"
            raise ValueError(f"{path} {same}: each model counts once, or {why}")


def _mean_logits(members: Sequence[tuple[str, ort.InferenceSession]], images: np.ndarray) -> np.ndarray:
    """The mean of the members' logits on ``images`` (``members``: each one's :func:`member_label` and session); a
    member whose scores are not finite is named."""
    logits = []
    for label, sess in members:
        with refused_as(label):
            logits.append(session_logits(sess, images))
    return np.mean(logits, axis=0)


def out_of_fold(net: EnsembleNet, cv_dirs: Sequence[Path], card: BundleCard, task: Task,
                member_session: Callable[[int], ort.InferenceSession] | None = None) -> ScoredFilms:
    """Every film of the cv runs scored on the ensemble's input: fold K's validation films by the members that did
    not train on them, fold K of every run (members are run-major, as :func:`cv_members` lists them), their
    calibrated logits averaged as the ensemble averages them, each film's patient unit from the folds' manifests
    (copies of one film under other names are one patient, as in cv's pooled figures), with the files of the folds'
    validation splits left out of them, and why (:func:`~pneumoscan.data.labelled.left_out`, as cv.json has them).
    ``member_session(i)`` scores with member i (default: its FP32 graph; the INT8 step passes its INT8 graphs)."""
    folds = len(net.members) // len(cv_dirs)
    member_session = member_session or (lambda i: module_session(net.members[i], card.size))
    logits, targets, views, records, left = [], [], [], [], []
    # minutes for a five-fold run on a CPU, which had passed with nothing on screen
    with progress_bar() as bar:
        task_bar = bar.add_task(f"Scoring {folds} folds' films out of fold (plain and {len(TTA_VIEWS)} views)",
                                total=folds)
        for k in range(folds):
            films = labelled_films(CvFolder(Path(cv_dirs[0])).split(k), "val", task, card.spec)
            fold, images, y = films.records, films.images, films.targets
            left.append(left_out(films, task))
            members = [(net.member_label(i), member_session(i))
                       for i in range(k, len(net.members), folds)]
            logits.append(_mean_logits(members, images))
            targets.append(y)
            records += fold
            views.append(np.stack([_mean_logits(members, v) for v in tta_views(images)]))
            bar.advance(task_bar)
    return ScoredFilms(np.concatenate(logits), list(np.concatenate(views, axis=1)), np.concatenate(targets),
                       patient_groups(records, cv_dirs[0])[1], left_out=pooled_left_out(left))


def cv_folds(cv: CvFolder) -> list[int]:
    """The fold numbers of a cv run (``cv --out``), refused when it is none or stopped between folds: what ``ensemble
    --cv``, ``export --int8 --cv`` and ``cv --teacher-cv`` take, each fold's bundle checked by the caller. A train
    run or a bundle given for one is named so: it has no fold, which alone reads like a cv run of other folds."""
    folds = cv.folds()
    if folds != list(range(len(folds))) or len(folds) < 2:
        what = ("a bundle" if (cv.root / CARD).is_file() else "a train run's folder" if RunFolder(cv.root).holds_run()
                else None)
        raise ValueError(f"{cv.root} is not a finished cv run: expected fold-0 ... fold-K (at least two)"
                         + (f"; it is {what}, not a folder `pneumoscan cv --out` wrote" if what else ""))
    # cv writes every fold's manifest first: one without its fold is a run stopped between folds, whose missing
    # fold's films would go uncounted in the out-of-fold scores
    if len(splits := cv.splits()) > len(folds):
        raise ValueError(f"{cv.root} is not a finished cv run: {len(folds)} of its {len(splits)} folds were "
                         f"trained (no fold-{len(folds)}); finish the cv run first")
    return folds


def cv_members(cv_dirs: Sequence[Path | str]) -> list[Path]:
    """DIR/fold-K/bundle of each cv run, run by run in fold order; refused when a fold has no bundle or no split,
    when a fold's bundle was trained on other films than its split-fold-K.csv says (its run's split.csv records
    what it trained on: its scores on the fold's films would then not all be out of fold) or on other pixels or
    labels than those films have now (:func:`films_as_trained`), or when the runs were not made on the same folds
    (same data and --seed), whose films then have no out-of-fold score from every run."""
    members: list[Path] = []
    first_folds: list[set[str]] | None = None
    opened: dict = {}  # the folds' one image cache, its pixels' SHA-256 checked once (films_as_trained)
    for cv_dir in map(Path, cv_dirs):
        cv = CvFolder(cv_dir)
        folds = cv_folds(cv)
        held_out = []
        for k in folds:
            run, manifest = cv.fold(k), cv.split(k)
            if not (run.bundle / CARD).exists() or not manifest.exists():
                raise ValueError(f"{cv_dir}: fold {k} has no bundle or no {manifest.name}; finish the cv run first")
            planned = discover(manifest).records
            if moved := split_change(run.split, planned):
                raise ValueError(f"{cv_dir} fold {k}: its bundle was not trained on {manifest.name} ({moved}), so its "
                                 "scores on the fold's films are not all out of fold; train the fold again")
            if not films_as_trained(run.bundle, planned, opened=opened):
                raise ValueError(f"{cv_dir} fold {k}: its films have other pixels or labels than its bundle was "
                                 "trained on (rewritten in place since, or decoded otherwise by this version?), so "
                                 "its scores on them are not the out-of-fold scores of its films; train the fold "
                                 "again")
            held_out.append({os.path.realpath(r.path) for r in planned if r.split == "val"})
        if first_folds is None:
            first_folds = held_out
        elif held_out != first_folds:
            raise ValueError(f"{cv_dir} and {Path(cv_dirs[0])} were not run on the same folds (the same data and "
                             "--seed make the same folds): their films have no out-of-fold score from both")
        members += [cv.fold(k).bundle for k in folds]
    return members


def _member_paths(members: Sequence[Path | str], cv_dirs: Sequence[Path], out: Path) -> list[Path]:
    """The members' bundle folders, absolute (the training-film checks find the members' runs from any folder, as
    they find teachers): those given, or the fold bundles of the cv runs; refused when OUT exists or a bundle is
    given twice."""
    if cv_dirs:
        if members:
            raise ValueError("with cv_dirs (--cv) the members are the runs' fold bundles: give no member bundles")
        members = cv_members(cv_dirs)
    if out.exists() or out.is_symlink():
        raise ValueError(f"out (--out) {out} exists: the ensemble goes to a new folder")
    paths = [Path(os.path.abspath(p)) for p in members]
    real = [os.path.realpath(p) for p in paths]
    if twice := next((p for i, p in enumerate(paths) if real[i] in real[:i]), None):
        raise ValueError(f"{twice} is given twice (the same bundle as another member): each member counts once")
    return paths


def _ensemble_card(loaded: Sequence[tuple[torch.nn.Module, BundleCard]], paths: Sequence[Path],
                   ) -> tuple[EnsembleNet, BundleCard]:
    """The network averaging the members at the largest member's input size, and its card before calibration: the
    first member's task and preprocessing, each member described (architecture, size, normalisation, temperature,
    source, weights checksum, heatmap scale, whether it learnt from teachers), the data fingerprints combined, the
    heatmap scale (:func:`_heatmap_scale`) and the members' training data
    (:func:`~pneumoscan.models.card.pooled_sources`)."""
    cards = [c for _, c in loaded]
    first, size = cards[0], max(c.size for c in cards)
    net = EnsembleNet([Member(m, c.size, c.mean, c.std, c.temperature, size, c.heatmap_scale, str(p))
                       for (m, c), p in zip(loaded, paths)]).eval()
    described = [{"model": c.model, "model_kwargs": c.model_kwargs, "size": c.size, "mean": c.mean, "std": c.std,
                  "temperature": c.temperature, "model_id": c.model_id, "source": str(p), "threshold": c.threshold,
                  "weights": c.files.get(WEIGHTS, ""), "heatmap_scale": c.heatmap_scale,
                  **({"taught": True} if learnt_from_teachers(c) else {})} for c, p in zip(cards, paths)]
    fingerprint = hex_part(bytes_sha256("".join(c.data_fingerprint for c in cards).encode()))
    # the members' data, when every member records its own: a member without one leaves the ensemble's unknown
    checksum = (bytes_sha256("".join(c.data_checksum for c in cards).encode())
                if all(c.data_checksum for c in cards) else "")
    card = BundleCard(
        model=ENSEMBLE, task=first.task, classes=first.classes, positive=first.positive,
        size=size, resize_policy=first.resize_policy, mean=0.0, std=1.0,
        source_size=first.source_size, source_quality=first.source_quality, model_kwargs={"members": described},
        data_fingerprint=fingerprint, data_checksum=checksum, versions=runtime_versions(),
        heatmap_scale=_heatmap_scale(cards, paths), plugins=_plugins(cards), training_data=pooled_sources(cards),
    )  # fmt: skip
    return net, card


def _members_sample(cards: Sequence[BundleCard]) -> dict:
    """What the ensemble's train_config records of its members' samples of patients (train or cv ``--patients``),
    for its card to call it a trial as theirs do: their one :func:`~pneumoscan.models.card.sample_record` when they
    share it (every fold of cv runs on the same folds; members trained alike), each member's under
    :data:`MEMBER_SAMPLES` when they differ (a trial beside a run on all patients, or samples by other seeds), and
    nothing when none was trained on a sample. Recorded rather than refused: members of other seeds are how an
    ensemble is made, and each trial is then named. A member's record holds its own members' and teachers' samples
    (:func:`~pneumoscan.models.card.trained_sample`): an ensemble of students of trials is a trial too."""
    samples = [trained_sample(c) for c in cards]
    if all(s == samples[0] for s in samples):
        return samples[0]
    return {MEMBER_SAMPLES: samples}


def _plugins(cards: Sequence[BundleCard]) -> dict[str, dict[str, str]]:
    """The plugin modules the ensemble records: those registered here that make its task and its members' models
    (:func:`~pneumoscan.models.registry.plugins_made_with`), and each member's own record, which wins for a name it
    records (the module that trained that member)."""
    found = registry.plugins_made_with(cards[0].task, [c.model for c in cards])
    for card in cards:
        for kind, named in card.plugins.items():
            found[kind] = {**found.get(kind, {}), **named}
    return found


def _heatmap_scale(cards: Sequence[BundleCard], paths: Sequence[Path]) -> float | None:
    """The ensemble's heatmap scale: its members' own (:data:`MEMBERS_OWN_SCALE`; each member's map drawn on the
    scale its bundle measured on its own validation films) when every member records one; None, each map then scaled
    to its own film, when one does not (said in the log): a member's map on no scale cannot join the others'."""
    if missing := [i for i, c in enumerate(cards) if c.heatmap_scale is None]:
        others = f" (nor do {len(missing) - 1} other members)" if len(missing) > 1 else ""
        log.info("no heatmap scale recorded: %s records none%s, so each heatmap is scaled to its own film's maximum",
                 member_label(missing[0], len(cards), paths[missing[0]]), others)
        return None
    return MEMBERS_OWN_SCALE


def _held_out_films(paths: Sequence[Path], data: Path | str, split: str | None, task: Task, card: BundleCard,
                    ) -> tuple[tuple[list, np.ndarray, np.ndarray, np.ndarray, list[dict]], list[str], str]:
    """DATA's films that choose the temperature and thresholds (records, images, targets, patient units, and the
    files given that chose nothing, and why: :func:`~pneumoscan.data.labelled.left_out`, recorded with the validation
    figures as a training run's are), the caveats of them (what the check that they are new to every member warned
    of), and what the card says they are (:func:`_given_films`); refused, before anything is written, when a member
    trained on them or they are test films."""
    films = labelled_films(data, split, task, card.spec)
    records, images, targets = films.records, films.images, films.targets
    refuse_test_films(records, data, "temperature and thresholds")
    # said before the ensemble is exported and scored (minutes for ten members)
    if not has_both_classes(binary_targets(targets)):
        raise ValueError(f"the films of {data_label(data, split)} are all one class: the ensemble's temperature and "
                         f"thresholds are chosen on labelled films with and without {card.positive}")
    findings = check_held_out(paths, records, "choose the ensemble's temperature and thresholds", " (or use --cv)",
                              policy=HeldOutPolicy(validation_warning=True, refuse_copies=True),
                              names=[member_label(i, len(paths), p) for i, p in enumerate(paths)])
    # copies of one film in the set are one patient in the threshold's interval; label conflicts are said
    return ((records, images, targets, patient_groups(records, data)[1], left_out(films, task)), findings.caveats,
            _given_films(records, findings))


def _given_films(records: Sequence[Record], findings: HeldOutFindings) -> str:
    """What the card says of the films given with --data: held-out only when the check found them new to every
    member. Films of a member's validation split (its run's split.csv, as the check read it), which chose that
    member's own temperature and threshold, are accepted with a warning, and named so: the figures on them are
    optimistic, not held-out ones."""
    chosen = findings.own_validation
    own = "the members' validation films, which chose their own temperatures and thresholds"
    if chosen == len(records):
        return f"{own}, given to `pneumoscan ensemble`"
    if chosen:
        return f"data given to `pneumoscan ensemble`, {chosen} of its {len(records)} films {own}"
    if findings.caveats or findings.unknown_sources:
        return "data given to `pneumoscan ensemble`, not all shown to be new to its members"
    return "held-out data given to `pneumoscan ensemble`"


def _calibration_name(cv_dirs: Sequence[Path], data: Path | str | None, split: str | None, given: str) -> str:
    """What the card calls the films the temperature and thresholds are chosen on; the cv runs by name (their paths
    are in ensemble_of), DATA with ``given`` (:func:`_given_films`): the policy made of it is shown to the service's
    clients."""
    if cv_dirs:
        return (f"{OUT_OF_FOLD} {', '.join(d.name for d in cv_dirs)} (each film scored by the "
                f"{'member' if len(cv_dirs) == 1 else 'members'} that did not train on it)")
    return f"{data_label(data, split)} ({given})"


def _calibration_scores(tmp: Path, net: EnsembleNet, card: BundleCard, task: Task, cv_dirs: Sequence[Path],
                        held_out: tuple[list, np.ndarray, np.ndarray, np.ndarray, list[dict]] | None, films: str,
                        ) -> ScoredFilms:
    """The films the temperature and thresholds are chosen on (``films``: what they are, in words), scored: the cv
    runs' out-of-fold scores, or the held-out films' (records, images, targets, patient units, what of the files
    given they leave out) scored by the graph just shipped in ``tmp`` (not a second export), those films recorded as
    the calibration films. Refused when the
    members' calibrated, averaged scores rank them no better than chance (:func:`check_better_than_chance`): the
    ensemble would be shipped with a threshold as a working one is."""
    if cv_dirs:
        scored = out_of_fold(net, cv_dirs, card, task)
    else:
        records, images, targets, groups, left = held_out
        record_calibration_films(tmp, records)
        shipped = Predictor(tmp, backend="onnx")
        score = functools.partial(member_named_logits, shipped)
        scored = ScoredFilms(score(images), list(map(score, tta_views(images))), targets, groups, left_out=left)
    check_better_than_chance(softmax(scored.logits), scored.targets, task, "the ensemble's calibrated, averaged scores",
                             films, "check the films' labels and each member's figures on them (`pneumoscan "
                             "evaluate`): an average of members that rank films no better than chance is no better")
    return scored


def build_ensemble(
    members: Sequence[Path | str] | Path | str, out: Path | str, data: Path | str | None = None,
    split: str | None = None, cv_dirs: Sequence[Path | str] | Path | str = (), target_sensitivity: float | None = None,
    youden: bool = False, max_false_positive_rate: float | None = None,
) -> BundleCard:
    """Write the ensemble of ``members`` (or of the fold bundles of one or more cv runs on the same folds) to OUT,
    its temperature and plain/TTA thresholds chosen on labelled DATA none of the members trained on, or on the runs'
    out-of-fold scores. The threshold policy is the first member's unless one is given. Returns the card written."""
    members, cv_dirs = path_list(members), path_list(cv_dirs)  # one path given alone, not its characters
    if (data is None) == (not cv_dirs):
        raise ValueError("give labelled validation data (data, --data) or cv runs (cv_dirs, --cv), not both and not "
                         "neither")
    if split is not None and data is None:  # the out-of-fold scores are every film of the cv runs
        raise ValueError(f"split (--split) {split} chooses films of data (--data); with cv_dirs (--cv) the "
                         "out-of-fold scores of the runs' films are used, whatever their split: drop split (--split)")
    cv_dirs, out = [Path(d) for d in cv_dirs], Path(out)
    paths = _member_paths(members, cv_dirs, out)
    loaded = []
    for i, path in enumerate(paths):  # each member's card and weights (their SHA-256) checked; a refusal names it
        with refused_as(member_label(i, len(paths), path)):
            model, member_card = load_bundle(path)
            check_usable(model, member_card.size)  # NaN weights, named: not the ensemble's export as a whole
            loaded.append((model, member_card))
    cards = [c for _, c in loaded]
    task = card_task(cards[0], paths[0])  # a task not registered here is said as such, before the members are compared
    _check_members(cards, paths)
    if target_sensitivity is None and max_false_positive_rate is None and not youden:
        target_sensitivity, max_false_positive_rate = cards[0].threshold_targets
    net, card = _ensemble_card(loaded, paths)
    # refused before anything is written when a member trained on these films
    held_out, caveats, given = _held_out_films(paths, data, split, task, card) if not cv_dirs else (None, [], "")
    name = _calibration_name(cv_dirs, data, split, given)
    sample = _members_sample(cards)
    card = dataclasses.replace(card, train_config={
        "ensemble_of": [str(p) for p in paths], "calibrated_on": name, "target_sensitivity": target_sensitivity,
        "max_false_positive_rate": max_false_positive_rate,
        "combination": "mean of members' logits / their own temperatures",
        # what the check of the films warned of: MODEL_CARD.md's recipe says it (the validation figures say what of
        # the files given they left out, as a training run's do)
        **({"calibration_caveats": caveats} if caveats else {}), **sample})
    # a film unlike the training films is flagged as the first member that reads the ensemble's input size flags it
    first = next(i for i, c in enumerate(cards) if c.size == card.size)
    with refused_as(member_label(first, len(paths), paths[first])):
        appearance = load_appearance(paths[first], cards[first])
    films = (f"out-of-fold films of {', '.join(d.name for d in cv_dirs)}" if cv_dirs
             else f"films of {data_label(data, split)}")
    score = functools.partial(_calibration_scores, net=net, card=card, task=task, cv_dirs=cv_dirs, held_out=held_out,
                              films=films)
    card, figures, _ = finish_bundle(out, net, card, appearance, score, (target_sensitivity, max_false_positive_rate),
                                     name)
    log.debug("ensemble of %d members -> %s: temperature %.3f, threshold %.4f (TTA %.4f), sensitivity %.3f, "
              "specificity %.3f on %d films", len(paths), out, card.temperature, card.threshold, card.tta_threshold,
              figures["sensitivity"], figures["specificity"], figures["n"])
    return load_card(out)
