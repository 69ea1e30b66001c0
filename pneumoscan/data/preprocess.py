"""Preprocessing: a decoded grayscale film of any size to the model's ``size x size`` input, the same way for
training, evaluation, prediction and the service; :class:`PreprocessSpec` is that way, stored in every bundle and part
of the cache key.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image

from pneumoscan.core.options import MAX_SIZE, MIN_SIZE, RESIZE_POLICIES, look_up_option
from .decode import Source, image_info, read_gray
from .pixels import DecodeError, not_gray, reduce

# Test-time augmentation views as (zoom, shift as a fraction of the side): small zooms and diagonal shifts
# inside the training augmentation's range. No horizontal flip: a chest film is lateralised.
# (inference.predict.tta_views makes them; the ONNX sidecar states them for users of the graph alone)
TTA_VIEWS = ((1.0, 0.0), (1.1, 0.0), (0.9, 0.0), (1.0, 0.04), (1.0, -0.04))
AGREEMENT = 0.9  # the share of sampled training files that must have been made one way for source_of to name it
# A model reads (x / 255 - mean) / std (data.transforms.to_input): the spread of [0, 1] grey levels a std can be.
# Every timm model's pretrained std lies from 0.17 to 1 (1: the grey levels left unscaled); a bundle's std of 1e-9
# read every film as inputs near 1e9 and 1e9 read every film alike, each with a confident label
STD_BOUNDS = (0.05, 1.0)
T = TypeVar("T")


def check_normalization(mean: float, std: float) -> None:
    """Refuse (ValueError naming the value) a ``mean`` and ``std`` that cannot normalise [0, 1] grey levels: a mean
    that is no grey level (1e6, or 123.7 of a 0-255 scale) or a std outside :data:`STD_BOUNDS` (NaN fails both).
    The one check for a model's registration and a bundle's card."""
    if not 0 <= mean <= 1:
        raise ValueError(f"mean is {mean!r}, not a grey level in [0, 1]")
    low, high = STD_BOUNDS
    if not low <= std <= high:
        raise ValueError(f"std is {std!r}, outside {low:g} to {high:g} (a spread of [0, 1] grey levels)")


def pad_box(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """(left, top, width, height) of a ``height x width`` image scaled into its ``size x size`` letterbox (pad):
    one formula for drawing the letterbox and for taking it off a heatmap, so the two cannot drift apart."""
    scale = size / max(width, height)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    return (size - new_w) // 2, (size - new_h) // 2, new_w, new_h


def _check_gray(gray: object) -> None:
    """ValueError unless ``gray`` is what preprocessing takes, a 2-D uint8 array, saying what was given before
    Pillow sees it: Pillow refuses other arrays with its own words (image has wrong mode, cannot handle this data
    type), or takes a colour one and leaves a reduced shape to report."""
    if (given := not_gray(gray)) is None:
        return
    raise ValueError(f"expected a grayscale image as a 2-D uint8 array (height x width, 0-255), got {given}: "
                     "pneumoscan.data.decode.read_gray decodes a file, or its bytes, to one; from a Pillow image, "
                     'np.asarray(ImageOps.exif_transpose(image).convert("L")) makes one, upright as read_gray reads '
                     "an EXIF-turned JPEG")


def resize(gray: np.ndarray, size: int, policy: str = "squash") -> np.ndarray:
    """``size x size`` uint8. squash: stretch to the square; pad: keep the aspect ratio and letterbox with
    black; center-crop: scale the short side to ``size`` and cut the middle square."""
    look_up_option(policy, RESIZE_POLICIES, "resize policy")
    _check_gray(gray)
    height, width = gray.shape
    if (height, width) == (size, size):
        return gray.copy()
    im = Image.fromarray(gray)
    bilinear = Image.Resampling.BILINEAR  # antialiased when shrinking, like torchvision's Resize
    if policy == "squash":
        out = im.resize((size, size), bilinear)
    elif policy == "center-crop":
        side = min(width, height)
        left, top = (width - side) / 2, (height - side) / 2
        out = im.resize((size, size), bilinear, box=(left, top, left + side, top + side))
    else:
        left, top, new_w, new_h = pad_box(height, width, size)
        out = Image.new("L", (size, size), 0)
        out.paste(im.resize((new_w, new_h), bilinear), (left, top))
    return np.array(out)


def _brought_to_source(shape: tuple[int, ...], source_size: int | None) -> bool:
    return source_size is not None and max(shape) > source_size


def match_source(
    gray: np.ndarray, source_size: int | None, source_quality: int | None,
    resample: Image.Resampling = Image.Resampling.BILINEAR,
) -> np.ndarray:
    """An image larger than the training images on disk, brought down to them the way they were made: squashed to
    ``source_size`` x ``source_size`` and JPEG-compressed at ``source_quality``. A model learns the blur and
    compression of its training files; on the 16 full-size originals in val/, a demo model gave the 8 pneumonia
    films a mean P(pneumonia) of 0.78 read directly against 0.91 through this step (normals 0.03 and 0.06), and 3 of
    the 8 fell under the threshold only when read directly. The filter is Pillow's antialiased bilinear: of the
    usual filters its output's high-frequency spectrum is closest to train/'s (benchmarks/bench_resample.py);
    bicubic, tried first, left the originals sharper than the training files (``resample`` lets that benchmark
    try the others). Smaller images pass as they are."""
    if not _brought_to_source(gray.shape, source_size):
        return gray
    im = Image.fromarray(gray).resize((source_size, source_size), resample)
    if source_quality is None:
        return np.asarray(im)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=source_quality)
    with Image.open(buf) as jpeg:
        return np.asarray(jpeg.convert("L"))


def spread(items: Sequence[T], n: int) -> list[T]:
    """``n`` of ``items`` evenly spaced from the first to the last (all of them when there are no more than ``n``):
    over a sorted list a sample that does not hang on one patient or one corner of a folder."""
    if len(items) <= n:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, n).round().astype(int)]


def source_of(
    paths: Sequence[str | Path], sample: int = 64
) -> tuple[int | None, int | None]:
    """(side, JPEG quality) of a set of files that were made one way, as train/ here (originals squashed to
    224 x 224, JPEG quality 75): the most common (size, quality) among ``sample`` files evenly spread over the
    sorted paths. (None, None) when fewer than :data:`AGREEMENT` of the readable sample share it, or it is not square,
    or not JPEG. So a few odd files (the training pool here also holds val/'s 16 full-size originals) do not
    decide it, and neither does the order of a manifest's rows. Unreadable files are left to the cache to report."""
    found = []
    for path in spread(sorted(map(str, paths)), sample):
        try:
            info = image_info(path)
        except DecodeError:
            continue
        found.append(((info["width"], info["height"]), info["quality"]))
    if not found:
        return None, None
    ((width, height), quality), count = Counter(found).most_common(1)[0]
    if count < AGREEMENT * len(found) or width != height or quality is None:
        return None, None
    return width, quality


@dataclass(frozen=True)
class PreprocessSpec:
    """How every image is turned into a model input; part of the cache key."""

    size: int = 224
    policy: str = "squash"
    source_size: int | None = None  # see match_source: larger inputs are first brought down to the
    source_quality: int | None = None  # training files' side and JPEG quality

    @property
    def decode_target(self) -> int:
        """The side an image may be reduced to on decoding (:func:`read_gray`) without losing what preprocessing
        needs."""
        return max(self.size, self.source_size or 0)

    def apply(self, gray: np.ndarray) -> np.ndarray:
        """A decoded uint8 image of any size -> the ``size x size`` model input: reduced towards
        :attr:`decode_target` as :func:`read_gray` reduces on decoding (a no-op for an image decoded so), then
        :func:`match_source`, then resize. A film decoded in full (``read_gray(path)``) so gets the input ``predict``
        and the service give it (it scored up to 0.13 apart), but for a JPEG with an EXIF turn: turned before this
        reduction, where predict's decode reduces the stored pixels, its blocks fall elsewhere when the reduction
        does not divide a side. Decoded at :attr:`decode_target` (``read_gray(path, target=...)``, as the Python API
        is shown used), any film is predict's very input."""
        _check_gray(gray)
        reduced = np.asarray(reduce(Image.fromarray(gray), self.decode_target))
        return resize(match_source(reduced, self.source_size, self.source_quality), self.size, self.policy)

    def read(self, source: Source) -> np.ndarray:
        """The model input for one file: decoded reduced towards :attr:`decode_target` (no full-size decode of a
        large film), then :meth:`apply`."""
        return self.apply(read_gray(source, target=self.decode_target))

    @property
    def said(self) -> str:
        """The preprocessing in a user's words, for messages: the dataclass's own repr (``source_size=None``) is
        Python's spelling, not a user's."""
        source = (f", inputs larger than {self.source_size} px first brought down to {self.source_size} px JPEG "
                  f"quality {self.source_quality}" if self.source_size else "")
        return f"{self.size} x {self.size} px, {self.policy}{source}"

    def geometry(self, height: int, width: int) -> str:
        """The resize policy an image of this shape really gets: :func:`match_source` squashes a larger one to the
        training files' square first, so pad and center-crop then have nothing left to pad or cut."""
        return "squash" if _brought_to_source((height, width), self.source_size) else self.policy

    def __post_init__(self) -> None:
        if not MIN_SIZE <= self.size <= MAX_SIZE:
            raise ValueError(f"size must be {MIN_SIZE} to {MAX_SIZE} pixels, got {self.size}")
        # the side larger films are squashed to first: below MIN_SIZE every film became the same few grey pixels
        if self.source_size is not None and not self.source_size >= MIN_SIZE:
            raise ValueError(f"source_size must be at least {MIN_SIZE} pixels, got {self.source_size}")
        if self.source_quality is not None and not 1 <= self.source_quality <= 100:
            raise ValueError(f"source_quality must be a JPEG quality, 1 to 100, got {self.source_quality}")
        look_up_option(self.policy, RESIZE_POLICIES, "resize policy")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PreprocessSpec:
        return cls(**data)


def preprocess(source: Source, size: int = 224, policy: str = "squash", source_size: int | None = None,
               source_quality: int | None = None) -> np.ndarray:
    """The model input for one file under the spec these arguments make (:meth:`PreprocessSpec.read`)."""
    return PreprocessSpec(size, policy, source_size, source_quality).read(source)
