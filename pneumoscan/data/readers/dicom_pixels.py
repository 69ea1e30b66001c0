"""DICOM pixel data to the film as a viewer shows it, in 8-bit grey (:func:`gray`): the stored values checked against
the header, decoded, then the modality and VOI LUTs (the window), padding and MONOCHROME1's inversion, pixels made
square; a film left with too few grey levels is refused, as its window's fault when the window is what did it.

:mod:`.dicom` reads the file and checks its header; what it found (:class:`Film`) comes here with the dataset. The
dataset helpers both modules use (:func:`given`, :func:`syntax_name`, and which elements hold pixels or map them to
grey) are here, below the header checks.

Faults pydicom lets through are stopped here: a JPEG Baseline, Extended or Lossless frame whose entropy-coded data is
damaged is refused (pydicom's JPEG plugins ignore libjpeg's corrupt-data warnings and fill what is missing with flat
grey or garbage); pixel data that holds more or less than the header describes is refused before it is decoded
(pydicom would return the excess as extra frames, decoding them all); uncompressed colour pixel data that Planar
Configuration mislabels is refused (pydicom reshapes it as the element says: a mosaic), and a compressed frame's
colours are read as its codec lays them out, whatever the element says; grey values whose sign Pixel Representation
gets wrong, which pydicom reads wrapped round into bands, are refused; and any error a decoder raises, a Rust panic
included, becomes a refusal.
"""

from __future__ import annotations

import io
import math
import re
import struct
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
from PIL import Image
from pydicom import config
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragments, get_frame, parse_basic_offsets
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, get_decoder
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import (
    UID, JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1, JPEGLSLossless, JPEGLSNearLossless,
    RLELossless,
)  # fmt: skip

from rle.utils import decode_pixel_data

from pneumoscan.data import pixels
from . import jpeg

PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
POLARITY = {"MONOCHROME1": "INVERSE", "MONOCHROME2": "IDENTITY"}  # the Presentation LUT Shape each implies
GREY_NUMBERS = ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth")  # what maps values to grey
VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")  # VOI LUT Function's defined terms (PS3.3 C.11.2.1.3)
_JPEG_LS = (JPEGLSLossless, JPEGLSNearLossless)
_RLE_ONE_SEGMENT = struct.pack("<16L", 1, 64, *[0] * 14)  # an RLE header of one segment, right after it
# the syntaxes whose frames jpeg.check_frame checks (Huffman-coded JPEG: lossy DCT and lossless process 14)
_JPEG_CHECKED = (JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1)
# A fragment that begins a frame: JPEG and JPEG-LS start with SOI, JPEG 2000 with SOC then SIZ. Neither can begin a
# fragment that continues a frame's entropy-coded data, where 0xFF is followed by a stuffed byte or a restart marker.
_CODESTREAM_STARTS = (b"\xff\xd8", b"\xff\x4f\xff\x51")
# Planar Configuration's values (PS3.3 C.7.6.3.1.3): how three-sample pixel data lays out its samples
_LAYOUTS = {0: "color-by-pixel", 1: "color-by-plane"}
_LAYOUT_MIN_SIDE = 8  # a smaller image holds too few neighbouring pixels to tell its layout by (a 3 x 3 one cannot)
_LAYOUT_ROWS = 128  # pairs of rows whose neighbouring pixels tell the layout: enough, and cheap on any film
# how much smoother the film read with Rows and Columns swapped must be to refuse the header (:func:`_check_shape`):
# a real film read right is tens of times smoother than read swapped (1.8 against 77 grey levels on a 1776 x 1416
# film), and noise alone is alike both ways
_SWAPPED = 3.0
# how many times as far apart the neighbouring values either side of half the stored range must typically be read as
# the header says as read with the other sign, to refuse the header's Pixel Representation with nothing else to say
# the sign (:func:`_sign_misread`): on 265 training films made 12-bit, at least 8.5 read with the wrong sign, at most
# 0.09 read right; a synthetic film of sharp edges three quarters of the range high, 3.0; noise, 1
_SIGN_MISREAD = 5.0
# what a decoder may raise that is no fault of the film, and must end the run as it would anywhere else
_NOT_THE_FILM = (KeyboardInterrupt, SystemExit, GeneratorExit)
# why stored values wider than the header's bits are refused, whether the decoded values or a codestream show it
_WRAPS = ("read as stored they would wrap into bands; the header does not describe the pixel data (Bits Stored and "
          "High Bit too small)")
# How far past the stored range a lossy frame's values may lie and be clipped, as a share of the range: ringing
# past a step is about 9% of its height (Gibbs); an extra stored bit the header leaves out doubles the range.
_OVERSHOOT = 0.25
# Where an enhanced image object states the rescale and the window of a frame (PS3.3 C.7.6.16.2.9, C.7.6.16.2.10)
_FRAME_GROUPS = {"PixelValueTransformationSequence": ("RescaleSlope", "RescaleIntercept"),
                 "FrameVOILUTSequence": ("WindowCenter", "WindowWidth", "VOILUTFunction", "VOILUTSequence")}
_LOSSLESS = re.compile(r"(?<!near-)lossless", re.IGNORECASE)  # in a transfer syntax's name: not near-lossless
# Stored values are looked up this many pixels at a time (a block's indices are 8 bytes a pixel: 2 MB)
_BLOCK_PIXELS = 1 << 18


class Film(NamedTuple):
    """What the header says of a single-frame image object, as :mod:`.dicom`'s header checks read it. ``width`` x
    ``height``: the film as read, its pixels made square (``cols`` x ``rows`` as stored when they are)."""

    rows: int
    cols: int
    samples: int
    photometric: str
    bits: str
    width: int
    height: int


def given(ds: Dataset, keyword: str) -> bool:
    """Whether an element holds a value: one written empty (type 2) counts as absent, as pydicom's LUTs take it."""
    value = ds.get(keyword)
    return value is not None and (not hasattr(value, "__len__") or len(value) > 0)


def syntax_name(ds: Dataset) -> str:
    """The transfer syntax's name, for a reason that says which codec a file needs; an unknown one by its UID only
    when the value is one (digits and dots): any other text in its place is not repeated, as it may be anything."""
    try:
        uid = ds.file_meta.TransferSyntaxUID
        if uid.is_transfer_syntax:
            return uid.name
        return f"unknown transfer syntax {uid}" if uid.is_valid else "a transfer syntax that is no UID"
    except Exception:
        return "no transfer syntax recorded"


def gray(ds: Dataset, film: Film) -> Image.Image:
    """The film as a viewer shows it (:func:`_as_shown`), refused when it holds too few grey levels for a
    radiograph: as the window's fault when the film's values before its window or VOI LUT hold enough."""
    image, before_window = _as_shown(ds, film)
    levels = pixels.few_grey_levels(image)
    if levels is not None:
        # a window narrower than the film's values posterises a film that is none: the window is at fault
        if before_window is not None and _distinct(before_window) >= pixels.MIN_GREY_LEVELS:
            raise pixels.too_few_levels_in_window(_window_words(ds), levels)
        raise pixels.too_few_levels(f"the film holds {levels}")
    return image


def _pixels(ds: Dataset, film: Film) -> np.ndarray:
    """The stored pixel values (YBR converted to RGB) of pixel data that holds what the header describes (colour
    samples laid out as Planar Configuration says: :func:`_check_planar_configuration`), JPEG-LS through CharLS
    (pyjpegls) when it is installed: on a 1776 x 1416 12-bit film it decodes in 84 ms against pylibjpeg-libjpeg's
    358 ms (benchmarks/bench_dicom.py), and pydicom would try pylibjpeg first. A frame CharLS refuses is refused:
    libjpeg decodes a damaged JPEG-LS stream into garbage without a word. Every other syntax gets pydicom's order.
    Bits above High Bit are masked, checked or clipped as :func:`_unused_bits` says."""
    syntax = ds.file_meta.get("TransferSyntaxUID")
    precision, frame = None, b""
    if isinstance(syntax, UID) and syntax.is_transfer_syntax:
        _check_length(ds, syntax, film)
        if syntax == RLELossless:
            _check_rle_frame(get_frame(ds.PixelData, 0, number_of_frames=1), ds, film)
        elif syntax.is_encapsulated:
            frame = get_frame(ds.PixelData, 0, number_of_frames=1)
            precision = _check_codestream(frame, ds, film)
            if syntax in _JPEG_CHECKED:
                jpeg.check_frame(frame)
            elif syntax in _JPEG_LS:
                jpeg.check_ls_frame(frame)
        elif film.samples == 3 and syntax != RLELossless:  # RLE's segments are one sample each, whatever it says
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
        if overlays := _overlay_bits(ds):  # unsigned: an overlay's bits cleared, the others checked
            np.bitwise_and(arr, arr.dtype.type((1 << ds.BitsAllocated) - 1 - overlays), out=arr)
        arr = _check_high_bits(ds, arr)
    elif unused == "clip":
        arr = _clipped(ds, arr)
    _check_sign(ds, frame, arr, film)
    if not frame:  # no codestream states the frame's size: uncompressed, deflated or RLE pixel data
        _check_shape(arr, film)
    return arr


def _check_shape(values: np.ndarray, film: Film) -> None:
    """Refuse pixel data whose header has Rows and Columns swapped: with no codestream to state the frame's size,
    the byte count fits either way, and a 1776 x 1416 film read 1416 x 1776 set each row's pixels against the next
    row's in diagonal stripes, and was scored. Read in the stored order as Columns rows of Rows pixels, the right
    reading is the smoother one (as :func:`_picture_layout` tells layouts apart); refused when that is at least
    :data:`_SWAPPED` times smoother. A square image, or one under :data:`_LAYOUT_MIN_SIDE`, is read as stated."""
    if film.rows == film.cols or min(film.rows, film.cols) < _LAYOUT_MIN_SIDE:
        return

    def rough(reading: np.ndarray) -> float:
        at = _row_pairs(reading.shape[0])
        return _roughness(reading[at].astype(np.float64), reading[at + 1].astype(np.float64))

    stated, swapped = rough(values), rough(values.reshape(film.cols, film.rows, *values.shape[2:]))
    if swapped * _SWAPPED < stated:
        times = f"{stated / swapped:.3g} times as much" if swapped else "where they are alike"
        raise pixels.DecodeError(
            f"the pixel data reads as a picture {film.rows} pixels wide and {film.cols} high, not {film.cols} x "
            f"{film.rows} as the header says (its neighbouring pixels differ {times} read as stated): the header "
            "does not describe the pixel data (Rows and Columns swapped)")


def _j2k_siz(frame: bytes) -> int:
    """Where a JPEG 2000 frame has its SOC then SIZ marker: at its start for a codestream, at the start of the first
    Contiguous Codestream box (``jp2c``) of a JP2 file around one, the codestream OpenJPEG decodes; -1 for a frame of
    another kind. A JPEG 2000 frame without them there is refused: looked for anywhere else, a copy of a small SIZ in
    a box before ``jp2c`` passed the size check, and a 52 KB upload then decoded to 2.4 GB."""
    if frame[:2] == b"\xff\x4f":
        at = 0
    elif frame[4:8] == b"jP  ":
        at = _jp2c_contents(frame)
    else:
        return -1
    if at < 0 or frame[at : at + 4] != b"\xff\x4f\xff\x51":
        raise pixels.DecodeError("the JPEG 2000 frame's codestream does not start with its SOC and SIZ markers, so "
                                 "its size cannot be checked before it is decoded: export the film again")
    return at


def _jp2c_contents(frame: bytes) -> int:
    """Where the contents of a JP2 file's first ``jp2c`` box start (its boxes walked by their lengths, ISO/IEC
    15444-1 I.4); -1 when it has none, or a box's length runs past the file or back."""
    at = 0
    while at + 8 <= len(frame):
        length, kind, header = int.from_bytes(frame[at : at + 4], "big"), frame[at + 4 : at + 8], 8
        if length == 1:  # its length in the next 8 bytes
            length, header = int.from_bytes(frame[at + 8 : at + 16], "big"), 16
        elif length == 0:  # to the end of the file
            length = len(frame) - at
        if kind == b"jp2c":
            return at + header
        if length < header:
            return -1
        at += length
    return -1


def _check_sign(ds: Dataset, frame: bytes, values: np.ndarray, film: Film) -> None:
    """Refuse grey stored values whose sign Pixel Representation gets wrong, told by the picture: read with the wrong
    sign, the values past half the range wrap round to the other end, a film of bands (a normal film's lungs bright
    and its spine dark, 0.52 correlation the wrong way), which pydicom, and every viewer, read as the header says.
    Where a JPEG 2000 frame states its samples' sign (its SIZ's Ssiz) and the header says the other, the frame is a
    second witness: the film is refused when read with the frame's sign it is the smoother picture (an encoder may
    mark signed values unsigned: pydicom's J2K_pixelrep_mismatch.dcm, a CT, reads right as the header says). Where
    nothing but the header states the sign (uncompressed, deflated, RLE, JPEG and JPEG-LS pixel data), a monochrome
    film is refused when read with the other sign it is :data:`_SIGN_MISREAD` times smoother (:func:`_sign_misread`)."""
    stated = ds.get("PixelRepresentation")
    if stated not in (0, 1) or values.ndim != 2 or values.shape[0] < 2 or values.dtype.kind not in "iu":
        return
    siz = _j2k_siz(frame)
    if siz >= 0:
        if len(frame) < siz + 43 or bool(frame[siz + 42] & 0x80) == bool(stated):
            return
        times, bound = _sign_misread(values, bool(stated), (frame[siz + 42] & 0x7F) + 1, _padding_range(ds)), 1.0
        said = ("signed", "unsigned") if stated == 0 else ("unsigned", "signed")
        witness = f"the JPEG 2000 frame's samples are {said[0]}, but Pixel Representation {stated} says {said[1]}"
    elif film.photometric in POLARITY and isinstance(bits := ds.get("BitsStored"), int):
        times, bound = _sign_misread(values, bool(stated), bits, _padding_range(ds)), _SIGN_MISREAD
        said = ("unsigned", "signed") if stated == 0 else ("signed", "unsigned")
        witness = f"Pixel Representation {stated} says the pixel values are {said[0]}, but they read as {said[1]} ones"
    else:
        return
    if times > bound:
        raise pixels.DecodeError(
            f"{witness}: neighbouring pixels either side of half the stored range typically differ {times:.3g} "
            "times as much read as the header says: read so, its values would wrap round into bands; the header "
            "does not describe the pixel data (check Pixel Representation)")


def _sign_misread(values: np.ndarray, signed: bool, bits: int, padding: tuple[int, int] | None) -> float:
    """How many times as much neighbouring stored values (``bits``-bit, read ``signed`` or not) typically (the
    median) differ read so as read with the other sign, over the pairs whose difference the sign changes (one value
    each side of half the range: d read one way, the whole range less d the other); 0 where there are none. Read
    right, a picture's such neighbours are close, and read wrong they are the whole range apart (figures at
    :data:`_SIGN_MISREAD`). The other pairs differ alike either way, and are left out; so are pairs with a value
    that is no picture's: ``padding`` (the stored values Pixel Padding Value marks), or the lowest or highest value
    of the rows looked at, which a border, a collimator's shadow or a saturated area takes (a 16-bit film's 65535
    beside values to 4000 was no misread sign)."""
    at = _row_pairs(values.shape[0])
    low, high = (int(f(values[np.concatenate([at, at + 1])])) for f in (np.min, np.max))
    padded = padding or (high + 1, high + 1)
    half = 1 << (bits - 1)

    def other_sign(v: np.ndarray) -> np.ndarray:
        return np.where(v < 0, v + 2 * half, v) if signed else np.where(v >= half, v - 2 * half, v)

    def picture(v: np.ndarray) -> np.ndarray:
        return (v > low) & (v < high) & ((v < padded[0]) | (v > padded[1]))

    read_apart, other_apart = [], []
    for row in at:  # a row pair at a time: a few rows' worth of memory, however wide the film
        top, below = values[row].astype(np.int64), values[row + 1].astype(np.int64)
        # each pixel of the top row with the one below it and the one to its right
        for first, second in ((top, below), (top[:-1], top[1:])):
            apart, apart_other = np.abs(second - first), np.abs(other_sign(second) - other_sign(first))
            changed = (apart != apart_other) & picture(first) & picture(second)
            read_apart.append(apart[changed])
            other_apart.append(apart_other[changed])
    read, other = np.concatenate(read_apart), np.concatenate(other_apart)
    if not read.size:
        return 0.0
    return float(np.median(read) / max(float(np.median(other)), 1.0))


def _row_pairs(rows: int) -> np.ndarray:
    """The top rows of :data:`_LAYOUT_ROWS` pairs of neighbouring rows spread over an image of ``rows`` rows (at
    least 2): enough to tell a picture from a garbled reading of it, and cheap on any film."""
    return np.unique(np.linspace(0, rows - 2, min(_LAYOUT_ROWS, rows - 1)).round().astype(np.intp))


def _roughness(top: np.ndarray, below: np.ndarray) -> float:
    """How much neighbouring pixels differ in rows ``top`` and the rows ``below`` them: a picture's are alike."""
    return float(np.abs(below - top).mean() + np.abs(np.diff(top, axis=1)).mean())


def _lossy(syntax: object) -> bool:
    """Whether a transfer syntax may compress with loss: every encapsulated one pydicom does not name lossless
    (JPEG Baseline and Extended, JPEG-LS near-lossless, JPEG 2000 and HTJ2K that are not "Lossless Only")."""
    return isinstance(syntax, UID) and syntax.is_encapsulated and not _LOSSLESS.search(syntax.name)


def _check_rle_frame(frame: bytes, ds: Dataset, film: Film) -> None:
    """Refuse an RLE frame whose header (PS3.5 G.5: the number of segments, then 15 offsets) does not describe its
    segments: one a byte of each sample, the first right after the header, each after the one before, all inside the
    frame. pylibjpeg-rle refuses such a header, and pydicom then falls back on its own decoder, which expands a
    segment whole before it checks its length: 19 MB of runs after an offset of 66 took 1.1 GB. A segment that
    decodes to more than a byte a pixel is refused too: pylibjpeg-rle bounds a run by its byte count, not by the bytes
    it spans in a frame of 16-bit samples, and panicked on it (a refusal, but a Rust backtrace on stderr each time);
    in an 8-bit frame it dropped the excess without a word."""
    if len(frame) < 64:
        raise pixels.DecodeError("the RLE frame is shorter than its 64-byte header: send the film again")
    count, *offsets = struct.unpack("<16L", frame[:64])
    expected = film.samples * -(-int(ds.get("BitsAllocated") or 8) // 8)
    used = offsets[:count] if 1 <= count <= 15 else []
    if (count != expected or used[0] != 64 or any(b <= a for a, b in zip(used, used[1:]))
            or used[-1] >= len(frame)):
        raise pixels.DecodeError(f"the RLE frame's header does not describe its segments ({count} segment(s) at "
                                 f"offsets {', '.join(map(str, used or offsets[:1]))} in {len(frame)} bytes; "
                                 f"{film.samples} sample(s) of {ds.get('BitsAllocated')} bits take {expected}, the "
                                 "first at 64): export the film again")
    ends = [*used[1:], len(frame)]
    for n, (start, end) in enumerate(zip(used, ends), 1):
        try:  # alone, as 8-bit samples, into one byte more than the film: the decoder bounds 8-bit runs exactly
            decode_pixel_data(_RLE_ONE_SEGMENT + frame[start:end], version=2, rows=1, columns=film.rows * film.cols + 1,
                              bits_allocated=8)
        except ValueError:  # it does not fill that byte: a segment short of the film the decoder itself refuses
            continue
        raise pixels.DecodeError(f"the RLE frame's segment {n} of {count} decodes to more than the {film.rows} x "
                                 f"{film.cols} bytes the header describes: export the film again")


def _check_j2k_coding(frame: bytes, siz: int, components: int) -> None:
    """Refuse a JPEG 2000 codestream (its SIZ at ``siz``) whose tiles, or whose code blocks or precincts by the
    smallest sizes any COD or COC marker in its main or tile-part headers gives, outnumber MAX_J2K_TILES or
    MAX_J2K_BLOCKS: OpenJPEG builds a structure for each before it decodes a pixel (a 700-byte frame of 4 x 4 code
    blocks took 1.1 GB). Counted from the marker segments alone."""
    xsiz, ysiz, xosiz, yosiz, xtsiz, ytsiz, xtosiz, ytosiz = struct.unpack_from(">8L", frame, siz + 8)
    tiles = -(-max(xsiz - xtosiz, 0) // max(xtsiz, 1)) * -(-max(ysiz - ytosiz, 0) // max(ytsiz, 1))
    if tiles > pixels.MAX_J2K_TILES:
        raise pixels.DecodeError(f"the JPEG 2000 frame is cut into {tiles:,} tiles (limit {pixels.MAX_J2K_TILES:,}): "
                                 "far more than any film's encoder makes")
    blocks, precincts, levels = [], [], 5  # log2 areas of the code blocks and precincts the markers give
    for style, sp in _coding_styles(frame, siz, components):
        if len(sp) >= 3 and style:
            levels = max(levels, sp[0])
            blocks.append((sp[1] & 0x0F) + (sp[2] & 0x0F) + 4)
            precincts += [(s & 0x0F) + (s >> 4) for s in (sp[5 : 5 + sp[0] + 1] if style[0] & 1 else b"")]
    block = min([30, *blocks]) if blocks else 12  # none given: 64 x 64 code blocks, precincts of 2**15
    precinct = min([30, *precincts])
    area = max(xsiz - xosiz, 0) * max(ysiz - yosiz, 0)
    for what, log2, per_tile in (("code blocks", block, 3 * levels + 1), ("precincts", precinct, levels + 1)):
        made = components * (area * 4 // 3 // (1 << log2) + tiles * per_tile)
        if made > pixels.MAX_J2K_BLOCKS:
            raise pixels.DecodeError(f"the JPEG 2000 frame's coding makes about {made:,} {what} (limit "
                                     f"{pixels.MAX_J2K_BLOCKS:,}): far more than any film's encoder makes")


def _coding_styles(frame: bytes, siz: int, components: int) -> Iterator[tuple[bytes, bytes]]:
    """(Scod or Scoc, SPcod or SPcoc) of every COD (0xFF52) and COC (0xFF53) marker segment of a codestream's main
    header and its tile-part headers, walked segment by segment: a tile-part's data, from its SOD, is stepped over
    to the next tile-part (Psot bytes from its SOT)."""
    pos, tile_part, psot = siz + 2, 0, 0
    for _ in range(pixels.MAX_SEGMENTS):
        if pos + 4 > len(frame):
            return
        marker, length = struct.unpack_from(">HH", frame, pos)
        if marker == 0xFF93:  # SOD: no segment of its own; the tile-part's data runs to its end
            if not psot:
                return
            pos = tile_part + psot
            continue
        if marker >> 8 != 0xFF or marker == 0xFFD9 or length < 2:
            return
        if marker == 0xFF90:  # SOT: Isot, then Psot, the tile-part's length from here
            tile_part, psot = pos, struct.unpack_from(">L", frame, pos + 6)[0] if pos + 10 <= len(frame) else 0
        elif marker in (0xFF52, 0xFF53):
            fields = frame[pos + 4 : pos + 2 + length]
            if marker == 0xFF52:  # Scod, progression, layers (2), MCT, then SPcod
                yield fields[:1], fields[5:]
            else:  # Ccoc (1 or 2 bytes), Scoc, then SPcoc
                at = 1 if components < 257 else 2
                yield fields[at : at + 1], fields[at + 1 :]
        pos += 2 + length


def _check_codestream(frame: bytes, ds: Dataset, film: Film) -> int | None:
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
    siz = _j2k_siz(frame)
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
    if siz >= 0:  # a frame of the header's size: what OpenJPEG would build to decode it
        _check_j2k_coding(frame, siz, components)
    return precision


def _unused_bits(ds: Dataset, syntax: object, precision: int | None) -> str:
    """What is done with stored values' bits above High Bit, in words wider than Bits Stored: ``"mask"`` them off
    (pydicom's way, sign-extending signed values from High Bit: a signed or lossy film with an overlay plane in
    those bits, :func:`_overlay_bits`), ``"check"`` that none is set but a signed value's sign and an overlay's
    (:func:`_check_high_bits`), or ``"clip"`` values past the stored range (:func:`_clipped`: a lossy frame of more
    bits than Bits Stored, whose codec overshoots the range near saturated edges: ringing, or JPEG-LS's NEAR error)."""
    allocated, high, stored = ds.get("BitsAllocated"), ds.get("HighBit"), ds.get("BitsStored")
    if "PixelData" not in ds or allocated not in (8, 16, 32) or not isinstance(high, int) or high + 1 >= allocated:
        return "mask"
    if _overlay_bits(ds) and (ds.get("PixelRepresentation") == 1 or _lossy(syntax)):
        return "mask"
    if _lossy(syntax) and isinstance(precision, int) and isinstance(stored, int) and precision > stored:
        return "clip"
    return "check" if ds.get("PixelRepresentation") in (0, 1) else "mask"


def _overlay_bits(ds: Dataset) -> int:
    """The bits above High Bit of the stored words that overlay planes occupy: a retired overlay embedded in the
    pixels names its bit by Overlay Bit Position (60xx,0102) and has no Overlay Data (60xx,3000) of its own. One with
    its own Overlay Data, the only form since 2004 (its Bit Position is 0), occupies none: taken for one, it turned
    the check of those bits off, and 14-bit values under a 12-bit header were masked into bands and scored."""
    high, allocated, bits = ds.HighBit, ds.BitsAllocated, 0
    for group in range(0x6000, 0x6020, 2):
        position = ds.get((group, 0x0102))
        if position is not None and (group, 0x3000) not in ds and isinstance(position.value, int):
            bits |= 1 << position.value if high < position.value < allocated else 0
    return bits


def _check_high_bits(ds: Dataset, values: np.ndarray) -> np.ndarray:
    """Decoded (unmasked) stored values, refused when they use bits above High Bit, whatever the transfer syntax:
    masked off, 14-bit values under a 12-bit header wrap into bands (0.09 correlation with the film; signed, 0.12,
    scored 0.04 with no warning), and a lossless codec never overshoots, so such values are the header's fault, not
    the codec's. Signed values may fill those bits with their sign (sign-extended) or leave them clear, one way
    for the whole film (returned sign-extended); any other use of them is refused."""
    high, largest = ds.HighBit, int(values.max(initial=0))
    if ds.get("PixelRepresentation") != 1:
        if largest >> (high + 1):
            top, ones = values >> high, (1 << (ds.BitsAllocated - high)) - 1
            # each value's bits from High Bit up all clear or all set: signed values, sign-extended
            why = ("as signed values' sign does, but Pixel Representation 0 says unsigned: read so, they would wrap "
                   "into bands; the header does not describe the pixel data (check Pixel Representation)"
                   if ((top == 0) | (top == ones)).all() else _WRAPS)
            raise pixels.DecodeError(
                f"pixel values use bits above High Bit {high} (Bits Stored {ds.get('BitsStored')}, largest value "
                f"{largest}) and no overlay claims them: {why}")
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


def _check_length(ds: Dataset, syntax: UID, film: Film) -> None:
    """Refuse pixel data that holds more or less than the header's one frame, before it is decoded: pydicom reads
    excess data as more frames (each decoded and put through the LUTs: the header's decode limit bounds nothing), a
    shorter Rows or Columns shears the film, and either is a film read wrong. Trailing bytes short of one row are
    padding (pydicom drops them)."""
    keyword = next(k for k in PIXEL_KEYWORDS if k in ds)
    _check_whole(ds.get_item(keyword))
    data = ds[keyword].value
    if not data:  # pydicom reads an element of length 0 as None, and failed on it with a type error
        raise pixels.DecodeError(f"DICOM pixel data is empty (0 bytes) where the header describes a {film.cols} x "
                                 f"{film.rows} film: its pixels were left out (by an export or a PACS); send the "
                                 "whole file")  # fmt: skip
    if syntax.is_encapsulated:
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


def _check_whole(element: object) -> None:
    """Refuse pixel data of a defined length that holds fewer bytes than its element says: the file ends inside it
    (a transfer or copy that stopped early). pydicom reads what is there, which was refused as a header that does not
    describe its pixel data: a reason that sent the reader to check the film's tags, not to send it again."""
    if not isinstance(element, RawDataElement) or element.length == 0xFFFFFFFF or element.value is None:
        return  # read already, deferred, or encapsulated (whose items say where it is cut: _check_length)
    if len(element.value) < element.length:
        raise pixels.DecodeError(f"DICOM file is cut short: its pixel data holds {len(element.value):,} of the "
                                 f"{element.length:,} bytes its element declares (a transfer or copy that stopped "
                                 "early); send the whole file again")


def _check_planar_configuration(ds: Dataset, syntax: UID, film: Film) -> None:
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
    at = _row_pairs(readings[0].shape[0])
    pairs = {p: (a[at].astype(np.float64), a[at + 1].astype(np.float64)) for p, a in readings.items()}
    grey = {p: all(_grey(part, photometric, bits_stored) for part in pair) for p, pair in pairs.items()}
    if grey[0] != grey[1]:
        layout = 0 if grey[0] else 1
        return layout, (f"its colour channels agree read {_LAYOUTS[layout]}, a grey film stored as colour, and not "
                        f"read {_LAYOUTS[1 - layout]}")
    rough = {p: _roughness(top, below) for p, (top, below) in pairs.items()}
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


def _frames_held(data: bytes, extended: bytes | None, rle: bool) -> int:
    """How many frames encapsulated pixel data holds: the entries of its Extended or Basic Offset Table, else its
    fragments that begin a frame (for RLE every fragment: one a frame, PS3.5 A.4.2). A table of one entry (``[0]``,
    which a writer may put before any single frame) is checked against those fragments: two films under it were
    read as the first, the second dropped without a word."""
    if extended:
        return len(extended) // 8
    buffer = io.BytesIO(data)
    offsets = parse_basic_offsets(buffer)
    if len(offsets) > 1:
        return len(offsets)
    begun = sum(rle or fragment.startswith(_CODESTREAM_STARTS) for fragment in generate_fragments(buffer))
    return max(begun, len(offsets))


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
        and not any(given(ds, k) for k in ("ModalityLUTSequence", "WindowCenter", "VOILUTSequence"))
    )


def _padding(ds: Dataset, stored: np.ndarray) -> np.ndarray | None:
    """Where the stored values are padding (PS3.3 C.7.5.1.1.2: Pixel Padding Value, through Pixel Padding Range
    Limit when given, in either order, inclusive), the area outside a shutter or collimator that is no image: left
    out of the stretch, where a value far from the film's would squeeze the film into a few grey levels. None when
    there is none; a film that is all padding is refused."""
    if (bounds := _padding_range(ds)) is None:
        return None
    padding = (stored >= bounds[0]) & (stored <= bounds[1])
    if padding.all():
        raise pixels.DecodeError("blank image: every pixel is padding (Pixel Padding Value): the film holds no image")
    return padding if padding.any() else None


def _padding_range(ds: Dataset) -> tuple[int, int] | None:
    """The lowest and highest stored values that are padding (:func:`_padding`); None when there is none."""
    if "PixelData" not in ds or not given(ds, "PixelPaddingValue"):
        return None
    value = _as_pixel_value(ds, "PixelPaddingValue")
    limit = _as_pixel_value(ds, "PixelPaddingRangeLimit") if given(ds, "PixelPaddingRangeLimit") else value
    low, high = sorted((value, limit))
    return low, high


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


def _lift_frame_groups(ds: Dataset) -> None:
    """Bring the rescale and the window of an enhanced image object (CT, MR, XA: PS3.3 C.7.6.16), stated for its one
    frame in its Per-Frame, else Shared, Functional Groups, to the top level where pydicom's LUTs read them: left
    there, the film was shown without its window, and under a negative slope inverted. A top level that states its
    own keeps it."""
    for sequence, keywords in _FRAME_GROUPS.items():
        if any(keyword in ds for keyword in keywords) or (group := frame_group(ds, sequence)) is None:
            continue
        for keyword in keywords:
            if keyword in group:
                ds[keyword] = group[keyword]


def frame_group(ds: Dataset, sequence: str) -> Dataset | None:
    """An enhanced image object's functional group ``sequence`` for its one frame (PS3.3 C.7.6.16): the Per-Frame
    Functional Groups' item, else the Shared ones'; None where neither states it."""
    for groups in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        found = ds.get(groups) or [Dataset()]
        if group := found[0].get(sequence):
            return group[0]
    return None


def _window_range_from(ds: Dataset) -> Dataset:
    """What pydicom's window takes its output range from: ``ds``, or under a negative Rescale Slope the window's own
    elements without the rescale. pydicom maps the stored range through the rescale for it, which a negative slope
    turns round: values below the window came out brightest and above it darkest, the film's polarity inverted (bone
    dark). The range itself is stretched away (minmax_u8); only its direction counts."""
    if given(ds, "VOILUTSequence") or float(ds.get("RescaleSlope", 1)) >= 0:  # a VOI LUT takes no range
        return ds
    window = Dataset()
    for keyword in ("PhotometricInterpretation", "BitsStored", "PixelRepresentation", "WindowCenter", "WindowWidth",
                    "VOILUTFunction", "ModalityLUTSequence"):  # fmt: skip
        if keyword in ds:
            window[keyword] = ds[keyword]
    return window


def _check_luts(ds: Dataset) -> None:
    """Refuse a Modality or VOI LUT (its first item, the one applied) without LUT Data or a LUT Descriptor of three
    values, or whose LUT Data holds other than the entries its descriptor gives (one more is padding to an even
    length): pydicom indexes the data by the descriptor, so fewer entries failed with an index error and more were
    cut off, the film's upper values saturated. Entries pydicom misreads by their bits are declared 16-bit, the same
    values: a VOI LUT's 8-bit entries, which pydicom 3.0 indexes through uint8 (past entry 255, or past the last entry
    of a shorter LUT, the film's values wrapped round: a 4,096-entry LUT turned a film into bands, and it was scored),
    and a Modality LUT's of under 16 bits but 8, which it cannot read at all."""
    for keyword, name in (("ModalityLUTSequence", "Modality LUT"), ("VOILUTSequence", "VOI LUT")):
        if not given(ds, keyword):
            continue
        if keyword == "ModalityLUTSequence" and (float(ds.get("RescaleSlope", 1)),
                                                 float(ds.get("RescaleIntercept", 0))) != (1, 0):
            # PS3.3 C.11.1 allows one or the other; pydicom applies the LUT and passes the rescale over (a slope of -1,
            # the film's polarity, was dropped), a viewer may do either
            raise pixels.DecodeError("malformed DICOM header: both a Modality LUT and a Rescale Slope and Intercept "
                                     "are given, which DICOM does not allow, so which maps the film's values is "
                                     "unknown")  # fmt: skip
        item = ds[keyword][0]
        descriptor = item.get("LUTDescriptor")
        if not given(item, "LUTData") or not isinstance(descriptor, MultiValue | list) or len(descriptor) != 3:
            raise pixels.DecodeError(f"malformed DICOM header: the {name} has no LUT Data or no LUT Descriptor of "
                                     "three values, so the film's grey levels cannot be known")  # fmt: skip
        stated, first, depth = descriptor
        if ds.get("PixelRepresentation") == 1 and isinstance(first, int) and 0x8000 <= first <= 0xFFFF:
            # the first value mapped is signed under signed pixels (PS3.3 C.11.1.1, C.11.2.1.1): written US, -2048
            # read 63488, and pydicom failed on it ("out of bounds for int16") or mapped the film past the LUT's end
            first -= 0x10000
            item["LUTDescriptor"] = DataElement(0x00283002, "SS", [stated, first, depth], validation_mode=config.IGNORE)
        declared, entries = stated or 1 << 16, _lut_entries(ds, item)
        if not declared <= len(entries) <= declared + 1:
            raise pixels.DecodeError(f"malformed DICOM header: the {name}'s LUT Data holds {len(entries):,} entries "
                                     f"where its LUT Descriptor gives {declared:,}, so the film's grey levels cannot "
                                     "be known")  # fmt: skip
        entries = entries[:declared]
        # a VOI LUT's 8-bit entries: pydicom's index is uint8 too, so stored values past the last entry wrap round
        # instead of holding at it (a 256-entry LUT that starts at 1024 showed 1440 darker than 1264)
        misread = keyword == "VOILUTSequence" or depth != 8
        if depth < 16 and (depth == 8 or keyword == "ModalityLUTSequence") and misread:
            if int(entries.max()) >> depth:
                raise pixels.DecodeError(f"malformed DICOM header: the {name}'s LUT Descriptor gives {depth}-bit "
                                         f"entries, but its LUT Data holds values up to {int(entries.max())}, so the "
                                         "film's grey levels cannot be known")  # fmt: skip
            item.LUTDescriptor = [stated, first, 16]
            item["LUTData"] = DataElement(0x00283006, "US", entries.tolist())


def _check_voi_function(ds: Dataset) -> None:
    """Refuse a window whose VOI LUT Function is not one of :data:`VOI_FUNCTIONS` (in any case, as pydicom reads it),
    without repeating it: pydicom refused one value quoting it (free text there, a name written in the wrong element,
    reached the service's answer, the results and the logs) and several with "'MultiValue' object has no attribute
    'upper'". A VOI LUT, or no window, leaves the function unused."""
    if not given(ds, "WindowCenter") or given(ds, "VOILUTSequence") or not given(ds, "VOILUTFunction"):
        return
    function = ds.VOILUTFunction
    if isinstance(function, MultiValue) or str(function).strip().upper() not in VOI_FUNCTIONS:
        raise pixels.DecodeError(f"malformed DICOM header: VOI LUT Function is no term DICOM defines "
                                 f"({', '.join(VOI_FUNCTIONS[:-1])} or {VOI_FUNCTIONS[-1]}), so how its window maps "
                                 "the film's values to grey is unknown")


def _check_window_width(ds: Dataset) -> None:
    """Refuse a window (the first, the one applied) narrower than its VOI LUT Function allows (PS3.3 C.11.2.1.2:
    LINEAR's is at least 1, LINEAR_EXACT's and SIGMOID's above 0), naming it: a header fault, which pydicom's
    arithmetic refused as a failure to decode the pixels. A VOI LUT, or no window, leaves it unused."""
    if not given(ds, "WindowWidth") or not given(ds, "WindowCenter") or given(ds, "VOILUTSequence"):
        return
    width = ds.WindowWidth[0] if isinstance(ds.WindowWidth, MultiValue) else ds.WindowWidth
    function = str(ds.get("VOILUTFunction") or "LINEAR").strip().upper()
    least = "at least 1" if function == "LINEAR" else "above 0"
    if (float(width) < 1) if function == "LINEAR" else (float(width) <= 0):
        raise pixels.DecodeError(f"malformed DICOM header: Window Width is {float(width):g}, where a {function} "
                                 f"window's is {least}, so how its window maps the film's values to grey is unknown")


def _lut_entries(ds: Dataset, item: Dataset) -> np.ndarray:
    """A LUT item's entries as pydicom reads them: LUT Data written US, or OW (a 16-bit word an entry, in the file's
    byte order)."""
    element = item["LUTData"]
    value = element.value
    if isinstance(value, bytes):
        little = ds.original_encoding[1] is not False
        return np.frombuffer(value[: len(value) // 2 * 2], "<u2" if little else ">u2").astype(np.int64)
    return np.asarray(list(value) if isinstance(value, MultiValue | list) else [value], np.int64)


def _as_shown(ds: Dataset, film: Film) -> tuple[Image.Image, np.ndarray | None]:
    """The film as a viewer shows it, in 8-bit grey: bright bone, dark lungs, padding black, pixels square; and the
    film's values (padding left out; each at least once) before its window or VOI LUT, None when it has none, so a
    refusal can tell whether the window is what left too little of the film."""
    photometric, monochrome = film.photometric, film.photometric in POLARITY
    before_window = None
    _lift_frame_groups(ds)
    for keyword in (*GREY_NUMBERS, "VOILUTFunction"):  # written blank (spaces only): absent, as an empty element is
        if keyword in ds and not given(ds, keyword):  # to pydicom's LUTs (and a function absent is LINEAR)
            del ds[keyword]
    _check_voi_function(ds)
    _check_window_width(ds)
    if ("RescaleSlope" in ds) != ("RescaleIntercept" in ds):
        # pydicom rescales only when both are given: a lone slope of -1 (the film's polarity) or a lone intercept (the
        # units its window is in) was passed over; the other takes its identity value, as _as_stored reads them
        ds.RescaleSlope, ds.RescaleIntercept = ds.get("RescaleSlope", 1), ds.get("RescaleIntercept", 0)
    try:
        as_stored = _as_stored(ds, photometric, film.bits)
        arr = stored = _pixels(ds, film)
        present = _present_values(stored) if monochrome else None
        if present is not None:  # each stored value once, in a 1-row film: every step below is pointwise or min/max
            arr = present[np.newaxis].copy()  # a copy: padding is set in place below
        padding = _padding(ds, arr) if monochrome else None
        if monochrome:
            _check_luts(ds)
            # stored values -> physical values (rescale / modality LUT) -> display values (VOI LUT / window)
            physical = apply_modality_lut(arr, ds)
            arr = apply_voi_lut(physical, _window_range_from(ds))
            if arr is not physical and (given(ds, "VOILUTSequence") or given(ds, "WindowCenter")):
                before_window = physical if padding is None else physical[~padding]
        elif photometric == "PALETTE COLOR":
            arr = apply_color_lut(arr, ds)
    except (pixels.DecodeError, *_NOT_THE_FILM):
        raise
    except BaseException as e:  # a damaged codestream (a decoder's panic too), no plugin for the syntax, bad LUTs...
        # pydicom lists each plugin's reason on its own line, under a heading that ends in ':'
        reason = "; ".join(line.strip() for line in str(e).splitlines() if line.strip()).replace(":; ", ": ")
        raise pixels.DecodeError(f"cannot decode DICOM pixel data ({syntax_name(ds)}): {reason}") from None
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
    if present is not None:
        gray = _look_up(stored, present, gray[0])
    image = Image.fromarray(gray)
    if (film.width, film.height) != (film.cols, film.rows):  # shrink the finer axis (box filter: area average)
        image = image.resize((film.width, film.height), Image.Resampling.BOX)
    return image, before_window


def _present_values(stored: np.ndarray) -> np.ndarray | None:
    """The distinct values of a film's integer stored values, ascending, in their dtype; None for values that are
    not a film of integers, or that span a range far beyond the film's pixels (32-bit values). A monochrome film's
    every step to grey (modality LUT or rescale, VOI LUT or window, padding, the stretch, MONOCHROME1's inversion) is
    a function of the stored value or a minimum, maximum or count of distinct values: done once a value and looked up
    (:func:`_look_up`), it gives the same grey as done on every pixel, without pydicom's float64 copies and masks of
    the whole film (a 12-bit 5,700 x 5,800 film with a rescale and a window took 30 bytes a pixel)."""
    if stored.ndim != 2 or not stored.size or stored.dtype.kind not in "iu" or stored.dtype.itemsize > 4:
        return None
    low, high = int(stored.min()), int(stored.max())
    if high - low >= max(stored.size, 1 << 16):
        return None
    seen = np.zeros(high - low + 1, bool)
    for rows in pixels.blocks(*stored.shape, _BLOCK_PIXELS):
        seen[np.subtract(stored[rows], low, dtype=np.intp)] = True
    return (np.flatnonzero(seen) + low).astype(stored.dtype)


def _look_up(stored: np.ndarray, present: np.ndarray, grey: np.ndarray) -> np.ndarray:
    """Each stored value's grey: ``grey[i]`` is ``present[i]``'s (:func:`_present_values`)."""
    low = int(present[0])
    table = np.zeros(int(present[-1]) - low + 1, np.uint8)
    table[np.subtract(present, low, dtype=np.intp)] = grey
    out = np.empty(stored.shape, np.uint8)
    for rows in pixels.blocks(*stored.shape, _BLOCK_PIXELS):
        out[rows] = table[np.subtract(stored[rows], low, dtype=np.intp)]
    return out


def _distinct(values: np.ndarray) -> int:
    """How many different values ``values`` holds."""
    return len(np.unique(values))


def _window_words(ds: Dataset) -> str:
    """The VOI transform a film was shown through, in words: its VOI LUT (which pydicom applies in preference), or
    its window's first Window Center and Width (the one applied)."""
    if given(ds, "VOILUTSequence"):
        return "its VOI LUT"
    center, width = (v[0] if isinstance(v, MultiValue) else v for v in (ds.WindowCenter, ds.WindowWidth))
    return f"its window (WindowCenter {float(center):g}, WindowWidth {float(width):g})"
