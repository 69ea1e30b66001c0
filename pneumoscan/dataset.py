"""Tasks (which records, which classes) and a torch Dataset over the preprocessed image cache."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from .data import Record


@dataclass(frozen=True)
class Task:
    """A classification task: its classes (index = target), and the class of a record (None: not in the task)."""

    name: str
    classes: tuple[str, ...]
    positive: str  # the class whose probability is thresholded and reported (sensitivity is about this class)
    target: Callable[[Record], int | None]


def _pneumonia(r: Record) -> int:
    return int(r.label == "PNEUMONIA")


def _etiology(r: Record) -> int | None:
    return {"bacteria": 0, "virus": 1}.get(r.subtype) if r.label == "PNEUMONIA" else None


def _multiclass(r: Record) -> int | None:
    return {"normal": 0, "bacteria": 1, "virus": 2}.get(r.subtype)


TASKS = {
    "pneumonia": Task("pneumonia", ("NORMAL", "PNEUMONIA"), "PNEUMONIA", _pneumonia),
    "etiology": Task("etiology", ("bacteria", "virus"), "virus", _etiology),
    # Thresholded as normal vs pneumonia: P(pneumonia) = 1 - P(normal).
    "multiclass": Task("multiclass", ("normal", "bacteria", "virus"), "pneumonia", _multiclass),
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose from {sorted(TASKS)}")
    return TASKS[name]


def select(records: Sequence[Record], task: Task) -> tuple[list[Record], np.ndarray]:
    """The records that belong to the task and their integer targets."""
    kept = [(r, t) for r in records if (t := task.target(r)) is not None]
    return [r for r, _ in kept], np.array([t for _, t in kept], dtype=np.int64)


def positive_probability(probs: np.ndarray, task: Task) -> np.ndarray:
    """P(positive class) from class probabilities: the last class for binary tasks, 1 - P(normal) for multiclass."""
    return 1.0 - probs[:, 0] if len(task.classes) > 2 else probs[:, 1]


def binary_targets(targets: np.ndarray) -> np.ndarray:
    """0/1 targets matching :func:`positive_probability`: class 0 (normal, or bacteria for etiology) is negative,
    any other class positive, whatever the task."""
    return (targets > 0).astype(np.int64)


class CachedImages(Dataset):
    """Rows of the uint8 cache (N, S, S) with targets; the transform turns a (1, S, S) uint8 tensor into model input."""

    def __init__(self, images: np.ndarray, rows: np.ndarray, targets: np.ndarray, transform: Callable) -> None:
        self.images, self.rows, self.targets, self.transform = images, rows, targets, transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        pixels = torch.from_numpy(np.array(self.images[self.rows[i]]))[None]
        return self.transform(pixels), int(self.targets[i])
