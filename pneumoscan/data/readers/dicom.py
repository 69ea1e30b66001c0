"""DICOM through pydicom: the header's limits checked before the pixels are read, then the modality and VOI LUTs
(the window) and MONOCHROME1's inversion, as a viewer shows the film.

pydicom's messages quote element values (a patient's name, id or birth date), so its logs are redacted here.
The reports and overlays this package writes are refused here too: they are in the film's study, and a second run
over the same folder or PACS study must not score its own Grad-CAM overlay as a chest film.

Faults pydicom lets through are stopped here: a deflated dataset is inflated within the decode limit (pydicom
inflates all of it first); a JPEG Baseline, Extended or Lossless frame whose entropy-coded data is damaged is refused
(pydicom's JPEG plugins ignore libjpeg's corrupt-data warnings and fill what is missing with flat grey or garbage);
pixel data that holds more or less than the header describes is refused before it is decoded (pydicom would return
the excess as extra frames, decoding them all); uncompressed colour pixel data that Planar Configuration mislabels is
refused (pydicom reshapes it as the element says: a mosaic), and a compressed frame's colours are read as its codec
lays them out, whatever the element says; and any error a decoder raises, a Rust panic included, becomes a refusal.
"""

from __future__ import annotations

import io
import logging
import math
import re
import warnings
import zlib
from contextlib import nullcontext
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pydicom
from PIL import Image
from pydicom import filereader
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.encaps import generate_fragments, get_frame, parse_basic_offsets
from pydicom.filebase import DicomBytesIO
from pydicom.misc import size_in_bytes
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, get_decoder
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import (
    UID, DeflatedExplicitVRLittleEndian, DigitalIntraOralXRayImageStorageForProcessing,
    DigitalMammographyXRayImageStorageForProcessing, DigitalXRayImageStorageForProcessing, ExplicitVRBigEndian,
    ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1,
    JPEGLSLossless, JPEGLSNearLossless, MediaStorageDirectoryStorage, RLELossless,
)  # fmt: skip

from pneumoscan.data import pixels
from . import jpeg
from .base import Reader

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_JPEG_LS = (JPEGLSLossless, JPEGLSNearLossless)
# the syntaxes whose frames jpeg.check_frame checks (Huffman-coded JPEG: lossy DCT and lossless process 14)
_JPEG_CHECKED = (JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1)
# (implicit VR, little endian) as pydicom detected them -> the transfer syntax of a file that records none
_ENCODINGS = {(True, True): ImplicitVRLittleEndian, (False, True): ExplicitVRLittleEndian,
              (False, False): ExplicitVRBigEndian}  # fmt: skip
# A fragment that begins a frame: JPEG and JPEG-LS start with SOI, JPEG 2000 with SOC then SIZ. Neither can begin a
# fragment that continues a frame's entropy-coded data, where 0xFF is followed by a stuffed byte or a restart marker.
_CODESTREAM_STARTS = (b"\xff\xd8", b"\xff\x4f\xff\x51")
_SAMPLES = {"MONOCHROME1": 1, "MONOCHROME2": 1, "PALETTE COLOR": 1, "RGB": 3, "YBR_FULL": 3, "YBR_FULL_422": 3,
            "YBR_PARTIAL_420": 3, "YBR_ICT": 3, "YBR_RCT": 3}  # fmt: skip
_POLARITY = {"MONOCHROME1": "INVERSE", "MONOCHROME2": "IDENTITY"}  # the Presentation LUT Shape each implies
_SPACINGS = ("PixelSpacing", "ImagerPixelSpacing", "PixelAspectRatio")  # each row (vertical) first, then column
_GREY_NUMBERS = ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth")  # what maps values to grey
_SQUARE = 0.01  # pixels whose height and width differ by no more than this are square (a calibration's rounding)
# Planar Configuration's values (PS3.3 C.7.6.3.1.3): how three-sample pixel data lays out its samples
_LAYOUTS = {0: "color-by-pixel", 1: "color-by-plane"}
_LAYOUT_MIN_SIDE = 8  # a smaller image holds too few neighbouring pixels to tell its layout by (a 3 x 3 one cannot)
_LAYOUT_ROWS = 128  # pairs of rows whose neighbouring pixels tell the layout: enough, and cheap on any film
# non-square pixels are resampled up to this ratio (older CR and scanners: 2:1 at most); beyond, refused
_MAX_ASPECT = 3.0
# what a decoder may raise that is no fault of the film, and must end the run as it would anywhere else
_NOT_THE_FILM = (KeyboardInterrupt, SystemExit, GeneratorExit)
_DEFER_SIZE = "64 KB"  # a header-only read leaves values larger than this (the pixels) unread
# From the first quote to the last: a value may itself hold quotes ("'['20190317', '20190318']'"), and pairing
# them one by one would leave the dates between the pairs in the clear.
_QUOTED = re.compile(r"['\"].*['\"]", re.DOTALL)
# why stored values wider than the header's bits are refused, whether the decoded values or a codestream show it
_WRAPS = ("read as stored they would wrap into bands; the header does not describe the pixel data (Bits Stored and "
          "High Bit too small)")
# How far past the stored range a lossy frame's values may lie and be clipped, as a share of the range: ringing
# past a step is about 9% of its height (Gibbs); an extra stored bit the header leaves out doubles the range.
_OVERSHOOT = 0.25
_LOSSLESS = re.compile(r"(?<!near-)lossless", re.IGNORECASE)  # in a transfer syntax's name: not near-lossless
MANUFACTURER = "pneumoscan"  # the Manufacturer of every DICOM object this package writes (SR, Secondary Capture)
OWN_OUTPUT = "a pneumoscan output (Grad-CAM Secondary Capture or DICOM SR), not a film"
# X-ray images For Processing (PS3.3 C.8.11.1.1.1): the detector's raw values, which the modality's image processing
# turns into the For Presentation image a reader sees (the DX IOD asks a VOI LUT or window of that image only)
FOR_PROCESSING_CLASSES = frozenset({DigitalXRayImageStorageForProcessing,
                                    DigitalMammographyXRayImageStorageForProcessing,
                                    DigitalIntraOralXRayImageStorageForProcessing})
FOR_PROCESSING = ("raw detector values, before the image processing that makes them a film to read; read its For "
                  "Presentation image")


class DicomReader(Reader):
    name = "DICOM"
    formats = ("DICOM",)
    suffixes = frozenset({".dcm"})  # .dcm files without the 128-byte preamble (and so the magic) are common

    def sniff(self, head: bytes) -> bool:
        return head[128:132] == b"DICM"

    def header(self, src: Path | bytes) -> dict:
        film = _header(read_dataset(src, header_only=True))
        return {"width": film.width, "height": film.height, "mode": f"{film.photometric}/{film.bits}",
                "format": "DICOM", "quality": None}  # fmt: skip

    def gray(self, src: Path | bytes, target: int | None) -> np.ndarray:
        ds = read_dataset(src, header_only=False)
        gray, before_window = _gray(ds)
        levels = pixels.few_grey_levels(gray)
        if levels is not None:
            # a window narrower than the film's values posterises a film that is none: the window is at fault
            if before_window is not None and _distinct(before_window) >= pixels.MIN_GREY_LEVELS:
                raise pixels.too_few_levels_in_window(_window_words(ds), levels)
            raise pixels.too_few_levels(f"the film holds {levels}")
        return np.asarray(pixels.reduce(gray, target))


def size_as_read(ds: Dataset) -> tuple[int, int]:
    """(width, height) of the film as it is read (square pixels), from its header."""
    film = _header(ds)
    return film.width, film.height


def redact(text: str) -> str:
    """``text`` with everything from its first quote to its last replaced by ``'...'``: pydicom and highdicom
    quote element values in their messages ("Invalid value for VR DA: '...'"), and the value may be a patient's
    name, id or birth date."""
    return _QUOTED.sub("'...'", text)


def is_own_output(ds: Dataset) -> bool:
    """Whether this DICOM object is one pneumoscan wrote (its SR or Grad-CAM Secondary Capture): the one rule by
    which decoding refuses it and a PACS study read leaves it out."""
    try:
        return str(ds.get("Manufacturer") or "").strip() == MANUFACTURER
    except Exception:  # an unreadable Manufacturer is not ours: ours are written whole
        return False


def for_processing(ds: Dataset) -> str | None:
    """What makes this an X-ray image For Processing (its SOP class's name, or its Presentation Intent Type under a
    class of either intent), None when nothing does: a modality may archive it beside the For Presentation image of
    the same exposure, and scored it would be a second, meaningless reading of that exposure. The one rule by which
    decoding refuses it and a PACS study read does not retrieve it (from the fields of its search answer)."""
    try:
        sop_class = UID(str(ds.get("SOPClassUID") or "").strip())
        if sop_class in FOR_PROCESSING_CLASSES:
            return sop_class.name
        if str(ds.get("PresentationIntentType") or "").strip().upper() == "FOR PROCESSING":
            return f"{sop_class.name if sop_class else 'an image'} of intent FOR PROCESSING"
    except Exception:  # a damaged value: the checks that read it for the film say so
        return None
    return None


class _RedactValues(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage()), ()
        return True


def keep_dicom_values_out_of_logs(*packages: str) -> None:
    """Redact the log records of these packages' loggers (those that exist now and the package's own), and silence
    their UserWarnings, which repeat the same messages unredacted on stderr (pydicom logs each one as well, so the
    redacted record is still there). Per logger and filter rather than a ``catch_warnings`` block, because decoding
    runs in threads and ``catch_warnings`` swaps process-wide state."""
    for package in packages:
        names = [n for n in logging.root.manager.loggerDict if n == package or n.startswith(package + ".")]
        for name in {package, *names}:
            logger = logging.getLogger(name)
            if not any(isinstance(f, _RedactValues) for f in logger.filters):
                logger.addFilter(_RedactValues())
        warnings.filterwarnings("ignore", category=UserWarning, module=rf"{re.escape(package)}(\.|$)")


keep_dicom_values_out_of_logs("pydicom")


def read_dataset(src: Path | bytes, header_only: bool) -> Dataset:
    """The file as a pydicom dataset; ``header_only`` leaves large values (the pixels) on disk. A deflated dataset
    is inflated here, within MAX_DECODED_BYTES: pydicom would inflate it whole before any limit is checked (a
    398 KiB file held 400 MiB)."""
    try:
        inflated = _inflated(src)
        if inflated is None:
            # force: .dcm files without the 128-byte preamble are common; defer_size keeps pixels on disk
            ds = pydicom.dcmread(pixels.stream(src), force=True, defer_size=_DEFER_SIZE if header_only else None)
            if "TransferSyntaxUID" not in ds.file_meta and ds.original_encoding in _ENCODINGS:
                # no File Meta (no preamble, no group 0002, as older modalities write): the encoding it was read in
                ds.file_meta.TransferSyntaxUID = _ENCODINGS[ds.original_encoding]
            return ds
        preamble, meta, data = inflated
        buffer = DicomBytesIO(data)
        # large values stay in the buffer (already in memory) until read: only the pixels are, not a padding's MiBs
        dataset = filereader.read_dataset(buffer, is_implicit_VR=False, is_little_endian=True,
                                          defer_size=size_in_bytes(_DEFER_SIZE))  # fmt: skip
        return FileDataset(buffer, dataset, preamble, meta, is_implicit_VR=False, is_little_endian=True)
    except pixels.DecodeError:
        raise
    except Exception as e:
        raise pixels.DecodeError(f"not a readable DICOM file: {e}") from None


def _inflated(src: Path | bytes) -> tuple[bytes | None, FileMetaDataset, bytes] | None:
    """(preamble, file meta, inflated dataset) of a file in the Deflated Explicit VR Little Endian syntax, None for
    any other. The file meta is read as pydicom's dcmread reads it (its own reader, so both agree on the syntax)."""
    with open(src, "rb") if isinstance(src, Path) else nullcontext(io.BytesIO(src)) as fp:
        preamble = filereader.read_preamble(fp, force=True)
        meta = filereader._read_file_meta_info(fp)
        if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
            return None
        deflated = fp.read()
    return preamble, meta, _inflate(deflated)


def _inflate(deflated: bytes) -> bytes:
    """The raw deflate stream (PS3.5 A.5) inflated, refused past MAX_DECODED_BYTES. Inflated twice: a MiB at a time
    to measure it, output dropped, then into one buffer of that size, so memory holds the dataset once (a bomb:
    never), where one inflate's growing buffer is copied into the result at the end (twice the dataset)."""
    measure, size, pending = zlib.decompressobj(-zlib.MAX_WBITS), 0, deflated
    while not measure.eof:
        chunk = measure.decompress(pending, 2**20)
        pending = measure.unconsumed_tail
        if not chunk and not pending:
            raise pixels.DecodeError("deflated DICOM dataset is truncated (its deflate stream does not end)")
        size += len(chunk)
        if size > pixels.MAX_DECODED_BYTES:
            raise pixels.DecodeError(
                f"deflated DICOM dataset inflates to over {pixels.MAX_DECODED_BYTES / 2**20:,.0f} MiB from "
                f"{len(deflated) / 2**10:,.0f} KiB, more than can be read safely"
            )
    return zlib.decompress(deflated, -zlib.MAX_WBITS, max(size, 1))


class _Film(NamedTuple):
    """What the header says of a single-frame image object. ``width`` x ``height``: the film as read, its pixels
    made square (``cols`` x ``rows`` as stored when they are)."""

    rows: int
    cols: int
    samples: int
    photometric: str
    bits: str
    width: int
    height: int


def _header(ds: Dataset) -> _Film:
    """The header of a single-frame image object, refused where it cannot describe the film unambiguously. pydicom
    converts header values only when they are read, so every read happens here, where a damaged value becomes a
    reason."""
    if is_own_output(ds):
        raise pixels.DecodeError(OWN_OUTPUT)
    if for_processing(ds) is not None:
        raise pixels.DecodeError(f"an X-ray image For Processing: {FOR_PROCESSING}")
    values = _header_values(ds)
    _refuse_unreadable(ds, values)
    _refuse_ambiguous(values)
    width, height = _square_size(values.rows, values.cols, values.height_over_width)
    bits = str(values.bits_stored if values.bits_stored is not None else "?")
    return _Film(values.rows, values.cols, values.samples, values.photometric, bits, width, height)


class _HeaderValues(NamedTuple):
    """The header's values as :func:`_header_values` read them, for the refusals that weigh them."""

    has_pixels: bool
    rows: int
    cols: int
    frames: int
    photometric_value: object  # as stored: a multi-valued one is refused
    photometric: str
    bits_stored: object
    high_bit: object
    high_bit_wrong: bool
    samples: int
    lut_shape: str
    float_window: bool
    height_over_width: float
    no_numbers: list[str]  # the grey-level elements whose values are not numbers


def _header_values(ds: Dataset) -> _HeaderValues:
    """Every header value :func:`_header` weighs, each read once, in one place where pydicom's conversion of a
    damaged value (it converts on reading) becomes "malformed DICOM header"."""
    try:
        has_pixels = any(k in ds for k in _PIXEL_KEYWORDS)
        rows, cols = (int(ds.get(k) or 0) for k in ("Rows", "Columns"))
        frames = int(ds.get("NumberOfFrames") or 1)
        photometric_value = ds.get("PhotometricInterpretation", "MONOCHROME2")
        photometric = str(photometric_value).upper()
        bits_stored, high_bit = ds.get("BitsStored"), ds.get("HighBit")
        high_bit_wrong = None not in (bits_stored, high_bit) and int(high_bit) != int(bits_stored) - 1
        samples = int(ds.get("SamplesPerPixel") or 1)
        lut_shape = str(ds.get("PresentationLUTShape") or "").strip().upper()
        float_window = "PixelData" not in ds and _given(ds, "WindowCenter") and _given(ds, "WindowWidth")
        height_over_width = _pixel_aspect(ds)
        no_numbers = [k for k in _GREY_NUMBERS if _given(ds, k) and not _numbers(ds.get(k))]
    except pixels.DecodeError:
        raise
    except Exception as e:
        raise pixels.DecodeError(f"malformed DICOM header: {e}") from None
    return _HeaderValues(has_pixels, rows, cols, frames, photometric_value, photometric, bits_stored, high_bit,
                         high_bit_wrong, samples, lut_shape, float_window, height_over_width, no_numbers)


def _refuse_unreadable(ds: Dataset, values: _HeaderValues) -> None:
    """Refuse a header from which no single film can be read: grey levels that cannot be known, no pixels, no
    size, several frames, or more pixels or bytes than the decode limits."""
    if values.no_numbers:  # pydicom keeps such a value as text, and its LUT arithmetic fails on it with a type error
        said = "is not a number" if len(values.no_numbers) == 1 else "are not numbers"
        raise pixels.DecodeError(f"malformed DICOM header: {' and '.join(values.no_numbers)} {said}, so the film's "
                                 "grey levels cannot be known")
    if not values.has_pixels and not len(ds):  # pydicom reads a file that ends inside an element as no element at all
        raise pixels.DecodeError(f"no data set could be read from this DICOM file ({_syntax(ds)}): it is cut short "
                                 "or damaged (one that ends inside its pixel data reads as nothing); send it again")
    if not values.has_pixels:
        raise pixels.DecodeError(_misencoded(ds) or _no_image(ds))
    rows, cols, samples = values.rows, values.cols, values.samples
    if not rows or not cols:
        raise pixels.DecodeError("DICOM file has pixel data but no Rows/Columns")
    if values.frames > 1:
        raise pixels.DecodeError(
            f"multi-frame DICOM ({values.frames} frames) is not a single radiograph; export the frame to read"
        )
    if rows * cols > pixels.MAX_PIXELS:
        raise pixels.too_large(cols, rows)
    if rows * cols * samples * 8 > pixels.MAX_DECODED_BYTES:  # the LUT and window arithmetic is float64
        raise pixels.too_many_bytes(cols, rows, samples * 8, f"DICOM ({samples} sample(s) as float64)")


def _refuse_ambiguous(values: _HeaderValues) -> None:
    """Refuse a header whose elements contradict each other or the pixel data's kind, so that which grey is
    bone, or which bits hold the values, would be a guess; and one whose stored bits hold too few grey levels."""
    photometric, bits_stored, lut_shape = values.photometric, values.bits_stored, values.lut_shape
    if isinstance(values.photometric_value, MultiValue):
        held = "\\".join(values.photometric_value)
        raise pixels.DecodeError(f"malformed DICOM header: Photometric Interpretation holds "
                                 f"{len(values.photometric_value)} values ({held}), where a film has one")
    if _SAMPLES.get(photometric, values.samples) != values.samples:
        raise pixels.DecodeError(f"malformed DICOM header: Photometric Interpretation {photometric} has "
                                 f"{_SAMPLES[photometric]} sample(s) per pixel, but Samples per Pixel is "
                                 f"{values.samples}")  # fmt: skip
    if values.high_bit_wrong:
        raise pixels.DecodeError(f"High Bit {values.high_bit} with Bits Stored {bits_stored}: the stored bits must "
                                 f"end at bit {int(bits_stored) - 1} (High Bit = Bits Stored - 1); read otherwise, the "
                                 "values would be taken from the wrong bits")  # fmt: skip
    if isinstance(bits_stored, int) and bits_stored < 8:  # a 1-bit (Bits Allocated 1) or posterised object
        raise pixels.too_few_levels(f"Bits Stored {bits_stored} holds at most {2**bits_stored}")
    if _POLARITY.get(photometric, lut_shape) != lut_shape and lut_shape in _POLARITY.values():
        raise pixels.DecodeError(f"ambiguous polarity: Photometric Interpretation {photometric} with Presentation "
                                 f"LUT Shape {lut_shape} (each says the opposite of the other which grey is bone)")
    if values.float_window:
        raise pixels.DecodeError("float pixel data with a window (Window Center/Width): the window's output range "
                                 "is set by Bits Stored, which float pixel data does not have")


def _square_size(rows: int, cols: int, height_over_width: float) -> tuple[int, int]:
    """(width, height) of the film as read: non-square pixels are resampled to square ones by shrinking the side
    whose pixels are finer, so no detail is invented."""
    if height_over_width > 1:  # tall pixels: the columns are finer, so the width shrinks
        return max(1, round(cols / height_over_width)), rows
    if height_over_width < 1:
        return cols, max(1, round(rows * height_over_width))
    return cols, rows


def _given(ds: Dataset, keyword: str) -> bool:
    """Whether an element holds a value: one written empty (type 2) counts as absent, as pydicom's LUTs take it."""
    value = ds.get(keyword)
    return value is not None and (not hasattr(value, "__len__") or len(value) > 0)


def _numbers(value: object) -> bool:
    """Whether a DS or IS element's value (one or several) is finite numbers, as pydicom converts valid ones."""
    values = value if isinstance(value, MultiValue) else [value]
    return all(isinstance(v, int | float) and math.isfinite(v) for v in values)


def _pixel_aspect(ds: Dataset) -> float:
    """A pixel's height over its width, from Pixel Spacing, else Imager Pixel Spacing, else Pixel Aspect Ratio; 1
    when they give none or one within :data:`_SQUARE` of it. A value that is not two positive numbers is passed over
    when it would leave the pixels square (one number, or two alike: "0\\0" written for unknown), and refused when it
    would not ("0.1\\0"): the film's shape is then unknown."""
    for keyword in _SPACINGS:
        element = ds.get_item(keyword)
        value = None if element is None else element.value
        if isinstance(value, bytes):  # read as stored: pydicom's conversion raises on a value that is no number
            value = value.decode("ascii", "replace").strip(" \x00").split("\\") if value.strip(b" \x00") else None
        values = [str(v).strip(" \x00") for v in (value if isinstance(value, MultiValue | list) else [value])]
        if value is None or len(values) != 2:
            continue
        try:
            vertical, horizontal = (float(v) for v in values)
        except ValueError:
            vertical = horizontal = math.nan
        if min(vertical, horizontal) > 0 and math.isfinite(vertical / horizontal):
            ratio = vertical / horizontal
            if not 1 / _MAX_ASPECT <= ratio <= _MAX_ASPECT:  # no radiograph's detector: a header fault
                raise pixels.DecodeError(f"malformed DICOM header: {keyword} {vertical:g}\\{horizontal:g} makes each "
                                         f"pixel {max(ratio, 1 / ratio):.3g} times as tall as wide or as wide as tall; "
                                         "no radiograph has such pixels")
            return 1.0 if abs(ratio - 1) <= _SQUARE else ratio
        if values[0] != values[1]:
            shown = "\\".join(values)
            raise pixels.DecodeError(f"malformed DICOM header: {keyword} {shown} is not two positive numbers, so the "
                                     "shape of the film's pixels is unknown")
    return 1.0


def _no_image(ds: Dataset) -> str:
    """Why a file without pixel data is no film, naming what it is by its SOP class (a report, a presentation
    state, a DICOMDIR), so that whoever sent it knows which file to send instead."""
    try:
        sop_class = UID(str(ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID") or "").strip())
    except Exception:  # a damaged value: said without it
        sop_class = UID("")
    if sop_class == MediaStorageDirectoryStorage:
        return ("DICOM file has no pixel data: a DICOMDIR, the index of a DICOM disc or folder, not an image; read the "
                "image files it lists")
    if sop_class.type != "SOP Class":
        return "DICOM file has no pixel data (not an image object)"
    if "ImageStorage" in sop_class.keyword:  # an image stripped of its pixels, by an export or a metadata request
        return (f"DICOM file has no pixel data: a {sop_class.name} object without its pixels (left out by an export "
                "or a PACS); send the whole file")
    return f"DICOM file has no pixel data (not an image object: {sop_class.name})"


def _misencoded(ds: Dataset) -> str | None:
    """Why a file without pixel data may be an image after all: its File Meta names the other byte order than its
    dataset is written in (read that way, it holds pixels). None when it does not, or cannot be read again."""
    implicit, little = ds.original_encoding
    source = getattr(ds, "filename", None) or getattr(ds, "buffer", None)
    if implicit is not False or source is None:
        return None
    try:
        with open(source, "rb") if isinstance(source, str | Path) else nullcontext(source) as fp:
            fp.seek(0)
            filereader.read_preamble(fp, force=True)
            filereader._read_file_meta_info(fp)
            other = filereader.read_dataset(fp, is_implicit_VR=False, is_little_endian=not little,
                                            defer_size=size_in_bytes(_DEFER_SIZE))  # fmt: skip
    except Exception:
        return None
    if not any(k in other for k in _PIXEL_KEYWORDS):
        return None
    said, found = ("little", "big") if little else ("big", "little")
    return (f"the File Meta's transfer syntax ({_syntax(ds)}) says {said} endian, but the dataset is written "
            f"{found} endian: the file is mislabelled")


def _pixels(ds: Dataset, film: _Film) -> np.ndarray:
    """The stored pixel values (YBR converted to RGB) of pixel data that holds what the header describes (colour
    samples laid out as Planar Configuration says: :func:`_check_planar_configuration`), JPEG-LS through CharLS
    (pyjpegls) when it is installed: on a 1776 x 1416 12-bit film it decodes in 84 ms against pylibjpeg-libjpeg's
    358 ms (benchmarks/bench_dicom.py), and pydicom would try pylibjpeg first. A frame CharLS refuses is refused:
    libjpeg decodes a damaged JPEG-LS stream into garbage without a word. Every other syntax gets pydicom's order.
    Bits above High Bit are masked, checked or clipped as :func:`_unused_bits` says."""
    syntax = ds.file_meta.get("TransferSyntaxUID")
    precision = None
    if isinstance(syntax, UID) and syntax.is_transfer_syntax:
        _check_length(ds, syntax, film)
        if syntax.is_encapsulated and syntax != RLELossless:
            frame = get_frame(ds.PixelData, 0, number_of_frames=1)
            precision = _check_codestream(frame, ds, film)
            if syntax in _JPEG_CHECKED:
                jpeg.check_frame(frame)
        elif film.samples == 3:
            _check_planar_configuration(ds, syntax, film)
    unused = _unused_bits(ds, syntax, precision)
    charls = syntax in _JPEG_LS and "pyjpegls" in get_decoder(syntax).available_plugins
    # A codec fixes the layout of the colours it decodes (PS3.5 8.2: Planar Configuration is irrelevant to JPEG, JPEG-LS
    # and JPEG 2000 data); pydicom reshaped libjpeg's and OpenJPEG's color-by-pixel output as the element says, a
    # 1 turning the film into a mosaic. RLE's and JPEG-LS's plugins set the layout of their own output over this.
    codec_layout = {"planar_configuration": 0} if isinstance(syntax, UID) and syntax.is_encapsulated else {}
    ds.pixel_array_options(decoding_plugin="pyjpegls" if charls else "", allow_excess_frames=False,
                           correct_unused_bits=unused == "mask", **codec_layout)  # fmt: skip
    arr = ds.pixel_array
    if unused == "check":
        arr = _check_high_bits(ds, arr)
    elif unused == "clip":
        arr = _clipped(ds, arr)
    return arr


def _lossy(syntax: object) -> bool:
    """Whether a transfer syntax may compress with loss: every encapsulated one pydicom does not name lossless
    (JPEG Baseline and Extended, JPEG-LS near-lossless, JPEG 2000 and HTJ2K that are not "Lossless Only")."""
    return isinstance(syntax, UID) and syntax.is_encapsulated and not _LOSSLESS.search(syntax.name)


def _check_codestream(frame: bytes, ds: Dataset, film: _Film) -> int | None:
    """Refuse a JPEG, JPEG-LS or JPEG 2000 frame whose own size or sample precision is not the header's. pydicom
    reshapes the decoded values to the header's Rows x Columns, so a header with the two swapped turns a film into
    diagonal stripes (which score pneumonia 0.97, the film itself 0.01), and another size ends in numpy's "could not
    broadcast". Samples of more bits than Bits Allocated are cut to the header's bits as they are decoded (12-bit
    values under an 8-bit header read as banded noise, which scores pneumonia 0.88), and fewer bits than Bits Stored
    are not the values the header describes. More bits than Bits Stored is how JPEG stores, say, 10-bit values (in a
    12-bit process): those are decoded unmasked, then checked or clipped (:func:`_unused_bits`). A JPEG frame of 0
    rows, its height left to a DNL marker, is refused: pylibjpeg read an intact 12-bit one wrong (values to 2048 where
    the film's end at 264), and ran out of memory on a damaged one (2.8 GB, then killed). Returns the frame's
    precision, None when the frame does not say it."""
    # JPEG 2000, a codestream or a JP2 file around one: SOC then SIZ (Xsiz, Ysiz, XOsiz, YOsiz, ..., Csiz, then
    # each component's Ssiz: its precision less one, the top bit its sign)
    siz = frame.find(b"\xff\x4f\xff\x51") if frame[:2] == b"\xff\x4f" or frame[4:8] == b"jP  " else -1
    components = int.from_bytes(frame[siz + 40 : siz + 42], "big") if siz >= 0 else 0
    if components and len(frame) >= siz + 42 + 3 * components:
        xsiz, ysiz, xosiz, yosiz = (int.from_bytes(frame[siz + i : siz + i + 4], "big") for i in (8, 12, 16, 20))
        precision = max((frame[siz + 42 + 3 * i] & 0x7F) + 1 for i in range(components))
        info: tuple[int, int, int, int] | None = (ysiz - yosiz, xsiz - xosiz, components, precision)
    else:
        info = jpeg.frame_info(frame) if frame[:2] == b"\xff\xd8" else None
    if info is None:
        return None
    rows, cols, components, precision = info
    if not rows and frame[:2] == b"\xff\xd8":
        raise pixels.DecodeError("the compressed frame's header gives it 0 rows, leaving its height to a DNL marker "
                                 "after its first scan, which the JPEG decoders here misread: export the film again")
    if (rows, cols, components) != (film.rows, film.cols, film.samples):
        raise pixels.DecodeError(
            f"the compressed frame is {cols} x {rows} pixels with {components} component(s); the header says "
            f"{film.cols} x {film.rows} with {film.samples} sample(s): the header does not describe the pixel data "
            "(Rows and Columns swapped, or another image's frame)")
    allocated, stored = ds.get("BitsAllocated"), ds.get("BitsStored")
    if isinstance(allocated, int) and precision > allocated:
        raise pixels.DecodeError(f"the compressed frame's samples are {precision}-bit, wider than Bits Allocated "
                                 f"{allocated} (High Bit {ds.get('HighBit')}, Bits Stored {stored}): {_WRAPS}")
    if isinstance(stored, int) and precision < stored:
        raise pixels.DecodeError(
            f"the compressed frame's samples are {precision}-bit, below Bits Stored {stored}: they are not the "
            "values the header describes (its window and rescale are for other values); the header does not "
            "describe the pixel data (Bits Stored and High Bit too large)")
    return precision


def _unused_bits(ds: Dataset, syntax: object, precision: int | None) -> str:
    """What is done with stored values' bits above High Bit, in words wider than Bits Stored: ``"mask"`` them off
    (pydicom's way, sign-extending signed values from High Bit: where an overlay plane, 60xx,0102 Overlay Bit
    Position, claims them), ``"check"`` that none is set but a signed value's sign (:func:`_check_high_bits`), or
    ``"clip"`` values past the stored range (:func:`_clipped`: a lossy frame of more bits than Bits Stored, whose
    codec overshoots the range near saturated edges: ringing, or JPEG-LS's NEAR error)."""
    allocated, high, stored = ds.get("BitsAllocated"), ds.get("HighBit"), ds.get("BitsStored")
    if ("PixelData" not in ds or allocated not in (8, 16, 32) or not isinstance(high, int) or high + 1 >= allocated
            or any(tag.element == 0x0102 and 0x6000 <= tag.group <= 0x601E for tag in ds.keys())):
        return "mask"
    if _lossy(syntax) and isinstance(precision, int) and isinstance(stored, int) and precision > stored:
        return "clip"
    return "check" if ds.get("PixelRepresentation") in (0, 1) else "mask"


def _check_high_bits(ds: Dataset, values: np.ndarray) -> np.ndarray:
    """Decoded (unmasked) stored values, refused when they use bits above High Bit, whatever the transfer syntax:
    masked off, 14-bit values under a 12-bit header wrap into bands (0.09 correlation with the film; signed, 0.12,
    scored 0.04 with no warning), and a lossless codec never overshoots, so such values are the header's fault, not
    the codec's. Signed values may fill those bits with their sign (sign-extended) or leave them clear, one way
    for the whole film (returned sign-extended); any other use of them is refused."""
    high, largest = ds.HighBit, int(values.max(initial=0))
    if ds.get("PixelRepresentation") != 1:
        if largest >> (high + 1):
            raise pixels.DecodeError(
                f"pixel values use bits above High Bit {high} (Bits Stored {ds.get('BitsStored')}, largest value "
                f"{largest}) and no overlay claims them: {_WRAPS}")
        return values
    sign, smallest = 1 << high, int(values.min(initial=0))
    # sign-extended: -sign to sign - 1; bits above clear: 0 to 2 * sign - 1 (a negative value at sign or more)
    if smallest < -sign or largest >= 2 * sign or (smallest < 0 and largest >= sign):
        raise pixels.DecodeError(
            f"signed pixel values use bits above High Bit {high} for more than their sign (Bits Stored "
            f"{ds.get('BitsStored')}, values {smallest} to {largest}) and no overlay claims them: {_WRAPS}")
    if largest >= sign:  # bits above clear: set them where the sign bit is (in place: no copy of a large film)
        np.bitwise_or(values, -2 * sign, out=values, where=values >= sign)
    return values


def _clipped(ds: Dataset, values: np.ndarray) -> np.ndarray:
    """A lossy frame's decoded values clipped to the stored range (0 to 2**BitsStored - 1, or the signed range):
    a codec's overshoot near a saturated edge (a NEAR 5 JPEG-LS frame's 1028 over 10 bits, a 40:1 JPEG 2000
    frame's 4219 over 12) is the brightest or darkest value, where masking would wrap a bright pixel to dark.
    Values further out than :data:`_OVERSHOOT` of the range are no overshoot but a header that says too few bits
    (12-bit values under Bits Stored 8), refused as uncompressed ones are."""
    stored = ds.BitsStored
    signed = ds.get("PixelRepresentation") == 1
    low, high = (-(1 << (stored - 1)), (1 << (stored - 1)) - 1) if signed else (0, (1 << stored) - 1)
    slack = math.ceil((1 << stored) * _OVERSHOOT)
    smallest, largest = int(values.min(initial=0)), int(values.max(initial=0))
    if not signed and largest > high + slack:
        _check_high_bits(ds, values)
    if smallest < low - slack or largest > high + slack:
        raise pixels.DecodeError(
            f"pixel values lie beyond Bits Stored {stored} (High Bit {ds.HighBit}, values {smallest} to {largest}), "
            f"further than a lossy codec overshoots: {_WRAPS}")
    return np.clip(values, low, high)


def _check_length(ds: Dataset, syntax: UID, film: _Film) -> None:
    """Refuse pixel data that holds more or less than the header's one frame, before it is decoded: pydicom reads
    excess data as more frames (each decoded and put through the LUTs: the header's decode limit bounds nothing), a
    shorter Rows or Columns shears the film, and either is a film read wrong. Trailing bytes short of one row are
    padding (pydicom drops them)."""
    keyword = next(k for k in _PIXEL_KEYWORDS if k in ds)
    data = ds[keyword].value
    if syntax.is_encapsulated:
        _count_fragments(data)
        if (frames := _frames_held(data, ds.get("ExtendedOffsetTable"), syntax == RLELossless)) > 1:
            raise pixels.DecodeError(f"pixel data holds {frames} frames; the header describes one (Number of Frames "
                                     "missing or wrong): not a single radiograph")  # fmt: skip
        return
    try:
        needed = get_expected_length(ds, "bytes")
    except AttributeError:  # an element it needs is missing, which pydicom's decoder names in its refusal
        return
    row, column = needed // film.rows, needed // film.cols
    # an odd length is padded to even; some writers pad further: by less than a row and a column, or one row of
    # zeros (pydicom's MR_small_padded.dcm), which cannot shear the film (Rows one short would lose a black row at
    # most). Columns one short leaves a column's bytes over, less than a row in a film wider than tall: read so,
    # every row shifts one pixel further than the one above (a sheared film, which would be scored)
    excess = len(data) - needed
    padding = excess < max(min(row, column), 2) or (excess == row and not any(memoryview(data)[needed:]))
    if excess < 0 or not padding:
        raise pixels.DecodeError(
            f"pixel data holds {len(data):,} bytes; the header's {film.rows} rows x {film.cols} columns x "
            f"{film.samples} sample(s) x {ds.get('BitsAllocated')} bits need {needed:,}: the header does not describe "
            "the pixel data (wrong Rows, Columns or bits, or frames it does not count)"
        )


def _check_planar_configuration(ds: Dataset, syntax: UID, film: _Film) -> None:
    """Refuse uncompressed colour pixel data that Planar Configuration mislabels: color-by-plane samples read
    color-by-pixel make a 3 x 3 mosaic of shrunken films, and color-by-pixel ones read color-by-plane mix three
    parts of the film into each pixel; either would be scored. The pixel data is read both ways
    (:func:`_picture_layout` says which is a picture) and the stated way must be it. An image under
    :data:`_LAYOUT_MIN_SIDE` is read as stated, and a missing or invalid value is left to pydicom, whose refusal
    names it."""
    stated = ds.get("PlanarConfiguration")
    if stated not in (0, 1) or min(film.rows, film.cols) < _LAYOUT_MIN_SIDE:
        return
    # the samples in the order stored (YBR_FULL_422's expanded to three a pixel, as pydicom reads them), unconverted
    stored = get_decoder(syntax).as_array(ds, index=0, raw=True, as_writeable=False, planar_configuration=0)[0]
    readings = {0: stored, 1: stored.reshape(3, film.rows, film.cols).transpose(1, 2, 0)}
    layout, evidence = _picture_layout(readings, film.photometric, ds.get("BitsStored"))
    if layout is not None and layout != stated:
        raise pixels.DecodeError(
            f"Planar Configuration (0028,0006) is {stated} ({_LAYOUTS[stated]}), but the pixel data is stored "
            f"{_LAYOUTS[layout]} ({evidence}): read as the header says, the film would be garbled; the header does "
            "not describe the pixel data")


def _picture_layout(readings: dict[int, np.ndarray], photometric: str, bits_stored: object) -> tuple[int | None, str]:
    """Which reading of three-sample pixel data (Planar Configuration value -> rows x columns x samples) is a
    picture, and why; None when they cannot be told apart. A film stored as colour is grey: its channels agree (RGB
    equal, or YBR's chroma at its midpoint) read the right way, and only by chance the wrong way. Else the smoother
    one: a picture's neighbouring pixels are alike, and the wrong reading sets side by side pixels three apart, or a
    third of a row apart, in the picture (the two signs dcm4che's planarconfig tool reads). Both are read on
    :data:`_LAYOUT_ROWS` pairs of rows spread over the image."""
    rows = readings[0].shape[0]
    at = np.unique(np.linspace(0, rows - 2, min(_LAYOUT_ROWS, rows - 1)).round().astype(np.intp))
    pairs = {p: (a[at].astype(np.float64), a[at + 1].astype(np.float64)) for p, a in readings.items()}
    grey = {p: all(_grey(part, photometric, bits_stored) for part in pair) for p, pair in pairs.items()}
    if grey[0] != grey[1]:
        layout = 0 if grey[0] else 1
        return layout, (f"its colour channels agree read {_LAYOUTS[layout]}, a grey film stored as colour, and not "
                        f"read {_LAYOUTS[1 - layout]}")
    rough = {p: float(np.abs(below - top).mean() + np.abs(np.diff(top, axis=1)).mean())
             for p, (top, below) in pairs.items()}
    if rough[0] == rough[1]:
        return None, ""
    layout = 0 if rough[0] < rough[1] else 1
    if not rough[layout]:
        return layout, f"its neighbouring pixels are alike read {_LAYOUTS[layout]}, and not read {_LAYOUTS[1 - layout]}"
    return layout, (f"its neighbouring pixels differ {rough[1 - layout] / rough[layout]:.3g} times as much read "
                    f"{_LAYOUTS[1 - layout]} as read {_LAYOUTS[layout]}")


def _grey(samples: np.ndarray, photometric: str, bits_stored: object) -> bool:
    """Whether rows x columns x 3 samples are grey: RGB's three equal, or YBR's chroma (Cb, Cr) at its midpoint."""
    if photometric.startswith("YBR") and isinstance(bits_stored, int):
        return bool((samples[..., 1:] == 1 << (bits_stored - 1)).all())
    return photometric == "RGB" and bool((samples[..., :1] == samples[..., 1:]).all())


def _count_fragments(data: bytes) -> None:
    """Refuse encapsulated pixel data of over :data:`~pneumoscan.data.pixels.MAX_SEGMENTS` items (the offset table,
    then the fragments), counted from their lengths before pydicom walks them in Python (2.4 million empty fragments
    took 8.8 s). The count stops at the limit; a malformed item ends it, for pydicom to refuse."""
    at, count = 0, 0
    while data[at : at + 4] == b"\xfe\xff\x00\xe0" and len(data) >= at + 8:  # (FFFE,E000) Item, little endian
        if (count := count + 1) > pixels.MAX_SEGMENTS:
            raise pixels.too_many_segments("pixel-data fragments")
        at += 8 + int.from_bytes(data[at + 4 : at + 8], "little")


def _frames_held(data: bytes, extended: bytes | None, rle: bool) -> int:
    """How many frames encapsulated pixel data holds: the entries of its Extended or Basic Offset Table, else its
    fragments that begin a frame (for RLE every fragment: one a frame, PS3.5 A.4.2)."""
    if extended:
        return len(extended) // 8
    buffer = io.BytesIO(data)
    offsets = parse_basic_offsets(buffer)
    if offsets:
        return len(offsets)
    return sum(rle or fragment.startswith(_CODESTREAM_STARTS) for fragment in generate_fragments(buffer))


def _as_stored(ds: Dataset, photometric: str, bits: str) -> bool:
    """Whether the stored values are display values already: unsigned 8-bit, with no rescale, modality LUT,
    window or VOI LUT to map them (a scanned film or a secondary capture). Those are kept as a PNG's would be, so
    the same pixels give the same score as DICOM, PNG or JPEG; a min-max stretch would raise their contrast."""
    return (
        bits == "8"
        and int(ds.get("PixelRepresentation") or 0) == 0
        and photometric != "PALETTE COLOR"
        and float(ds.get("RescaleSlope", 1) or 1) == 1
        and float(ds.get("RescaleIntercept", 0) or 0) == 0
        and not any(_given(ds, k) for k in ("ModalityLUTSequence", "WindowCenter", "VOILUTSequence"))
    )


def _padding(ds: Dataset, stored: np.ndarray) -> np.ndarray | None:
    """Where the stored values are padding (PS3.3 C.7.5.1.1.2: Pixel Padding Value, through Pixel Padding Range
    Limit when given, in either order, inclusive), the area outside a shutter or collimator that is no image: left
    out of the stretch, where a value far from the film's would squeeze the film into a few grey levels. None when
    there is none; a film that is all padding is refused."""
    if "PixelData" not in ds or not _given(ds, "PixelPaddingValue"):
        return None
    value = _as_pixel_value(ds, "PixelPaddingValue")
    limit = _as_pixel_value(ds, "PixelPaddingRangeLimit") if _given(ds, "PixelPaddingRangeLimit") else value
    low, high = sorted((value, limit))
    padding = (stored >= low) & (stored <= high)
    if padding.all():
        raise pixels.DecodeError("blank image: every pixel is padding (Pixel Padding Value): the film holds no image")
    return padding if padding.any() else None


def _as_pixel_value(ds: Dataset, keyword: str) -> int:
    """A padding element's value as the stored pixel values are (PS3.3 C.7.5.1.1.2: its VR is US or SS as Pixel
    Representation says), whatever VR the file gives it: 0x8000 written US under signed pixels is -32768 (read as
    32768 it matched no pixel, and the padding squeezed the film into a few grey levels), 0xFFFF written SS under
    unsigned ones 65535 (read as -1 with a range limit of 60000, the film became padding). Written as bytes (OB, OW),
    its two bytes are read in the file's byte order. A value beyond 16 bits is taken as it is."""
    value = ds[keyword].value
    if isinstance(value, bytes):
        if len(value) != 2:
            raise pixels.DecodeError(f"malformed DICOM header: {keyword} is {len(value)} bytes (VR {ds[keyword].VR}), "
                                     "where it is one 16-bit value")  # fmt: skip
        little = ds.original_encoding[1] is not False
        value = int.from_bytes(value, "little" if little else "big")
    if isinstance(value, MultiValue) or not isinstance(value, int):
        raise pixels.DecodeError(f"malformed DICOM header: {keyword} is not one whole number ({ds[keyword].VR})")
    if not -0x8000 <= value <= 0xFFFF:
        return value
    bits = value & 0xFFFF
    return bits - 0x10000 if ds.get("PixelRepresentation") == 1 and bits & 0x8000 else bits


def _gray(ds: Dataset) -> tuple[Image.Image, np.ndarray | None]:
    """The film as a viewer shows it, in 8-bit grey: bright bone, dark lungs, padding black, pixels square; and the
    film's values (padding left out) before its window or VOI LUT, None when it has none, so a refusal can tell
    whether the window is what left too little of the film."""
    film = _header(ds)
    photometric, monochrome = film.photometric, film.photometric in _POLARITY
    before_window = None
    for keyword in _GREY_NUMBERS:  # written blank (spaces only): absent, as an empty element is to pydicom's LUTs
        if keyword in ds and not _given(ds, keyword):
            del ds[keyword]
    try:
        as_stored = _as_stored(ds, photometric, film.bits)
        arr = _pixels(ds, film)
        padding = _padding(ds, arr) if monochrome else None
        if monochrome:
            # stored values -> physical values (rescale / modality LUT) -> display values (VOI LUT / window)
            physical = apply_modality_lut(arr, ds)
            arr = apply_voi_lut(physical, ds)
            if arr is not physical and (_given(ds, "VOILUTSequence") or _given(ds, "WindowCenter")):
                before_window = physical if padding is None else physical[~padding]
        elif photometric == "PALETTE COLOR":
            arr = apply_color_lut(arr, ds)
    except (pixels.DecodeError, *_NOT_THE_FILM):
        raise
    except BaseException as e:  # a damaged codestream (a decoder's panic too), no plugin for the syntax, bad LUTs...
        # pydicom lists each plugin's reason on its own line, under a heading that ends in ':'
        reason = "; ".join(line.strip() for line in str(e).splitlines() if line.strip()).replace(":; ", ": ")
        raise pixels.DecodeError(f"cannot decode DICOM pixel data ({_syntax(ds)}): {reason}") from None
    # RGB (three samples, or one through the palette): the same luma weights as Pillow's convert('L')
    if arr.ndim == 3 and arr.shape[-1] == 3 and (film.samples == 3 or photometric == "PALETTE COLOR"):
        arr = arr @ np.array([0.299, 0.587, 0.114])
    if arr.ndim != 2:
        raise pixels.DecodeError(f"malformed DICOM pixel data: decoded as {' x '.join(map(str, arr.shape))} values "
                                 f"where the header describes {film.rows} x {film.cols} x {film.samples} "
                                 f"({photometric})")  # fmt: skip
    if padding is not None:  # padding takes the film's lowest value, out of the stretch's way; painted black below
        arr[padding] = arr.min(where=~padding, initial=arr.max())
    if as_stored:
        gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    else:
        # After a window that clips both ends (every clinical chest window) min-max is the window itself; it also
        # copes with VOI LUTs whose entries use fewer bits than their descriptor claims.
        gray = pixels.minmax_u8(arr)
    if photometric == "MONOCHROME1":
        gray = 255 - gray
    if padding is not None:
        gray[padding] = 0
    image = Image.fromarray(gray)
    if (film.width, film.height) != (film.cols, film.rows):  # shrink the finer axis (box filter: area average)
        image = image.resize((film.width, film.height), Image.Resampling.BOX)
    return image, before_window


def _distinct(values: np.ndarray) -> int:
    """How many different values ``values`` holds."""
    return len(np.unique(values))


def _window_words(ds: Dataset) -> str:
    """The VOI transform a film was shown through, in words: its VOI LUT (which pydicom applies in preference), or
    its window's first Window Center and Width (the one applied)."""
    if _given(ds, "VOILUTSequence"):
        return "its VOI LUT"
    center, width = (v[0] if isinstance(v, MultiValue) else v for v in (ds.WindowCenter, ds.WindowWidth))
    return f"its window (WindowCenter {float(center):g}, WindowWidth {float(width):g})"


def _syntax(ds: Dataset) -> str:
    """The transfer syntax's name, for a reason that says which codec a file needs."""
    try:
        uid = ds.file_meta.TransferSyntaxUID
        return uid.name if uid.is_transfer_syntax else f"unknown transfer syntax {uid}"
    except Exception:
        return "no transfer syntax recorded"

