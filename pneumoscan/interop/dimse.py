"""``pneumoscan listen``: a DICOM listener (C-STORE SCP, and C-ECHO) for a PACS or modality that routes films over
DIMSE, not DICOMweb. It scores each study an association carried once the sender releases the association, as
``pacs`` scores a study read over DICOMweb (:mod:`.study`: the same rows, the same SRs), and sends each film's SR
(and its Grad-CAM Secondary Capture with heatmaps) to the destination AE with C-STORE.

What is refused, and where: a caller whose AE title is not allowed, or an association not addressed to this AE
title, at association (pynetdicom's own checks); an SOP class other than the radiograph and Secondary Capture image
classes, or a transfer syntax pneumoscan does not decode, at negotiation; an instance without a valid Study or SOP
Instance UID, with a C-STORE failure naming why. A film that cannot be decoded, or that is no frontal chest
radiograph, gets the row ``pacs`` gives it (an error, or ``not_scored``) and no report. A destination that refuses
or does not answer is tried :data:`ATTEMPTS` times; each report then not stored is an error line naming its study
and SOP Instance UID, with the status. An association aborted, by either side, leaves its films unscored: the
sender did not finish. The films are held in a private temporary folder, named by SOP Instance UID, and deleted once
their study is done; the log names instances by UID, never by patient.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import (DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ExplicitVRLittleEndian,
                         ImplicitVRLittleEndian, JPEG2000, JPEG2000Lossless, JPEGBaseline8Bit, JPEGExtended12Bit,
                         JPEGLossless, JPEGLosslessSV1, JPEGLSLossless, JPEGLSNearLossless, RLELossless)
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from pneumoscan.core.logs import redact
from pneumoscan.core.names import shown
from pneumoscan.data.readers.dicom import is_own_output, read_dataset
from pneumoscan.data.scope import CAPTURE_CLASSES, RADIOGRAPH_CLASSES

from .reports import check_reportable
from .study import (FAILURES, MADE, WARNINGS, not_scored, one_patient, score_films, status_words, study_rows, unfiled,
                    valid_uid)

log = logging.getLogger(__name__)
# the image classes a film may come in: the radiographs' (a For Processing image is accepted, and not scored, as
# `pacs` does) and Secondary Capture (scored when its Modality says CR or DX, as `pacs` decides)
IMAGE_CLASSES = sorted(RADIOGRAPH_CLASSES | CAPTURE_CLASSES)
# the transfer syntaxes pneumoscan decodes (docs/dicom.md, Transfer syntaxes); pynetdicom inflates a deflated one
SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian,
            JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1, JPEGLSLossless, JPEGLSNearLossless,
            JPEG2000Lossless, JPEG2000, RLELossless]
# a report not stored for want of an answer (no association, none to the C-STORE) or of the destination's resources
# (0xA7xx) is tried again, 3 times in all over ~3 s (FIRST_WAIT_S, then twice that); another refusal is not
ATTEMPTS, FIRST_WAIT_S = 3, 1.0
STORE_TIMEOUT_S = 30.0  # how long the destination may take to connect, accept, or answer one C-STORE
_REFUSED_INSTANCE = 0xC000  # "cannot understand": an instance that cannot be filed under a study
_STORED = (0x0000, *WARNINGS)


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


@dataclass
class _Association:
    """What one association brought: its folder, and its instances' rows by study and SOP Instance UID."""

    folder: Path
    calling: str
    studies: dict[str, dict[str, dict]] = field(default_factory=dict)


class Listener:
    """The C-STORE SCP of ``listen``: :meth:`start` it on an address; each study it is sent is scored once the
    association that carried it is released, one study at a time, and its reports sent to ``destination``.
    ``work``: the private folder each association's films are held in, a folder of their own, until their studies
    are done (the caller deletes it at the end, with what an association cut short by a stop left there).
    ``allow``: the calling AE titles accepted (none: any). ``backend`` and ``heatmaps`` as ``pacs`` takes them."""

    def __init__(self, bundle: Path | str, ae_title: str, destination: Destination, work: Path,
                 allow: Iterable[str] = (), backend: str = "onnx", heatmaps: bool = False) -> None:
        _check_title(ae_title, "ae_title (--ae-title)")
        for title in allow:
            _check_title(title, "allow (--allow)")
        check_reportable(bundle, dicom=True)  # the UID root and the bundle's task, before any film is taken
        self.bundle, self.ae_title, self.destination, self.work = bundle, ae_title.strip(), destination, work
        self.allow, self.backend, self.heatmaps = [t.strip() for t in allow], backend, heatmaps
        self._associations: dict[int, _Association] = {}
        self._lock = threading.Lock()  # the associations' table
        self._scoring = threading.Lock()  # one study scored at a time: a model's memory, not one per sender

    def start(self, host: str, port: int) -> ThreadedAssociationServer:
        """Listen on ``host``:``port`` (0: a free port, the server's ``server_address`` says which) in threads of
        its own; the caller shuts the returned server down."""
        ae = AE(ae_title=self.ae_title)
        ae.require_called_aet = True  # an association addressed to another AE title is rejected
        ae.require_calling_aet = self.allow
        for sop_class in IMAGE_CLASSES:
            ae.add_supported_context(sop_class, SYNTAXES)
        ae.add_supported_context(Verification)  # C-ECHO, answered by pynetdicom
        handlers = [(evt.EVT_C_STORE, self._stored), (evt.EVT_RELEASED, self._released),
                    (evt.EVT_ABORTED, self._aborted)]  # a connection dropped is an abort too (A-P-ABORT)
        server = ae.start_server((host, port), block=False, evt_handlers=handlers)
        bound = server.server_address
        log.info("listening as %s on %s:%d; reports go to %s%s", self.ae_title, bound[0], bound[1], self.destination,
                 f"; callers allowed: {', '.join(self.allow)}" if self.allow else "; any caller")
        return server

    def _entry(self, assoc: Association) -> _Association:
        """The association's record, made (with its private folder) at its first instance."""
        with self._lock:
            if id(assoc) not in self._associations:
                folder = Path(tempfile.mkdtemp(prefix="association-", dir=self.work))
                self._associations[id(assoc)] = _Association(folder, assoc.requestor.ae_title)
            return self._associations[id(assoc)]

    def _stored(self, event: evt.Event) -> int | Dataset:
        """One C-STORE: the instance kept, under its study, for when the association is released."""
        try:
            ds = event.dataset
        except Exception as e:  # pydicom raises whatever its parsing meets
            return _refusal(f"its data set cannot be read ({type(e).__name__})")
        study, series = str(ds.get("StudyInstanceUID", "")), str(ds.get("SeriesInstanceUID", ""))
        sop = str(event.request.AffectedSOPInstanceUID or "")
        for what, uid in (("StudyInstanceUID", study), ("SeriesInstanceUID", series), ("SOPInstanceUID", sop)):
            if not valid_uid(uid):  # never put in a file name; an instance without its study cannot be filed
                return _refusal(f"its {what} is missing or not a valid UID")
        if str(ds.get("SOPInstanceUID", "")) != sop:
            return _refusal("its SOPInstanceUID is not the one its C-STORE request names")
        received = self._entry(event.assoc)
        if any(sop in instances for other, instances in received.studies.items() if other != study):
            return _refusal("its SOPInstanceUID was sent under another study")
        path = received.folder / f"{sop}.dcm"
        path.write_bytes(event.encoded_dataset())
        row = {"path": sop, "study_instance_uid": study, "series_instance_uid": series, "sop_instance_uid": sop}
        received.studies.setdefault(study, {})[sop] = row
        return 0x0000

    def _aborted(self, event: evt.Event) -> None:
        """An association aborted by either side, or its connection dropped, before a release: what it brought is
        left unscored. (Not on the connection's close, which the network thread may report before the association's
        thread reports the release.)"""
        with self._lock:
            received = self._associations.pop(id(event.assoc), None)
        if received is None:
            return
        count = sum(len(instances) for instances in received.studies.values())
        log.warning("association from %s aborted: its %d instance(s) of %d study(ies) are not scored (%s); the sender "
                    "should send them again", shown(received.calling), count, len(received.studies),
                    ", ".join(received.studies))
        shutil.rmtree(received.folder, ignore_errors=True)

    def _released(self, event: evt.Event) -> None:
        """The sender is done: each study the association brought is scored, and its folder deleted."""
        with self._lock:
            received = self._associations.pop(id(event.assoc), None)
        if received is None:  # a C-ECHO, or no instance at all
            return
        try:
            with self._scoring:
                for study, instances in received.studies.items():
                    try:
                        self.score_study(study, instances, received.folder)
                    except Exception as e:  # one study's fault is that study's: the others, and the listener, go on
                        log.error("study %s: not scored: %s", study, shown(redact(str(e)) or type(e).__name__))
        finally:
            shutil.rmtree(received.folder, ignore_errors=True)

    def score_study(self, study_uid: str, instances: dict[str, dict], folder: Path) -> list[dict]:
        """Score one study's instances (their files in ``folder``, named by SOP Instance UID), send its reports and
        log what became of each film; the rows, as ``pacs`` gives them."""
        entries: list[dict | str] = []
        sources: dict[str, dict] = {}
        patients = {}
        for sop, row in instances.items():
            path = folder / f"{sop}.dcm"
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
        scored = score_films(self.bundle, sources, work, self.backend, self.heatmaps, store=True,
                             held=set(instances))
        for row in scored:
            self._send(study_uid, row)
        rows = study_rows(entries, sources, scored)
        for row in rows:
            if "not_scored" in row:
                log.info("study %s: not scored: %s: %s", study_uid, row["path"], row["not_scored"])
            elif "error" in row:
                log.warning("study %s: unreadable: %s: %s", study_uid, row["path"], shown(row["error"]))
        for row, line in unfiled(rows):
            if not row.get("not_stored"):  # a report not made; one not stored has its line (:meth:`_send`)
                log.error("study %s: %s", study_uid, line)
        stored = sum(len(row.get("stored", [])) for row in rows)
        count = sum("probability" in row for row in rows)
        log.info("study %s: %d scored, %d not scored, %d unreadable; reports of %d of %d films stored at %s (%d "
                 "objects)", study_uid, count, sum("not_scored" in row for row in rows),
                 sum("error" in row for row in rows), count - len(unfiled(rows)), count, self.destination, stored)
        return rows

    def _send(self, study_uid: str, row: dict) -> None:
        """C-STORE the reports write_reports made for ``row`` to the destination, tried as :data:`ATTEMPTS` says;
        ``stored`` and ``not_stored`` as it answered, each report not stored named in the row's warnings and in an
        error line (study and SOP Instance UID, and the status)."""
        pending: dict[str, Dataset] = {}
        whats: dict[str, str] = {}
        for key, what in MADE.items():
            if key in row:
                ds = pydicom.dcmread(row.pop(key))
                pending[str(ds.SOPInstanceUID)], whats[str(ds.SOPInstanceUID)] = ds, what
        if not pending:
            return
        row["stored"], why = [], {}
        for attempt in range(1, ATTEMPTS + 1):
            for uid, answer in self._store(pending).items():
                if answer in _STORED:
                    row["stored"].append(uid)
                    del pending[uid]
                    if answer in WARNINGS:
                        row.setdefault("warnings", []).append(
                            f"{self.destination} stored the {whats[uid]} {uid} with a warning "
                            f"({status_words(answer, WARNINGS)})")
                    continue
                if isinstance(answer, str):
                    why[uid] = f"no answer ({answer})"
                    continue
                why[uid] = f"refused ({status_words(answer, FAILURES)})"
                if answer >> 8 != 0xA7:  # not out of resources: another try would meet the same refusal
                    del pending[uid]
            if not pending:
                break
            if attempt < ATTEMPTS:
                wait = FIRST_WAIT_S * 2 ** (attempt - 1)
                log.warning("study %s: %d report(s) not stored at %s, try %d of %d; tried again in %g s", study_uid,
                            len(pending), self.destination, attempt, ATTEMPTS, wait)
                time.sleep(wait)
        for uid, what in whats.items():
            if uid in row["stored"]:
                continue
            row.setdefault("not_stored", []).append(uid)
            row.setdefault("warnings", []).append(f"{self.destination}: {why[uid]}: the {what} {uid} is not stored")
            log.error("study %s: the %s %s is not stored at %s: %s", study_uid, what, uid, self.destination, why[uid])

    def _store(self, pending: dict[str, Dataset]) -> dict[str, int | str]:
        """One association to the destination, each of ``pending`` sent over it: its C-STORE status, or why there
        was none (no association, the association aborted, no answer within :data:`STORE_TIMEOUT_S`)."""
        ae = AE(ae_title=self.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = STORE_TIMEOUT_S
        for ds in pending.values():
            ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        where = self.destination
        assoc = ae.associate(where.host, where.port, ae_title=where.ae_title)
        if not assoc.is_established:
            reason = ("the association was rejected: check that the destination knows this AE title and address"
                      if assoc.is_rejected else "no association: the destination is down or cannot be reached")
            return dict.fromkeys(pending, reason)
        answers: dict[str, int | str] = {}
        try:
            for uid, ds in pending.items():
                status = assoc.send_c_store(ds)
                answers[uid] = int(status.Status) if "Status" in status else "no answer to the C-STORE"
                if not assoc.is_established:
                    break
        finally:
            if assoc.is_established:
                assoc.release()
        return {uid: answers.get(uid, "the association ended") for uid in pending}


def _refusal(why: str) -> Dataset:
    """A C-STORE failure that says ``why`` to the sender (and to the log)."""
    log.warning("C-STORE refused: %s", why)
    answer = Dataset()
    answer.Status, answer.ErrorComment = _REFUSED_INSTANCE, why[:64]
    return answer
