"""``pneumoscan listen``: a DICOM listener (C-STORE SCP, and C-ECHO) for a PACS or modality that routes films over
DIMSE, not DICOMweb. It scores each study an association carried once the sender releases the association, as
``pacs`` scores a study read over DICOMweb (:mod:`.study`: the same rows, the same SRs), and sends each film's SR
(and its Grad-CAM Secondary Capture with heatmaps) to the destination AE with C-STORE.

What is refused, and where: a caller whose AE title is not allowed, or an association not addressed to this AE title,
at association (pynetdicom's own checks), with a warning naming the caller, its address and why; an SOP class other
than the radiograph and Secondary Capture image classes and the non-image classes a study carries
(:data:`SET_ASIDE_CLASSES`, stored and set aside, never scored: :meth:`Listener._non_image`), or a transfer syntax
pneumoscan does not decode, at negotiation; an instance without a valid Study or SOP Instance UID, or whose data set
cannot be read (:func:`read_dataset`, which inflates a deflated one within the decode limit), with a C-STORE failure
naming why; a film past what the listener may hold on disk (:class:`Room`), with an "out of resources" status (0xA700)
naming why, which the sender may try again later, among them each film while the spool holds ``--spool-max-mb`` of
reports waiting to be sent (a destination down for days), so that no report is made that could not be kept. Each film
is written to a temporary file as it arrives (pynetdicom's ``STORE_RECV_CHUNKED_DATASET``), never held whole in
memory, and these bounds apply to that file before any of it is read; a film, or an association, that passes its bound
(or takes the disk under ``--min-free-mb``) while it arrives is cut short there, the association aborted (A-ABORT) at
the P-DATA that passed it, so that the disk holds at most the bound and one PDU more (a C-STORE has no status to
refuse a data set half sent), the films it had stored scored as if it had been released. A film that cannot be
decoded, or that is no frontal chest radiograph, gets the row ``pacs`` gives it (an error, or ``not_scored``) and no
report. Reports are sent by a thread of their own, in the order their studies were scored, so a slow destination never
holds up scoring: a destination that refuses or does not answer is tried :data:`ATTEMPTS` times, each step bounded by
``store_s``, and a report not stored within ``send_s`` of its study's scoring is given up; each report not stored is
an error line naming its study and SOP Instance UID, with the reason. No report is lost with it: each is written to
the spool (:class:`Spool`) before it is queued, deleted there once the destination confirms its C-STORE, and sent
again from there every ``retry_s`` and when ``listen`` starts; one the destination refuses (a failure status, not a
network error or 0xA7xx) is moved aside, never tried for ever. An association aborted by the sender, or dropped,
leaves its films unscored: the sender did not finish; the film it was sending, if any, is deleted, and a warning says
what was lost. The films are held in a private temporary folder, named by SOP Instance UID, and deleted once their
studies' reports are sent; the log names instances by UID, never by patient. With an audit log (:class:`AuditLog`),
each film read or refused, each caller refused at association, each association aborted with a film lost, and each
report the destination confirmed or refused is a JSON line (:meth:`Listener._audit`); with ``required`` set on it, a
film whose line cannot be written gets no report. A rejection note (IHE IOCM, read as ``pacs`` reads it:
:func:`~pneumoscan.interop.study.withdrawn_by`) withdraws its films from scoring and sending as it arrives, kept
on disk by the spool so that a restart keeps them withdrawn (:meth:`Spool.remember`), their reports waiting in the
spool set aside at once (:meth:`Listener._withdraw`); of those scored already, the reports made are named once its
association ends, however it ends (:meth:`Listener._retract`). No retraction is sent to the destination: what it
holds is IT's to remove.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import queue
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import (UID, AcquisitionContextSRStorage, BasicTextSRStorage, BlendingSoftcopyPresentationStateStorage,
                         ChestCADSRStorage, ColorSoftcopyPresentationStateStorage, Comprehensive3DSRStorage,
                         ComprehensiveSRStorage, EncapsulatedPDFStorage, EnhancedSRStorage,
                         EnhancedXRayRadiationDoseSRStorage, ExtensibleSRStorage,
                         GrayscaleSoftcopyPresentationStateStorage, KeyObjectSelectionDocumentStorage,
                         PatientRadiationDoseSRStorage, PseudoColorSoftcopyPresentationStateStorage,
                         XAXRFGrayscaleSoftcopyPresentationStateStorage, XRayRadiationDoseSRStorage)
import pynetdicom
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dimse_primitives import DimseServiceType
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from pneumoscan.core.atomic import write_atomic, write_json
from pneumoscan.core import audit
from pneumoscan.core.audit import now
from pneumoscan.core.digests import file_sha256
from pneumoscan.core.logs import OneLineLog, redact
from pneumoscan.core.names import shown
from pneumoscan.core.options import (LISTEN_ASSOCIATION_MB, LISTEN_FREE_MB, LISTEN_RETRY_S, LISTEN_SEND_S,
                                     LISTEN_SPOOL_MB, LISTEN_STORE_S, MAX_UPLOAD_MB)
from pneumoscan.data.readers.dicom import TRANSFER_SYNTAXES, is_own_output, read_dataset
from pneumoscan.data.scope import CAPTURE_CLASSES, RADIOGRAPH_CLASSES
from pneumoscan.inference.predict import check_built_from, ready_stages
from pneumoscan.models.on_disk import BundleOnDisk, BundleState, Check

from .reports import FHIR_SUFFIX, ObservationIndex, add_warning, check_reportable
from .study import (FAILURES, MADE, WARNINGS, not_scored, one_patient, score_films, status_words, study_rows, unfiled,
                    valid_uid, Withdrawn, withdrawn_by)

log = logging.getLogger(__name__)
# the image classes a film may come in: the radiographs' (a For Processing image is accepted, and not scored, as
# `pacs` does) and Secondary Capture (scored when its Modality says CR or DX, as `pacs` decides)
IMAGE_CLASSES = sorted(RADIOGRAPH_CLASSES | CAPTURE_CLASSES)
# the instances a study commonly carries beside its images (reports, key objects, presentation states, a scanned
# request as PDF), which a PACS routing whole studies sends too: refused at negotiation, the sender would hold the
# study's transfer failed and try it again for ever. Stored and set aside, never scored (Listener._non_image); a key
# object selection is read for the films it withdraws. Other classes (CT, MR, ...) are no chest film: refused.
SET_ASIDE_CLASSES = sorted({
    BasicTextSRStorage, EnhancedSRStorage, ComprehensiveSRStorage, Comprehensive3DSRStorage, ExtensibleSRStorage,
    ChestCADSRStorage, XRayRadiationDoseSRStorage, EnhancedXRayRadiationDoseSRStorage, PatientRadiationDoseSRStorage,
    AcquisitionContextSRStorage, KeyObjectSelectionDocumentStorage, GrayscaleSoftcopyPresentationStateStorage,
    ColorSoftcopyPresentationStateStorage, PseudoColorSoftcopyPresentationStateStorage,
    BlendingSoftcopyPresentationStateStorage, XAXRFGrayscaleSoftcopyPresentationStateStorage, EncapsulatedPDFStorage})
# the films scored whose reports a rejection note that comes later is told of (Listener._made): the latest, about
# 1 KB each in memory with an SR, an overlay and an Observation (19 MB for 20,000, measured with tracemalloc)
RECALLED = 20_000
# the films withdrawn by rejection notes that the spool remembers (Spool.remember), on disk and in memory: those of
# the latest notes, about 0.2 KB each in memory; an older note's files deleted at start, past this many films
WITHDRAWALS = 20_000
# a report not stored for want of an answer (no association, none to the C-STORE) or of the destination's resources
# (0xA7xx) is tried again, 3 times in all, FIRST_WAIT_S after the first try and twice that after the second, within
# the report's send_s; another refusal is not
ATTEMPTS, FIRST_WAIT_S = 3, 1.0
MB = 2**20  # as serve's upload limit counts a MB
_REFUSED_INSTANCE = 0xC000  # "cannot understand": an instance that cannot be filed under a study
_OUT_OF_RESOURCES = 0xA700  # "refused: out of resources": the sender may send the instance again later
_NOT_ITS_CLASS = 0xA900  # "data set does not match SOP class"
_STORED = (0x0000, *WARNINGS)
SPOOL_BATCH = 64  # the spool's oldest reports sent again in one association, at most
# how long a stop waits for a rejection note being kept (Listener._keep_note: a local write, and its reports waiting in
# the spool moved) before it tells of the open associations' notes without it, in an error line
STOP_WAIT_S = 10.0
STOPPING = "the listener is stopping: send it again later"  # each C-STORE's refusal once it stops (0xA700)
# pynetdicom's own (private) attribute naming the temporary file a C-STORE's data set is written to as it arrives: no
# public one says which file holds a film an abort cut short, which pynetdicom leaves on disk (Listener._discard)
_PARTIAL_FILE = "_data_set_path"
# What the listener says, once a change, when a study is scored after its bundle's files on disk changed: it goes on
# scoring with the model it loaded and checked, whole in memory, which each report and audit line names ({}: its
# model_version and bundle.json's checksum); a restart is what loads the files on disk, or refuses them
BUNDLE_DAMAGED = ("the bundle's files on disk are damaged or missing since the listener loaded them: it goes on "
                  "scoring each study with the model it loaded and checked then ({}), but a restart would be refused; "
                  "restore the bundle")
BUNDLE_REPLACED = ("the bundle on disk was replaced since the listener loaded it (trained again, or its thresholds "
                   "chosen again in place): it goes on scoring each study with the model it loaded ({}); restart it to "
                   "score with the bundle on disk")
# ... when the bundle's folder does not answer within BUNDLE_WAIT_S (a network drive that hangs): said once while
# it hangs, each study scored meanwhile without waiting for it
BUNDLE_SILENT = ("the bundle's folder did not answer within {:g} s (a network drive that hangs?): studies are scored "
                 "with the model loaded at start, which needs no file, but a restart would wait on the folder too; "
                 "check the drive")
# ... when its stat answered with a change, and the files are still being read after BUNDLE_WAIT_S (each one hashed:
# a large or ensemble bundle, a slow drive): said once a read, what changed said when the read ends ({}: as above)
BUNDLE_READING = ("the bundle's files on disk changed since the listener loaded them and are still being read after "
                  "{:g} s (a large bundle, or a slow drive): studies are scored meanwhile with the model it loaded "
                  "({}); what changed is said once they are read")
# ... and when the check itself fails (a fault of its own, not of the files): said once an error, each study scored
BUNDLE_CHECK_FAILED = ("the check of the bundle's files on disk failed: studies are scored with the model the listener "
                       "loaded ({}), but whether the files changed is not known")


@dataclass(frozen=True)
class Destination:
    """The AE that reports are sent to: ``AET@HOST:PORT``."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Destination:
        """``AET@HOST:PORT`` (an IPv6 host in brackets), refused in words when it is not that."""
        title, at, address = text.rpartition("@")
        host, colon, port = address.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        if not (at and colon and title.strip() and host and port.isdigit() and 0 < int(port) < 65536):
            raise ValueError(f"store_to (--store-to) {text!r} is not AET@HOST:PORT (the destination's AE title, host "
                             "and port, e.g. PACS@pacs.hospital.example:104)")
        _check_title(title, "store_to (--store-to)'s AE title")
        return cls(title.strip(), host, int(port))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def _check_title(title: str, what: str) -> None:
    """Refuse an AE title DICOM does not allow: 1 to 16 characters of printable ASCII, not a backslash, not all
    spaces (pynetdicom would refuse it later, at the first association, in a traceback)."""
    if not (0 < len(title.strip()) <= 16 and title.isascii() and title.isprintable() and "\\" not in title):
        raise ValueError(f"{what} {title!r} is not an AE title: 1 to 16 characters of printable ASCII, no backslash")


@dataclass(frozen=True)
class Room:
    """What the listener may hold on disk, in MB: one film (as ``serve``'s upload limit), the films of one association
    (all on disk until it is released and its studies are scored), the free space a film must leave on the disk
    of the listener's folder, and the reports the spool may hold waiting to be sent (a destination down for days).
    A sender could otherwise fill the disk: a film that passes the first three as it arrives is cut short
    (:meth:`overrun`), and one past any of them once received is refused with 0xA700 (out of resources) and the
    reason in ErrorComment, where the sender's log shows it: a film whose report the spool has no room for is
    refused, never read and its report lost."""

    film_mb: float = MAX_UPLOAD_MB
    association_mb: float = LISTEN_ASSOCIATION_MB
    free_mb: float = LISTEN_FREE_MB
    spool_mb: float = LISTEN_SPOOL_MB

    def refusal(self, size: int, held: int, free: int, spooled: int = 0) -> str | None:
        """Why a film of ``size`` bytes is refused, its association holding ``held`` bytes, the disk ``free``
        bytes free and the spool ``spooled`` bytes (at most 64 characters, an ErrorComment's); None when it fits."""
        if size > self.film_mb * MB:
            return f"film of {_past(size)} MB over the limit of {self.film_mb:g} MB"
        if held + size > self.association_mb * MB:  # in 64 characters with the widest bound :g writes, 1.23457e+06
            return f"association over {self.association_mb:g} MB; send the rest in another"
        if free - size < self.free_mb * MB:  # what it would leave, rounded down: never read as the bound itself
            return _short(free - size, self.free_mb)
        if spooled >= self.spool_mb * MB:  # the reports of films taken before go in past it: none is dropped
            return f"spool full: {_past(spooled)} MB unsent, --spool-max-mb {self.spool_mb:g}"
        return None

    def overrun(self, arriving: int, held: int, free: int) -> str | None:
        """Why an association is cut short while a film arrives, ``arriving`` bytes of it received so far,
        ``held`` bytes of its association's films kept, and ``free`` bytes left on the disk once what arrived is
        written; None while all three are within their bounds."""
        if arriving > self.film_mb * MB:
            return f"film of {_past(arriving)} MB so far, over --max-film-mb {self.film_mb:g}"
        if held + arriving > self.association_mb * MB:
            return (f"association of {_past(held + arriving)} MB so far, over --max-association-mb "
                    f"{self.association_mb:g}")
        if free < self.free_mb * MB:
            return _short(free, self.free_mb)
        return None


def _short(free: int, free_mb: float) -> str:
    """What ``free`` bytes left on the disk say, under ``--min-free-mb``: rounded down, never read as the bound."""
    return f"would leave {max(0, free // MB)} MB free, under --min-free-mb {free_mb:g}"


def _past(size: int) -> str:
    """``size`` bytes, past a bound, in MB to two decimals rounded up: never shown as the bound it passed (a film
    of 1 MB and a byte is 1.01 MB, not 1.00)."""
    return f"{math.ceil(size * 100 / MB) / 100:.2f}"


class Spool:
    """The reports not yet confirmed by the destination, one file each, ``STUDY_UID_SOP_UID.dcm`` (private, written
    atomically), in a folder that outlives the listener: a report is kept from before it is queued until the
    destination confirms it (status 0x0000, or a warning), so that a destination down, or a stop, loses none. A
    report the destination refuses outright goes to ``refused/``, where IT finds it beside the error line; one of a
    film a rejection note withdrew to ``withdrawn/``, beside each note's withdrawals (:meth:`remember`).

    ``--spool-max-mb`` holds the reports waiting to be sent, not ``refused/``: a refused report is never sent
    again, so counting it would, at a destination that refuses every report, end with each film refused "spool
    full" though nothing waits to be sent; the disk is kept by ``--min-free-mb`` (:class:`Room`), and each report
    set aside is a warning that IT must look at ``refused/``, which nothing empties. The count (:meth:`count`) and
    each change to it (:meth:`keep`, :meth:`confirmed`, :meth:`set_aside`) hold one lock, the file's change with
    it, so that no report is counted twice or missed: a C-STORE waits for a count (about 0.1 to 0.2 s for 10,000
    reports) once each ``--retry-every`` at most."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.refused, self.withdrawn = folder, folder / "refused", folder / "withdrawn"
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)  # reports name patients: the service's alone
        self.refused.mkdir(exist_ok=True, mode=0o700)
        self.withdrawn.mkdir(exist_ok=True, mode=0o700)
        self._lock = threading.Lock()
        self._held = self.count()
        # by (study, film): why a rejection note withdrew it, the latest WITHDRAWALS, this run's notes and earlier
        # runs' (one file each in withdrawn/, read here)
        self._withdrawals: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._recall()
        self._sending: set[Path] = set()  # the reports a C-STORE is carrying now (begin, end): not withdrawn

    def _recall(self) -> None:
        """The withdrawals earlier runs' notes left in ``withdrawn/``, the newest :data:`WITHDRAWALS` films'; the
        files of older notes deleted, so that the folder stays as bounded as the memory. One that cannot be read
        stops the start: which films it withdraws is not known, and their reports could reach the PACS."""
        notes = sorted(self.withdrawn.glob(f"*{NOTE_SUFFIX}"), key=lambda p: (p.stat().st_mtime, p.name),
                       reverse=True)
        recalled: list[tuple[str, dict[str, str]]] = []
        count = 0
        for path in notes:
            if count >= WITHDRAWALS:
                path.unlink(missing_ok=True)
                log.info("the rejection note %s is forgotten: the spool remembers the latest %d films withdrawn",
                         path.name, WITHDRAWALS)
                continue
            try:
                films = json.loads(path.read_bytes())
                if not (isinstance(films, dict) and all(isinstance(w, str) for w in films.values())):
                    raise ValueError("not a JSON object of reasons by SOP Instance UID")
            except (OSError, ValueError) as e:
                raise ValueError(f"the rejection note's withdrawals {path} cannot be read ({shown(str(e))}): which "
                                 "films it withdraws is not known; restore or delete it") from None
            recalled.append((study_of(path), films))
            count += len(films)
        for study_uid, films in reversed(recalled):  # the oldest first: the newest last, evicted last
            self._add(study_uid, films)

    def _add(self, study_uid: str, films: dict[str, str]) -> None:
        """Withdrawals remembered in memory, the oldest forgotten past :data:`WITHDRAWALS` (the lock held, or at
        start)."""
        for film, why in films.items():
            self._withdrawals[(study_uid, film)] = why
            self._withdrawals.move_to_end((study_uid, film))
        while len(self._withdrawals) > WITHDRAWALS:
            self._withdrawals.popitem(last=False)

    def remember(self, study_uid: str, note_uid: str, films: dict[str, str]) -> None:
        """A rejection note's withdrawals (``films``: why each, by SOP Instance UID), written to ``withdrawn/``
        before they are remembered, so that a restart keeps holding their reports back."""
        write_atomic(self.withdrawn / f"{study_uid}_{note_uid}{NOTE_SUFFIX}", json.dumps(films).encode(), mode=0o600)
        with self._lock:
            self._add(study_uid, films)

    def withdrawal(self, study_uid: str, film: str | None) -> str | None:
        """Why a rejection note withdrew the film, None when none did (or none of the latest ones)."""
        with self._lock:
            return self._withdrawals.get((study_uid, film or ""))

    def keep(self, study_uid: str, path: Path) -> Path:
        """The report at ``path`` (one write_reports made) written to the spool, under its study and SOP Instance
        UID; its path there."""
        uid = str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
        data = path.read_bytes()
        with self._lock:
            kept = write_atomic(self.folder / f"{study_uid}_{uid}.dcm", data, mode=0o600)
            self._held += len(data)
        return kept

    def count(self) -> int:
        """The bytes the reports waiting in the spool take, counted from its folder, where IT may move or delete
        reports: what :meth:`held` says from now."""
        with self._lock:
            total = 0
            try:
                with os.scandir(self.folder) as entries:
                    for entry in entries:
                        try:
                            total += entry.stat().st_size if entry.is_file() else 0
                        except FileNotFoundError:  # deleted by IT since it was listed
                            continue
            except FileNotFoundError:  # a folder deleted under the listener holds nothing (its keep says the rest)
                pass
            self._held = total
        return total

    def held(self) -> int:
        """The spool's bytes as last counted, with the reports kept, confirmed and set aside since: a count for each
        film would stat every report (0.1 to 0.2 s for 10,000 of them on a shared 2-core machine), as many as a
        destination down for days leaves."""
        with self._lock:
            return self._held

    def waiting(self) -> list[Path]:
        """The reports in the spool, the oldest first."""
        return sorted(self.folder.glob("*_*.dcm"), key=lambda p: (p.stat().st_mtime, p.name))

    def confirmed(self, path: Path) -> None:
        """The destination holds it: never sent again."""
        with self._lock:
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                return
            path.unlink(missing_ok=True)
            self._held = max(0, self._held - size)

    def set_aside(self, path: Path) -> Path:
        """A report the destination refused (or that cannot be read): out of the spool and its bound, into
        ``refused/``, with a warning that IT must look there."""
        with self._lock:
            size = path.stat().st_size
            where = path.replace(self.refused / path.name)
            self._held = max(0, self._held - size)
        log.warning("%s is set aside, not sent again and not counted against --spool-max-mb: look at %s (send its "
                    "reports by hand once the cause is fixed, or delete them); nothing empties it", where.name,
                    self.refused)
        return where


    def begin(self, paths: Iterable[Path]) -> None:
        """Reports a C-STORE is about to carry: :meth:`withdraw` leaves them, as whether the destination stores them
        is not known yet (the sender checks their films after: :meth:`Listener._check_stored`)."""
        with self._lock:
            self._sending.update(paths)

    def end(self, paths: Iterable[Path]) -> None:
        """Reports no C-STORE carries any more (stored, refused or left)."""
        with self._lock:
            self._sending.difference_update(paths)

    def withdraw(self, study_uid: str, films: Iterable[str]) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        """The study's reports waiting here made on ``films`` (those a report's references name: its evidence, its
        source image), moved out of the spool and its bound into ``withdrawn/``, never sent: films a rejection note
        withdrew. Their SOP Instance UIDs, by film; and those of the reports being sent (:meth:`begin`), left here.
        Read from the spool itself, so an earlier run's reports are found too."""
        films = list(films)
        moved: dict[str, list[str]] = {}
        sending: dict[str, list[str]] = {}
        for path in sorted(self.folder.glob(f"{study_uid}_*.dcm")):
            try:
                report = pydicom.dcmread(path, stop_before_pixels=True)
            except FileNotFoundError:  # sent and confirmed since it was listed
                continue
            named = references(report)
            if not (made_on := [film for film in films if film in named]):
                continue
            with self._lock:
                try:
                    if (carried := path in self._sending):
                        size = 0
                    else:
                        size = path.stat().st_size
                        path.replace(self.withdrawn / path.name)
                except FileNotFoundError:
                    continue
                self._held = max(0, self._held - size)
            for film in made_on:
                (sending if carried else moved).setdefault(film, []).append(str(report.SOPInstanceUID))
        return moved, sending


def references(report: Dataset) -> set[str]:
    """The SOP Instance UIDs a report names (its evidence, its source image): the film it was made on among them."""
    return {str(e.value) for e in report.iterall() if e.keyword == "ReferencedSOPInstanceUID"}


NOTE_SUFFIX = ".note.json"  # a rejection note's withdrawals in the spool's withdrawn/: STUDY_UID_NOTE_UID.note.json


def study_of(path: Path) -> str:
    """The study UID a spooled report's name gives."""
    return path.name.partition("_")[0]


def uid_of(path: Path) -> str:
    """The report's SOP Instance UID a spooled report's name gives."""
    return path.name.partition("_")[2].removesuffix(".dcm")


def keep_answers(assoc: Association) -> Association:
    """``assoc``, a requestor's association, whose reactor never takes an answer off the DIMSE queue, and whose
    ``send_*`` methods take only the answer to the request they sent.

    pynetdicom's reactor thread reads that queue without blocking between its own requests, and a ``send_*`` method
    pauses it before sending; but the pause is a flag the reactor raises just before its checkpoint, so a reactor
    held up between the checkpoint and its read (a loaded machine) takes the C-STORE's answer, drops it as
    "Received unexpected C-STORE service message", and the sender waits out its DIMSE timeout and aborts: a report
    the destination stored counted as unanswered. Its read here takes a request, or the end of the connection
    (pynetdicom's ``(None, None)``), from the head of the queue, never an answer, in one step under the queue's lock.
    An answer that stays there could be read by a later C-STORE as its own (an answer sent twice, or late): the
    ``send_*`` method's read drops, with a warning, an answer to another message than the last request sent, so that
    a report refused is never counted stored on another's answer (give each request a message ID of its own)."""
    dimse = assoc.dimse
    waiting, send = dimse.msg_queue, dimse.send_msg
    asked: int | None = None  # the Message ID of the last request sent

    def send_msg(primitive: DimseServiceType, context_id: int) -> None:
        nonlocal asked
        if primitive.MessageID is not None:  # a request (an answer has its MessageIDBeingRespondedTo)
            asked = primitive.MessageID
        send(primitive, context_id)

    def get_msg(block: bool = False) -> tuple[int | None, DimseServiceType | None]:
        if not block:  # the reactor's read
            with waiting.mutex:
                if not waiting.queue or _is_answer(waiting.queue[0][1]):
                    return None, None
                return waiting.queue.popleft()
        timeout = dimse.dimse_timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                item = waiting.get(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return None, None
            if not _is_answer(answer := item[1]) or answer.MessageIDBeingRespondedTo == asked:
                return item
            log.warning("an answer to message %s, not to the request sent (message %s), is dropped",
                        answer.MessageIDBeingRespondedTo, asked)

    dimse.send_msg, dimse.get_msg = send_msg, get_msg  # type: ignore[method-assign]
    return assoc


def _is_answer(message: DimseServiceType | None) -> bool:
    """Whether a message a peer sent is an answer: every DIMSE answer has a Status, no request has one (None is the
    connection's end)."""
    return message is not None and getattr(message, "Status", None) is not None


@dataclass
class _Association:
    """What one association brought: its folder, its instances' rows by study and SOP Instance UID, and their bytes
    on disk."""

    folder: Path
    calling: str
    address: str  # the caller's HOST:PORT
    studies: dict[str, dict[str, dict]] = field(default_factory=dict)
    size: int = 0
    # by study: the films its rejection notes withdraw (why each, by SOP Instance UID), and why one of its key object
    # selections could not be read (which films it withdraws not known: none of the study's is scored)
    notes: dict[str, dict[str, str]] = field(default_factory=dict)
    doubts: dict[str, str] = field(default_factory=dict)
    # by study: the reports its notes' films had waiting in the spool, set aside as each note came (by film), and the
    # films withdrawn by a retention-expiry note (113039: a routine purge, not a fault)
    aside: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    carried: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # as aside: those being sent, left
    purged: set[str] = field(default_factory=set)


@dataclass
class _Scored:
    """An association's studies scored, each with its rows and the time (on the monotonic clock) its reports are to
    be sent by; their files in ``folder``, deleted once they are sent, and their reports in the spool."""

    folder: Path
    studies: list[tuple[str, list[dict], float]] = field(default_factory=list)
    spooled: list[Path] = field(default_factory=list)


class AuditLog(audit.AuditLog):
    """The listener's audit file (:class:`pneumoscan.core.audit.AuditLog`), a line lost said with what the listener
    does about it: with ``required``, it holds the film's report back (:meth:`Listener._audit_reads`)."""

    goes_on = "the listener goes on"
    goes_on_required = "each film whose line is lost gets no report (--audit-required)"


class Listener:
    """The C-STORE SCP of ``listen``: :meth:`start` it on an address; each study it is sent is scored once the
    association that carried it is released, one study at a time, and its reports sent to ``destination`` by a
    thread of their own. ``work``: the private folder each association's films are held in, a folder of their own,
    until their studies' reports are sent (the caller deletes it at the end, with what a stop left there); ``room``:
    what they may take of it. ``allow``: the calling AE titles accepted (none: any). ``store_s``: how long the
    destination may take to connect, accept an association or answer one C-STORE; ``send_s``: how long a report may
    wait, from its study's scoring, to be stored. ``out``: a folder for each study's rows, ``STUDY_UID.json``, as
    ``pacs --out`` writes them, rewritten as the destination stores or refuses for good a report they say is not
    stored, sent again from the spool (:meth:`_answered`). ``fhir``: a folder for each scored film's FHIR
    Observation, as ``pacs --fhir`` writes it (:func:`~pneumoscan.interop.study.score_films`), moved there from the
    study's folder once its audit lines are written (:meth:`_file_observations`); each of its files read once (here,
    or when another process puts it there) and kept track of as they are written
    (:class:`~pneumoscan.interop.reports.ObservationIndex`, which says what other processes may do there).
    ``backend`` and ``heatmaps`` as ``pacs`` takes them: ``bundle``'s model is loaded here, once, refused here
    when it cannot score films (or draw their heatmaps), and scores every study the listener is sent.
    ``spool``: where each report waits until the destination confirms it (:class:`Spool`; None: a folder in
    ``work``, gone with it), sent again from there every ``retry_s`` seconds and at :meth:`start` (what an earlier
    run left)."""

    def __init__(self, bundle: Path | str, ae_title: str, destination: Destination, work: Path,
                 allow: Iterable[str] = (), backend: str = "onnx", heatmaps: bool = False, room: Room = Room(),
                 store_s: float = LISTEN_STORE_S, send_s: float = LISTEN_SEND_S, out: Path | None = None,
                 spool: Path | None = None, retry_s: float = LISTEN_RETRY_S, audit: AuditLog | None = None,
                 fhir: Path | None = None) -> None:
        _check_title(ae_title, "ae_title (--ae-title)")
        for title in allow:
            _check_title(title, "allow (--allow)")
        check_reportable(bundle, dicom=True)  # the UID root and the bundle's task, before any film is taken
        # the bundle's files as they are before the model loads (seconds for ONNX or an ensemble), checked again
        # before each study is scored (_check_bundle); a bundle replaced while the model loads is refused below
        self.on_disk = BundleOnDisk(bundle, self._said_of)  # asked once a change is found: after self.named is set
        # the model every study is scored with, loaded once (as serve loads its own) and proven to run here (and to
        # draw heatmaps, with heatmaps) before any association: a bundle replaced on disk since is read at a restart
        self.stages = ready_stages(bundle, backend=backend, heatmaps=heatmaps)
        check_built_from(self.stages.first, self.on_disk.card)
        self.ae_title, self.destination, self.work = ae_title.strip(), destination, work
        self.allow = [t.strip() for t in allow]
        self.room, self.store_s, self.send_s, self.out = room, store_s, send_s, out
        # read here, and after only what changed: a folder that grows for months would take longer to read each study
        self.observations = ObservationIndex(fhir) if fhir is not None else None
        self.kept = spool is not None  # a spool that outlives the listener: its reports survive a stop
        self.spool, self.retry_s = Spool(spool if spool is not None else work / "spool"), retry_s
        self._queued: set[Path] = set()  # the spooled reports of studies queued or being sent: not sent again yet
        self._associations: dict[int, _Association] = {}
        self._arriving: dict[int, int] = {}  # by association: the bytes of the film arriving, received so far
        self._cut: dict[int, str] = {}  # by association: why the listener aborted it at a bound
        self._lock = threading.Lock()  # the associations' table
        # one study scored at a time: a model's memory, not one per sender; and so the one model (self.stages), which
        # Grad-CAM's hooks on its torch model would share between studies, is used by one thread at a time
        self._scoring = threading.Lock()
        # scored, their reports to send in turn; None wakes the sending thread to end it (stop)
        self._outbox: queue.SimpleQueue[_Scored | None] = queue.SimpleQueue()
        self._sending: str | None = None  # the study whose reports the sending thread is sending
        self._stopped = threading.Event()
        # the rejection notes being kept now (_keep_note): what a stop waits for, and whether it gave up waiting, in
        # which case each is refused once kept (0xA700, sent again later), as its films scored are not told of
        self._notes = threading.Condition()
        self._keeping = 0
        self._gave_up = False
        # by (study, SOP Instance UID): what was made on each film scored (the latest RECALLED), for a rejection note
        # that comes after its scoring (while the listener runs); the films notes withdrew are the spool's (on disk)
        self._made: OrderedDict[tuple[str, str], dict] = OrderedDict()
        self.audit = audit
        # the model each audit line names: as each reading names it, and the checksum of the bundle.json it was
        # built from (read before it loaded: one put there since names another card)
        self.model = {**self.stages.first.identity, "bundle_checksum": self.on_disk.checksum}
        self.named = f"model_version {self.model['model_version']} in its reports, bundle_checksum " \
                     f"{self.model['bundle_checksum']} in its audit lines"
        self._said: tuple[Check, BundleState] | None = None  # the check that did not answer, and what was said of it

    def start(self, host: str, port: int) -> ThreadedAssociationServer:
        """Listen on ``host``:``port`` (0: a free port, the server's ``server_address`` says which) in threads of
        its own; the caller shuts the returned server down."""
        # each film is written to a temporary file as it arrives, not held in memory (pynetdicom's setting is
        # the process's: its other SCPs, none in pneumoscan, would get their C-STOREs' files too)
        _config.STORE_RECV_CHUNKED_DATASET = True
        # a broken audit file loses the line of each film and report: its warning held to one every 10 s, as serve's
        if self.audit is not None and not any(isinstance(f, OneLineLog) for f in self.audit.log.filters):
            self.audit.log.addFilter(OneLineLog())
        if not hasattr(DIMSEMessage(), _PARTIAL_FILE):  # the bounds, counted from the PDUs, hold without it
            log.warning("pynetdicom %s does not say which temporary file holds a film cut short as it arrives (%s): "
                        "each such file is left in %s, counted against --min-free-mb; delete them after a stop",
                        pynetdicom.__version__, _PARTIAL_FILE, tempfile.gettempdir())
        ae = AE(ae_title=self.ae_title)
        ae.require_called_aet = True  # an association addressed to another AE title is rejected
        ae.require_calling_aet = self.allow
        for sop_class in IMAGE_CLASSES + SET_ASIDE_CLASSES:
            ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)  # C-ECHO, answered by pynetdicom
        handlers = [(evt.EVT_PDU_RECV, self._received), (evt.EVT_C_STORE, self._stored),
                    (evt.EVT_RELEASED, self._released),
                    (evt.EVT_ABORTED, self._aborted),  # a connection dropped is an abort too (A-P-ABORT)
                    (evt.EVT_REJECTED, self._rejected)]
        server = ae.start_server((host, port), block=False, evt_handlers=handlers)
        # a daemon: a stop does not wait for a destination; the reports it leaves unsent are not in the PACS
        threading.Thread(target=self._sender, name="listen-sender", daemon=True).start()
        bound = server.server_address
        log.info("listening as %s on %s:%d; reports go to %s%s", self.ae_title, bound[0], bound[1], self.destination,
                 f"; callers allowed: {', '.join(self.allow)}" if self.allow else "; any caller")
        if not self.kept:  # a rejection note is taken all the same: refused, its films would be scored now too
            log.warning("no spool (--spool): reports the destination has not confirmed when the listener stops are "
                        "lost with its temporary folder, and so are the films rejection notes withdraw: one sent "
                        "again after a restart is scored")
        return server

    def _entry(self, assoc: Association) -> _Association:
        """The association's record, made (with its private folder) at its first instance."""
        with self._lock:
            if id(assoc) not in self._associations:
                folder = Path(tempfile.mkdtemp(prefix="association-", dir=self.work))
                requestor = assoc.requestor
                self._associations[id(assoc)] = _Association(folder, requestor.ae_title.strip(),
                                                             f"{requestor.address}:{requestor.port}")
            return self._associations[id(assoc)]

    def _received(self, event: evt.Event) -> None:
        """A PDU received, before pynetdicom writes it (pynetdicom's public event and PDU, the bytes counted here):
        each data set fragment counted against the room, and the association aborted at the one that takes its film
        or itself past its bound, or the disk under ``--min-free-mb``, never written whole."""
        if not isinstance(event.pdu, P_DATA_TF) or event.assoc.is_aborted:  # aborted: what follows is ignored
            return
        key, free, written = id(event.assoc), None, 0
        for item in event.pdu.presentation_data_value_items:
            header, size = item.presentation_data_value[0], len(item.presentation_data_value) - 1
            if header & 1:  # a command's fragment: a message begins, its data set (if any) after it
                self._arriving.pop(key, None)
                continue
            arriving = self._arriving[key] = self._arriving.get(key, 0) + size
            if free is None:  # the disk as this PDU arrives, before pynetdicom writes its fragments
                free = shutil.disk_usage(self.work).free
            written += size
            with self._lock:
                received = self._associations.get(key)
            if (why := self.room.overrun(arriving, received.size if received else 0, free - written)) is None:
                if header & 2:  # the data set's last fragment: whole once written, handed to _stored
                    self._arriving.pop(key, None)
                continue
            requestor = event.assoc.requestor
            log.warning("association from %r at %s:%d aborted: %s", shown(requestor.ae_title.strip()),
                        requestor.address, requestor.port, why)
            self._cut[key] = why
            event.assoc.abort()  # in a handler: the A-ABORT queued, EVT_ABORTED (_aborted) at once
            return

    def _stored(self, event: evt.Event) -> int | Dataset:
        """One C-STORE: the instance kept, under its study, for when the association is released; refused once the
        listener stops (0xA700, sent again later): it would be neither scored nor, a rejection note, told of."""
        if self._stopped.is_set():
            return self._refuse(event, STOPPING, _OUT_OF_RESOURCES)
        received = self._entry(event.assoc)
        arrived = event.dataset_path  # pynetdicom's temporary file, deleted by it after this handler unless moved
        size = arrived.stat().st_size
        aside = str(event.request.AffectedSOPClassUID or "") in SET_ASIDE_CLASSES
        # the free space as it was before the film: its file is on the same disk as the work folder already; the
        # spool as it stands: a film is refused while it is full, so that no report is made that cannot be kept (an
        # instance set aside makes none)
        if why := self.room.refusal(size, received.size, shutil.disk_usage(self.work).free + size,
                                    0 if aside else self.spool.held()):
            return self._refuse(event, why, _OUT_OF_RESOURCES)
        try:  # the data layer's bounded read: a deflated data set is inflated within MAX_DECODED_BYTES, never whole
            ds = read_dataset(arrived, header_only=True)
        except (OSError, ValueError) as e:
            return self._refuse(event, f"its data set cannot be read: {shown(str(e))}")
        study, series = str(ds.get("StudyInstanceUID", "")), str(ds.get("SeriesInstanceUID", ""))
        sop = str(event.request.AffectedSOPInstanceUID or "")
        for what, uid in (("StudyInstanceUID", study), ("SeriesInstanceUID", series), ("SOPInstanceUID", sop)):
            if not valid_uid(uid):  # never put in a file name; an instance without its study cannot be filed
                return self._refuse(event, f"its {what} is missing or not a valid UID")
        if str(ds.get("SOPInstanceUID", "")) != sop:
            return self._refuse(event, "its SOPInstanceUID is not the one its C-STORE request names")
        if str(ds.get("SOPClassUID", "")) != str(event.request.AffectedSOPClassUID or ""):  # it chose set aside or not
            return self._refuse(event, "its SOPClassUID is not the one its C-STORE request names", _NOT_ITS_CLASS)
        if any(sop in instances for other, instances in received.studies.items() if other != study):
            return self._refuse(event, "its SOPInstanceUID was sent under another study")
        if aside:
            return self._non_image(event, received, ds)
        path = received.folder / f"{sop}.dcm"
        try:
            shutil.move(arrived, path)  # a rename: the work folder is in the temporary folder pynetdicom writes to
        except OSError as e:  # a disk filled by another program since: out of resources too, never a crash
            path.unlink(missing_ok=True)
            return self._refuse(event, f"the listener cannot keep it ({e.strerror})", _OUT_OF_RESOURCES)
        received.size += size
        row = {"path": sop, "study_instance_uid": study, "series_instance_uid": series, "sop_instance_uid": sop}
        received.studies.setdefault(study, {})[sop] = row
        return 0x0000

    def _non_image(self, event: evt.Event, received: _Association, ds: Dataset) -> int | Dataset:
        """An instance of :data:`SET_ASIDE_CLASSES` (no image): stored (0x0000), never scored nor kept, an info line
        and an audit line saying what it was. pneumoscan's own report routed back (a loop in the routing) is
        ignored; a rejection note's films are withdrawn (:meth:`_withdraw`); a key object selection that cannot be
        read is refused (0xC000), and its study's films in the association are not scored, as ``pacs`` refuses the
        study: which films it withdraws is not known."""
        study, series, sop = (str(ds.get(k, "")) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"))
        sop_class = UID(str(event.request.AffectedSOPClassUID))
        withdrawn: dict[str, str] = {}
        level = logging.INFO
        if is_own_output(ds):  # a loop in the routing: each report would come back after each film
            what, level = f"pneumoscan's own {sop_class.name}, routed back: ignored", logging.WARNING
        else:
            if sop_class == KeyObjectSelectionDocumentStorage:
                try:
                    note = withdrawn_by(ds)
                except ValueError as e:
                    received.doubts[study] = str(e)
                    return self._refuse(event, str(e))
                if (withdrawn := note.films) and (why := self._keep_note(received, study, sop, note)) is not None:
                    return self._refuse(event, why, _OUT_OF_RESOURCES)  # the sender sends it again later
            what = (f"a rejection note withdrawing {len(withdrawn)} film(s)" if withdrawn else "not an image") + \
                f" ({sop_class.name}): set aside, not scored"
        log.log(level, "study %s: instance %s received from %r: %s%s", study, sop, shown(received.calling), what,
                "; the PACS's routing sends the listener's reports back to it" if level > logging.INFO else "")
        self._audit({"event": "instance_set_aside", "calling_ae": received.calling, "address": received.address,
                     "study_instance_uid": study, "series_instance_uid": series, "sop_instance_uid": sop,
                     "sop_class": sop_class.name, "reason": what})
        return 0x0000

    def _keep_note(self, received: _Association, study_uid: str, note_uid: str, note: Withdrawn) -> str | None:
        """A rejection note's withdrawals kept before it is answered: on disk (:meth:`Spool.remember`: a restart, or an
        abort, keeps its films' reports back), then its films' reports set aside (:meth:`_withdraw`) and a routine
        purge's films noted as such (told of in an info line: :meth:`_retract`), counted as being kept, which a stop
        waits for before it tells of the open associations' notes (:meth:`stop`), so that no note answered 0x0000
        goes untold. Why it is refused (0xA700: the sender sends it again later), None once kept: the listener
        stopping, or a stop that gave up waiting for it (its films scored would not be told of; the note sent again
        is remembered as it was), or its withdrawals that cannot be written."""
        with self._notes:
            if self._stopped.is_set():
                return STOPPING
            self._keeping += 1
        why = None
        try:
            self.spool.remember(study_uid, note_uid, note.films)
        except OSError as e:
            why = f"its withdrawals cannot be kept ({e.strerror})"
        else:
            if note.purge:
                received.purged.update(note.films)
            self._withdraw(received, study_uid, note.films)
        finally:
            with self._notes:
                self._keeping -= 1
                self._notes.notify_all()
                gave_up = self._gave_up
        return why or (STOPPING if gave_up else None)  # a failed write says so, stopping or not

    def _withdraw(self, received: _Association, study_uid: str, withdrawn: dict[str, str]) -> None:
        """A rejection note's films (``withdrawn``: why each, by SOP Instance UID; remembered by the spool already,
        so that one not yet scored, in any association, is not: :meth:`score_study`): their reports waiting in the
        spool set aside at once; those scored already are told of once the note's association ends (released,
        aborted, or the listener stopped: :meth:`_retract`), when no study is being scored."""
        moved, carried = self.spool.withdraw(study_uid, withdrawn)
        for found, into in ((moved, received.aside), (carried, received.carried)):
            for film, reports in found.items():
                into.setdefault(study_uid, {}).setdefault(film, []).extend(reports)
        received.notes.setdefault(study_uid, {}).update(withdrawn)

    def _refuse(self, event: evt.Event, why: str, status: int = _REFUSED_INSTANCE) -> Dataset:
        """A C-STORE failure, ``status``, that says ``why`` to the sender, in a warning and an audit line: the trail
        shows each film turned away (not kept, no report) and why."""
        log.warning("C-STORE refused (0x%04X): %s", status, why)
        requestor, sop = event.assoc.requestor, str(event.request.AffectedSOPInstanceUID or "")
        self._audit({"event": "film_refused", "calling_ae": requestor.ae_title.strip(),
                     "address": f"{requestor.address}:{requestor.port}",
                     "sop_instance_uid": sop if valid_uid(sop) else None, "status": f"0x{status:04X}", "reason": why})
        answer = Dataset()
        answer.Status, answer.ErrorComment = status, why[:64]
        return answer

    def _rejected(self, event: evt.Event) -> None:
        """An association pynetdicom rejected: a warning naming the caller (AE title and address) and why, so that
        IT can see why a modality or PACS cannot connect (pynetdicom's own line says only that it rejected one)."""
        requestor = event.assoc.requestor
        calling = requestor.ae_title.strip()
        called = str(getattr(requestor.primitive, "called_ae_title", "")).strip()
        if self.allow and calling not in self.allow:
            why = f"its calling AE title is not one of --allow ({', '.join(self.allow)})"
        elif called != self.ae_title:
            why = f"it is addressed to the AE title {shown(called)!r}, not this listener's {self.ae_title!r}"
        else:
            why = "pynetdicom's other checks: too many associations at once, or a user identity it cannot verify"
        log.warning("association from %r at %s:%d rejected: %s", shown(calling), requestor.address, requestor.port,
                    why)
        self._audit({"event": "association_refused", "calling_ae": calling,
                     "address": f"{requestor.address}:{requestor.port}", "reason": why})

    def _aborted(self, event: evt.Event) -> None:
        """An association aborted by either side, or its connection dropped, before a release: what it brought is
        left unscored, and the film it was sending deleted (pynetdicom leaves its temporary file); aborted by the
        listener at a bound, the films it stored are scored, as the sender was told they were stored. An abort that
        loses a film is a warning (the listener's own, at its bound, is said in :meth:`_received`) and an audit line.
        (Not on the connection's close, which the network thread may report before the association's thread reports
        the release.)"""
        key = id(event.assoc)
        arriving, cut = self._arriving.pop(key, None), self._cut.pop(key, None)
        # the film cut short, or one whose command alone came: its file deleted (whether any film was arriving)
        kept = not self._discard(event.assoc) and arriving is not None
        with self._lock:
            received = self._associations.pop(key, None)
        studies = list(received.studies) if received is not None and cut is None else []
        if arriving is not None or studies or cut is not None:  # else nothing lost: a C-ECHO's, or no film kept
            self._say_aborted(event.assoc, arriving, kept, cut, studies, received)
        if received is None:
            return
        if cut is not None:  # scored in a thread of its own: this is the association's network thread
            threading.Thread(target=self._score, args=(received,), name="listen-overrun", daemon=True).start()
            return
        shutil.rmtree(received.folder, ignore_errors=True)
        if received.notes:  # its notes stored: their films scored already told of, as after a release
            threading.Thread(target=self._retract_all, args=(received,), name="listen-retract", daemon=True).start()

    def _say_aborted(self, assoc: Association, arriving: int | None, kept: bool, cut: str | None,
                     studies: list[str], received: _Association | None) -> None:
        """The warning of an abort that lost a film (the sender's; the listener's own is said as it aborts) and its
        audit line: the film arriving (``arriving`` bytes of it, its file ``kept`` or deleted) and ``studies``
        left unscored."""
        requestor = assoc.requestor
        calling, address = requestor.ae_title.strip(), f"{requestor.address}:{requestor.port}"
        lost = []
        if arriving is not None:
            lost.append(f"the film arriving is cut short after {_past(arriving)} MB, " + (
                f"its temporary file left in {tempfile.gettempdir()}" if kept else "its temporary file deleted"))
        if studies and received is not None:
            count = sum(len(instances) for instances in received.studies.values())
            lost.append(f"its {count} instance(s) of {len(studies)} study(ies) are not scored ({', '.join(studies)}); "
                        "the sender should send them again")
        if cut is None:
            log.warning("association from %r at %s aborted by the sender, or its connection dropped: %s",
                        shown(calling), address, "; ".join(lost))
        self._audit({"event": "association_aborted", "calling_ae": calling, "address": address,
                     "by": "sender" if cut is None else "listener", "reason": cut,
                     "film_cut_short": arriving is not None, "studies_not_scored": studies})

    def _discard(self, assoc: Association) -> bool:
        """Delete pynetdicom's temporary file of the film an abort cut short (pynetdicom leaves it); whether it
        could: no public attribute names that file, so its own (:data:`_PARTIAL_FILE`) does, which a later pynetdicom
        may drop (said once at :meth:`start`; the file then stays, counted against ``--min-free-mb`` as it arrives)."""
        partial = getattr(getattr(assoc.dimse, "message", None), _PARTIAL_FILE, None)
        if not isinstance(partial, (str, os.PathLike)):
            return False
        Path(partial).unlink(missing_ok=True)
        return True

    def _released(self, event: evt.Event) -> None:
        """The sender is done: each study the association brought is scored, and handed to the sending thread,
        which deletes the association's folder once their reports are sent."""
        self._arriving.pop(id(event.assoc), None)
        with self._lock:
            received = self._associations.pop(id(event.assoc), None)
        if received is not None:  # None: a C-ECHO, or no instance at all
            self._score(received)

    def _score(self, received: _Association) -> None:
        """Each study an association brought scored, and handed to the sending thread; a study whose scoring raised
        is an error line, and an audit line for each of its films with the error as its refusal. A fault in one
        study's scoring or audit lines is that study's: the others, and the listener, go on."""
        scored = _Scored(received.folder)
        try:
            with self._scoring:
                for study, instances in received.studies.items():
                    on_disk = self._check_bundle()  # said in each of its films' audit lines
                    try:
                        if (doubt := received.doubts.get(study)) is not None:
                            raise ValueError(doubt)
                        rows = self.score_study(study, instances, received.folder)
                    except Exception as e:  # one study's fault is that study's: the others, and the listener, go on
                        why = shown(redact(str(e)) or type(e).__name__)
                        log.error("study %s: not scored: %s", study, why)
                        self._audit_reads(study, [{**row, "error": why} for row in instances.values()], received,
                                          on_disk)
                        continue
                    if self._audit_reads(study, rows, received, on_disk):
                        self._spool_reports(study, rows, scored)  # first: an SR not sent takes its Observation
                        self._file_observations(study, rows)
                        try:
                            self._record(study, rows)
                        except Exception as e:  # its reports go on; a note that comes later cannot name them
                            log.error("study %s: what was made on its films is not kept for a rejection note that "
                                      "comes later, which cannot name it: %s", study,
                                      shown(redact(str(e)) or type(e).__name__))
                        scored.studies.append((study, rows, time.monotonic() + self.send_s))
                self._retract_notes(received)
        finally:
            self._outbox.put(scored)
            if self._stopped.is_set():  # scored as the listener stopped: after stop's drain, so drained here
                self._drain()

    def _retract_all(self, received: _Association) -> None:
        """The notes of an association that ended with no release (aborted, or the listener stopped), told of
        (:meth:`_retract_notes`) once no study is being scored."""
        with self._scoring:
            self._retract_notes(received)

    def _retract_notes(self, received: _Association) -> None:
        """Each of the association's notes' films scored already told of (:meth:`_retract`), once: no study is being
        scored meanwhile (the caller holds ``_scoring``), so each one's reports are known."""
        with self._lock:  # taken once: a stop and the association's end may both come here
            notes, received.notes = received.notes, {}
        for study, withdrawn in notes.items():
            try:
                self._retract(study, withdrawn, received)
            except Exception as e:  # the films stay withdrawn from scoring and sending (Spool.withdrawal)
                log.error("study %s: the reports made on the films its rejection note withdraws are not "
                          "told of, nor set aside in the spool: %s", study, shown(redact(str(e)) or type(e).__name__))

    def _record(self, study_uid: str, rows: list[dict]) -> None:
        """What was made on each film of a study scored (its reports' SOP Instance UIDs, its FHIR Observation), kept
        for a rejection note that comes after (:meth:`_retract`): the latest :data:`RECALLED` films."""
        for row in rows:
            if "probability" not in row:
                continue
            reports = [self._report_uid(Path(row[key])) for key in MADE if key in row]
            with self._lock:
                self._made[(study_uid, row["sop_instance_uid"])] = {"reports": reports, "fhir": row.get("fhir")}
                while len(self._made) > RECALLED:
                    self._made.popitem(last=False)

    def _report_uid(self, path: Path) -> str:
        """A report's SOP Instance UID: its name in the spool says it (:meth:`Spool.keep` read it); one the spool
        could not take is read."""
        if path.parent == self.spool.folder:
            return uid_of(path)
        return str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)

    def _retract(self, study_uid: str, withdrawn: dict[str, str], received: _Association) -> None:
        """A rejection note's films (``withdrawn``: why each, by SOP Instance UID) that were scored already: a warning
        and an audit line for each, naming the reports made on it (as :meth:`_record` kept them) and the reason; its
        reports still waiting in the spool set aside, never sent. pneumoscan sends no retraction: what the PACS, or
        the FHIR folder, holds already is for IT to remove. Films this listener did not score (or scored before it
        started, or more than RECALLED films ago) are counted in an info line."""
        with self._lock:
            made = {film: self._made.pop((study_uid, film)) for film in withdrawn if (study_uid, film) in self._made}
        later, carried_later = self.spool.withdraw(study_uid, withdrawn)  # spooled since the note came
        moved, carried = ({film: earlier.get(film, []) + now.get(film, []) for film in earlier.keys() | now.keys()}
                          for earlier, now in ((received.aside.get(study_uid, {}), later),
                                               (received.carried.get(study_uid, {}), carried_later)))
        for film, uids in list(carried.items()):  # being sent as the note came: since, set aside (not stored) or not
            aside = [uid for uid in uids if (self.spool.withdrawn / f"{study_uid}_{uid}.dcm").is_file()]
            moved[film] = sorted({*moved.get(film, []), *aside})
            carried[film] = sorted({*uids} - {*moved[film]})
        moved, carried = ({film: uids for film, uids in found.items() if uids} for found in (moved, carried))
        for film, why in withdrawn.items():
            if not {film} & (made.keys() | moved.keys() | carried.keys()):
                continue
            held, sent = moved.get(film, []), carried.get(film, [])
            reports = made[film]["reports"] if film in made else held + sent  # an earlier run's: its spool's
            fhir = made.get(film, {}).get("fhir")
            named = [f"report {uid}" for uid in reports] + ([f"FHIR Observation {fhir}"] if fhir else [])
            kept = (f"; waiting in the spool, set aside in {self.spool.withdrawn} and not sent: {', '.join(held)}"
                    if held else "") + (f"; being sent to {self.destination}: {', '.join(sent)}: if stored, remove "
                                        "it by hand" if sent else "")
            if film in received.purged:  # a routine purge: what the PACS holds goes by its own retention rule
                log.info("study %s: the film %s, scored already, is %s: made on it: %s%s", study_uid, film, why,
                         ", ".join(named), kept)
            else:
                log.warning("study %s: the film %s, scored already, is %s: made on it: %s%s; pneumoscan sends no "
                            "retraction: remove what the PACS holds of them by hand", study_uid, film, why,
                            ", ".join(named), kept)
            self._audit({"event": "scored_film_withdrawn", "study_instance_uid": study_uid, "sop_instance_uid": film,
                         "reason": why, "report_sop_instance_uids": reports, "fhir": fhir, "reports_set_aside": held,
                         "reports_being_sent": sent})
        known = len(made.keys() | moved.keys() | carried.keys())
        log.info("study %s: %d film(s) withdrawn by its rejection note(s); reports known for %d; for the others see "
                 "the audit log's film_read lines", study_uid, len(withdrawn), known)

    def _audit(self, entry: dict) -> bool:
        """``entry`` as an audit line, with its time: whether it was written (True without an audit log)."""
        return self.audit is None or self.audit.write({"time": now(), **entry})

    def _audit_reads(self, study_uid: str, rows: list[dict], received: _Association,
                     on_disk: BundleState | None) -> bool:
        """A line for each film of a study read: its caller, UIDs, the SHA-256 of the bytes received, the model, what
        the check of the bundle's files before its scoring found (``on_disk``: :meth:`_check_bundle`), and its
        reading or why there is none; with ``audit.required``, a film whose line is lost gets no report (its row
        says why). Whether the lines were made: a fault in making them (a film's digest that cannot be read) is an
        error line, and the study's reports are not sent."""
        if self.audit is None:
            return True
        try:
            for row in rows:
                sop = row.get("sop_instance_uid")
                if sop is None:  # a row of no film received (none: each instance's row names its SOP Instance UID)
                    continue
                film = received.folder / f"{sop}.dcm"
                written = self._audit({
                    "event": "film_read", "calling_ae": received.calling, "address": received.address,
                    "study_instance_uid": study_uid, "series_instance_uid": row.get("series_instance_uid"),
                    "sop_instance_uid": sop, "film_sha256": file_sha256(film) if film.is_file() else None,
                    **self.model, "bundle_on_disk": on_disk, "probability": row.get("probability"),
                    "label": row.get("label"),
                    "refusal": row.get("not_scored") or row.get("error")})
                if not written and self.audit.required and (made := (MADE.keys() | {"fhir"}) & row.keys()):
                    for key in made:  # each left in the study's folder, deleted with it
                        row.pop(key)
                    # said in the study's error line of films without a report (:meth:`file_study`)
                    add_warning(row, "its audit line cannot be written (--audit-required): its report is held back, "
                                     "not sent" + ("; its FHIR Observation is not written" if "fhir" in made else ""))
        except Exception as e:  # one study's fault is that study's: the association's others go on
            log.error("study %s: its audit lines cannot be made, its reports not sent: %s", study_uid,
                      shown(redact(str(e)) or type(e).__name__))
            return False
        return True

    def _file_observations(self, study_uid: str, rows: list[dict]) -> None:
        """Each FHIR Observation of a study, written in its folder as it was scored, moved into ``fhir`` (written
        whole there, through its index, replacing the file of the same identifier) once the study's audit lines are
        written: a script sending on from that folder never takes one whose audit line is missing, nor one of a
        study whose scoring or audit lines failed partway. One that cannot be moved is an error line, and its row
        says so."""
        if self.observations is None:
            return
        for row in [row for row in rows if "fhir" in row]:
            made = Path(row.pop("fhir"))
            try:
                row["fhir"] = str(self.observations.write(made.name.removesuffix(FHIR_SUFFIX), made.read_text()))
            except OSError as e:
                why = shown(e.strerror or type(e).__name__)
                log.error("study %s: the FHIR Observation of %s is not written to %s: %s", study_uid,
                          row.get("sop_instance_uid"), self.observations.folder, why)
                add_warning(row, f"no FHIR Observation written: {why}")

    def _spool_reports(self, study_uid: str, rows: list[dict], scored: _Scored) -> None:
        """Each report of a study written to the spool before it is queued, its row naming it there; one the spool
        cannot take (a full disk) is sent from the association's folder, an error line saying it is not kept. One
        that cannot be read (not a DICOM file, no SOP Instance UID) is not sent, the error line and its row saying
        why, nor the overlay of an SR that cannot be (an overlay is no reading without its SR), nor its film's FHIR
        Observation filed (:meth:`_file_observations`, after this): the FHIR folder holds no reading whose SR could not
        be read (one the destination refuses later, or a stop without a spool loses, keeps its Observation: it is
        filed before its SR is sent). A fault in one report is its film's: the association's other studies are
        scored and sent."""
        for row in rows:
            for key in [key for key in MADE if key in row]:  # the SR first: its overlay not spooled without it
                if key not in row:  # held back with its SR
                    continue
                try:
                    row[key] = str(path := self.spool.keep(study_uid, Path(row[key])))
                except OSError as e:
                    log.error("study %s: a report is not kept in the spool %s (%s): it is lost if not sent in time",
                              study_uid, self.spool.folder, shown(e.strerror or type(e).__name__))
                    continue
                except Exception as e:  # left in the association's folder, deleted with it
                    why = shown(redact(str(e)) or type(e).__name__)
                    held = [*MADE, "fhir"] if key == "dicom_sr" else [key]  # the SR's reading: none of it filed
                    nor = ", nor its FHIR Observation written" if "fhir" in held and "fhir" in row else ""
                    for made in held:
                        row.pop(made, None)
                    log.error("study %s: its %s of %s cannot be read, so it is not sent%s: %s", study_uid, MADE[key],
                              shown(row.get("path", "?")), nor, why)
                    add_warning(row, f"its {MADE[key]} cannot be read, so it is not sent{nor}: {why}")
                    continue
                scored.spooled.append(path)
                with self._lock:
                    self._queued.add(path)

    def _sender(self) -> None:
        """The sending thread: what the spool holds, at once (an earlier run's) and every ``retry_s``; each
        association's studies in turn, their reports sent, their rows written, their folder deleted; until
        :meth:`stop`."""
        retry_at = time.monotonic()
        while not self._stopped.is_set():
            if time.monotonic() >= retry_at:
                try:
                    self._resend()
                except Exception as e:  # the spool is tried again; the listener goes on
                    log.error("the spool %s is not sent: %s", self.spool.folder,
                              shown(redact(str(e)) or type(e).__name__))
                retry_at = time.monotonic() + self.retry_s
            try:
                scored = self._outbox.get(timeout=max(0.0, retry_at - time.monotonic()))
            except queue.Empty:
                continue
            if scored is None:  # stop's wake-up: the loop ends
                continue
            try:
                for study, rows, deadline in scored.studies:
                    if self._stopped.is_set():
                        self._unsent(study, rows)
                        continue
                    self._sending = study
                    try:
                        self.file_study(study, rows, deadline)
                    except Exception as e:  # one study's fault is that study's: the others, and the listener, go on
                        log.error("study %s: reports not sent: %s", study, shown(redact(str(e)) or type(e).__name__))
                    finally:
                        self._sending = None
            finally:
                with self._lock:
                    self._queued.difference_update(scored.spooled)
                shutil.rmtree(scored.folder, ignore_errors=True)

    def _resend(self) -> None:
        """Send the spool's oldest reports (:data:`SPOOL_BATCH`) not queued now, in one association: each confirmed
        deleted, each refused outright set aside with an error line, the rest left for the next try, in one
        warning line."""
        if self._stopped.is_set():
            return
        self.spool.count()  # what IT moved or deleted since, seen within retry_s
        waiting = self.spool.waiting()  # listed outside the associations' lock, which each P-DATA takes
        with self._lock:
            paths = [p for p in waiting if p not in self._queued][:SPOOL_BATCH]
        self.spool.begin(paths)  # before each is checked: a note that comes after leaves it to us
        try:
            self._resend_batch(paths)
        finally:
            self.spool.end(paths)

    def _resend_batch(self, paths: list[Path]) -> None:
        """:meth:`_resend`'s reports (``paths``), each read, checked, and stored."""
        pending = {}
        for path in paths:
            try:
                report = pydicom.dcmread(path)
            except (OSError, pydicom.errors.InvalidDicomError) as e:
                log.error("study %s: the spooled report %s cannot be read (%s): set aside in %s", study_of(path),
                          path.name, shown(str(e)), self.spool.refused)
                self.spool.set_aside(path)
                continue
            if self._report_withdrawal(study_of(path), report) is not None:  # spooled, or put back, after its note
                self.spool.end([path])
                self._hold_back(study_of(path), [film for film in sorted(references(report))
                                                 if self.spool.withdrawal(study_of(path), film)])
                continue
            pending[path.name] = report
        if not pending:
            return
        left: dict[str, str] = {}
        answered: dict[str, dict[str, int]] = {}  # by study: each report stored or refused for good, with its status
        for name, answer in self._store(pending, self.store_s).items():
            path, uid = self.spool.folder / name, str(pending[name].SOPInstanceUID)
            if answer in _STORED:
                self.spool.confirmed(path)
                log.info("study %s: the report %s, spooled, is stored at %s", study_of(path), uid, self.destination)
                self._check_stored(study_of(path), pending[name])
                self._audit_report(study_of(path), uid, answer)
                answered.setdefault(study_of(path), {})[uid] = answer
            elif isinstance(answer, str) or answer >> 8 == 0xA7:
                left[uid] = answer if isinstance(answer, str) else f"refused ({status_words(answer, FAILURES)})"
            else:
                self._set_aside(study_of(path), uid, path, answer)
                answered.setdefault(study_of(path), {})[uid] = answer
        if left:
            log.warning("%d spooled report(s) not stored at %s: %s; tried again in %g s", len(left), self.destination,
                        "; ".join(sorted(set(left.values()))), self.retry_s)
        for study_uid, answers in answered.items():
            self._answered(study_uid, answers)

    def _hold_back(self, study_uid: str, films: list[str]) -> None:
        """The spool's reports of ``films``, which rejection notes withdrew (this run's or an earlier one's), set
        aside in ``withdrawn/``, never sent, with a warning."""
        for film, reports in self.spool.withdraw(study_uid, films)[0].items():
            log.warning("study %s: the report(s) %s of the film %s, %s, are set aside in %s and not sent", study_uid,
                        ", ".join(reports), film, self.spool.withdrawal(study_uid, film), self.spool.withdrawn)

    def _answered(self, study_uid: str, answers: dict[str, int]) -> None:
        """The study's rows in ``out`` (this run's or an earlier one's) told how the destination answered reports the
        spool sent again that they say are not stored (``answers``: its status of each, by SOP Instance UID), each
        row's warning saying the final outcome in place of the first reason: a report stored moved from its row's
        ``not_stored`` to its ``stored``; one refused for good (set aside in ``refused/``) left in ``not_stored``,
        with the destination's reason. The file is rewritten whole, so that the rows never say a report the PACS
        holds is missing, nor that one it refused for good waits to be sent again. No ``out``, or no rows of the
        study there: nothing to tell."""
        if self.out is None:
            return
        path = self.out / f"{study_uid}.json"
        try:
            rows = json.loads(path.read_bytes())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:  # moved, made unreadable or edited by someone else: said, not guessed
            log.error("study %s: its rows %s cannot be read to say what became of the reports the spool sent: %s",
                      study_uid, path, shown(str(e)))
            return
        told = 0
        for row in rows if isinstance(rows, list) else []:
            for uid in [uid for uid in row.get("not_stored") or [] if uid in answers]:
                status = answers[uid]
                if status in _STORED:
                    row["not_stored"].remove(uid)
                    row.setdefault("stored", []).append(uid)
                    outcome = "it is stored" + (f" with a warning ({status_words(status, WARNINGS)})"
                                                if status in WARNINGS else "")
                else:
                    outcome = (f"{self.destination} refused it ({status_words(status, FAILURES)}): set aside in "
                               f"{self.spool.refused}, not sent again")
                told += 1
                said = f" {uid} is not stored"  # its warning's end (:meth:`_send`), what it was and why kept
                now_said = f" {uid} was not stored when its study was sent; sent again from the spool, {outcome}"
                row["warnings"] = [w.removesuffix(said) + now_said if isinstance(w, str) and w.endswith(said) else w
                                   for w in row.get("warnings") or []]
            if "not_stored" in row and not row["not_stored"]:
                del row["not_stored"]
        if not told:
            return
        try:
            write_json(path, rows)
        except OSError as e:
            log.error("study %s: its rows %s do not say what became of %d report(s) the spool sent again: %s",
                      study_uid, path, told, shown(e.strerror or type(e).__name__))
        else:
            log.info("study %s: its rows %s say what became of the %d report(s) the spool sent again", study_uid,
                     path, told)

    def _set_aside(self, study_uid: str, uid: str, path: Path, status: int) -> None:
        """A report the destination refused outright (another try would meet the same refusal): out of the spool."""
        where = self.spool.set_aside(path)
        self._audit_report(study_uid, uid, status)
        log.error("study %s: %s refused the report %s (%s): set aside as %s, not sent again", study_uid,
                  self.destination, uid, status_words(status, FAILURES), where)

    def stop(self) -> None:
        """As the listener stops (SIGTERM, Ctrl-C; after its server's shutdown): an error line for each study whose
        reports are not sent, queued or being sent (those of it not yet stored are not), as the journal is all IT
        has of them, saying whether the spool keeps them for the next start; the sending thread sends no more, and
        ends (at once when idle, once the study it is sending is done otherwise), so that a process that starts
        listeners and stops them (a test suite, an application embedding one) keeps no thread of each, trying the
        spool every ``retry_s``. Each C-STORE that comes after is refused (0xA700, the sender sends it again later);
        a rejection note being kept as it stops is waited for (:data:`STOP_WAIT_S` at most), so that the films it
        withdraws that were scored already are told of with the other open associations' notes; past that, it is
        refused once kept, so that its sender sends it again rather than take it as told of."""
        with self._notes:  # a note being kept is kept whole first, told of below; or refused once kept
            self._stopped.set()  # each C-STORE from now refused, a rejection note among them (_keep_note)
            if not self._notes.wait_for(lambda: self._keeping == 0, timeout=STOP_WAIT_S):
                self._gave_up = True
                log.error("a rejection note was still being kept %g s after the stop: it is refused once kept "
                          "(0xA700, sent again later), as the films it withdraws that were scored already are not "
                          "told of", STOP_WAIT_S)
        with self._lock:
            open_ = [received for received in self._associations.values() if received.notes]
        for received in open_:  # their notes' films scored already told of: the association may never end
            self._retract_all(received)
        if (study := self._sending) is not None:
            log.error("study %s: the listener stopped while its reports were sent to %s: those not yet stored are "
                      "not%s", study, self.destination, self._left())
        self._drain()

    def _drain(self) -> None:
        """Once stopped: the error line of each study queued, its folder deleted, and the sending thread woken (it
        waits up to ``retry_s`` for a study) to end. Whichever of :meth:`stop` and a study's scoring (:meth:`_score`,
        which may finish after the stop: the server's shutdown does not wait for it) comes last drains what the
        other left, each study taken once from the queue."""
        while True:
            try:
                scored = self._outbox.get_nowait()
            except queue.Empty:
                break
            if scored is not None:  # None: an earlier drain's wake-up
                for study, rows, _ in scored.studies:
                    self._unsent(study, rows)
                shutil.rmtree(scored.folder, ignore_errors=True)
        self._outbox.put(None)

    def _unsent(self, study_uid: str, rows: list[dict]) -> None:
        """The error line of a study whose reports the listener stopped before sending."""
        if reports := sum(key in row for row in rows for key in MADE):
            log.error("study %s: %d report(s) not sent to %s: the listener stopped%s", study_uid, reports,
                      self.destination, self._left())

    def _left(self) -> str:
        """What becomes of the reports a stop leaves unsent: the spool's, or lost."""
        return f"; kept in the spool {self.spool.folder}, sent when listen starts again" if self.kept else \
            "; no spool (--spool): they are lost"

    def score_study(self, study_uid: str, instances: dict[str, dict], folder: Path) -> list[dict]:
        """Score one study's instances (their files in ``folder``, named by SOP Instance UID) and log what became of
        each film; the rows, as ``pacs`` gives them, their reports' files named under the keys write_reports gives
        them, for :meth:`file_study`."""
        entries: list[dict | str] = []
        sources: dict[str, dict] = {}
        patients = {}
        for sop, row in instances.items():
            path = folder / f"{sop}.dcm"
            if (why := self.spool.withdrawal(study_uid, sop)) is not None:  # not the study's film, by its note
                entries.append({**row, "not_scored": why})
                continue
            try:
                header = read_dataset(path, header_only=True)
            except (OSError, ValueError):  # a header that cannot be read: the scorer's error row says why
                sources[str(path)] = row
                entries.append(str(path))
                continue
            patients[sop] = tuple(str(header.get(k, "")).strip() for k in ("PatientID", "IssuerOfPatientID"))
            if is_own_output(header):  # our reports and overlays, routed back: not films, no row
                continue
            if (why := not_scored(header)) is not None:
                entries.append({**row, "not_scored": why})
                continue
            sources[str(path)] = row
            entries.append(str(path))
        one_patient(patients)
        work = folder / study_uid
        work.mkdir()
        # its Observations beside its SRs, moved into `fhir` once its audit lines are written (_file_observations)
        scored = score_films(self.stages, sources, work, store=True,
                             fhir_dir=work / "fhir" if self.observations is not None else None, held=set(instances))
        rows = study_rows(entries, sources, scored)
        for row in rows:
            if "not_scored" in row:
                log.info("study %s: not scored: %s: %s", study_uid, row["path"], row["not_scored"])
            elif "error" in row:
                log.warning("study %s: unreadable: %s: %s", study_uid, row["path"], shown(row["error"]))
        reports = sum(key in row for row in rows for key in MADE)
        log.info("study %s: %d scored, %d not scored, %d unreadable; %d report(s) to send to %s", study_uid,
                 sum("probability" in row for row in rows), sum("not_scored" in row for row in rows),
                 sum("error" in row for row in rows), reports, self.destination)
        return rows

    def _said_of(self, change: BundleState) -> str:
        """What the listener says of a change of its bundle's files (:class:`BundleOnDisk`'s warning), and of a fault
        of the check itself (its error line)."""
        return {BundleState.DAMAGED: BUNDLE_DAMAGED, BundleState.REPLACED: BUNDLE_REPLACED,
                BundleState.FAILED: BUNDLE_CHECK_FAILED}[change].format(self.named)

    def _check_bundle(self) -> BundleState | None:
        """Whether the bundle's files on disk are still those the listener loaded, asked before each study is scored
        (:class:`~pneumoscan.models.on_disk.BundleOnDisk`: stat'ed, read again only when changed), as the word its
        audit lines say (``bundle_on_disk``: None while unchanged, ``damaged``, ``replaced``, ``reading``, ``silent``,
        ``failed``), so that every reading made after a change is found: a change is a warning, once
        (:data:`BUNDLE_DAMAGED`, :data:`BUNDLE_REPLACED`), and had been silent until a restart. The study is scored
        all the same, a damaged
        or removed bundle's too: its readings come from the model loaded and checked at start, whole in memory, and
        each report names that model, as ``serve`` answers on. No study waits longer than
        :data:`~pneumoscan.models.on_disk.BUNDLE_WAIT_S` for it: a check that has not answered by then is a warning
        once, :data:`BUNDLE_READING` while the files its stat found changed are being read, :data:`BUNDLE_SILENT`
        while the stat itself has not answered (a network drive that hangs). A fault of the check itself is an error
        line, once a fault (:data:`BUNDLE_CHECK_FAILED`, :meth:`BundleOnDisk.outcome`): it had refused the study, and
        every later one."""
        check = self.on_disk.checking()
        answer: BundleState | None | Exception
        try:
            answer = check.answer.result(timeout=check.remaining())
        except Exception as e:  # the wait ran out (TimeoutError), or the check raised: outcome tells them apart
            answer = e
        word = self.on_disk.outcome(check, answer)  # a fault of the check: an error line, once a fault
        if isinstance(answer, TimeoutError) and (self._said is None or self._said[0] is not check
                                                 or self._said[1] != word):
            self._said = (check, word)
            log.warning("%s", BUNDLE_READING.format(check.wait_s, self.named) if word is BundleState.READING
                        else BUNDLE_SILENT.format(check.wait_s))
        return word

    def file_study(self, study_uid: str, rows: list[dict], deadline: float) -> None:
        """Send a study's reports (:meth:`_send`, by ``deadline`` on the monotonic clock), log the films whose reports
        are not filed and how many are, and write its rows to ``out``."""
        self._send(study_uid, [row for row in rows if any(key in row for key in MADE)], deadline)
        missing = [(row, line) for row, line in unfiled(rows) if "withdrawn" not in row]  # said as withdrawn
        for row, line in missing:
            if not row.get("not_stored"):  # a report not made; one not stored has its line (:meth:`_send`)
                log.error("study %s: %s", study_uid, line)
        stored = sum(len(row.get("stored", [])) for row in rows)
        count = sum("probability" in row and "withdrawn" not in row for row in rows)
        log.info("study %s: reports of %d of %d films stored at %s (%d objects)", study_uid,
                 count - len(missing), count, self.destination, stored)
        if self.out is not None:
            try:
                write_json(self.out / f"{study_uid}.json", rows)
            except OSError as e:  # its reports are where they are: only the copy of its rows is missing
                log.error("study %s: its rows are not written to %s: %s", study_uid, self.out,
                          shown(e.strerror or type(e).__name__))

    def _send(self, study_uid: str, rows: list[dict], deadline: float) -> None:
        """C-STORE the reports write_reports made for ``rows`` to the destination, in one association a try, tried as
        :data:`ATTEMPTS` says while ``deadline`` is ahead; each row's ``stored`` and ``not_stored`` as it answered,
        each report not stored named in its row's warnings and in an error line (study and SOP Instance UID, and
        why). The reports of a film a rejection note withdrew before they are sent are not sent: its row's
        ``withdrawn`` says why (:meth:`_retract` set them aside in the spool)."""
        pending: dict[str, Dataset] = {}
        whats: dict[str, tuple[str, dict]] = {}
        spooled: dict[str, Path] = {}  # the reports the spool holds (not one it could not take), by UID

        def held_back(row: dict) -> str | None:
            return self.spool.withdrawal(study_uid, row.get("sop_instance_uid"))

        for row in rows:
            row["stored"] = []
            for key, what in MADE.items():
                if key not in row or held_back(row) is not None:
                    row.pop(key, None)
                    continue
                try:
                    ds = pydicom.dcmread(path := Path(row.pop(key)))
                except FileNotFoundError:  # set aside since by the film's rejection note (Spool.withdraw)
                    if held_back(row) is None:
                        raise
                    continue
                uid = str(ds.SOPInstanceUID)
                pending[uid], whats[uid] = ds, (what, row)
                if path.parent == self.spool.folder:
                    spooled[uid] = path
        why = dict.fromkeys(pending, f"not sent within {self.send_s:g} s of the study's scoring (--send-within): "
                                     "the destination is slow, or reports of other studies were ahead")
        self.spool.begin(spooled.values())  # before each is checked: a note that comes after leaves it to us
        try:
            self._send_tries(study_uid, pending, whats, spooled, why, deadline)
        finally:
            self.spool.end(spooled.values())
        for row in rows:
            if (withdrawn := held_back(row)) is not None:
                row["withdrawn"] = withdrawn
                add_warning(row, f"{withdrawn}: its reports are not sent")
        for uid, (what, row) in whats.items():
            if uid in row["stored"] or "withdrawn" in row:
                continue
            row.setdefault("not_stored", []).append(uid)
            add_warning(row, f"{self.destination}: {why[uid]}: the {what} {uid} is not stored")
            if uid in pending and uid in spooled:
                why[uid] += f"; kept in the spool, sent again every {self.retry_s:g} s"
            log.error("study %s: the %s %s is not stored at %s: %s", study_uid, what, uid, self.destination, why[uid])

    def _send_tries(self, study_uid: str, pending: dict[str, Dataset], whats: dict[str, tuple[str, dict]],
                    spooled: dict[str, Path], why: dict[str, str], deadline: float) -> None:
        """:meth:`_send`'s tries: ``pending`` stored as :data:`ATTEMPTS` says, those stored or refused for good taken
        out of it, ``why`` each other is not stored."""
        for attempt in range(1, ATTEMPTS + 1):
            for uid in [uid for uid in pending if self._report_withdrawal(study_uid, pending[uid]) is not None]:
                del pending[uid]
            if not pending or (left := deadline - time.monotonic()) <= 0:
                break
            for uid, answer in self._store(pending, min(self.store_s, left), deadline).items():
                what, row = whats[uid]
                if answer in _STORED:
                    row["stored"].append(uid)
                    self._check_stored(study_uid, pending.pop(uid))
                    self._audit_report(study_uid, uid, answer)
                    if uid in spooled:
                        self.spool.confirmed(spooled[uid])
                    if answer in WARNINGS:
                        add_warning(row, f"{self.destination} stored the {what} {uid} with a warning "
                                         f"({status_words(answer, WARNINGS)})")
                    continue
                if isinstance(answer, str):
                    why[uid] = f"no answer ({answer})"
                    continue
                why[uid] = f"refused ({status_words(answer, FAILURES)})"
                if answer >> 8 != 0xA7:  # not out of resources: another try would meet the same refusal
                    del pending[uid]
                    self._audit_report(study_uid, uid, answer)
                    if uid in spooled:
                        why[uid] += f"; set aside in {self.spool.refused}, not sent again"
                        self.spool.set_aside(spooled[uid])
            wait = FIRST_WAIT_S * 2 ** (attempt - 1)
            if not pending or attempt == ATTEMPTS or time.monotonic() + wait >= deadline:
                break
            log.warning("study %s: %d report(s) not stored at %s, try %d of %d; tried again in %g s", study_uid,
                        len(pending), self.destination, attempt, ATTEMPTS, wait)
            time.sleep(wait)

    def _report_withdrawal(self, study_uid: str, report: Dataset) -> str | None:
        """Why a rejection note withdrew a film the report names (:func:`references`), None when none did: what both
        senders check before a report is sent (:meth:`_send`, :meth:`_resend`) and after it is stored
        (:meth:`_check_stored`)."""
        films = sorted(references(report))
        return next((why for film in films if (why := self.spool.withdrawal(study_uid, film))), None)

    def _check_stored(self, study_uid: str, report: Dataset) -> None:
        """A report the destination stored: a warning when its film's rejection note came while it was being sent
        (the spool left it to the C-STORE: :meth:`Spool.begin`), as only IT can remove it from the PACS."""
        if (withdrawn := self._report_withdrawal(study_uid, report)) is not None:
            log.warning("study %s: the report %s is stored at %s, its film %s since: remove it there by hand",
                        study_uid, report.SOPInstanceUID, self.destination, withdrawn)

    def _audit_report(self, study_uid: str, uid: str, status: int) -> None:
        """The line of a report the destination answered for good: stored (a success or warning status), or refused
        (set aside, never sent again), with the status; what governance reads to know what reached the PACS."""
        self._audit({"event": "report_stored" if status in _STORED else "report_refused",
                     "study_instance_uid": study_uid, "report_sop_instance_uid": uid,
                     "destination": str(self.destination), "status": f"0x{status:04X}"})

    def _store(self, pending: dict[str, Dataset], timeout: float,
               deadline: float | None = None) -> dict[str, int | str]:
        """One association to the destination, each of ``pending`` sent over it: its C-STORE status, or why there
        was none (no association, the association aborted, no answer within ``timeout`` seconds a step, or by
        ``deadline`` on the monotonic clock, after which none is sent: a study's reports, each answered slowly, are
        given up at ``--send-within``, not a C-STORE's timeout past it for each)."""
        ae = AE(ae_title=self.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.connection_timeout = timeout
        # no idle timeout (pynetdicom's default is 60 s): this thread's waits for each answer are bounded above, and
        # the reactor that would act on it aborts the association under a C-STORE this thread, held up, has yet to send
        ae.network_timeout = None
        # one context per class and syntax: a study's reports share them, and an association takes at most 128
        for sop_class, syntax in {(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID) for ds in pending.values()}:
            ae.add_requested_context(sop_class, syntax)
        where = self.destination
        assoc = keep_answers(ae.associate(where.host, where.port, ae_title=where.ae_title))
        if not assoc.is_established:
            reason = ("the association was rejected: check that the destination knows this AE title and address"
                      if assoc.is_rejected else "no association: the destination is down or cannot be reached")
            return dict.fromkeys(pending, reason)
        answers: dict[str, int | str] = {}
        unsent = "the association ended"
        try:
            # a destination that stops reading mid-C-STORE: a send it does not take for ``timeout`` ends the
            # connection (the C-STORE unanswered), where pynetdicom's socket, blocking once connected, held this
            # thread and so every later report, and the abort that follows a C-STORE unanswered, for ever
            if (raw := getattr(assoc.dul.socket, "socket", None)) is not None:  # None: aborted by the destination
                with contextlib.suppress(OSError):  # closed by its abort since: the C-STORE finds the association ended
                    raw.settimeout(timeout)
            for message_id, (uid, ds) in enumerate(pending.items(), 1):  # each its own: keep_answers pairs them
                if deadline is not None:
                    if (left := deadline - time.monotonic()) <= 0:
                        unsent = "the time to send it ran out"
                        break
                    assoc.dimse_timeout = min(timeout, left)
                try:
                    status = assoc.send_c_store(ds, msg_id=message_id)
                except RuntimeError:  # the destination ended the association since the last C-STORE: none was sent
                    if assoc.is_established:
                        raise
                    break
                answers[uid] = int(status.Status) if "Status" in status else "no answer to the C-STORE"
                if not assoc.is_established:
                    break
        finally:
            if assoc.is_established:
                assoc.release()
        return {uid: answers.get(uid, unsent) for uid in pending}
