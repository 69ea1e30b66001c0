"""``pneumoscan listen``, the DICOM listener, with real components: films sent by a pynetdicom SCU, the listener on a
free port, and a pynetdicom C-STORE SCP as the destination its reports go to."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import re
import shutil
import signal
import socketserver
import stat
import socket
import subprocess
import sys
import tempfile
import queue
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from functools import partialmethod
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import (ComprehensiveSRStorage, CTImageStorage, DeflatedExplicitVRLittleEndian,
                         DigitalXRayImageStorageForPresentation, EncapsulatedPDFStorage, ExplicitVRLittleEndian,
                         GrayscaleSoftcopyPresentationStateStorage, KeyObjectSelectionDocumentStorage,
                         SecondaryCaptureImageStorage, generate_uid)
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from pneumoscan import cli
from pneumoscan.data.decode import read_gray
from pneumoscan.inference.predict import Stages, predict_paths
from pneumoscan.interop import dimse
from pneumoscan.interop.dimse import MB, AuditLog, Destination, Listener, Room, keep_answers
from pneumoscan.interop.reports import SR_SUFFIX, write_reports
from pneumoscan.interop.sr import report_files
from pneumoscan.models import on_disk
from pneumoscan.models.card import WEIGHTS, load_card, save_card
from pneumoscan.data import pixels
from tests.builders import SCORE_TOL, ClockAhead, ClockRead, at_threshold, htj2k_frame
from tests.test_dicom_codecs import HTJ2K_FILMS
from tests.test_dicom_faults import encapsulated
from tests.test_integrity import copy_bundle, data_start, flip_one_bit
from tests.test_interop import NAME, PATIENT_ID, chest_dicom, key_object_selection, running_orthanc

WAIT_S = 60.0  # the longest a study's scoring and sending may take here


@pytest.fixture(autouse=True)
def prompt_shutdown(monkeypatch: pytest.MonkeyPatch) -> None:
    """pynetdicom's servers (the listener's, the destination's) look for a shutdown between waits of 0.5 s for a
    connection (socketserver's default): 11 s of idle stops in this module, where 0.05 s keeps each stop prompt."""
    monkeypatch.setattr(ThreadedAssociationServer, "serve_forever",
                        partialmethod(socketserver.BaseServer.serve_forever, poll_interval=0.05))


@pytest.fixture(scope="module")
def film(data_root: Path) -> np.ndarray:
    """A real training film (224 x 224) as 12-bit values."""
    return read_gray(sorted((data_root / "train" / "PNEUMONIA").glob("*.jpeg"))[0]).astype(np.uint16) * 16


class Destination_SCP:
    """A C-STORE SCP that keeps what it is sent, answering each with ``status``; one that ``hangs`` accepts the
    association and answers no C-STORE until it is shut down, and one ``answer_after`` s each; ``idle_s``: it aborts
    an association idle that long;
    one that ``stalls`` stops reading at a C-STORE's first data set fragment (its socket's buffer small) until it is
    shut down."""

    def __init__(self, status: int = 0x0000, hangs: bool = False, port: int = 0, idle_s: float | None = 60,
                 stalls: bool = False, answer_after: float = 0.0) -> None:
        self.received: list[Dataset] = []
        self.hangs, self.closing, self.answer_after = hangs, threading.Event(), answer_after
        self.contexts: list[int] = []  # the contexts accepted in the association of each C-STORE
        ae = AE(ae_title="DEST")
        ae.network_timeout = idle_s
        for sop_class in (ComprehensiveSRStorage, SecondaryCaptureImageStorage):
            ae.add_supported_context(sop_class, ExplicitVRLittleEndian)
        handlers = [(evt.EVT_C_STORE, self._store)]
        if stalls:  # its reading thread held in the handler of a P-DATA (0x04) PDU
            handlers.append((evt.EVT_DATA_RECV, lambda event: event.data[:1] == b"\x04" and self.closing.wait(30)))
        self.server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers)
        if stalls:  # its connections' too: what it does not read fills the sender's buffer sooner
            self.server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.port = self.server.server_address[1]
        self.status = status

    def shutdown(self) -> None:
        self.closing.set()
        self.server.shutdown()

    def _store(self, event: evt.Event) -> int:
        self.contexts.append(len(event.assoc.accepted_contexts))
        if self.hangs:
            self.closing.wait(30)
        self.closing.wait(self.answer_after)
        ds = event.dataset
        ds.file_meta = event.file_meta
        self.received.append(ds)
        return self.status


@pytest.fixture
def destination() -> Iterator[Destination_SCP]:
    scp = Destination_SCP()
    yield scp
    scp.shutdown()


@pytest.fixture
def listen(tiny_bundle: Path, tmp_path: Path) -> Iterator[Callable[..., int]]:
    """Start a listener on a free port (its keyword arguments as Listener takes them), its port returned; the films
    it held are checked to be gone once it is done, and each listener is stopped, its sending thread ended (left
    running, each would try its spool every --retry-every until the worker ends)."""
    started: list[tuple[ThreadedAssociationServer, Listener]] = []
    (work := tmp_path / "listener").mkdir()
    before = set(threading.enumerate())

    def start(port: int, **options: object) -> int:
        listener = Listener(tiny_bundle, "PNEUMOSCAN", Destination("DEST", "127.0.0.1", port), work,
                            backend="torch", **options)
        started.append((server := listener.start("127.0.0.1", 0), listener))
        return server.server_address[1]

    yield start
    for server, _ in started:
        server.shutdown()
    wait_for(lambda: not list(work.glob("association-*")))  # each one's folder deleted once its studies were done
    for _, listener in started:
        listener.stop()
    assert senders_ended(before, WAIT_S)


def senders_ended(before: set[threading.Thread], timeout: float) -> bool:
    """Whether the listeners' sending threads started since ``before`` have ended, given ``timeout`` s each to."""
    for thread in [t for t in threading.enumerate() if t not in before and t.name == "listen-sender"]:
        thread.join(timeout)
    return not any(t.is_alive() for t in threading.enumerate() if t not in before and t.name == "listen-sender")


def send(port: int, films: list[bytes], calling: str = "MODALITY") -> list[int]:
    """C-STORE ``films`` in one association, released; each one's status."""
    return [int(answer.Status) for answer in send_answers(port, films, calling)]


def associate(ae: AE, port: int, called: str = "PNEUMOSCAN") -> Association:
    """``ae``'s association with the listener on ``port``, its answers kept from pynetdicom's reactor
    (:func:`~pneumoscan.interop.dimse.keep_answers`), as the listener's own are."""
    return keep_answers(ae.associate("127.0.0.1", port, ae_title=called))


def send_answers(port: int, films: list[bytes], calling: str = "MODALITY") -> list[Dataset]:
    """C-STORE ``films`` in one association, released; each one's answer."""
    datasets = [pydicom.dcmread(io.BytesIO(data)) for data in films]
    ae = AE(ae_title=calling)
    for sop_class in {str(ds.SOPClassUID) for ds in datasets}:
        ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    assoc = associate(ae, port)
    assert assoc.is_established
    answers = [assoc.send_c_store(ds) for ds in datasets]
    assoc.release()
    return answers


def wait_for(done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not done():
        assert time.monotonic() < deadline, "the listener did not finish in time"
        time.sleep(0.01)


def spool_tries(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    """Count the tries of the spool (:meth:`Listener._resend`) the test's listeners finish; the function returned
    waits for ``n`` more tries than had finished when it was called, two making sure one began after that: a test
    waits for its tries to happen, not for a time in which a loaded machine may make none (the sending thread sets
    the next try only once the last has ended)."""
    finished = [0]
    resend = Listener._resend

    def counted(self: Listener) -> None:
        try:
            resend(self)
        finally:
            finished[0] += 1

    monkeypatch.setattr(Listener, "_resend", counted)

    def more(n: int) -> None:
        start = finished[0]
        wait_for(lambda: finished[0] >= start + n)

    return more


def test_studies_sent_in_one_association_get_the_srs_pacs_builds_and_faults_get_its_rows(
    listen: Callable[..., int], destination: Destination_SCP, tiny_bundle: Path, film: np.ndarray, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Three studies in one association: a DX film, a lateral film (by its orientation alone) and a scanned form
    (Secondary Capture, Modality OT) in one, a film that cannot be decoded (two frames) in another, two patients'
    films in the third. The film's SR reaches the destination, the same SR (UIDs, finding, references) that predict
    --dicom-sr and pacs --store build of it; the lateral film is scored and gets no report, the form is not scored,
    the two-frame film is unreadable and the study of two patients is refused, each logged with its study and UIDs,
    as pacs says them; no patient name or id is logged."""
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="pneumoscan")
    study, other, shared = generate_uid(), generate_uid(), generate_uid()
    films = {"film": chest_dicom(film, StudyInstanceUID=study, SOPClassUID=DigitalXRayImageStorageForPresentation),
             "lateral": chest_dicom(film, StudyInstanceUID=study, ViewPosition=None, PatientOrientation=["A", "F"]),
             "form": chest_dicom(film, StudyInstanceUID=study, Modality="OT"),
             "frames": chest_dicom(np.stack([film, film]), StudyInstanceUID=other, NumberOfFrames=2),
             "first": chest_dicom(film, StudyInstanceUID=shared),
             "second": chest_dicom(film, StudyInstanceUID=shared, PatientID="ANOTHER-1")}
    port = listen(destination.port)
    assert send(port, list(films.values())) == [0] * 6
    wait_for(lambda: sum("reports of" in r.getMessage() or "belong to 2 patients" in r.getMessage()
                         for r in caplog.records) == 3)
    [sr] = destination.received
    # what predict --dicom-sr (and pacs --store, through the same score_films) builds of the same film
    (tmp_path / "film.dcm").write_bytes(films["film"])
    rows = predict_paths(tiny_bundle, [tmp_path / "film.dcm"], backend="torch")
    write_reports(rows, tiny_bundle, sr_dir=tmp_path / "sr", backend="torch")
    expected = pydicom.dcmread(rows[0]["dicom_sr"])
    for keyword in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "SOPClassUID", "PatientID"):
        assert sr[keyword].value == expected[keyword].value
    assert sr.CurrentRequestedProcedureEvidenceSequence[0].to_json_dict() == \
        expected.CurrentRequestedProcedureEvidenceSequence[0].to_json_dict()
    assert _finding(sr) == _finding(expected)
    assert abs(_probability(sr) - _probability(expected)) <= SCORE_TOL
    log = caplog.text
    uid = {name: str(pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID) for name, data in films.items()}
    assert f"study {study}: not scored: {uid['form']}: Modality OT" in log
    assert f"study {study}: no report filed for {uid['lateral']}: no DICOM SR written: not a frontal chest radiograph" \
        in log
    assert f"study {other}: unreadable: {uid['frames']}: multi-frame DICOM (2 frames)" in log
    assert f"study {study}: 2 scored, 1 not scored, 0 unreadable; 1 report(s) to send to DEST@" in log
    assert f"study {study}: reports of 1 of 2 films stored at DEST@" in log
    assert f"study {other}: 0 scored, 0 not scored, 1 unreadable" in log
    assert f"study {shared}: not scored: the study's instances belong to 2 patients" in log
    for secret in (NAME, "Doe", PATIENT_ID):
        assert secret not in log


def test_a_pacs_routes_a_study_to_the_listener_and_gets_its_sr_back_over_dicom(
    tiny_bundle: Path, film: np.ndarray, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The hospital's flow with a real PACS: Orthanc knows the listener as a modality (REST /modalities), sends it a
    film it holds (C-STORE, Orthanc's AE title the one allowed), and the listener stores the film's SR in Orthanc's
    DICOM port, where it is found under the film's study, referencing the film."""
    caplog.set_level(logging.INFO, logger="pneumoscan")
    with running_orthanc(tmp_path / "orthanc") as url:
        system = httpx.get(f"{url}/system", timeout=10).json()
        destination = Destination(system["DicomAet"], "127.0.0.1", system["DicomPort"])
        (work := tmp_path / "listener").mkdir()
        listener = Listener(tiny_bundle, "PNEUMOSCAN", destination, work, allow=[system["DicomAet"]],
                            backend="torch")
        server = listener.start("127.0.0.1", 0)
        try:
            modality = {"AET": "PNEUMOSCAN", "Host": "127.0.0.1", "Port": server.server_address[1]}
            assert httpx.put(f"{url}/modalities/PNEUMOSCAN", json=modality, timeout=10).status_code == 200
            data = chest_dicom(film)
            sent = pydicom.dcmread(io.BytesIO(data))
            orthanc_id = httpx.post(f"{url}/instances", content=data, timeout=30).json()["ID"]
            answer = httpx.post(f"{url}/modalities/PNEUMOSCAN/store", json={"Resources": [orthanc_id]}, timeout=30)
            assert answer.status_code == 200, answer.text
            wait_for(lambda: "reports of" in caplog.text)
            found = httpx.post(f"{url}/tools/find", timeout=10, json={
                "Level": "Instance", "Query": {"StudyInstanceUID": sent.StudyInstanceUID, "Modality": "SR"}}).json()
            [sr_id] = found
            sr = pydicom.dcmread(io.BytesIO(httpx.get(f"{url}/instances/{sr_id}/file", timeout=10).content))
        finally:
            server.shutdown()
            listener.stop()
    assert f"study {sent.StudyInstanceUID}: reports of 1 of 1 films stored at {destination}" in caplog.text
    [evidence] = sr.CurrentRequestedProcedureEvidenceSequence
    [referenced] = evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence
    assert referenced.ReferencedSOPInstanceUID == sent.SOPInstanceUID
    assert sr.StudyInstanceUID == sent.StudyInstanceUID


def _finding(sr: Dataset) -> list[tuple[str, str]]:
    """The coded items of an SR's content tree: its finding, in codes."""
    found = []

    def walk(items: list[Dataset]) -> None:
        for item in items:
            if item.ValueType == "CODE":
                found.append((item.ConceptNameCodeSequence[0].CodeValue, item.ConceptCodeSequence[0].CodeValue))
            walk(item.get("ContentSequence", []))

    walk(sr.ContentSequence)
    return found


def _probability(sr: Dataset) -> float:
    """The SR's first numeric measurement: the probability."""
    def walk(items: list[Dataset]) -> Iterator[float]:
        for item in items:
            if item.ValueType == "NUM":
                yield float(item.MeasuredValueSequence[0].NumericValue)
            yield from walk(item.get("ContentSequence", []))

    return next(walk(sr.ContentSequence))


def test_a_caller_not_allowed_is_rejected_and_a_class_not_handled_is_refused_at_negotiation(
    listen: Callable[..., int], destination: Destination_SCP, caplog: pytest.LogCaptureFixture
) -> None:
    """--allow: another calling AE title is rejected at association; an allowed one is answered C-ECHO, and a CT
    image's presentation context is refused while a DX film's, and an SR's (set aside), are accepted. Each rejection
    is a warning naming the caller's AE title and address and why, where IT looks when a modality cannot connect."""
    caplog.set_level(logging.INFO, logger="pneumoscan")
    port = listen(destination.port, allow=["MODALITY"])
    ae = AE(ae_title="INTRUDER")
    ae.add_requested_context(Verification)
    assoc = associate(ae, port)
    assert assoc.is_rejected
    ae = AE(ae_title="MODALITY")
    for sop_class in (Verification, CTImageStorage, DigitalXRayImageStorageForPresentation, ComprehensiveSRStorage):
        ae.add_requested_context(sop_class)
    assoc = associate(ae, port)
    assert assoc.is_established
    assert int(assoc.send_c_echo().Status) == 0
    accepted = {str(c.abstract_syntax) for c in assoc.accepted_contexts}
    assert accepted == {Verification, DigitalXRayImageStorageForPresentation, ComprehensiveSRStorage}
    assoc.release()
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(Verification)
    assert associate(ae, port, "ANOTHER").is_rejected  # addressed to another AE title
    def rejected() -> list[str]:  # logged by the listener's thread once its rejection is sent
        return [re.sub(r":\d+ ", ":PORT ", r.getMessage()) for r in caplog.records
                if r.levelno == logging.WARNING and "rejected" in r.getMessage()]

    wait_for(lambda: len(rejected()) >= 2)
    assert rejected() == [
        "association from 'INTRUDER' at 127.0.0.1:PORT rejected: its calling AE title is not one of --allow (MODALITY)",
        "association from 'MODALITY' at 127.0.0.1:PORT rejected: it is addressed to the AE title 'ANOTHER', not this "
        "listener's 'PNEUMOSCAN'"]


def test_htj2k_films_are_accepted_at_negotiation_and_scored(
    listen: Callable[..., int], destination: Destination_SCP, tiny_bundle: Path, film: np.ndarray, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A modality or PACS that sends High-Throughput JPEG 2000 (its three syntaxes, films made by OpenJPH) has its
    presentation contexts accepted and each film scored, in a study of its own: the SR of a lossless one has the
    probability predict gives the uncompressed film."""
    caplog.set_level(logging.INFO, logger="pneumoscan")
    (tmp_path / "plain.dcm").write_bytes(chest_dicom(film))
    [row] = predict_paths(tiny_bundle, [tmp_path / "plain.dcm"], backend="torch")
    films = {syntax: pydicom.dcmread(io.BytesIO(encapsulated(chest_dicom(film), [htj2k_frame(film, 12, *options)],
                                                             syntax)))
             for syntax, options in HTJ2K_FILMS.items()}  # fmt: skip
    port = listen(destination.port)
    ae = AE(ae_title="MODALITY")
    for syntax, ds in films.items():
        ae.add_requested_context(ds.SOPClassUID, syntax)
    assoc = associate(ae, port)
    assert assoc.is_established
    assert sorted(str(context.transfer_syntax[0]) for context in assoc.accepted_contexts) == sorted(films)
    assert [int(assoc.send_c_store(ds).Status) for ds in films.values()] == [0, 0, 0]
    assoc.release()
    # the listener says a study's reports are stored once the destination's answer is back, after it has them
    wait_for(lambda: all(f"study {ds.StudyInstanceUID}: reports of " in caplog.text for ds in films.values()))
    assert len(destination.received) == 3
    srs = {sr.StudyInstanceUID: sr for sr in destination.received}
    for syntax, ds in films.items():
        assert f"study {ds.StudyInstanceUID}: reports of 1 of 1 films stored" in caplog.text
        if syntax.name.endswith("(Lossless Only)"):
            assert abs(_probability(srs[ds.StudyInstanceUID]) - row["probability"]) <= SCORE_TOL, syntax.name


def test_listen_refuses_a_destination_or_ae_title_it_cannot_use_before_listening(
    tiny_bundle: Path, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    (tmp_path / "a-file").touch()  # --fhir's folder: a file there is refused, as --out's is
    for args, said in ((["--store-to", "PACS@pacs.example"], "is not AET@HOST:PORT"),
                       (["--store-to", "PACS@pacs.example:104", "--ae-title", "A_TITLE_OF_17_CHR"], "not an AE title"),
                       (["--store-to", "PACS@pacs.example:104", "--allow", "ok,back\\slash"], "not an AE title"),
                       (["--store-to", "PACS@pacs.example:104", "--fhir", str(tmp_path / "a-file")],
                        "a-file: not a directory")):
        assert cli.main(["listen", str(tiny_bundle), "--port", "0", *args]) == 2
        assert said in capsys.readouterr().err


def test_an_association_aborted_leaves_its_films_unscored_and_gone(
    listen: Callable[..., int], destination: Destination_SCP, film: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    """The sender aborts after a film: the film is not scored (the sender did not finish), a warning names its study,
    and its folder is deleted (the fixture checks)."""
    caplog.set_level(logging.INFO, logger="pneumoscan")
    port = listen(destination.port)
    study = generate_uid()
    ds = pydicom.dcmread(io.BytesIO(chest_dicom(film, StudyInstanceUID=study)))
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ds.SOPClassUID, ExplicitVRLittleEndian)
    assoc = associate(ae, port)
    assert int(assoc.send_c_store(ds).Status) == 0
    assoc.abort()
    wait_for(lambda: "aborted" in caplog.text)
    assert re.search(rf"association from 'MODALITY' at 127\.0\.0\.1:\d+ aborted by the sender, or its connection "
                     rf"dropped: its 1 instance\(s\) of 1 study\(ies\) are not scored \({study}\); the sender should "
                     "send them again", caplog.text), caplog.text
    assert destination.received == [] and "reports of" not in caplog.text
    del ds.StudyInstanceUID  # an association whose one film was refused (0xC000), aborted: nothing lost, nothing said
    assoc = associate(ae, port)
    assert int(assoc.send_c_store(ds).Status) == 0xC000
    assoc.abort()  # its folder deleted too: the fixture checks
    assert len([r for r in caplog.records if "aborted by the sender" in r.getMessage()]) == 1


def _send_part(assoc: object, ds: Dataset, fragments: int) -> None:
    """The C-STORE of ``ds`` begun and left unfinished: its command and the first ``fragments`` P-DATA of its data
    set, as pynetdicom's send_c_store makes them, and no more (a sender that dies, or aborts, mid-film)."""
    request = C_STORE()
    request.MessageID, request.Priority = 1, 2
    request.AffectedSOPClassUID, request.AffectedSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    request.DataSet = io.BytesIO(encode(ds, False, True))
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    [context] = assoc.accepted_contexts
    for i, primitive in enumerate(message.encode_msg(context.context_id, assoc.acceptor.maximum_length)):
        if i > fragments:  # the command's P-DATA first
            return
        assoc.dul.send_pdu(primitive)


@pytest.mark.parametrize("gone", [False, True], ids=["pynetdicom", "its-file-name-gone"])
def test_a_sender_that_aborts_mid_film_leaves_no_file_and_the_listener_serves_the_next_association(
    listen: Callable[..., int], destination: Destination_SCP, film: np.ndarray, tmp_path: Path,
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, gone: bool,
) -> None:
    """A sender that stores a film, then aborts (A-ABORT) while the next film's data set arrives: a warning names the
    caller, the film cut short and the study left unscored, an audit line says the same, pynetdicom's temporary file
    of the film is deleted, and the listener takes the next association's films: one past --max-film-mb cut short
    there, a film that fits scored. Without the private attribute of pynetdicom's that names that file (a later
    pynetdicom may drop it), a warning at start says such files are left, each abort's warning says where, and the
    bounds hold as before: they count the PDUs, not that file."""
    caplog.set_level(logging.INFO, logger="pneumoscan")
    if gone:
        monkeypatch.setattr(dimse, "_PARTIAL_FILE", "_no_such_attribute")
    monkeypatch.setattr(tempfile, "tempdir", str(temp := tmp_path / "tmp"))  # where pynetdicom writes each film
    temp.mkdir()
    audit = AuditLog(tmp_path / "audit.jsonl")
    port = listen(destination.port, room=Room(film_mb=0.25), audit=audit)
    study, later = generate_uid(), generate_uid()
    kept, cut = (pydicom.dcmread(io.BytesIO(chest_dicom(film, StudyInstanceUID=study))) for _ in range(2))
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(kept.SOPClassUID, ExplicitVRLittleEndian)
    assoc = associate(ae, port)
    assert int(assoc.send_c_store(kept).Status) == 0
    _send_part(assoc, cut, 3)
    wait_for(lambda: any(path.stat().st_size > 2 * 16384 for path in temp.glob("*.dcm")))  # 3 of 7 PDUs written
    assoc.abort()
    wait_for(lambda: "aborted by the sender" in caplog.text)
    big = chest_dicom(np.tile(film, (3, 3)), StudyInstanceUID=later)  # 0.29 MB, over --max-film-mb 0.25
    answers = send_answers(port, [big])
    assert "Status" not in answers[0]  # no answer: the association aborted
    assert send(port, [chest_dicom(film, StudyInstanceUID=later)]) == [0]
    wait_for(lambda: f"study {later}: reports of 1 of 1 films stored" in caplog.text)
    [warning] = [r.getMessage() for r in caplog.records if "aborted by the sender" in r.getMessage()]
    file = f"its temporary file left in {temp}" if gone else "its temporary file deleted"
    assert re.fullmatch(rf"association from 'MODALITY' at 127\.0\.0\.1:\d+ aborted by the sender, or its connection "
                        rf"dropped: the film arriving is cut short after 0\.0\d MB, {file}; its 1 instance\(s\) of 1 "
                        rf"study\(ies\) are not scored \({study}\); the sender should send them again", warning), \
        warning
    assert "aborted: film of 0.2" in caplog.text  # the bound held
    started = [r.getMessage() for r in caplog.records if "does not say which temporary file" in r.getMessage()]
    assert len(started) == gone
    assert len(list(temp.glob("*.dcm"))) == (2 if gone else 0)  # each film cut short; none is left otherwise
    aborted = [line for line in audit_lines(audit) if line["event"] == "association_aborted"]
    assert [(a["calling_ae"], a["by"], a["film_cut_short"], a["studies_not_scored"]) for a in aborted] == [
        ("MODALITY", "sender", True, [study]), ("MODALITY", "listener", True, [])]
    assert aborted[1]["reason"].startswith("film of 0.2") and aborted[0]["reason"] is None
    [sr] = destination.received
    assert sr.StudyInstanceUID == later


@pytest.mark.parametrize("down", [True, False], ids=["down", "refusing"])
def test_a_destination_down_or_refusing_is_an_error_line_per_report_never_dropped(
    listen: Callable[..., int], film: np.ndarray, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, down: bool,
) -> None:
    """A destination that does not answer is tried 3 times, and the report kept in the spool; one that refuses the
    SR (0xA900) is not tried again, and the report set aside in the spool's refused/ (tried for ever, it would be
    refused for ever): either way an error line names the study, the SR's SOP Instance UID and the reason, and the
    study's line counts its report not stored."""
    monkeypatch.setattr(dimse, "FIRST_WAIT_S", 0.01)
    caplog.set_level(logging.INFO, logger="pneumoscan")
    refusing = Destination_SCP(status=0xA900)
    try:
        if down:
            refusing.shutdown()  # its port, now with no one listening
        port = listen(refusing.port, spool=(spool := tmp_path / "spool"))
        study = generate_uid()
        assert send(port, [chest_dicom(film, StudyInstanceUID=study)]) == [0]
        wait_for(lambda: "reports of" in caplog.text)
    finally:
        if not down:
            refusing.shutdown()
    [error] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and r.name == dimse.log.name]
    assert error.startswith(f"study {study}: the DICOM SR 1.")
    reason = "no answer (no association: the destination is down or cannot be reached); kept in the spool, sent " \
        "again every 60 s" if down else \
        f"refused (0xA900: data set does not match SOP class); set aside in {spool / 'refused'}, not sent again"
    assert error.endswith(f"is not stored at DEST@127.0.0.1:{refusing.port}: {reason}")
    uid = error.split()[5]
    assert [p.name for p in spool.glob("*.dcm")] == ([f"{study}_{uid}.dcm"] if down else [])
    assert [p.name for p in (spool / "refused").iterdir()] == ([] if down else [f"{study}_{uid}.dcm"])
    tries = [r for r in caplog.records if "report(s) not stored at" in r.getMessage()]
    assert len(tries) == (2 if down else 0)
    assert f"study {study}: reports of 0 of 1 films stored" in caplog.text
    assert len(refusing.received) == (0 if down else 1)


def test_a_report_spooled_while_the_destination_is_down_arrives_once_when_it_is_back(
    listen: Callable[..., int], film: np.ndarray, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A destination down past --send-within: the report stays in the spool, tried every --retry-every; the
    destination back on its port, it receives the report once, the spool is emptied, and later tries send nothing
    (a confirmed report is never sent again). The study's rows in --out, which said the report not stored, are
    rewritten to say it is stored, and why it came late."""
    monkeypatch.setattr(dimse, "FIRST_WAIT_S", 0.01)
    tries = spool_tries(monkeypatch)
    caplog.set_level(logging.INFO, logger="pneumoscan")
    down = Destination_SCP()
    down.shutdown()  # its port, with no one listening for now
    audit = AuditLog(tmp_path / "audit.jsonl")
    (out := tmp_path / "rows").mkdir()
    port = listen(down.port, spool=(spool := tmp_path / "spool"), send_s=0.5, retry_s=0.05, audit=audit, out=out)
    study = generate_uid()
    assert send(port, [chest_dicom(film, StudyInstanceUID=study)]) == [0]
    wait_for(lambda: f"study {study}: reports of 0 of 1 films stored" in caplog.text)
    wait_for((rows := out / f"{study}.json").is_file)
    [row] = json.loads(rows.read_text())
    assert "stored" not in row or row["stored"] == []
    [unsent] = row["not_stored"]
    wait_for(lambda: "1 spooled report(s) not stored at" in caplog.text)
    [kept] = spool.glob("*.dcm")
    back = Destination_SCP(port=down.port)
    try:
        wait_for(lambda: "spooled, is stored at" in caplog.text)
        tries(3)  # at least two more tries of the spool after the one that stored it
    finally:
        back.shutdown()
    [sr] = back.received
    assert f"{sr.StudyInstanceUID}_{sr.SOPInstanceUID}.dcm" == kept.name and sr.StudyInstanceUID == study
    assert list(spool.glob("*.dcm")) == [] and list((spool / "refused").iterdir()) == []
    assert [(line["event"], line.get("report_sop_instance_uid"), line.get("status")) for line in audit_lines(audit)] \
        == [("film_read", None, None), ("report_stored", sr.SOPInstanceUID, "0x0000")]
    [row] = json.loads(rows.read_text())
    assert unsent == sr.SOPInstanceUID and row["stored"] == [unsent] and "not_stored" not in row
    assert [w for w in row["warnings"] if unsent in w] == [
        f"DEST@127.0.0.1:{down.port}: no answer (no association: the destination is down or cannot be reached): the "
        f"DICOM SR {unsent} was not stored when its study was sent; sent again from the spool, it is stored"]


def test_a_spooled_report_refused_when_sent_again_is_said_refused_for_good_in_its_row(
    tiny_bundle: Path, film: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A report not stored when its study was sent (the destination down) is kept in the spool; sent again from
    there, the destination back refuses it outright (0xA900), and it is set aside in refused/: the study's row in
    --out says so, with the destination's reason, in place of the first reason (no answer), which would have told IT
    the report was still waiting to be sent."""
    monkeypatch.setattr(dimse, "FIRST_WAIT_S", 0.01)
    down = Destination_SCP()
    down.shutdown()  # its port, with no one listening for now
    (out := tmp_path / "rows").mkdir()
    listener = Listener(tiny_bundle, "PNEUMOSCAN", Destination("DEST", "127.0.0.1", down.port), tmp_path / "work",
                        backend="torch", out=out, spool=(spool := tmp_path / "spool"))
    report = pydicom.dcmread(io.BytesIO(chest_dicom(film[:8, :8])))  # any data set the destination takes as an SR
    report.SOPClassUID = report.file_meta.MediaStorageSOPClassUID = ComprehensiveSRStorage
    report.save_as(made := tmp_path / "made.sr.dcm")
    study, uid = str(report.StudyInstanceUID), str(report.SOPInstanceUID)
    row = {"path": "film", "probability": 0.5, "dicom_sr": str(listener.spool.keep(study, made))}
    listener.file_study(study, [row], time.monotonic() + WAIT_S)
    [first] = json.loads((out / f"{study}.json").read_text())
    assert first["not_stored"] == [uid] and first["warnings"][0].startswith(f"DEST@127.0.0.1:{down.port}: no answer")
    refusing = Destination_SCP(status=0xA900, port=down.port)
    try:
        listener._resend()  # what the sending thread does every --retry-every
    finally:
        refusing.shutdown()
    assert [p.name for p in (spool / "refused").iterdir()] == [f"{study}_{uid}.dcm"]
    [row] = json.loads((out / f"{study}.json").read_text())
    assert row["not_stored"] == [uid] and row["stored"] == []
    assert row["warnings"] == [
        f"DEST@127.0.0.1:{down.port}: no answer (no association: the destination is down or cannot be reached): the "
        f"DICOM SR {uid} was not stored when its study was sent; sent again from the spool, DEST@127.0.0.1:{down.port} "
        f"refused it (0xA900: data set does not match SOP class): set aside in {spool / 'refused'}, not sent again"]


def audit_lines(audit: AuditLog) -> list[dict]:
    return [json.loads(line) for line in audit.path.read_text().splitlines()]


def test_each_film_read_caller_refused_and_report_stored_is_an_audit_line(
    listen: Callable[..., int], destination: Destination_SCP, film: np.ndarray, tiny_bundle: Path, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """listen --audit-log: a caller refused at association is a line (its AE title, address, why); a film read is a
    line naming its caller, UIDs, the SHA-256 of the bytes received, the model and its reading; its report stored at
    the destination is a line naming the report's UID and the status, so governance can tell what reached the PACS.
    The file is 0600."""
    caplog.set_level(logging.INFO, logger="pneumoscan")
    audit = AuditLog(tmp_path / "audit.jsonl")
    port = listen(destination.port, allow=["MODALITY"], audit=audit)
    ae = AE(ae_title="INTRUDER")
    ae.add_requested_context(Verification)
    assert associate(ae, port).is_rejected
    study = generate_uid()
    data = chest_dicom(film, StudyInstanceUID=study)
    assert send(port, [data]) == [0]
    wait_for(lambda: f"study {study}: reports of 1 of 1 films stored" in caplog.text)
    refused, read, stored = audit_lines(audit)
    assert (refused["event"], refused["calling_ae"]) == ("association_refused", "INTRUDER")
    assert re.fullmatch(r"127\.0\.0\.1:\d+", refused["address"]) and "--allow" in refused["reason"]
    ds = pydicom.dcmread(io.BytesIO(data))
    card = json.loads((tiny_bundle / "bundle.json").read_text())
    assert (read["event"], read["calling_ae"], read["study_instance_uid"], read["series_instance_uid"],
            read["sop_instance_uid"], read["bundle_checksum"], read["bundle_on_disk"], read["refusal"]) == (
        "film_read", "MODALITY", study, ds.SeriesInstanceUID, ds.SOPInstanceUID, card["checksum"], None, None)
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", read["film_sha256"]) and 0 <= read["probability"] <= 1 and read["label"]
    [sr] = destination.received
    assert (stored["event"], stored["report_sop_instance_uid"], stored["status"]) == (
        "report_stored", sr.SOPInstanceUID, "0x0000")
    assert stat.S_IMODE(audit.path.stat().st_mode) == 0o600


def test_each_film_of_a_study_that_cannot_be_scored_is_an_audit_line_with_the_reason(
    listen: Callable[..., int], destination: Destination_SCP, film: np.ndarray, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A study whose scoring raises (its films of two patients) is a film_read line for each film received, its
    digest and the error's one-line reason as its refusal, no reading: the trail shows every film and what became of
    it, where only the journal's error line did."""
    caplog.set_level(logging.INFO, logger="pneumoscan")
    audit = AuditLog(tmp_path / "audit.jsonl")
    port = listen(destination.port, audit=audit)
    study = generate_uid()
    films = [chest_dicom(film, StudyInstanceUID=study), chest_dicom(film, StudyInstanceUID=study, PatientID="B-2")]
    assert send(port, films) == [0, 0]
    wait_for(lambda: f"study {study}: not scored: " in caplog.text)
    wait_for(lambda: not list((tmp_path / "listener").glob("association-*")))  # its films' lines written before
    [error] = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"study {study}: not scored: ")]
    why = error.removeprefix(f"study {study}: not scored: ")
    assert why.startswith("the study's instances belong to 2 patients")
    sent = [pydicom.dcmread(io.BytesIO(data)) for data in films]
    assert sorted((line["event"], line["study_instance_uid"], line["sop_instance_uid"], line["series_instance_uid"],
                   line["probability"], line["label"], line["refusal"]) for line in audit_lines(audit)) == sorted(
        ("film_read", study, ds.SOPInstanceUID, ds.SeriesInstanceUID, None, None, why) for ds in sent)
    assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", line["film_sha256"]) for line in audit_lines(audit))
    assert destination.received == []


def test_a_study_whose_audit_lines_raise_is_that_studys_fault_alone(
    listen: Callable[..., int], destination: Destination_SCP, film: np.ndarray, tmp_path: Path,
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fault in a study's audit lines (its film's digest cannot be read: an I/O error injected there) is an error
    line for that study, whose report is not sent, nor its FHIR Observation put in --fhir; the association's other
    study is scored, written and sent, where the fault ended the association's scoring."""
    caplog.set_level(logging.INFO, logger="pneumoscan")
    faulty, sound = generate_uid(), generate_uid()
    films = [chest_dicom(film, StudyInstanceUID=faulty), chest_dicom(film, StudyInstanceUID=sound)]
    broken = pydicom.dcmread(io.BytesIO(films[0])).SOPInstanceUID
    digest = dimse.file_sha256

    def failing(path: Path) -> str:
        if path.stem == broken:
            raise OSError(5, "Input/output error")
        return digest(path)

    monkeypatch.setattr(dimse, "file_sha256", failing)
    audit = AuditLog(tmp_path / "audit.jsonl")
    port = listen(destination.port, audit=audit, fhir=tmp_path / "fhir")
    assert send(port, films) == [0, 0]
    wait_for(lambda: f"study {sound}: reports of" in caplog.text)
    kept = pydicom.dcmread(io.BytesIO(films[1])).SOPInstanceUID
    assert [p.name for p in (tmp_path / "fhir").iterdir()] == [f"{kept}.fhir.json"]
    assert f"study {faulty}: its audit lines cannot be made, its reports not sent: [Errno 5] Input/output error" in (
        caplog.text)
    assert f"study {sound}: reports of 1 of 1 films stored" in caplog.text
    assert [line["study_instance_uid"] for line in audit_lines(audit) if line["event"] == "film_read"] == [sound]
    assert len(destination.received) == 1


@pytest.mark.parametrize("required", [False, True], ids=["default", "required"])
def test_a_film_whose_audit_line_cannot_be_written_gets_its_report_only_when_the_line_is_not_required(
    listen: Callable[..., int], destination: Destination_SCP, film: np.ndarray, tmp_path: Path,
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, required: bool,
) -> None:
    """The audit file replaced by a folder after start (its lines cannot be written, as root too): by default the
    films' reports are sent and a warning says the lines are lost and the listener goes on; with --audit-required
    the reports are held back, the warning says so, an error line says why for each, and the destination receives
    nothing, nor does --fhir get their Observations: none is there before its film's line is tried, where a script
    sending on from that folder could take it. The warning is rate-limited as serve's is (one a kind every 10 s),
    not one for each line lost."""
    caplog.set_level(logging.INFO, logger="pneumoscan")
    audit = AuditLog(path := tmp_path / "audit.jsonl", required=required)
    seen: list[list[str]] = []  # what --fhir holds as each film's line is tried
    write = audit.write

    def watched(entry: dict) -> bool:
        if entry.get("event") == "film_read":
            seen.append([p.name for p in (tmp_path / "fhir").glob("*.fhir.json")])
        return write(entry)

    monkeypatch.setattr(audit, "write", watched)
    port = listen(destination.port, audit=audit, fhir=tmp_path / "fhir")
    path.unlink()
    path.mkdir()
    study = generate_uid()
    assert send(port, [chest_dicom(film, StudyInstanceUID=study), chest_dicom(film, StudyInstanceUID=study)]) == [0, 0]
    wait_for(lambda: f"study {study}: reports of" in caplog.text)
    audit.close()
    assert seen == [[], []]
    lost = [r.getMessage() for r in caplog.records if r.getMessage().startswith("audit log lines to")]
    assert lost[0].startswith(f"audit log lines to {path} are lost (Is a directory)"), lost
    said = "each film whose line is lost gets no report (--audit-required)" if required else "the listener goes on"
    assert lost[0].endswith(said) and "readings are refused" not in caplog.text, lost  # what listen does, not serve
    # one warning for the films' lines (and their reports'); a later one only past 10 s, counting those held back
    assert all(re.search(r"\(\d+ more like this held back\)$", later) for later in lost[1:]), lost
    assert len(destination.received) == (0 if required else 2)
    held = [r.getMessage() for r in caplog.records if "its report is held back" in r.getMessage()]
    assert len(held) == (2 if required else 0)
    assert all(line.endswith("its report is held back, not sent; its FHIR Observation is not written") for line in held)
    assert len(list((tmp_path / "fhir").glob("*.fhir.json"))) == (0 if required else 2)
    assert f"study {study}: reports of {0 if required else 2} of 2 films stored" in caplog.text


def test_a_listener_started_again_sends_the_reports_an_earlier_one_left_in_the_spool(
    tiny_bundle: Path, film: np.ndarray, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A listener stopped while its destination is down keeps the study's report in --spool (its stop's error line
    says so); a listener started again with that spool, the destination up, sends it at once, and once."""
    monkeypatch.setattr(dimse, "FIRST_WAIT_S", 0.01)
    tries = spool_tries(monkeypatch)
    caplog.set_level(logging.INFO, logger="pneumoscan")
    destination = Destination_SCP()
    destination.shutdown()
    to, spool = Destination("DEST", "127.0.0.1", destination.port), tmp_path / "spool"
    (work := tmp_path / "work").mkdir()
    first = Listener(tiny_bundle, "PNEUMOSCAN", to, work, backend="torch", send_s=0.3, spool=spool)
    server = first.start("127.0.0.1", 0)
    study = generate_uid()
    try:
        assert send(server.server_address[1], [chest_dicom(film, StudyInstanceUID=study)]) == [0]
        wait_for(lambda: f"study {study}: reports of 0 of 1 films stored" in caplog.text)
    finally:
        server.shutdown()
        first.stop()
    [kept] = spool.glob("*.dcm")
    assert kept.name.startswith(f"{study}_")
    back = Destination_SCP(port=destination.port)
    try:
        second = Listener(tiny_bundle, "PNEUMOSCAN", to, work, backend="torch", spool=spool, retry_s=0.05)
        server = second.start("127.0.0.1", 0)
        wait_for(lambda: "spooled, is stored at" in caplog.text)
        tries(2)  # at least one more try of the spool after the one that stored it
        server.shutdown()
        second.stop()
    finally:
        back.shutdown()
    [sr] = back.received
    assert sr.StudyInstanceUID == study and kept.name == f"{study}_{sr.SOPInstanceUID}.dcm"
    assert list(spool.glob("*.dcm")) == []


def test_the_command_scores_a_film_sent_to_it_and_sigterm_ends_it_with_its_folders_gone(
    tiny_bundle: Path, destination: Destination_SCP, film: np.ndarray, tmp_path: Path
) -> None:
    """`pneumoscan listen` as IT runs it: on a free port, a film C-STOREd to it by a modality, its SR received by the
    destination, then SIGTERM (systemctl stop): it exits as the signal ends it, its temporary folders removed, and
    each line on stderr one of pneumoscan's log lines (pynetdicom's among them, formatted as ours: a connection
    that sends no DICOM, as a port scanner's, is one); --out has the study's rows, as pacs --out writes them, and
    --fhir the film's Observation, named as pacs --fhir names it, stating what its SR states."""
    (temp := tmp_path / "tmp").mkdir()
    command = subprocess.Popen(
        [sys.executable, "-m", "pneumoscan", "listen", str(tiny_bundle), "--port", "0", "--backend", "onnx",
         "--store-to", f"DEST@127.0.0.1:{destination.port}", "--out", str(tmp_path / "rows"),
         "--fhir", str(tmp_path / "fhir")],
        env={**os.environ, "TMPDIR": str(temp)}, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(command.stderr), daemon=True)
    reader.start()
    try:
        wait_for(lambda: any("listening as" in line for line in lines) or command.poll() is not None)
        [port] = [int(m[1]) for line in lines if (m := re.search(r"listening as PNEUMOSCAN on 127.0.0.1:(\d+)", line))]
        study = generate_uid()
        assert send(port, [chest_dicom(film, StudyInstanceUID=study)]) == [0]
        wait_for(lambda: any(f"study {study}: reports of 1 of 1 films stored" in line for line in lines))
        assert list(temp.glob("pneumoscan-listen-*")), "the listener's folder is there while it runs"
        with socket.create_connection(("127.0.0.1", port)) as probe:
            probe.sendall(b"GET / HTTP/1.0\r\n\r\n")
        wait_for(lambda: any("Unknown PDU type" in line for line in lines))
        command.terminate()
        assert command.wait(30) == -signal.SIGTERM  # cleaned up, then ended by the signal (a shell shows 143)
    finally:
        command.kill()
    reader.join(10)
    [sr] = destination.received
    assert sr.StudyInstanceUID == study
    assert list(temp.iterdir()) == []
    assert lines[-1].strip() == "pneumoscan listen: terminated"
    assert all(re.match(r"(DEBUG|INFO|WARNING|ERROR|CRITICAL) +\S", line) for line in lines[:-1]), lines
    assert "ERROR    Unknown PDU type received '...'\n" in lines  # pynetdicom's, redacted as pydicom's are
    [row] = json.loads((tmp_path / "rows" / f"{study}.json").read_text())
    assert row["sop_instance_uid"] == sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0] \
        .ReferencedSOPSequence[0].ReferencedSOPInstanceUID
    assert row["stored"] == [sr.SOPInstanceUID] and 0 <= row["probability"] <= 1
    assert row["fhir"] == str(tmp_path / "fhir" / f"{row['sop_instance_uid']}.fhir.json")
    observation = json.loads(Path(row["fhir"]).read_text())
    assert observation["resourceType"] == "Observation"
    assert observation["component"][0]["valueQuantity"]["value"] == pytest.approx(_probability(sr), abs=1e-9)
    assert observation["valueCodeableConcept"]["coding"][0]["code"] in {code for _, code in _finding(sr)}
    assert observation["derivedFrom"][0]["identifier"]["value"] == f"urn:oid:{sr.StudyInstanceUID}"
    assert observation["subject"]["identifier"]["value"] == sr.PatientID


def test_a_full_spool_refuses_each_film_out_of_resources_until_the_destination_takes_its_reports(
    listen: Callable[..., int], film: np.ndarray, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A destination down fills the spool: once it holds --spool-max-mb (1 KiB here, passed by one SR), each film is
    refused with 0xA700 (out of resources) and the reason in ErrorComment, a warning and an audit line, never read
    and its report dropped; the report already kept stays. The destination back, the spool is emptied and films are
    taken again."""
    monkeypatch.setattr(dimse, "FIRST_WAIT_S", 0.01)
    caplog.set_level(logging.INFO, logger="pneumoscan")
    down = Destination_SCP()
    down.shutdown()  # its port, with no one listening for now
    audit = AuditLog(tmp_path / "audit.jsonl")
    # --send-within as long as a loaded machine may take to store the third film's report, the destination back
    port = listen(down.port, spool=(spool := tmp_path / "spool"), room=Room(spool_mb=1 / 1024), send_s=30,
                  retry_s=0.2, audit=audit)
    first, second, third = (chest_dicom(film, StudyInstanceUID=generate_uid()) for _ in range(3))
    assert send(port, [first]) == [0]
    wait_for(lambda: list(spool.glob("*_*.dcm")))  # its report kept, the destination down
    [answer] = send_answers(port, [second])
    assert int(answer.Status) == 0xA700
    assert re.fullmatch(r"spool full: 0\.\d\d MB unsent, --spool-max-mb 0\.000976562", answer.ErrorComment)
    assert f"C-STORE refused (0xA700): {answer.ErrorComment}" in caplog.text
    back = Destination_SCP(port=down.port)
    try:
        wait_for(lambda: not list(spool.glob("*_*.dcm")))  # delivered from the spool
        assert send(port, [third]) == [0]
        study = pydicom.dcmread(io.BytesIO(third)).StudyInstanceUID
        wait_for(lambda: f"study {study}: reports of 1 of 1 films stored" in caplog.text)
    finally:
        back.shutdown()
    sops = [pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID for data in (first, second, third)]
    assert [(line["event"], line.get("sop_instance_uid"), line.get("status")) for line in audit_lines(audit)] == [
        ("film_read", sops[0], None), ("film_refused", sops[1], "0xA700"), ("report_stored", None, "0x0000"),
        ("film_read", sops[2], None), ("report_stored", None, "0x0000")]
    refused = audit_lines(audit)[1]
    assert (refused["calling_ae"], refused["reason"]) == ("MODALITY", answer.ErrorComment)
    assert len(back.received) == 2


def test_the_spool_counts_its_waiting_reports_and_those_kept_confirmed_and_set_aside_since(
    film: np.ndarray, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """What --spool-max-mb is held to: the reports waiting to be sent, an earlier run's among them, counted from the
    spool's folder at start and at each --retry-every, where IT may have deleted some, and each report kept,
    confirmed or set aside between counts (a count for each film would stat every report). refused/ is not counted:
    a destination refusing every report would otherwise end with each film refused "spool full" though nothing
    waits to be sent; each report set aside says IT must look there."""
    (refused := tmp_path / "spool" / "refused").mkdir(parents=True)
    (refused / "1.2.3_1.2.4.dcm").write_bytes(b"x" * 1000)  # an earlier run's, refused: never sent again
    (tmp_path / "spool" / "1.2.3_1.2.5.dcm").write_bytes(b"x" * 500)  # an earlier run's, waiting
    spool = dimse.Spool(tmp_path / "spool")
    assert spool.held() == 500
    assert Room(spool_mb=1000 / MB).refusal(1, 0, 10**15, spool.held()) is None  # refused/'s 1000 bytes pass it
    (report := tmp_path / "sr.dcm").write_bytes(data := chest_dicom(film[:8, :8]))
    kept = spool.keep("1.2.3", report)
    assert spool.held() == 500 + len(data)
    (tmp_path / "spool" / "1.2.3_1.2.5.dcm").unlink()  # IT deletes a waiting report: seen at the next count
    assert spool.held() == 500 + len(data) and spool.count() == len(data) == spool.held()
    caplog.set_level(logging.WARNING, logger="pneumoscan")
    aside = spool.set_aside(kept)
    assert spool.held() == 0 == spool.count() and aside.parent == refused and aside.is_file()
    assert f"{aside.name} is set aside, not sent again and not counted against --spool-max-mb: look at {refused}" in (
        caplog.text)
    kept = spool.keep("1.2.3", report)
    spool.confirmed(kept)
    assert spool.held() == 0 and not kept.exists()
    shutil.rmtree(spool.folder)  # deleted under the listener: nothing held, not an error line every --retry-every
    assert spool.count() == 0


@pytest.mark.parametrize("change", ["keep", "confirmed"])
def test_a_report_kept_or_confirmed_while_the_spool_is_counted_is_counted_exactly(
    film: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str,
) -> None:
    """A count (each --retry-every) and the reports kept (scoring) and confirmed (sending) run in threads of their
    own: a report kept or confirmed once the count has listed the folder, before it sets what the spool holds, is
    neither lost nor counted twice. The change is made in another thread just after the folder is listed and its
    files' sizes read (the listing wrapped to do so), given 0.2 s to finish before the count goes on."""
    spool = dimse.Spool(tmp_path / "spool")
    (report := tmp_path / "sr.dcm").write_bytes(chest_dicom(film[:8, :8]))
    first = spool.keep("1.2.3", report)
    listed, threads = os.scandir, []

    def listing(folder: Path) -> Iterator[os.DirEntry]:
        with listed(folder) as entries:
            found = list(entries)
        for entry in found:
            entry.stat()  # a DirEntry keeps its first stat: the sizes read before the change, as a slow count does
        act = (lambda: spool.keep("1.2.4", report)) if change == "keep" else (lambda: spool.confirmed(first))
        threads.append(thread := threading.Thread(target=act))
        thread.start()
        thread.join(0.2)
        return contextlib.nullcontext(iter(found))

    monkeypatch.setattr(dimse.os, "scandir", listing)
    spool.count()
    threads[0].join()
    monkeypatch.undo()
    assert spool.held() == sum(p.stat().st_size for p in spool.folder.glob("*_*.dcm")) == spool.count()


def test_a_film_whose_file_passes_a_bound_its_data_set_kept_is_refused_once_received() -> None:
    """Films are counted as their data sets arrive; the file kept adds its header (about 200 bytes), so a film just
    under a bound as it arrives may pass it on disk: the bounds are checked again on the file, refused out of
    resources with the reason in at most 64 characters (an ErrorComment's), whatever the bounds. A size past a bound
    is rounded up, so that it never reads as the bound itself, when refused and when cut short alike; the free space
    a film would leave is rounded down, beside the bound it is under."""
    room, free = Room(film_mb=1, association_mb=2), 2**50
    assert room.refusal(MB, 0, free) is None and room.refusal(MB, MB, free) is None
    assert room.refusal(MB + 1, 0, free) == "film of 1.01 MB over the limit of 1 MB"
    assert room.refusal(MB, MB + 1, free) == "association over 2 MB; send the rest in another"
    assert room.overrun(MB + 1, 0, free) == "film of 1.01 MB so far, over --max-film-mb 1"
    assert room.overrun(MB, MB + 1, free) == "association of 2.01 MB so far, over --max-association-mb 2"
    # what the film would leave on the disk, rounded down, never past the bound; none where it does not fit at all
    floor = Room(free_mb=1024)
    assert floor.refusal(10 * MB, 0, 1034 * MB - 1) == "would leave 1023 MB free, under --min-free-mb 1024"
    assert floor.refusal(5 * MB, 0, 2 * MB) == "would leave 0 MB free, under --min-free-mb 1024"
    assert floor.overrun(MB, 0, 1024 * MB) is None  # as it arrives: what the disk has left, the film's bytes written
    assert floor.overrun(MB, 0, 1024 * MB - 1) == "would leave 1023 MB free, under --min-free-mb 1024"
    # the spool: a film is refused while its reports unconfirmed reach --spool-max-mb, so none is made to be dropped
    spool = Room(spool_mb=1)
    assert spool.refusal(MB, 0, free, MB - 1) is None
    assert spool.refusal(MB, 0, free, MB) == "spool full: 1.00 MB unsent, --spool-max-mb 1"
    wide = Room(film_mb=1234567.5, association_mb=1234567.5, free_mb=1234567.5, spool_mb=1234567.5)  # "1.23457e+06"
    past_film, past_association = int(wide.film_mb * MB) + 1, int(wide.association_mb * MB)
    full = int(wide.spool_mb * MB) + MB - 1  # "1234568.50"
    cases = [(room, MB + 1, 0, free), (room, MB, MB + 1, free), (room, 1, 0, 0), (wide, past_film, 0, free),
             (wide, MB, past_association, free), (wide, 1, 0, 0), (wide, 1, 0, int(wide.free_mb * MB)),
             (wide, 1, 0, 2**60, full)]
    assert all(len(bounds.refusal(*case) or "") <= 64 for bounds, *case in cases), [
        bounds.refusal(*case) for bounds, *case in cases]


@pytest.mark.parametrize("room, stored, why, bound", [
    (Room(film_mb=0.25), [], r"film of 0\.2\d MB so far, over --max-film-mb 0\.25", MB // 4),
    (Room(film_mb=20, association_mb=2.25), [0],
     r"association of 2\.2\d MB so far, over --max-association-mb 2\.25", 9 * MB // 4),
    (Room(free_mb=2**40), [], r"would leave \d+ MB free, under --min-free-mb 1\.09951e\+12", 0),
], ids=["film", "association", "free"])
def test_a_film_past_its_bound_is_cut_short_as_it_arrives_never_written_whole(
    tiny_bundle: Path, destination: Destination_SCP, film: np.ndarray, tmp_path: Path,
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, room: Room, stored: list[int], why: str,
    bound: int,
) -> None:
    """Films of 2 MB: over --max-film-mb 0.25, the second past --max-association-mb 2.25, or any on a disk that has less
    than --min-free-mb free (all of 1 TiB asked for here), the association is aborted as the film arrives, a warning
    naming the caller, the size so far (or the space left) and the bound: the bytes the listener received until the
    abort (pynetdicom's own count of what came off the socket, PDU headers and all) are the bound and one PDU (16 KB)
    at most, never the film, and pynetdicom's temporary file of it is deleted. A film the association stored before
    (0x0000: the sender holds it stored) is scored."""
    caplog.set_level(logging.INFO, logger="pneumoscan")
    monkeypatch.setattr(tempfile, "tempdir", str(temp := tmp_path / "tmp"))  # where pynetdicom writes each film
    temp.mkdir()
    listener = Listener(tiny_bundle, "PNEUMOSCAN", Destination("DEST", "127.0.0.1", destination.port), tmp_path,
                        backend="torch", room=room)
    server = listener.start("127.0.0.1", 0)
    received = [0]  # the bytes received before the abort: what could have reached the disk

    def count(event: evt.Event) -> None:
        if not event.assoc.is_aborted:
            received[0] += len(event.data)

    server.bind(evt.EVT_DATA_RECV, count)  # each PDU as it comes off the socket, before the listener counts it
    study = generate_uid()
    data = chest_dicom(np.tile(film, (5, 5))[:1024, :1024], StudyInstanceUID=study)
    try:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(pydicom.dcmread(io.BytesIO(data)).SOPClassUID, ExplicitVRLittleEndian)
        assoc = associate(ae, server.server_address[1])
        answers = []
        for _ in range(2):
            answers.append(int(assoc.send_c_store(pydicom.dcmread(io.BytesIO(data))).get("Status", -1)))
            if answers[-1] == -1:  # no answer: the association was aborted
                break
        assert answers == [*stored, -1]
        wait_for(lambda: not list(temp.glob("*.dcm")))  # pynetdicom's file of the film cut short, deleted
        if stored:
            wait_for(lambda: f"study {study}: reports of 1 of 1 films stored" in caplog.text)
    finally:
        server.shutdown()
        listener.stop()
    assert bound < received[0] <= bound + 16382 + 16384, f"{received[0] / dimse.MB:.3f} MB received, bound {bound}"
    [warning] = [r.getMessage() for r in caplog.records if "aborted:" in r.getMessage()]
    assert re.fullmatch(rf"association from 'MODALITY' at 127\.0\.0\.1:\d+ aborted: {why}", warning), warning
    assert len(destination.received) == len(stored)


def test_a_film_is_written_to_disk_as_it_arrives_and_refused_by_its_size_before_it_is_read(
    listen: Callable[..., int], destination: Destination_SCP, film: np.ndarray, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A film of 16 MB, over --max-film-mb 8, sent by DCMTK's storescu (another process, so that only the
    listener's memory is traced), is cut short as it arrives without the listener's memory ever holding it: it
    costs the disk, not RAM, and a film bigger than the machine's memory cannot take the listener down."""
    caplog.set_level(logging.INFO, logger="pneumoscan")
    port = listen(destination.port, room=Room(film_mb=8))
    (path := tmp_path / "big.dcm").write_bytes(chest_dicom(np.tile(film, (19, 10))[:4096, :2048]))
    assert path.stat().st_size > 16 * dimse.MB
    tracemalloc.start()
    try:
        subprocess.run(["storescu", "-aet", "MODALITY", "-aec", "PNEUMOSCAN", "127.0.0.1", str(port), str(path)],
                       capture_output=True, timeout=60)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "aborted: film of 8.0" in caplog.text and "MB so far, over --max-film-mb 8" in caplog.text
    assert peak < 4 * dimse.MB, f"{peak / dimse.MB:.1f} MB traced while a 16 MB film was received"


def test_a_deflated_film_is_inflated_within_the_decode_limit_as_it_is_received(
    listen: Callable[..., int], destination: Destination_SCP, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A deflated film of 16 KiB that inflates to 16 MiB (past MAX_DECODED_BYTES, 1 MiB here), sent by
    DCMTK's storescu (another process, so that only the listener's memory is traced), is refused as it is received,
    the listener never holding it inflated: pydicom inflates the whole data set before any check, so a film under
    --max-film-mb could have inflated to many GB in the listener's memory."""
    caplog.set_level(logging.INFO, logger="pneumoscan")
    monkeypatch.setattr(pixels, "MAX_DECODED_BYTES", 2**20)
    port = listen(destination.port)
    ds = pydicom.dcmread(io.BytesIO(chest_dicom(np.zeros((2048, 4096), np.uint16))))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(path := tmp_path / "bomb.dcm")
    del ds
    assert path.stat().st_size < 2**20
    tracemalloc.start()
    try:
        subprocess.run(["storescu", "-xd", "-aet", "MODALITY", "-aec", "PNEUMOSCAN", "127.0.0.1", str(port),
                        str(path)], capture_output=True, timeout=60)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "C-STORE refused (0xC000): its data set cannot be read: deflated DICOM dataset inflates to over 1 MiB" \
        in caplog.text
    assert peak < 8 * 2**20, f"{peak / 2**20:.1f} MiB traced while a deflated 16 MiB data set was received"


def test_a_destination_that_never_answers_holds_up_no_scoring_and_its_report_is_given_up_in_time(
    listen: Callable[..., int], film: np.ndarray, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A destination that accepts the association and answers no C-STORE (a real SCP whose handler waits): each try
    ends after --store-timeout, and the report is given up with an error line once --send-within of its study's
    scoring has passed; meanwhile a second study, sent in another association, is scored without waiting for the
    first's report (scoring and sending shared one lock: the second study waited up to 3 x 30 s). The first's sending
    is held after its first try until the second study is scored (an event, not a time a loaded machine may outlast),
    and the give-up is proven on the deadline the listener computed: each try begins before it and waits no longer
    than what is left of it (however late a loaded machine runs the sending thread, the wall clock proves nothing)."""
    monkeypatch.setattr(dimse, "FIRST_WAIT_S", 0.05)
    caplog.set_level(logging.INFO, logger="pneumoscan")
    first, second = generate_uid(), generate_uid()
    second_scored, held = threading.Event(), []  # held: whether the second was scored while the first's sending held
    tries: list[tuple[str, float, float]] = []  # each try of a study: its study, when it began, its timeout
    deadlines: dict[str, tuple[float, float]] = {}  # by study: its deadline, and when its sending began
    store, file_study = Listener._store, Listener.file_study
    monkeypatch.setattr(dimse, "time", clock := ClockRead())

    def timed_store(self: Listener, pending: dict[str, Dataset], timeout: float,
                    deadline: float | None = None) -> dict[str, int | str]:
        if self._sending is not None:  # a study's try, not one of the spool's: begun when the listener read its clock
            tries.append((self._sending, clock.last[threading.get_ident()], timeout))
        answers = store(self, pending, timeout, deadline)
        if self._sending == first and not held:
            held.append(second_scored.wait(WAIT_S))
        return answers

    def filed(self: Listener, study_uid: str, rows: list[dict], deadline: float) -> None:
        deadlines[study_uid] = (deadline, time.monotonic())
        file_study(self, study_uid, rows, deadline)

    monkeypatch.setattr(Listener, "_store", timed_store)
    monkeypatch.setattr(Listener, "file_study", filed)
    hung = Destination_SCP(hangs=True)
    try:
        port = listen(hung.port, store_s=0.5, send_s=1.5)
        sent = {first: time.monotonic()}
        assert send(port, [chest_dicom(film, StudyInstanceUID=first)]) == [0]
        wait_for(lambda: f"study {first}: 1 scored" in caplog.text)
        sent[second] = time.monotonic()
        assert send(port, [chest_dicom(film, StudyInstanceUID=second)]) == [0]
        wait_for(lambda: f"study {second}: 1 scored" in caplog.text)
        second_scored.set()
        wait_for(lambda: f"study {second}: reports of" in caplog.text)
    finally:
        second_scored.set()
        hung.shutdown()
    assert held == [True], "the second study was not scored while the first's report was being sent"
    lines = [r.getMessage() for r in caplog.records if r.name == dimse.log.name]
    given_up = next(i for i, line in enumerate(lines) if line.startswith(f"study {first}: the DICOM SR "))
    # the destination took the association and was sent the C-STORE it never answered; the last try, left less than
    # --store-timeout of --send-within, may end before its association is set up on a loaded machine, or once it is,
    # past --send-within (no C-STORE sent then)
    assert hung.contexts, "no C-STORE reached the destination"
    assert re.search(r"no answer \((no answer to the C-STORE|no association: [^)]*|the time to send it ran out)\); "
                     r"kept in the spool, sent again every 60 s$", lines[given_up]), lines[given_up]
    assert f"study {first}: reports of 0 of 1 films stored" in caplog.text
    assert f"study {second}: reports of 0 of 1 films stored" in caplog.text
    assert [study for study, _, _ in tries][:1] == [first] and {study for study, _, _ in tries} <= {first, second}
    for study in (first, second):  # each deadline --send-within after its scoring, the second's too
        deadline, sending = deadlines[study]
        assert sent[study] + 1.5 <= deadline <= sending + 1.5, (study, sent[study], deadline, sending)
        for _, began, timeout in [t for t in tries if t[0] == study]:  # no try after it, none that waits past it
            assert began < deadline and 0 < timeout <= min(0.5, deadline - began), (study, began, timeout, deadline)


def test_a_stopped_listener_ends_its_sending_thread(
    tiny_bundle: Path, destination: Destination_SCP, tmp_path: Path
) -> None:
    """stop() ends the thread that sends reports and tries the spool every --retry-every (60 s, waited on for a
    study meanwhile) at once: a process that starts listeners and stops them keeps no thread of each."""
    before = set(threading.enumerate())
    listener = Listener(tiny_bundle, "PNEUMOSCAN", Destination("DEST", "127.0.0.1", destination.port), tmp_path,
                        backend="torch")
    server = listener.start("127.0.0.1", 0)
    server.shutdown()
    listener.stop()
    assert senders_ended(before, 5.0)


def test_a_stop_says_which_studies_reports_are_not_sent(
    tiny_bundle: Path, film: np.ndarray, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Stopped (SIGTERM, Ctrl-C) while the reports of one study are being sent to a destination that does not answer
    and another's wait behind them: an error line for each, as the journal is all IT has of reports not filed."""
    caplog.set_level(logging.INFO, logger="pneumoscan")
    hung = Destination_SCP(hangs=True)
    listener = Listener(tiny_bundle, "PNEUMOSCAN", Destination("DEST", "127.0.0.1", hung.port), tmp_path,
                        backend="torch", store_s=10, send_s=30)
    server = listener.start("127.0.0.1", 0)
    try:
        first, second = generate_uid(), generate_uid()
        for study in (first, second):
            assert send(server.server_address[1], [chest_dicom(film, StudyInstanceUID=study)]) == [0]
            wait_for(lambda: f"study {study}: 1 scored" in caplog.text)  # noqa: B023 (waited for here)
        server.shutdown()
        listener.stop()
        # the second's deleted (by the stop, or by its scoring's end where that came after); the first's is its
        # sending's
        wait_for(lambda: len(list(tmp_path.glob("association-*"))) == 1)
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and r.name == dimse.log.name]
    finally:
        hung.shutdown()
    lost = "; no spool (--spool): they are lost"
    assert errors == [f"study {first}: the listener stopped while its reports were sent to DEST@127.0.0.1:{hung.port}: "
                      f"those not yet stored are not{lost}",
                      f"study {second}: 1 report(s) not sent to DEST@127.0.0.1:{hung.port}: the listener stopped{lost}"]


def test_a_study_scored_after_the_stop_is_drained_by_its_scoring(
    tiny_bundle: Path, film: np.ndarray, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A study whose scoring ends after stop() (the server's shutdown does not wait for it) is drained by its
    scoring, as stop's drain came before it: its error line says its report is not sent, and its association's
    folder is deleted, not left in the work folder."""
    caplog.set_level(logging.INFO, logger="pneumoscan")
    listener = Listener(tiny_bundle, "PNEUMOSCAN", Destination("DEST", "127.0.0.1", 104), tmp_path, backend="torch")
    listener.stop()
    source = pydicom.dcmread(io.BytesIO(data := chest_dicom(film)))
    study, sop = str(source.StudyInstanceUID), str(source.SOPInstanceUID)
    (folder := tmp_path / "association-late").mkdir()
    (folder / f"{sop}.dcm").write_bytes(data)
    received = dimse._Association(folder, "PACS", "127.0.0.1:104")
    received.studies[study] = {sop: {"path": sop, "study_instance_uid": study,
                                     "series_instance_uid": str(source.SeriesInstanceUID), "sop_instance_uid": sop}}
    listener._score(received)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and r.name == dimse.log.name]
    assert errors == [f"study {study}: 1 report(s) not sent to DEST@127.0.0.1:104: the listener stopped; no spool "
                      "(--spool): they are lost"]
    assert not folder.exists()


def test_the_reports_of_a_study_go_in_one_association_with_one_context_a_class(
    tiny_bundle: Path, destination: Destination_SCP, film: np.ndarray, tmp_path: Path
) -> None:
    """A study's reports are sent in one association, which takes at most 128 presentation contexts: the SRs of a
    study's films share one (one a report, pynetdicom refused the 129th: a study of 129 films had no report sent)."""
    (tmp_path / "film.dcm").write_bytes(chest_dicom(film))
    rows = predict_paths(tiny_bundle, [tmp_path / "film.dcm"], backend="torch")
    write_reports(rows, tiny_bundle, sr_dir=tmp_path / "sr", backend="torch")
    sr = pydicom.dcmread(rows[0]["dicom_sr"])
    three = []
    for i in range(3):
        sr.SOPInstanceUID = sr.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        sr.save_as(path := tmp_path / f"sr-{i}.dcm")
        three.append({"path": f"film-{i}", "probability": 0.5, "dicom_sr": str(path)})
    listener = Listener(tiny_bundle, "PNEUMOSCAN", Destination("DEST", "127.0.0.1", destination.port), tmp_path,
                        backend="torch")
    listener.file_study(str(sr.StudyInstanceUID), three, time.monotonic() + WAIT_S)
    assert len(destination.received) == 3 and all(len(row["stored"]) == 1 for row in three)
    assert destination.contexts == [1, 1, 1]


def test_the_listener_reads_its_fhir_folder_once_and_a_film_sent_again_replaces_its_observation(
    listen: Callable[..., int], destination: Destination_SCP, film: np.ndarray, tmp_path: Path,
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--fhir's folder is read when the listener starts, not again for each study (a folder of 100,000 files was
    3 s of reading a study): each other Observation there is read once, and the same film sent again in a study of
    its own still replaces the first one's file, read to check it holds that Observation still, as a rerun does."""
    caplog.set_level(logging.INFO, logger="pneumoscan")
    (folder := tmp_path / "fhir").mkdir()
    others = [folder / f"other-{n}.fhir.json" for n in range(3)]
    for n, path in enumerate(others):
        path.write_text(json.dumps({"resourceType": "Observation", "identifier": [
            {"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:0b8d0e7c-8a5e-5b8e-9d4f-1c2a3b4c5d6{n}"}]}))
    reads: list[str] = []
    read_bytes = Path.read_bytes

    def counted(path: Path) -> bytes:
        if path.parent == folder:
            reads.append(path.name)
        return read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", counted)
    port = listen(destination.port, fhir=folder)
    data = chest_dicom(film, StudyInstanceUID=(study := generate_uid()))
    for n in (1, 2):
        assert send(port, [data]) == [0]
        wait_for(lambda: caplog.text.count(f"study {study}: reports of 1 of 1 films stored") == n)
    sop = destination.received[0].CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0] \
        .ReferencedSOPSequence[0].ReferencedSOPInstanceUID
    assert sorted(p.name for p in folder.iterdir()) == sorted([f"{sop}.fhir.json", *(p.name for p in others)])
    assert sorted(name for name in reads if name.startswith("other-")) == sorted(p.name for p in others)
    assert caplog.text.count("the Observation written replaces the one of the same identifier") == 1


def non_image(sop_class: str, study: str, **elements: object) -> bytes:
    """A minimal instance of a class that is no image (another vendor's SR, a presentation state, a PDF) in
    ``study``, as a PACS routing the whole study sends it."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = NAME, PATIENT_ID, "OT"
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def referenced_film(sr: Dataset) -> str:
    """The SOP Instance UID of the film a pneumoscan SR reports on."""
    return str(sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
               .ReferencedSOPInstanceUID)


def test_a_studys_instances_that_are_no_image_are_stored_and_set_aside_and_its_own_sr_routed_back_ignored(
    listen: Callable[..., int], destination: Destination_SCP, film: np.ndarray, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A PACS that routes whole studies sends the film with another vendor's SR, a presentation state, a PDF, a key
    object selection that is no rejection note and pneumoscan's own SR of the film (a loop in the routing): each is
    stored (0x0000, so the sender holds the study sent), none is scored; the film alone gets a report; each other is
    an info line (a warning for our own SR: the routing loops) and an audit line saying what it was."""
    caplog.set_level(logging.INFO, logger="pneumoscan")
    audit = AuditLog(tmp_path / "audit.jsonl")
    study = generate_uid()
    data = chest_dicom(film, StudyInstanceUID=study)
    source = pydicom.dcmread(io.BytesIO(data))
    reading = {"probability": 0.7, "label": "PNEUMONIA", "threshold": 0.5, "positive": "PNEUMONIA",
               "task": "pneumonia", "warnings": []}
    own = report_files(source, reading, None, "m", "v")[0]
    others = {"another SR": non_image(ComprehensiveSRStorage, study, Modality="SR"),
              "a presentation state": non_image(GrayscaleSoftcopyPresentationStateStorage, study, Modality="PR"),
              "a PDF": non_image(EncapsulatedPDFStorage, study, Modality="DOC"),
              "a key object": key_object_selection(codes.DCM.OfInterest, [source]),
              "our SR": own}
    port = listen(destination.port, audit=audit)
    assert send(port, [data, *others.values()]) == [0] * 6
    wait_for(lambda: f"study {study}: reports of 1 of 1 films stored" in caplog.text)
    [sr] = destination.received
    assert referenced_film(sr) == source.SOPInstanceUID
    assert sr.SOPInstanceUID != pydicom.dcmread(io.BytesIO(own)).SOPInstanceUID
    assert f"study {study}: 1 scored, 0 not scored, 0 unreadable" in caplog.text
    aside = {line["sop_instance_uid"]: line for line in audit_lines(audit) if line["event"] == "instance_set_aside"}
    reasons = {name: aside[str(pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID)]["reason"]
               for name, data in others.items()}
    assert reasons == {
        "another SR": "not an image (Comprehensive SR Storage): set aside, not scored",
        "a presentation state": "not an image (Grayscale Softcopy Presentation State Storage): set aside, not scored",
        "a PDF": "not an image (Encapsulated PDF Storage): set aside, not scored",
        "a key object": "not an image (Key Object Selection Document Storage): set aside, not scored",
        "our SR": "pneumoscan's own Comprehensive SR Storage, routed back: ignored"}
    assert all(line["calling_ae"] == "MODALITY" and line["study_instance_uid"] == study for line in aside.values())
    for reason in reasons.values():
        assert f"received from 'MODALITY': {reason}" in caplog.text
    [loop] = [r for r in caplog.records if "routed back" in r.getMessage()]  # a loop in the routing: IT must see it
    assert loop.levelno == logging.WARNING
    assert [line["event"] for line in audit_lines(audit)].count("film_read") == 1


def test_a_film_a_rejection_note_withdraws_before_it_is_scored_is_not_scored_nor_reported(
    listen: Callable[..., int], destination: Destination_SCP, film: np.ndarray, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A study's two films and the technologist's rejection note for one of them (IHE IOCM), sent in one
    association: that film is not scored, its row saying which note withdrew it (as pacs says it), and no report is
    made on it; the other is scored and reported."""
    caplog.set_level(logging.INFO, logger="pneumoscan")
    study = generate_uid()
    kept, wrong = (chest_dicom(pixels, StudyInstanceUID=study) for pixels in (film, film[::-1]))
    headers = [pydicom.dcmread(io.BytesIO(data)) for data in (kept, wrong)]
    note = key_object_selection(codes.DCM.RejectedForPatientSafetyReasons, headers[1:])
    (out := tmp_path / "rows").mkdir()
    port = listen(destination.port, out=out)
    assert send(port, [kept, wrong, note]) == [0, 0, 0]
    wait_for(lambda: (out / f"{study}.json").is_file())
    rows = {row["sop_instance_uid"]: row for row in json.loads((out / f"{study}.json").read_text())}
    assert rows.keys() == {h.SOPInstanceUID for h in headers}
    scored, withdrawn = (rows[h.SOPInstanceUID] for h in headers)
    uid = pydicom.dcmread(io.BytesIO(note)).SOPInstanceUID
    assert withdrawn["not_scored"] == f"withdrawn by the study's rejection note {uid} (113037: Rejected for Patient " \
        "Safety Reasons)"
    assert not {"probability", "stored"} & withdrawn.keys()
    [sr] = destination.received
    assert scored["stored"] == [sr.SOPInstanceUID] and referenced_film(sr) == headers[0].SOPInstanceUID
    assert "a rejection note withdrawing 1 film(s) (Key Object Selection Document Storage)" in caplog.text


def test_a_rejection_note_of_a_film_scored_already_names_its_reports_and_keeps_the_one_waiting_from_the_pacs(
    listen: Callable[..., int], film: np.ndarray, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A film scored while the destination is down, its SR waiting in the spool; its rejection note then comes in an
    association of its own, and the destination is back before that association is released: the spool sends the
    SR neither then nor after. Once released, a warning and an audit line name the SR and FHIR Observation made on
    the film and the rejection reason, and its SR is moved out of the spool into withdrawn/. pneumoscan sends no
    retraction."""
    monkeypatch.setattr(dimse, "FIRST_WAIT_S", 0.01)
    tries = spool_tries(monkeypatch)
    caplog.set_level(logging.INFO, logger="pneumoscan")
    down = Destination_SCP()
    down.shutdown()  # its port, with no one listening for now
    audit = AuditLog(tmp_path / "audit.jsonl")
    port = listen(down.port, spool=(spool := tmp_path / "spool"), send_s=0.2, retry_s=0.05, audit=audit,
                  fhir=(fhir := tmp_path / "fhir"))
    study = generate_uid()
    data = chest_dicom(film, StudyInstanceUID=study)
    source = pydicom.dcmread(io.BytesIO(data))
    assert send(port, [data]) == [0]
    wait_for(lambda: f"study {study}: reports of 0 of 1 films stored" in caplog.text)
    [waiting] = spool.glob("*.dcm")
    sr_uid = str(pydicom.dcmread(waiting).SOPInstanceUID)
    [observation] = fhir.iterdir()
    note = key_object_selection(codes.DCM.RejectedForQualityReasons, [source])
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(KeyObjectSelectionDocumentStorage, ExplicitVRLittleEndian)
    assoc = associate(ae, port)
    assert int(assoc.send_c_store(pydicom.dcmread(io.BytesIO(note))).Status) == 0
    back = Destination_SCP(port=down.port)
    try:
        tries(2)  # at least one try of the spool, the destination up, before the note's association is released
        assoc.release()
        wait_for(lambda: "reports known for 1" in caplog.text)
        tries(2)  # and one more after
    finally:
        back.shutdown()
    assert back.received == []
    why = (f"withdrawn by the study's rejection note {pydicom.dcmread(io.BytesIO(note)).SOPInstanceUID} (113001: "
           "Rejected for Quality Reasons)")
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "scored already" in
                 r.getMessage()]
    assert warning == (
        f"study {study}: the film {source.SOPInstanceUID}, scored already, is {why}: made on it: report {sr_uid}, "
        f"FHIR Observation {observation}; waiting in the spool, set aside in {spool / 'withdrawn'} and not sent: "
        f"{sr_uid}; pneumoscan sends no retraction: remove what the PACS holds of them by hand")
    [line] = [line for line in audit_lines(audit) if line["event"] == "scored_film_withdrawn"]
    assert (line["study_instance_uid"], line["sop_instance_uid"], line["reason"], line["report_sop_instance_uids"],
            line["fhir"], line["reports_set_aside"]) == (study, source.SOPInstanceUID, why, [sr_uid],
                                                          str(observation), [sr_uid])
    assert list(spool.glob("*.dcm")) == [] and [p.name for p in (spool / "withdrawn").glob("*.dcm")] == [waiting.name]


def test_a_key_object_selection_that_cannot_be_read_is_refused_and_its_studys_films_not_scored(
    listen: Callable[..., int], destination: Destination_SCP, film: np.ndarray, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Whether a key object selection without its title is a rejection note is not known: its C-STORE is refused
    with the reason, and the film of its study sent with it is not scored, as pacs refuses the study."""
    caplog.set_level(logging.INFO, logger="pneumoscan")
    audit = AuditLog(tmp_path / "audit.jsonl")
    study = generate_uid()
    data = chest_dicom(film, StudyInstanceUID=study)
    broken = non_image(KeyObjectSelectionDocumentStorage, study, Modality="KO")
    port = listen(destination.port, audit=audit)
    assert send(port, [data, broken]) == [0, 0xC000]
    wait_for(lambda: f"study {study}: not scored" in caplog.text)
    uid = pydicom.dcmread(io.BytesIO(broken)).SOPInstanceUID
    why = (f"the study's key object selection {uid} could not be read (AttributeError): whether it is a rejection "
           "note that withdraws films is not known, so none is scored")
    assert f"study {study}: not scored: {why}" in caplog.text
    wait_for(lambda: audit.path.exists() and audit.path.read_text().count("\n") >= 2)  # written after the line said
    refused, read = audit_lines(audit)
    assert (refused["event"], refused["reason"], read["event"], read["refusal"]) == (
        "film_refused", why, "film_read", why)
    assert destination.received == []


def test_the_reports_of_a_film_withdrawn_while_its_study_waits_to_be_sent_are_not_sent(
    tiny_bundle: Path, destination: Destination_SCP, film: np.ndarray, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A rejection note that comes while the study of the film it withdraws waits to be sent (scored, queued behind
    another study's reports): the film's report is not sent, its row says why, and no error line counts it as a
    report not filed."""
    caplog.set_level(logging.INFO, logger="pneumoscan")
    (tmp_path / "film.dcm").write_bytes(data := chest_dicom(film))
    source = pydicom.dcmread(io.BytesIO(data))
    rows = predict_paths(tiny_bundle, [tmp_path / "film.dcm"], backend="torch")
    write_reports(rows, tiny_bundle, sr_dir=tmp_path / "sr", backend="torch")
    row = {**rows[0], "sop_instance_uid": source.SOPInstanceUID}
    listener = Listener(tiny_bundle, "PNEUMOSCAN", Destination("DEST", "127.0.0.1", destination.port), tmp_path,
                        backend="torch")
    why = "withdrawn by the study's rejection note 1.2.3 (113037: Rejected for Patient Safety Reasons)"
    listener.spool.remember(source.StudyInstanceUID, "1.2.3", {source.SOPInstanceUID: why})
    listener._withdraw(dimse._Association(tmp_path, "PACS", "127.0.0.1:104"), source.StudyInstanceUID,
                       {source.SOPInstanceUID: why})
    listener.file_study(source.StudyInstanceUID, [row], time.monotonic() + WAIT_S)
    assert destination.received == [] and row["stored"] == [] and row["withdrawn"] == why
    assert f"{why}: its reports are not sent" in row["warnings"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert f"study {source.StudyInstanceUID}: reports of 0 of 0 films stored" in caplog.text


def test_a_rejection_note_whose_association_is_aborted_still_keeps_the_films_report_from_the_pacs_after_a_restart(
    tiny_bundle: Path, film: np.ndarray, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A film scored while the destination is down, its SR in the spool; its rejection note (113037) comes and the
    sender aborts that association: the SR is set aside in withdrawn/ with a warning and an audit line all the same.
    Put back in the spool, a second listener on the same spool, the destination up, sets it aside again and never
    sends it: the withdrawal is on disk."""
    monkeypatch.setattr(dimse, "FIRST_WAIT_S", 0.01)
    tries = spool_tries(monkeypatch)
    caplog.set_level(logging.INFO, logger="pneumoscan")
    down = Destination_SCP()
    down.shutdown()
    to, spool, audit = Destination("DEST", "127.0.0.1", down.port), tmp_path / "spool", AuditLog(tmp_path / "a.jsonl")
    (work := tmp_path / "work").mkdir()
    first = Listener(tiny_bundle, "PNEUMOSCAN", to, work, backend="torch", send_s=0.2, spool=spool, audit=audit)
    server = first.start("127.0.0.1", 0)
    study = generate_uid()
    data = chest_dicom(film, StudyInstanceUID=study)
    try:
        assert send(server.server_address[1], [data]) == [0]
        wait_for(lambda: f"study {study}: reports of 0 of 1 films stored" in caplog.text)
        [waiting] = spool.glob("*.dcm")
        sr_uid = str(pydicom.dcmread(waiting).SOPInstanceUID)
        note = key_object_selection(codes.DCM.RejectedForPatientSafetyReasons, [pydicom.dcmread(io.BytesIO(data))])
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(KeyObjectSelectionDocumentStorage, ExplicitVRLittleEndian)
        assoc = associate(ae, server.server_address[1])
        assert int(assoc.send_c_store(pydicom.dcmread(io.BytesIO(note))).Status) == 0
        assoc.abort()
        wait_for(lambda: "reports known for 1" in caplog.text)
    finally:
        server.shutdown()
        first.stop()
    assert list(spool.glob("*.dcm")) == [] and (spool / "withdrawn" / waiting.name).is_file()
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "scored already" in
                 r.getMessage()]
    assert f"set aside in {spool / 'withdrawn'} and not sent: {sr_uid}" in warning
    [line] = [line for line in audit_lines(audit) if line["event"] == "scored_film_withdrawn"]
    assert line["reports_set_aside"] == [sr_uid]
    shutil.copy(spool / "withdrawn" / waiting.name, waiting)  # put back, as IT might
    back = Destination_SCP(port=down.port)
    try:
        second = Listener(tiny_bundle, "PNEUMOSCAN", to, work, backend="torch", spool=spool, retry_s=0.05)
        server = second.start("127.0.0.1", 0)
        wait_for(lambda: f"the report(s) {sr_uid} of the film" in caplog.text)
        tries(2)  # at least one try of the spool after the one that found the report withdrawn
        server.shutdown()
        second.stop()
    finally:
        back.shutdown()
    assert back.received == [] and list(spool.glob("*.dcm")) == []


def test_a_report_being_sent_as_its_films_rejection_note_comes_is_said_being_sent_never_set_aside(
    listen: Callable[..., int], film: np.ndarray, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A film's SR waits in the spool; the spool sends it to a destination that takes its time to answer, and the
    film's rejection note comes (and its association is released) during that C-STORE: the note's warning says the
    report is being sent and must be removed by hand if stored, never that it is set aside and not sent; once the
    destination stores it, a warning says so, and the spool holds it no more."""
    monkeypatch.setattr(dimse, "FIRST_WAIT_S", 0.01)
    caplog.set_level(logging.INFO, logger="pneumoscan")
    down = Destination_SCP()
    down.shutdown()
    port = listen(down.port, spool=(spool := tmp_path / "spool"), send_s=0.2, retry_s=0.1)
    study = generate_uid()
    data = chest_dicom(film, StudyInstanceUID=study)
    assert send(port, [data]) == [0]
    wait_for(lambda: f"study {study}: reports of 0 of 1 films stored" in caplog.text)
    [waiting] = spool.glob("*.dcm")
    sr_uid = str(pydicom.dcmread(waiting).SOPInstanceUID)
    slow = Destination_SCP(hangs=True, port=down.port)
    try:
        wait_for(lambda: slow.contexts != [])  # the spool's C-STORE has begun, unanswered
        note = key_object_selection(codes.DCM.RejectedForPatientSafetyReasons, [pydicom.dcmread(io.BytesIO(data))])
        assert send(port, [note]) == [0]
        wait_for(lambda: "reports known for 1" in caplog.text)
        slow.closing.set()  # the destination answers: stored
        wait_for(lambda: "spooled, is stored at" in caplog.text)
    finally:
        slow.shutdown()
    [said] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "scored already" in
              r.getMessage()]
    assert said.endswith(f"being sent to DEST@127.0.0.1:{down.port}: {sr_uid}: if stored, remove it by hand; "
                         "pneumoscan sends no retraction: remove what the PACS holds of them by hand")
    assert "set aside" not in said
    assert f"the report {sr_uid} is stored at DEST@127.0.0.1:{down.port}, its film withdrawn by" in caplog.text
    assert [r.SOPInstanceUID for r in slow.received] == [sr_uid]
    assert list(spool.glob("*.dcm")) == [] and list((spool / "withdrawn").glob("*.dcm")) == []


def test_a_fault_in_keeping_what_was_made_on_a_studys_films_is_that_studys_alone(
    listen: Callable[..., int], destination: Destination_SCP, film: np.ndarray, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two studies in one association, what was made on the first's film not kept for a later rejection note (a
    fault): an error line says so, and both studies are scored and their reports sent all the same."""
    caplog.set_level(logging.INFO, logger="pneumoscan")
    first, second = generate_uid(), generate_uid()
    record = Listener._record

    def failing(self: Listener, study_uid: str, rows: list[dict]) -> None:
        if study_uid == first:
            raise OSError("the disk went away")
        record(self, study_uid, rows)

    monkeypatch.setattr(Listener, "_record", failing)
    port = listen(destination.port)
    assert send(port, [chest_dicom(film, StudyInstanceUID=first), chest_dicom(film, StudyInstanceUID=second)]) == [0, 0]
    wait_for(lambda: all(f"study {s}: reports of 1 of 1 films stored" in caplog.text for s in (first, second)))
    assert f"study {first}: what was made on its films is not kept for a rejection note that comes later, which " \
        "cannot name it: the disk went away" in caplog.text
    assert sorted(str(sr.StudyInstanceUID) for sr in destination.received) == sorted([first, second])


def _stored_once(port: int, destination: Destination_SCP, film: np.ndarray, caplog: pytest.LogCaptureFixture) -> None:
    """A study of one film sent to the listener on ``port``: its report stored at ``destination``, and said to be."""
    study = generate_uid()
    assert send(port, [chest_dicom(film, StudyInstanceUID=study)]) == [0]
    wait_for(lambda: f"study {study}: reports " in caplog.text)  # "reports of", or "reports not sent"
    assert f"study {study}: reports of 1 of 1 films stored" in caplog.text, caplog.text
    assert [str(sr.StudyInstanceUID) for sr in destination.received] == [study]


class _LateCheckpoint(threading.Event):
    """pynetdicom's reactor checkpoint, for a reactor held up (a loaded machine) just after it found the checkpoint
    set: a ``send_*`` method that clears it then takes the reactor for paused, sends its request, and the reactor goes
    on once the association's DIMSE queue holds the answer (1 s at most), where it reads the queue."""

    def __init__(self, messages: queue.Queue) -> None:
        super().__init__()
        self.messages = messages
        self.set()

    def wait(self, timeout: float | None = None) -> bool:
        until = time.monotonic() + 1
        while not self.is_set() and self.messages.empty() and time.monotonic() < until:
            time.sleep(0.001)
        return True  # found set, before the send_* method cleared it


def test_a_report_stored_is_counted_stored_however_late_pynetdicoms_reactor_runs(
    listen: Callable[..., int], destination: Destination_SCP, film: np.ndarray, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each requestor's reactor held up just past its checkpoint until an answer has come, and each requestor held up
    0.2 s after it sends a request (the two threads a loaded machine holds up): the destination's answer to the
    listener's C-STORE is read by the C-STORE (:func:`~pneumoscan.interop.dimse.keep_answers`), so the report is
    stored and said to be. The reactor had taken the answer and dropped it ("Received unexpected C-STORE service
    message"), and the report stored was counted unanswered after ``store_s`` and sent again."""
    caplog.set_level(logging.INFO, logger="pneumoscan")
    made, sent = Association.__init__, DIMSEServiceProvider.send_msg

    def late_reactor(self: Association, *args: object, **kwargs: object) -> None:
        made(self, *args, **kwargs)
        if self.is_requestor:
            self._reactor_checkpoint = _LateCheckpoint(self.dimse.msg_queue)

    def late_requestor(self: DIMSEServiceProvider, primitive: object, context_id: int) -> None:
        sent(self, primitive, context_id)
        if self.assoc.is_requestor:  # the answer arrives before the requestor reads it
            time.sleep(0.2)

    monkeypatch.setattr(Association, "__init__", late_reactor)
    monkeypatch.setattr(DIMSEServiceProvider, "send_msg", late_requestor)
    _stored_once(listen(destination.port, store_s=3, send_s=10), destination, film, caplog)


def _answer(message_id: int, status: int = 0x0000) -> C_STORE:
    """A C-STORE answer to the request ``message_id``, as pynetdicom queues it."""
    answer = C_STORE()
    answer.MessageIDBeingRespondedTo, answer.Status = message_id, status
    answer.AffectedSOPClassUID, answer.AffectedSOPInstanceUID = ComprehensiveSRStorage, generate_uid()
    return answer


def test_kept_answers_are_the_c_stores_alone_and_only_its_own(caplog: pytest.LogCaptureFixture) -> None:
    """keep_answers on a requestor's DIMSE queue: the reactor's read (non-blocking) takes a request, or the end of
    the connection (None, None), never an answer, which waits for the C-STORE; the C-STORE's read (blocking) drops,
    with a warning, an answer to another message than its own (an answer sent twice, or late), so that a report
    refused is never counted stored on another's answer, and gives up within the DIMSE timeout."""
    ae = AE()
    ae.dimse_timeout = 0.2
    dimse = keep_answers(Association(ae, "requestor")).dimse
    request = C_STORE()
    request.MessageID, request.Priority = 7, 2
    request.AffectedSOPClassUID, request.AffectedSOPInstanceUID = ComprehensiveSRStorage, generate_uid()
    dimse.send_msg(request, 1)  # message 7 asked (the association is not up: nothing goes out)
    dimse.msg_queue.put((1, (own := _answer(7))))
    assert dimse.get_msg(block=False) == (None, None) and dimse.msg_queue.qsize() == 1  # left for the C-STORE
    assert dimse.get_msg(block=True) == (1, own)
    dimse.msg_queue.put((1, request))
    assert dimse.get_msg(block=False) == (1, request)  # a request the peer sends is served
    dimse.msg_queue.put((None, None))
    assert dimse.get_msg(block=False) == (None, None) and dimse.msg_queue.empty()  # the connection's end, taken
    dimse.msg_queue.put((1, _answer(6, 0xA700)))  # another C-STORE's answer, sent twice or late
    dimse.msg_queue.put((1, (own := _answer(7))))
    assert dimse.get_msg(block=True) == (1, own)
    assert "an answer to message 6, not to the request sent (message 7), is dropped" in caplog.text
    began = time.monotonic()
    assert dimse.get_msg(block=True) == (None, None)  # no answer within the DIMSE timeout
    assert time.monotonic() - began < 10


def test_a_sending_thread_held_up_past_the_store_timeout_still_stores_its_report(
    listen: Callable[..., int], destination: Destination_SCP, film: np.ndarray, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The listener's sending thread held up (a loaded machine) for twice --store-timeout between its association
    and its C-STORE, while the destination answers at once: the report is stored and the study's line said. The
    association's idle timer was --store-timeout too, and pynetdicom's reactor aborted the association under the
    C-STORE: it raised "must be established" (no line of the study's reports at all), or went out after the abort
    (InvalidEventError, Evt9 in Sta13) and waited for an answer that could not come."""
    caplog.set_level(logging.INFO, logger="pneumoscan")
    store = Association.send_c_store

    def held_up(self: Association, *args: object, **kwargs: object) -> Dataset:
        if threading.current_thread().name == "listen-sender":
            time.sleep(0.6)
        return store(self, *args, **kwargs)

    monkeypatch.setattr(Association, "send_c_store", held_up)
    _stored_once(listen(destination.port, store_s=0.3, send_s=30), destination, film, caplog)


def test_a_destination_that_ends_the_association_before_the_c_store_gets_the_studys_line_all_the_same(
    listen: Callable[..., int], film: np.ndarray, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A destination that aborts an association idle 0.2 s (its own idle timeout), the listener's sending thread held
    up before each C-STORE until it has (a loaded machine): the study's line says its report was not stored, and
    why. The C-STORE on the association ended raised "must be established" out of the sending, and the study's
    outcome was never said. The tries follow at once: each ends as the destination aborts its association."""
    monkeypatch.setattr(dimse, "FIRST_WAIT_S", 0.01)
    caplog.set_level(logging.INFO, logger="pneumoscan")
    store = Association.send_c_store

    def held_up(self: Association, *args: object, **kwargs: object) -> Dataset:
        if threading.current_thread().name == "listen-sender":
            until = time.monotonic() + WAIT_S
            while self.is_established and time.monotonic() < until:
                time.sleep(0.01)
        return store(self, *args, **kwargs)

    monkeypatch.setattr(Association, "send_c_store", held_up)
    impatient = Destination_SCP(idle_s=0.2)
    try:
        study = generate_uid()
        port = listen(impatient.port, send_s=3)
        assert send(port, [chest_dicom(film, StudyInstanceUID=study)]) == [0]
        wait_for(lambda: f"study {study}: reports " in caplog.text)
    finally:
        impatient.shutdown()
    assert f"study {study}: reports of 0 of 1 films stored" in caplog.text, caplog.text
    assert "(the association ended)" in caplog.text and impatient.received == []


def test_a_destination_that_stops_reading_mid_c_store_holds_the_sending_up_no_longer_than_the_store_timeout(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A destination that stops reading a report (a Secondary Capture of 12 MB, past what the sockets' buffers take)
    as it arrives: the C-STORE is given up, unanswered, within a few --store-timeout, where the send held the
    listener's sending thread, and every later report, for ever; the next report is not sent on the association
    ended (it had waited a --store-timeout more for an answer that could not come)."""
    stalled = Destination_SCP(stalls=True)
    listener = Listener(tiny_bundle, "PNEUMOSCAN", Destination("DEST", "127.0.0.1", stalled.port), tmp_path,
                        backend="torch")
    ds = pydicom.dcmread(io.BytesIO(chest_dicom(np.zeros((2048, 2048), np.uint16))))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.PhotometricInterpretation, ds.SamplesPerPixel, ds.PlanarConfiguration = "RGB", 3, 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelData = bytes(2048 * 2048 * 3)
    answers: list[dict] = []
    sent: list[str] = []
    store = Association.send_c_store

    def counted(self: Association, report: Dataset, *args: object, **kwargs: object) -> Dataset:
        sent.append(str(report.SOPInstanceUID))
        return store(self, report, *args, **kwargs)

    monkeypatch.setattr(Association, "send_c_store", counted)
    pending = {"1.2.3": ds, "1.2.4": (later := copy.deepcopy(ds))}
    later.SOPInstanceUID = later.file_meta.MediaStorageSOPInstanceUID = "1.2.4"
    sending = threading.Thread(target=lambda: answers.append(listener._store(pending, timeout=1.0)))
    try:
        sending.start()
        sending.join(20)
        assert not sending.is_alive(), "the sending is held by a destination that stopped reading"
    finally:
        stalled.shutdown()
        sending.join(30)
    assert answers == [{"1.2.3": "no answer to the C-STORE", "1.2.4": "the association ended"}]
    assert sent == [ds.SOPInstanceUID] and stalled.received == []


def test_a_destination_slow_to_answer_each_report_is_given_up_at_send_within_not_a_store_timeout_past_it_for_each(
    listen: Callable[..., int], film: np.ndarray, caplog: pytest.LogCaptureFixture,
) -> None:
    """A study of four films, the destination answering each report's C-STORE after 0.125 s, --send-within 0.3 s
    and --store-timeout 5 s: no C-STORE is sent, nor its answer waited for, past --send-within, so at most two of the
    four reports are stored (two answers take 0.25 s), and the study's line says so. Each C-STORE waited its whole
    --store-timeout, however little was left, and all four were stored 0.2 s past --send-within."""
    caplog.set_level(logging.INFO, logger="pneumoscan")
    slow = Destination_SCP(answer_after=0.125)
    try:
        study = generate_uid()
        port = listen(slow.port, store_s=5, send_s=0.3)
        assert send(port, [chest_dicom(film, StudyInstanceUID=study) for _ in range(4)]) == [0] * 4
        wait_for(lambda: f"study {study}: reports " in caplog.text)
    finally:
        slow.shutdown()
    [said] = re.findall(rf"study {study}: reports of (\d) of 4 films stored", caplog.text)
    assert int(said) <= 2 and len(slow.received) <= 3, caplog.text  # a C-STORE cut short may be stored after


def test_a_report_the_spool_cannot_read_is_that_studys_error_alone(
    listen: Callable[..., int], destination: Destination_SCP, film: np.ndarray, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two studies in one association, the first's SR not a DICOM file when the spool keeps it (InvalidDicomError):
    an error line names the study and why, neither its SR nor its overlay is sent (the overlay no reading alone),
    and the second study is scored and its reports sent all the same."""
    caplog.set_level(logging.INFO, logger="pneumoscan")
    first, second = generate_uid(), generate_uid()
    keep = dimse.Spool.keep

    def spoiled(self: dimse.Spool, study_uid: str, path: Path) -> Path:
        if study_uid == first and path.name.endswith(SR_SUFFIX):
            path.write_bytes(b"not a DICOM file")
        return keep(self, study_uid, path)

    monkeypatch.setattr(dimse.Spool, "keep", spoiled)
    port = listen(destination.port, heatmaps=True)
    assert send(port, [chest_dicom(film, StudyInstanceUID=first), chest_dicom(film, StudyInstanceUID=second)]) == [0, 0]
    wait_for(lambda: f"study {second}: reports of 1 of 1 films stored" in caplog.text
             and f"study {first}: reports of 0 of 1 films stored" in caplog.text)
    assert re.search(f"study {first}: its DICOM SR of .* cannot be read, so it is not sent: File is missing DICOM File "
                     "Meta Information header", caplog.text)
    assert f"study {first}: not scored" not in caplog.text
    assert f"study {first}: no report filed for" in caplog.text
    assert sorted(ds.Modality for ds in destination.received if ds.StudyInstanceUID == second) == ["OT", "SR"]
    assert not [ds for ds in destination.received if ds.StudyInstanceUID == first]


def test_a_film_whose_sr_the_spool_cannot_read_gets_no_fhir_observation_and_its_row_says_why(
    listen: Callable[..., int], destination: Destination_SCP, film: np.ndarray, tmp_path: Path,
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two studies in one association with --fhir, the first's SR not a DICOM file when the spool keeps it: its SR is
    not sent, so its FHIR Observation is not written either (a reader of the FHIR folder never sees a reading the
    DICOM side refused), its row and error line saying so; the second's film gets its SR and its Observation."""
    caplog.set_level(logging.INFO, logger="pneumoscan")
    first, second = generate_uid(), generate_uid()
    keep = dimse.Spool.keep

    def spoiled(self: dimse.Spool, study_uid: str, path: Path) -> Path:
        if study_uid == first:
            path.write_bytes(b"not a DICOM file")
        return keep(self, study_uid, path)

    monkeypatch.setattr(dimse.Spool, "keep", spoiled)
    (out := tmp_path / "rows").mkdir()
    port = listen(destination.port, fhir=(fhir := tmp_path / "fhir"), out=out)
    films = [chest_dicom(film, StudyInstanceUID=study) for study in (first, second)]
    assert send(port, films) == [0, 0]
    wait_for(lambda: all((out / f"{study}.json").is_file() for study in (first, second)))
    [spoilt] = json.loads((out / f"{first}.json").read_text())
    assert "fhir" not in spoilt and "probability" in spoilt
    assert any(w.startswith("its DICOM SR cannot be read, so it is not sent, nor its FHIR Observation written: ")
               for w in spoilt["warnings"])
    assert f"study {first}: its DICOM SR of " in caplog.text and ", nor its FHIR Observation written: " in caplog.text
    [kept] = json.loads((out / f"{second}.json").read_text())
    [sr] = destination.received
    assert sr.StudyInstanceUID == second and [p.name for p in fhir.iterdir()] == [Path(kept["fhir"]).name]


def test_an_instance_whose_data_set_is_not_of_the_class_its_c_store_names_is_refused(
    listen: Callable[..., int], destination: Destination_SCP, film: np.ndarray, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A film sent under the SR class (its C-STORE's Affected SOP Class) would be set aside, never scored, on the
    request's word alone: it is refused with 0xA900 (data set does not match SOP class) and gets no report."""
    ds = pydicom.dcmread(io.BytesIO(chest_dicom(film)))
    port = listen(destination.port)
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ComprehensiveSRStorage, ExplicitVRLittleEndian)
    assoc = associate(ae, port)
    request = C_STORE()  # as send_c_store makes it, but for the class named
    request.MessageID, request.Priority = 1, 2
    request.AffectedSOPClassUID, request.AffectedSOPInstanceUID = ComprehensiveSRStorage, ds.SOPInstanceUID
    request.DataSet = io.BytesIO(encode(ds, False, True))
    [context] = assoc.accepted_contexts
    assoc.dimse.send_msg(request, context.context_id)
    _, answer = assoc.dimse.get_msg(block=True)  # the answer is this thread's: keep_answers (associate)
    assoc.release()
    assert (int(answer.Status), answer.ErrorComment) == (
        0xA900, "its SOPClassUID is not the one its C-STORE request names")
    assert "set aside" not in caplog.text and destination.received == []


def test_a_retention_expiry_note_of_a_film_scored_already_is_an_info_line_not_a_warning(
    listen: Callable[..., int], destination: Destination_SCP, film: np.ndarray, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A film scored and its report stored, then purged by the archive's retention rule (a 113039 note): a routine
    purge, said in an info line and the audit log, not the warning that asks IT to remove the report by hand."""
    caplog.set_level(logging.INFO, logger="pneumoscan")
    audit = AuditLog(tmp_path / "audit.jsonl")
    port = listen(destination.port, audit=audit)
    study = generate_uid()
    data = chest_dicom(film, StudyInstanceUID=study)
    assert send(port, [data]) == [0]
    wait_for(lambda: f"study {study}: reports of 1 of 1 films stored" in caplog.text)
    note = key_object_selection(codes.DCM.DataRetentionPolicyExpired, [pydicom.dcmread(io.BytesIO(data))])
    assert send(port, [note]) == [0]
    wait_for(lambda: "reports known for 1" in caplog.text)
    [said] = [r for r in caplog.records if "scored already, is" in r.getMessage()]
    assert said.levelno == logging.INFO and "(113039: Data Retention Policy Expired)" in said.getMessage()
    assert "by hand" not in said.getMessage()
    assert [line["event"] for line in audit_lines(audit)].count("scored_film_withdrawn") == 1


def test_the_spool_keeps_the_latest_notes_withdrawals_across_restarts_and_refuses_one_it_cannot_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each rejection note's withdrawals, remembered by the spool, are read again by a spool started on its folder:
    those of the latest WITHDRAWALS films, the older notes' files deleted; a note's file that cannot be read stops
    the start (which films it withdraws is not known)."""
    monkeypatch.setattr(dimse, "WITHDRAWALS", 2)
    spool = dimse.Spool(tmp_path / "spool")
    for n in range(3):
        spool.remember("1.2", f"9.{n}", {f"1.2.3.{n}": f"why {n}"})
        os.utime(next((tmp_path / "spool" / "withdrawn").glob(f"1.2_9.{n}.*")), (n, n))  # written in that order
    assert [spool.withdrawal("1.2", f"1.2.3.{n}") for n in range(3)] == [None, "why 1", "why 2"]
    again = dimse.Spool(tmp_path / "spool")
    assert [again.withdrawal("1.2", f"1.2.3.{n}") for n in range(3)] == [None, "why 1", "why 2"]
    assert sorted(p.name for p in (tmp_path / "spool" / "withdrawn").iterdir()) == [
        f"1.2_9.{n}{dimse.NOTE_SUFFIX}" for n in (1, 2)]
    (tmp_path / "spool" / "withdrawn" / f"1.2_9.2{dimse.NOTE_SUFFIX}").write_text("[")
    with pytest.raises(ValueError, match=r"1\.2_9\.2\.note\.json cannot be read .*which films it withdraws is not "
                                         "known; restore or delete it"):
        dimse.Spool(tmp_path / "spool")


def test_a_stop_while_a_rejection_note_is_kept_waits_for_it_tells_of_its_film_and_refuses_what_comes_after(
    tiny_bundle: Path, destination: Destination_SCP, film: np.ndarray, tmp_path: Path,
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A film scored and its SR stored; its rejection note's C-STORE arrives and, while its withdrawals are being
    written, the listener is stopped with the note's association still open. The stop waits for the note to be
    kept, answered 0x0000, and tells of its film scored already (a warning and an audit line) before it returns,
    never after an association end that may not come; what that association sends after the stop (another note, a
    film) is refused with 0xA700, for the sender to send again later; its release tells of nothing twice."""
    caplog.set_level(logging.INFO, logger="pneumoscan")
    audit = AuditLog(tmp_path / "audit.jsonl")
    (work := tmp_path / "work").mkdir()
    listener = Listener(tiny_bundle, "PNEUMOSCAN", Destination("DEST", "127.0.0.1", destination.port), work,
                        backend="torch", spool=tmp_path / "spool", audit=audit)
    server = listener.start("127.0.0.1", 0)
    entered, go_on = threading.Event(), threading.Event()
    remember = dimse.Spool.remember

    def slow(self: dimse.Spool, *args: object) -> None:
        entered.set()
        go_on.wait(WAIT_S)
        remember(self, *args)

    data = chest_dicom(film, StudyInstanceUID=(study := generate_uid()))
    source = pydicom.dcmread(io.BytesIO(data))
    try:
        assert send(server.server_address[1], [data]) == [0]
        wait_for(lambda: f"study {study}: reports of 1 of 1 films stored" in caplog.text)
        monkeypatch.setattr(dimse.Spool, "remember", slow)
        ae = AE(ae_title="MODALITY")
        for sop_class in (KeyObjectSelectionDocumentStorage, source.SOPClassUID):
            ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
        assoc = associate(ae, server.server_address[1])
        note = pydicom.dcmread(io.BytesIO(key_object_selection(codes.DCM.RejectedForQualityReasons, [source])))
        answers: list[int] = []
        sending = threading.Thread(target=lambda: answers.append(int(assoc.send_c_store(note).Status)))
        sending.start()
        assert entered.wait(WAIT_S)  # the note received, its withdrawals being written
        server.shutdown()
        stopping = threading.Thread(target=listener.stop)
        stopping.start()
        stopping.join(0.3)
        assert stopping.is_alive()  # waiting for the note
        go_on.set()
        stopping.join(WAIT_S)
        sending.join(WAIT_S)
        assert not stopping.is_alive() and answers == [0]
        told = [line for line in audit_lines(audit) if line["event"] == "scored_film_withdrawn"]
        assert [line["sop_instance_uid"] for line in told] == [source.SOPInstanceUID]
        assert f"study {study}: the film {source.SOPInstanceUID}, scored already, is withdrawn" in caplog.text
        again = key_object_selection(codes.DCM.RejectedForQualityReasons, [source])
        for late in (again, chest_dicom(film, StudyInstanceUID=study)):
            answer = assoc.send_c_store(pydicom.dcmread(io.BytesIO(late)))
            assert (int(answer.Status), answer.ErrorComment) == (0xA700, dimse.STOPPING)
        assoc.release()
        wait_for(lambda: not list(work.glob("association-*")))
    finally:
        go_on.set()
    assert [line["event"] for line in audit_lines(audit)].count("scored_film_withdrawn") == 1
    assert destination.received and all(str(sr.StudyInstanceUID) == study for sr in destination.received)


def test_a_stop_waits_for_a_rejection_note_being_kept_for_a_bounded_time_and_says_so(
    tiny_bundle: Path, film: np.ndarray, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A rejection note whose withdrawals take longer to write than STOP_WAIT_S (a disk that hangs) does not hang
    the stop: it returns after that long with an error line that the films the note withdraws scored already are
    not told of, and the note, once kept, is refused 0xA700 (send it again later), not taken as told of."""
    monkeypatch.setattr(dimse, "STOP_WAIT_S", 0.2)
    entered, go_on = threading.Event(), threading.Event()
    monkeypatch.setattr(dimse.Spool, "remember", lambda *args: entered.set() or go_on.wait(WAIT_S))
    listener = Listener(tiny_bundle, "PNEUMOSCAN", Destination("DEST", "127.0.0.1", 104), tmp_path, backend="torch")
    server = listener.start("127.0.0.1", 0)
    note = key_object_selection(codes.DCM.RejectedForQualityReasons, [pydicom.dcmread(io.BytesIO(chest_dicom(film)))])
    statuses: list[int] = []
    sending = threading.Thread(target=lambda: statuses.extend(send(server.server_address[1], [note])))
    try:
        sending.start()
        assert entered.wait(WAIT_S)
        server.shutdown()
        began = time.monotonic()
        listener.stop()
        assert time.monotonic() - began < 5.0
    finally:
        go_on.set()
        sending.join(WAIT_S)
    assert statuses == [0xA700]
    assert "a rejection note was still being kept 0.2 s after the stop: it is refused once kept (0xA700, sent again " \
        "later), as the films it withdraws that were scored already are not told of" in caplog.text


def test_a_listener_without_a_spool_warns_at_start_that_rejection_notes_are_forgotten_at_its_stop(
    tiny_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Without --spool the withdrawals rejection notes bring live in the temporary folder, gone at a stop: the start
    warning says so (a film they withdraw, sent again after a restart, is scored); with --spool there is none."""
    for spool in (None, tmp_path / "spool"):
        caplog.clear()
        listener = Listener(tiny_bundle, "PNEUMOSCAN", Destination("DEST", "127.0.0.1", 104), tmp_path,
                            backend="torch", spool=spool)
        listener.start("127.0.0.1", 0).shutdown()
        listener.stop()
        said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "no spool" in r.getMessage()]
        assert said == ([] if spool else [
            "no spool (--spool): reports the destination has not confirmed when the listener stops are lost with its "
            "temporary folder, and so are the films rejection notes withdraw: one sent again after a restart is "
            "scored"])


def test_a_listener_loads_its_bundle_once_and_scores_every_study_with_the_model_it_loaded(
    tiny_bundle: Path, destination: Destination_SCP, film: np.ndarray, tmp_path: Path,
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The bundle is loaded (the real Stages.load, counted) once, when the listener is made, not again for each study
    (0.1 s a study for a tiny model, seconds for a large one or an ensemble); as serve, a bundle damaged on disk since
    changes none of its readings: a study sent after is scored, its SR naming the model the first study's names.
    Each change of the files, silent until a restart, is a warning once, at the first study scored after it (the
    check each study's scoring makes, asked again here without a study), and every study's audit lines say what the
    check found (bundle_on_disk), so that each reading made after a change is found: the weights damaged, nothing
    more when nothing changed, then the card re-thresholded in place (`threshold --out` on the bundle itself). A
    check that does not answer within its bound is a warning once and returns at once for the next study: a folder
    whose stat hangs is "silent", one whose stat answered with a change being read is "reading" (a large bundle, a
    slow drive; it had been said as a hung drive) until a file's read has not answered for BUNDLE_READ_S, then
    "silent" (a drive that hangs as it is read: it had been "reading" for ever); a fault of the check itself is an
    error line, not the study's."""
    caplog.set_level(logging.INFO, logger="pneumoscan")
    loads: list[str] = []
    real = Stages.load

    def counted(cls: type[Stages], bundle: Path | str, *args: object, **kwargs: object) -> Stages:
        loads.append(os.path.realpath(bundle))
        return real(bundle, *args, **kwargs)

    monkeypatch.setattr(Stages, "load", classmethod(counted))
    bundle = copy_bundle(tiny_bundle, tmp_path)
    weights = (bundle / WEIGHTS).read_bytes()
    (work := tmp_path / "listener").mkdir()
    audit = AuditLog(tmp_path / "audit.jsonl")
    listener = Listener(bundle, "PNEUMOSCAN", Destination("DEST", "127.0.0.1", destination.port), work,
                        backend="torch", audit=audit)
    server = listener.start("127.0.0.1", 0)

    def changes(level: int = logging.WARNING) -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno == level
                and r.name in (on_disk.log.name, dimse.log.name) and "bundle" in r.getMessage()]

    seen = []
    try:
        studies = [generate_uid(), generate_uid()]
        for study in studies:
            assert send(server.server_address[1], [chest_dicom(film, StudyInstanceUID=study)]) == [0]
            # its reports sent, or the study refused (an error line)
            wait_for(lambda: bool(re.search(f"study {study}: (reports of|not scored: )", caplog.text)))  # noqa: B023
            seen.append(len(changes()))
            if study == studies[0]:  # the weights on disk damaged once the first study is done
                flip_one_bit(bundle / WEIGHTS, data_start(bundle / WEIGHTS))
    finally:
        server.shutdown()
        listener.stop()
    assert loads == [os.path.realpath(bundle)]
    for study in studies:
        assert f"study {study}: reports of 1 of 1 films stored" in caplog.text
    first, second = (_algorithm(sr) for sr in destination.received)
    assert first == second and first[1].startswith("sha256:")
    reads = [line for line in audit_lines(audit) if line["event"] == "film_read"]
    assert [(line["study_instance_uid"], line["bundle_on_disk"]) for line in reads] == [
        (studies[0], None), (studies[1], "damaged")]
    found = [listener._check_bundle()]  # nothing changed since
    seen.append(len(changes()))
    (bundle / WEIGHTS).write_bytes(weights)
    card = load_card(bundle)
    save_card(bundle, at_threshold(card, threshold=card.threshold / 2))
    found.append(listener._check_bundle())
    seen.append(len(changes()))
    # BUNDLE_READ_S as it is (30 s): "reading" while the read is held, whatever the machine's load
    monkeypatch.setattr(on_disk, "BUNDLE_WAIT_S", wait_s := 0.05)  # the checks below held until answers.set()
    for held, stalled in ((on_disk, "file_stamp"), (on_disk, "verify_file")):  # the stat, then the read
        answers, entered, real_call = threading.Event(), threading.Event(), getattr(held, stalled)

        def stall(*a: object, f: Callable = real_call, e: threading.Event = answers,
                  i: threading.Event = entered) -> object:
            i.set()
            return e.wait(WAIT_S) and f(*a)

        monkeypatch.setattr(held, stalled, stall)
        if stalled == "verify_file":
            save_card(bundle, card)  # a change whose files are read: the card put back, said of nothing once read
        try:
            listener.on_disk.checking()
            assert entered.wait(WAIT_S)  # the check held at its stat, or at its read
            check, waits = listener.on_disk.checking(), []
            wait = check.answer.result
            check.answer.result = lambda timeout, r=wait, w=waits: w.append(timeout) or r(timeout)  # type: ignore
            found.append(listener._check_bundle())
            found.append(listener._check_bundle())  # the next study: the same check, said already
            # which waits no more: the check's BUNDLE_WAIT_S is spent (its wait's bound: load lengthens any time)
            assert waits[1] == 0.0 and listener.on_disk.checking() is check, waits
            if stalled == "verify_file":  # the read held past BUNDLE_READ_S without a file read: a drive that hangs
                with monkeypatch.context() as m:  # on the check's clock, moved on by that bound
                    m.setattr(on_disk, "time", ClockAhead(on_disk.BUNDLE_READ_S))
                    found.append(listener._check_bundle())
        finally:
            answers.set()
        monkeypatch.setattr(held, stalled, real_call)
        wait_for(lambda: listener.on_disk._checking is None)  # the held check ended
    monkeypatch.setattr(on_disk.BundleOnDisk, "changed", lambda self, check=None: 1 / 0)
    monkeypatch.setattr(on_disk, "BUNDLE_WAIT_S", WAIT_S)  # the fault waited for, however late a loaded machine says it
    os.utime(bundle / WEIGHTS)
    found += [listener._check_bundle(), listener._check_bundle()]
    assert seen == [0, 1, 1, 2] and len(changes()) == 5
    assert found == ["damaged", "replaced", "silent", "silent", "reading", "reading", "silent", "failed", "failed"]
    named = (f"model_version {listener.model['model_version']} in its reports, bundle_checksum "
             f"{listener.model['bundle_checksum']} in its audit lines")
    damaged, replaced, silent, reading, held = changes()
    assert damaged.startswith(f"{dimse.BUNDLE_DAMAGED.format(named)}: {bundle / WEIGHTS} is damaged")
    assert replaced == f"{dimse.BUNDLE_REPLACED.format(named)} ({bundle}: bundle.json changed, its weights the same)"
    assert silent == dimse.BUNDLE_SILENT.format(wait_s)
    assert reading == dimse.BUNDLE_READING.format(wait_s, named)
    assert held == silent
    assert changes(logging.ERROR) == [f"{dimse.BUNDLE_CHECK_FAILED.format(named)}: division by zero"]


def _algorithm(sr: Dataset) -> tuple[str, str]:
    """The algorithm name and version an SR's measurement names (TID 4019: the model that scored the film)."""
    found = []

    def walk(items: list[Dataset]) -> None:
        for item in items:
            if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue in ("111001", "111003"):
                found.append(str(item.TextValue))
            walk(item.get("ContentSequence", []))

    walk(sr.ContentSequence)
    return found[0], found[1]


def test_a_listener_whose_bundle_cannot_load_is_refused_before_it_listens(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bundle whose weights are damaged is refused when the listener is made, with the reason, before any
    association: every study it was sent was an error line. So is a bundle replaced while its model loads (seconds
    for ONNX or an ensemble; re-thresholded in place here): the files were stamped after the load, so the change was
    never warned of, and the audit lines named the new card's checksum for the model of the old."""
    bundle = copy_bundle(tiny_bundle, tmp_path)
    real = dimse.ready_stages

    def replaced_meanwhile(*args: object, **kwargs: object) -> Stages:
        card = load_card(bundle)
        save_card(bundle, at_threshold(card, threshold=card.threshold / 2))
        return real(*args, **kwargs)

    monkeypatch.setattr(dimse, "ready_stages", replaced_meanwhile)
    with pytest.raises(ValueError, match=re.escape(f"the bundle {bundle} was replaced while its model was loaded")):
        Listener(bundle, "PNEUMOSCAN", Destination("DEST", "127.0.0.1", 104), tmp_path, backend="torch")
    monkeypatch.setattr(dimse, "ready_stages", real)
    flip_one_bit(bundle / WEIGHTS, data_start(bundle / WEIGHTS))
    with pytest.raises(ValueError, match="model.safetensors is damaged"):
        Listener(bundle, "PNEUMOSCAN", Destination("DEST", "127.0.0.1", 104), tmp_path, backend="torch")
