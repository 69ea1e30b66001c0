"""JPEG and PNG, header first through Pillow: the size and memory limits are applied before any pixel is decoded.

A JPEG's pixels are decoded strictly (:mod:`.jpeg`: libjpeg's "corrupt data" warnings are errors): Pillow ignores
them, so a film cut short (an EOI marker halfway) or with damaged entropy-coded data decodes to bands of flat grey
that would be scored.
"""

from __future__ import annotations

import functools
import io
import logging
import re
import struct
import warnings
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, TypeVar

import numpy as np
from PIL import ExifTags, Image
from PIL.JpegImagePlugin import MARKER, JpegImageFile
from PIL.PngImagePlugin import PngInfo

from pneumoscan.core.figures import FIGURE_SOFTWARE
from pneumoscan.core.names import shown
from pneumoscan.data import pixels
from . import jpeg
from .base import SPREAD_SIDE, Reader, channel_spread, formats

log = logging.getLogger(__name__)
T = TypeVar("T")

# The JPEG and PNG modes whose pixels may hold colour (a palette's may be all grey); the grey and bilevel ones cannot.
_COLOUR_MODES = frozenset({"RGB", "RGBA", "CMYK", "P"})
# What every Grad-CAM PNG this package writes says of itself (a tEXt chunk, :func:`own_output_info`), and the refusal
# of one given as a film: an overlay scores as a chest film (a NORMAL film's at PNEUMONIA 0.996), a bare map 0.943
OWN_OUTPUT_SOFTWARE = {"overlay": "pneumoscan Grad-CAM overlay", "map": "pneumoscan Grad-CAM map"}
OWN_OVERLAY = "a pneumoscan output (Grad-CAM overlay PNG), not a film"
OWN_MAP = "a pneumoscan output (Grad-CAM heatmap PNG), not a film"
OWN_FIGURE = "a pneumoscan output (a figure: curves, a confusion matrix, an audit), not a film"
_OWN_REFUSALS = {OWN_OUTPUT_SOFTWARE["overlay"]: OWN_OVERLAY, OWN_OUTPUT_SOFTWARE["map"]: OWN_MAP,
                 FIGURE_SOFTWARE: OWN_FIGURE}
# Pillow holds no 16-bit colour: it keeps the high byte of each value, so 12-bit values stored in 16 bits come out as
# 16 grey levels (a film read nearly black, scored 0.59 where its 16-bit grey PNG, stretched, scored 0.69)
DEEP_COLOUR = "a 16-bit colour or grey-and-alpha PNG: only the high byte of its values can be read, which leaves a " \
              "film of 10- to 14-bit values nearly black; export it as a 16-bit greyscale PNG, or as 8-bit"
_DEEP_COLOUR_RAW = frozenset({"RGB;16B", "LA;16B", "RGBA;16B"})  # Pillow's raw modes of those PNGs
# Pillow's raw modes of a PNG of 1, 2 or 4 bits a sample (grey or palette; a 1-bit grey one is mode "1", refused as
# bilevel), by its bits: at most 16 grey levels, refused from the header as a DICOM of Bits Stored under 8 is
_SHALLOW_RAW = {"L;2": 2, "L;4": 4, "P;1": 1, "P;2": 2, "P;4": 4}
TRANSPARENT = "image has transparent pixels (an alpha channel or a PNG transparency colour): a film has no grey " \
              "value where it is see-through; export it without transparency"

PIL_FORMATS = ("JPEG", "PNG")
_MAGIC = {"JPEG": b"\xff\xd8\xff", "PNG": b"\x89PNG\r\n\x1a\n"}  # the first bytes of each format's files
# Bytes a decoded pixel takes in Pillow's memory (every multi-band mode is stored as 4 bytes a pixel).
_PILLOW_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
# each property named Orientation in an XMP packet (:func:`_xmp_orientation`), whatever its prefix, opened as an
# attribute or an element (a closing tag is no mention), and its value where it is a number given in the simple
# forms: ="6" or ='6' with spaces about the '=', or an element's text, <tiff:Orientation>6</tiff:Orientation>, with
# attributes (rdf:datatype) or none; matched without an XML parser (no defusedxml here)
_XMP_ORIENTATION = re.compile(rb"""(?<![/\w.-])[\w.-]+:Orientation\b"""
                              rb"""(?:\s*=\s*["']\s*([0-9]+)\s*["']|(?:\s[^>]*)?>\s*([0-9]+)\s*<)?""")
_ORIENTATION = {  # EXIF orientation -> the transpose that shows the image upright (as ImageOps.exif_transpose)
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}  # fmt: skip


class PillowReader(Reader):
    name = "Pillow"
    formats = PIL_FORMATS
    suffixes = frozenset({".jpeg", ".jpg", ".png"})
    media_types = ("image/jpeg", "image/png")

    def sniff(self, head: bytes) -> bool:
        return head.startswith(tuple(_MAGIC.values()))

    def header(self, src: Path | bytes) -> dict:
        with _open(src) as im:
            quality = None
            table = im.quantization.get(0) if im.format == "JPEG" else None
            if table is not None and len(table) == 64:  # a damaged file may lack its luminance table
                quality = int(np.abs(_luma_tables() - np.array(table)).sum(axis=1).argmin()) + 1
            return {"width": im.width, "height": im.height, "mode": im.mode, "format": im.format, "quality": quality}

    def gray(self, src: Path | bytes, target: int | None) -> np.ndarray:
        with _open(src, still=True, said=True) as im:
            refusal = _OWN_REFUSALS.get(im.info.get("Software"))
            if refusal:
                raise pixels.DecodeError(refusal)
            if im.format == "PNG" and im.tile and im.tile[0].args in _DEEP_COLOUR_RAW:
                raise pixels.DecodeError(DEEP_COLOUR)
            if im.format == "PNG" and im.tile and (bits := _SHALLOW_RAW.get(im.tile[0].args)):
                raise pixels.too_few_levels(f"a {bits}-bit PNG holds at most {2**bits}")
            return _gray(im, src, target)

    def colour_spread(self, src: Path | bytes) -> float:
        """A colour JPEG is decoded at a reduced DCT scale (cheap), a PNG in full; both then block-averaged to about
        :data:`~pneumoscan.data.readers.base.SPREAD_SIDE` px, which also evens out JPEG's chroma noise."""
        with _open(src) as im:
            if im.mode not in _COLOUR_MODES:
                return 0.0
            try:
                if isinstance(im, JpegImageFile):
                    im.draft("RGB", (SPREAD_SIDE, SPREAD_SIDE))
                rgb = pixels.reduce(_opaque(im).convert("RGB"), SPREAD_SIDE)
            except Exception as e:  # decoded (strictly) a moment ago: changed since, or a quirk of the draft decode
                raise pixels.DecodeError(f"corrupt or truncated image data: {e}") from None
        return channel_spread(np.asarray(rgb))


@contextmanager
def _open(src: Path | bytes, still: bool = False, said: bool = False) -> Iterator[Image.Image]:
    """Header-only open with the size guard applied; Pillow's own bomb warning/error become our limit. Pillow reads
    the handle :func:`~pneumoscan.data.pixels.opened` gives, never the path, after :func:`_count_segments` has
    walked it: one open and one walk of a PNG's chunks a read. ``still``: refuse an animated PNG of more than one
    image (:func:`_png_images`), as a film is read. Pillow's other warnings on opening it (:func:`_heeded`) are
    logged naming the film when ``said`` (its decode), else dropped (its header read and colour measure, for which
    the decode of the same film says them)."""
    with pixels.opened(src) as fp:
        images = _count_segments(fp)
        fp.seek(0)
        try:
            im, warned = _heeded(lambda: Image.open(fp, formats=PIL_FORMATS))
        except Image.DecompressionBombError:
            raise pixels.DecodeError(
                f"image too large: over {pixels.MAX_PIXELS:,} pixels, more than can be read safely"
            ) from None
        except Image.UnidentifiedImageError:
            # Pillow gives no reason: a width or height of 0, a pixel format none has
            fp.seek(0)
            if marked := _marked_format(fp.read(8)):
                if marked == "JPEG" and (precision := _jpeg_precision(fp)) not in (None, 8):
                    raise pixels.DecodeError(f"a JPEG of {precision}-bit samples: only 8-bit JPEG files are read; "
                                             "export the film as a 16-bit greyscale PNG or as DICOM") from None
                raise pixels.DecodeError(f"corrupt {marked} header: the image's size or pixel format cannot be "
                                         "read from it") from None
            raise pixels.DecodeError(f"not a {formats()} image") from None
        except Exception as e:  # Pillow raises SyntaxError/OSError/struct.error/... for damaged headers
            raise pixels.DecodeError(f"corrupt image header: {e}") from None
        if said:
            _say(src, warned)
        with im:
            width, height = im.size
            if width * height > pixels.MAX_PIXELS:
                raise pixels.too_large(width, height)
            if _bytes(im) > pixels.MAX_DECODED_BYTES and not isinstance(im, JpegImageFile):  # a JPEG decodes smaller
                raise pixels.too_many_bytes(width, height, _PILLOW_BYTES.get(im.mode, 4), im.mode)
            if still and images > 1:
                raise pixels.DecodeError(f"animated PNG (APNG, {images} images) is not a single radiograph; export "
                                         "the film to read")
            yield im


def _heeded(call: Callable[[], T]) -> tuple[T, list[str]]:
    """``call()`` (Pillow's), and the warnings it gave, each once and on one line: Pillow warns of EXIF data it cannot
    read whole (``Corrupt EXIF data.  Expecting to read 12 bytes but only got 0.``) naming no file, and Python shows
    a warning once a run, so a predict run over many films left its user to guess which one. Pillow's bomb warning
    (from ~8.9e7 pixels) is dropped: MAX_PIXELS is the limit this package enforces."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        done = call()
    return done, list(dict.fromkeys(" ".join(str(w.message).split()) for w in caught))


def _say(src: Path | bytes, warned: list[str]) -> None:
    """Log Pillow's warnings on the film ``src`` (:func:`_heeded`) once, naming it."""
    if warned:
        log.warning("%s: %s (read without what Pillow could not read: an EXIF orientation among it would leave the "
                    "film turned as stored)", shown(src) if isinstance(src, Path) else "the uploaded image",
                    "; ".join(warned))


def _marked_format(head: bytes) -> str | None:
    """The format a file's first bytes mark (:data:`_MAGIC`), None for any other: a file Pillow cannot identify is
    then a damaged JPEG or PNG, not some other kind of file."""
    return next((name for name, magic in _MAGIC.items() if head.startswith(magic)), None)


def _jpeg_precision(fp: BinaryIO) -> int | None:
    """The sample precision a JPEG file's frame header gives (None without one before its first scan): Pillow opens
    8-bit JPEG only, and refuses a 12- or 16-bit one (an intact file, a DICOM frame saved as is) without a reason."""
    fp.seek(0)
    try:
        info = jpeg.frame_info(fp.read())
    except Exception:  # a damaged header (two frame headers, too many segments): corrupt, as said without this
        return None
    return None if info is None else info[3]


def _count_segments(fp: BinaryIO) -> int:
    """How many images the file holds (a PNG's counted from its chunks, :func:`_png_images`; a JPEG's 1), in the
    one walk of its bytes a read. Refuse a JPEG whose header (before its first scan) takes Pillow's parser over
    :data:`~pneumoscan.data.pixels.MAX_SEGMENTS` steps, or a PNG with as many chunks, counted from the file's bytes a
    seek at a time: Pillow reads each in Python (4.8 million empty comments took 9.9 s and 163 MB, 1.5 million
    private PNG chunks 8.9 s and 175 MB), and no film holds so many. A PNG of more than one ICC profile (iCCP) is
    refused too: the PNG standard allows one, and Pillow inflates every one (up to 1 MiB each, keeping the last),
    with no total cap as its text chunks have (19,000 in a 19 MB upload took 93 s). Anything else, or a file cut
    short, is left to Pillow to refuse. ``fp``: the file, read from its start."""
    profiles, images = 0, 1
    try:
        head = fp.read(8)
        if head[:2] == b"\xff\xd8":
            steps, what = _jpeg_steps(fp), "JPEG marker segments"
        elif head == _MAGIC["PNG"]:
            kinds = list(_png_chunks(fp))
            steps, what, profiles, images = len(kinds), "PNG chunks", kinds.count(b"iCCP"), _png_images(kinds)
        else:
            return images
    except OSError as e:
        raise pixels.unreadable(e) from None
    if steps > pixels.MAX_SEGMENTS:
        raise pixels.too_many_segments(what)
    if profiles > 1:
        raise pixels.DecodeError(f"malformed PNG: {profiles:,} ICC profiles (iCCP chunks), where a PNG holds at most "
                                 "one; export the film again")
    return images


def _jpeg_steps(fp: BinaryIO) -> int:
    """The steps Pillow's JPEG parser takes from SOI to the first scan, counted to MAX_SEGMENTS + 1 at most. A step
    reads a marker and its segment (a length under 2 reads none), a marker it knows without one (RSTn, SOI, even
    EOI: it reads on), a fill byte or a stray byte: 2 million RST0 markers took it 0.75 s, a million APP0 segments of
    length 0 0.8 s, each uncounted by a count of segments alone (the first of either ended it). A run of fill or
    stray bytes is measured a block at a time."""
    pos, steps = 2, 0
    while steps <= pixels.MAX_SEGMENTS:
        fp.seek(pos)
        fields = fp.read(4)
        if len(fields) < 2:
            return steps
        if fields[0] != 0xFF or fields[1] == 0xFF:  # stray bytes, or fill bytes before a marker's own 0xFF
            run = _run(fp, pos + (fields[0] == 0xFF), fields[0] == 0xFF, pixels.MAX_SEGMENTS + 1 - steps)
            pos, steps = pos + run, steps + run
            continue
        known = MARKER.get(0xFF00 | fields[1])
        if fields[1] == 0xDA or (known is None and fields[1] != 0x00):  # the first scan, or a marker Pillow refuses
            return steps
        segment = known is not None and known[2] is not None  # else 0xFF00, or a marker without a segment
        pos, steps = pos + 2 + (max(int.from_bytes(fields[2:], "big"), 2) if segment else 0), steps + 1
    return steps


def _run(fp: BinaryIO, start: int, fill: bool, most: int) -> int:
    """How many bytes from ``start`` are 0xFF (``fill``) or are not (stray bytes), counted to ``most``."""
    fp.seek(start)
    length = 0
    while length < most and (block := fp.read(min(2**16, most - length))):
        if fill:
            ends = len(block) - len(block.lstrip(b"\xff"))
        else:
            found = block.find(b"\xff")
            ends = len(block) if found < 0 else found
        length += ends
        if ends < len(block):
            break
    return length


def _png_chunks(fp: BinaryIO) -> Iterator[bytes]:
    """The type of each chunk of a PNG after its signature (``fp`` just past it), read from their lengths up to IEND
    or the file's end, MAX_SEGMENTS + 1 of them at most."""
    for _ in range(pixels.MAX_SEGMENTS + 1):
        fields = fp.read(8)  # length, type; then data, CRC
        if len(fields) < 8 or fields[4:] == b"IEND":
            return
        yield fields[4:]
        fp.seek(int.from_bytes(fields[:4], "big") + 4, io.SEEK_CUR)


def own_output_info(kind: str) -> PngInfo:
    """The PNG text chunk that marks a file as a pneumoscan Grad-CAM ``kind`` (``overlay`` or ``map``), which
    :meth:`PillowReader.gray` refuses."""
    info = PngInfo()
    info.add_text("Software", OWN_OUTPUT_SOFTWARE[kind])
    return info


def _bytes(im: Image.Image) -> int:
    return im.width * im.height * _PILLOW_BYTES.get(im.mode, 4)


def _gray(im: Image.Image, src: Path | bytes, target: int | None) -> np.ndarray:
    """Gray uint8 pixels, reduced (:func:`pixels.reduce`) and upright. The decoded image is turned into an 8-bit one
    in place of a copy or a strip at a time, so decoding holds at most about 1.6 times its decoded bytes."""
    width, height = im.size
    try:
        if isinstance(im, JpegImageFile):  # an MPO too: its first picture, the one a browser shows
            decoded = _jpeg_gray(im, src)
        else:
            if im.format == "PNG":
                _refuse_short_png(im.fp)
            im.load()
            decoded = im
        orientation, warned = _heeded(lambda: _orientation(im))  # a PNG's may follow
        _say(src, warned)  # its pixels; a JPEG's was read on opening it
    except pixels.DecodeError:
        raise
    except Exception as e:  # truncated or corrupt data (LOAD_TRUNCATED_IMAGES stays False on purpose)
        raise pixels.DecodeError(f"corrupt or truncated image data: {e}") from None
    if decoded.mode.startswith("I"):
        # 16-bit PNG, often a DICOM export holding 10- to 14-bit values: min-max, as a DICOM without a window
        # (scaling by 65535 would make 12-bit data nearly black; Pillow's convert('L') would clip)
        lo, hi = decoded.getextrema()
        def strip(top: int, end: int) -> np.ndarray:  # np.asarray(im) would copy it all, twice (tobytes)
            return np.asarray(decoded.crop((0, top, width, end)))

        key = decoded.info.get("transparency")  # a tRNS grey value (convert('LA') ignores it in these modes)
        if key is not None and any((strip(top, min(top + 256, height)) == key).any() for top in range(0, height, 256)):
            raise pixels.DecodeError(TRANSPARENT)
        gray = Image.fromarray(pixels.stretch(strip, height, width, lo, hi))
    else:
        _refuse_transparency(decoded)
        if decoded.mode == "1":  # however small: a bilevel picture is never a radiograph
            raise pixels.too_few_levels('a bilevel (1-bit, mode "1") image holds 2')
        gray = decoded if decoded.mode == "L" else _opaque(decoded).convert("L")
    pixels.check_grey_levels(gray)
    gray = pixels.reduce(gray, target)
    if orientation in _ORIENTATION:  # a phone photo of a film: upright as every viewer shows it
        gray = gray.transpose(_ORIENTATION[orientation])
    return np.asarray(gray)


def _refuse_short_png(fp: BinaryIO) -> None:
    """Refuse a PNG whose image data (its IDAT chunks, ``fp`` the file) inflates to fewer bytes than the rows its
    header gives need (:func:`_png_data_bytes`). Pillow reads such a file without a word when its zlib stream is
    closed properly (a file cut short and closed again by a tool, or a faulty export): the rows it lacks stay black,
    or, interlaced, every other row, and were scored as a film. Its image data is inflated to count it, a MiB at a
    time, never held (10-17 ms for a 1,776 x 1,416 film on a 2-core machine, whose whole decode took 86 ms); a
    damaged stream is left to Pillow's decode to refuse."""
    fp.seek(8)
    needed, inflated, inflate = 0, 0, zlib.decompressobj()
    try:
        for _ in range(pixels.MAX_SEGMENTS + 1):  # as many as _count_segments let through
            fields = fp.read(8)
            if len(fields) < 8 or fields[4:] == b"IEND" or (inflated and fields[4:] != b"IDAT"):
                break  # a PNG's IDAT chunks follow one another
            length, kind = int.from_bytes(fields[:4], "big"), fields[4:]
            if kind == b"IHDR":
                needed = _png_data_bytes(fp.read(13))
                length -= 13
            elif kind == b"IDAT":
                for start in range(0, length, 2**16):
                    inflated += _inflated(inflate, fp.read(min(2**16, length - start)))
                length = 0
            fp.seek(length + 4, io.SEEK_CUR)  # the rest of its data, then its CRC
    except (zlib.error, struct.error):
        return
    if inflated < needed:
        raise pixels.DecodeError(f"corrupt or truncated image data: the PNG's image data ends early: it inflates to "
                                 f"{inflated:,} of the {needed:,} bytes its header's rows need (a file cut short and "
                                 "closed again, or a faulty export); export or send it again")


def _inflated(inflate: zlib._Decompress, data: bytes) -> int:
    """How many bytes ``data``, the next piece of a zlib stream, inflates to, inflated a MiB at a time and dropped."""
    count = 0
    while data and not inflate.eof:
        count += len(inflate.decompress(data, 2**20))
        data = inflate.unconsumed_tail
    return count


# Adam7's passes over an interlaced PNG: (first column, first row, column step, row step)
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_PNG_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # samples a pixel by colour type: grey, RGB, palette, grey + alpha, RGBA


def _png_data_bytes(ihdr: bytes) -> int:
    """The bytes a PNG's image data inflates to, from its IHDR chunk's data: every row of the image (of each Adam7
    pass of an interlaced one), a filter byte before each."""
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", ihdr)
    bits = depth * _PNG_SAMPLES.get(colour, 1)
    total = 0
    for column, row, across, down in _ADAM7 if interlace else ((0, 0, 1, 1),):
        columns, rows = -(-(width - column) // across), -(-(height - row) // down)
        if columns > 0 and rows > 0:
            total += rows * (1 + -(-columns * bits // 8))
    return total


def _orientation(im: Image.Image) -> int | None:
    """The orientation the image's EXIF block gives (a JPEG's APP1, a PNG's eXIf), the one browsers, and so the
    service's page, turn a film by; refused when its XMP metadata gives another (:func:`_xmp_orientation`). Pillow's
    getexif also takes one from XMP or from ImageMagick's PNG text ("Raw profile type exif") when the EXIF block has
    none, which browsers ignore; photo editors follow XMP. A film whose only orientation is in XMP (a privacy tool
    strips EXIF and keeps XMP) was read as stored, which is one of two readings: scored turned a quarter from the
    film an editor shows, or, turned, beside a page that shows it as stored, its heatmap over the wrong orientation.
    Which way up it is cannot be told, so it is refused; one whose XMP agrees reads as EXIF says. The PNG text, which
    no viewer of films follows, is left as browsers leave it. Pillow's parse is kept for its warnings (said once a
    film: a JPEG's on opening it); the block is parsed again, silently, only when Pillow found an orientation, to
    tell whether the block holds it."""
    found = im.getexif().get(ExifTags.Base.Orientation)
    block = im.info.get("exif")
    own = None
    if found is not None and block:
        parsed = Image.Exif()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parsed.load(block)
        own = parsed.get(ExifTags.Base.Orientation)
    xmp = _xmp_orientation(im)
    if xmp is not None and _ORIENTATION.get(xmp) != _ORIENTATION.get(own):  # an unknown value turns nothing
        raise pixels.DecodeError(
            f"conflicting orientations: the XMP metadata says tiff:Orientation {xmp}, the EXIF block "
            f"{'none' if own is None else f'Orientation {own}'}; browsers (and the service's page) turn a film by "
            "EXIF alone, photo editors by XMP, so which way up the film is cannot be told; export it upright, with "
            "no orientation or the same in both")
    return own


def _xmp_orientation(im: Image.Image) -> int | None:
    """The orientation the image's XMP metadata gives (``tiff:Orientation``; a JPEG's APP1 XMP, a PNG's iTXt, as
    Pillow puts them in ``info``), None without one. Read from the packet by :data:`_XMP_ORIENTATION`, as an
    attribute in either quote or as an element's text, not by Pillow's getexif, whose pattern takes ``="6"`` and
    ``>6`` alone. Fails closed: a packet that names an orientation it does not give in those forms (an
    ``rdf:value``, a value that is no number) or gives two (a pantry's history item beside the image's own) is
    refused, as which way up the film is cannot be told from it."""
    found: set[int] = set()
    for key in ("xmp", "XML:com.adobe.xmp"):
        packet = im.info.get(key)
        if isinstance(packet, str):
            packet = packet.encode("utf-8", "replace")
        if not isinstance(packet, bytes):
            continue
        for mention in _XMP_ORIENTATION.finditer(packet):
            value = mention[1] or mention[2]
            if value is None:
                raise pixels.DecodeError(
                    f"unreadable orientation: the XMP metadata names {mention[0].decode('ascii', 'replace')} in a "
                    "form this reader does not read, so which way up the film is cannot be told; export it upright, "
                    "with no orientation in its XMP or the one of its EXIF block")
            found.add(int(value))
    if len(found) > 1:
        raise pixels.DecodeError(
            f"conflicting orientations: the XMP metadata gives {' and '.join(map(str, sorted(found)))}, so which way "
            "up the film is cannot be told; export it upright, with one orientation or none")
    return found.pop() if found else None


def _png_images(kinds: list[bytes]) -> int:
    """How many images a PNG of these chunks holds: its default image (IDAT), and, when an animation control (acTL)
    comes before it (the APNG rule, without which browsers and Pillow show a still PNG), a frame for each frame
    control (fcTL) after it, whatever the acTL says (frame data, fdAT, without one counts one). An animated PNG of
    more than one image is refused as multi-frame DICOM is: Pillow reads the PNG's default image, which a browser
    (the service's page) does not show when it is no part of the animation (a NORMAL film scored, the pneumonia film
    beside it on screen), and the file does not say which frame is the film. Counted from its chunks, not from
    Pillow's frame count, which reads the animation control otherwise than a browser may: it passed over an
    animation of two acTL chunks, or of one saying 0 frames, and read the default image, where Firefox plays the
    first acTL (libpng's APNG patch skips a second) and so shows the frame after it. A multi-picture JPEG (MPO: a
    phone's Ultra HDR photo, whose second picture is a gain map; a camera's, with a preview) is read as its first
    picture, the primary one, which a browser shows too."""
    default = kinds.index(b"IDAT") if b"IDAT" in kinds else len(kinds)
    if b"acTL" not in kinds[:default]:
        return 1
    after = kinds[default + 1 :]
    return 1 + (after.count(b"fcTL") or int(b"fdAT" in after))


def _refuse_transparency(im: Image.Image) -> None:
    """Refuse an image any pixel of which is not fully opaque (an alpha band below 255, or a PNG ``tRNS`` colour or
    palette entry that a pixel uses): composited on black it is dimmed and its white markers turn black, and it
    would be scored as a film. A fully opaque one (an RGBA export) is read as its colours."""
    if "A" not in im.getbands() and "transparency" not in im.info:
        return
    if "A" not in im.getbands() and im.mode in ("L", "P"):
        # from the counts of its values and what tRNS makes of each: converting a 12,000 x 12,000 film to an alpha
        # band took 0.9 GB, where its pixels were counted at 1 byte each
        used, transparency = im.histogram(), im.info["transparency"]
        alphas = (transparency if isinstance(transparency, bytes) else
                  bytes(0 if i == transparency else 255 for i in range(256)))
        transparent = any(count and i < len(alphas) and alphas[i] < 255 for i, count in enumerate(used))
    else:
        alpha = im.getchannel("A") if "A" in im.getbands() else im.convert("LA").getchannel("A")
        transparent = alpha.getextrema()[0] < 255
    if transparent:
        raise pixels.DecodeError(TRANSPARENT)


def _opaque(im: Image.Image) -> Image.Image:
    """``im`` without its tRNS transparency, which its conversion leaves out anyway: a film is read only when no pixel
    is see-through (:func:`_refuse_transparency`), and Pillow's convert of a palette with an alpha for each entry
    warns that it "should be converted to RGBA images", a line in predict's and the service's logs naming no film."""
    im.info.pop("transparency", None)
    return im


def _jpeg_gray(im: JpegImageFile, src: Path | bytes) -> Image.Image:
    """The JPEG's grey pixels, libjpeg's warnings (corrupt or missing entropy-coded data) raised as errors. Within
    MAX_DECODED_BYTES they are the pixels Pillow gave (colour decoded, then its convert('L')); beyond it, the luma
    channel alone, at the smallest of 1/2, 1/4 or 1/8 scale (DCT scaling) that fits, as Pillow's draft mode gave. A
    CMYK JPEG decodes at 4 bytes a pixel whatever is asked (libjpeg has no CMYK-to-grey conversion), so its scale
    is chosen for 4 bytes a pixel."""
    data = src if isinstance(src, bytes) else _whole_file(im)
    width, height = im.size
    if im.mode == "L" or (im.mode == "RGB" and _bytes(im) > pixels.MAX_DECODED_BYTES):
        colorspace, per_pixel = "GRAY", 1
    else:  # RGB within the limit (Pillow's pixels exactly), CMYK
        colorspace, per_pixel = ("RGBX" if im.mode == "RGB" else im.mode), 4
    fits = (s for s in (1, 2, 4, 8) if -(-width // s) * -(-height // s) * per_pixel <= pixels.MAX_DECODED_BYTES)
    scale = next(fits, None)
    if scale is None:
        raise pixels.too_many_bytes(-(-width // 8), -(-height // 8), per_pixel, f"{im.mode} JPEG at 1/8 scale")
    if scale > 1:
        log.debug("decoding a %d x %d %s JPEG at 1/%d scale, within MAX_DECODED_BYTES", width, height, im.mode, scale)
    arr = jpeg.decode(data, colorspace, min_width=-(-width // scale), min_height=-(-height // scale),
                      min_factor=scale)  # fmt: skip
    if arr is None:  # intact, with a quirk libjpeg-turbo will not read past: Pillow's decode, which only warns
        im.draft("L" if colorspace == "GRAY" else im.mode, (width // scale, height // scale))
        im.load()
        return im
    size = arr.shape[1], arr.shape[0]
    if colorspace == "GRAY":
        return Image.frombuffer("L", size, arr, "raw", "L", 0, 1)
    if im.mode == "CMYK":
        np.invert(arr, out=arr)  # Adobe's inverted CMYK, as Pillow reads every CMYK JPEG ("CMYK;I")
    return Image.frombuffer(colorspace, size, arr, "raw", colorspace, 0, 1).convert("L")


def _whole_file(im: Image.Image) -> bytes:
    """The bytes of the file ``im`` was opened from, read from its handle (:func:`~pneumoscan.data.pixels.opened`),
    not from its path again."""
    try:
        im.fp.seek(0)
        return im.fp.read()
    except OSError as e:  # one that may pass (EIO, ESTALE) stays in the chain for pixels.transient
        raise pixels.unreadable(e) from None


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

