"""Reading an upload: the multipart body in memory only (never spooled to disk) under the size cap and the body
deadline, the content-type check, and the decode the training cache does."""

from __future__ import annotations

import asyncio
import ctypes
import logging
from collections.abc import AsyncIterator, Callable
from email.message import Message
from typing import TypeVar

import numpy as np
from fastapi import Request
from pydicom.dataset import Dataset
from python_multipart.multipart import parse_options_header
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from pneumoscan.data import readers
from pneumoscan.data.decode import image_info, not_an_image, read_dicom, read_gray
from pneumoscan.data.pixels import DecodeError
from pneumoscan.data.readers.dicom import size_as_read, without_pixels
from pneumoscan.data.scope import read_described

from .limits import ClientGone, Rejected

# python-multipart logs each malformed body as a warning of its own, once a request and quoting a byte of it, with
# no handler (Python's last resort prints it bare on stderr): the 400 carries the reason, and the service's own
# failure log, rate-limited, says it
logging.getLogger("python_multipart").setLevel(logging.ERROR)

# Types some clients send for an accepted one (not registered, or older names some browsers and PACS viewers still
# send, which a reader at the web page cannot change): read as that one.
TYPE_ALIASES = {"image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg", "image/x-png": "image/png",
                "application/x-dicom": "application/dicom", "image/dicom": "application/dicom"}
T = TypeVar("T")
# Room for the multipart envelope (boundaries, part headers) on top of the file itself.
ENVELOPE_BYTES = 64 * 1024
# A film of more pixels than this (4,000 x 4,000) takes tens to hundreds of MB to decode, which glibc's allocator
# keeps for the process once freed (four 11,468 x 11,468 16-bit PNGs left the service 220-510 MB larger): it is handed
# back to the system after such a film's decode (:func:`release_freed_memory`). Not after every film: that made a
# 224 px X-ray's decode 2.4 times as long, its pages faulted in again (docs/results.md, "The service's memory after a
# large film").
TRIM_AFTER_PIXELS = 16_000_000


class _InMemoryParser(MultiPartParser):
    """Starlette's multipart parser, in memory, noting whether the body reached its closing boundary: a body cut
    short holds no finished part, and was refused as one sent without a file."""

    # SpooledTemporaryFile(max_size=0) never rolls over: an upload is never written to disk.
    spool_max_size = 0
    ended = False

    def on_end(self) -> None:
        self.ended = True

    def on_headers_finished(self) -> None:
        """A part that names its file by RFC 5987's ``filename*=`` alone (RFC 7578 asks senders not to; some
        clients do) is the file part it says, under its decoded name: python-multipart drops that parameter, and
        the part was read as text and refused as one without a filename."""
        disposition = self._current_part.content_disposition
        extended = None if b"filename" in parse_options_header(disposition)[1] else _extended_filename(disposition)
        if extended is not None:
            self._current_part.content_disposition = disposition + b'; filename=""'
        super().on_headers_finished()
        if extended is not None and self._current_part.file is not None:
            self._current_part.file.filename = extended


def _extended_filename(disposition: bytes) -> str | None:
    """The file name a Content-Disposition gives in ``filename*=`` (or RFC 2231's ``filename*0*=`` pieces),
    decoded as the standard library's e-mail parser decodes it; None without one."""
    header = Message()
    header["content-disposition"] = disposition.decode("latin-1")  # as python-multipart reads header bytes
    return header.get_filename()


async def _capped(stream: AsyncIterator[bytes], max_bytes: int) -> AsyncIterator[bytes]:
    """The request body, refused as soon as it grows past the file limit plus the multipart envelope, whatever
    Content-Length claimed (or without one: chunked uploads); a Content-Length over it is refused before this."""
    size = 0
    async for chunk in stream:
        size += len(chunk)
        _check_body_size(size, max_bytes)
        yield chunk


def _check_body_size(size: int, max_bytes: int) -> None:
    """413 for a request body (declared, or read so far) past the file limit plus the multipart envelope."""
    if size > max_bytes + ENVELOPE_BYTES:
        raise Rejected(413, f"upload too large: the limit is {_limit(max_bytes)}")


def _limit(n: int) -> str:
    """The upload limit of ``n`` bytes, and what a sender over it can do: the limit is the operator's, and a film a
    PACS holds uncompressed is often over the default one (no quote in it: nginx's example quotes this message)."""
    return (f"{n / 2**20:g} MB ({n:,} bytes), set by serve --max-upload-mb; an uncompressed DICOM film is smaller in a "
            "lossless compressed transfer syntax")


def _check_type(media: str, data: bytes, dicom: bool) -> None:
    """Known image types and .dcm names pass (decoding decides); generic binary must look like an image;
    anything else is 415."""
    accepted = readers.media_types()  # the registered readers': a site's own format is sent as its type too
    if media in accepted or dicom:
        return
    if media in ("", "application/octet-stream"):
        if readers.reader_for(data[: readers.HEAD_BYTES]) is None:  # by magic bytes alone: bytes carry no name
            said = not_an_image(data[: readers.HEAD_BYTES], "sent as application/dicom or named *.dcm")
            raise Rejected(415, f"the file is {said}")
        return
    raise Rejected(415, f"unsupported content type {media!r}: send {readers.one_of(accepted)}")


async def read_upload(request: Request, max_bytes: int, timeout: float) -> tuple[bytes, bool]:
    """The multipart field ``file``, read in memory under the cap and checked for an image content type, and
    whether to read it as DICOM whatever its first bytes say: sent as DICOM (declared type or a .dcm name) and
    with no format's magic bytes, as a DICOM without its preamble has none. Magic bytes win, as when ``predict``
    reads a file: a PNG named .dcm is read as the PNG it is. A compressed body (Content-Encoding) is refused,
    not parsed as it is, and so is a ``file`` part without a filename (read as text, not a file), or any part
    besides ``file`` (an option sent in the body, not in the query).
    The whole body must arrive within ``timeout`` seconds: a client trickling bytes would otherwise hold a slot
    of the queue, and its connection, for ever."""
    content_type = request.headers.get("content-type", "")
    if parse_options_header(content_type)[0] != b"multipart/form-data":
        raise Rejected(415, "expected multipart/form-data with the image in a field named 'file'")
    if request.headers.get("content-encoding", "").strip().lower() not in ("", "identity"):
        # the body would be parsed still compressed, and refused as a malformed upload or one without a file
        raise Rejected(415, "a compressed request body (Content-Encoding) is not read: send the upload uncompressed",
                       {"Accept-Encoding": "identity"})
    declared = request.headers.get("content-length", "")  # digits only: h11 refuses any other value
    if declared.isdigit():  # before any of it is read (or sent, by a client that waits for 100 Continue): a larger
        # film took 20 MB to refuse, a declared terabyte the body deadline
        _check_body_size(int(declared), max_bytes)
    parser = _InMemoryParser(request.headers, _capped(request.stream(), max_bytes), max_files=1)
    try:
        async with asyncio.timeout(timeout):
            form = await parser.parse()
    except MultiPartException as e:
        raise Rejected(400, f"malformed multipart upload: {e.message}") from None
    except TimeoutError:
        raise Rejected(408, f"the upload did not arrive within {timeout:g} s", {"Connection": "close"}) from None
    except ClientDisconnect:
        raise ClientGone() from None
    if not parser.ended:
        await form.close()
        raise Rejected(400, "incomplete multipart upload: the body ended before its closing boundary (--BOUNDARY--); "
                            "send the whole body")
    try:
        fields = form.getlist("file")
        if len(fields) > 1:  # one a file, the other text (two files are refused by the parser): which one is the film?
            raise Rejected(400, f"{len(fields)} parts named 'file': send one film a request")
        upload = fields[0] if fields else None
        if isinstance(upload, str):  # a part with no filename= in its Content-Disposition is read as text
            raise Rejected(400, "no file: the field 'file' holds text (a part without a filename): send the image "
                                "as a file part, e.g. curl -F file=@film.dcm")
        if not isinstance(upload, UploadFile):
            raise Rejected(400, "no file: send the image as multipart/form-data in a field named 'file'")
        if others := sorted(set(form.keys()) - {"file"}):  # an option sent as a form field (-F heatmap=true) was
            # dropped, and the film answered without what it asked for
            raise Rejected(400, f"part(s) besides 'file': {', '.join(others)}: the body holds the film alone, and the "
                                "options go in the query string (/v1/predict?heatmap=true)")
        data = await upload.read()
        media = (upload.content_type or "").split(";")[0].strip().lower()
        media = TYPE_ALIASES.get(media, media)
        dicom = media == "application/dicom" or (upload.filename or "").lower().endswith(".dcm")
    finally:
        await form.close()
    if not data:
        raise Rejected(400, "empty file (0 bytes)")
    if len(data) > max_bytes:
        raise Rejected(413, f"file too large: {len(data):,} bytes exceeds the limit of {_limit(max_bytes)}")
    _check_type(media, data, dicom)
    return data, dicom and readers.reader_for(data[: readers.HEAD_BYTES]) is None


async def disconnected(request: Request) -> None:
    """Returns when the client has closed its connection (after the body has been read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def decode_upload(data: bytes, size: int, dicom: bool) -> np.ndarray:
    """Decoded the way the training cache decodes (reduced towards ``size``, whatever the format), so inputs match
    training; the memory a film of over :data:`TRIM_AFTER_PIXELS` took handed back to the system after it, read or
    refused."""
    return _decoded(data, dicom, lambda dataset: read_gray(data, size, dicom, dataset))


def decode_described(data: bytes, size: int, dicom: bool) -> tuple[np.ndarray, dict, Dataset | None]:
    """The film as :func:`decode_upload` decodes it, :func:`~pneumoscan.data.scope.describe`'s fields for it (its
    facts too) and a DICOM's header without its pixels (:func:`~pneumoscan.data.readers.dicom.without_pixels`, what
    a report is made of; None for another format), from the same read of a DICOM
    (:func:`~pneumoscan.data.scope.read_described`)."""

    def decode(dataset: Dataset | None) -> tuple[np.ndarray, dict, Dataset | None]:
        header = None if dataset is None else without_pixels(dataset)  # before decoding adjusts the dataset
        return *read_described(data, dataset, size, dicom, facts=True), header

    return _decoded(data, dicom, decode)


def _decoded(data: bytes, dicom: bool, decode: Callable[[Dataset | None], T]) -> T:
    """``decode`` of the upload as :func:`~pneumoscan.data.decode.read_dicom` reads it (None: not a DICOM), one read
    of a DICOM for its pixels, its header's checks and its size here (it was read again for each); a refusal
    answered 422, and the memory a film of over :data:`TRIM_AFTER_PIXELS` took handed back after it."""
    dataset = None
    try:
        dataset = read_dicom(data, dicom)
        return decode(dataset)
    except DecodeError as e:
        raise Rejected(422, f"cannot read the image: {e}", kind="unreadable_film") from None
    finally:
        if _pixels(data, dicom, dataset) > TRIM_AFTER_PIXELS:
            release_freed_memory()


def _pixels(data: bytes, dicom: bool, dataset: Dataset | None) -> int:
    """Width x height from the film's header, as the decode's reader reads it (from ``dataset``, a DICOM already
    read); 0 when it has none to read."""
    try:
        if dataset is not None:
            width, height = size_as_read(dataset)
        else:
            header = image_info(data, dicom)
            width, height = header["width"], header["height"]
    except DecodeError:
        return 0
    return width * height


def _malloc_trim() -> ctypes._CFuncPtr | None:
    """glibc's ``malloc_trim``; None on a C library without it (musl, macOS), whose allocator is left as it is."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return None


_MALLOC_TRIM = _malloc_trim()


def release_freed_memory() -> None:
    """Hand the memory the process has freed back to the system (``malloc_trim(0)``: the free pages of every arena,
    all but the free tops of the threads' own): glibc keeps freed blocks below its mmap threshold (which rises to
    32 MB as large blocks are freed) in their arenas, so a large decode's memory would stay with the service."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
