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
import math
import re
import warnings
import zlib
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pydicom
import simplejpeg
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
from .base import Reader

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_JPEG_LS = (JPEGLSLossless, JPEGLSNearLossless)
_JPEG_DCT = (JPEGBaseline8Bit, JPEGExtended12Bit)  # the lossy syntaxes whose frames _check_jpeg_frame checks
_DEFER_SIZE = "64 KB"  # a header-only read leaves values larger than this (the pixels) unread
_ENDS_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")  # the marker after a scan: not stuffing, a restart or fill
_RESTART = re.compile(rb"\xff([\xd0-\xd7])")
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
        _check_jpeg_frame(get_frame(ds.PixelData, 0, number_of_frames=1))
    if syntax in _JPEG_LS and "pyjpegls" in get_decoder(syntax).available_plugins:
        try:
            ds.pixel_array_options(decoding_plugin="pyjpegls")
            return ds.pixel_array
        except Exception:  # fall through to every plugin, whose reasons say more
            ds.pixel_array_options(decoding_plugin="")
    return ds.pixel_array


def _check_jpeg_frame(frame: bytes) -> None:
    """Raise ValueError ("Corrupt JPEG data: ...") when a lossy JPEG frame's entropy-coded data is damaged or cut
    short: pydicom's plugins decode it anyway, the missing part flat grey. An 8-bit frame is decoded by libjpeg-turbo
    at 1/8 scale for this, which still reads every coefficient (about 3 ms for a 1776 x 1416 film, half the full
    decode); a 12-bit one (JPEG Extended, process 4), which simplejpeg does not decode, is checked by
    :func:`_check_huffman_scans` (about 150 ms)."""
    if _jpeg_precision(frame) == 8:
        colorspace = "CMYK" if simplejpeg.decode_jpeg_header(frame)[2] in ("CMYK", "YCCK") else "GRAY"
        simplejpeg.decode_jpeg(frame, colorspace, min_factor=8, strict=True)
        return
    try:
        _check_huffman_scans(frame)
    except (IndexError, KeyError):  # a segment shorter than its fields, a table or component never defined
        raise ValueError("Corrupt JPEG data: malformed marker segment") from None


def _jpeg_precision(frame: bytes) -> int | None:
    """The sample precision (bits) in a JPEG codestream's frame header; None when no frame header comes first."""
    pos = 2  # after SOI
    while pos + 5 <= len(frame) and frame[pos] == 0xFF:
        marker = frame[pos + 1]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn, not DHT, JPG or DAC
            return frame[pos + 4]
        if marker == 0xDA:  # a scan before any frame header
            return None
        pos += 1 if marker == 0xFF else 2 + int.from_bytes(frame[pos + 2 : pos + 4], "big")  # fill byte, segment
    return None


def _check_huffman_scans(frame: bytes) -> None:
    """Walk a sequential Huffman-coded JPEG (baseline or extended, any precision) and raise ValueError where
    libjpeg would warn of corrupt data: a code no table holds, a block of over 64 coefficients, a scan that ends
    before its last MCU or goes on past it, restart markers missing or out of order. Only code lengths are read, no
    coefficient is decoded. Progressive, lossless and arithmetic-coded frames are left to the decoder."""
    tables: dict[tuple[int, int], list[int]] = {}
    components: dict[int, tuple[int, int]] = {}
    width = height = restart = scans = 0
    pos = 2  # after SOI
    while True:
        if pos + 2 > len(frame):
            raise ValueError("Premature end of JPEG file")
        if frame[pos] != 0xFF:
            raise ValueError("Corrupt JPEG data: no marker where one is due")
        marker = frame[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:  # EOI
            break
        end = pos + 2 + int.from_bytes(frame[pos + 2 : pos + 4], "big")
        segment = frame[pos + 4 : end]
        if marker in (0xC0, 0xC1):  # SOF0, SOF1: sequential Huffman
            height, width = int.from_bytes(segment[1:3], "big"), int.from_bytes(segment[3:5], "big")
            fields = [segment[6 + 3 * i : 9 + 3 * i] for i in range(segment[5])]  # id, H << 4 | V, table
            components = {c[0]: (c[1] >> 4, c[1] & 15) for c in fields}
        elif 0xC2 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return
        elif marker == 0xC4:  # DHT: one or more tables
            at = 0
            while at < len(segment):
                counts, first = segment[at + 1 : at + 17], at + 17
                symbols = segment[first : first + sum(counts)]
                tables[segment[at] >> 4, segment[at] & 15] = _huffman_lookup(counts, symbols)
                at = first + len(symbols)
        elif marker == 0xDD:  # DRI
            restart = int.from_bytes(segment[:2], "big")
        elif marker == 0xDA:  # SOS
            if not height:  # the height comes in a DNL marker after the scan
                return
            pos = _check_scan(frame, end, segment, components, tables, (width, height), restart)
            scans += 1
            continue
        pos = end
    if not scans:
        raise ValueError("JPEG datastream contains no image")


def _huffman_lookup(counts: bytes, symbols: bytes) -> list[int]:
    """Every 16-bit window of the bit stream -> code length << 8 | symbol of the code it starts with, 0 where no
    code does: one lookup a symbol."""
    lookup, code, at = [0] * 65536, 0, 0
    for length, count in enumerate(counts, 1):
        for symbol in symbols[at : at + count]:
            if code >> length:
                raise ValueError("Bogus Huffman table definition")
            span = 1 << (16 - length)
            lookup[code * span : (code + 1) * span] = [length << 8 | symbol] * span
            code += 1
        at += count
        code <<= 1
    return lookup


def _check_scan(frame: bytes, start: int, sos: bytes, components: dict[int, tuple[int, int]],
                tables: dict[tuple[int, int], list[int]], size: tuple[int, int], restart: int) -> int:  # fmt: skip
    """Check the entropy-coded data of the scan from ``start``; the position of the marker that ends it."""
    (width, height), hmax, vmax = size, max(h for h, _ in components.values()), max(v for _, v in components.values())
    selected = [(sos[1 + 2 * i], sos[2 + 2 * i] >> 4, sos[2 + 2 * i] & 15) for i in range(sos[0])]
    if len(selected) == 1:  # one component: one block an MCU, over the component's own size
        (component, dc, ac) = selected[0]
        h, v = components[component]
        mcus = -(-(-(-width * h // hmax)) // 8) * -(-(-(-height * v // vmax)) // 8)
        blocks = [(tables[0, dc], tables[1, ac])]
    else:  # interleaved: each component's h x v blocks an MCU
        mcus = -(-width // (8 * hmax)) * -(-height // (8 * vmax))
        blocks = [(tables[0, dc], tables[1, ac]) for c, dc, ac in selected for _ in range(math.prod(components[c]))]
    found = _ENDS_SCAN.search(frame, start)
    if found is None:
        raise ValueError("Premature end of JPEG file")
    pieces = _RESTART.split(frame[start : found.start()]) if restart else [frame[start : found.start()]]
    if any(index[0] != 0xD0 + number % 8 for number, index in enumerate(pieces[1::2])):
        raise ValueError("Corrupt JPEG data: restart markers out of order")
    intervals, due = pieces[0::2], -(-mcus // restart) if restart else 1
    if len(intervals) != due:
        raise ValueError(f"Corrupt JPEG data: {len(intervals)} restart intervals where {due} are due")
    for number, raw in enumerate(intervals):
        data = raw.rstrip(b"\xff").replace(b"\xff\x00", b"\xff")  # fill bytes, then byte stuffing
        bits, padded, at = len(data) * 8, data + bytes(4), 0
        for _ in range(min(restart, mcus - number * restart) if restart else mcus):
            for dc, ac in blocks:
                entry = dc[(int.from_bytes(padded[at >> 3 : (at >> 3) + 3], "big") >> (8 - (at & 7))) & 0xFFFF]
                if not entry or entry & 0xFF > 16:
                    raise ValueError("Corrupt JPEG data: bad Huffman code")
                at += (entry >> 8) + (entry & 0xFF)  # the code, then the DC difference's bits
                k = 1
                while k < 64:
                    entry = ac[(int.from_bytes(padded[at >> 3 : (at >> 3) + 3], "big") >> (8 - (at & 7))) & 0xFFFF]
                    if not entry:
                        raise ValueError("Corrupt JPEG data: bad Huffman code")
                    run, bits_of_value = entry >> 4 & 15, entry & 15
                    at += (entry >> 8) + bits_of_value
                    if bits_of_value:
                        k += run + 1
                    elif run == 15:  # ZRL: 16 zeros
                        k += 16
                    else:  # EOB
                        break
                if k > 64:
                    raise ValueError("Corrupt JPEG data: a block of more than 64 coefficients")
            if at > bits:
                raise ValueError("Corrupt JPEG data: premature end of data segment")
        if -(-at // 8) < len(data):
            raise ValueError(f"Corrupt JPEG data: {len(data) - -(-at // 8)} extraneous bytes before marker")
    return found.start()


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

