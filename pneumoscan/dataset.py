"""A torch Dataset over the preprocessed image cache; the tasks themselves live in :mod:`.tasks` (re-exported
here for the callers that import them from this module)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from .tasks import Task, binary_targets, get_task, positive_probability, select

__all__ = ["CachedImages", "Task", "binary_targets", "get_task", "positive_probability", "select"]


class CachedImages(Dataset):
    """Rows of the uint8 cache (N, S, S) with targets; the transform turns a (1, S, S) uint8 tensor into model input."""

    def __init__(self, images: np.ndarray, rows: np.ndarray, targets: np.ndarray, transform: Callable) -> None:
        self.images, self.rows, self.targets, self.transform = images, rows, targets, transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        pixels = torch.from_numpy(np.array(self.images[self.rows[i]]))[None]
        return self.transform(pixels), int(self.targets[i])
