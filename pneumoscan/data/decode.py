"""Image decoding: any X-ray a registered reader takes (JPEG, PNG, DICOM; path or uploaded bytes) to an 8-bit
grayscale array, within the byte and pixel limits here.

Which reader decodes a file is the registry's choice (:mod:`pneumoscan.data.readers`); what every reader shares lives
here: the limits, the checks on the source, and the one reduction towards the model's size. Every bad input becomes
a :class:`DecodeError` whose message says what is wrong, so a dataset build can list the unreadable files and the web
service can answer with a 4xx instead of a stack trace.
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset

from pneumoscan.core.names import file_kind
from . import readers

Source = str | Path | bytes

# Refuse anything bigger before pixels are decoded (a 12,000 x 12,000 film is 1.44e8; the largest real chest
# radiographs are ~4,300 x 3,500). Pillow's own hard limit (2 * Image.MAX_IMAGE_PIXELS ~ 1.8e8) is above this.
MAX_PIXELS = 150_000_000
# Pixels alone do not bound memory: a 16-bit or colour image holds 2 to 4 bytes a pixel once decoded, and DICOM's
# rescale and window arithmetic 8 (float64) a sample. Refuse, from the header, any image whose decoded form would
# exceed this (a 4,300 x 3,500 16-bit radiograph is 30 MB); a JPEG is instead decoded smaller (luma only, then 1/2,
# 1/4 or 1/8 scale) to fit. Decoding holds at most about 1.5 times this per image. Readers read both limits here
# when they decode, so a site (or a test) sets them in one place.
MAX_DECODED_BYTES = 256 * 2**20
_MINMAX_CHUNK = 1 << 20  # pixels converted at a time, so the float64 arithmetic needs 8 MB, not 8 bytes a pixel


class DecodeError(ValueError):
    """Raised with a human-readable reason (str(e)) when a file cannot be read as an X-ray."""


def too_large(width: int, height: int) -> DecodeError:
    """The refusal of an image over :data:`MAX_PIXELS` (a possible decompression bomb)."""
    return DecodeError(
        f"image too large: {width} x {height} = {width * height:,} pixels exceeds the limit of "
        f"{MAX_PIXELS:,} (refusing a possible decompression bomb)"
    )


def too_many_bytes(width: int, height: int, per_pixel: int, what: str) -> DecodeError:
    """The refusal of an image whose decoded form would exceed :data:`MAX_DECODED_BYTES`."""
    return DecodeError(
        f"image too large to decode: {width} x {height} {what} needs {width * height * per_pixel / 2**20:,.0f} MiB "
        f"(limit {MAX_DECODED_BYTES / 2**20:,.0f} MiB)"
    )


def _check_source(source: Source, dicom: bool = False) -> tuple[Path | bytes, readers.Reader]:
    """(what the reader gets, the reader). ``dicom``: the caller knows it is one (an upload's declared type: bytes
    without the preamble carry no magic). A path is opened without blocking (a FIFO would wait for a writer)."""
    if isinstance(source, bytes):
        if not source:
            raise DecodeError("empty file (0 bytes)")
        src, head, suffix = source, source[: readers.HEAD_BYTES], ""
    else:
        src = Path(source)
        try:
            fd = os.open(src, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
            with os.fdopen(fd, "rb") as f:
                mode = os.fstat(fd).st_mode
                if not stat.S_ISREG(mode):
                    raise DecodeError(f"not a regular file ({file_kind(mode)})")
                head = f.read(readers.HEAD_BYTES)
        except FileNotFoundError:
            raise DecodeError("file not found") from None
        except OSError as e:
            raise DecodeError(f"cannot read file: {e.strerror or e}") from None
        if not head:
            raise DecodeError("empty file (0 bytes)")
        suffix = src.suffix
    reader = readers.reader_for(head, suffix, "DICOM" if dicom else None)
    if reader is None:
        raise DecodeError(f"not a {readers.formats()} image")
    return src, reader


def stream(src: Path | bytes) -> Path | io.BytesIO:
    """What a library opens: the path, or the bytes as a file."""
    return io.BytesIO(src) if isinstance(src, bytes) else src


def reduce(gray: Image.Image, target: int | None) -> Image.Image:
    """The same reduction for every format: average blocks of n x n pixels, n the largest whole number that keeps
    the short side above ``target``, so a film bigger than the model's input stays bigger. A JPEG is decoded in full
    for this (its DCT-scaled draft decode gave other pixels than the same film as PNG or DICOM, and other scores)."""
    factor = (min(gray.size) - 1) // target if target else 1
    return gray.reduce(factor) if factor >= 2 else gray


def minmax_u8(arr: np.ndarray) -> np.ndarray:
    """A 2-D array of any numbers stretched from its minimum and maximum to uint8 0-255."""
    return stretch(lambda top, end: arr[top:end], *arr.shape, float(arr.min()), float(arr.max()))


def stretch(rows: Callable[[int, int], np.ndarray], height: int, width: int, lo: float, hi: float) -> np.ndarray:
    """Values ``lo..hi`` stretched to uint8 0-255, a block of ``rows(top, end)`` at a time: a whole float64 copy of a
    12,000 x 12,000 film would be 1.1 GB."""
    out = np.zeros((height, width), np.uint8)
    if hi <= lo:
        return out
    scale = 255.0 / (hi - lo)
    step = max(1, _MINMAX_CHUNK // max(1, width))
    for top in range(0, height, step):
        out[top : top + step] = np.rint((rows(top, min(top + step, height)).astype(np.float64) - lo) * scale)
    return out


# ---------------------------------------------------------------- public API


def image_info(source: Source) -> dict:
    """Size and pixel format from the header only (no pixel decoding): ``{"width", "height", "mode", "format",
    "quality"}`` (:meth:`pneumoscan.data.readers.Reader.header`)."""
    src, reader = _check_source(source)
    return reader.header(src)


def read_dicom_header(source: Source, dicom: bool = False) -> Dataset | None:
    """The DICOM header (pixel data left unread), or None for any other format; the same choice of reader as
    :func:`read_gray`, so a file is checked (scope.py) as it was decoded."""
    src, reader = _check_source(source, dicom)
    return readers.dicom.read_dataset(src, header_only=True) if reader.name == "DICOM" else None


def read_gray(source: Source, target: int | None = None, dicom: bool = False) -> np.ndarray:
    """Decode to a uint8 H x W grayscale array. With ``target`` a larger image is reduced (:func:`reduce`) to a
    short side still above target, the same way whatever its format, so the same pixels give the same score as
    JPEG, PNG or DICOM. ``dicom``: read it as DICOM even without the preamble's magic (see :func:`_check_source`)."""
    src, reader = _check_source(source, dicom)
    return reader.gray(src, target)
