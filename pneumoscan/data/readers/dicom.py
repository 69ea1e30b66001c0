"""DICOM through pydicom: the header's limits checked before the pixels are read, then the modality and VOI LUTs
(the window) and MONOCHROME1's inversion, as a viewer shows the film.

pydicom's messages quote element values (a patient's name, id or birth date), so its logs are redacted here.
The reports and overlays this package writes are refused here too: they are in the film's study, and a second run
over the same folder or PACS study must not score its own Grad-CAM overlay as a chest film.
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, get_decoder
from pydicom.uid import JPEGLSLossless, JPEGLSNearLossless

from pneumoscan.data import pixels
from .base import Reader

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_JPEG_LS = (JPEGLSLossless, JPEGLSNearLossless)
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
    """The file as a pydicom dataset; ``header_only`` leaves large values (the pixels) on disk."""
    try:
        # force: .dcm files without the 128-byte preamble are common; defer_size keeps pixels on disk
        return pydicom.dcmread(pixels.stream(src), force=True, defer_size="64 KB" if header_only else None)
    except Exception as e:
        raise pixels.DecodeError(f"not a readable DICOM file: {e}") from None


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

