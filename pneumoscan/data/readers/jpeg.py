"""Strict JPEG decoding: data that libjpeg warns is damaged (cut short, overwritten) is refused, where decoders that
only warn fill what is missing with flat grey and a half film would be scored as a film. Its other warnings (an
unknown JFIF version, SOS parameters a sequential JPEG ignores) are quirks of intact files, which are read.

8-bit JPEG goes through libjpeg-turbo (simplejpeg, strict); a 12-bit frame of a JPEG Extended DICOM and a JPEG
Lossless (process 14) frame, which pydicom's libjpeg decodes even when damaged, have their Huffman codes walked here
before pydicom decodes them (:func:`check_huffman_scans`).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import simplejpeg

from pneumoscan.data import pixels

log = logging.getLogger(__name__)

# libjpeg's warnings that mean damaged data (jerror.h); a bad ICC marker is colour metadata, not the image
_DAMAGE = ("Corrupt JPEG data", "Premature end of JPEG file", "Inconsistent progression sequence")
_HARMLESS = ("bad ICC marker",)
_PADDING = 3  # unused bytes libjpeg accepts before the marker that ends a scan without a warning
_ENDS_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")  # the marker after a scan: not stuffing, a restart or fill
# the marker after a JPEG-LS scan: in its coded data 0xFF is followed by a byte under 0x80 (T.87 A.1), and fill is 0xFF
_LS_ENDS_SCAN = re.compile(rb"\xff[\x80-\xfe]")
_RESTART = re.compile(rb"\xff([\xd0-\xd7])")
_PROGRESSIVE = (0xC2, 0xCA)  # SOF2, SOF10: progressive DCT, Huffman- or arithmetic-coded
_CUT_SHORT = "Corrupt JPEG data: premature end of data segment"
_ALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RST0-RST7: markers without a segment (T.81 B.1.1.3)
# A lossless scan's codes are walked as chains that start this many bits apart, all at once (:func:`_walk_samples`),
# each walked in from this many bits before its start. On a 4,300 x 4,300 film 4 of 7,300 chains fell out of step
# with the true walk, to be walked again code by code
_SEGMENT_BITS = 1 << 14
_LEAD_IN = 1 << 9
_WINDOW_BITS = 1 << 23  # the bits of a scan's windows made at once (:func:`_windows`): 16 MB for 1 MB of its data


def decode(data: bytes, colorspace: str, **options: int) -> np.ndarray | None:
    """simplejpeg's decode (``options``: min_width, min_height, min_factor) with libjpeg's damage warnings raised
    as ValueError. A file with another warning is read leniently once its Huffman codes are checked (strict mode
    stops at the first warning, and damage further on must still be found); None when libjpeg-turbo will not read
    it even so (an unknown JFIF version), for the caller's lenient decoder."""
    if (_frame_header(data) or (None,))[0] in _PROGRESSIVE:
        check_progression(data)
    try:
        return simplejpeg.decode_jpeg(data, colorspace, strict=True, **options)
    except ValueError as e:
        if _is_damage(str(e)):
            raise
        log.debug("a JPEG warning that is no damage, read on: %s", e)
    check_huffman_scans(data)
    try:
        return simplejpeg.decode_jpeg(data, colorspace, strict=False, **options)
    except ValueError:
        return None


def _is_damage(message: str) -> bool:
    return any(m in message for m in _DAMAGE) and not any(m in message for m in _HARMLESS)


def check_frame(frame: bytes) -> None:
    """Raise ValueError ("Corrupt JPEG data: ...") when a JPEG DICOM frame's entropy-coded data is damaged or cut
    short: pydicom's plugins decode it anyway. An 8-bit DCT frame is decoded by libjpeg-turbo at 1/8 scale for this,
    which still reads every coefficient (about 3 ms for a 1776 x 1416 film, half the full decode); a 12-bit one (JPEG
    Extended, process 4) or a lossless one (process 14) is checked by :func:`check_huffman_scans` (0.05-0.08 s for a
    12-bit DCT film of that size, about 0.1 s of CPU for a grey lossless one, whose every sample has its own code;
    refused over MAX_HUFFMAN_CODES)."""
    marker, precision = _frame_header(frame) or (None, None)
    if precision == 8 and marker != 0xC3:  # libjpeg-turbo cannot scale a lossless frame: walked instead
        colorspace = "CMYK" if simplejpeg.decode_jpeg_header(frame)[2] in ("CMYK", "YCCK") else "GRAY"
        decode(frame, colorspace, min_factor=8)  # None (a harmless quirk): pydicom's plugins read it
    else:
        check_huffman_scans(frame)


def check_ls_frame(frame: bytes) -> None:
    """Raise ValueError when a JPEG-LS frame's last scan does not run to the EOI marker that ends the frame (zero
    bytes after it aside: a DICOM frame is padded to an even length): CharLS (pyjpegls 1.5.1) took 3.4 s of CPU to
    refuse some scans cut short (a 64 x 64 frame cut 5 bytes into its scan), in a decode thread nothing can stop,
    and reads a frame with other bytes after its EOI. A scan is read to the marker that ends it
    (:data:`_LS_ENDS_SCAN`)."""
    end = len(frame.rstrip(b"\0"))
    last = None
    for marker, _, stop, _ in _segments(frame, ends_scan=_LS_ENDS_SCAN):
        last = marker, stop
    if last is None or last[0] != 0xDA:
        raise ValueError("Invalid JPEG-LS stream: its last marker segment before EOI is no scan (SOS)")
    after = _LS_ENDS_SCAN.search(frame, last[1])
    if after is None or after.start() != end - 2 or frame[end - 1] != 0xD9:
        raise ValueError("Invalid JPEG-LS stream: its last scan does not run to the EOI marker that ends the frame "
                         "(cut short, or other bytes after it)")


def _segments(data: bytes, strict: bool = False,
              ends_scan: re.Pattern[bytes] = _ENDS_SCAN) -> Iterator[tuple[int, int, int, bytes]]:
    """(marker, where its segment begins, where it ends, its fields) for each marker segment of a JPEG codestream
    after SOI, fill bytes and markers without a segment (TEM, RSTn) skipped, up to EOI: one walk for every reader
    here. After a scan (SOS) it goes on at the marker that ends the entropy-coded data, and stops when none does.
    Where no marker is due (the data cut short, or other bytes), or at a second SOI, it stops; ``strict``: with
    libjpeg's warning or error instead. Over :data:`~pneumoscan.data.pixels.MAX_SEGMENTS` markers and fill bytes are
    refused (4 MB of empty comments in a DICOM frame took 2.7 s to walk). ``ends_scan``: the marker that ends a scan
    (JPEG-LS's stuffing differs)."""
    pos, count = 2, 0  # after SOI
    while pos + 2 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xD9:  # EOI
            return
        if (count := count + 1) > pixels.MAX_SEGMENTS:
            raise pixels.too_many_segments("JPEG marker segments")
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _ALONE:
            pos += 2
            continue
        if marker == 0xD8:
            if strict:
                raise ValueError("Invalid JPEG file structure: two SOI markers")
            return
        if pos + 4 > len(data) and not strict:  # no room for the segment's length
            return
        end = pos + 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        yield marker, pos, end, data[pos + 4 : end]
        pos = end
        if marker == 0xDA:  # SOS: its entropy-coded data runs to the next marker that is not a restart
            if not (after := ends_scan.search(data, end)):
                return
            pos = after.start()
    if strict:
        raise ValueError("Premature end of JPEG file" if pos + 2 > len(data) else
                         "Corrupt JPEG data: no marker where one is due")


def _component_blocks(sof: bytes) -> dict[int, int]:
    """Each component's 8 x 8 blocks in a frame header's image (its size scaled by the component's sampling factors
    against the largest, T.81 A.1.1)."""
    height, width = int.from_bytes(sof[1:3], "big"), int.from_bytes(sof[3:5], "big")
    fields = [sof[6 + 3 * i : 9 + 3 * i] for i in range(sof[5])]  # id, H << 4 | V, table
    h_max, v_max = max((f[1] >> 4 for f in fields), default=1) or 1, max((f[1] & 15 for f in fields), default=1) or 1
    return {f[0]: math.ceil(math.ceil(width * (f[1] >> 4) / h_max) / 8)
            * math.ceil(math.ceil(height * (f[1] & 15) / v_max) / 8) for f in fields}


def check_progression(data: bytes) -> None:
    """Raise ValueError when a progressive JPEG ends (EOI) before its scans have coded every coefficient of every
    component to full precision (successive approximation down to Al = 0). Cut after a scan and closed with EOI, it
    is a well-formed file to libjpeg, which decodes the coarse scans it has (its first alone is an 8 x 8 block
    mosaic) without a warning; a film is never scored from part of its progression. Only marker segments are read:
    a scan's entropy-coded data is skipped to the marker that ends it."""
    coded: dict[int, list[int | None]] = {}  # component id -> the Al each coefficient has been coded down to
    blocks: dict[int, int] = {}  # component id -> its 8 x 8 blocks, which each scan of it visits
    visits = 0
    for marker, _, end, segment in _segments(data):
        if marker in _PROGRESSIVE:
            coded = {segment[6 + 3 * i]: [None] * 64 for i in range(segment[5])}
            blocks = _component_blocks(segment)
        elif marker == 0xDA and coded:  # SOS: components, then Ss, Se, Ah << 4 | Al
            n = segment[0]
            first, last, al = segment[1 + 2 * n], segment[2 + 2 * n], segment[3 + 2 * n] & 15
            for component in segment[1 : 1 + 2 * n : 2]:
                coded.get(component, [None] * 64)[first : last + 1] = [al] * (last + 1 - first)
                visits += blocks.get(component, 0)
            if visits > pixels.MAX_PROGRESSIVE_BLOCKS:  # before the decoder spends a minute on end-of-band runs
                raise pixels.DecodeError(
                    f"a progressive JPEG whose scans visit over {pixels.MAX_PROGRESSIVE_BLOCKS:,} of its 8 x 8 blocks "
                    "(each scan visits every block of its components, however little it codes): more than any "
                    "film's progression needs; save it again as a baseline JPEG")
            if not _ENDS_SCAN.search(data, end):
                return  # no marker after the scan: cut short, which the decoder reports as such
    if short := sorted(c for c, levels in coded.items() if any(al != 0 for al in levels)):
        raise ValueError(f"Corrupt JPEG data: a progressive JPEG that ends before its last scan (component(s) "
                         f"{', '.join(map(str, short))} not coded in full): part of a film")


_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # SOFn: not DHT, JPG or DAC
_HUFFMAN_SEQUENTIAL = frozenset({0xC0, 0xC1, 0xC3})  # SOF0, SOF1: sequential DCT; SOF3: lossless
_SOF55 = 0xF7  # JPEG-LS's frame header


def _frame_header_at(frame: bytes, markers: frozenset[int]) -> int | None:
    """Where a JPEG codestream's frame header (one of ``markers``) begins; None when a scan comes before it. A second
    one before the first scan is refused (libjpeg's error): which of the two a decoder reads is its own choice."""
    found = None
    for marker, pos, _, _ in _segments(frame):
        if marker == 0xDA:  # the first scan
            break
        if marker in markers:
            if found is not None:
                raise ValueError("Invalid JPEG file structure: two SOF markers")
            found = pos
    return found


def _frame_header(frame: bytes) -> tuple[int, int] | None:
    """(SOF marker, sample precision in bits) of a JPEG codestream's frame header; None when no frame header comes
    first."""
    pos = _frame_header_at(frame, _SOF)
    return None if pos is None or pos + 5 > len(frame) else (frame[pos + 1], frame[pos + 4])


def frame_info(frame: bytes) -> tuple[int, int, int, int] | None:
    """(rows, columns, components, sample precision in bits) a JPEG or JPEG-LS codestream's frame header (SOFn, or
    SOF55 for JPEG-LS) says, rows 0 when it defers them to a DNL marker; None when no frame header comes before the
    first scan."""
    pos = _frame_header_at(frame, _SOF | {_SOF55})
    if pos is None or pos + 10 > len(frame):
        return None
    rows, cols = (int.from_bytes(frame[pos + i : pos + i + 2], "big") for i in (5, 7))
    return rows, cols, frame[pos + 9], frame[pos + 4]


def check_huffman_scans(frame: bytes) -> None:
    """:func:`_walk_scans`, a segment shorter than its fields or a table or component never defined refused too."""
    try:
        _walk_scans(frame)
    except (IndexError, KeyError):
        raise ValueError("Corrupt JPEG data: malformed marker segment") from None


def _walk_scans(frame: bytes) -> None:
    """Walk a sequential Huffman-coded JPEG (baseline or extended DCT, or lossless; any precision) and raise
    ValueError where libjpeg would warn of corrupt data: a code no table holds, a block of over 64 coefficients, a
    scan that ends before its last sample or goes on past it, restart markers missing or out of order. Only code
    lengths are read, no coefficient or sample is decoded. A frame whose scans may hold more than MAX_HUFFMAN_CODES
    codes in all is refused before any is walked (one scan of 18.49 million codes repeated 8 times kept the walk
    busy 38 s; capped scan by scan, the first was still walked, 4.4 s a frame holding the GIL). Progressive and
    arithmetic-coded frames are left to the decoder."""
    scans: list[_Scan] = []
    try:
        scans.extend(_sequential_scans(frame))
        fault = None
    except (ValueError, IndexError, KeyError) as e:  # raised once the scans before it are walked, as libjpeg reads
        fault = e
    if (codes := sum(scan.codes for scan in scans)) > pixels.MAX_HUFFMAN_CODES:
        (width, height), several = scans[0].size, f" in {len(scans)} scans" if len(scans) > 1 else ""
        raise pixels.DecodeError(f"JPEG scan too costly to check: up to {codes:,} Huffman codes{several} ({width} x "
                                 f"{height}), over the {pixels.MAX_HUFFMAN_CODES:,} that are checked in a frame")
    for scan in scans:
        intervals = [_unstuffed(raw) for raw in _restart_intervals(frame[scan.start : scan.end], scan.restart,
                                                                   scan.mcus)]  # fmt: skip
        counts = [min(scan.restart, scan.mcus - number * scan.restart) if scan.restart else scan.mcus
                  for number in range(len(intervals))]  # fmt: skip
        if scan.lossless and len(scan.units) == 1:  # one code a sample: every interval walked at once
            ends = iter(_walk_samples(intervals, scan.units[0][0], counts))
        else:
            ends = _walk_mcus(intervals, scan.units, counts)
        for data, at in zip(intervals, ends):  # in order: the first fault found is the one libjpeg meets
            _check_end(data, at)
    if fault is not None:
        raise fault


class _Scan(NamedTuple):
    """A sequential Huffman-coded scan as :func:`_walk_scans` walks it: its entropy-coded data ``frame[start:end]``,
    its MCUs, the coding of each unit of an MCU, and the most codes it may hold (one a bit of its data at most)."""

    start: int
    end: int
    size: tuple[int, int]
    restart: int
    lossless: bool
    mcus: int
    units: list[_Coding]
    codes: int


def _sequential_scans(frame: bytes) -> Iterator[_Scan]:
    """The scans of a sequential Huffman-coded frame, each with the tables, components and restart interval its
    markers have defined by then; none of a progressive or arithmetic-coded one (a progression's cost is capped
    here), nor after a scan whose height a DNL marker gives later. A frame without a scan is refused."""
    tables: dict[tuple[int, int], np.ndarray] = {}
    components: dict[int, tuple[int, int]] = {}
    width = height = restart = 0
    lossless = scanned = False
    for marker, _, end, segment in _segments(frame, strict=True):
        if marker in _HUFFMAN_SEQUENTIAL:  # SOF0, SOF1: sequential DCT; SOF3: lossless; all Huffman-coded
            lossless = marker == 0xC3
            height, width = int.from_bytes(segment[1:3], "big"), int.from_bytes(segment[3:5], "big")
            fields = [segment[6 + 3 * i : 9 + 3 * i] for i in range(segment[5])]  # id, H << 4 | V, table
            components = {c[0]: (c[1] >> 4, c[1] & 15) for c in fields}
        elif marker in _SOF:  # progressive or arithmetic-coded: left to the decoder, a progression's cost capped
            if marker in _PROGRESSIVE:  # a 12-bit one in a DICOM frame reaches no decode() that would check it
                check_progression(frame)
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
            mcus, units = _scan_units(segment, components, tables, (width, height), lossless)
            found = _ENDS_SCAN.search(frame, end)
            if found is None:
                raise ValueError("Premature end of JPEG file")
            codes = min(mcus * len(units) * (1 if lossless else 65), 8 * (found.start() - end))  # a code takes a bit
            scanned = True
            yield _Scan(end, found.start(), (width, height), restart, lossless, mcus, units, codes)
    if not scanned:
        raise ValueError("JPEG datastream contains no image")


def _huffman_lookup(counts: bytes, symbols: bytes) -> np.ndarray:
    """Every 16-bit window of the bit stream -> code length << 8 | symbol of the code it starts with, 0 where no
    code does: one lookup a symbol."""
    lookup, code, at = np.zeros(65536, np.int32), 0, 0
    for length, count in enumerate(counts, 1):
        for symbol in symbols[at : at + count]:
            if code >> length:
                raise ValueError("Bogus Huffman table definition")
            span = 1 << (16 - length)
            lookup[code * span : (code + 1) * span] = length << 8 | symbol
            code += 1
        at += count
        code <<= 1
    return lookup


# A unit's coding in a scan: (its DC or lossless differences' :func:`_dc_steps`, its AC :func:`_ac_steps`; None in a
# lossless scan)
_Coding = tuple[list[int], tuple[list[int], list[int]] | None]


def _scan_units(sos: bytes, components: dict[int, tuple[int, int]], tables: dict[tuple[int, int], np.ndarray],
                size: tuple[int, int], lossless: bool) -> tuple[int, list[_Coding]]:
    """(MCUs in the scan, the coding of each unit of an MCU in order), by the geometry of T.81 A.2: the cost guard
    and every walk of the scan's intervals start from them."""
    (width, height), hmax, vmax = size, max(h for h, _ in components.values()), max(v for _, v in components.values())
    selected = [(sos[1 + 2 * i], sos[2 + 2 * i] >> 4, sos[2 + 2 * i] & 15) for i in range(sos[0])]
    side = 1 if lossless else 8  # pixels a unit spans each way
    steps = {dc: _dc_steps(tables[0, dc], lossless) for dc in {dc for _, dc, _ in selected}}  # once a table
    acs = {} if lossless else {ac: _ac_steps(tables[1, ac]) for ac in {ac for _, _, ac in selected}}
    codings = [(steps[dc], acs.get(ac)) for _, dc, ac in selected]
    if len(selected) == 1:  # one component: one unit an MCU, over the component's own size
        h, v = components[selected[0][0]]
        return -(-(-(-width * h // hmax)) // side) * -(-(-(-height * v // vmax)) // side), codings
    mcus = -(-width // (side * hmax)) * -(-height // (side * vmax))  # interleaved: each component's h x v units an MCU
    return mcus, [coding for (c, _, _), coding in zip(selected, codings) for _ in range(math.prod(components[c]))]


def _dc_steps(table: np.ndarray, lossless: bool) -> list[int]:
    """The bits a DC difference (or a lossless one) takes from each 16-bit window of ``table``
    (:func:`_huffman_lookup`): its code, then the bits its size says, so that one lookup reads it whole; 0 where
    no code starts or the size is over 16. A lossless difference of size 16 has no bits (T.81 H.1.2.2)."""
    size = table & 0xFF
    bits = np.where((size == 16) & lossless, 0, size)
    return np.where((table == 0) | (size > 16), 0, (table >> 8) + bits).tolist()


def _ac_steps(table: np.ndarray) -> tuple[list[int], list[int]]:
    """Each 16-bit window of an AC ``table`` (:func:`_huffman_lookup`) -> bits << 8 | coefficients << 1 | EOB, for
    the codes it starts with and their values, 0 where its first code is none: (as many codes as lie whole in the
    window, up to an EOB, and none after 16 or more coefficients; its first code alone). A film's codes are mostly a
    few bits long, so :func:`_walk_mcus` takes two or three a lookup; from a block's 48th coefficient on it takes
    the first code alone, and so reads the codes a walk code by code reads (none after the 64th coefficient)."""
    length, run, size = table >> 8, table >> 4 & 15, table & 15
    coefficients = np.where(size > 0, run + 1, np.where(run == 15, 16, 0))  # a value; ZRL: 16 zeros; else EOB
    end = (size == 0) & (run != 15)
    single = np.where(table == 0, 0, (length + size) << 8 | coefficients << 1 | end)
    several = single.copy()
    window = np.flatnonzero((table != 0) & ~end & (length + size < 16))  # windows that may hold a next code
    taken, counted = length[window] + size[window], coefficients[window]
    while window.size:
        following = window << taken & 0xFFFF
        entry = single[following]
        whole = (entry != 0) & (taken + length[following] <= 16)  # a code, all of its bits in the window
        window, taken, counted, entry = window[whole], taken[whole], counted[whole], entry[whole]
        several[window] += entry  # the bits and coefficients add up; its end of block is the entry's
        taken, counted = taken + (entry >> 8), counted + (entry >> 1 & 127)
        going = (entry & 1 == 0) & (counted <= 16) & (taken < 16)
        window, taken, counted = window[going], taken[going], counted[going]
    return several.tolist(), single.tolist()


def _restart_intervals(data: bytes, restart: int, mcus: int) -> list[bytes]:
    """A scan's entropy-coded ``data`` cut at its restart markers (``restart`` MCUs apart; 0: none), refused
    where the markers are out of order or their count is not the one ``mcus`` asks. A marker after the last
    interval, as some encoders write, is dropped: libjpeg reads on."""
    pieces = _RESTART.split(data) if restart else [data]
    if any(index[0] != 0xD0 + number % 8 for number, index in enumerate(pieces[1::2])):
        raise ValueError("Corrupt JPEG data: restart markers out of order")
    intervals, due = pieces[0::2], -(-mcus // restart) if restart else 1
    if len(intervals) == due + 1 and not intervals[-1].strip(b"\xff"):
        intervals = intervals[:-1]
    if len(intervals) != due:
        raise ValueError(f"Corrupt JPEG data: {len(intervals)} restart intervals where {due} are due")
    return intervals


def _unstuffed(raw: bytes) -> bytes:
    """A restart interval's entropy-coded data as its codes are read: fill bytes before its marker dropped, then
    byte stuffing (0xFF 0x00 is 0xFF)."""
    return raw.rstrip(b"\xff").replace(b"\xff\x00", b"\xff")


def _check_end(data: bytes, at: int | None) -> None:
    """Refuse an interval (``data``, unstuffed) whose walk met a code no table holds (``at`` None), or whose codes
    ended at bit ``at`` past its end or leave more than :data:`_PADDING` bytes unread."""
    if at is None:
        raise ValueError("Corrupt JPEG data: bad Huffman code")
    if at > len(data) * 8:
        raise ValueError(_CUT_SHORT)
    if (extra := len(data) - -(-at // 8)) > _PADDING:
        raise ValueError(f"Corrupt JPEG data: {extra} extraneous bytes before marker")


def _walk_mcus(intervals: list[bytes], units: list[_Coding], counts: list[int]) -> Iterator[int]:
    """For each interval (its data unstuffed, then zeros) in turn, the bit after its ``counts`` MCUs of ``units``,
    refused at the first MCU that ends past its end (codes read from the zeros after the data would be no reason to
    give), or at a code no table holds.

    Codes are looked up by the 16-bit window at each bit (:func:`_windows`), several AC codes a lookup while a block
    is at least 16 coefficients from its end (:func:`_ac_steps`), one at a time nearer. The windows are made for all
    the intervals at once, each followed by two zero bytes, a stretch of :data:`_WINDOW_BITS` at a time (made for
    each interval alone, they cost a frame of one MCU an interval more than its walk): an MCU that reads past its
    interval's end, into the next one's data, has the interval walked again alone, to be refused for what the zeros
    after it give."""
    stream = b"".join(data + bytes(2) for data in intervals)
    reach = sum(32 if ac is None else 32 + 63 * 31 for _, ac in units)  # the most bits an MCU takes
    base, origin, last = 0, 0, len(intervals) - 1  # the bit the windows start at; the interval's
    window = _windows(stream, 0, min(8 * len(stream), _WINDOW_BITS) + reach)
    for number, (data, count) in enumerate(zip(intervals, counts)):
        at, end = origin - base, origin + 8 * len(data)  # the walk's bit from base; the interval's end
        for _ in range(count):
            if at > _WINDOW_BITS:  # past the windows made: the next stretch's, from the byte it is at
                base, at = base + (at & ~7), at & 7
                window = _windows(stream, base >> 3, min(8 * len(stream) - base, _WINDOW_BITS) + reach)
            try:
                for dc, ac in units:
                    step = dc[window[at]]
                    if not step:
                        raise ValueError("Corrupt JPEG data: bad Huffman code")
                    at += step
                    if ac is None:
                        continue
                    several, single, k = *ac, 1
                    while k < 48:  # each code of a lookup starts before the 64th coefficient
                        entry = several[window[at]]
                        if not entry:
                            raise ValueError("Corrupt JPEG data: bad Huffman code")
                        at, k = at + (entry >> 8), k + (entry >> 1 & 127)
                        if entry & 1:  # EOB
                            break
                    else:
                        while k < 64:
                            entry = single[window[at]]
                            if not entry:
                                raise ValueError("Corrupt JPEG data: bad Huffman code")
                            at, k = at + (entry >> 8), k + (entry >> 1 & 127)
                            if entry & 1:
                                break
                    if k > 64:
                        raise ValueError("Corrupt JPEG data: a block of more than 64 coefficients")
                if base + at > end:
                    raise ValueError(_CUT_SHORT)
            except ValueError:
                if base + at > end and number < last:  # it may have read the next interval's data
                    next(_walk_mcus([data], units, [count]))  # walked alone, refused for the zeros after it
                raise
        yield base + at - origin
        origin = end + 16


def _windows(data: bytes, start: int, bits: int) -> memoryview:
    """The 16-bit window of ``data`` at each of ``bits`` bits from byte ``start`` (zeros past its end), for the walk
    to index as it goes: a lookup where slicing and shifting the bytes code by code cost more than the code's."""
    size = -(-bits // 8)
    piece, found = np.zeros(size + 2, np.uint32), np.frombuffer(data[start : start + size + 2], np.uint8)
    piece[: len(found)] = found
    bytes3 = piece[:-2] << 16 | piece[1:-1] << 8 | piece[2:]
    window = np.empty((size, 8), np.uint16)
    for shift in range(8):
        window[:, shift] = bytes3 >> (8 - shift)  # cast to 16 bits: the window's mask
    return memoryview(window.reshape(-1))


def _walk_samples(intervals: list[bytes], steps: list[int], counts: list[int]) -> list[int | None]:
    """For each interval of a one-component lossless scan (its data unstuffed, then zeros), the bit after its
    ``counts`` codes (``steps``: see :func:`_dc_steps`), None where a code no table holds comes first: what a walk
    code by code from its start (:func:`_walk_codes`) gives, at numpy's pace rather than Python's (4.4 s for the
    18.5 million codes of a 4,300 x 4,300 film, code by code).

    Each interval is cut into segments of :data:`_SEGMENT_BITS` bits, and a chain of codes is walked through every
    segment at once, each from the first code boundary a walk from :data:`_LEAD_IN` bits before the segment meets
    (a guess: no boundary is known but the interval's start). A code's end depends on nothing but where it begins,
    so walks that meet go on together, and Huffman codes fall into step with the true ones within a few codes of a
    wrong start. The intervals are then followed from their starts segment by segment: a segment whose chain began
    where the true walk enters it gives its end and its codes at once, any other is walked code by code. Exact
    whatever the data, and no slower than the walk code by code when the data never falls into step."""
    # a code and its bits take 32 bits at most: the bytes after 4 a code are never read (and are refused as extra)
    read = [data[: 4 * count + 3] for data, count in zip(intervals, counts)]
    stream = b"".join(data + bytes(4) for data in read)  # zeros after each, as a walk past its end reads
    origins = np.cumsum([0] + [8 * (len(data) + 4) for data in read[:-1]])  # bit where each interval starts
    lengths = np.array([8 * len(data) for data in read])
    pieces = np.maximum(1, -(-lengths // _SEGMENT_BITS))
    owner = np.repeat(np.arange(len(intervals)), pieces)
    within = np.arange(len(owner)) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    starts = origins[owner] + within * _SEGMENT_BITS
    ends = np.minimum(starts + _SEGMENT_BITS, origins[owner] + lengths[owner])
    data, table = np.frombuffer(stream + bytes(2), np.uint8), np.array(steps, np.int64)
    budget = 2 * sum(counts)  # chains out of step may take short codes where the true walk takes long ones
    entries = _walk_chains(data, table, np.maximum(origins[owner], starts - _LEAD_IN), starts, budget)[0]
    exits, walked, stuck = _walk_chains(data, table, entries, ends, budget)
    found: list[int | None] = []
    entry, exit_, codes, stopped, end = (a.tolist() for a in (entries, exits, walked, stuck, ends))
    segment = 0
    for origin, count, number in zip(origins.tolist(), counts, pieces.tolist()):
        at, left = origin, count
        for s in range(segment, segment + number):
            if at == entry[s] and not stopped[s] and codes[s] < left:  # this segment's chain is on the true one
                at, left = exit_[s], left - codes[s]
                continue
            at, done = _walk_codes(stream, steps, at, end[s], left)
            left -= done
            if not left or at < end[s]:  # the count reached, or a code no table holds
                break
        segment += number
        if left and (at < end[segment - 1] or not steps[0]):  # a code no table holds, in the data or its zeros
            found.append(None)
        else:  # past the data, every code is read from zeros
            found.append(at + left * steps[0] - origin)
    return found


def _walk_chains(data: np.ndarray, table: np.ndarray, entries: np.ndarray, ends: np.ndarray,
                 budget: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_walk_codes` from each of ``entries`` to its end in ``ends``, all at once, without a count (``data``:
    the stream's bytes, two zeros after them; ``table``: the steps): (the bit each stopped at, its codes, whether it
    stopped before its end: at a code no table holds, or with the ``budget`` of codes for all spent, which leaves
    the rest to the walk code by code)."""
    at, walked, stuck = entries.copy(), np.zeros(len(entries), np.int64), np.zeros(len(entries), bool)
    going = np.flatnonzero(at < ends)
    here, end, codes = at[going], ends[going], np.zeros(len(going), np.int64)
    while going.size:
        if (budget := budget - going.size) < 0:
            stuck[going] = True
            break
        byte = here >> 3
        window = data[byte].astype(np.int64) << 16 | data[byte + 1].astype(np.int64) << 8 | data[byte + 2]
        step = table[window >> (8 - (here & 7)) & 0xFFFF]
        here += step
        codes += 1
        if (done := (step == 0) | (here >= end)).any():
            bad = step[done] == 0
            at[going[done]], walked[going[done]], stuck[going[done]] = here[done], codes[done] - bad, bad
            going, here, end, codes = going[~done], here[~done], end[~done], codes[~done]
    return at, walked, stuck


def _walk_codes(stream: bytes, steps: list[int], at: int, end: int, count: int) -> tuple[int, int]:
    """Walk up to ``count`` codes of ``stream`` from bit ``at`` while it is before ``end``, code by code: (the bit
    after them, how many); a code no table holds stops it before ``end``."""
    done = 0
    while done < count and at < end:
        step = steps[(int.from_bytes(stream[at >> 3 : (at >> 3) + 3], "big") >> (8 - (at & 7))) & 0xFFFF]
        if not step:
            break
        at, done = at + step, done + 1
    return at, done
