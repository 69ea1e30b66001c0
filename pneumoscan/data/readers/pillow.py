"""JPEG and PNG through Pillow, header first: the size and memory limits are applied before any pixel is decoded."""

from __future__ import annotations

import functools
import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageChops

from pneumoscan.data import pixels
from .base import Reader, formats

PIL_FORMATS = ("JPEG", "PNG")
# Bytes a decoded pixel takes in Pillow's memory (every multi-band mode is stored as 4 bytes a pixel).
_PILLOW_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
_ORIENTATION = {  # EXIF orientation -> the transpose that shows the image upright (as ImageOps.exif_transpose)
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}  # fmt: skip


class PillowReader(Reader):
    name = "Pillow"
    formats = ("JPEG", "PNG")
    suffixes = frozenset({".jpeg", ".jpg", ".png"})

    def sniff(self, head: bytes) -> bool:
        return head.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n"))

    def header(self, src: Path | bytes) -> dict:
        with _open(src) as im:
            quality = None
            table = im.quantization.get(0) if im.format == "JPEG" else None
            if table is not None and len(table) == 64:  # a damaged file may lack its luminance table
                quality = int(np.abs(_luma_tables() - np.array(table)).sum(axis=1).argmin()) + 1
            return {"width": im.width, "height": im.height, "mode": im.mode, "format": im.format, "quality": quality}

    def gray(self, src: Path | bytes, target: int | None) -> np.ndarray:
        with _open(src) as im:
            return _gray(im, target)


@contextmanager
def _open(src: Path | bytes) -> Iterator[Image.Image]:
    """Header-only open with the size guard applied; Pillow's own bomb warning/error become our limit."""
    try:
        with warnings.catch_warnings():
            # Pillow warns from ~8.9e7 pixels; MAX_PIXELS is the limit this package enforces.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(pixels.stream(src), formats=PIL_FORMATS)
    except Image.DecompressionBombError:
        raise pixels.DecodeError(
            f"image too large: over {pixels.MAX_PIXELS:,} pixels (refusing a possible decompression bomb)"
        ) from None
    except Image.UnidentifiedImageError:
        raise pixels.DecodeError(f"not a {formats()} image") from None
    except Exception as e:  # Pillow raises SyntaxError/OSError/struct.error/... for damaged headers
        raise pixels.DecodeError(f"corrupt image header: {e}") from None
    with im:
        width, height = im.size
        if width * height > pixels.MAX_PIXELS:
            raise pixels.too_large(width, height)
        if _bytes(im) > pixels.MAX_DECODED_BYTES and im.format != "JPEG":  # a JPEG can be decoded smaller
            raise pixels.too_many_bytes(width, height, _PILLOW_BYTES.get(im.mode, 4), im.mode)
        yield im


def _bytes(im: Image.Image) -> int:
    return im.width * im.height * _PILLOW_BYTES.get(im.mode, 4)


def _gray(im: Image.Image, target: int | None) -> np.ndarray:
    """Gray uint8 pixels, reduced (:func:`pixels.reduce`) and upright. The decoded image is turned into an 8-bit one
    in place of a copy or a strip at a time, so decoding holds at most about 1.5 times its decoded bytes."""
    width, height = im.size
    if _bytes(im) > pixels.MAX_DECODED_BYTES:  # a JPEG (_open refuses the others):
        # libjpeg decodes the luma channel alone, and at 1/2, 1/4 or 1/8 scale (DCT scaling) when that is not enough
        scale = next((s for s in (1, 2, 4, 8) if -(-width // s) * -(-height // s) <= pixels.MAX_DECODED_BYTES), 8)
        im.draft("L", (width // scale, height // scale))
    try:
        im.load()
        orientation = im.getexif().get(ExifTags.Base.Orientation)  # a PNG's may follow its pixels
    except Exception as e:  # truncated or corrupt data (LOAD_TRUNCATED_IMAGES stays False on purpose)
        raise pixels.DecodeError(f"corrupt or truncated image data: {e}") from None
    if im.mode.startswith("I"):
        # 16-bit PNG, often a DICOM export holding 10- to 14-bit values: min-max, as a DICOM without a window
        # (scaling by 65535 made 12-bit data nearly black; Pillow's convert('L') would clip)
        lo, hi = im.getextrema()
        def strip(top: int, end: int) -> np.ndarray:  # np.asarray(im) would copy it all, twice (tobytes)
            return np.asarray(im.crop((0, top, width, end)))

        gray = Image.fromarray(pixels.stretch(strip, height, width, lo, hi))
    elif im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
        # X-ray background is black, so transparent areas become black like the padding does
        gray = ImageChops.multiply(*im.convert("LA").split())
    else:
        gray = im if im.mode == "L" else (im.convert("RGB") if im.mode == "CMYK" else im).convert("L")
    gray = pixels.reduce(gray, target)
    if orientation in _ORIENTATION:  # a phone photo of a film: upright as every viewer shows it
        gray = gray.transpose(_ORIENTATION[orientation])
    return np.asarray(gray)


@functools.cache
def _luma_tables() -> np.ndarray:
    """Pillow's (libjpeg's) luminance quantisation tables, row q - 1 for quality q = 1..100, read back from tiny
    encodes; one array, so finding a file's nearest quality is one vectorised step (audit reads every header)."""
    tables = []
    for quality in range(1, 101):
        buf = io.BytesIO()
        Image.new("L", (8, 8)).save(buf, "JPEG", quality=quality)
        with Image.open(buf) as im:
            tables.append(im.quantization[0])
    return np.array(tables)

