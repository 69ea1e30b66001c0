"""The ranges of the training augmentation (:class:`Augment`), checked when given: a setting of every run's config,
free of torch and torchvision, so that reading or printing a config loads neither (the pipelines that apply it are
:mod:`pneumoscan.data.transforms`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from pneumoscan.core.options import FILL_MODES, look_up_option

NOISE_LEVELS = (0.25, 0.5, 0.75, 1.0)  # fractions of Augment.noise


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
        bounds = {
            "rotation": ("[0, 180] degrees", lambda v: 0 <= v <= 180),
            "shear": ("[0, 90) degrees", lambda v: 0 <= v < 90),
            "brightness": ("[0, 1)", lambda v: 0 <= v < 1),
            "contrast": ("[0, 1)", lambda v: 0 <= v < 1),
            "noise": ("[0, 1] of the grey range", lambda v: 0 <= v <= 1),
        }
        for name, (words, ok) in bounds.items():
            if not ok(value := getattr(self, name)):
                raise ValueError(f"{name} is a range in {words} (0: off), got {value}")
        # finite: NaN passes a "< 0" test, and a gamma of NaN turned every training film black for a whole run
        if not (0 <= self.gamma < math.inf and 0 <= self.blur < math.inf):
            raise ValueError(f"gamma and blur are finite ranges >= 0 (0: off), got {self.gamma} and {self.blur}")
        if not (0 <= self.mixup < math.inf and 0 <= self.cutmix < math.inf):
            raise ValueError(
                f"mixup and cutmix are finite Beta alphas >= 0 (0: off), got {self.mixup} and {self.cutmix}"
            )

    @classmethod
    def off(cls) -> Augment:
        """No random change at all: training sees the images as validation does (``--no-augment``)."""
        return cls(zoom=0.0, shift=0.0, rotation=0.0, shear=0.0, brightness=0.0, contrast=0.0, noise=0.0)

    @property
    def geometric(self) -> bool:
        """Whether the affine step moves pixels (and so brings some in from outside the film)."""
        return bool(self.zoom_range or self.shift or self.rotation or self.shear)
