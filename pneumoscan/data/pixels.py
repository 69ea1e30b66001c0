"""What every image reader shares: the decode limits and their refusals (:class:`DecodeError`), the reasons for
pixels that hold no picture, the one reduction towards the model's size, and the stretch of any numbers to 8-bit
grey.

Readers (:mod:`pneumoscan.data.readers`) read the limits here when they decode, so a site (or a test) sets them in
one place; :mod:`pneumoscan.data.decode` picks the reader for a file.
"""

from __future__ import annotations

import errno
import io
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from pneumoscan.core import files
from pneumoscan.core.logs import error_chain

# Refuse anything bigger before pixels are decoded (a 12,000 x 12,000 film is 1.44e8; the largest real chest
# radiographs are ~4,300 x 3,500). Pillow's own hard limit (2 * Image.MAX_IMAGE_PIXELS ~ 1.8e8) is above this.
MAX_PIXELS = 150_000_000
# Pixels alone do not bound memory: a 16-bit or colour image holds 2 to 4 bytes a pixel once decoded, and DICOM's
# rescale and window arithmetic 8 (float64) a sample. Refuse, from the header, any image whose decoded form would
# exceed this (a 4,300 x 3,500 16-bit radiograph is 30 MB); a JPEG is instead decoded smaller (luma only, then 1/2,
# 1/4 or 1/8 scale) to fit. A decode holds at most about 1.6 times this (an 11,000 x 12,000 16-bit PNG: 400 MiB;
# a 5,700 x 5,800 12-bit DICOM with a rescale and a window: 160 MiB; benchmarks/bench_memory.py). Readers read both
# limits here when they decode.
MAX_DECODED_BYTES = 256 * 2**20
# A JPEG Lossless or 12-bit DICOM frame, and a JPEG with a warning that is no damage, has its Huffman codes walked
# (readers/jpeg.py) in Python at about 4.4 million codes a second, or, for a one-component lossless frame (one code a
# sample), as chains walked at once in numpy, about 12 times as fast unless the data is made so that they never fall
# into step. A scan that may hold more codes (one a sample, 65 an 8 x 8 block, never more than one a bit of its data)
# is refused before it is walked: a 4 MB upload of 1-bit codes held 33.5 million and cost 10 s. The cap is a whole
# adult-size detector's film (43 x 43 cm at 0.1 mm: 4,300 x 4,300, about 4 s code by code), as children are often
# filmed on one; an 8-bit JPEG of any size within MAX_PIXELS holds far fewer (12,000 x 12,000 in 1.7 MB: 1.2 s).
MAX_HUFFMAN_CODES = 18_500_000
# Each scan of a progressive JPEG visits every 8 x 8 block of its components, however little it codes (runs of
# end-of-band): libjpeg-turbo visits about 125 million blocks a second here, and a complete progression of 2,649 scans
# over a 12,000 x 12,000 colour image, 1.5 MB, cost 71 s of CPU in the service (883 scans grey, 0.5 MB: 24 s).
# libjpeg's own progressions visit each block 6 (grey) to 10 (colour) times; the cap is 16 visits of every block of a
# MAX_PIXELS image (about 0.3 s), counted from the markers before anything is decoded.
MAX_PROGRESSIVE_BLOCKS = 16 * MAX_PIXELS // 64
# Each DICOM pixel-data fragment, JPEG marker segment and PNG chunk costs a library a step in Python before (or
# instead of) decoding: 2.4 million empty fragments took 8.8 s, 4.8 million empty JPEG comments 9.9 s. Real films
# hold a few (a JPEG about 10 segments, a DICOM 1 fragment a frame or one every 64 KiB); the most is a PNG's
# IDAT chunks at libpng's 8 KiB each: 32,768 of them hold 256 MiB (MAX_DECODED_BYTES). A file with more is refused
# from a count of its bytes, which stops at the limit.
MAX_SEGMENTS = 32_768
# OpenJPEG builds a structure for every tile, code block and precinct before it decodes a pixel: 4 x 4 code blocks
# over a 5,792 x 5,792 film (a 700-byte frame) took 1.1 GB, 2 x 2 precincts 5.8 GB, 23 x 23 tiles 0.8 GB. A film's
# encoder makes a few thousand (64 x 64 code blocks, precincts of 128 or more, no tiles or tiles of 256 and more);
# counted from the codestream's markers, more than these are refused before it is decoded.
MAX_J2K_BLOCKS = 2**18  # code blocks, and precincts
MAX_J2K_TILES = 2**14
_MINMAX_CHUNK = 1 << 20  # pixels converted at a time, so the float64 arithmetic needs 8 MB, not 8 bytes a pixel


class DecodeError(ValueError):
    """Raised with a human-readable reason (str(e)) when a file cannot be read as an X-ray."""


class BlankImage(DecodeError):
    """A film with nothing to see (:func:`blank_reason`), refused by its reader at full size
    (:func:`few_grey_levels`), before :func:`reduce` averages a few scattered pixels of another grey level away;
    :func:`pneumoscan.data.decode.read_gray` still asks whether a DICOM's window is what left nothing to see."""


# The refusals of pixels that hold no picture, whatever the reader: a model given a black square still answers
# with a probability, so a failed export or a window beside the film's values is refused, never scored.
BLANK = "blank image: every pixel has the same value"
BLANK_IN_WINDOW = "blank image: nothing of the film is inside its window"
NOT_FINITE = "pixel data holds values that are not finite numbers (NaN or infinity)"
# A thresholded, posterised or bilevel picture (a fax or scanner's bitonal export, a 1-bit DICOM) is no radiograph,
# and its score flips with the threshold (a pneumonia film read NORMAL 0.014 at one, PNEUMONIA 0.657 at another).
# Every film of train/ and val/ holds at least 113 grey levels as 8-bit; fewer than MIN_GREY_LEVELS is refused.
MIN_GREY_LEVELS = 16
NOT_A_RADIOGRAPH = "a thresholded, posterised or bilevel picture, not a radiograph"
# Films with a shorter side than this get the scope check's thumbnail warning (scope.MIN_SIDE), which files no
# finding; a few pixels hold few levels anyway (a 2 x 2 test image), so their levels are not counted.
LEVELS_MIN_SIDE = 224
# A nearly blank image: at least this share of its pixels within NEAR_BLANK_LEVELS of its commonest grey level. On
# the 5,232 films of train/ and val/ (read at 224 px) the largest share is 0.33 (99th percentile 0.20).
NEAR_BLANK_SHARE = 0.95
NEAR_BLANK_LEVELS = 2


def not_gray(gray: object) -> str | None:
    """What ``gray`` is, as a reason's words ("a float32 array of shape (64, 64)"), when it is not the one form of a
    decoded film, a 2-D uint8 array; None when it is. One check for what a reader returns and what preprocessing
    takes, so that neither hands numpy or Pillow an array they refuse in their own words, or take in another way."""
    if isinstance(gray, np.ndarray) and gray.ndim == 2 and gray.dtype == np.uint8:
        return None
    return what_was_given(gray)


def what_was_given(given: object) -> str:
    """``given`` as a refusal names what it was given: an array by its type and shape ("a float32 array of shape
    (64, 64)"), anything else by its type ("Image"), never by its values (a film's pixels)."""
    return f"a {given.dtype} array of shape {given.shape}" if isinstance(given, np.ndarray) else type(given).__name__


def blank_reason(gray: np.ndarray, judged: str = "") -> str | None:
    """Why 8-bit pixels hold nothing to see (none at all, one grey level, or nearly one), None when they hold a
    picture: a model shown a uniform square still answers with a probability. ``judged``: words that say which
    pixels were judged, when they are not the film's own (" once reduced from ... to ... px")."""
    return _blank_counts(np.bincount(gray.ravel(), minlength=256), judged)


def _blank_counts(counts: np.ndarray, judged: str = "") -> str | None:
    """:func:`blank_reason` from the 256-bin histogram of the pixels."""
    if np.count_nonzero(counts) <= 1:
        return BLANK + judged
    if (share := one_level_share(counts)) >= NEAR_BLANK_SHARE:
        return (f"blank image: {100 * share:.1f}% of the pixels are within {NEAR_BLANK_LEVELS} grey levels of one "
                f"value{judged} (an empty film with a marker or label, say)")
    return None


def too_few_levels(what: str) -> DecodeError:
    """The refusal of a film with fewer than :data:`MIN_GREY_LEVELS` grey levels; ``what`` says how it is known."""
    return DecodeError(f"too few grey levels: {what}, where a radiograph has hundreds: {NOT_A_RADIOGRAPH}")


def one_level_share(counts: np.ndarray) -> float:
    """The share of the pixels within NEAR_BLANK_LEVELS grey levels of the commonest one (``counts``: the 256-bin
    histogram)."""
    mode = int(counts.argmax())
    return float(counts[max(0, mode - NEAR_BLANK_LEVELS) : mode + NEAR_BLANK_LEVELS + 1].sum()) / max(1, counts.sum())


def too_few_levels_in_window(window: str, levels: int) -> DecodeError:
    """The refusal of a DICOM whose own window (or VOI LUT), narrower than the film's values, leaves it fewer than
    :data:`MIN_GREY_LEVELS` grey levels: the window is at fault, not the film (as :data:`BLANK_IN_WINDOW` says of a
    window that leaves nothing). ``window``: which, as "its window (WindowCenter 40, WindowWidth 12)"."""
    return DecodeError(f"too few grey levels after {window}: the film holds {levels} inside it, where a radiograph "
                       "has hundreds; the window is too narrow for the values of the film (check the window, or export "
                       "the original film)")


def few_grey_levels(gray: Image.Image) -> int | None:
    """How many grey levels an 8-bit film holds when they are too few for a radiograph (2 to MIN_GREY_LEVELS - 1,
    counted at full size, before :func:`reduce` averages blocks into levels in between: a bilevel film reduced 4
    times holds 17); None when they are enough, or the film too small to tell (:data:`LEVELS_MIN_SIDE`). One level,
    or nearly one (:data:`NEAR_BLANK_SHARE`), at any size, is refused here as blank (:class:`BlankImage`): reduced,
    a film of one grey level with a few scattered pixels of the next reads as one level, and "every pixel has the
    same value" would be untrue of it. Pillow's histogram reads the pixels in place: no copy of the film is made."""
    counts = np.array(gray.histogram())
    if reason := _blank_counts(counts):
        raise BlankImage(reason)
    return _few_levels(counts, gray.size)


def _few_levels(counts: np.ndarray, shape: tuple[int, ...]) -> int | None:
    """:func:`few_grey_levels` from the 256-bin histogram of a film of ``shape`` (its two sides, in either order)."""
    levels = int(np.count_nonzero(counts))
    return levels if min(shape) >= LEVELS_MIN_SIDE and levels < MIN_GREY_LEVELS else None


def check_grey_levels(gray: Image.Image) -> None:
    """Refuse an 8-bit film of too few grey levels (:func:`few_grey_levels`)."""
    if (levels := few_grey_levels(gray)) is not None:
        raise too_few_levels(f"the film holds {levels}")


def check_array(gray: np.ndarray) -> None:
    """Refuse (DecodeError) 8-bit pixels that a caller made, not a reader, as a reader refuses a film's: blank or
    nearly (:func:`blank_reason`), or of too few grey levels (:func:`few_grey_levels`). An array made another way
    (Pillow's convert, a viewer's export) has passed neither check, and a model scores a uniform square or a
    thresholded film as readily as a radiograph."""
    counts = np.bincount(gray.ravel(), minlength=256)
    if reason := _blank_counts(counts):
        raise DecodeError(reason)
    if (levels := _few_levels(counts, gray.shape)) is not None:
        raise too_few_levels(f"the film holds {levels}")


TRANSIENT_ERRNOS = frozenset({errno.EIO, errno.EAGAIN, errno.EINTR, errno.ETIMEDOUT, errno.ESTALE, errno.ENOMEM,
                              errno.EBUSY})


def transient(error: BaseException) -> bool:
    """Whether a read failed for a reason that may pass (an I/O error, a network file system's hiccup), whenever
    it struck: an OSError of :data:`TRANSIENT_ERRNOS` anywhere in the error's chain (a reader raises its
    DecodeError while the library's error, holding the system's, is being handled). A cache keeps no such failure,
    so the film is read again next time instead of staying out of training for good."""
    return any(isinstance(e, OSError) and e.errno in TRANSIENT_ERRNOS for e in error_chain(error))


def too_large(width: int, height: int) -> DecodeError:
    """The refusal of an image over :data:`MAX_PIXELS` (a possible decompression bomb: a small file that decodes to
    a huge image), in words a reader of films follows."""
    return DecodeError(
        f"image too large: {width} x {height} = {width * height:,} pixels, over the {MAX_PIXELS:,} that can be "
        "read safely"
    )


def too_many_bytes(width: int, height: int, per_pixel: int, what: str) -> DecodeError:
    """The refusal of an image whose decoded form would exceed :data:`MAX_DECODED_BYTES`."""
    return DecodeError(
        f"image too large to decode: {width} x {height} {what} needs {width * height * per_pixel / 2**20:,.0f} MiB "
        f"(limit {MAX_DECODED_BYTES / 2**20:,.0f} MiB)"
    )


def too_many_segments(what: str) -> DecodeError:
    """The refusal of a file holding over :data:`MAX_SEGMENTS` ``what`` (fragments, segments, chunks): each is a step
    in Python for the library that reads it, and no film holds so many. Counting stops at the limit plus one."""
    return DecodeError(f"malformed file: at least {MAX_SEGMENTS + 1:,} {what} (limit {MAX_SEGMENTS:,}), far more "
                       "than any film holds")


def opened(src: Path | bytes) -> BinaryIO:
    """``src`` as a binary file to read and seek in (close it, as a ``with`` block does): the bytes, or the file at
    the path opened by :func:`~pneumoscan.core.files.open_regular`, a special file a DecodeError. Every reader opens
    a film here, and hands the library the handle rather than the path: a film swapped for a FIFO after an earlier
    check would leave a plain ``open`` waiting for a writer."""
    if isinstance(src, bytes):
        return io.BytesIO(src)
    try:
        return files.open_regular(src)
    except files.NotRegularFile as e:
        raise DecodeError(str(e)) from None
    except OSError as e:  # gone since an earlier check, or the disk's error: a reason, as a damaged film has
        raise unreadable(e) from None


def unreadable(error: OSError) -> DecodeError:
    """The DecodeError of a film the system could not open or read; ``error`` stays in its chain, so
    :func:`transient` still tells an I/O error that may pass."""
    return DecodeError("file not found" if isinstance(error, FileNotFoundError)
                       else f"cannot read file: {error.strerror or error}")


def reduce(gray: Image.Image, target: int | None) -> Image.Image:
    """The same reduction for every format: average blocks of n x n pixels, n the largest whole number that keeps
    the short side above ``target``, so a film bigger than the model's input stays bigger. A JPEG is decoded in full
    for this (its DCT-scaled draft decode gives other pixels than the same film as PNG or DICOM, and other scores)."""
    factor = _reduction(min(gray.size), target)
    return gray.reduce(factor) if factor >= 2 else gray


def reduced_shape(shape: tuple[int, int], target: int | None) -> tuple[int, int]:
    """The (rows, columns) :func:`reduce` gives an image of ``shape``, without reducing it (Pillow rounds up)."""
    factor = _reduction(min(shape), target)
    return (-(-shape[0] // factor), -(-shape[1] // factor)) if factor >= 2 else (shape[0], shape[1])


def _reduction(short_side: int, target: int | None) -> int:
    """:func:`reduce`'s block size: the largest whole number that keeps the short side above ``target``."""
    return (short_side - 1) // target if target else 1


def minmax_u8(arr: np.ndarray) -> np.ndarray:
    """A 2-D array of any numbers stretched from its minimum and maximum to uint8 0-255 (see :func:`stretch`)."""
    return stretch(lambda top, end: arr[top:end], *arr.shape, float(arr.min()), float(arr.max()))


def stretch(rows: Callable[[int, int], np.ndarray], height: int, width: int, lo: float, hi: float) -> np.ndarray:
    """Values ``lo..hi`` stretched to uint8 0-255, a block of ``rows(top, end)`` at a time: a whole float64 copy of a
    12,000 x 12,000 film would be 1.1 GB. A NaN or infinite bound (float pixel data; a minimum or maximum is NaN
    when any value is) is refused: the arithmetic would turn it into arbitrary grey levels. Flat values
    (``hi == lo``) come out black, which :func:`pneumoscan.data.decode.read_gray` refuses as a blank image."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise DecodeError(NOT_FINITE)
    out = np.zeros((height, width), np.uint8)
    if hi <= lo:
        return out
    scale = 255.0 / (hi - lo)
    for block in blocks(height, width, _MINMAX_CHUNK):
        out[block] = np.rint((rows(block.start, block.stop).astype(np.float64) - lo) * scale)
    return out


def blocks(count: int, size: int, pixels: int) -> Iterator[slice]:
    """Slices of ``count`` rows (or films) of ``size`` pixels each, about ``pixels`` of them a slice (at least one
    row): work on an image or a batch a block at a time holds one block's temporaries, not the whole's."""
    step = max(1, pixels // max(1, size))
    return (slice(top, min(top + step, count)) for top in range(0, count, step))
