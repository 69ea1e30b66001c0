"""A torch Dataset over the preprocessed image cache (the tasks that give its targets live in :mod:`.tasks`)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset


class CachedImages(Dataset):
    """Rows of the uint8 cache (N, S, S) with targets: class indices (N,), or class probabilities (N, C) for a
    distilled model's training films. The transform turns a (1, S, S) uint8 tensor into model input."""

    def __init__(self, images: np.ndarray, rows: np.ndarray, targets: np.ndarray, transform: Callable) -> None:
        self.images, self.rows, self.targets, self.transform = images, rows, targets, transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int | torch.Tensor]:
        pixels = torch.from_numpy(np.array(self.images[self.rows[i]]))[None]
        target = self.targets[i]
        return self.transform(pixels), int(target) if np.ndim(target) == 0 else torch.from_numpy(target)
