"""Augmentation and normalisation as plain torchvision.transforms.v2 pipelines on cached uint8 images.

The options follow Keras' ImageDataGenerator where the reference projects used it: ``zoom_range`` zooms in and
out, ``fill_mode`` fills the border as constant, nearest or reflect, and flips are opt-in switches.

Horizontal flips are off by default: a chest film has a side (heart on the left, stomach bubble, the L/R marker),
and a flipped film is a different, rarer anatomy (situs inversus) rather than a harmless variant.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch.utils.data import default_collate
from torchvision.transforms import v2

from pneumoscan.core.options import FILL_MODES, look_up_option

NOISE_LEVELS = (0.25, 0.5, 0.75, 1.0)  # fractions of Augment.noise


_PAD_MODE = {"nearest": "edge", "reflect": "reflect"}


@dataclass(frozen=True)
class Augment:
    """Ranges of the random changes applied to each training image (the reference projects' set, made explicit)."""

    zoom: float = 0.15  # random resized crop keeps between 1 - zoom and 1 of the area (zoom in only)
    # Keras' zoom_range: the scale is drawn from [1 - zoom_range, 1 + zoom_range], zooming in AND out; zooming out
    # leaves a border that fill_mode fills
    zoom_range: float = 0.0
    shift: float = 0.08  # fraction of the side
    rotation: float = 10.0  # degrees either way
    shear: float = 5.0  # degrees
    brightness: float = 0.2
    contrast: float = 0.2
    # Largest Gaussian noise sigma (fraction of the grey range); half the images get one of NOISE_LEVELS of it, so
    # the model meets faint and strong grain alike. Without it grain read as pneumonia: sigma 10/255 took the demo
    # model's validation specificity from 0.990 to 0.554 (benchmarks/bench_shift.py). 0 turns it off.
    noise: float = 0.04
    # Exposure and sharpness of other machines: gamma is drawn log-uniformly from [1 / (1 + gamma), 1 + gamma],
    # and half the images get a Gaussian blur of sigma up to ``blur`` pixels. 0 turns either off (the default).
    gamma: float = 0.0
    blur: float = 0.0
    hflip: bool = False
    vflip: bool = False  # upside down: as with hflip, a film the clinic never sees; offered for the reference runs
    # what fills the pixels that shifts, rotations, shears and zooming out bring in from outside the film:
    # constant (black), nearest (the edge pixel repeated) or reflect (the film mirrored at its edge), as in Keras
    fill_mode: str = "constant"
    # batch-level mixing (torchvision's MixUp and CutMix, Beta(alpha, alpha) mixing weights; 0 turns one off, both
    # on picks one per batch): the targets become class probabilities, so the model is trained towards softer scores
    mixup: float = 0.0
    cutmix: float = 0.0

    def __post_init__(self) -> None:
        look_up_option(self.fill_mode, FILL_MODES, "fill_mode")
        if not 0 <= self.zoom_range < 1:
            raise ValueError(f"zoom_range must be in [0, 1), got {self.zoom_range}")
        if not 0 <= self.zoom < 1:
            raise ValueError(f"zoom must be in [0, 1), got {self.zoom}")
        if not 0 <= self.shift < 1:  # torchvision refuses it only when the run's transforms are built
            raise ValueError(f"shift must be a fraction of the side in [0, 1), got {self.shift}")
        # beyond these a change is no longer a variation of a film: a turn of more than half a circle, a shear
        # that flattens it, a brightness or contrast factor that can reach 0 (a blank film trained as its label),
        # grain wider than the grey range
        bounds = {"rotation": ("[0, 180] degrees", lambda v: 0 <= v <= 180),
                  "shear": ("[0, 90) degrees", lambda v: 0 <= v < 90),
                  "brightness": ("[0, 1)", lambda v: 0 <= v < 1), "contrast": ("[0, 1)", lambda v: 0 <= v < 1),
                  "noise": ("[0, 1] of the grey range", lambda v: 0 <= v <= 1)}
        for name, (words, ok) in bounds.items():
            if not ok(value := getattr(self, name)):
                raise ValueError(f"{name} is a range in {words} (0: off), got {value}")
        # finite: NaN passes a "< 0" test, and a gamma of NaN turned every training film black for a whole run
        if not (0 <= self.gamma < math.inf and 0 <= self.blur < math.inf):
            raise ValueError(f"gamma and blur are finite ranges >= 0 (0: off), got {self.gamma} and {self.blur}")
        if not (0 <= self.mixup < math.inf and 0 <= self.cutmix < math.inf):
            raise ValueError(f"mixup and cutmix are finite Beta alphas >= 0 (0: off), got {self.mixup} and "
                             f"{self.cutmix}")

    @classmethod
    def off(cls) -> Augment:
        """No random change at all: training sees the images as validation does (``--no-augment``)."""
        return cls(zoom=0.0, shift=0.0, rotation=0.0, shear=0.0, brightness=0.0, contrast=0.0, noise=0.0)

    @property
    def geometric(self) -> bool:
        """Whether the affine step moves pixels (and so brings some in from outside the film)."""
        return bool(self.zoom_range or self.shift or self.rotation or self.shear)


def add_grain(pixels: torch.Tensor, sigma: float) -> torch.Tensor:
    """uint8 pixels plus Gaussian noise of ``sigma`` (a fraction of the grey range), rounded to the nearest grey
    level. torchvision's GaussianNoise truncates a uint8 result towards zero, which weakened every level (1 % acted
    like 0.86 %) and left about a third of the pixels unchanged at the faintest."""
    noisy = pixels.float() + torch.randn(pixels.shape) * (sigma * 255.0)
    return noisy.round_().clamp_(0, 255).to(torch.uint8)


def random_gamma(pixels: torch.Tensor, limit: float) -> torch.Tensor:
    """uint8 pixels with a gamma drawn log-uniformly from [1 / (1 + limit), 1 + limit]: as often darker as
    brighter mid-tones, the ends of the grey range kept (torchvision has no random gamma transform)."""
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
    # float: torchvision draws from Beta(alpha, alpha) in the alpha's dtype, and an integer alpha (mixup: 1) failed
    # in the first batch, after all the preparation
    mixes = [cls(alpha=float(alpha), num_classes=num_classes)
             for cls, alpha in ((v2.MixUp, augment.mixup), (v2.CutMix, augment.cutmix)) if alpha]  # fmt: skip
    if not mixes:
        return None
    return partial(_mixed, mix=mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes))
