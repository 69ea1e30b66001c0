"""Inference from a bundle: preprocessed uint8 images in, calibrated class probabilities out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .bundle import load_bundle
from .metrics import softmax


class Predictor:
    """A bundle's model with its preprocessing and calibration, ready for batches of cached images."""

    def __init__(self, bundle: Path | str, batch_size: int = 64) -> None:
        self.model, self.card = load_bundle(bundle)
        self.batch_size = batch_size

    def inputs(self, images: np.ndarray) -> torch.Tensor:
        """uint8 (N, S, S) -> normalised float (N, 1, S, S)."""
        x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0).unsqueeze(1)
        return (x - self.card.mean) / self.card.std

    @torch.inference_mode()
    def logits(self, images: np.ndarray) -> np.ndarray:
        out = [self.model(self.inputs(images[i : i + self.batch_size])) for i in range(0, len(images), self.batch_size)]
        return torch.cat(out).numpy() if out else np.zeros((0, len(self.card.classes)), np.float32)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Temperature-calibrated class probabilities (N, C)."""
        return softmax(self.logits(images), self.card.temperature)
