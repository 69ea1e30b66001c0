"""DICOM through pydicom: the file read and its header checked, the header's limits before the pixels are read;
:mod:`.dicom_pixels` then makes the pixels the film as a viewer shows it.

pydicom's messages quote element values (a patient's name, id or birth date), so its logs are redacted from the
moment this reader is loaded (:func:`pneumoscan.core.logs.keep_dicom_values_out_of_logs`). The reports and overlays
this package writes are refused here too: they are in the film's study, and a second run over the same folder or
PACS study must not score its own Grad-CAM overlay as a chest film.

A deflated dataset is inflated here within the decode limit (pydicom inflates all of it first); the faults of pixel
data that pydicom lets through are stopped in :mod:`.dicom_pixels`.
"""

from __future__ import annotations

import codecs
import copy
import functools
import io
import math
import os
import re
import struct
import zlib
from contextlib import nullcontext
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np
from pydicom import filereader
from pydicom.charset import (
    CODES_TO_ENCODINGS,
    ESC,
    convert_encodings,
    default_encoding,
    handled_encodings,
    python_encoding,
)
from pydicom.datadict import dictionary_has_tag, dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileDataset
from pydicom.filebase import DicomBytesIO
from pydicom.misc import size_in_bytes
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.valuerep import (CUSTOMIZABLE_CHARSET_VR, DA, EXPLICIT_VR_LENGTH_32, PN_DELIMS, TEXT_VR_DELIMS, TM,
                               VR)
from pydicom.uid import (
    HTJ2K, JPEG2000, UID, DeflatedExplicitVRLittleEndian, DigitalIntraOralXRayImageStorageForProcessing,
    DigitalMammographyXRayImageStorageForProcessing, DigitalXRayImageStorageForProcessing, ExplicitVRBigEndian,
    ExplicitVRLittleEndian, HTJ2KLossless, HTJ2KLosslessRPCL, ImplicitVRLittleEndian, JPEG2000Lossless,
    JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1, JPEGLSLossless, JPEGLSNearLossless,
    MediaStorageDirectoryStorage, PrivateTransferSyntaxes, RLELossless,
)  # fmt: skip
from pydicom.values import converters

from pneumoscan.core.logs import keep_dicom_values_out_of_logs, redact
from pneumoscan.data import pixels
from . import dicom_pixels
from .base import Reader, formats
from .dicom_pixels import GREY_NUMBERS, PIXEL_KEYWORDS, POLARITY, Film, frame_group, given, syntax_name

# The transfer syntaxes pneumoscan reads (docs/dicom.md, Transfer syntaxes), each decoded by a plugin installed with
# it and tested on a real film (HTJ2K's made by OpenJPH, decoded by OpenJPEG); what a DICOM receiver (listen) accepts
TRANSFER_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
                     ExplicitVRBigEndian, JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1,
                     JPEGLSLossless, JPEGLSNearLossless, JPEG2000Lossless, JPEG2000, HTJ2KLossless, HTJ2KLosslessRPCL,
                     HTJ2K, RLELossless)
# (implicit VR, little endian) as pydicom detected them -> the transfer syntax of a file that records none
_ENCODINGS = {(True, True): ImplicitVRLittleEndian, (False, True): ExplicitVRLittleEndian,
              (False, False): ExplicitVRBigEndian}  # fmt: skip
_SAMPLES = {"MONOCHROME1": 1, "MONOCHROME2": 1, "PALETTE COLOR": 1, "RGB": 3, "YBR_FULL": 3, "YBR_FULL_422": 3,
            "YBR_PARTIAL_420": 3, "YBR_ICT": 3, "YBR_RCT": 3}  # fmt: skip
# The colour spaces pydicom reads samples in without a codec (uncompressed, deflated or RLE pixel data; PS3.3
# C.7.6.3.1.2). The others a codec converts (YBR_ICT, YBR_RCT: JPEG 2000) or are retired (HSV, ARGB, CMYK): pydicom
# hands their samples on as they are, read as RGB or grey (a grey film stored YBR_PARTIAL_422 came out at a quarter of
# its contrast, and an HSV one of one sample without its window)
_SAMPLED_AS_STORED = frozenset({"MONOCHROME1", "MONOCHROME2", "PALETTE COLOR", "RGB", "YBR_FULL", "YBR_FULL_422"})
_RETIRED_COLOURS = frozenset({"HSV", "ARGB", "CMYK"})
# Every Photometric Interpretation DICOM defines, retired ones too (PS3.3 C.7.6.3.1.2): a refusal names these, and
# never repeats other text a header holds there (a refusal reaches a client, a log and a results file)
PHOTOMETRICS = frozenset({*_SAMPLES, *_RETIRED_COLOURS, "YBR_PARTIAL_422", "XYB"})
_SPACINGS = ("PixelSpacing", "ImagerPixelSpacing", "PixelAspectRatio")  # each row (vertical) first, then column
_SQUARE = 0.01  # pixels whose height and width differ by no more than this are square (a calibration's rounding)
# non-square pixels are resampled up to this ratio (older CR and scanners: 2:1 at most); beyond, refused
_MAX_ASPECT = 3.0
_DEFER_SIZE = "64 KB"  # a header-only read leaves values larger than this (the pixels) unread
# the most of a file after its preamble that its File Meta and any command set are read from: a film's take a few
# hundred bytes, and pydicom builds each of their elements in Python (2 million empty ones in 16 MB took 43 s)
_HEAD_BYTES = 64 * 1024
MANUFACTURER = "pneumoscan"  # the Manufacturer of every DICOM object this package writes (SR, Secondary Capture)
OWN_OUTPUT = "a pneumoscan output (Grad-CAM Secondary Capture or DICOM SR), not a film"
# X-ray images For Processing (PS3.3 C.8.11.1.1.1): the detector's raw values, which the modality's image processing
# turns into the For Presentation image a reader sees (the DX IOD asks a VOI LUT or window of that image only)
FOR_PROCESSING_CLASSES = frozenset({DigitalXRayImageStorageForProcessing,
                                    DigitalMammographyXRayImageStorageForProcessing,
                                    DigitalIntraOralXRayImageStorageForProcessing})
FOR_PROCESSING = ("raw detector values, before the image processing that makes them a film to read; read its For "
                  "Presentation image")
# a dataset's :func:`misread_text`, kept with it: pydicom keeps no bytes of an element once it has read it
_MISREAD = "_pneumoscan_misread"
# how pydicom cuts a value in ISO 2022 code extensions into parts it reads each in one character set (charset.py)
_FRAGMENTS = re.compile(b"(^[^\x1b]+|\x1b[^\x1b]*)")


# Latin alphabet No. 9 (ISO 8859-15: Latin-1 with the euro sign, Œ, Š, Ž), a defined term of SpecificCharacterSet
# (PS3.3 C.12.1.1.2) that pydicom 3.0 does not know: it read such films' text as Latin-1 (Œuvre as ¼uvre), and their
# reports were refused as naming no character set. One entry in pydicom's own table, which a pydicom that knows the
# term keeps.
python_encoding.setdefault("ISO_IR 203", "iso8859_15")


# ACR-NEMA 300's forms of a date (2023.03.15) and a time (10:15:00.25, 10:15), which real films hold: DICOM writes
# neither (PS3.5 6.2: a DA is YYYYMMDD, a TM HHMMSS.FFFFFF), and a report that copied one would be an invalid object.
# pydicom reads the date (and writes it back as held), not the time.
_OLD_FORMS = {"DA": (re.compile(r"(\d{4})\.(\d{2})\.(\d{2})"), DA),
              "TM": (re.compile(r"(\d{2}):(\d{2})(?::(\d{2})(\.\d{1,6})?)?"), TM)}


def standard_form(vr: str, text: str) -> str | None:
    """The value in DICOM's form (``20230315``, ``101500.25``) of ``text``, a DA or TM of ``vr`` in ACR-NEMA's form
    (``2023.03.15``, ``10:15:00.25``) that pydicom reads in DICOM's: the same date or time, digit for digit. None for
    any other text (in DICOM's form already, or no date or time: ``2024.13.45`` and ``25:00`` stay as held, and are
    refused as such where copied). Only spaces pad it: a control character keeps it as held."""
    old, value_class = _OLD_FORMS.get(vr, (None, None))
    match = old.fullmatch(text.strip(" ")) if old is not None else None
    if match is None:
        return None
    form = "".join(part or "" for part in match.groups())
    try:
        value_class(form)
    except ValueError:
        return None
    return form


def misread_text(ds: Dataset) -> frozenset[BaseTag]:
    """The text elements of ``ds`` (a film's header or one of its sequence items) holding bytes beyond ASCII that
    pydicom reads, silently, in another character set than the one its ISO 2022 escape sequences put in force: as
    Latin-1 where they put none (``Yamada\\xe9^Taro`` under ``\\ISO 2022 IR 87`` without an escape, after ``ESC ( B``,
    or Korean bytes without ``ESC $ ) C``). The text read cannot tell this guess from the film's characters (JIS X
    0208 and KS X 1001 hold ``±`` and ``°`` too), so it is taken from the bytes as read, before any element is read:
    pydicom keeps no bytes of an element it has read. :func:`read_dataset` takes it for every film it reads (and
    each sequence item); a dataset read elsewhere gets it at the first call, from the elements not yet read, so call
    this before reading any value. Empty when its SpecificCharacterSet names no ISO 2022 code extensions."""
    known = ds.__dict__.get(_MISREAD)
    if known is None:
        known = _misread_in(ds, [])
    return known


def _misread_in(ds: Dataset, inherited: list[str]) -> frozenset[BaseTag]:
    """:func:`misread_text` of ``ds``, kept with it and each of its sequence items, ``inherited`` the Python encodings
    of the dataset it is an item of (an item without its own SpecificCharacterSet is read in them)."""
    found: set[BaseTag] = set()
    try:
        encodings = _code_extensions(ds) or inherited
    except Exception:  # an unreadable character set: refused where it is read
        encodings = []
    for tag in list(ds.keys()) if encodings else []:
        element = ds.get_item(tag, keep_deferred=True)
        if _misread_element(element, encodings):
            found.add(tag)
        elif _vr(element) == "SQ":
            try:
                items = ds[tag].value
            except Exception:  # an unreadable sequence: refused where it is read
                continue
            for item in items:
                _misread_in(item, encodings)
    ds.__dict__[_MISREAD] = frozenset(found)
    return ds.__dict__[_MISREAD]


def charset_terms(ds: Dataset) -> list[str]:
    """``ds``'s own SpecificCharacterSet as its list of terms ([] for none, one term alone as a list of it); raises
    as pydicom does on a value it cannot read."""
    charsets = ds.get("SpecificCharacterSet") or []
    return [str(term) for term in ([charsets] if isinstance(charsets, str) else charsets)]


def _code_extensions(ds: Dataset) -> list[str]:
    """The Python encodings of ``ds``'s own SpecificCharacterSet (as pydicom reads its text in them) when it uses
    ISO 2022 code extensions (several values, or one ISO 2022 term); [] otherwise."""
    terms = charset_terms(ds)
    if len(terms) < 2 and not any(term.startswith("ISO 2022") for term in terms):
        return []
    return convert_encodings(terms)


def _vr(element: object) -> str | None:
    """The VR an element as read has (an implicit VR file's: the dictionary's)."""
    vr = getattr(element, "VR", None)
    if vr is None and isinstance(element, RawDataElement) and dictionary_has_tag(element.tag):
        vr = dictionary_VR(element.tag)
    return vr


def _misread_element(element: object, encodings: list[str]) -> bool:
    """Whether ``element``, as read (not yet converted by pydicom), is text whose bytes pydicom misreads in
    ``encodings`` (:func:`misread_text`); each value, and each group of a name, read apart as pydicom reads them."""
    vr = _vr(element)
    if not isinstance(element, RawDataElement) or vr not in CUSTOMIZABLE_CHARSET_VR or not element.value:
        return False
    values = [element.value] if vr in ("LT", "ST", "UT") else element.value.split(b"\\")
    if vr == "PN":
        return any(_misread_bytes(group, encodings, PN_DELIMS) for value in values for group in value.split(b"="))
    return any(_misread_bytes(value, encodings, TEXT_VR_DELIMS) for value in values)


def _misread_bytes(value: bytes, encodings: list[str], delimiters: set[int]) -> bool:
    """Whether pydicom reads a byte beyond ASCII of ``value`` in another character set than the G1 set in force
    there (PS3.5 6.1.2.5): the first value's (none for ASCII) until an escape designates another, and again after a
    delimiter. pydicom reads each part from one escape to the next in the set that escape names, and after a
    delimiter in the first value's, which for ASCII is Latin-1; a byte pydicom fails to read is no concern here (it
    shows as undecoded)."""
    first = encodings[0]
    initial = None if first == default_encoding else first  # ASCII holds no byte beyond it: no G1 set
    g1 = initial
    for fragment in _FRAGMENTS.findall(value):
        if not fragment.startswith(ESC):
            spans = [(first, fragment, g1)]
        else:
            size = 4 if fragment.startswith((ESC + b"$(", ESC + b"$)")) else 3
            code = CODES_TO_ENCODINGS.get(fragment[:size], "")
            if code not in encodings and code != default_encoding:
                continue  # an escape pydicom leaves in the text, undecoded
            if fragment[1:2] in (b"-", b")") or fragment[1:3] == b"$)":  # G1 designations (94 or 96 characters)
                g1 = code
            if code in handled_encodings:
                continue  # read whole by Python's codec, which reads no byte beyond its set
            body = fragment[size:]
            cut = next((i for i, byte in enumerate(body) if byte in delimiters), len(body))
            spans = [(code, body[:cut], g1), (first, body[cut:], initial)]
            if cut < len(body):
                g1 = initial
        for read_in, span, in_force in spans:
            if not span.isascii() and (in_force is None or codecs.lookup(read_in).name != codecs.lookup(in_force).name):
                return True
    return False


def bare_dataset(head: bytes) -> bool:
    """Whether a file's first bytes (``head``) are a DICOM data set without its 128-byte preamble and DICM marker, as
    older modalities and some exporters write it: its first element a File Meta or identifying one (group 0002 or
    0008, where such a file starts) with the VR DICOM gives it, written or, in implicit VR, a short length. Such a
    file carries no magic, so it is read as DICOM only where it is known to be one (named .dcm, sent as
    application/dicom): the refusal of it as no known format says so (:func:`pneumoscan.data.decode.not_an_image`)."""
    if len(head) < 8:
        return False
    for endian in "<>":  # a data set without File Meta may be big endian
        group, element, written = struct.unpack_from(endian + "HH2s", head)
        tag = group << 16 | element
        if group not in (0x0002, 0x0008) or not element or not dictionary_has_tag(tag):
            continue
        if written == dictionary_VR(tag).encode() or struct.unpack_from(endian + "L", head, 4)[0] < 1024:
            return True
    return False


class DicomReader(Reader):
    name = "DICOM"
    formats = ("DICOM",)
    suffixes = frozenset({".dcm"})  # .dcm files without the 128-byte preamble (and so the magic) are common
    media_types = ("application/dicom",)

    def sniff(self, head: bytes) -> bool:
        return head[128:132] == b"DICM"

    def header(self, src: Path | bytes) -> dict:
        film = _header(read_dataset(src, header_only=True))
        return {"width": film.width, "height": film.height, "mode": f"{film.photometric}/{film.bits}",
                "format": "DICOM", "quality": None}  # fmt: skip

    def gray(self, src: Path | bytes, target: int | None) -> np.ndarray:
        return gray_of(read_dataset(src, header_only=False), target)


def gray_of(ds: Dataset, target: int | None) -> np.ndarray:
    """:meth:`DicomReader.gray` of a file already read whole (:func:`read_dataset`), so that one read of it serves
    its pixels and its header's other uses (the scope checks). Decoding adjusts the grey numbers (rescale, window)
    of ``ds`` in place, as pydicom's LUTs read them: what reads the header as the file holds it reads it first."""
    return np.asarray(pixels.reduce(dicom_pixels.gray(ds, _header(ds)), target))


def without_pixels(ds: Dataset) -> Dataset:
    """The header of ``ds`` (a file read whole) without its pixel data, for what copies a header whole (a report's
    checks deep-copy it, and the pixels would be copied with it): each other element a copy of its own, taken
    before decoding adjusts ``ds``'s grey numbers in place (:func:`gray_of`), so it stays as the file holds it; its
    File Meta, encoding and :func:`misread_text` kept."""
    pixel_tags = {tag_for_keyword(k) for k in PIXEL_KEYWORDS}
    header = Dataset({tag: copy.copy(ds.get_item(tag, keep_deferred=True)) for tag in ds.keys()
                      if tag not in pixel_tags})
    header.file_meta = ds.file_meta
    header.set_original_encoding(*ds.original_encoding, ds.original_character_set)
    header.__dict__[_MISREAD] = misread_text(ds)  # the read's verdict: a value read since keeps no bytes to judge
    return header


def size_as_read(ds: Dataset) -> tuple[int, int]:
    """(width, height) of the film as it is read (square pixels), from its header."""
    film = _header(ds)
    return film.width, film.height


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


keep_dicom_values_out_of_logs("pydicom")


def read_dataset(src: Path | bytes, header_only: bool) -> Dataset:
    """The file as a pydicom dataset; ``header_only`` leaves large values (the pixels) in the file, read later
    through :func:`_reopened` (or from the bytes). Opened once, and read as pydicom's ``dcmread(force=True)`` reads
    it (:func:`_read_file`), its elements counted before pydicom reads them. Its :func:`misread_text` is taken here,
    while every value is as read."""
    try:
        if isinstance(src, bytes):  # the buffer stays open: a deferred value is read from it
            ds = _read_file(io.BytesIO(src), header_only)
        else:
            with pixels.opened(src) as fp:
                ds = _read_file(fp, header_only)
                if ds.filename is not None:  # a deferred value: read again from this file, or refused
                    ds.fileobj_type = functools.partial(_reopened, _identity(fp))
        misread_text(ds)
        return ds
    except pixels.DecodeError:
        raise
    except Exception as e:
        raise pixels.DecodeError(f"not a readable DICOM file: {redact(str(e))}") from None  # pydicom quotes values


def _read_file(fp: BinaryIO, header_only: bool, encoding: tuple[bool, bool] | None = None) -> FileDataset:
    """``fp`` (at its start) read as pydicom's ``dcmread(fp, force=True)`` reads it, with its preamble and File Meta
    read once, and each part's elements bounded before pydicom builds them: the File Meta and any command set
    within :data:`_HEAD_BYTES`, the data set by :func:`_count_elements` in the encoding pydicom reads it in
    (:func:`_encoding`, then :func:`_implicit_as_read`; ``encoding``: (implicit VR, little endian) to read it in
    instead). A deflated data set is inflated within MAX_DECODED_BYTES (pydicom inflates it whole before any limit
    is checked: a 398 KiB file held 400 MiB), and its large values left in memory until read; ``header_only`` leaves
    them in the file (the pixels)."""
    preamble = filereader.read_preamble(fp, force=True)  # force: .dcm files without the preamble are common
    start = fp.tell()
    head = DicomBytesIO(bytes(start) + fp.read(_HEAD_BYTES))  # at the file's offsets, as each element records them
    head.seek(start)
    meta = filereader._read_file_meta_info(head)
    if "TransferSyntaxUID" in meta and (vr := meta["TransferSyntaxUID"].VR) != "UI":
        # read as text, not a UID, it passed every check of the codestream its syntax names, then was decoded by it
        raise pixels.DecodeError(f"malformed DICOM file: its Transfer Syntax UID (0002,0010) is written as {vr}, "
                                 "not UI (a UID)")
    syntax = meta.get("TransferSyntaxUID")
    deflated = syntax == DeflatedExplicitVRLittleEndian
    command_set = Dataset() if deflated else filereader._read_command_set_elements(head)
    if head.tell() - start >= _HEAD_BYTES:
        raise pixels.DecodeError(f"malformed DICOM file: its File Meta Information runs past {_HEAD_BYTES // 1024} "
                                 "KiB, where a film's takes under 1 KiB")
    fp.seek(head.tell())
    defer = size_in_bytes(_DEFER_SIZE) if header_only else None
    if deflated:
        fp, implicit, little = DicomBytesIO(_inflate(fp.read())), False, True
        defer = size_in_bytes(_DEFER_SIZE)  # already in memory: only the pixels are large, not a padding's
    else:
        implicit, little = encoding or _encoding(fp, syntax)
    start = fp.tell()
    _count_elements(fp, _implicit_as_read(fp, implicit), little)
    fp.seek(start)
    dataset = filereader.read_dataset(fp, implicit, little, defer_size=defer)
    dataset.update(command_set)
    ds = FileDataset(fp, dataset, preamble, meta, implicit, little)
    ds.set_original_encoding(implicit, little, dataset._character_set)
    if "TransferSyntaxUID" not in ds.file_meta and ds.original_encoding in _ENCODINGS:
        # no File Meta (no preamble, no group 0002, as older modalities write): the encoding it was read in
        ds.file_meta.TransferSyntaxUID = _ENCODINGS[ds.original_encoding]
    return ds


def _encoding(fp: BinaryIO, syntax: UID | None) -> tuple[bool, bool]:
    """(implicit VR, little endian) of the data set at ``fp`` (left where it was), as pydicom's ``read_partial``
    tells them: from the transfer syntax, or without one from its first element (explicit when a VR pydicom knows
    follows the tag, big endian when its group then reads as 1024 or more)."""
    at = fp.tell()
    peek = fp.read(6)
    fp.seek(at)
    if not peek:
        return True, True
    if syntax is None:
        group, _, vr = struct.unpack("<HH2s", peek)
        return (False, group < 1024) if vr.decode(default_encoding) in converters else (True, True)
    if syntax in PrivateTransferSyntaxes:
        private = PrivateTransferSyntaxes[PrivateTransferSyntaxes.index(syntax)]
        return private.is_implicit_VR, private.is_little_endian
    return syntax == ImplicitVRLittleEndian, syntax != ExplicitVRBigEndian


def _implicit_as_read(fp: BinaryIO, implicit: bool) -> bool:
    """Whether pydicom's ``read_dataset`` reads the data set at ``fp`` (left where it was) in implicit VR, told
    ``implicit``: it reads the first element again, whatever the transfer syntax said, and takes the VR as explicit
    when two capitals follow its tag (a data set written in the other VR than its File Meta says is read as
    written; counted in the VR it was said to be in, it could hide any number of elements)."""
    at = fp.tell()
    first = fp.read(6)
    fp.seek(at)
    return implicit if len(first) < 6 else not (b"A" <= first[4:5] <= b"Z" and b"A" <= first[5:6] <= b"Z")


def _identity(fp: BinaryIO) -> tuple[int, ...]:
    """What tells the file open at ``fp`` from another put in its place, or from itself rewritten."""
    status = os.fstat(fp.fileno())
    return status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns


def _reopened(identity: tuple[int, ...], name: str, mode: str = "rb") -> BinaryIO:
    """The film at ``name`` opened again (:func:`~pneumoscan.data.pixels.opened`), for pydicom to read a value it
    left unread (it calls a dataset's ``fileobj_type`` as ``open(name, mode)``), refused unless it is the very file
    of ``identity`` read then: a file swapped or rewritten since would have its bytes read as the film's, unchecked
    (a FIFO in its place would leave pydicom's ``open`` waiting for a writer)."""
    fp = pixels.opened(Path(name))
    if _identity(fp) != identity:
        fp.close()
        raise pixels.DecodeError("the file changed after its header was read (replaced or rewritten): read it again")
    return fp


# explicit VRs pydicom knows, and those whose length takes 4 bytes after 2 reserved ones (PS3.5 7.1.2); the others'
# takes 2
_VRS = frozenset(vr.encode() for vr in VR)
_LONG_VRS = frozenset(vr.encode() for vr in EXPLICIT_VR_LENGTH_32)
_UNDEFINED = 0xFFFFFFFF


def _count_elements(fp: BinaryIO, implicit: bool, little: bool) -> None:
    """Refuse a data set (``fp`` at its start; ``little``: little endian, else big) of more than MAX_SEGMENTS data
    elements and sequence items, counted from their element headers before pydicom builds an object for each: 2.6
    million empty private elements in a 20 MB file took 0.85 GB and 10 s (2 million in a big endian 16 MB file, 20
    s), 200 MB of empty sequence items inflated from a 309 KB file over 3.3 GB. Every element pydicom reads is
    counted, those after the pixel data too (an Icon Image Sequence item's, or the film's own: 2 million empty
    elements after it took 8 s), each header read as pydicom reads it: an explicit VR that is no two capitals as an
    implicit header (a 4-byte length); a value of undefined length walked into when its VR says SQ or UN, or, with no
    VR known, when an item follows (pydicom looks ahead), else stepped over as pydicom reads it
    (:func:`_step_over_fragments`); every other value stepped over. Zero bytes read as elements too (8 a step, 16 MB
    took pydicom 5 s); a file refused for them is said to be padded."""
    zeros, endian = 0, "<" if little else ">"
    item = _ITEM if little else _ITEM_BIG
    for _ in range(pixels.MAX_SEGMENTS + 1):
        head = fp.read(8)
        if len(head) < 8:
            return
        zeros += head == bytes(8)
        group, element = struct.unpack_from(endian + "HH", head)
        if group == 0xFFFE:  # an item or a delimiter: an item's elements follow
            continue
        tag, written = group << 16 | element, head[4:6]
        if implicit or (written not in _VRS and not b"AA" <= written <= b"ZZ"):  # pydicom's switch to implicit
            vr = dictionary_VR(tag).encode() if dictionary_has_tag(tag) else None
            length = struct.unpack_from(endian + "L", head, 4)[0]
        elif written in _LONG_VRS:
            vr, more = written, fp.read(4)
            length = struct.unpack(endian + "L", more)[0] if len(more) == 4 else 0
        else:
            vr, length = written, struct.unpack_from(endian + "H", head, 6)[0]
        if length != _UNDEFINED:
            if vr != b"SQ":
                fp.seek(length, io.SEEK_CUR)
        elif vr is None:  # pydicom looks ahead: an item next makes it a sequence
            ahead = fp.read(4)
            fp.seek(-len(ahead), io.SEEK_CUR)
            if ahead != item:
                _step_over_fragments(fp, little)
        elif vr not in (b"SQ", b"UN"):
            _step_over_fragments(fp, little)
    if zeros > pixels.MAX_SEGMENTS // 2:
        raise pixels.DecodeError(f"malformed file: at least {zeros * 8:,} zero bytes among its data elements (after "
                                 "its pixel data, say), which pydicom reads 8 at a time as elements; no film is padded "
                                 "so")
    raise pixels.too_many_segments("DICOM data elements and sequence items")


_ITEM, _SEQUENCE_END = b"\xfe\xff\x00\xe0", b"\xfe\xff\xdd\xe0"  # (FFFE,E000), (FFFE,E0DD), little endian
_ITEM_BIG, _SEQUENCE_END_BIG = b"\xff\xfe\xe0\x00", b"\xff\xfe\xe0\xdd"  # the same, big endian


def _step_over_fragments(fp: BinaryIO, little: bool) -> None:
    """Step ``fp`` past a value of undefined length that is no sequence (encapsulated pixel data: an offset table,
    then fragments, each an item) as pydicom reads it: item by item to its sequence delimiter, else (another tag, or
    the file's end, before one) to the first bytes of a sequence delimiter. Refused past MAX_SEGMENTS items: pydicom
    walks each in Python (2.4 million empty fragments took 8.8 s)."""
    start = fp.tell()
    item, end = (_ITEM, _SEQUENCE_END) if little else (_ITEM_BIG, _SEQUENCE_END_BIG)
    for _ in range(pixels.MAX_SEGMENTS + 1):
        head = fp.read(8)
        if head[:4] == end:
            return
        if len(head) < 8 or head[:4] != item:
            break
        fp.seek(struct.unpack_from("<L" if little else ">L", head, 4)[0], io.SEEK_CUR)
    else:
        raise pixels.too_many_segments("pixel-data fragments")
    fp.seek(start)
    tail = b""
    while block := fp.read(2**20):
        if (at := (tail + block).find(end)) >= 0:
            fp.seek(at - len(tail) - len(block) + 8, io.SEEK_CUR)  # past the delimiter and its length
            return
        tail = block[-3:]


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


def _header(ds: Dataset) -> Film:
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
    _refuse_colour_space(ds, values.photometric)
    width, height = _square_size(values.rows, values.cols, values.height_over_width)
    bits = str(values.bits_stored if values.bits_stored is not None else "?")
    return Film(values.rows, values.cols, values.samples, values.photometric, bits, width, height)


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
        has_pixels = any(k in ds for k in PIXEL_KEYWORDS)
        rows, cols = (int(ds.get(k) or 0) for k in ("Rows", "Columns"))
        frames = int(ds.get("NumberOfFrames") or 1)
        photometric_value = ds.get("PhotometricInterpretation", "MONOCHROME2")
        photometric = str(photometric_value).upper()
        bits_stored, high_bit = ds.get("BitsStored"), ds.get("HighBit")
        high_bit_wrong = None not in (bits_stored, high_bit) and int(high_bit) != int(bits_stored) - 1
        samples = int(ds.get("SamplesPerPixel") or 1)
        _refuse_no_count(ds)
        lut_shape = str(ds.get("PresentationLUTShape") or "").strip().upper()
        float_window = "PixelData" not in ds and given(ds, "WindowCenter") and given(ds, "WindowWidth")
        height_over_width = _pixel_aspect(ds)
        no_numbers = [k for k in GREY_NUMBERS if given(ds, k) and not _numbers(ds.get(k))]
    except pixels.DecodeError:
        raise
    except Exception as e:
        # int() and pydicom quote the value they could not convert: a value in the wrong element may be a name
        raise pixels.DecodeError(f"malformed DICOM header: {redact(str(e))}") from None
    return _HeaderValues(has_pixels, rows, cols, frames, photometric_value, photometric, bits_stored, high_bit,
                         high_bit_wrong, samples, lut_shape, float_window, height_over_width, no_numbers)


# the counts a pixel is made of, each at least 1: 0 was read on to a refusal that misstated it (a Samples per Pixel of 0
# as 1 sample a pixel that needs 0 bytes, a Bits Stored of 0 as stored bits that end at bit -1)
_COUNTS = {"SamplesPerPixel": ("Samples per Pixel", "each pixel has at least one sample"),
           "BitsAllocated": ("Bits Allocated", "each sample has at least one bit"),
           "BitsStored": ("Bits Stored", "each sample has at least one bit")}


def _refuse_no_count(ds: Dataset) -> None:
    """Refuse a header whose Samples per Pixel, Bits Allocated or Bits Stored is under 1 (:data:`_COUNTS`), naming it
    and its value."""
    for keyword, (name, least) in _COUNTS.items():
        if given(ds, keyword) and int(ds.get(keyword)) < 1:
            raise pixels.DecodeError(f"malformed DICOM header: {name} is {int(ds.get(keyword))}, where {least}")


def _refuse_unreadable(ds: Dataset, values: _HeaderValues) -> None:
    """Refuse a header from which no single film can be read: grey levels that cannot be known, no pixels, no
    size, several frames, or more pixels or bytes than the decode limits."""
    if values.no_numbers:  # pydicom keeps such a value as text, and its LUT arithmetic fails on it with a type error
        said = "is not a number" if len(values.no_numbers) == 1 else "are not numbers"
        raise pixels.DecodeError(f"malformed DICOM header: {' and '.join(values.no_numbers)} {said}, so the film's "
                                 "grey levels cannot be known")
    if not values.has_pixels and not _holds_dicom(ds):
        raise pixels.DecodeError(f"not a {formats()} image: read as DICOM (named .dcm or sent as application/dicom), "
                                 "but it has no DICM marker and no DICOM data elements")
    if not values.has_pixels and not len(ds):  # pydicom reads a file that ends inside an element as no element at all
        raise pixels.DecodeError(f"no data set could be read from this DICOM file ({syntax_name(ds)}): it is cut short "
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
    # the LUT and window arithmetic is float64; a palette makes each pixel 3 colour samples first (a 2.9 MB
    # palette film of 5,792 x 5,792 took 1.3 GB)
    held = 3 if values.photometric == "PALETTE COLOR" else samples
    if rows * cols * held * 8 > pixels.MAX_DECODED_BYTES:
        raise pixels.too_many_bytes(cols, rows, held * 8, f"DICOM ({held} sample(s) as float64)")


def _refuse_ambiguous(values: _HeaderValues) -> None:
    """Refuse a header whose elements contradict each other or the pixel data's kind, so that which grey is
    bone, or which bits hold the values, would be a guess; one whose Photometric Interpretation is no term DICOM
    defines; and one whose stored bits hold too few grey levels."""
    photometric, bits_stored, lut_shape = values.photometric, values.bits_stored, values.lut_shape
    if isinstance(values.photometric_value, MultiValue):
        held = [str(v).strip() for v in values.photometric_value]
        said = " (" + "\\".join(held) + ")" if PHOTOMETRICS.issuperset(held) else ""  # other text: not repeated
        raise pixels.DecodeError(f"malformed DICOM header: Photometric Interpretation holds {len(held)} values{said}, "
                                 "where a film has one")
    if str(values.photometric_value).strip() not in PHOTOMETRICS:  # as stored: pydicom's codecs take no other case
        # said without the value, which may be any text (pydicom's codecs quote it)
        raise pixels.DecodeError("malformed DICOM header: Photometric Interpretation is no term DICOM defines (such "
                                 "as MONOCHROME2 or RGB, in capitals), so what its samples mean is unknown")
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
    if POLARITY.get(photometric, lut_shape) != lut_shape and lut_shape in POLARITY.values():
        raise pixels.DecodeError(f"ambiguous polarity: Photometric Interpretation {photometric} with Presentation "
                                 f"LUT Shape {lut_shape} (each says the opposite of the other which grey is bone)")
    if values.float_window:
        raise pixels.DecodeError("float pixel data with a window (Window Center/Width): the window's output range "
                                 "is set by Bits Stored, which float pixel data does not have")


def _refuse_colour_space(ds: Dataset, photometric: str) -> None:
    """Refuse a Photometric Interpretation whose samples pydicom would hand on unconverted (:data:`_SAMPLED_AS_STORED`
    says which it converts): a retired one anywhere, another outside a compressed frame whose codec converts it."""
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if not isinstance(syntax, UID) or not syntax.is_transfer_syntax:
        return  # no syntax: pydicom's refusal names it
    coded = syntax.is_encapsulated and syntax != RLELossless
    if photometric in _RETIRED_COLOURS or (photometric not in _SAMPLED_AS_STORED and not coded):
        where = "retired from DICOM" if photometric in _RETIRED_COLOURS else f"not one {syntax.name} pixel data is in"
        raise pixels.DecodeError(f"Photometric Interpretation {photometric} is {where}: its samples would be read as "
                                 "RGB or grey values, which they are not; export the film as MONOCHROME2 or RGB")


def _square_size(rows: int, cols: int, height_over_width: float) -> tuple[int, int]:
    """(width, height) of the film as read: non-square pixels are resampled to square ones by shrinking the side
    whose pixels are finer, so no detail is invented."""
    if height_over_width > 1:  # tall pixels: the columns are finer, so the width shrinks
        return max(1, round(cols / height_over_width)), rows
    if height_over_width < 1:
        return cols, max(1, round(rows * height_over_width))
    return cols, rows


def _numbers(value: object) -> bool:
    """Whether a DS or IS element's value (one or several) is finite numbers, as pydicom converts valid ones."""
    values = value if isinstance(value, MultiValue) else [value]
    return all(isinstance(v, int | float) and math.isfinite(v) for v in values)


def _pixel_aspect(ds: Dataset) -> float:
    """A pixel's height over its width (:func:`_stated_spacing`); 1 when the header states none, or one within
    :data:`_SQUARE` of it."""
    stated = _stated_spacing(ds)
    if stated is None:
        return 1.0
    keyword, vertical, horizontal = stated
    ratio = vertical / horizontal
    if not 1 / _MAX_ASPECT <= ratio <= _MAX_ASPECT:  # no radiograph's detector: a header fault
        raise pixels.DecodeError(f"malformed DICOM header: {keyword} {vertical:g}\\{horizontal:g} makes each "
                                 f"pixel {max(ratio, 1 / ratio):.3g} times as tall as wide or as wide as tall; "
                                 "no radiograph has such pixels")
    return 1.0 if abs(ratio - 1) <= _SQUARE else ratio


def _stated_spacing(ds: Dataset) -> tuple[str, float, float] | None:
    """(keyword, row spacing, column spacing) of the first of Pixel Spacing (an enhanced object's in its frame's
    Pixel Measures functional group: a 0.2 x 0.1 mm film read as square was squashed 2:1), Imager Pixel Spacing and
    Pixel Aspect Ratio that the header states; None when none does (absent or empty). A value that is not two
    positive numbers (``0\\0``, ``-0.1\\-0.1``, ``0.1\\0``, text, or one value or three where each holds two: row,
    column) is refused: the size or shape of the film's pixels is then unknown."""
    measures = frame_group(ds, "PixelMeasuresSequence")
    stated = [(ds, _SPACINGS[0]), *([(measures, _SPACINGS[0])] if measures is not None else []),
              *((ds, keyword) for keyword in _SPACINGS[1:])]
    for source, keyword in stated:
        element = source.get_item(keyword)
        value = None if element is None else element.value
        if isinstance(value, bytes):  # read as stored: pydicom's conversion raises on a value that is no number
            value = value.decode("ascii", "replace").strip(" \x00").split("\\") if value.strip(b" \x00") else None
        values = [str(v).strip(" \x00") for v in (value if isinstance(value, MultiValue | list) else [value])]
        if value is None or not any(values):  # absent or empty: not stated
            continue
        try:
            numbers = [float(v) for v in values if v]
            shown = "\\".join(values)  # numbers, and any empty value among them (``0.1\\0.1\\``): no text
        except ValueError:  # text, not numbers: not repeated, as it may be any text (a name written in the wrong place)
            numbers, shown = [], "(text, not repeated here)"
        numbers = numbers if all(values) else []  # an empty value among others: not two numbers
        if len(numbers) != 2 or not (min(numbers) > 0 and math.isfinite(numbers[0] / numbers[1])):
            raise pixels.DecodeError(f"malformed DICOM header: {keyword} {shown} is not two positive numbers, so the "
                                     "size and shape of the film's pixels are unknown")
        vertical, horizontal = numbers
        return keyword, vertical, horizontal
    return None


def field_of_view(ds: Dataset) -> tuple[str, float, float] | None:
    """(the spacing's keyword, width, height) in mm of the film as its Pixel Spacing, else Imager Pixel Spacing,
    gives it (:func:`_stated_spacing`): the columns times the column spacing, the rows times the row spacing. None
    when the header states neither, only a Pixel Aspect Ratio (no size), or a spacing or size it refuses."""
    try:
        stated = _stated_spacing(ds)
        rows, cols = (int(ds.get(k) or 0) for k in ("Rows", "Columns"))
    except Exception:  # a damaged value: refused where the film is decoded
        return None
    if stated is None or stated[0] == "PixelAspectRatio" or not rows or not cols:
        return None
    keyword, vertical, horizontal = stated
    return keyword, cols * horizontal, rows * vertical


def _holds_dicom(ds: Dataset) -> bool:
    """Whether the file is DICOM at all: its DICM marker, a File Meta, or a public data element (not a group length)
    in its data set. pydicom reads any bytes by force (a TIFF, a PDF, a text named .dcm) as a few elements of
    unknown tags, and such a file was refused as a DICOM object with no pixel data, not as the other kind of file it
    is."""
    if ds.preamble is not None or any(tag.group == 2 and tag != 0x00020010 for tag in ds.file_meta.keys()):
        return True  # a TransferSyntaxUID alone may be the encoding _read_file took it in
    return any(tag.element and dictionary_has_tag(tag) for tag in ds.keys())


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
    try:  # the file read again as its deferred values are: the very file, its elements counted
        with ds.fileobj_type(source, "rb") if isinstance(source, str) else nullcontext(source) as fp:
            fp.seek(0)
            other = _read_file(fp, header_only=True, encoding=(False, not little))
    except Exception:
        return None
    if not any(k in other for k in PIXEL_KEYWORDS):
        return None
    said, found = ("little", "big") if little else ("big", "little")
    return (f"the File Meta's transfer syntax ({syntax_name(ds)}) says {said} endian, but the dataset is written "
            f"{found} endian: the file is mislabelled")
