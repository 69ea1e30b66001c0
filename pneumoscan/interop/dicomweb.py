"""``pneumoscan pacs``: read a study's films from a PACS over DICOMweb, score them, and store the results back.

QIDO-RS finds the study's instances, WADO-RS retrieves the radiographs among them (decided from the QIDO answer, so
a CT series is never downloaded), :func:`~pneumoscan.interop.study.score_films` scores them (scope warnings
and UIDs included), and with ``store`` STOW-RS sends each film's DICOM SR (and its Grad-CAM Secondary Capture when
heatmaps are asked) into the same study. Any other image in the study (a scanned form, a dose screen) gets a row
saying why it was not scored, and no report. Only what the PACS's answer lists as stored is recorded as stored: a
PACS may answer 202 with some instances failed, refuse one film's request with a 4xx/5xx, or leave one out of its
answer; one film's refusal, or one instance that cannot be retrieved, marks its row and the others go on. Retrieved
films are written to a private temporary folder for the prediction run and deleted with it; they are named by their
SOP Instance UID, never by patient. Credentials (an Authorization header, or user:password in the URL, taken out of
it) go to the HTTP session only: never into a row, a message or a log; a URL with a query string or a fragment (a
token there would be shown, and broke every request's URL) is refused. Every request is made here, through one
requests session, none by dicomweb-client: a QIDO-RS search asks for DICOM JSON alone (:func:`_search`); STOW-RS so
that a retry sends the whole message again and an answer is read, in DICOM JSON or XML, whatever its media type
says, a film whose request gets no answer at all marked and the others going on; and WADO-RS so that a film's
answer is capped in size (:data:`MAX_INSTANCE_BYTES`) and time (:attr:`Connection.film_s`), checked to be the
instance asked for, and, when it is none or malformed, that instance's error only. No redirect is followed: a 3xx
is an error naming where it pointed (a 307 had sent a report, patient and all, to another host).
"""

from __future__ import annotations

import codecs
import io
import logging
import math
import os
import re
import ssl
import struct
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit
from xml.etree import ElementTree

import pydicom
import requests
import urllib3
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ComprehensiveSRStorage, KeyObjectSelectionDocumentStorage
from python_multipart.multipart import parse_options_header
from requests.adapters import HTTPAdapter
from urllib3.util import Retry

from pneumoscan.core.network import is_loopback
from pneumoscan.core.options import PACS_FILM_S, PACS_READ_S
from pneumoscan.core.secrets import check_client_cert, read_secret
from pneumoscan.data.pixels import MAX_DECODED_BYTES
from pneumoscan.data.readers.dicom import is_own_output, read_dataset
from pneumoscan.inference.predict import ready_stages
from .reports import add_warning, check_reportable, dicom_multipart
from .study import (FAILURES, MADE, WARNINGS, not_scored, one_patient, score_films, status_words, study_rows,
                    unreadable_note, valid_uid, withdrawn_by)

log = logging.getLogger(__name__)
# one film's WADO-RS answer: a film whose pixels decode to more than MAX_DECODED_BYTES is refused by the decoder,
# and its uncompressed pixel data is that size (a compressed film's is smaller); 16 MiB more is room for the header
# and the multipart framing. A larger answer is refused at its Content-Length, or cut off when it passes the cap
# (a 1 GiB body had grown the process to 4.4 GB)
MAX_INSTANCE_BYTES = MAX_DECODED_BYTES + 16 * 2**20
WADO_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
QIDO_ACCEPT = "application/dicom+json"  # alone: Orthanc's DICOMweb plugin logs an error for a list of media types
# what a malformed answer raises when read as DICOM (pydicom reads what it is given as far as it can)
_MALFORMED = (InvalidDicomError, ValueError, EOFError, KeyError, TypeError, IndexError, struct.error,
              urllib3.exceptions.HTTPError)
# a busy PACS (these statuses) or a dropped connection is tried 3 times over ~3 s (waits of 1 s, then 2 s, or what
# its Retry-After asks, up to Connection.read_s), not dicomweb-client's 5 times over ~30 s; a read timeout is not tried
# again: the PACS had Connection.read_s to answer
ATTEMPTS, FIRST_WAIT_S = 3, 1.0
_BUSY = (408, 429, 503, 504)
AUTH_ENV = "PNEUMOSCAN_PACS_AUTH"  # the Authorization header value when no --auth-file is named
# what to do about a refused search: a 401 by whether credentials were given, then by status
_UNAUTHORIZED = {
    False: "the PACS asks for credentials and none were given: give its Authorization header value in authorization "
           f"(--auth-file FILE, or {AUTH_ENV}), or user:password@ in url (--url)",
    True: f"the PACS refused the credentials given in authorization (--auth-file or {AUTH_ENV}) or as user:password@ "
          "in url (--url): check them, and that a token has not expired",
}  # fmt: skip
_REFUSED = {
    403: "the credentials given are not allowed this request: ask the PACS's administrator for DICOMweb access (to "
         "read, and with store (--store) to store)",
    404: "the PACS has no such study, or url (--url) is not its DICOMweb root (Orthanc's: "
         "http://HOST:8042/dicom-web)",
}  # fmt: skip
_STUDY, _SERIES, _SOP, _COUNT = "0020000D", "0020000E", "00080018", "00201208"
_CLASS, _ROWS = "00080016", "00280010"  # SOPClassUID, Rows
_TAG = re.compile(r"[0-9A-Fa-f]{8}")  # a DICOM JSON attribute's key
_SYSTEM_REASON = re.compile(r"\[Errno -?\d+\] ([^'\")]+)")  # the system's reason in urllib3's wording of a failure
_TLS_REASON = re.compile(r"\[SSL: ([A-Z0-9_]+)\] ([^('\"]+)")  # OpenSSL's code and reason in the same wording
# OpenSSL's codes of a TLS alert by which a server refuses the client certificate it was given
_CERT_REFUSED = re.compile(r"ALERT_(BAD_CERTIFICATE|UNSUPPORTED_CERTIFICATE|CERTIFICATE_\w+|UNKNOWN_CA|ACCESS_DENIED)")
CA_BUNDLE_ENV = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")  # the CA file requests verifies with, the first one set
# what the QIDO-RS answer must say of each instance to choose, before retrieving it, what is scored
_FIELDS = ["Modality", "SOPClassUID", "Rows", "Manufacturer", "BodyPartExamined", "ViewPosition",
           "PresentationIntentType", "PatientID", "IssuerOfPatientID"]
_PATIENT = ("00100020", "00100021")  # PatientID, IssuerOfPatientID: whose each instance is
# the VRs whose values DICOM JSON writes as numbers, which the XML of a STOW-RS answer writes as text
_NUMBERS = {**dict.fromkeys(("US", "UL", "SS", "SL", "UV", "SV"), int), **dict.fromkeys(("FL", "FD"), float)}


def _value(item: dict, tag: str) -> str:
    """The first value of ``tag`` in a DICOM JSON object, as text; empty when absent or malformed."""
    field = item.get(tag)
    values = field.get("Value") if isinstance(field, dict) else None
    return str(values[0]) if isinstance(values, list) and values else ""


def _search(session: requests.Session, url: str, params: dict[str, object], what: str) -> list[dict]:
    """The answer of the QIDO-RS search at ``url`` with ``params`` (``what``: which search), asked for as DICOM JSON
    alone (dicomweb-client asks for ``application/dicom+json, application/json``, and Orthanc's DICOMweb plugin logs
    an error for that on every search) and checked to be DICOM JSON: a list of objects keyed by tag. An empty answer
    (a 204: no match) is none, and one dataset, which some servers send in place of a list of one, is read as that
    list, as dicomweb-client reads them. An error message in JSON, a JSON null or a list of something else had ended
    the run in a traceback, or been taken for an instance without a UID; an answer that is no JSON at all (a proxy's
    sign-on page, a web interface at --url) had ended it in the parser's words alone (``Expecting value: line 1
    column 1 (char 0)``). A refusal raises ``requests.HTTPError``."""
    response = session.get(url, params=params, headers={"Accept": QIDO_ACCEPT})
    response.raise_for_status()
    if "Warning" in response.headers:  # more remain, a PACS may say: the offsets ask for them (:func:`_instances`)
        log.debug("the %s answered with a Warning: %s", what, response.headers["Warning"])
    if not response.content:
        return []
    response.encoding = "utf-8"  # DICOM JSON's, whatever the Content-Type says
    try:
        answer = response.json()
    except requests.JSONDecodeError:
        raise ValueError(f"the PACS answered the {what} with something that is not JSON (a web page, such as the "
                         "sign-on page of a proxy in front of it, or another service at that address): check that "
                         "url (--url) is its DICOMweb root and that the credentials are accepted") from None
    answer = [answer] if isinstance(answer, dict) else answer
    if isinstance(answer, list) and all(isinstance(item, dict) and all(_TAG.fullmatch(str(k)) for k in item)
                                        for item in answer):
        return answer
    raise ValueError(f"the PACS answered the {what} with JSON that is not DICOM JSON (a list of datasets keyed by "
                     "tag): check that url (--url) is its DICOMweb root")


def _instances(session: requests.Session, root: str, study_uid: str) -> list[dict]:
    """Every instance of the study, page after page: a PACS may cap a QIDO-RS answer (a Warning header says more
    remain) and give the rest from an offset. An empty page ends the search, complete only if the study's instance
    count (where the PACS states one) says so: Orthanc capped by LimitFindInstances gives no Warning and an empty
    page past its cap, and 3 of 5 films were scored and filed as the whole study, exit 0. A page of instances
    already given means the server ignores the offset: what it listed is the whole study only if that count says
    so. Otherwise the study is refused, since scoring part of a study as if it were all of it would be a silent
    gap; so is one whose instances share a SOP Instance UID (two counted as one, the offsets would skip one)."""
    found: dict[str, dict] = {}
    while True:
        page = _search(session, f"{root}/studies/{study_uid}/instances",
                       {"includefield": _FIELDS, "offset": len(found)}, "instance search")
        uids = [_value(item, _SOP) for item in page]
        if shared := sorted({uid for uid in uids if uids.count(uid) > 1}):
            raise ValueError(f"the study holds several instances under one SOP Instance UID ({shared[0]}): they cannot "
                             "be told apart, nor their reports; ask the PACS's administrator to mend the study")
        new = {_value(item, _SOP): item for item in page if _value(item, _SOP) not in found}
        if not page:
            if len(found) < (size := _study_size(session, root, study_uid)) < math.inf:
                raise ValueError(f"the PACS listed {len(found)} of the study's {size} instances and then no more: the "
                                 "rest lie beyond its result limit, which it does not say it applies; raise that limit "
                                 "(e.g. Orthanc's LimitFindInstances) or ask its administrator")
            return list(found.values())
        if not new:  # the offset was ignored: complete only if the first answer held the whole study
            if len(found) >= _study_size(session, root, study_uid):
                return list(found.values())
            raise ValueError(f"the PACS answered the instance search from offset {len(found)} with instances it had "
                             "already listed: it ignores the offset, so instances beyond its result limit cannot be "
                             "listed; raise that limit (e.g. Orthanc's LimitFindInstances) or ask its administrator")
        found.update(new)


def _one_patient(found: list[dict]) -> None:
    """Refuse a study whose instances the search answer gives to more than one patient
    (:func:`~pneumoscan.interop.study.one_patient`)."""
    one_patient({_value(item, _SOP): tuple(_value(item, tag).strip() for tag in _PATIENT) for item in found})


def _study_size(session: requests.Session, root: str, study_uid: str) -> float:
    """The study's NumberOfStudyRelatedInstances as the PACS reports it (infinite when it does not say, so that
    nothing is taken as complete without its word)."""
    studies = _search(session, f"{root}/studies",
                      {"StudyInstanceUID": study_uid, "includefield": "NumberOfStudyRelatedInstances"}, "study search")
    counts = {_value(study, _COUNT) for study in studies}
    value = counts.pop() if len(counts) == 1 else ""  # none, or answers that disagree: no word to go by
    return int(value) if value.isdigit() else math.inf


def _stored(answer: Dataset, sent: dict[str, str], row: dict, refusal: str | None = None,
            silence: str | None = None) -> list[str]:
    """The SOP Instance UIDs of ``sent`` (UID: what it is) that the PACS's STOW-RS answer lists as stored (its
    ReferencedSOPSequence), in the order sent. Each other one gets a warning in the row: refused, with the reason of
    its FailedSOPSequence item (a 202 is no error) and the HTTP ``refusal`` (a 4xx/5xx) when there was one, left out
    of the answer, or not answered at all (``silence``: why, in the words that follow its UID: a read timeout as
    :func:`_too_slow` words it, a connection reset by its kind in brackets); and each one stored
    with a warning reason (elements coerced or discarded) says so: a report is not filed unless the PACS says it
    is."""
    failed = _by_instance(answer, "FailedSOPSequence")
    # listed as failed too: the PACS does not say it is stored
    accepted = {uid: item for uid, item in _by_instance(answer, "ReferencedSOPSequence").items() if uid not in failed}
    for uid, what in sent.items():
        if uid in accepted and "WarningReason" in accepted[uid]:
            add_warning(row, f"the PACS stored the {what} {uid} with a warning "
                             f"({status_words(accepted[uid].get('WarningReason'), WARNINGS)})")
        elif uid in failed:
            because = "; ".join(filter(None, (status_words(failed[uid].get("FailureReason"), FAILURES), refusal)))
            add_warning(row, f"the PACS refused the {what} {uid} ({because}): it is not stored")
        elif uid not in accepted and refusal is not None:
            add_warning(row, f"the PACS refused the {what} {uid} ({refusal}, no reason given): it is not stored")
        elif silence is not None:
            add_warning(row, f"no answer from the PACS to storing the {what} {uid} {silence}: it may or may not "
                             "have stored it")
        elif uid not in accepted:
            add_warning(row, f"the PACS did not confirm storing the {what} {uid}: it may not be stored")
    stored = [uid for uid in sent if uid in accepted]
    if len(stored) < len(sent):
        log.warning("the PACS stored %d of the %d instances sent", len(stored), len(sent))
        row["not_stored"] = [uid for uid in sent if uid not in accepted]
    return stored


def _by_instance(answer: Dataset, keyword: str) -> dict[str, Dataset]:
    """The items of the sequence ``keyword`` of a STOW-RS answer by their ReferencedSOPInstanceUID; none when the
    answer holds it as no sequence (its instances are then unconfirmed: it had ended the run in a traceback)."""
    items = answer.get(keyword)
    return {str(i.get("ReferencedSOPInstanceUID", "")): i for i in (items if isinstance(items, Sequence) else [])
            if isinstance(i, Dataset)}


def _answer(response: requests.Response) -> Dataset:
    """A STOW-RS answer's Store Instances Response (PS3.18 10.5.3: a 409 or 400 carries the FailedSOPSequence with
    each instance's reason), read as the DICOM JSON it was asked for whatever its Content-Type's parameters say
    (dicomweb-client matched the media type exactly, and dropped an ``application/dicom+json; charset=utf-8``
    answer: every report stored was counted unconfirmed), or as XML when the body is XML: a PACS may answer in XML
    whatever is asked (PS3.19's Native DICOM Model, ``application/dicom+xml``; Orthanc's 409 in XML names no media
    type), and every report it stored had been counted unconfirmed. Empty when the body is none or neither."""
    body = response.content.removeprefix(codecs.BOM_UTF8).lstrip()
    try:
        if body.startswith(b"<"):  # expat refuses a "billion laughs" answer; ElementTree fetches no external entity
            return Dataset.from_json(_native_json(ElementTree.fromstring(body)))
        return Dataset.from_json(response.json())
    except (ValueError, TypeError, KeyError, AttributeError, ElementTree.ParseError):  # not DICOM JSON nor XML
        return Dataset()


def _named(parent: ElementTree.Element, name: str) -> list[ElementTree.Element]:
    """``parent``'s child elements called ``name``, in the Native DICOM Model's namespace or in none."""
    return [child for child in parent if child.tag.rpartition("}")[2] == name]


def _native_value(vr: str, text: str | None) -> str | int | float | None:
    """A Value element's text as DICOM JSON writes it: a number for a binary VR (:data:`_NUMBERS`; none, JSON's null,
    when empty), else the text."""
    text = (text or "").strip()
    if vr not in _NUMBERS:
        return text
    return _NUMBERS[vr](text) if text else None


def _native_json(dataset: ElementTree.Element) -> dict:
    """A dataset of PS3.19's Native DICOM Model (XML) as DICOM JSON (PS3.18 F.2, the same model), for pydicom to
    read as it reads a JSON answer: each attribute's values, numbers of a binary VR as numbers, and each sequence's
    items (Orthanc writes an empty Value beside each item: passed over). What a Store Instances Response holds
    (UIDs, status codes, URLs) is read whole; a person name, inline binary or bulk data would be read empty, and an
    attribute without a tag is left out."""
    found = {}
    for attribute in _named(dataset, "DicomAttribute"):
        vr, tag = attribute.get("vr", ""), attribute.get("tag")
        if vr == "SQ":
            values: list = [_native_json(item) for item in _named(attribute, "Item")]
        else:
            values = [_native_value(vr, value.text) for value in _named(attribute, "Value")]
        if tag:
            found[tag] = {"vr": vr, **({"Value": values} if values else {})}
    return found


def _post(session: requests.Session, url: str, parts: list[bytes]) -> requests.Response:
    """One STOW-RS request of ``parts`` (Part 10 files), its body built whole, so that each try sends all of it
    (dicomweb-client streams a message over 1 MB from a generator, which its first try spends: its retry after a 503
    had sent nothing). A refusal raises ``requests.HTTPError``, no answer at all another
    ``requests.RequestException``."""
    body, content_type = dicom_multipart(parts)
    # JSON alone: Orthanc's DICOMweb plugin 1.7 logs an error for an Accept that lists XML too (_answer reads XML)
    headers = {"Content-Type": content_type, "Accept": "application/dicom+json"}
    response = session.post(url, data=body, headers=headers)
    response.raise_for_status()
    return response


def _retrieve(session: _Session, url: str) -> Dataset:
    """The instance at ``url`` (WADO-RS), read within :data:`MAX_INSTANCE_BYTES` and the session's
    :attr:`Connection.film_s` (dicomweb-client read any body whole, for as long as it trickled in), and as ``predict``
    reads a file (:func:`~pneumoscan.data.readers.dicom.read_dataset`): a PACS may answer with a film as it was
    imported, without its File Meta (Orthanc does), which pydicom's strict read refused with advice for a programmer
    (``Use force=True``). A refusal raises ``requests.HTTPError``; an answer too large, too slow, not one DICOM part, or
    not a DICOM instance, ``ValueError``."""
    film_s = session.connection.film_s
    deadline = time.monotonic() + film_s
    with session.get(url, headers={"Accept": WADO_ACCEPT}, stream=True) as response:
        response.raise_for_status()
        size = response.headers.get("Content-Length", "")
        if size.isdigit() and int(size) > MAX_INSTANCE_BYTES:
            raise ValueError(f"its answer of {int(size)} bytes is over the {MAX_INSTANCE_BYTES} a film may take")
        body = bytearray()
        while chunk := response.raw.read1(2**20, decode_content=True):
            body += chunk
            if len(body) > MAX_INSTANCE_BYTES:
                raise ValueError(f"its answer passed the {MAX_INSTANCE_BYTES} bytes a film may take; cut off")
            if time.monotonic() > deadline:
                raise ValueError(f"its answer took over {film_s:g} s (connection.film_s, --film-timeout); cut off "
                                 f"after {len(body)} bytes")
    ds = read_dataset(_only_part(bytes(body), response.headers.get("Content-Type", "")), header_only=False)
    if "SOPInstanceUID" not in ds:  # read as far as it goes, as pydicom's force=True reads: bytes of no DICOM file
        raise ValueError("its answer is not a DICOM instance (it names no SOP Instance UID)")
    return ds


def _only_part(body: bytes, content_type: str) -> bytes:
    """The one application/dicom part of a WADO-RS multipart answer; ``ValueError`` for anything else (an HTML
    page, several parts), so that a malformed answer is named as such. The media types are read as the service
    reads an upload's; the body is split here, its bytes untouched: the email package's parser decodes a whole
    answer to text and back, 10 times slower and with 5 times the memory (a 256 MiB answer: 6.8 s and 2.6 GB
    more), which would undo the bound :data:`MAX_INSTANCE_BYTES` puts on memory."""
    media, params = parse_options_header(content_type)
    if media != b"multipart/related" or not params.get(b"boundary"):
        raise ValueError(f"its answer is {media.decode('latin-1') or 'untyped'}, not multipart/related with a "
                         "boundary")
    parts = body.split(b"--" + params[b"boundary"])[1:-1]  # between the preamble and the closing "--"
    if len(parts) != 1:
        raise ValueError(f"its answer holds {len(parts)} parts, not one")
    head, blank, content = parts[0].partition(b"\r\n\r\n")
    part_type = next((line.partition(b":")[2] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-type:")), b"")
    kind = parse_options_header(part_type)[0].decode("latin-1")
    if not blank or kind != "application/dicom":
        raise ValueError(f"its answer's part is {kind or 'untyped'}, not application/dicom")
    return content.removesuffix(b"\r\n")


def _recorded(item: dict) -> Dataset:
    """An instance of the QIDO-RS answer as a dataset, read once, so that the rules by which a film's own header is
    read decide on it the same way. A field DICOM JSON cannot read is left out: the film's header decides on it once
    retrieved."""
    recorded = Dataset()
    for tag in item:
        try:
            recorded.update(Dataset.from_json({tag: item[tag]}))
        except Exception:  # a malformed field: pydicom raises whatever its parsing meets
            log.debug("field %s of the search answer is malformed: left to the film's own header", tag)
    return recorded


def _issued_reports(found: list[dict]) -> dict[str, Dataset]:
    """The study's Comprehensive SRs as its QIDO-RS answer lists them (study, series, SOP instance and class UIDs),
    by SOP Instance UID: a report this run files at a new threshold names the one it replaces among them
    (:func:`~pneumoscan.interop.reports.write_reports`). An item without all four is passed over."""
    reports = {}
    for item in found:
        keys = (_STUDY, _SERIES, _SOP, _CLASS)
        if _value(item, _CLASS) == ComprehensiveSRStorage and all(_value(item, k) for k in keys):
            reports[_value(item, _SOP)] = Dataset.from_json({k: item[k] for k in keys})
    return reports


def read_authorization(auth_file: Path | str | None = None) -> str | None:
    """The Authorization header value for the PACS (``Bearer ...``, ``Basic ...``): ``auth_file``'s text, else
    ``$PNEUMOSCAN_PACS_AUTH``'s, else none, read as ``serve`` reads its key
    (:func:`~pneumoscan.core.secrets.read_secret`: a variable's line break had ended the command in requests'
    refusal, which printed the credential)."""
    return read_secret(auth_file, AUTH_ENV, "auth")


class _Tries(Retry):
    """urllib3's Retry as the PACS is tried (:data:`ATTEMPTS`): a busy answer (:data:`_BUSY`) or a connection refused
    or dropped is tried again, a STOW-RS POST too (its body is sent whole again, and its reports' UIDs follow from
    film, model and scoring mode, so a PACS that stored the lost try gets the same instances); a read timeout is not.
    A TLS failure is not either: a certificate that does not verify will not on the next try, an https URL to a
    plain http PACS will not start to speak TLS, and a PACS that asks for a client certificate will ask again.
    Each try again is a warning here (urllib3 says it on its own logger, which the command line does not show), and
    waits FIRST_WAIT_S, then twice that (urllib3 tries the first again at once), or what the answer's Retry-After
    asks."""

    RETRY_AFTER_STATUS_CODES = frozenset()  # tried again by status_forcelist alone: a 413 stays a refusal

    def increment(self, method: str | None = None, url: str | None = None, response: object = None,
                  error: Exception | None = None, _pool: object = None, _stacktrace: object = None) -> Retry:
        # raised as Retry does when it tries no more; a TLS alert after the handshake (TLS 1.3: a client certificate
        # asked for, or refused) reaches here as the connection aborted
        alert = isinstance(error, urllib3.exceptions.ProtocolError) and any(
            isinstance(cause, ssl.SSLError) and "ALERT" in (cause.reason or "") for cause in error.args)
        if alert or isinstance(error, (urllib3.exceptions.ReadTimeoutError, urllib3.exceptions.SSLError)):
            raise error
        return super().increment(method, url, response, error, _pool, _stacktrace)

    def get_backoff_time(self) -> float:
        return min(self.backoff_max, self.backoff_factor * 2 ** (len(self.history) - 1))

    def sleep(self, response: urllib3.BaseHTTPResponse | None = None) -> None:
        try:
            after = self.get_retry_after(response) if self.respect_retry_after_header and response is not None else None
        except urllib3.exceptions.InvalidHeader:  # a malformed Retry-After: the usual wait
            after = None
        wait = after or self.get_backoff_time()
        last = self.history[-1]
        why = f"HTTP {last.status}" if last.status else type(last.error).__name__
        log.warning("%s %s try %d of %d: %s; tried again in %g s", last.method, urlsplit(last.url or "").path,
                    len(self.history), ATTEMPTS, why, wait)
        time.sleep(wait)


@dataclass(frozen=True)
class Connection:
    """How ``pacs`` talks to the PACS, beyond its URL and credentials: the seconds one read of an answer (or one
    connection) may wait (``--read-timeout``) and one film's whole retrieval may take (``--film-timeout``: a byte
    every 5 s had kept a retrieval going for ever), and the client certificate a PACS that asks for one (mutual TLS)
    is given (``--client-cert``, its key in it or in ``--client-key``). A WAN to a distant PACS may need longer, a
    strict site less; a PACS that asks for a certificate could not be given one."""

    read_s: float = PACS_READ_S
    film_s: float = PACS_FILM_S
    client_cert: str | None = None
    client_key: str | None = None


class _Session(requests.Session):
    """A session that gives every request, the searches included, its :attr:`Connection.read_s` (unless
    the request names its own), and carries its :class:`Connection` for :func:`_retrieve`: the options are applied
    in this one place."""

    def __init__(self, connection: Connection) -> None:
        super().__init__()
        self.connection = connection

    def request(self, method: str | bytes, url: str | bytes, **kwargs: object) -> requests.Response:
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.connection.read_s
        return super().request(method, url, **kwargs)


def _client_cert(connection: Connection, scheme: str) -> str | tuple[str, str] | None:
    """The client certificate of ``connection`` as requests' ``cert=`` takes it, checked before any request
    (:func:`~pneumoscan.core.secrets.check_client_cert`), over TLS only."""
    cert, key = connection.client_cert, connection.client_key
    if cert is None:
        if key is not None:
            raise ValueError("connection.client_key (--client-key) goes with connection.client_cert (--client-cert): "
                             "give the certificate too")
        return None
    if scheme != "https":
        raise ValueError("connection.client_cert (--client-cert) is presented over TLS only, and url (--url) is "
                         "http://: give the PACS's https:// URL")
    check_client_cert(cert, key, "connection.client_cert (--client-cert)", "connection.client_key (--client-key)")
    return cert if key is None else (cert, key)


def _session(url: str, authorization: str | None, connection: Connection = Connection()) -> tuple[str, _Session]:
    """The URL without user:password@ (every row, message and log would show the password), and a session that
    authenticates: with them as HTTP Basic, or with the ``authorization`` header, and with ``connection``'s timeouts
    and client certificate (:func:`_client_cert`).
    Certificates are checked against REQUESTS_CA_BUNDLE when set (a private CA); one that
    names no file is refused here, naming it. A URL with a query string or a fragment is refused, unquoted: a
    ``?token=...`` was shown in every message and row, and every request's path was appended after it. So is one
    with an '@' after its host, unquoted: a password holding '/', '?' or '#' ends the host there, and the rest of it
    was shown as the URL's path (``DICOMweb at http://user:pa/ss@host/...``). Credentials
    sent in the clear to another machine are warned of. No redirect is followed (:func:`_no_redirect`). Every
    request is tried as :class:`_Tries` says; the last busy answer is returned as it is, for ``raise_for_status`` to
    raise ``requests.HTTPError`` with it (urllib3's ``raise_on_status`` raises ``requests.RetryError``, without the
    answer a STOW-RS refusal is read from)."""
    parts = urlsplit(url.rstrip("/"))
    if "@" in parts.path + parts.query + parts.fragment:
        raise ValueError("url (--url) holds an '@' after its host: a password with '/', '?' or '#' must be "
                         "percent-encoded in the URL (%2F, %3F, %23; '@' as %40, '%' as %25); better, give the "
                         f"credentials with authorization (--auth-file, or the environment variable {AUTH_ENV}), "
                         "never in the URL")
    if parts.query or parts.fragment:
        raise ValueError("url (--url) holds a query string or a fragment (after '?' or '#'), which a DICOMweb root "
                         "has none of; give credentials such as a token with authorization (--auth-file, or the "
                         f"environment variable {AUTH_ENV}), never in the URL")
    if parts.scheme == "https":  # requests' own refusal, at the first request, named no variable
        variable = next((name for name in CA_BUNDLE_ENV if os.environ.get(name)), None)
        if variable is not None and not os.path.exists(os.environ[variable]):
            raise ValueError(f"{variable} names {os.environ[variable]}, which does not exist: point it at the PEM file "
                             "of the CA that signed the PACS's certificate")
    crosses_network = not is_loopback(parts.hostname or "")  # hostname: lowercased, an IPv6 address unbracketed
    if parts.scheme == "http" and ("@" in parts.netloc or authorization is not None) and crosses_network:
        log.warning("credentials go to %s over plain http, readable by anyone on the network between: use https",
                    parts.hostname)
    session = _Session(connection)
    session.cert = _client_cert(connection, parts.scheme)
    tries = _Tries(total=ATTEMPTS - 1, status_forcelist=_BUSY, allowed_methods=Retry.DEFAULT_ALLOWED_METHODS | {"POST"},
                   backoff_factor=FIRST_WAIT_S, retry_after_max=connection.read_s, raise_on_status=False)
    for scheme in ("http://", "https://"):
        session.mount(scheme, HTTPAdapter(max_retries=tries))
    session.hooks["response"].append(_no_redirect)
    if "@" in parts.netloc:
        if authorization is not None:
            raise ValueError("credentials in url (--url) and an Authorization header in authorization (--auth-file or "
                             f"{AUTH_ENV}): give one")
        session.auth = (unquote(parts.username or ""), unquote(parts.password or ""))
        parts = parts._replace(netloc=parts.netloc.rpartition("@")[2])
    else:  # the header given, or none: never a ~/.netrc login, which requests would put in its place
        session.auth = _Authorization(authorization)
    return urlunsplit(parts), session


class _Authorization(requests.auth.AuthBase):
    """The Authorization header of --auth-file (or its environment variable), or none, as a session's auth: with no
    auth of its own a session takes a ~/.netrc login for the host (``trust_env``, which REQUESTS_CA_BUNDLE needs),
    which replaced the header given (a stale login sent, and refused) or went unasked, over plain http too."""

    def __init__(self, value: str | None) -> None:
        self.value = value

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        if self.value is not None:
            request.headers["Authorization"] = self.value
        return request


def _no_redirect(response: requests.Response, *args: object, **kwargs: object) -> None:
    """Refuse a 3xx answer, naming where it pointed: requests would have followed it to any host, sending a report
    (patient name and ID in it) or a search there. It is a session hook, so it runs on every request, the searches
    included, before a redirect would be followed."""
    if 300 <= response.status_code < 400:
        host = urlsplit(response.headers.get("Location", "")).hostname or "the same host"
        response.close()
        raise requests.HTTPError(f"HTTP {response.status_code} {response.reason}: the PACS redirected to {host}; "
                                 "redirects are not followed: give url (--url) the PACS's own DICOMweb root",
                                 response=response)


def _instance_url(root: str, study_uid: str, series_uid: str, sop_uid: str) -> str:
    """An instance's WADO-RS URL: what a film's row names it by, and where it, a key object or a report sent is
    retrieved from."""
    return f"{root}/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}"


def _withdrawn(session: _Session, root: str, study_uid: str, found: list[dict]) -> dict[str, str]:
    """Why each film that a rejection note of the study withdraws is not scored, by SOP Instance UID
    (:func:`~pneumoscan.interop.study.withdrawn_by`): each key object selection of the study retrieved and read. One
    that cannot be retrieved or read leaves which films are withdrawn unknown: the study is refused."""
    withdrawn = {}
    for item in found:
        if _value(item, _CLASS) != KeyObjectSelectionDocumentStorage:
            continue
        series, sop = _value(item, _SERIES), _value(item, _SOP)
        try:
            if not UID(series).is_valid or not UID(sop).is_valid:  # never put in a URL
                raise ValueError("an invalid UID in the search answer")
            note = _retrieve(session, _instance_url(root, study_uid, series, sop))
        except (requests.RequestException, *_MALFORMED) as e:
            raise unreadable_note(sop, e) from None
        if listed := withdrawn_by(note).films:
            log.info("%d instance(s) %s", len(listed), next(iter(listed.values())))
            withdrawn.update(listed)
    return withdrawn


def _retrieved(session: _Session, study_uid: str, found: list[dict], root: str,
               films: Path) -> tuple[list[dict | str], dict[str, dict]]:
    """The study's instances in the QIDO-RS order, each a row already made (an image that a rejection note withdraws
    (:func:`_withdrawn`) or that is not a radiograph: not scored; one with an invalid UID in the search answer, or that
    WADO-RS could not retrieve, answered malformed, or with another instance than asked for: an error) or the path of
    a retrieved film to score; and by path, each film's row as asked for (its WADO-RS URL and UIDs, which the row of
    a film that cannot be decoded keeps). pneumoscan's own outputs and instances without pixel data are left out. One
    instance's fault is that instance's error only: the study's other films are still scored."""
    withdrawn = _withdrawn(session, root, study_uid, found)
    entries: list[dict | str] = []
    sources: dict[str, dict] = {}
    for item in found:
        series, sop = _value(item, _SERIES), _value(item, _SOP)
        where = _instance_url(root, study_uid, series, sop)
        row = {"path": where, "study_instance_uid": study_uid, "series_instance_uid": series, "sop_instance_uid": sop}
        recorded = _recorded(item)  # read once, for every rule that decides on the search answer
        if is_own_output(recorded):  # our reports and overlays: not films, no row
            continue
        if sop in withdrawn:
            entries.append({**row, "not_scored": withdrawn[sop]})
            continue
        why = not_scored(recorded)
        if why is not None:
            if _ROWS in item:  # an image: said, not scored; a report or key object is no image at all
                log.info("not scored: %s: %s", where, why)
                entries.append({**row, "not_scored": why})
            continue
        if not UID(series).is_valid or not UID(sop).is_valid:  # never put in a URL, nor in the film's file name
            entries.append({**row, "error": "the PACS's search answer gives it an invalid UID: not retrieved"})
            continue
        try:
            ds = _retrieve(session, where)
            asked = (study_uid, series, sop)
            if tuple(str(ds.get(k, "")) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")) != asked:
                raise ValueError("the PACS returned another instance than asked for: not scored")
            if is_own_output(ds) or ("PixelData" not in ds and _ROWS not in item):  # not an image: no row
                continue
            if "PixelData" not in ds:  # an image in the search (Rows), but retrieved without its pixels
                raise ValueError("its answer holds no pixel data, where the search lists an image: not scored")
            path = films / f"{sop}.dcm"
            ds.save_as(path, enforce_file_format=True)
        except requests.HTTPError as e:  # gone since the search, not acceptable, nearline, redirected: this one only
            entries.append({**row, "error": f"WADO-RS could not retrieve it: {e}"})
            continue
        except _MALFORMED as e:  # an HTML page, a truncated or foreign file, another instance: this one only
            log.warning("WADO-RS answer for %s refused: %s", where, e)
            entries.append({**row, "error": f"WADO-RS could not retrieve it: {e}"})
            continue
        except requests.RequestException as e:  # no answer, after the tries (:data:`ATTEMPTS`): this one only
            log.warning("WADO-RS got no answer for %s: %s", where, type(e).__name__)
            why = (_too_slow(e, session.connection) if isinstance(e, requests.Timeout)  # not tried again
                   else f"({type(e).__name__}), after {ATTEMPTS} tries")
            entries.append({**row, "error": f"WADO-RS got no answer for it {why}"})
            continue
        sources[str(path)] = row
        entries.append(str(path))
    return entries, sources


def _asserted(ds: Dataset) -> object:
    """What a report or overlay of ours states, to tell two copies of one SOP Instance UID apart: a report's content
    tree (its finding, probability, threshold and notes), an overlay's pixels. Not the whole header: its creation
    times differ on every run, and a PACS may store the pixels in another transfer syntax; who and which study it is
    filed as is compared apart (:func:`~pneumoscan.interop.sr.filed_as`)."""
    if "ContentSequence" in ds:
        return [item.to_json_dict() for item in ds.ContentSequence]
    return ds.pixel_array.tobytes()


def _read_back(session: _Session, root: str, study_uid: str, built: dict[str, tuple[str, Dataset]],
               held: set[str], row: dict) -> None:
    """Of the objects ``row`` records as stored, those whose UID the study held before they were sent, retrieved and
    compared with what was sent: what it states (:func:`_asserted`) and the patient and study it names
    (:func:`~pneumoscan.interop.sr.filed_as`). Their UIDs follow from the film (its UIDs and patient id), model and
    scoring, so a rerun after the film was replaced under the same UIDs sends another reading under a UID the PACS
    holds, and one after the patient's name or birth date, or the study's details, were corrected sends the same
    reading naming them anew; a PACS that keeps the first copy of an instance (Orthanc's default) answers "stored"
    and keeps the earlier one. Such an object, or one that cannot be read back, is not stored, the attributes that
    differ named, never their values: the row had said stored while the PACS held a report that said pneumonia
    absent, or one that named the patient as before the correction."""
    from .sr import filed_as

    for uid in [uid for uid in row["stored"] if uid in held]:
        what, sent = built[uid]
        where = _instance_url(root, study_uid, sent.SeriesInstanceUID, uid)
        try:
            kept = _retrieve(session, where)
            same = _asserted(kept) == _asserted(sent)
            named, naming = filed_as(kept), filed_as(sent)
        except (requests.RequestException, RuntimeError, *_MALFORMED) as e:  # RuntimeError: pixels not decodable
            log.warning("the %s %s could not be read back: %s", what, uid, type(e).__name__)
            why = (f"the PACS already held a {what} {uid}, and it could not be read back ({type(e).__name__}): "
                   "whether it holds this reading or one of the film before it changed under the same UIDs is not "
                   "known; it is not stored")
        else:
            stale = [keyword for keyword, value in naming.items() if named[keyword] != value]
            if same and not stale:
                continue
            if not same:
                why = (f"the PACS already held a {what} {uid}, made from this film before it changed under the same "
                       "UIDs, and kept it (it keeps the first copy of an instance): it holds another reading, not "
                       "this one; delete the earlier one in the PACS and run again")
            else:
                why = (f"the PACS already held this {what} {uid}, made before the film's {', '.join(stale)} "
                       "changed (a correction of the patient's or the study's details under the same UIDs), and "
                       "kept it (it keeps the first copy of an instance): the copy it holds names the patient or the "
                       "study as before; delete it in the PACS, or have the PACS apply the correction to it, and "
                       "run again")
        add_warning(row, why)
        row["stored"].remove(uid)
        row.setdefault("not_stored", []).append(uid)


def _store(session: _Session, root: str, study_uid: str, row: dict, held: set[str]) -> None:
    """STOW-RS the reports write_reports made for ``row``; ``stored`` (and ``not_stored``) as the PACS answered, and
    as what it holds when the study held their UIDs before (``held``: :func:`_read_back`). A 4xx/5xx, or no answer
    at all (a read timeout, a connection reset: it may have stored them), is this film's only: it had ended the
    whole study in exit status 2, with no results, though earlier films' reports were stored."""
    made = {MADE[key]: Path(row.pop(key)).read_bytes() for key in MADE if key in row}
    if not made:
        return
    built = {}
    for what, data in made.items():
        ds = pydicom.dcmread(io.BytesIO(data))
        built[str(ds.SOPInstanceUID)] = (what, ds)
    sent = {uid: what for uid, (what, _) in built.items()}
    url = f"{root}/studies/{study_uid}"
    try:
        row["stored"] = _stored(_answer(_post(session, url, list(made.values()))), sent, row)
    except requests.HTTPError as e:
        refusal = f"HTTP {e.response.status_code} {e.response.reason}".strip()
        if e.response.is_redirect:  # where it pointed, as _no_redirect says
            refusal = str(e)
        row["stored"] = _stored(_answer(e.response), sent, row, refusal)
        if e.response.status_code in (401, 403):  # every film's store will be: say what to do, not only the status
            add_warning(row, f"the PACS does not let the credentials given store ({refusal}): ask its "
                             "administrator for STOW-RS access, or run without store (--store)")
    except requests.RequestException as e:  # a read timeout names the option, as a film's and a search's do
        silence = _too_slow(e, session.connection) if isinstance(e, requests.Timeout) else f"({type(e).__name__})"
        row["stored"] = _stored(Dataset(), sent, row, silence=silence)
    _read_back(session, root, study_uid, built, held, row)


def _study_of(session: requests.Session, root: str, accession: str) -> str:
    """The StudyInstanceUID of the one study the PACS holds under ``accession`` (QIDO-RS): an order from the RIS or
    an HL7 message names a study by its accession number. None, or several (two sites' numbers may meet on one
    PACS), is refused rather than guessed; the number is never repeated (it identifies a patient's exam)."""
    studies = _search(session, f"{root}/studies", {"AccessionNumber": accession, "includefield": "StudyInstanceUID"},
                      "study search")
    uids = sorted({_value(study, _STUDY) for study in studies})
    if not uids:
        raise ValueError("no study on the PACS carries the accession number given")
    if len(uids) > 1:
        shown_uids = ", ".join(uid if valid_uid(uid) else "(an invalid UID)" for uid in uids)
        raise ValueError(f"{len(uids)} studies on the PACS carry the accession number given ({shown_uids}): give the "
                         "one to read with study_uid (--study)")
    if not valid_uid(uids[0]):
        raise ValueError("the PACS's answer gives the study of the accession number given an invalid UID")
    return uids[0]


def predict_study(
    bundle: Path | str, url: str, study_uid: str | None = None, store: bool = False, heatmaps: bool = False,
    backend: str = "onnx", authorization: str | None = None, fhir_dir: Path | str | None = None,
    accession: str | None = None, connection: Connection = Connection(),
) -> list[dict]:
    """One result row per image instance of the study (``path`` is the instance's WADO-RS URL, without
    credentials): a radiograph's reading, an error, or ``not_scored`` with the reason. With ``store`` the scored
    rows' ``stored`` field lists the SOP Instance UIDs the PACS accepted (SR, then heatmap); ``not_stored`` the
    others, each named in a warning. With ``fhir_dir`` each scored film's FHIR Observation is written there, as
    ``predict --fhir`` writes it (the row's ``fhir``): pneumoscan sends it to no FHIR server. ``authorization``:
    the Authorization header value (:func:`read_authorization`); user:password in ``url`` is HTTP Basic instead. A
    ``study_uid`` that is no valid DICOM UID is refused before anything is read or asked, in words a user acts on
    (it would be put in the search's URL). ``accession``, in place of ``study_uid``: the study is the one
    the PACS holds under that accession number (:func:`_study_of`). ``connection``: the timeouts and client
    certificate (:class:`Connection`)."""
    if (study_uid is None) == (accession is None):
        raise ValueError("give the study by its StudyInstanceUID or by its accession number, one of the two")
    if accession is not None and (not accession.strip() or any(c in accession for c in "*?\\")
                                  or not accession.isprintable()):
        raise ValueError("accession (--accession) is blank, or holds a wildcard (* or ?), a backslash or a control "
                         "character, which QIDO-RS would match against other studies: give the accession number "
                         "itself")
    if study_uid is not None and not valid_uid(study_uid):
        raise ValueError(f"study_uid (--study) {study_uid!r} is not a valid DICOM UID (digits and dots, at most 64 "
                         "characters, no part with a leading zero, e.g. 1.2.840.113619.2.55.3): give the study's "
                         "StudyInstanceUID")
    check_reportable(bundle, dicom=store)
    if heatmaps and not store:
        raise ValueError("heatmaps (--heatmaps) goes with store (--store): the overlays are sent to the PACS, not kept "
                         "here")
    root, session = _session(url, authorization, connection)
    try:
        if accession is not None:
            study_uid = _study_of(session, root, accession)
            log.info("accession number given: study %s", study_uid)
        found = _instances(session, root, study_uid)
        if not found:
            raise ValueError(f"study {study_uid} not found at {root} (QIDO-RS returned no instances)")
        _one_patient(found)
        with tempfile.TemporaryDirectory(prefix="pneumoscan-pacs-") as tmp:
            films = Path(tmp) / "films"
            films.mkdir()
            entries, sources = _retrieved(session, study_uid, found, root, films)
            if not entries:
                raise ValueError(f"study {study_uid} holds no image instances to read")
            held = {_value(item, _SOP) for item in found}
            # one study a run: its model loaded for it, where it has films to score (listen loads its model once)
            scored = score_films(ready_stages(bundle, backend=backend, heatmaps=heatmaps), sources, Path(tmp), store,
                                 fhir_dir, _issued_reports(found), held) if sources else []
            if store:
                for row in scored:
                    _store(session, root, study_uid, row, held)
            rows = study_rows(entries, sources, scored)
    except requests.RequestException as e:  # unreachable, refused, a QIDO-RS 4xx/5xx: one line, not a traceback
        given = authorization is not None or "@" in urlsplit(url).netloc
        raise OSError(f"DICOMweb at {root}: {_failure(e, given, connection)}") from None
    own = sum(is_own_output(_recorded(item)) for item in found)  # a rerun's study holds them: no films left out
    log.info("retrieved %d of the study's %d instances%s", len(scored), len(found),
             f" ({own} of them pneumoscan's own reports and overlays)" if own else "")
    return rows


def _too_slow(e: requests.RequestException, connection: Connection) -> str:
    """A read that waited past ``connection``'s read timeout, as a film's error, a store's warning and a search's end
    say it: how long, and the option a PACS that is slow rather than down needs."""
    return (f"within {connection.read_s:g} s ({type(e).__name__}): if the PACS is slow rather than down, give it "
            "longer with connection.read_s (--read-timeout SECONDS)")


def _failure(e: requests.RequestException, credentials: bool, connection: Connection) -> str:
    """Why a request to the PACS failed, in a few words: urllib3 words a refused or unresolved connection as one long
    line of its pool, the URL with its query and the wrapped errors (``HTTPConnectionPool(host=..., port=...): Max
    retries exceeded with url: ... (Caused by NewConnectionError(...: [Errno 111] Connection refused))``), where
    the system's reason is all a user acts on. A 401, 403 or 404 names the request and what to do
    (``credentials``: whether any were given), where requests' ``401 Client Error: Unauthorized for url: ...``
    quoted the search's whole query and left the user to guess; another HTTP error is kept as it is. A TLS alert
    that asks for a client certificate, or refuses the one given, and a read timeout name the option to give
    (``connection``: what was given)."""
    if isinstance(e, requests.HTTPError):
        answer = e.response
        status = answer.status_code if answer is not None else None
        hint = _UNAUTHORIZED[credentials] if status == 401 else _REFUSED.get(status or 0)
        if hint is None:
            return str(e)
        return f"HTTP {status} {answer.reason} to {answer.request.method} {urlsplit(answer.url).path}: {hint}"
    if found := _TLS_REASON.search(str(e)):  # a TLS 1.3 alert comes at the first read: a ConnectionError
        code, reason = found.group(1), found.group(2).strip()
        if code == "CERTIFICATE_VERIFY_FAILED":
            return (f"the PACS's TLS certificate did not verify ({reason}): if the hospital's own CA signed it, point "
                    f"{CA_BUNDLE_ENV[0]} at that CA's PEM file")
        if code == "WRONG_VERSION_NUMBER":
            return f"no TLS at that address ({reason}): it may serve plain http (url (--url) http://...)"
        if code.endswith("CERTIFICATE_REQUIRED") and connection.client_cert is None:
            return (f"the PACS asks for a client certificate ({reason}) and none was given: give it with "
                    "connection.client_cert (--client-cert FILE)")
        if _CERT_REFUSED.search(code) and connection.client_cert is not None:
            return (f"the PACS refused the client certificate given ({reason}): check with its administrator that it "
                    "trusts the CA that signed it, and that it has not expired")
        return f"TLS failed ({reason})"
    if found := _SYSTEM_REASON.search(str(e)):
        return f"no connection ({found.group(1).strip()})"
    if isinstance(e, requests.Timeout):
        return f"no answer {_too_slow(e, connection)} (default {PACS_READ_S})"
    return str(e)
