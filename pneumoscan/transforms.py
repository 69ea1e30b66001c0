"""Augmentation and normalisation as plain torchvision.transforms.v2 pipelines on cached uint8 images.

Horizontal flips are off by default: a chest film has a side (heart on the left, stomach bubble, the L/R marker),
and a flipped film is a different, rarer anatomy (situs inversus) rather than a harmless variant.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torchvision.transforms import v2

NOISE_LEVELS = (0.25, 0.5, 0.75, 1.0)  # fractions of Augment.noise


@dataclass(frozen=True)
class Augment:
    """Ranges of the random changes applied to each training image (the reference projects' set, made explicit)."""

    zoom: float = 0.15  # random resized crop keeps between 1 - zoom and 1 of the area
    shift: float = 0.08  # fraction of the side
    rotation: float = 10.0  # degrees either way
    shear: float = 5.0  # degrees
    brightness: float = 0.2
    contrast: float = 0.2
    # Largest Gaussian noise sigma (fraction of the grey range); half the images get one of NOISE_LEVELS of it, so
    # the model meets faint and strong grain alike. Without it grain read as pneumonia: sigma 10/255 took the demo
    # model's validation specificity from 0.990 to 0.554 (benchmarks/bench_shift.py). 0 turns it off.
    noise: float = 0.04
    hflip: bool = False


def add_grain(pixels: torch.Tensor, sigma: float) -> torch.Tensor:
    """uint8 pixels plus Gaussian noise of ``sigma`` (a fraction of the grey range), rounded to the nearest grey
    level. torchvision's GaussianNoise truncates a uint8 result towards zero, which weakened every level (1 % acted
    like 0.86 %) and left about a third of the pixels unchanged at the faintest."""
    noisy = pixels.float() + torch.randn(pixels.shape) * (sigma * 255.0)
    return noisy.round_().clamp_(0, 255).to(torch.uint8)


def to_input(pixels: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """uint8 pixels -> the model's float input. The one formula used by training, validation, predict and export:
    the threshold is one of the validation scores, so every path must compute it bit for bit alike."""
    return (pixels.float() / 255.0 - mean) / std


def normalize(mean: float, std: float) -> Callable[[torch.Tensor], torch.Tensor]:
    return partial(to_input, mean=mean, std=std)


def train_transform(size: int, mean: float, std: float, augment: Augment = Augment()) -> v2.Compose:
    """Random zoom, shift, rotation, shear, brightness/contrast and noise; the output stays size x size."""
    steps: list[v2.Transform] = [
        v2.RandomResizedCrop(size, scale=(1.0 - augment.zoom, 1.0), ratio=(0.9, 1.1), antialias=True),
        v2.RandomAffine(degrees=augment.rotation, translate=(augment.shift, augment.shift), shear=augment.shear),
        v2.ColorJitter(brightness=augment.brightness, contrast=augment.contrast),
    ]
    if augment.noise:
        levels = [partial(add_grain, sigma=augment.noise * k) for k in NOISE_LEVELS]
        steps.append(v2.RandomApply([v2.RandomChoice(levels)], p=0.5))
    if augment.hflip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose([*steps, normalize(mean, std)])
