"""Augmentation and normalisation as plain torchvision.transforms.v2 pipelines on cached uint8 images.

The options follow Keras' ImageDataGenerator where the reference projects used it: ``zoom_range`` zooms in and
out, ``fill_mode`` fills the border as constant, nearest or reflect, and flips are opt-in switches.

Horizontal flips are off by default: a chest film has a side (heart on the left, stomach bubble, the L/R marker),
and a flipped film is a different, rarer anatomy (situs inversus) rather than a harmless variant.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import torch
from torch.utils.data import default_collate

from .augment import NOISE_LEVELS, Augment

# torchvision is imported by the functions that build a pipeline: its import (about 3 s of CPU, most of it torch's
# compiler, which its ops load) is training's, not predict's to_input's nor that of a script's imports in the cache's
# workers
if TYPE_CHECKING:
    from torchvision.transforms import v2

_PAD_MODE = {"nearest": "edge", "reflect": "reflect"}


def add_grain(pixels: torch.Tensor, sigma: float) -> torch.Tensor:
    """uint8 pixels plus Gaussian noise of ``sigma`` (a fraction of the grey range), rounded to the nearest grey
    level. torchvision's GaussianNoise truncates a uint8 result towards zero, which weakened every level (1 % acted
    like 0.86 %) and left about a third of the pixels unchanged at the faintest."""
    noisy = pixels.float() + torch.randn(pixels.shape) * (sigma * 255.0)
    return noisy.round_().clamp_(0, 255).to(torch.uint8)


def random_gamma(pixels: torch.Tensor, limit: float) -> torch.Tensor:
    """uint8 pixels with a gamma drawn log-uniformly from [1 / (1 + limit), 1 + limit]: as often darker as
    brighter mid-tones, the ends of the grey range kept (torchvision has no random gamma transform)."""
    from torchvision.transforms import v2

    log_gamma = (torch.rand(()) * 2.0 - 1.0) * math.log1p(limit)
    return v2.functional.adjust_gamma(pixels, math.exp(float(log_gamma)))


def to_input(pixels: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """uint8 pixels -> the model's float input. The one formula used by training, validation, predict and export:
    the threshold is one of the validation scores, so every path must compute it bit for bit alike."""
    return (pixels.float() / 255.0 - mean) / std


def normalize(mean: float, std: float) -> Callable[[torch.Tensor], torch.Tensor]:
    return partial(to_input, mean=mean, std=std)


def _margin(size: int, augment: Augment) -> int:
    """Pixels of border the affine step can reach outside a size x size film: how far along an axis an output
    corner, moved by the largest shift, maps back, grown by the largest zoom-out, rotation (at most cos + sin of the
    angle) and shear, and a pixel for the interpolation's neighbour. torchvision maps an output pixel back through
    the shift first, so the zoom-out grows the shift too: added after it, the margin fell short (69 black pixels at
    cnn5's extremes, 1 draw in 1,000 of its recipe). Padding this much first (edge or mirror) lets torchvision's
    affine, which only fills with a constant, fill the Keras ways; a tight margin keeps the padded image, and so
    the cost, small."""
    turn = math.radians(min(abs(augment.rotation), 45.0))
    corner = (size / 2 + augment.shift * size + 1) / (1.0 - augment.zoom_range) * (math.cos(turn) + math.sin(turn))
    corner *= 1 + math.tan(math.radians(abs(augment.shear)))
    return max(0, math.ceil(corner - size / 2))


def _affine(size: int, augment: Augment) -> list[v2.Transform]:
    """Random rotation, shift, shear and Keras zoom in one affine step, filled per ``augment.fill_mode``."""
    from torchvision.transforms import v2

    scale = (1.0 - augment.zoom_range, 1.0 + augment.zoom_range) if augment.zoom_range else None
    if augment.fill_mode == "constant":
        return [v2.RandomAffine(degrees=augment.rotation, translate=(augment.shift, augment.shift), scale=scale,
                                shear=augment.shear)]  # fmt: skip
    margin, side, pads = _margin(size, augment), size, []
    while margin > 0:  # a mirror reaches at most one image width (less one pixel): mirror the mirrored image again
        step = margin if augment.fill_mode == "nearest" else min(margin, side - 1)
        pads.append(v2.Pad(step, padding_mode=_PAD_MODE[augment.fill_mode]))
        margin, side = margin - step, side + 2 * step
    shift = augment.shift * size / side  # torchvision's shift is a fraction of the padded side
    return [
        *pads,
        v2.RandomAffine(degrees=augment.rotation, translate=(shift, shift), scale=scale, shear=augment.shear),
        v2.CenterCrop(size),
    ]


def train_transform(size: int, mean: float, std: float, augment: Augment = Augment()) -> v2.Compose:
    """Random zoom, shift, rotation, shear, brightness/contrast, gamma, blur, noise and the flips asked for; the
    output stays size x size. A range of zero adds no step, so ``Augment.off()`` leaves only the normalisation."""
    from torchvision.transforms import v2

    steps: list[v2.Transform] = []
    if augment.zoom:
        steps.append(v2.RandomResizedCrop(size, scale=(1.0 - augment.zoom, 1.0), ratio=(0.9, 1.1), antialias=True))
    if augment.geometric:
        steps += _affine(size, augment)
    if augment.brightness or augment.contrast:
        steps.append(v2.ColorJitter(brightness=augment.brightness, contrast=augment.contrast))
    if augment.gamma:
        steps.append(partial(random_gamma, limit=augment.gamma))
    if augment.blur:  # a kernel of 3 sigma either side; the sigma is drawn per image
        steps.append(v2.RandomApply([v2.GaussianBlur(2 * math.ceil(3 * augment.blur) + 1, (0.1, augment.blur))], p=0.5))
    if augment.noise:
        levels = [partial(add_grain, sigma=augment.noise * k) for k in NOISE_LEVELS]
        steps.append(v2.RandomApply([v2.RandomChoice(levels)], p=0.5))
    if augment.hflip:
        steps.append(v2.RandomHorizontalFlip())
    if augment.vflip:
        steps.append(v2.RandomVerticalFlip())
    return v2.Compose([*steps, normalize(mean, std)])


def _mixed(batch: list, mix: v2.Transform) -> tuple[torch.Tensor, torch.Tensor]:
    return mix(*default_collate(batch))


def batch_mixing(augment: Augment, num_classes: int) -> Callable[[list], tuple[torch.Tensor, torch.Tensor]] | None:
    """A DataLoader ``collate_fn`` that mixes each training batch per ``augment.mixup``/``augment.cutmix`` and
    returns class-probability targets, or None when both are off (hard targets, the default collate)."""
    from torchvision.transforms import v2

    # float: torchvision draws from Beta(alpha, alpha) in the alpha's dtype, and an integer alpha (mixup: 1) failed
    # in the first batch, after all the preparation
    mixes = [cls(alpha=float(alpha), num_classes=num_classes)
             for cls, alpha in ((v2.MixUp, augment.mixup), (v2.CutMix, augment.cutmix)) if alpha]  # fmt: skip
    if not mixes:
        return None
    return partial(_mixed, mix=mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes))
