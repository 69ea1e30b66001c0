"""Image decoding: any X-ray a registered reader takes (JPEG, PNG, DICOM; path or uploaded bytes) to an 8-bit
grayscale array, within the limits of :mod:`pneumoscan.data.pixels`.

The source is checked here, then the registry (:mod:`pneumoscan.data.readers`) chooses the reader; what every
reader shares (the limits, the one reduction towards the model's size) is in :mod:`pneumoscan.data.pixels`. Every
bad input becomes a :class:`~pneumoscan.data.pixels.DecodeError` whose message says what is wrong, so a dataset
build can list the unreadable files and the web service can answer with a 4xx instead of a stack trace.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut

from pneumoscan.core.logs import redact
from pneumoscan.core.names import qualified_name, shown
from . import readers
from .pixels import (BLANK, BLANK_IN_WINDOW, NEAR_BLANK_SHARE, BlankImage, DecodeError, blank_reason, minmax_u8,
                     not_gray, one_level_share, opened, unreadable)

log = logging.getLogger(__name__)

Source = str | Path | bytes
T = TypeVar("T")


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
            with opened(src) as f:
                head = f.read(readers.HEAD_BYTES)
        except OSError as e:
            raise unreadable(e) from None
        if not head:
            raise DecodeError("empty file (0 bytes)")
        suffix = src.suffix
    reader = readers.reader_for(head, suffix, "DICOM" if dicom else None)
    if reader is None:
        raise DecodeError(not_an_image(head, "read with dicom=True" if isinstance(src, bytes) else "named *.dcm"))
    return src, reader


def not_an_image(head: bytes, read_as_dicom: str) -> str:
    """Why a file no registered reader takes (its first bytes ``head``) is refused: not a JPEG, PNG or DICOM image,
    and, when those bytes are a DICOM data set without its preamble (:func:`~.readers.dicom.bare_dataset`), that such
    a file is read when ``read_as_dicom`` (``named *.dcm``; the service's ``sent as application/dicom or named
    *.dcm``): refused without it, a film sent by a modality that writes no preamble left its sender nothing to do."""
    said = f"not a {readers.formats()} image"
    if readers.dicom.bare_dataset(head):
        said += f" (a DICOM file without its 128-byte preamble is read when {read_as_dicom})"
    return said


# ---------------------------------------------------------------- public API


def image_info(source: Source, dicom: bool = False) -> dict:
    """Size and pixel format from the header only (no pixel decoding): ``{"width", "height", "mode", "format",
    "quality"}`` (:meth:`pneumoscan.data.readers.Reader.header`); ``dicom`` as :func:`read_gray` takes it."""
    src, reader = _check_source(source, dicom)
    return _asked(reader, source, lambda: reader.header(src))


def colour_spread(source: Source) -> float:
    """How far the colour channels of the image differ, on it reduced
    (:meth:`pneumoscan.data.readers.Reader.colour_spread`): 0 for a grey one, however it is stored."""
    src, reader = _check_source(source)
    return _asked(reader, source, lambda: reader.colour_spread(src))


def read_dicom_header(source: Source, dicom: bool = False) -> Dataset | None:
    """The DICOM header (pixel data left unread), or None for any other format; the same choice of reader as
    :func:`read_gray`, so a file is checked (scope.py) as it was decoded."""
    src, reader = _check_source(source, dicom)
    return readers.dicom.read_dataset(src, header_only=True) if reader.name == "DICOM" else None


def read_dicom(source: Source, dicom: bool = False) -> Dataset | None:
    """The DICOM file read whole, as :func:`read_gray` reads it, or None for any other format: one read for the
    film's pixels (:func:`read_gray`'s ``dataset``) and its header's checks (``scope.describe``'s)."""
    src, reader = _check_source(source, dicom)
    return readers.dicom.read_dataset(src, header_only=False) if reader.name == "DICOM" else None


def read_gray(source: Source, target: int | None = None, dicom: bool = False,
              dataset: Dataset | None = None) -> np.ndarray:
    """Decode to a uint8 H x W grayscale array. With ``target`` a larger image is reduced
    (:func:`~pneumoscan.data.pixels.reduce`) to a short side still above target, the same way whatever its format, so
    the same pixels give the same score as JPEG, PNG or DICOM. ``dicom``: read it as DICOM even without the preamble's
    magic (see :func:`_check_source`). ``dataset``: the DICOM ``source`` as :func:`read_dicom` read it, decoded
    without reading the file again (its grey numbers adjusted in place: :func:`~.readers.dicom.gray_of`); None
    reads ``source``.

    Every reader's pixels pass here, so this is where a blank image (one grey level: a failed export, all-zero
    pixel data, a DICOM window beside the film's values) is refused: a model shown a uniform square still answers
    with a probability (about 0.7 for pneumonia, for a black film with a burned-in marker). So is a nearly blank
    one, with :data:`NEAR_BLANK_SHARE` of its pixels within :data:`NEAR_BLANK_LEVELS` grey levels of one value.
    The built-in readers judge both at full size (:class:`~pneumoscan.data.pixels.BlankImage`), and refuse a film
    of a few grey levels more (a thresholded or posterised picture) there too
    (:func:`~pneumoscan.data.pixels.few_grey_levels`), before the reduction blends them. A film blank only once
    reduced (fine noise or a fine pattern averaged to one grey level) is refused too, its reason saying so: the
    model would see nothing else."""
    src, reader = _check_source(source, dicom)
    try:
        if dataset is not None:
            gray = _asked(reader, source, lambda: readers.dicom.gray_of(dataset, target))
        else:
            gray = _asked(reader, source, lambda: reader.gray(src, target))
    except BlankImage as e:
        reason, nearly = str(e), str(e) != BLANK
    else:
        if (given := not_gray(gray)) is not None:  # a site's reader: numpy's or a later caller's words named no reader
            raise ValueError(f"{_named(reader)} gave {given} for {_film(source)}: a reader's gray() returns a 2-D "
                             "uint8 array (height x width, 0-255); mend the reader")
        if (reason := blank_reason(gray)) is None:
            return gray
        nearly = reason != BLANK
        if (judged := _reduced_words(_asked(reader, source, lambda: reader.header(src)), gray.shape)) is not None:
            reason = blank_reason(gray, judged)
    window = reader.name == "DICOM" and _windowed_out(src, nearly=nearly)
    raise DecodeError(BLANK_IN_WINDOW if window else reason)


def _asked(reader: readers.Reader, source: Source, call: Callable[[], T]) -> T:
    """``call`` (a method of ``reader`` on ``source``), any error but a DecodeError (or memory running out) refused
    naming the reader: a site's reader whose library raises its own error ended a command in a traceback."""
    try:
        return call()
    except (DecodeError, MemoryError):
        raise
    except Exception as e:
        raise ValueError(f"{_named(reader)} failed on {_film(source)}: {type(e).__name__}: {e}: a reader refuses a "
                         "file it cannot read with pixels.DecodeError; mend the reader") from e


def _named(reader: readers.Reader) -> str:
    """The reader as a refusal of what it did names it: ``the TIFF reader (site.TiffReader)``."""
    return f"the {reader.name} reader ({qualified_name(type(reader))})"


def _film(source: Source) -> str:
    return shown(source) if isinstance(source, (str, Path)) else "the uploaded bytes"


def _reduced_words(header: dict, shape: tuple[int, ...]) -> str | None:
    """The words that say a blank reason was judged on the film reduced to ``shape`` from its ``header``'s size,
    None when it was not reduced: "every pixel has the same value" is untrue of a film whose few scattered pixels
    of another grey level the reduction averaged away."""
    if min(shape) >= min(header["width"], header["height"]):
        return None
    return f" once reduced from {header['width']} x {header['height']} to {shape[1]} x {shape[0]} px"


def _windowed_out(src: Path | bytes, nearly: bool = False) -> bool:
    """Whether a DICOM that decoded blank (``nearly``: nearly blank) had differing values before its window (VOI
    LUT) -- values that are not nearly blank themselves, stretched from lowest to highest, when ``nearly`` -- so the
    window, not the film, is what left nothing to see. Read again only on this refusal; any failure here keeps the
    plainer reason, as the film was decoded a moment ago."""
    try:
        ds = readers.dicom.read_dataset(src, header_only=False)
        if not any(k in ds for k in ("WindowCenter", "VOILUTSequence")):
            return False
        values = apply_modality_lut(ds.pixel_array, ds)
    except Exception as e:  # a codec's own error types: the plainer reason is still true
        log.debug("cannot tell whether the window blanked the film: %s", redact(str(e)))
        return False
    low, high = float(values.min()), float(values.max())
    if not nearly or low == high:
        return low != high
    return one_level_share(np.bincount(minmax_u8(values).ravel(), minlength=256)) < NEAR_BLANK_SHARE
