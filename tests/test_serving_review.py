"""Requests and answers that could have turned into a reading nobody asked for, a refusal nobody could act on, or a
record nobody made: a query parameter sent twice, a ``file`` part that is text, a compressed body, a preamble-less
DICOM sent as generic binary, a request that is not valid HTTP, a model that fails every run while /healthz says ok,
and a PACS whose search or store answer is no DICOM JSON, or lists a report as both stored and failed. Each is
refused, reported, or counted unconfirmed, with a reason a client can act on."""

from __future__ import annotations

import gzip
import json
import socket
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from pneumoscan.data.decode import read_gray
from pneumoscan.inference.predict import Predictor
from pneumoscan.interop.dicomweb import _answer, _post, _session, _stored, predict_study
from pneumoscan.models.card import load_card
from pneumoscan.serving.app import create_app
from pneumoscan.serving.server import MALFORMED_HTTP
from tests import test_serve
from tests.builders import dicom_bytes
from tests.test_interop import _Quiet, _request_body, serving
from tests.test_serve_limits import live


xray, client = test_serve.xray, test_serve.client  # a real film, and a TestClient of the tiny bundle


def multipart(*parts: bytes, boundary: str = "review") -> tuple[bytes, dict[str, str]]:
    """A multipart/form-data body of ``parts`` (each its headers, a blank line and its content) and its headers."""
    body = b"".join(f"--{boundary}\r\n".encode() + part + b"\r\n" for part in parts) + f"--{boundary}--\r\n".encode()
    return body, {"content-type": f"multipart/form-data; boundary={boundary}"}


def file_part(data: bytes, filename: str | None = "film.jpeg") -> bytes:
    """A part named ``file``: a file part with ``filename``, or, with None, what a form's text field sends."""
    named = f'; filename="{filename}"' if filename is not None else ""
    return f'Content-Disposition: form-data; name="file"{named}\r\nContent-Type: image/jpeg\r\n\r\n'.encode() + data


def assert_refused(r: httpx.Response, status: int, words: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json" and words in r.json()["error"], r.json()


# ---------------------------------------------------------------- the service


@pytest.mark.parametrize("query, named", [
    ("heatmap=true&heatmap=false", "heatmap"),  # answered without the heatmap asked for first
    ("format=fhir&format=json", "format"),  # a FHIR client got JSON
    ("image=true&image=true&format=json", "image"),
])
def test_a_query_parameter_sent_twice_is_refused_naming_it(client: TestClient, query: str, named: str) -> None:
    """Only the last value counted, and the answer did not say which: refused before the upload is read."""
    dicom = dicom_bytes(None)  # never read: the refusal comes first
    r = client.post(f"/v1/predict?{query}", files={"file": ("film.dcm", dicom, "application/dicom")})
    assert_refused(r, 422, f"query parameter(s) {named} sent more than once")


def test_a_file_field_without_a_filename_is_said_to_be_text(client: TestClient, xray: bytes) -> None:
    """A part without filename= is a text field: "send the image in a field named 'file'" told a client that did
    exactly that nothing it could act on; and beside a file part, it had the file read as if it were the only one."""
    body, headers = multipart(file_part(xray, filename=None))
    assert_refused(client.post("/v1/predict", content=body, headers=headers), 400,
                   "the field 'file' holds text (a part without a filename)")
    body, headers = multipart(file_part(b"a note", filename=None), file_part(xray))
    assert_refused(client.post("/v1/predict", content=body, headers=headers), 400, "2 parts named 'file'")
    body, headers = multipart(file_part(xray))
    assert client.post("/v1/predict", content=body, headers=headers).status_code == 200  # the same film, as a file


@pytest.mark.parametrize("field, value", [("heatmap", b"true"), ("format", b"fhir"), ("patient", b"Doe^Jane")])
def test_a_part_besides_the_file_is_refused_naming_it(client: TestClient, xray: bytes, field: str,
                                                      value: bytes) -> None:
    """An option sent as a form field (curl -F heatmap=true) was dropped: the film was read and answered without the
    heatmap or the format asked for, and the client was not told, as a query parameter the API does not take is."""
    extra = f'Content-Disposition: form-data; name="{field}"\r\n\r\n'.encode() + value
    body, headers = multipart(file_part(xray), extra)
    r = client.post("/v1/predict", content=body, headers=headers)
    assert_refused(r, 400, f"part(s) besides 'file': {field}")
    assert "query string" in r.json()["error"] and "Doe" not in r.json()["error"]  # names, never values


def test_a_compressed_body_is_415_naming_the_encoding_it_takes(client: TestClient, xray: bytes) -> None:
    """A gzip-encoded upload was parsed still compressed and refused as having no file (400): nothing said why."""
    body, headers = multipart(file_part(xray))
    r = client.post("/v1/predict", content=gzip.compress(body), headers={**headers, "content-encoding": "gzip"})
    assert_refused(r, 415, "a compressed request body (Content-Encoding) is not read")
    assert r.headers["accept-encoding"] == "identity"
    assert client.post("/v1/predict", content=body, headers={**headers, "content-encoding": "identity"}).status_code \
        == 200


def test_a_dicom_without_its_preamble_sent_as_generic_binary_is_told_how_to_send_it(client: TestClient) -> None:
    """Sent as application/octet-stream under a name without .dcm, it had been "not a JPEG, PNG or DICOM image": a
    client that sent a DICOM learnt nothing it could act on."""
    film = dicom_bytes(np.full((64, 64), 100, np.uint16) + np.arange(64, dtype=np.uint16), preamble=False)
    r = client.post("/v1/predict", files={"file": ("film", film, "application/octet-stream")})
    assert_refused(r, 415, "without its 128-byte preamble is read when sent as application/dicom or named *.dcm")
    assert client.post("/v1/predict", files={"file": ("film", film, "application/dicom")}).status_code == 200
    # bytes of another kind are not told how a DICOM is read
    r = client.post("/v1/predict", files={"file": ("notes", b"Patient notes\n" * 20, "application/octet-stream")})
    assert_refused(r, 415, "not a JPEG, PNG or DICOM image")
    assert "preamble" not in r.json()["error"]


@pytest.mark.parametrize("request_head", [
    b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",  # no coding h11 reads
    b"GET /v1/model HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header: x\r\n\r\n",  # a space in a header's name
])
def test_a_request_that_is_not_valid_http_gets_a_json_refusal_with_the_security_headers(tiny_bundle: Path,
                                                                                      request_head: bytes) -> None:
    """uvicorn answered it in plain text, without nosniff or the Content-Security-Policy every answer carries."""
    with live(create_app(tiny_bundle)) as url:
        with socket.create_connection(("127.0.0.1", int(url.rpartition(":")[2])), 10) as s:
            s.sendall(request_head)
            answer = b""
            while chunk := s.recv(65536):  # the connection is closed after it
                answer += chunk
        metrics = httpx.get(f"{url}/metrics").text  # counted, though it never reached the app
    assert 'pneumoscan_refusals_total{reason="bad_request"} 1.0' in metrics
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and b"content-type: application/json" in head.lower(), answer
    assert b"x-content-type-options: nosniff" in head.lower() and b"content-security-policy:" in head.lower()
    assert json.loads(body) == {"error": MALFORMED_HTTP, "reason": "bad_request"}


def test_health_says_degraded_while_the_models_last_run_failed(tiny_bundle: Path, xray: bytes,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A model that raises on every run answered each prediction 500 while /healthz said "ok": a balancer kept
    sending it films. Degraded (200: the next run may succeed) with the kind of error, and ok once a run succeeds."""
    with TestClient(create_app(tiny_bundle), raise_server_exceptions=False) as c:
        assert c.get("/healthz").json()["status"] == "ok"
        with monkeypatch.context() as m:
            m.setattr(Predictor, "probabilities", lambda self, images, tta=False: 1 / 0)
            assert c.post("/v1/predict", files={"file": ("x.jpeg", xray, "image/jpeg")}).status_code == 500
            health = c.get("/healthz")
            assert health.status_code == 200 and health.json()["status"] == "degraded"
            assert "last run of a model failed with an internal error (ZeroDivisionError" in health.json()["reason"]
        assert c.post("/v1/predict", files={"file": ("x.jpeg", xray, "image/jpeg")}).status_code == 200
        assert c.get("/healthz").json() == {"status": "ok", "model_id": load_card(tiny_bundle).model_id,
                                            "model_version": c.get("/v1/model").json()["version"]}


# ---------------------------------------------------------------- reports


def chest_film(xray: bytes, **tags: object) -> bytes:
    """``xray`` as an in-scope frontal chest DX of a patient, with ``tags`` added."""
    pixels = read_gray(xray).astype(np.uint16) * 16
    return dicom_bytes(pixels, StudyInstanceUID=generate_uid(), SeriesInstanceUID=generate_uid(), PatientID="MRN-7",
                       BodyPartExamined="CHEST", ViewPosition="PA", PatientAge="004Y", **tags)


def issued_by(kind: str, entity: str) -> list[Dataset]:
    qualifiers = Dataset()
    qualifiers.UniversalEntityID, qualifiers.UniversalEntityIDType = entity, kind
    return [qualifiers]


@pytest.mark.parametrize("kind, entity, system", [
    ("ISO", "1.2.840.113619", "urn:oid:1.2.840.113619"),
    ("UUID", "2F1E3A5C-0B7D-4E8F-9A6B-1C2D3E4F5A6B", "urn:uuid:2f1e3a5c-0b7d-4e8f-9a6b-1c2d3e4f5a6b"),
    ("URI", "https://hospital.example/patients", "https://hospital.example/patients"),
])
def test_the_fhir_subject_names_its_issuer_by_a_valid_system_uri(client: TestClient, xray: bytes, kind: str,
                                                                  entity: str, system: str) -> None:
    film = chest_film(xray, IssuerOfPatientIDQualifiersSequence=issued_by(kind, entity))
    r = client.post("/v1/predict?format=fhir", files={"file": ("film.dcm", film, "application/dicom")})
    assert r.status_code == 200, r.text
    assert r.json()["subject"]["identifier"] == {"system": system, "value": "MRN-7"}


@pytest.mark.parametrize("kind, entity", [("ISO", "General Hospital"), ("UUID", "General Hospital"),
                                          ("URI", "General Hospital"),
                                          ("URI", "https://h\u00f4pital.example/patients")])  # an IRI or a misread byte
def test_an_issuer_that_is_not_what_its_type_says_gets_no_observation(client: TestClient, xray: bytes, kind: str,
                                                                      entity: str) -> None:
    """An ISO issuer given by its name had the Observation's subject in the system "urn:oid:General Hospital", which
    names no one's patients: a receiver matching the patient by system and value would not find the film's. A URI
    holds ASCII only: a letter beyond it (an IRI, or a byte pydicom read in a guessed character set) was copied."""
    film = chest_film(xray, IssuerOfPatientIDQualifiersSequence=issued_by(kind, entity))
    r = client.post("/v1/predict?format=fhir", files={"file": ("film.dcm", film, "application/dicom")})
    assert_refused(r, 422, f"IssuerOfPatientIDQualifiersSequence is malformed (its UniversalEntityID is not the {kind} "
                           "identifier its UniversalEntityIDType says)")
    assert entity not in r.text


# ---------------------------------------------------------------- a PACS's answers


def answering(status: int, body: bytes, content_type: str = "application/dicom+json") -> type[_Quiet]:
    """A stand-in PACS that answers every GET and POST with ``status`` and ``body``."""

    class Canned(_Quiet):
        def _answer(self) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self._answer()

        def do_POST(self) -> None:
            _request_body(self)
            self._answer()

    return Canned


@pytest.mark.parametrize("search", ["null", '["1.2.3"]', '[[1]]', '{"error": "study search is not allowed"}'])
def test_a_search_answer_that_is_no_dicom_json_is_refused_with_a_reason(tiny_bundle: Path, search: str) -> None:
    """A JSON null or a list of strings ended the run in a traceback (TypeError, AttributeError); a JSON error
    object was taken for an instance without a UID, and refused as a PACS that ignores the search's offset."""
    with serving(answering(200, search.encode())) as port:
        with pytest.raises(ValueError, match=r"the PACS answered the instance search with JSON that is not DICOM JSON "
                                             r".*: check that url \(--url\) is its DICOMweb root"):
            predict_study(tiny_bundle, f"http://127.0.0.1:{port}/dicom-web", "1.2.3")


def test_a_search_answered_by_a_web_page_is_refused_saying_so(tiny_bundle: Path) -> None:
    """A proxy's sign-on page (or a web interface at --url) answering 200 had ended the run in the JSON parser's words
    alone, ``Expecting value: line 1 column 1 (char 0)``, which named neither the answer nor what to check."""
    with serving(answering(200, b"<html><body>Please sign in</body></html>", "text/html")) as port:
        with pytest.raises(ValueError, match=r"the PACS answered the instance search with something that is not JSON "
                                             r".*: check that url \(--url\) is its DICOMweb root"):
            predict_study(tiny_bundle, f"http://127.0.0.1:{port}/dicom-web", "1.2.3")


SR = "1.2.826.0.1.3680043.8.498.1"
REFERENCED = {"00081155": {"vr": "UI", "Value": [SR]}}


@pytest.mark.parametrize("answer, warning", [
    # stored and failed at once: the PACS does not say it holds the report
    ({"00081199": {"vr": "SQ", "Value": [REFERENCED]},
      "00081198": {"vr": "SQ", "Value": [{**REFERENCED, "00081197": {"vr": "US", "Value": [0x0110]}}]}},
     f"the PACS refused the DICOM SR {SR} (0x0110: processing failure): it is not stored"),
    # the sequences as no sequence (a UI value): had ended the whole study in a traceback, after earlier films' stores
    ({"00081199": {"vr": "UI", "Value": [SR]}}, f"the PACS did not confirm storing the DICOM SR {SR}: it may not be"),
    ({"00081198": {"vr": "UI", "Value": [SR]}}, f"the PACS did not confirm storing the DICOM SR {SR}: it may not be"),
])  # fmt: skip
def test_a_store_answer_that_does_not_say_the_report_is_stored_leaves_it_unstored(answer: dict, warning: str) -> None:
    with serving(answering(200, json.dumps(answer).encode())) as port:
        root, session = _session(f"http://127.0.0.1:{port}/dicom-web", None)
        response = _post(session, f"{root}/studies/1.2.3", [b"a report"])
    row: dict = {}
    assert _stored(_answer(response), {SR: "DICOM SR"}, row) == []
    assert row["not_stored"] == [SR] and len(row["warnings"]) == 1 and row["warnings"][0].startswith(warning)
