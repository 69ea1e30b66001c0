"""Where a patient's identity may and may not go: the outputs of a real `predict` of a DICOM film that names its
patient in every attribute that can, the permissions of a results file a run writes again, the service's log
line for a bug whose message quotes a value of the film, and its refusal of a film whose header holds a name where
a decode check reads a value."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import generate_uid
from starlette.types import Receive, Scope, Send

from pneumoscan import cli
from pneumoscan.data.decode import read_gray
from pneumoscan.data.scope import NOT_SHOWN, describe, scope_warnings
from pneumoscan.inference.predict import Predictor
from pneumoscan.interop.study import not_scored
from pneumoscan.serving.app import create_app
from pneumoscan.serving.guard import Access, Guard
from tests.builders import dicom_bytes

# Each identifying attribute with a value found nowhere else, so that a hit names the attribute that leaked.
IDENTITY = {
    "PatientName": "Zyxwell^Quenby^Marta", "PatientID": "MRN99887766", "PatientBirthDate": "20200229",
    "AccessionNumber": "ACCX55443", "ReferringPhysicianName": "Drplexo^Wilhelmina",
    "InstitutionName": "Hospitalia Secretissima", "InstitutionAddress": "7 Instaddrsecret Road",
    "PatientAddress": "42 Addrsecret Lane", "OtherPatientIDs": "OPIDSECRET77",
    "ImageComments": "commentsecret: fell off a bike", "StudyDescription": "studydescsecret",
}  # fmt: skip
SCOPE = {"Modality": "DX", "BodyPartExamined": "CHEST", "ViewPosition": "PA", "PatientAge": "003Y",
         "PatientSex": "F", "StudyDate": "20230315", "StudyTime": "101500", "StudyID": "7", "SeriesNumber": 1,
         "InstanceNumber": 1}  # fmt: skip
# What a report filed in the film's study carries of them: the Patient and General Study modules, which a PACS needs
# to file it with the patient and the study. The rest (where the patient lives, other ids, the site, free text)
# has no place in it.
REPORTED = {"PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "ReferringPhysicianName",
            "StudyDescription"}


def _words(keyword: str) -> list[str]:
    """The parts of an attribute's value that would give it away (a person name's components each)."""
    return [w for w in IDENTITY[keyword].replace("^", " ").split() if len(w) > 4]


def _leaks(text: str, keywords: set[str] | None = None) -> list[str]:
    return sorted(k for k in (keywords or IDENTITY.keys()) if any(w in text for w in _words(k)))


@pytest.fixture
def named_film(data_root: Path, tmp_path: Path) -> Path:
    """A real film as an in-scope DICOM that names its patient in every attribute of :data:`IDENTITY`."""
    pixels = read_gray(sorted((data_root / "train" / "PNEUMONIA").glob("*.jpeg"))[0]).astype(np.uint16) * 16
    path = tmp_path / "films" / "film.dcm"
    path.parent.mkdir()
    path.write_bytes(dicom_bytes(pixels, **SCOPE, **IDENTITY, StudyInstanceUID=generate_uid(),
                                 SeriesInstanceUID=generate_uid()))
    return path


def test_predict_reports_carry_only_the_identity_they_need_and_nothing_else_names_the_patient(
    tiny_bundle: Path, named_film: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture,
) -> None:
    """At DEBUG, every library's log included: the results file, the log and stderr name no one; the FHIR
    Observation names the patient by id alone; the SR and the overlay carry the Patient and General Study modules,
    not the patient's address, other ids, the institution or the film's free text."""
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "r.csv"
    assert cli.main(["predict", str(tiny_bundle), str(named_film), "--out", str(out), "--backend", "torch",
                     "--heatmaps", str(tmp_path / "h"), "--dicom-sr", str(tmp_path / "sr"),
                     "--fhir", str(tmp_path / "fhir")]) == 0
    [row] = csv.DictReader(out.open())
    assert row["dicom_sr"] and row["dicom_heatmap"] and row["fhir"]
    assert any(r.name.startswith("highdicom") for r in caplog.records)  # the report writers' records were captured
    captured = capsys.readouterr()
    for where, text in (("log", caplog.text), ("stderr", captured.err), ("stdout", captured.out),
                        ("results", out.read_text())):
        assert _leaks(text) == [], where
    observation = json.loads(Path(row["fhir"]).read_text())
    assert observation.pop("subject") == {"type": "Patient", "identifier": {"value": IDENTITY["PatientID"]}}
    assert _leaks(json.dumps(observation)) == []
    for report in (row["dicom_sr"], row["dicom_heatmap"]):
        ds = pydicom.dcmread(report)
        assert str(ds.PatientName) == IDENTITY["PatientName"] and ds.PatientID == IDENTITY["PatientID"]
        held: list[str] = []
        ds.walk(lambda _, element: held.append(str(element.value)) if element.VR != "SQ" else None)
        assert _leaks("\n".join(held), set(IDENTITY) - REPORTED) == [], report


def test_a_coded_element_holding_free_text_is_named_by_its_keyword_never_repeated(
    tiny_bundle: Path, data_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture,
) -> None:
    """A Modality, BodyPartExamined or view that is no DICOM defined term (here the patient's name and id, typed
    where a device writes DX, CHEST or PA) was repeated in its scope warning, and so in the results, the log, the
    refusal of a report, the page's facts and ``pacs``'s reason for not scoring an instance. Each is named by its
    keyword, said to be out of scope, its value not shown; a defined term is still named (test_interop)."""
    typed = {"Modality": "ZYXWELL", "BodyPartExamined": "QUENBY MARTA", "ViewPosition": "MRN99887766"}
    secrets = ("ZYXWELL", "QUENBY", "MARTA", "MRN99887766")
    pixels = read_gray(sorted((data_root / "train" / "NORMAL").glob("*.jpeg"))[0]).astype(np.uint16) * 16
    film = tmp_path / "film.dcm"
    film.write_bytes(dicom_bytes(pixels, **{**SCOPE, **typed}, StudyInstanceUID=generate_uid(),
                                 SeriesInstanceUID=generate_uid()))
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "r.json"
    assert cli.main(["predict", str(tiny_bundle), str(film), "--out", str(out), "--backend", "torch",
                     "--dicom-sr", str(tmp_path / "sr"), "--fhir", str(tmp_path / "fhir")]) == 0
    [row] = json.loads(out.read_text())
    said = [f"Modality {NOT_SHOWN} is not a radiograph (CR/DX)", f"BodyPartExamined {NOT_SHOWN} is not CHEST",
            f"view {NOT_SHOWN} is not frontal (PA/AP)"]
    assert [w.split(":")[0] for w in row["warnings"][:3]] == said and row["in_scope"] is False
    refusals = [w for w in row["warnings"] if w.startswith(("no DICOM SR written", "no FHIR Observation written"))]
    assert len(refusals) == 2 and all(all(s in w for s in said) for w in refusals)  # whole, not cut by redaction
    # the page's facts, and the reasons of pacs for an instance it does not retrieve, judged on its search answer
    facts = describe(str(film), dicom=True, facts=True)
    assert (facts["modality"], facts["view"]) == (NOT_SHOWN, NOT_SHOWN)
    answer = Dataset()
    answer.Modality, answer.BodyPartExamined = typed["Modality"], typed["BodyPartExamined"]
    form = not_scored(answer)
    answer.Modality = "DX"
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "99", "99LOCAL", "Quenby Marta"
    coded = Dataset()
    coded.ViewCodeSequence = [code]
    texts = {"results": out.read_text(), "log": caplog.text, "stderr": capsys.readouterr().err, "facts": str(facts),
             "pacs": f"{form} {not_scored(answer)}", "view code": str(scope_warnings(coded, 500, 500))}
    assert texts["pacs"].startswith(f"Modality {NOT_SHOWN}, SOP class not given") and NOT_SHOWN in texts["view code"]
    assert {where: [s for s in secrets if s in text.upper()] for where, text in texts.items()} == dict.fromkeys(
        texts, [])


def test_a_results_file_made_private_stays_private_when_a_run_writes_it_again(
    tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    """A results file names films by path and a report by patient: one its user had made private (chmod 600) came
    back readable by every user of the machine once a run replaced it. A new one is made as the umask allows."""
    film = sorted((tiny_dataset / "test" / "NORMAL").glob("*.jpeg"))[0]
    out = tmp_path / "r.csv"
    args = ["predict", str(tiny_bundle), str(film), "--out", str(out), "--backend", "torch"]
    umask = os.umask(0o022)
    try:
        assert cli.main(args) == 0
        assert stat.S_IMODE(out.stat().st_mode) == 0o644
        out.chmod(0o600)
        assert cli.main(args) == 0
    finally:
        os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert [Path(r["path"]).name for r in csv.DictReader(out.open())] == [film.name]  # it was written again


def test_another_users_file_is_replaced_as_a_new_file_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The replacement is owned by whoever writes it: given the mode of a file a teammate owns (0640, their group
    reading), their results would become unreadable to them. Their file's mode is kept only for one's own files."""
    from pneumoscan.core.atomic import write_atomic

    path = tmp_path / "metrics.json"
    path.write_text("{}")
    path.chmod(0o640)
    real = os.geteuid()
    umask = os.umask(0o022)
    try:
        monkeypatch.setattr(os, "geteuid", lambda: real + 1)  # the file is another user's
        write_atomic(path, b'{"auc": 1}')
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        monkeypatch.setattr(os, "geteuid", lambda: real)  # one's own file keeps its mode
        path.chmod(0o640)
        write_atomic(path, b'{"auc": 0.9}')
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
    finally:
        os.umask(umask)


def test_an_internal_errors_log_line_quotes_no_value_of_the_film(
    tiny_bundle: Path, named_film: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug (here: the model raising as pydicom does, quoting a header's value) is one log line with the kind of
    error and its message, what the message quotes left out: no patient's name in the log, no traceback."""
    message = f"Invalid value for VR PN: '{IDENTITY['PatientName']}'"

    def failing(self: Predictor, images: np.ndarray, tta: bool = False) -> np.ndarray:
        raise ValueError(message)

    app = create_app(tiny_bundle)  # its start-up scores a test input: the model fails after it
    monkeypatch.setattr(Predictor, "probabilities", failing)
    caplog.set_level(logging.DEBUG)
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.post("/v1/predict", files={"file": ("film.dcm", named_film.read_bytes(), "application/dicom")})
    assert r.status_code == 500 and r.json() == {"error": "internal error", "reason": "internal_error"}
    [record] = [r for r in caplog.records if r.name == "pneumoscan.serving.guard"]
    assert re.fullmatch(r"internal error on POST /v1/predict: ValueError at test_privacy_review\.py:\d+ in failing: "
                        r"Invalid value for VR PN: '\.\.\.'", record.getMessage()), record.getMessage()
    assert record.exc_info is None and _leaks(caplog.text) == [] and "Traceback" not in caplog.text


def test_a_bug_after_the_answer_has_begun_reaches_the_server_without_the_value_it_quoted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Too late for a 500, the guard lets the server close the connection; the server logs what reaches it, and
    that must not be the message quoting the film's value either (the guard's own line has said the kind)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise ValueError(f"Invalid value for VR PN: '{IDENTITY['PatientName']}'")

    caplog.set_level(logging.DEBUG)
    with pytest.raises(RuntimeError) as raised:
        TestClient(Guard(app, None)).get("/")
    assert _leaks(str(raised.value)) == [] and raised.value.__cause__ is None and raised.value.__suppress_context__
    said = [r.getMessage() for r in caplog.records if r.name == "pneumoscan.serving.guard"]
    assert said and said[0].endswith(" in app: Invalid value for VR PN: '...'") and _leaks(caplog.text) == []


def _with_raw(data: bytes, tag: int, vr: str, text: str) -> bytes:
    """``data`` with element ``tag`` holding ``text`` as written, which pydicom would refuse to write (a name in a
    number's place)."""
    ds = pydicom.dcmread(io.BytesIO(data))
    value = text.encode() + b" " * (len(text) % 2)
    ds[tag] = RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


@pytest.mark.filterwarnings("ignore:Invalid value for VR")  # pydicom on the damaged header: expected
def test_a_film_the_service_cannot_read_is_refused_without_the_header_text_that_stopped_it(
    tiny_bundle: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A name written where a decode check reads a value (a number, a coded term, a UID) was repeated in the 422
    ("PixelSpacing Zyxwell\\0.1 is not two positive numbers", "invalid literal for int(): 'Zyxwell'"), and from there
    in a client's, a proxy's or the page's log. The refusal still names the element and what is wrong with it."""
    name = IDENTITY["PatientName"]
    film = dicom_bytes(np.arange(64 * 64).reshape(64, 64) % 4096, PatientName=name)
    syntax = b"1.2.840.10008.1.2.1\x00"  # Explicit VR Little Endian, as long as the name's text put in its place
    cases = {
        "malformed DICOM header": _with_raw(film, 0x00280008, "IS", "Zyxwell"),  # NumberOfFrames
        "PixelSpacing (text, not repeated here) is not two positive numbers":
            _with_raw(film, 0x00280030, "DS", "Zyxwell\\0.1"),
        "Photometric Interpretation is no term DICOM defines": _with_raw(film, 0x00280004, "CS", "Zyxwell Quenby"),
        "Photometric Interpretation holds 2 values, where a film has one":
            _with_raw(film, 0x00280004, "CS", "MONOCHROME2\\Zyxwell"),
        "(a transfer syntax that is no UID)": film.replace(syntax, b"Zyxwell^Quenby.1.2.3"),
    }  # fmt: skip
    caplog.set_level(logging.DEBUG)
    with TestClient(create_app(tiny_bundle)) as client:
        for said, data in cases.items():
            r = client.post("/v1/predict", files={"file": ("film.dcm", data, "application/dicom")})
            assert r.status_code == 422 and said in r.json()["error"], r.text
            assert not re.search("zyxwell|quenby", r.text, re.IGNORECASE), r.text
    assert not re.search("zyxwell|quenby", caplog.text, re.IGNORECASE)


def test_the_api_key_is_in_no_repr_of_the_access_rules_or_the_app(tiny_bundle: Path) -> None:
    """A repr is what a debugger, a failed assertion or a log of the app's settings shows: the rules and the
    middleware holding them (Starlette's repr names its options) say everything but the key."""
    key = "Kq7-secret-api-key-0123456789"
    access = Access(api_key=key, allowed_hosts=("xray.example",))
    app = create_app(tiny_bundle, access=access)
    named = Access(named_keys=(("ward", key),))  # a key file of named keys: their names may show, not their keys
    shown = repr(access) + repr(app.user_middleware) + repr(named)
    assert "xray.example" in shown and key not in shown


def test_onnx_runtime_sends_no_telemetry_and_leaves_no_file_unless_the_user_asks(tmp_path: Path) -> None:
    """ONNX Runtime (1.29 on) sends usage telemetry from Linux, keeps a device ID under ~/.cache and writes a session
    file (.ses) into $TMPDIR as it is imported, unless ORT_DISABLE_TELEMETRY is set first: a `pacs` run stopped by
    SIGTERM left that file in the folder it had cleaned of the study's films. pneumoscan sets it unless the user
    gave it; a user's ORT_DISABLE_TELEMETRY=0 is kept."""
    code = ("import os, pneumoscan.inference.onnx_runtime, onnxruntime; "
            "print(os.environ['ORT_DISABLE_TELEMETRY'])")
    for given, said in ((None, "1"), ("0", "0")):
        home, temp = tmp_path / f"home-{given}", tmp_path / f"tmp-{given}"
        home.mkdir(), temp.mkdir()
        env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
        env |= {"HOME": str(home), "TMPDIR": str(temp), "XDG_CACHE_HOME": str(home / ".cache")}
        if given is not None:
            env["ORT_DISABLE_TELEMETRY"] = given
        child = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert child.returncode == 0 and child.stdout.strip() == said, child.stderr
        if given is None:
            assert list(home.rglob("*")) == [] and list(temp.iterdir()) == [], (list(home.rglob("*")),
                                                                                 list(temp.iterdir()))
