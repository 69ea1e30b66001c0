"""Evaluate a bundle on labelled images: metrics at the bundle's threshold and at 0.5, CIs, curves, report."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .cache import cache_dataset
from .dataset import Task, binary_targets, get_task, positive_probability, select
from .decode import PreprocessSpec
from .metrics import evaluate_binary, evaluate_multiclass
from .predict import TTA_VIEWS, Predictor
from .report import write_report


def evaluate_probabilities(probs: np.ndarray, targets: np.ndarray, task: Task, threshold: float) -> dict:
    """Binary metrics for the task's positive class; multiclass tasks add a per-class block under ``multiclass``."""
    y, prob = binary_targets(targets), positive_probability(probs, task)
    metrics = evaluate_binary(y, prob, threshold, class_names=(task.classes[0], task.positive))
    metrics["positive_class"] = task.positive
    if len(task.classes) > 2:
        metrics["multiclass"] = evaluate_multiclass(targets, probs, task.classes)
    return metrics


def labelled_images(
    data: Path | str, split: str | None, task: Task, spec: PreprocessSpec
) -> tuple[np.ndarray, np.ndarray, list[dict[str, str]]]:
    """The preprocessed uint8 images (N, S, S) of DATA that belong to the task, their targets, and the files that
    could not be read. With a dataset root, ``split`` picks train/val/test."""
    records, cache = cache_dataset(data, spec, split, progress=True)
    readable = set(cache.paths)
    records, targets = select([r for r in records if r.path in readable], task)
    return cache.images[cache.rows([r.path for r in records])], targets, cache.errors


def evaluate(bundle: Path | str, data: Path | str, split: str | None = None, out_dir: Path | str | None = None,
             tta: bool = False) -> dict:
    """Score every image of DATA (a dataset root, a NORMAL/PNEUMONIA folder or a manifest) that belongs to the
    bundle's task; with a dataset root, ``split`` picks train/val/test. With ``tta``, scores average the test-time
    views and are read at the bundle's TTA threshold, as ``predict --tta`` does. Writes metrics.json and report.html."""
    predictor = Predictor(bundle)
    card = predictor.card
    threshold = predictor.threshold(tta)
    task = get_task(card.task)
    images, targets, errors = labelled_images(data, split, task, card.spec)
    probs = predictor.probabilities(images, tta=tta)
    metrics = evaluate_probabilities(probs, targets, task, threshold)
    metrics["unreadable"] = errors
    if out_dir is not None:
        mode = f"{len(TTA_VIEWS)}-view test-time augmentation" if tta else "plain"
        write_report(metrics, Path(out_dir), f"{card.model} · {card.task} · {Path(data).name}" + (f"/{split}" if split else ""), extra={
            "bundle": str(bundle), "model id": card.model_id, "data": str(data), "images": len(targets),
            "unreadable": len(errors), "scores": mode, "threshold": f"{threshold:.4f} ({card.threshold_policy})",
            "temperature": f"{card.temperature:.3f}", "package version": card.package_version,
        })
    return metrics
