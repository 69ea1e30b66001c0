"""DICOM through pydicom: the header's limits checked before the pixels are read, then the modality and VOI LUTs
(the window) and MONOCHROME1's inversion, as a viewer shows the film.

pydicom's messages quote element values (a patient's name, id or birth date), so its logs are redacted here.
The reports and overlays this package writes are refused here too: they are in the film's study, and a second run
over the same folder or PACS study must not score its own Grad-CAM overlay as a chest film.

Two faults pydicom lets through are stopped here: a deflated dataset is inflated within the decode limit (pydicom
inflates all of it first), and a JPEG Baseline or Extended frame whose entropy-coded data is damaged is refused
(pydicom's JPEG plugins ignore libjpeg's corrupt-data warnings and fill what is missing with flat grey).
"""

from __future__ import annotations

import io
import logging
import re
import warnings
import zlib
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom import filereader
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.encaps import get_frame
from pydicom.filebase import DicomBytesIO
from pydicom.misc import size_in_bytes
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, get_decoder
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian, JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLSLossless, JPEGLSNearLossless,
)  # fmt: skip

from pneumoscan.data import pixels
from . import jpeg
from .base import Reader

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_JPEG_LS = (JPEGLSLossless, JPEGLSNearLossless)
_JPEG_DCT = (JPEGBaseline8Bit, JPEGExtended12Bit)  # the lossy syntaxes whose frames jpeg.check_frame checks
_DEFER_SIZE = "64 KB"  # a header-only read leaves values larger than this (the pixels) unread
# From the first quote to the last: a value may itself hold quotes ("'['20190317', '20190318']'"), and pairing
# them one by one would leave the dates between the pairs in the clear.
_QUOTED = re.compile(r"['\"].*['\"]", re.DOTALL)
MANUFACTURER = "pneumoscan"  # the Manufacturer of every DICOM object this package writes (SR, Secondary Capture)
OWN_OUTPUT = "a pneumoscan output (Grad-CAM Secondary Capture or DICOM SR), not a film"


class DicomReader(Reader):
    name = "DICOM"
    formats = ("DICOM",)
    suffixes = frozenset({".dcm"})  # .dcm files without the 128-byte preamble (and so the magic) are common

    def sniff(self, head: bytes) -> bool:
        return head[128:132] == b"DICM"

    def header(self, src: Path | bytes) -> dict:
        width, height, photometric, bits = _header(read_dataset(src, header_only=True))
        return {"width": width, "height": height, "mode": f"{photometric}/{bits}", "format": "DICOM", "quality": None}

    def gray(self, src: Path | bytes, target: int | None) -> np.ndarray:
        return np.asarray(pixels.reduce(Image.fromarray(_gray(read_dataset(src, header_only=False))), target))


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
            return pydicom.dcmread(pixels.stream(src), force=True, defer_size=_DEFER_SIZE if header_only else None)
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
                f"{len(deflated) / 2**10:,.0f} KiB (refusing a possible decompression bomb)"
            )
    return zlib.decompress(deflated, -zlib.MAX_WBITS, max(size, 1))


def _header(ds: Dataset) -> tuple[int, int, str, str]:
    """(width, height, photometric interpretation, bits stored) of a single-frame image object. pydicom converts
    header values only when they are read, so every read happens here, where a damaged value becomes a reason."""
    if is_own_output(ds):
        raise pixels.DecodeError(OWN_OUTPUT)
    try:
        has_pixels = any(k in ds for k in _PIXEL_KEYWORDS)
        rows, cols = (int(ds.get(k) or 0) for k in ("Rows", "Columns"))
        frames = int(ds.get("NumberOfFrames") or 1)
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
        bits = str(ds.get("BitsStored", "?"))
        samples = int(ds.get("SamplesPerPixel") or 1)
    except Exception as e:
        raise pixels.DecodeError(f"malformed DICOM header: {e}") from None
    if not has_pixels:
        raise pixels.DecodeError("DICOM file has no pixel data (not an image object)")
    if not rows or not cols:
        raise pixels.DecodeError("DICOM file has pixel data but no Rows/Columns")
    if frames > 1:
        raise pixels.DecodeError(
            f"multi-frame DICOM ({frames} frames) is not a single radiograph; export the frame to read"
        )
    if rows * cols > pixels.MAX_PIXELS:
        raise pixels.too_large(cols, rows)
    if rows * cols * samples * 8 > pixels.MAX_DECODED_BYTES:  # the LUT and window arithmetic is float64
        raise pixels.too_many_bytes(cols, rows, samples * 8, f"DICOM ({samples} sample(s) as float64)")
    return cols, rows, photometric, bits


def _pixels(ds: Dataset) -> np.ndarray:
    """The stored pixel values (YBR converted to RGB), JPEG-LS through CharLS (pyjpegls) when it is installed: on a
    1776 x 1416 12-bit film it decodes in 84 ms against pylibjpeg-libjpeg's 358 ms (benchmarks/bench_dicom.py), and
    pydicom would try pylibjpeg first. Every other syntax, and a JPEG-LS file CharLS refuses, gets pydicom's order."""
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax in _JPEG_DCT:
        jpeg.check_frame(get_frame(ds.PixelData, 0, number_of_frames=1))
    if syntax in _JPEG_LS and "pyjpegls" in get_decoder(syntax).available_plugins:
        try:
            ds.pixel_array_options(decoding_plugin="pyjpegls")
            return ds.pixel_array
        except Exception:  # fall through to every plugin, whose reasons say more
            ds.pixel_array_options(decoding_plugin="")
    return ds.pixel_array


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
        and not any(k in ds for k in ("ModalityLUTSequence", "WindowCenter", "VOILUTSequence"))
    )


def _gray(ds: Dataset) -> np.ndarray:
    _, _, photometric, bits = _header(ds)
    try:
        as_stored = _as_stored(ds, photometric, bits)
        arr = _pixels(ds)
        if photometric in ("MONOCHROME1", "MONOCHROME2"):
            # stored values -> physical values (rescale / modality LUT) -> display values (VOI LUT / window)
            arr = apply_voi_lut(apply_modality_lut(arr, ds), ds)
        elif photometric == "PALETTE COLOR":
            arr = apply_color_lut(arr, ds)
    except Exception as e:  # a damaged codestream, a syntax no installed plugin decodes, broken LUTs, short data...
        # pydicom lists each plugin's reason on its own line, under a heading that ends in ':'
        reason = "; ".join(line.strip() for line in str(e).splitlines() if line.strip()).replace(":; ", ": ")
        raise pixels.DecodeError(f"cannot decode DICOM pixel data ({_syntax(ds)}): {reason}") from None
    if arr.ndim == 3:  # RGB: same luma weights as Pillow's convert('L')
        arr = arr[..., :3] @ np.array([0.299, 0.587, 0.114])
    if arr.ndim != 2:
        raise pixels.DecodeError(f"unsupported DICOM pixel layout {arr.shape} ({photometric})")
    if as_stored:
        gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    else:
        # After a window that clips both ends (every clinical chest window) min-max is the window itself; it also
        # copes with VOI LUTs whose entries use fewer bits than their descriptor claims.
        gray = pixels.minmax_u8(arr)
    return 255 - gray if photometric == "MONOCHROME1" else gray


def _syntax(ds: Dataset) -> str:
    """The transfer syntax's name, for a reason that says which codec a file needs."""
    try:
        uid = ds.file_meta.TransferSyntaxUID
        return uid.name if uid.is_transfer_syntax else f"unknown transfer syntax {uid}"
    except Exception:
        return "no transfer syntax recorded"

