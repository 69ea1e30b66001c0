"""Patient-grouped k-fold cross-validation of a training recipe: k runs, out-of-fold scores, mean and spread.

One validation split of train/ is saturated for pneumonia (AUC ~0.998 leaves nothing to choose between recipes)
and small for etiology; k folds score every film once, by a model that never saw its patient. Each fold is an
ordinary run (``OUT/fold-K``, resumable: a fold whose bundle exists is not trained again); ``OUT/oof.csv``
holds every film's out-of-fold probability and ``OUT/cv.json`` the per-fold and summary figures.

Every task is scored as its positive call (AUC, specificity at sensitivity 0.97: pneumonia or not for the
multiclass task). A multiclass task is also scored as its argmax decision, so three-class recipes are compared by
the figure the three-class task is judged on: per fold accuracy, balanced accuracy and macro AUC, and pooled over
the folds the three-class block `evaluate` writes (confusion matrix, CIs, curves); ``oof.csv`` then carries each
class's probability too.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
from pathlib import Path

import numpy as np

from pneumoscan.core.metrics import binary_metrics, choose_threshold, jsonable, roc_auc
from pneumoscan.data.layouts import discover, write_manifest
from pneumoscan.data.split import patient_folds, split_pool
from pneumoscan.data.tasks import binary_targets, get_task, select
from pneumoscan.evaluation.evaluate import labelled_images
from pneumoscan.inference.predict import Predictor
from .train import TrainConfig, train

log = logging.getLogger(__name__)
OOF_FIELDS = ("path", "label", "subtype", "patient", "fold", "probability")
SENSITIVITY_FLOOR = 0.97  # the clinical operating point the recipes are compared at (issue: spec at sens 0.97)


def fold_figures(y: np.ndarray, scores: np.ndarray, floor: float = SENSITIVITY_FLOOR) -> dict[str, float]:
    """AUC, and the specificity of the most specific threshold that keeps sensitivity >= ``floor`` on these
    scores: a ranking measure at the operating region, not a deployable threshold (it is chosen on the fold)."""
    at_floor = binary_metrics(y, scores, choose_threshold(y, scores, floor))
    return {"auc": roc_auc(y, scores), f"specificity_at_sensitivity_{floor:g}": at_floor["specificity"], "n": int(y.size)}


def fold_summary(per_fold: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean, SD, min and max over the folds of each per-fold figure (:func:`fold_figures`, and a multiclass
    task's three-class figures)."""
    names = [k for k in per_fold[0] if k != "n"]
    return {k: {"mean": float(np.mean([f[k] for f in per_fold])), "std": float(np.std([f[k] for f in per_fold], ddof=1)),
                "min": float(min(f[k] for f in per_fold)), "max": float(max(f[k] for f in per_fold))} for k in names}


def cross_validate(data: Path | str, cfg: TrainConfig, folds: int, out_dir: Path | str) -> dict:
    """Train ``folds`` runs of ``cfg``, each validated (and its threshold chosen) on one patient-grouped fold of
    everything in DATA but test/; score each fold's films with its own bundle. Returns the cv.json dict."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    task = get_task(cfg.task)
    pool, duplicates = split_pool(data)
    fold_of = patient_folds(pool, folds, cfg.seed, duplicates)
    class_columns = tuple(f"probability_{c}" for c in task.classes) if task.multiclass else ()
    per_fold, oof_rows, all_targets, all_probs = [], [], [], []
    for k in range(folds):
        run = out_dir / f"fold-{k}"
        manifest = out_dir / f"split-fold-{k}.csv"
        write_manifest([dataclasses.replace(r, split="val" if f == k else "train") for r, f in zip(pool, fold_of)], manifest)
        bundle = run / "bundle"
        if (bundle / "bundle.json").exists():
            log.info("fold %d/%d: %s exists, not trained again", k + 1, folds, bundle)
        else:
            log.info("fold %d/%d: training %s", k + 1, folds, run)
            train(data, dataclasses.replace(cfg, split_csv=str(manifest)), run)
        predictor = Predictor(bundle, cfg.eval_batch_size, backend="onnx")
        images, targets, errors = labelled_images(manifest, "val", task, predictor.card.spec)
        probs = predictor.probabilities(images)
        scores = predictor.positive(probs)
        figures = fold_figures(binary_targets(targets), scores)
        if decision := task.extra_metrics(targets, probs).get("multiclass"):
            figures |= {k: decision[k] for k in ("accuracy", "balanced_accuracy", "macro_auc")}
        per_fold.append(figures)
        all_targets.append(targets)
        all_probs.append(probs)
        unreadable = {e["path"] for e in errors}
        val, _ = select([r for r in discover(manifest).split("val") if r.path not in unreadable], task)
        oof_rows += [{"path": r.path, "label": r.label, "subtype": r.subtype, "patient": r.patient, "fold": k,
                      "probability": float(p)} | dict(zip(class_columns, map(float, row)))
                     for r, p, row in zip(val, scores, probs, strict=True)]
        log.info("fold %d/%d: AUC %.4f, specificity at sensitivity %g: %.3f", k + 1, folds, per_fold[-1]["auc"],
                 SENSITIVITY_FLOOR, per_fold[-1][f"specificity_at_sensitivity_{SENSITIVITY_FLOOR:g}"])
    with (out_dir / "oof.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, OOF_FIELDS + class_columns)
        writer.writeheader()
        writer.writerows(oof_rows)
    targets, probs = np.concatenate(all_targets), np.concatenate(all_probs)
    pooled = fold_figures(binary_targets(targets), task.positive_probability(probs)) | task.extra_metrics(targets, probs)
    result = {
        "task": cfg.task, "model": cfg.model, "folds": folds, "seed": cfg.seed, "per_fold": per_fold,
        "summary": fold_summary(per_fold), "pooled_out_of_fold": pooled, "config": dataclasses.asdict(cfg),
    }  # fmt: skip
    (out_dir / "cv.json").write_text(json.dumps(jsonable(result), indent=2))
    return result
