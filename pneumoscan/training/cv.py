"""Patient-grouped k-fold cross-validation of a training recipe: k runs, out-of-fold scores, mean and spread.

One validation split of train/ is saturated for pneumonia (AUC ~0.998 leaves nothing to choose between recipes)
and small for etiology; k folds score every film once, by a model that never saw its patient. Each fold is an
ordinary run (``OUT/fold-K``, resumable: a fold whose bundle exists is not trained again, an interrupted one goes
on from its checkpoint, and a fold run of another split or recipe is refused); ``OUT/oof.csv`` holds every film's
out-of-fold probability and ``OUT/cv.json`` the per-fold and summary figures.

Every task is scored as its positive call (AUC, specificity at sensitivity 0.97: pneumonia or not for the
multiclass task). A multiclass task is also scored as its argmax decision, so three-class recipes are compared by
the figure the three-class task is judged on: per fold accuracy, balanced accuracy and macro AUC, and pooled over
the folds the three-class block `evaluate` writes (confusion matrix, CIs, curves); ``oof.csv`` then carries each
class's probability too.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from pneumoscan import __version__
from pneumoscan.core.atomic import write_atomic, write_json
from pneumoscan.core.metrics import binary_metrics, choose_threshold, format_figure, jsonable, roc_auc
from pneumoscan.core.names import path_list, path_text, results_csv
from pneumoscan.core.options import VAL_FRACTION
from pneumoscan.data.labelled import labelled_films, left_out, patient_groups, pooled_left_out
from pneumoscan.data.layouts import Record, write_manifest
from pneumoscan.data.split import patient_folds, sampled_pool
from pneumoscan.data.tasks import Task, binary_targets, get_task, select
from pneumoscan.inference.predict import Predictor
from pneumoscan.models.card import CARD, SAMPLED_FROM, TRAINED_BY, WRITER, films_as_trained, load_card, sample_record
from pneumoscan.models.run_folder import CvFolder, RunFolder
from .config import TrainConfig
from .distill import check_teachers
from .distributed import Dist, is_main_process, setup_distributed
from .engine import resolved_precision
from .ensemble import cv_folds
from .resume import (checkpoint_config, config_changes, load_checkpoint, machine_cache, split_change,
                     teachers_changed, trained_by, trainers)
from .train import absent_classes, check_batches, check_init_held_out, train

log = logging.getLogger(__name__)
OOF_FIELDS = ("path", "label", "subtype", "patient", "fold", "probability")
SENSITIVITY_FLOOR = 0.97  # the clinical operating point the recipes are compared at (issue: spec at sens 0.97)
_COUNTS = ("n", "epochs", "best_epoch")  # each fold's own counts, not figures to summarise over the folds


def fold_figures(y: np.ndarray, scores: np.ndarray, floor: float = SENSITIVITY_FLOOR) -> dict[str, float]:
    """AUC, and the specificity of the most specific threshold that keeps sensitivity >= ``floor`` on these
    scores: a ranking measure at the operating region, not a deployable threshold (it is chosen on the fold)."""
    at_floor = binary_metrics(y, scores, choose_threshold(y, scores, floor))
    return {"auc": roc_auc(y, scores), f"specificity_at_sensitivity_{floor:g}": at_floor["specificity"],
            "n": int(y.size)}


def chosen_epoch(run: RunFolder) -> dict[str, int | float | None]:
    """Which epoch's weights fold ``run``'s bundle holds (``best_epoch``: the best validation AUC, chosen on the fold's
    own films) of how many it trained (``epochs``), and the last epoch's validation AUC (``last_epoch_auc``). Where
    the two epochs differ, the fold's figures are of weights chosen on the films they are measured on, and lean
    optimistic, the more so the more epochs a recipe has to choose from; the last epoch's are not chosen. None where
    the fold's folder does not say: a fold finished before its run recorded its best epoch, a bundle copied in
    without its run's history."""
    aucs = [float(row["val_auc"]) for row in run.epochs()]
    best = json.loads(run.metrics.read_text(encoding="utf-8")).get("best_epoch") if run.metrics.exists() else None
    return {"epochs": len(aucs) or None, "best_epoch": best, "last_epoch_auc": aucs[-1] if aucs else None}


def _chose_earlier(epoch: dict) -> bool:
    """Whether a fold's weights are of an epoch before its last (:func:`chosen_epoch`); False where that is unknown."""
    return None not in (epoch["best_epoch"], epoch["epochs"]) and epoch["best_epoch"] < epoch["epochs"]


def fold_summary(per_fold: list[dict[str, float | None]]) -> dict[str, dict[str, float | int | None]]:
    """Mean, SD, min and max of each per-fold figure (:func:`fold_figures`, a multiclass task's three-class
    figures, the last epoch's AUC) over the folds that define it, and how many those are: a fold without one of the
    classes has no AUC (None or NaN), which must neither end the run after every fold trained nor pass for a figure.
    Each fold's counts (:data:`_COUNTS`) are not summarised."""
    summary = {}
    for k in (k for k in per_fold[0] if k not in _COUNTS):
        values = [float(f[k]) for f in per_fold if f[k] is not None and not math.isnan(f[k])]
        summary[k] = {"mean": float(np.mean(values)) if values else None,
                      "std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
                      "min": min(values, default=None), "max": max(values, default=None), "folds": len(values)}
    return summary


def check_fold_run(run: RunFolder, planned: list[Record], cfg: TrainConfig) -> None:
    """Refuse a fold run, finished or interrupted, that is not this cv's: trained on another split (another --seed or
    --folds, other data), its "out-of-fold" films would include films it trained on; trained by another recipe, its
    figures would be that recipe's. Only the manifest's own path (``split_csv``) may differ, and ``patients``, cv's
    sample, which the fold's run takes as its manifest (its films compared). A fold with neither a bundle nor a
    checkpoint has trained nothing yet."""
    name, finished = run.root.name, (run.bundle / CARD).exists()
    if not finished and not run.checkpoint.exists():
        return
    if moved := split_change(run.split, planned):
        raise ValueError(f"{name} was trained on another split ({moved}); use a new out_dir (--out)")
    # a finished fold's bundle records what made it; an interrupted one's checkpoint, which its --resume compares with
    recorded = (load_card(run.bundle).train_config if finished
                else checkpoint_config(load_checkpoint(run.checkpoint), run.checkpoint))
    if recorded is None:
        raise ValueError(f"{name}'s checkpoint records no settings and there is no config.yaml beside it, so "
                         "nothing shows how it was made; use a new out_dir (--out)")
    if changes := config_changes(recorded, cfg, ignore=("split_csv", "patients")):
        raise ValueError(f"{name} was trained with other settings ({', '.join(changes)}); use a new out_dir (--out)")
    if finished and (why := teachers_changed(recorded)):  # an interrupted fold's --resume checks its own
        raise ValueError(f"{name} was taught by other bundles: {why}; use a new out_dir (--out)")


def check_fold_data(run: RunFolder, planned: list[Record], ctx: Dist, opened: dict | None = None) -> None:
    """Refuse a finished fold whose films are not, pixel for pixel and label for label, those it trained on
    (:func:`films_as_trained`, ``opened`` the caches checked so far): its bundle, made on the old pixels, would be
    scored on the new ones as this cv's figures (an interrupted fold's ``--resume`` refuses them so)."""
    if (run.bundle / CARD).exists() and not films_as_trained(run.bundle, planned, opened,
                                                             functools.partial(machine_cache, ctx=ctx)):
        raise ValueError(f"{run.root.name} was trained on other pixels or labels than these films have now (rewritten "
                         "in place since, or decoded otherwise by this version?): its figures would not be this cv's; "
                         "use a new out_dir (--out)")


def _fold_versions(run: RunFolder, start: Mapping[str, Any] | None) -> list[str | None]:
    """The pneumoscans that train a fold: a finished fold's, those its card records trained its weights (its
    checkpoint's, kept as it finished), or of a card older than that record its writer (none named: none); an
    interrupted fold's, those of its checkpoint's epochs (None: a version before 0.3, which records none) and this
    one, which trains the rest; a fold still to train, those that trained the bundle it starts from (``start``, its
    card's train_config: the recipe's init; None without one), then this one."""
    if (run.bundle / CARD).exists():
        card = load_card(run.bundle)
        return card.train_config.get(TRAINED_BY) or list(filter(None, [card.versions.get(WRITER)]))
    if run.checkpoint.exists():
        return trained_by(load_checkpoint(run.checkpoint))
    return trained_by(start) if start is not None else [__version__]


def warn_fold_versions(runs: Sequence[RunFolder], start: Mapping[str, Any] | None = None) -> None:
    """Warn when the folds are trained by more than one pneumoscan (a cv stopped under one version and resumed under
    another: the finished folds' cards name theirs, an interrupted fold's checkpoint its epochs', a fold still to
    train is this one's), as cv.json pools their figures; not refused, as a version need not change the recipe. A
    card that names no writer is passed over; a checkpoint, or a starting bundle's card, that names none is said to
    be of a version before 0.3, naming which. ``start``: the train_config of the card of the bundle every fold
    starts from (init), whose versions each fold names first: folds that name the same versions are not told as of
    several for them."""
    made_by: dict[str, list[str]] = {}
    seen: set[str | None] = set()
    started = set(trainers(start)) if start is not None else set()
    # what records no version, where one is None: the starting bundle's card, whose versions each fold names first,
    # or else the fold's checkpoint
    unrecorded = "the card of init, the bundle it starts from," if None in started else "its checkpoint"
    for run in runs:
        if versions := _fold_versions(run, start):
            seen.update(v for v in versions if v not in started)
            said = ", then ".join(v or f"a version before 0.3 ({unrecorded} records none)" for v in versions)
            made_by.setdefault(said, []).append(run.root.name)
    if len(seen) > 1 or len(made_by) > 1:
        log.warning("the folds of this cv are trained by more than one pneumoscan (%s), and cv.json pools their "
                    "figures: for figures of one version, finish it with the version that began it, or use a new "
                    "out_dir (--out)", "; ".join(f"{', '.join(names)}: {v}" for v, names in made_by.items()))


def check_fold_classes(plans: Sequence[Sequence[Record]], task: Task) -> None:
    """Refuse folds of which one holds no film of one of the task's classes on a side (the fold itself, or the
    others that train its run), before any fold trains: :func:`~pneumoscan.data.split.patient_folds` deals the
    labels, not a task's classes (an etiology run's few virus patients), and training refused that fold's run only
    after the folds before it had trained, advising a validation fraction that cv does not have."""
    for k, planned in enumerate(plans):
        for side, what in (("val", "validation"), ("train", "training")):
            if missing := absent_classes(select([r for r in planned if r.split == side], task)[1], task):
                raise ValueError(f"fold {k + 1} of {len(plans)} has no {missing[0]} {what} film for the {task.name} "
                                 "task (a patient's films stay in one fold): its run could not be trained and "
                                 f"validated; use fewer folds (--folds) or add {missing[0]} films of other patients")


# what a fold records of how it trained that is no setting (resume.RECORDED), in words: (the folds differ in ...,
# trained by/in X, this cv's ..., what to do)
_MADE = {"processes": ("by different numbers of processes", "by {} process(es)", "this cv has {}",
                       "run it under that number"),
         "resolved_precision": ("in different precisions", "in {}", "this cv trains in {}",
                                "run it where they trained")}


def check_fold_processes(runs: Sequence[RunFolder], here: dict[str, object]) -> None:
    """Refuse folds made by different numbers of processes or in different precisions (``precision: auto`` is bf16
    on CUDA, fp32 on a CPU), or a fold still to train otherwise than the finished ones (``here``: this cv's, under
    the keys of :data:`_MADE`): the global batch, the learning rate and the schedule follow the processes, and the
    arithmetic the precision, so the folds would be different recipes. Folds all trained elsewhere (say by torchrun
    on a GPU machine) may still be scored here. An interrupted fold is checked by its own ``--resume``."""
    finished = [run for run in runs if (run.bundle / CARD).exists()]
    cards = {run.root.name: load_card(run.bundle).train_config for run in finished}
    for key, (differ, made, this, remedy) in _MADE.items():
        made_by = {name: config.get(key) for name, config in cards.items()}
        known = {v for v in made_by.values() if v is not None}  # None: an earlier version's bundle, which records none
        if len(known) > 1:
            raise ValueError(f"the finished folds were trained {differ} ("
                             + ", ".join(f"{name}: {v}" for name, v in made_by.items() if v is not None)
                             + "); use a new out_dir (--out)")
        if known and len(finished) < len(runs) and here[key] not in known:
            raise ValueError(f"the finished folds were trained {made.format(known.pop())} and "
                             f"{this.format(here[key])}, so its folds still to train would be another recipe: "
                             f"{remedy}, or use a new out_dir (--out)")


def fold_config(cfg: TrainConfig, out_dir: Path, k: int, teacher_cv: Sequence[Path | str]) -> TrainConfig:
    """Fold K's recipe: ``cfg`` on OUT/split-fold-K.csv, taught by each teacher cv run's fold-K bundle."""
    for run in teacher_cv:  # every fold's manifest is written before any fold trains: none means fewer folds
        try:
            cv_folds(CvFolder(Path(run)))
        except ValueError as e:
            raise ValueError(f"teacher_cv (--teacher-cv) {e}") from None
        if not CvFolder(Path(run)).split(k).exists():
            raise ValueError(f"teacher cv run {run} was made on other folds (it has no fold {k}): give teacher_cv "
                             "(--teacher-cv) runs made with the same folds (--folds), seed (--seed) and data")
    teachers = [CvFolder(Path(run)).fold(k).bundle for run in teacher_cv]
    for teacher in teachers:
        if not (teacher / CARD).exists():
            raise ValueError(f"teacher cv run {teacher.parents[1]} has no finished fold-{k} bundle: finish it with its "
                             "own cv command first")
    # a sample of patients (cfg.patients) is in the manifest, which the fold's run takes as it is (its card records
    # the sample: cross_validate gives its run the record)
    return dataclasses.replace(cfg, split_csv=str(CvFolder(out_dir).split(k)),
                               teacher=[*cfg.teacher, *map(str, teachers)], patients=None)


def oof_name(path: str) -> str:
    """A film as oof.csv names it: its real path, as text (a results file: UTF-8), the same whatever --out and the
    folder cv ran in or is read from, so that runs on the same folds name the same films."""
    return path_text(os.path.realpath(path))


def cross_validate(data: Path | str, cfg: TrainConfig, folds: int, out_dir: Path | str,
                   teacher_cv: Sequence[Path | str] | Path | str = ()) -> dict:
    """Train ``folds`` runs of ``cfg``, each validated (and its threshold chosen) on one patient-grouped fold of
    everything in DATA but test/; score each fold's films with its own bundle. Returns the cv.json dict.

    ``teacher_cv``: cv runs of the same folds whose fold-K bundles teach fold K's run (:mod:`.distill`); none of
    them trained on fold K, so each film is still scored by models that never saw its patient."""
    out_dir, teacher_cv = Path(out_dir), path_list(teacher_cv)  # one run given alone, not its characters
    cv_folder, task = CvFolder(out_dir), get_task(cfg.task)
    plans, configs, sampled_from = _plan_folds(data, cfg, folds, cv_folder, teacher_cv, task)
    out_dir.mkdir(parents=True, exist_ok=True)  # once nothing is refused: a refused cv leaves no folder behind
    # every fold's manifest before any fold is trained: a run stopped between folds then has a manifest without its
    # fold, which `ensemble --cv` and `export --int8 --cv` refuse (with one manifest a fold, it passed as finished)
    for k, planned in enumerate(plans):
        write_manifest(planned, Path(configs[k].split_csv))
    # each fold's card says cv's sample of patients: its run takes its manifest as it is
    sample = sample_record(cfg.patients, sampled_from, cfg.seed)
    results = [_run_fold(data, k, folds, configs[k], cv_folder.fold(k), cfg.eval_batch_size, task, sample)
               for k in range(folds)]
    if not is_main_process():  # under torchrun, rank 0 alone scores the folds and writes the results
        return {}
    write_atomic(cv_folder.oof, results_csv(OOF_FIELDS + task.class_columns,
                                            [row for fold in results for row in fold.oof_rows]).encode())
    targets, probs = np.concatenate([f.targets for f in results]), np.concatenate([f.probs for f in results])
    # the pooled intervals count patients as evaluate's do: copies of one film under other names are one patient
    units = patient_groups([r for f in results for r in f.val], data)[1]
    pooled = (fold_figures(binary_targets(targets), task.positive_probability(probs))
              | task.extra_metrics(targets, probs, units))
    per_fold = [f.figures for f in results]
    summary = fold_summary(per_fold)
    if earlier := sum(map(_chose_earlier, per_fold)):
        log.warning("%d of %d folds hold the weights of an epoch before their last, chosen on the films they are "
                    "scored on, so their figures lean optimistic: mean AUC over the folds %s, of their last epochs %s "
                    "(last_epoch_auc in %s); compare recipes by the last epochs' figures, or at the same epochs",
                    earlier, folds, format_figure(summary["auc"]["mean"], 4),
                    format_figure(summary["last_epoch_auc"]["mean"], 4), path_text(cv_folder.summary))
    result = {
        "task": cfg.task, "model": cfg.model, "folds": folds, "seed": cfg.seed, "per_fold": per_fold,
        "summary": summary, "pooled_out_of_fold": pooled, "config": dataclasses.asdict(cfg),
        # the files of the folds' validation splits the figures are not of, and why, as evaluate records them
        "left_out": pooled_left_out(f.left_out for f in results),
        "teacher_cv": [os.path.abspath(run) for run in teacher_cv],
        SAMPLED_FROM: sampled_from,  # config's patients were drawn from this many (null: all of them were used)
    }  # fmt: skip
    write_json(cv_folder.summary, jsonable(result))
    return result


def _plan_folds(data: Path | str, cfg: TrainConfig, folds: int, cv_folder: CvFolder,
                teacher_cv: Sequence[Path | str],
                task: Task) -> tuple[list[list[Record]], list[TrainConfig], int | None]:
    """(each fold's films, each marked "val" in its own fold and "train" in the others; each fold's recipe; the
    patients a ``cfg.patients`` sample of the films was drawn from, None without one), once
    every fold is checked: everything a fold's run would refuse, and any earlier run in OUT that is not this cv's,
    is refused before any fold is trained or rewritten, so that a refusal leaves OUT as it was."""
    if cfg.split_csv:  # each fold's split is cv's own (OUT/split-fold-K.csv), and cv.json would record this one
        raise ValueError(f"cv makes each fold's split itself: split_csv {cfg.split_csv} would not be read; give the "
                         "films to fold as DATA (a manifest is taken)")
    if cfg.val_fraction != VAL_FRACTION:
        raise ValueError(f"cv validates each run on one fold of folds (--folds): val_fraction {cfg.val_fraction:g} "
                         "would not be used; leave it out")
    if beyond := [k for k in {*cv_folder.splits(), *cv_folder.folds()} if k >= folds]:
        # left there, ensemble --cv and export --int8 --cv would take this cv for one stopped between folds, for good
        raise ValueError(f"{cv_folder.root} holds fold {max(beyond)} of a cv of more folds than folds (--folds) "
                         f"{folds} (split-fold-{max(beyond)}.csv or fold-{max(beyond)}/): use a new out_dir (--out)")
    pool, duplicates, sampled_from = sampled_pool(data, cfg.patients, cfg.seed)
    fold_of = patient_folds(pool, folds, cfg.seed, duplicates)
    plans = [[dataclasses.replace(r, split="val" if f == k else "train") for r, f in zip(pool, fold_of)]
             for k in range(folds)]  # fmt: skip
    configs = [fold_config(cfg, cv_folder.root, k, teacher_cv) for k in range(folds)]
    check_fold_classes(plans, task)
    for k, planned in enumerate(plans):
        configs[k].check_distill_weight()
        check_teachers(configs[k], planned, task)
        check_init_held_out(configs[k], planned)  # a fold whose films the starting bundle learnt, before any trains
        check_fold_run(cv_folder.fold(k), planned, configs[k])
    ctx = setup_distributed()
    here = {"processes": ctx.world, "resolved_precision": resolved_precision(ctx.device, cfg.precision)}
    check_fold_processes([cv_folder.fold(k) for k in range(folds)], here)
    warn_fold_versions([cv_folder.fold(k) for k in range(folds)],
                       load_card(cfg.init).train_config if cfg.init is not None else None)
    for k, planned in enumerate(plans):  # its films as listed: a fold's run refuses again should some be unreadable
        check_batches(len(select([r for r in planned if r.split == "train"], task)[0]), configs[k], ctx,
                      f"fold {k + 1} of {folds}: ")
    opened: dict = {}  # the folds hold the same films: their cache's pixels are checked once
    for k, planned in enumerate(plans):  # last: it may decode every film, where the checks above read headers
        check_fold_data(cv_folder.fold(k), planned, ctx, opened)
    return plans, configs, sampled_from


class _FoldResult(NamedTuple):
    """What one fold adds to the pooled figures, oof.csv and cv.json."""

    val: list[Record]  # its validation films, in the order of the rows below
    targets: np.ndarray
    probs: np.ndarray  # each film's class probabilities
    # :func:`fold_figures`, a multiclass task's three-class decision figures, and :func:`chosen_epoch`'s
    figures: dict[str, float | int | None]
    oof_rows: list[dict]
    left_out: list[dict]  # the files of its validation split the figures leave out, and why (:func:`left_out`)


def _run_fold(data: Path | str, k: int, folds: int, config: TrainConfig, run: RunFolder, batch_size: int,
              task: Task, sample: dict[str, int | None]) -> _FoldResult | None:
    """Fold K trained (unless its bundle is finished; an interrupted one goes on from its last finished epoch, one
    never started starts from scratch; ``sample``: the record of cv's sample of patients, which its card says), then
    its validation films scored by its own bundle through ONNX Runtime, as a user's predictions would be."""
    manifest = Path(config.split_csv)
    bundle = run.bundle
    if (bundle / CARD).exists():  # finalize renames a bundle into place whole: a finished fold
        log.info("fold %d/%d: %s exists, not trained again", k + 1, folds, bundle)
    else:
        log.info("fold %d/%d: training %s", k + 1, folds, run.root)
        # resumed where an interrupted fold left a checkpoint; a fresh fold is no resume, and --resume's "no
        # checkpoint ...: starting from scratch" would be noise there
        try:
            train(data, config, run.root, resume=run.checkpoint.exists(), sample=sample)
        except ValueError as e:  # the run's reason names no fold (its folder keeps it: RUN/refused.txt)
            raise ValueError(f"fold {k + 1} of {folds}: {e}") from e
    if not is_main_process():  # every process trains the fold; rank 0 alone scores it (None elsewhere)
        return None
    predictor = Predictor(bundle, batch_size, backend="onnx")
    films = labelled_films(manifest, "val", task, predictor.card.spec)
    val, images, targets = films.records, films.images, films.targets
    probs = predictor.probabilities(images)
    scores = predictor.positive_probability(probs)
    figures = fold_figures(binary_targets(targets), scores)
    if decision := task.extra_metrics(targets, probs).get("multiclass"):
        figures |= {key: decision[key] for key in ("accuracy", "balanced_accuracy", "macro_auc")}
    figures |= (epoch := chosen_epoch(run))
    oof_rows = [{"path": oof_name(r.path), "label": r.label, "subtype": r.subtype, "patient": r.patient,
                 "fold": k, "probability": float(p)} | predictor.class_fields(row)
                for r, p, row in zip(val, scores, probs, strict=True)]  # fmt: skip
    chose = (f" (epoch {epoch['best_epoch']} of {epoch['epochs']}, chosen on these films; the last epoch's AUC "
             f"{format_figure(epoch['last_epoch_auc'], 4)})" if _chose_earlier(epoch) else "")
    log.info("fold %d/%d: AUC %s, specificity at sensitivity %g: %s%s", k + 1, folds, format_figure(figures["auc"], 4),
             SENSITIVITY_FLOOR, format_figure(figures[f"specificity_at_sensitivity_{SENSITIVITY_FLOOR:g}"]), chose)
    return _FoldResult(val, targets, probs, figures, oof_rows, left_out(films, task))
