"""The HTTP service: every endpoint, every kind of bad upload (always a 4xx with a reason, never a 5xx),
uploads kept off disk and out of the logs, and the size cap over a real socket."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import shutil
import socket
import struct
import tempfile
import threading
import warnings
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pydicom
from pydicom.uid import generate_uid
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from pneumoscan.core.digests import bytes_sha256, json_sha256
from pneumoscan.data.decode import read_dicom_header, read_gray
from pneumoscan.data.scope import BURNED_IN, NO_TAGS, describe
from pneumoscan.inference.export import write_onnx_spec
from pneumoscan.inference.predict import Predictor, Stages, alone_warning, predict_paths
from pneumoscan.models.card import ONNX_NAME, load_card, save_appearance, save_card
from pneumoscan.models.on_disk import BundleState
from pneumoscan.serving.app import create_app
from pneumoscan.serving.batching import Batcher
from pneumoscan.serving.limits import Limits
from pneumoscan.serving.service import BUNDLE_DAMAGED, BUNDLE_REPLACED, OnDisk
from tests.builders import (SCORE_TOL, UNCHECKED, at_threshold, chest_film_dicom, content_check_on, count_dicom_reads,
                            dicom_bytes, free_port, start_serve, wait_healthy)

MB = 2**20


# ---------------------------------------------------------------- inputs


def png(gray: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(gray).save(buf, "PNG")
    return buf.getvalue()


def png_bomb(side: int = 12_500) -> bytes:
    """A valid all-black 8-bit PNG of side x side pixels (156 MP at the default) in ~150 KB: decoding it
    would take 156 MB and seconds."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    # run-length deflate: as small as level 9's search for repeats, in a third of its 0.8 s of CPU
    deflate, row = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_RLE), b"\0" * (side + 1)  # filter byte + pixels
    idat = b"".join([deflate.compress(row) for _ in range(side)] + [deflate.flush()])
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def xray(data_root: Path) -> bytes:
    """A real chest X-ray JPEG from the shared data (224 x 224)."""
    return sorted((data_root / "train" / "PNEUMONIA").glob("*.jpeg"))[0].read_bytes()


@pytest.fixture(scope="module")
def full_size_xray(data_root: Path) -> bytes:
    """A full-size original (val/), which the service decodes draft-scaled like the training cache."""
    return sorted((data_root / "val" / "NORMAL").glob("*.jpeg"))[0].read_bytes()


@pytest.fixture(scope="module")
def client(tiny_bundle: Path) -> Iterator[TestClient]:
    with TestClient(create_app(tiny_bundle)) as c:
        yield c


def upload(client: TestClient, data: bytes, content_type: str = "image/jpeg", name: str = "x.jpeg",
           **params: str) -> httpx.Response:
    return client.post("/v1/predict", files={"file": (name, data, content_type)}, params=params)


def with_threshold(bundle: Path, threshold: float, out: Path) -> Path:
    """A copy of ``bundle`` whose card says ``threshold`` (to force either branch of the second stage)."""
    shutil.copytree(bundle, out)
    save_card(out, at_threshold(load_card(out), threshold=threshold))  # as `pneumoscan threshold` does,
    write_onnx_spec(out, out / ONNX_NAME)  # the ONNX sidecar's thresholds too
    return out


# ---------------------------------------------------------------- endpoints


def test_healthz(client: TestClient, tiny_bundle: Path) -> None:
    """The probe names the model served by its version too: the id is the architecture, task and training data, so
    a bundle retrained on the same films and swapped in answered the same /healthz as the one it replaced, and a
    probe, which needs no key, could not tell that the restart loaded it."""
    r = client.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "model_id": load_card(tiny_bundle).model_id,
                        "model_version": client.get("/v1/model").json()["version"]}
    # some load balancers probe with HEAD: answered as GET, without a body (FastAPI had answered 405)
    for path in ("/healthz", "/"):
        head = client.head(path)
        assert head.status_code == 200 and head.content == b"", path


def test_a_path_with_a_trailing_slash_is_not_found_rather_than_redirected(client: TestClient) -> None:
    """/healthz/ answered a 307 to http://HOST/healthz: a probe configured with the slash then worked only by
    following a redirect (to plain http behind a TLS proxy). Every served path has one spelling; another is 404."""
    for path in ("/healthz/", "/v1/model/"):
        for r in (client.get(path, follow_redirects=False), client.post("/v1/predict/", follow_redirects=False)):
            assert r.status_code == 404 and "location" not in r.headers
            assert r.json() == {"error": "Not Found", "reason": "not_found"}
    assert client.head("/healthz/").status_code == 404


def test_the_api_schema_names_each_operation_once(client: TestClient) -> None:
    """HEAD /healthz is answered, but only GET is in the schema: one operation a method and path, so a client
    generated from it has no two operations of one id (FastAPI warned "Duplicate Operation ID" for both)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        schema = client.get("/openapi.json").json()
    assert set(schema["paths"]["/healthz"]) == {"get"}
    ids = [op["operationId"] for path in schema["paths"].values() for op in path.values()]
    assert len(ids) == len(set(ids)), ids


def test_model_card(client: TestClient, tiny_bundle: Path) -> None:
    card = load_card(tiny_bundle)
    info = client.get("/v1/model").json()
    assert info["id"] == card.model_id and card.data_fingerprint[:8] in info["id"]
    assert info["version"] == "sha256:" + hashlib.sha256(
        (tiny_bundle / "model.safetensors").read_bytes()).hexdigest()[:12]
    assert (info["task"], info["classes"], info["positive"]) == ("pneumonia", ["NORMAL", "PNEUMONIA"], "PNEUMONIA")
    assert info["threshold"] == pytest.approx(card.threshold)
    assert info["threshold_policy"] == card.threshold_policy
    assert info["content_checked"] is False  # 48 training films: too few to describe, and the service says so
    assert info["follows"] == []  # a first stage: its calls are coloured as a finding or none
    assert info["val_metrics"] == card.val_metrics and "auc" in info["val_metrics"]
    assert info["data_fingerprint"] == card.data_fingerprint != ""
    assert info["image_size"] == card.size and info["architecture"] == "simple_cnn"
    assert info["max_upload_bytes"] == 20 * MB
    assert [(f["formats"], f["media_types"]) for f in info["film_formats"]] == [
        (["JPEG", "PNG"], ["image/jpeg", "image/png"]), (["DICOM"], ["application/dicom"])]  # the page names them
    assert info["etiology"] is None
    assert "train_config" not in info  # may hold local paths; not for a public endpoint


def test_each_reading_names_the_card_it_was_read_with(client: TestClient, tiny_bundle: Path, xray: bytes,
                                                     tmp_path: Path) -> None:
    """Restarted with the same weights and threshold and another card (an appearance record added: the content check
    on), the service answered the same model id, version and threshold: a client holding the card before could not
    tell its readings from those of that card. Each reading names the card it was read with: /v1/model's
    card_digest, the SHA-256 of the card's other fields."""
    info = client.get("/v1/model").json()
    digest = info.pop("card_digest")
    assert digest == json_sha256(info)
    assert upload(client, xray).json()["card_digest"] == digest
    checked = shutil.copytree(tiny_bundle, tmp_path / "checked")
    save_appearance(checked, content_check_on())
    with TestClient(create_app(checked)) as restarted:
        again, reading = restarted.get("/v1/model").json(), upload(restarted, xray).json()
    assert (again["id"], again["version"], again["threshold"]) == (info["id"], info["version"], info["threshold"])
    assert reading["card_digest"] == again["card_digest"] != digest


def test_each_reading_names_the_sha256_of_the_bytes_it_read(client: TestClient, xray: bytes, data_root: Path
                                                            ) -> None:
    """A page opened over plain HTTP from another computer has no digest of its own (crypto.subtle): it knows a film
    dropped again after a reload by the SHA-256 of the bytes the service read, which each reading names."""
    other = sorted((data_root / "train" / "NORMAL").glob("*.jpeg"))[0].read_bytes()
    readings = [upload(client, film).json() for film in (xray, other)]
    assert [r["film_sha256"] for r in readings] == [bytes_sha256(xray), bytes_sha256(other)]


def test_openapi_schema_documents_the_api(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert {"/v1/predict", "/v1/model", "/healthz", "/metrics"} <= set(schema["paths"])  # /metrics as /healthz is
    post = schema["paths"]["/v1/predict"]["post"]
    assert "file" in post["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    assert {"200", "400", "413", "415", "422", "500", "503"} <= set(post["responses"])  # 500: a non-finite score
    assert any(p["name"] == "heatmap" for p in post["parameters"])
    assert client.get("/docs").status_code == 404  # off: Swagger UI loads from a CDN; the schema is served


def test_predict_real_xray_matches_the_library(client: TestClient, tiny_bundle: Path, xray: bytes) -> None:
    r = upload(client, xray)
    assert r.status_code == 200, r.text
    body = r.json()
    card = load_card(tiny_bundle)
    expected = Predictor(tiny_bundle).predict_array(read_gray(xray, target=card.spec.decode_target))
    assert body["probability"] == pytest.approx(expected["probability"], abs=SCORE_TOL)
    assert body["label"] == expected["label"] in card.classes
    assert body["threshold"] == pytest.approx(card.threshold)
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert body["model_id"] == card.model_id and body["model_version"].startswith("sha256:")
    assert body["etiology"] is None and body["heatmap"] is None
    assert r.headers["cache-control"] == "no-store"


@pytest.mark.parametrize("kind, content_type", [
    ("png", "image/png"), ("dicom", "application/dicom"),
    ("jpeg", "application/octet-stream"), ("png", "application/octet-stream"), ("dicom", "application/octet-stream"),
    ("jpeg", "image/jpeg; charset=binary"), ("jpeg", "image/jpg"),  # not a registered type, but commonly sent
    ("jpeg", "image/pjpeg"), ("png", "image/x-png"), ("dicom", "application/x-dicom"),  # older names, still sent
    ("dicom", "image/dicom"),
])
def test_predict_accepts_jpeg_png_dicom(client: TestClient, xray: bytes, kind: str, content_type: str) -> None:
    gray = read_gray(xray)
    data = {"jpeg": xray, "png": png(gray), "dicom": dicom_bytes(gray.astype(np.uint16) * 16)}[kind]
    r = upload(client, data, content_type, f"scan.{kind}")
    assert r.status_code == 200, r.text
    assert 0.0 <= r.json()["probability"] <= 1.0


@pytest.mark.parametrize("content_type, name", [("application/dicom", "scan"), ("application/x-dicom", "scan"),
                                                ("application/octet-stream", "scan.dcm")])
def test_dicom_without_preamble_is_read_like_the_file_flow(
    client: TestClient, tiny_bundle: Path, xray: bytes, tmp_path: Path, content_type: str, name: str
) -> None:
    """Such files carry no 'DICM' magic; the declared type or the .dcm name says what they are, as for predict."""
    data = dicom_bytes(read_gray(xray).astype(np.uint16) * 16, preamble=False)
    assert data[128:132] != b"DICM"
    r = upload(client, data, content_type, name)
    assert r.status_code == 200, r.text
    (tmp_path / "scan.dcm").write_bytes(data)
    expected = predict_paths(tiny_bundle, [tmp_path / "scan.dcm"])[0]["probability"]
    assert r.json()["probability"] == pytest.approx(expected, abs=1e-4)


def test_an_uploaded_dicom_is_read_once_for_its_pixels_and_its_header(client: TestClient, xray: bytes,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The service read an uploaded DICOM three times a request (for its pixels, for its size, which says whether
    to hand memory back, and for the scope checks of its header): one read serves them all, and the reading's UIDs,
    facts and warnings are those a read of the header alone gives. The film shown (image=true), decoded again at
    its own size, is one read more."""
    data = chest_film_dicom(read_gray(xray))
    reads = count_dicom_reads(monkeypatch)
    r = upload(client, data, "application/dicom", "film.dcm")
    assert r.status_code == 200 and len(reads) == 1, (r.text, reads)
    shown = upload(client, data, "application/dicom", "film.dcm", image="true")
    assert shown.status_code == 200 and len(reads) == 3 and shown.json()["image"].startswith("data:image/png")
    expected = describe(data, dicom=True, facts=True)
    assert {key: r.json()[key] for key in expected if key != "warnings"} == {
        key: value for key, value in expected.items() if key != "warnings"}
    assert r.json()["warnings"][: len(expected["warnings"])] == expected["warnings"]
    assert r.json()["study_instance_uid"] and r.json()["age_years"] == 4


def test_a_dicom_with_text_burned_in_is_answered_in_scope_with_its_warning(client: TestClient, xray: bytes) -> None:
    """BurnedInAnnotation YES: the answer warns that text is in the film's pixels (a shortcut, and what a heatmap
    sent on shows), and the film stays in scope, as predict gives it."""
    r = upload(client, chest_film_dicom(read_gray(xray), BurnedInAnnotation="YES"), "application/dicom", "film.dcm")
    assert r.status_code == 200 and r.json()["in_scope"] is True, r.text
    assert BURNED_IN.text() in r.json()["warnings"]


# what a report records of the time it was made, which differs from one making to the next
MADE_AT = ("InstanceCreationDate", "InstanceCreationTime", "ContentDate", "ContentTime")


def _made_whenever(fmt: str, report: bytes | str) -> object:
    """A report (an SR's Part 10 bytes, an Observation's JSON) without the times it records of its own making."""
    if fmt == "fhir":
        return {k: v for k, v in json.loads(report).items() if k != "issued"}
    ds = pydicom.dcmread(io.BytesIO(report))
    for keyword in MADE_AT:
        delattr(ds, keyword)
    for item in ds.ContributingEquipmentSequence:
        del item.ContributionDateTime
    return ds


@pytest.mark.parametrize("fmt", ["dicom-sr", "fhir"])
def test_a_report_of_an_uploaded_dicom_is_made_of_its_one_read(fmt: str, client: TestClient, xray: bytes,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """format=dicom-sr and fhir read the upload's header once more after its decode had read the whole file. The
    report is made of the decode's read, without its pixel data (a report's checks copy the header whole), and is
    the report a header read from the file makes, element for element."""
    from pneumoscan.interop import fhir, sr

    data = dicom_bytes(read_gray(xray).astype(np.uint16) * 16, BodyPartExamined="CHEST", ViewPosition="PA",
                       PatientID="P-1", PatientName="Doe^Jane", PatientAge="004Y", PatientSex="F",
                       AccessionNumber="A-1", StudyDate="20240102", StudyInstanceUID=generate_uid(),
                       SeriesInstanceUID=generate_uid())
    module, name = (sr, "report_files") if fmt == "dicom-sr" else (fhir, "observation_json")
    made, real = [], getattr(module, name)
    monkeypatch.setattr(module, name, lambda *args: made.append(args) or real(*args))
    reads = count_dicom_reads(monkeypatch)
    r = upload(client, data, "application/dicom", "film.dcm", format=fmt)
    assert r.status_code == 200 and len(reads) == 1, (r.text, reads)
    (args,) = made
    given = args[0] if fmt == "dicom-sr" else args[-1]
    assert not any(k in given for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))
    header = read_dicom_header(data, dicom=True)
    as_read = real(header, *args[1:]) if fmt == "dicom-sr" else real(*args[:-1], header)
    said = r.content if fmt == "dicom-sr" else r.text
    assert _made_whenever(fmt, said) == _made_whenever(fmt, as_read[0] if fmt == "dicom-sr" else as_read)


def test_a_report_of_an_upload_whose_patient_id_was_misread_is_refused(client: TestClient, xray: bytes) -> None:
    """The header a report is made of is the decode's read, taken before any of its values was read: text pydicom
    read in another character set than the film's escapes put in force is judged by its bytes as read, refused."""
    with pydicom.config.disable_value_validation():
        data = dicom_bytes(read_gray(xray).astype(np.uint16) * 16, BodyPartExamined="CHEST", ViewPosition="PA",
                           SpecificCharacterSet=["", "ISO 2022 IR 149"], PatientID=b"Kim\xb1\xe8",
                           StudyInstanceUID=generate_uid(), SeriesInstanceUID=generate_uid())
    r = upload(client, data, "application/dicom", "film.dcm", format="dicom-sr")
    assert r.status_code == 422 and "the source DICOM's PatientID is malformed (characters beyond ASCII where its " \
        "ISO 2022 escape sequences name no character set that holds them)" in r.json()["error"], r.text


def upload_named_by_extended_filename(client: TestClient, data: bytes, content_type: str,
                                      disposition: str) -> httpx.Response:
    """The film in a part whose Content-Disposition ends in ``disposition`` (raw, as a client sends it)."""
    body = (f'--b\r\nContent-Disposition: form-data; name="file"; {disposition}\r\n'
            f"Content-Type: {content_type}\r\n\r\n").encode() + data + b"\r\n--b--\r\n"
    return client.post("/v1/predict", content=body, headers={"content-type": "multipart/form-data; boundary=b"})


def test_a_file_named_only_by_its_extended_filename_is_read_by_that_name(client: TestClient, xray: bytes) -> None:
    """A part naming its file by RFC 5987's ``filename*=`` alone (RFC 7578 asks senders not to, some do) was read as
    a text field and refused as 'the field 'file' holds text (a part without a filename)'. It is the file it
    says, under its decoded name: a DICOM without its preamble named ``scané.dcm`` so is read as DICOM."""
    plain = upload(client, xray).json()["probability"]
    r = upload_named_by_extended_filename(client, xray, "image/jpeg", "filename*=UTF-8''film%C3%A9.jpeg")
    assert r.status_code == 200, r.text
    assert r.json()["probability"] == pytest.approx(plain, abs=1e-6)
    dicom = dicom_bytes(read_gray(xray).astype(np.uint16) * 16, preamble=False)
    r = upload_named_by_extended_filename(client, dicom, "application/octet-stream",
                                          "filename*=UTF-8''scan%C3%A9.dcm")
    assert r.status_code == 200, r.text
    assert r.json()["probability"] == pytest.approx(upload(client, dicom, "application/dicom").json()["probability"],
                                                    abs=1e-6)
    assert_error(upload_named_by_extended_filename(client, dicom, "application/octet-stream",
                                                   "filename*=UTF-8''scan%C3%A9.png"), 415, "named *.dcm")


@pytest.mark.parametrize("content_type", ["application/dicom", "application/octet-stream"])
def test_magic_bytes_win_over_a_dcm_name(client: TestClient, xray: bytes, content_type: str) -> None:
    """A PNG named .dcm (even sent as DICOM) is read as the PNG its bytes say it is, as predict reads files, not
    refused as 'a DICOM without pixel data'."""
    r = upload(client, png(read_gray(xray)), content_type, "scan.dcm")
    assert r.status_code == 200, r.text
    assert r.json()["warnings"] == [
        "no DICOM tags: not checked to be a frontal chest radiograph of a child of 1-5 years", UNCHECKED]


@pytest.mark.parametrize("which", ["xray", "full_size_xray"])
def test_heatmap_is_a_png_data_url(client: TestClient, tiny_bundle: Path, which: str,
                                   request: pytest.FixtureRequest) -> None:
    data = request.getfixturevalue(which)
    r = upload(client, data, heatmap="true")
    assert r.status_code == 200, r.text
    prefix = "data:image/png;base64,"
    assert r.json()["heatmap"].startswith(prefix)
    overlay = Image.open(io.BytesIO(base64.b64decode(r.json()["heatmap"][len(prefix):])))
    height, width = read_gray(data, target=load_card(tiny_bundle).spec.decode_target).shape  # as the service decoded it
    # original | heatmap | blend, over the caption that says what the map shows
    assert overlay.format == "PNG" and overlay.size[0] == 3 * width and overlay.size[1] > height


def test_etiology_runs_only_for_images_read_as_pneumonia(tiny_bundle: Path, tiny_etiology_bundle: Path,
                                                         xray: bytes, tmp_path: Path) -> None:
    always = with_threshold(tiny_bundle, 0.0, tmp_path / "always")
    never = with_threshold(tiny_bundle, 1.0, tmp_path / "never")  # no probability of this model reaches 1
    with TestClient(create_app(always, etiology=tiny_etiology_bundle)) as c:
        body = upload(c, xray).json()
        assert body["label"] == "PNEUMONIA"
        etiology = body["etiology"]
        assert etiology["task"] == "etiology" and etiology["label"] in ("bacteria", "virus")
        assert etiology["model_id"] == load_card(tiny_etiology_bundle).model_id
        assert set(etiology["probabilities"]) == {"bacteria", "virus"}
        assert etiology["probability"] == pytest.approx(etiology["probabilities"]["virus"])
        assert c.get("/v1/model").json()["etiology"]["classes"] == ["bacteria", "virus"]
        assert counted_calls(c) == {("pneumonia", "PNEUMONIA"): 1, ("etiology", etiology["label"]): 1}
    with TestClient(create_app(never, etiology=tiny_etiology_bundle)) as c:
        body = upload(c, xray).json()
        assert body["label"] == "NORMAL" and body["etiology"] is None
        assert counted_calls(c) == {("pneumonia", "NORMAL"): 1}  # no second reading counted: none was made


def with_validation_auc(bundle: Path, auc: float, ci: list[float], out: Path) -> Path:
    """A copy of ``bundle`` whose card records a validation AUC of ``auc`` with the 95% interval ``ci``."""
    shutil.copytree(bundle, out)
    card = load_card(out)
    save_card(out, dataclasses.replace(card, val_metrics={**card.val_metrics, "auc": auc,
                                                          "ci": {**card.val_metrics["ci"], "auc": ci}}))
    return out


def test_a_stage_whose_validation_auc_may_be_chance_is_served_with_that_caveat(
        tiny_bundle: Path, tiny_etiology_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An etiology bundle of validation AUC 0.51 (95% CI 0.40-0.62) was served without a word: training refuses
    only an AUC of 0.5 or less, and an interval reaching 0.5 shows no better than chance either. The start says it,
    naming the bundle, and so does the card /v1/model gives (whose caveats the page shows); a stage whose interval
    is above 0.5 gets no such caveat."""
    weak = with_validation_auc(tiny_etiology_bundle, 0.51, [0.40, 0.62], tmp_path / "weak")
    sound = with_validation_auc(tiny_bundle, 0.9, [0.8, 0.97], tmp_path / "sound")
    said = ("validation AUC 0.510 (95% CI 0.400-0.620) on {} films: its interval reaches 0.5, so these films do not "
            "show that it tells the classes apart better than chance; measure it on more labelled films (pneumoscan "
            "evaluate) before relying on its readings").format(load_card(weak).val_metrics["n"])
    caplog.clear()
    with caplog.at_level(logging.WARNING, "pneumoscan"), TestClient(create_app(sound, etiology=weak)) as c:
        info = c.get("/v1/model").json()
    assert f"{weak}: {said}" in caplog.messages
    assert info["etiology"]["caveats"][0] == said
    assert not any("AUC" in caveat for caveat in info["caveats"])


def test_etiology_needs_a_pneumonia_first_stage(tiny_etiology_bundle: Path, xray: bytes,
                                                caplog: pytest.LogCaptureFixture) -> None:
    """Served alone, an etiology bundle says what it cannot tell in every answer, and once in the log at start-up,
    in predict's words: an operator reading the log had no sign that the service answers bacteria or virus for a
    normal film."""
    with pytest.raises(ValueError, match="pneumonia bundle and an etiology bundle"):
        create_app(tiny_etiology_bundle, etiology=tiny_etiology_bundle)
    said = alone_warning("etiology")
    assert said is not None and "assumes the film shows pneumonia and cannot call it normal" in said
    caplog.clear()
    with caplog.at_level(logging.WARNING, "pneumoscan"), TestClient(create_app(tiny_etiology_bundle)) as c:
        body = upload(c, xray).json()
        upload(c, xray)
        assert body["label"] in ("bacteria", "virus")
        assert c.get("/v1/model").json()["follows"] == ["pneumonia"]  # the page colours none of its calls
        assert said in body["warnings"]
        for fmt in ("dicom-sr", "fhir"):  # a report codes a pneumonia finding: refused before the film is read
            assert_error(upload(c, TEXT, format=fmt), 422, f"format={fmt} reports a pneumonia reading, and the "
                         "model of this service reads etiology (bacteria vs virus): ask for format=json")
    logged = [r for r in caplog.records if r.getMessage() == said]  # once, not with each of the answers
    assert [(r.name, r.levelno) for r in logged] == [("pneumoscan.serving.service", logging.WARNING)], caplog.text


def test_web_page_is_served_without_external_resources(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/static/app.js", "/static/style.css"):
        assert asset in page.text
        r = client.get(asset)
        assert r.status_code == 200 and "http://" not in r.text and "https://" not in r.text
    assert "http://" not in page.text and "https://" not in page.text


# ---------------------------------------------------------------- bad input: a 4xx with a reason, never a 5xx

TEXT = b"Patient notes, not an image.\n" * 40


def bad_uploads(xray: bytes) -> dict[str, tuple[bytes, str, int, str]]:
    """case -> (bytes, declared content type, expected status, words the error must contain)."""
    gray = read_gray(xray)
    return {
        "text declared as text/plain": (TEXT, "text/plain", 415, "unsupported content type 'text/plain'"),
        "text declared as octet-stream": (TEXT, "application/octet-stream", 415, "not a JPEG, PNG or DICOM"),
        "text declared as JPEG": (TEXT, "image/jpeg", 422, "not a JPEG, PNG or DICOM"),
        "PDF content type": (b"%PDF-1.4\n" + TEXT, "application/pdf", 415, "unsupported content type"),
        "truncated JPEG": (xray[: len(xray) // 2], "image/jpeg", 422, "truncated"),
        "truncated PNG": (png(gray)[:2000], "image/png", 422, "cannot read the image"),
        "empty upload": (b"", "image/jpeg", 400, "empty file"),
        "decompression bomb": (png_bomb(), "image/png", 422, "pixels, over the 150,000,000 that can be read safely"),
        "DICOM without pixels": (dicom_bytes(None), "application/dicom", 422, "no pixel data"),
    }


@pytest.fixture(scope="module")
def bad_cases(xray: bytes) -> dict[str, tuple[bytes, str, int, str]]:
    return bad_uploads(xray)


def assert_error(r: httpx.Response, status: int, words: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert words in r.json()["error"], r.json()


@pytest.mark.parametrize("case", [
    "text declared as text/plain", "text declared as octet-stream", "text declared as JPEG", "PDF content type",
    "truncated JPEG", "truncated PNG", "empty upload", "decompression bomb", "DICOM without pixels",
])
def test_bad_upload_is_a_4xx_with_a_reason(client: TestClient, bad_cases: dict, case: str) -> None:
    data, content_type, status, words = bad_cases[case]
    start = time.perf_counter()
    assert_error(upload(client, data, content_type), status, words)
    assert time.perf_counter() - start < 5  # the bomb is refused from its header, not decoded


def test_file_over_the_default_limit_is_413(client: TestClient, xray: bytes) -> None:
    too_big = xray + b"\0" * (20 * MB - len(xray) + 1)  # 20 MB + 1 byte: a JPEG with trailing padding
    assert_error(upload(client, too_big), 413, "limit of 20 MB")
    assert upload(client, too_big).json()["reason"] == "too_large"
    assert upload(client, xray + b"\0" * (19 * MB)).status_code == 200  # under the limit the padding is harmless


def test_limit_is_configurable_and_enforced_while_reading(tiny_bundle: Path, xray: bytes) -> None:
    with TestClient(create_app(tiny_bundle, max_upload_mb=0.5)) as small:
        assert small.get("/v1/model").json()["max_upload_bytes"] == MB // 2
        assert_error(upload(small, xray + b"\0" * MB), 413, "limit")
        # chunked body without Content-Length: the cap must hold while streaming, not from the header
        boundary = "cap"
        head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.jpeg"\r\n'
                'Content-Type: image/jpeg\r\n\r\n')

        def body() -> Iterator[bytes]:
            yield head.encode() + xray
            for _ in range(64):  # 4 MB of padding, 8x the cap
                yield b"\0" * 65536
            yield f"\r\n--{boundary}--\r\n".encode()

        r = small.post("/v1/predict", content=body(),
                       headers={"content-type": f"multipart/form-data; boundary={boundary}"})
        assert_error(r, 413, "upload too large")


def test_an_upload_limit_with_no_room_for_a_film_is_refused(tiny_bundle: Path) -> None:
    """--max-upload-mb 1e-7 served: /healthz said ok, and every upload was 413 "the limit is 0 MB (0 bytes)"."""
    with pytest.raises(ValueError, match=r"an upload limit of 1e-07 MB \(0 bytes\) leaves no room for a film: give "
                                         r"at least 0.0625 MB"):
        create_app(tiny_bundle, max_upload_mb=1e-7)
    assert create_app(tiny_bundle, max_upload_mb=0.0625)  # the smallest taken


@pytest.mark.parametrize("limit", [math.inf, math.nan])
def test_an_upload_limit_that_is_no_number_of_mb_is_refused_as_such(tiny_bundle: Path, limit: float) -> None:
    """create_app(max_upload_mb=inf) ended in an OverflowError, NaN in int()'s "cannot convert float NaN"."""
    with pytest.raises(ValueError, match=rf"an upload limit of {limit} MB is no limit: give a number of MB"):
        create_app(tiny_bundle, max_upload_mb=limit)


@pytest.mark.parametrize("case, request_kwargs, status, words", [
    ("JSON body", {"json": {"file": "x"}}, 415, "expected multipart/form-data"),
    ("raw JPEG body", {"content": b"\xff\xd8\xff", "headers": {"content-type": "image/jpeg"}},
     415, "multipart/form-data"),
    ("no boundary", {"content": b"--x\r\n", "headers": {"content-type": "multipart/form-data"}},
     400, "malformed multipart"),
    ("field named image", {"files": {"image": ("x.jpeg", b"\xff\xd8\xff", "image/jpeg")}}, 400, "field named 'file'"),
    ("text field only", {"data": {"file": "not a file"}, "files": {"other": ("a", b"b", "text/plain")}},
     400, "no file"),
    ("two files", {"files": [("file", ("a.jpeg", b"\xff\xd8\xff", "image/jpeg")),
                             ("file", ("b.jpeg", b"\xff\xd8\xff", "image/jpeg"))]},
     400, "Too many files"),
    # cut short (a client's upload interrupted): it was refused as sent without a file
    ("no closing boundary", {"content": b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.jpeg"\r\n'
                                        b"Content-Type: image/jpeg\r\n\r\n\xff\xd8\xff",
                             "headers": {"content-type": "multipart/form-data; boundary=b"}},
     400, "incomplete multipart upload: the body ended before its closing boundary"),
])
def test_malformed_requests_are_4xx(client: TestClient, case: str, request_kwargs: dict, status: int,
                                    words: str) -> None:
    assert_error(client.post("/v1/predict", **request_kwargs), status, words)


def test_a_malformed_body_is_said_by_the_400_not_by_a_library_line_a_request(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    """python-multipart logged every malformed body as a bare stderr line quoting a byte of it, never rate-limited:
    30 such requests, 30 lines."""
    with caplog.at_level(logging.DEBUG):
        for _ in range(3):
            r = client.post("/v1/predict", content=b"--xyz\r\nContent-Disposition: form-data\r\n\r\nx\r\n--xyz--\r\n",
                            headers={"content-type": "multipart/form-data; boundary=abc"})
            assert r.status_code == 400
    assert not [r for r in caplog.records if r.name.startswith("python_multipart") and r.levelno >= logging.WARNING]


def test_framework_errors_are_json_too(client: TestClient, xray: bytes) -> None:
    assert_error(upload(client, xray, heatmap="maybe"), 422, "heatmap")
    assert_error(client.get("/v1/predict"), 405, "Method Not Allowed")
    assert_error(client.get("/nope"), 404, "Not Found")


@pytest.mark.filterwarnings("ignore:Invalid value for VR")  # pydicom on a damaged header: expected
def test_damaged_files_never_give_a_5xx(client: TestClient, xray: bytes) -> None:
    """Truncations and byte flips of each format: whatever breaks, the answer is a 200 or a 4xx."""
    gray = read_gray(xray)
    rng = np.random.default_rng(0)
    statuses = []
    for kind, data, content_type in (("jpeg", xray, "image/jpeg"), ("png", png(gray), "image/png"),
                                     ("dicom", dicom_bytes(gray.astype(np.uint16)), "application/dicom")):
        variants = [data[:n] for n in (1, 3, 16, 133, 200, len(data) // 3, len(data) - 1)]
        for _ in range(6):
            flipped = np.frombuffer(data, np.uint8).copy()
            spots = rng.integers(0, min(len(data), 1024), 8)  # the headers, where damage matters most
            flipped[spots] = rng.integers(0, 256, 8, dtype=np.uint8)
            variants.append(flipped.tobytes())
        for variant in variants:
            r = upload(client, variant, content_type, f"x.{kind}")
            assert r.status_code < 500, (kind, r.status_code, r.text)
            assert r.status_code == 200 or "error" in r.json()
            statuses.append(r.status_code)
    assert any(400 <= s < 500 for s in statuses)
    assert client.get("/healthz").status_code == 200  # still up
    assert upload(client, xray).status_code == 200


def test_uploads_are_never_written_to_disk(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 3 MB upload (above Starlette's 1 MB in-memory spool) while every way tempfile has to reach the disk fails."""

    def no_disk(*args: object, **kwargs: object) -> None:
        raise AssertionError("an upload was about to be written to disk")

    for name in ("TemporaryFile", "NamedTemporaryFile", "mkstemp"):
        monkeypatch.setattr(tempfile, name, no_disk)
    noise = np.random.default_rng(1).integers(0, 256, (1800, 1800), dtype=np.uint8)
    data = png(noise)
    assert len(data) > 3 * MB
    r = upload(client, data, "image/png", "big.png")
    assert r.status_code == 200, r.text


# ---------------------------------------------------------------- a real server: logs and the cap over a socket


@pytest.fixture(scope="module")
def live_server(tiny_bundle: Path, module_tmp: Callable[[str], Path]) -> Iterator[tuple[str, Path, int]]:
    """`pneumoscan serve --max-upload-mb 5` in a subprocess on a free loopback port: (base URL, file with its
    stdout+stderr, its process id)."""
    port = free_port()
    log_path = module_tmp("serve-log") / "server.log"
    proc = start_serve([str(tiny_bundle), "--port", str(port), "--max-upload-mb", "5"], log_path)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, url, log_path)
        yield url, log_path, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_logs_carry_no_file_names_or_pixels(live_server: tuple[str, Path, int], xray: bytes,
                                           bad_cases: dict) -> None:
    url, log_path, _ = live_server
    secret = "Jane-Doe-MRN-004217"
    truncated, content_type, _, _ = bad_cases["truncated JPEG"]
    logged_before = log_path.stat().st_size
    # the first heatmap loads torch into the server (seconds, and more on a machine busy with other tests)
    with httpx.Client(base_url=url, timeout=120) as http:
        ok = http.post("/v1/predict?heatmap=true", files={"file": (f"{secret}.jpeg", xray, "image/jpeg")})
        bad = http.post("/v1/predict", files={"file": (f"{secret}-2.jpeg", truncated, content_type)})
        text = http.post("/v1/predict", files={"file": (f"{secret}.txt", TEXT, "text/plain")})
    assert (ok.status_code, bad.status_code, text.status_code) == (200, 422, 415)
    deadline = time.monotonic() + 30  # until the last request's access log line lands, the lines before it with it
    while b'"POST /v1/predict HTTP/1.1" 415' not in (log := log_path.read_bytes())[logged_before:]:
        assert time.monotonic() < deadline, log.decode(errors="replace")
        time.sleep(0.02)
    assert b'"POST /v1/predict?heatmap=true HTTP/1.1" 200' in log  # request logging is on...
    assert b'"POST /v1/predict HTTP/1.1" 422' in log
    assert secret.encode() not in log  # ...but names never reach it
    for data in (xray, truncated):
        for fragment in (data[100:132], base64.b64encode(data[99:147]), data[100:132].hex().encode(),
                         repr(data[100:132])[2:-1].encode()):
            assert fragment not in log
    assert ok.json()["heatmap"][-64:].encode() not in log


def test_oversized_upload_over_a_socket_gets_the_413(live_server: tuple[str, Path, int], xray: bytes) -> None:
    """Over real HTTP the client must be able to read the JSON 413, not a reset connection; the server stays up."""
    url, _, _ = live_server
    with httpx.Client(base_url=url, timeout=60) as http:
        r = http.post("/v1/predict", files={"file": ("x.jpeg", xray + b"\0" * (8 * MB), "image/jpeg")})
        assert_error(r, 413, "upload too large: the limit is 5 MB (5,242,880 bytes), set by serve --max-upload-mb; an "
                             "uncompressed DICOM film is smaller in a lossless compressed transfer syntax")
        assert http.get("/healthz").status_code == 200
        assert http.post("/v1/predict", files={"file": ("x.jpeg", xray, "image/jpeg")}).status_code == 200


def test_answers_name_no_server_software_but_keep_the_date(live_server: tuple[str, Path, int]) -> None:
    """Every answer said `server: uvicorn`, which a hospital's security scanner flags as a disclosure of the software
    behind the service; the Date header an origin server with a clock must send (RFC 9110) stays."""
    url, _, _ = live_server
    with httpx.Client(base_url=url, timeout=60) as http:
        for r in (http.get("/healthz"), http.get("/v1/model"), http.get("/no-such-path")):
            assert "server" not in r.headers and r.headers["date"].endswith(" GMT"), r.headers


def resident_mb(pid: int) -> float:
    """The resident memory (RSS) of process ``pid``, MB."""
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MB


def test_the_memory_large_films_took_goes_back_to_the_system(live_server: tuple[str, Path, int]) -> None:
    """glibc's allocator kept what decoding large films took, freed but held by its arenas: after three more
    4,500 x 4,500 16-bit PNGs (40 MB each decoded) the service stayed 80-140 MB larger, after four 11,468 x 11,468
    ones 220-510 MB. It is handed back after each film of over TRIM_AFTER_PIXELS (malloc_trim(0)): at most about
    20 MB stays (the free tops of the decode threads' arenas, which malloc_trim leaves)."""
    url, _, pid = live_server
    ramp = (np.arange(4500, dtype=np.uint32) * 4095 // 4500).astype(np.uint16)
    film = png(np.broadcast_to(ramp, (4500, 4500)).copy())
    assert httpx.post(f"{url}/v1/predict", files={"file": ("film.png", film, "image/png")}, timeout=60).status_code \
        == 200  # the first raises glibc's mmap threshold: the next ones' blocks come from its arenas
    before = resident_mb(pid)
    for _ in range(3):
        r = httpx.post(f"{url}/v1/predict", files={"file": ("film.png", film, "image/png")}, timeout=60)
        assert r.status_code == 200, r.text
    assert resident_mb(pid) - before < 50


def test_an_internal_error_is_json_and_the_service_goes_on(tiny_bundle: Path, xray: bytes,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug is a JSON 500 (the one status bad input never gets), every request in the failed batch hears of
    it, and the batcher keeps running: a good request afterwards still gets an answer."""
    app = create_app(tiny_bundle)
    with TestClient(app, raise_server_exceptions=False) as c:
        with monkeypatch.context() as m:
            m.setattr(Predictor, "probabilities", lambda self, images: 1 / 0)
            for _ in range(3):
                r = upload(c, xray)
                assert r.status_code == 500 and r.json() == {"error": "internal error", "reason": "internal_error"}
        assert upload(c, xray).status_code == 200
        runs = scraped(c)
        assert runs[("pneumoscan_model_run_errors_total", labels(task="pneumonia"))] == 3  # each a batch of its own
        assert runs[("pneumoscan_refusals_total", labels(reason="internal_error"))] == 3  # the guard's, counted
        assert runs[("pneumoscan_model_run_seconds_count", labels(task="pneumonia"))] == 1  # the run that answered


def test_concurrent_requests_share_one_batch_and_keep_their_own_answers(tiny_bundle: Path, data_root: Path) -> None:
    """Requests that wait together are classified in one model call, and each gets its own image's result."""
    predictor = Predictor(tiny_bundle)
    grays = [read_gray(p, target=predictor.card.spec.decode_target)
             for p in sorted((data_root / "train" / "NORMAL").glob("*.jpeg"))[:8]]
    expected = [predictor.probabilities(predictor.preprocess([g]))[0] for g in grays]
    gate, batch_sizes = threading.Event(), []

    def gated(images: np.ndarray, tta: bool = False) -> np.ndarray:  # holds the first batch until all are queued
        gate.wait(10)
        batch_sizes.append(len(images))
        return Predictor.probabilities(predictor, images, tta)

    predictor.probabilities = gated
    batcher = Batcher(predictor)

    async def main() -> list[np.ndarray]:
        tasks = [asyncio.create_task(batcher.probabilities(predictor.preprocess([g])[0])) for g in grays]
        await asyncio.sleep(0)  # every task runs up to its wait, so all eight are queued
        gate.set()
        return await asyncio.gather(*tasks)

    try:
        got = asyncio.run(main())
    finally:
        batcher.close()
    assert sum(batch_sizes) == 8 and len(batch_sizes) <= 2  # all but the first call wait for one batch
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, atol=SCORE_TOL)
    assert not np.allclose(got[0], got[1])  # different images, different answers: no row mix-up passes


def test_onnx_backend_answers_like_torch(client: TestClient, tiny_bundle: Path, xray: bytes) -> None:
    with TestClient(create_app(tiny_bundle, backend="onnx")) as fast:
        got = upload(fast, xray, heatmap="true").json()
    expected = upload(client, xray).json()
    assert got["probability"] == pytest.approx(expected["probability"], abs=1e-4)
    assert got["label"] == expected["label"] and got["heatmap"].startswith("data:image/png;base64,")


def test_a_bundle_changed_on_disk_after_start_up_makes_the_service_degraded(
        tiny_bundle: Path, xray: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """/healthz said ok while the bundle's files were damaged or deleted under the running service, until a restart
    was refused (a restart loop under an orchestrator); a bundle replaced by another was not said either. Readings
    go on from the model checked at start; a file touched, or put back, is ok again. A bundle replaced while the
    model loads (seconds for ONNX or an ensemble) is refused at start: its files were stamped after the load, so
    the change was never said."""
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    with TestClient(create_app(bundle, backend="onnx")) as c:
        before = upload(c, xray).json()
        assert c.get("/healthz").json() == {"status": "ok", "model_id": before["model_id"],
                                            "model_version": before["model_version"]}
        weights = (bundle / "model.safetensors").read_bytes()
        damaged = bytearray(weights)
        damaged[len(damaged) // 2] ^= 0xFF
        (bundle / "model.safetensors").write_bytes(bytes(damaged))
        health = c.get("/healthz")
        assert health.status_code == 200 and health.json()["status"] == "degraded"
        assert health.json()["reason"] == BUNDLE_DAMAGED and str(tmp_path) not in health.text
        assert upload(c, xray).json()["probability"] == before["probability"]
        (bundle / "model.safetensors").write_bytes(weights)  # put back
        assert c.get("/healthz").json()["status"] == "ok"
        (bundle / "model.onnx").unlink()
        assert c.get("/healthz").json()["reason"] == BUNDLE_DAMAGED
        shutil.rmtree(bundle)
        shutil.copytree(tiny_bundle, bundle)
        assert c.get("/healthz").json()["status"] == "ok"
        card = load_card(bundle)
        save_card(bundle, at_threshold(card, threshold=card.threshold / 2))  # another valid bundle
        assert c.get("/healthz").json()["reason"] == BUNDLE_REPLACED
    real = Stages.load

    def replaced_meanwhile(cls: type[Stages], *args: object, **kwargs: object) -> Stages:
        save_card(bundle, at_threshold(card, threshold=card.threshold / 4))
        return real(*args, **kwargs)

    monkeypatch.setattr(Stages, "load", classmethod(replaced_meanwhile))
    with pytest.raises(ValueError, match=f"the bundle {bundle} was replaced while its model was loaded"):
        create_app(bundle, backend="torch")  # onnx: model.onnx.json, which records the threshold, refuses it


def test_probes_that_come_while_the_bundle_is_read_again_share_that_one_read(
        tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once a bundle's files changed, every /healthz probe that came before the first read of them had ended started
    a read of its own (every file hashed again, in the threads the service's reports use): a flood of probes, which
    need no key, queued as many hashings of the whole bundle."""
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    disk, reads, real = OnDisk(bundle), [], OnDisk.changed
    monkeypatch.setattr(OnDisk, "changed", lambda self, check=None: reads.append(self) or real(self, check))
    (bundle / "model.safetensors").touch()  # changed stamps, the same bytes

    async def probes() -> list[BundleState | None]:
        return await asyncio.gather(*[disk.check() for _ in range(20)])

    assert asyncio.run(probes()) == [None] * 20 and len(reads) == 1
    card = load_card(bundle)
    save_card(bundle, at_threshold(card, threshold=card.threshold / 2))  # another valid bundle
    assert asyncio.run(probes()) == [BundleState.REPLACED] * 20 and len(reads) == 2


def test_weights_changed_after_start_up_refuse_heatmaps_with_the_reason(tiny_bundle: Path, xray: bytes,
                                                                       tmp_path: Path) -> None:
    """With ONNX Runtime scoring, Grad-CAM's torch model is built by the first heatmap, from the files on disk then.
    Weights damaged since start-up: that heatmap and every later one get a 503 that says why (naming no path, no
    Retry-After: retrying cannot help), /healthz says the service is degraded, and readings go on, the same, from
    the session checked at start-up."""
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    with TestClient(create_app(bundle, backend="onnx")) as c:
        before = upload(c, xray).json()
        weights = bytearray((bundle / "model.safetensors").read_bytes())
        weights[len(weights) // 2] ^= 0xFF
        (bundle / "model.safetensors").write_bytes(bytes(weights))
        for heatmap in ("map", "true"):
            r = upload(c, xray, heatmap=heatmap)
            assert_error(r, 503, "heatmaps unavailable: the weights of the bundle on disk are no longer those this "
                                 "service started with (damaged or replaced since)")
            assert str(tmp_path) not in r.text and "'" not in r.text and "retry-after" not in r.headers
        health = c.get("/healthz")
        assert health.status_code == 200 and health.json()["status"] == "degraded"
        # the files first (a restart would be refused: the heatmaps' "restart the service" alone had hidden it)
        assert health.json()["reason"].startswith("a bundle's files on disk are damaged or missing since this service "
                                                  "started") and "; heatmaps unavailable: " in health.json()["reason"]
        after = upload(c, xray)
        assert after.status_code == 200 and after.json()["probability"] == before["probability"]
        weights[len(weights) // 2] ^= 0xFF  # restored: heatmaps stay off until a restart, which would now work
        (bundle / "model.safetensors").write_bytes(bytes(weights))
        assert c.get("/healthz").json()["reason"].startswith("heatmaps unavailable")


def test_a_model_that_cannot_be_built_refuses_heatmaps_with_its_own_reason(tiny_bundle: Path, xray: bytes,
                                                                           tmp_path: Path) -> None:
    """A card whose model_kwargs the model does not take scores with ONNX Runtime, but Grad-CAM's torch model cannot
    be built from it: the 503 said the weights on disk had changed since start-up (they had not, and a restart would
    not help). It says the reason (without the bundle's path, or apostrophes), and so does /healthz."""
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    card = load_card(bundle)  # its run's record of the settings too: the builder is what refuses them
    save_card(bundle, dataclasses.replace(card, model_kwargs={"widht": 8},
                                          train_config={**card.train_config, "model_kwargs": {"widht": 8}}))
    with TestClient(create_app(bundle, backend="onnx")) as c:
        assert upload(c, xray).status_code == 200
        for heatmap in ("true", "map"):  # the reason is kept for the later ones
            r = upload(c, xray, heatmap=heatmap)
            assert_error(r, 503, "heatmaps unavailable until a restart: the torch model Grad-CAM needs cannot be built "
                                 "from the bundle: its model_kwargs do not fit the model simple_cnn (")
            assert "widht" in r.text and str(tmp_path) not in r.text and "'" not in r.text
        assert c.get("/healthz").json()["reason"] == r.json()["error"]
        assert scraped(c)[("pneumoscan_refusals_total", labels(reason="heatmap_unavailable"))] == 2


# ---------------------------------------------------------------- /metrics: what Prometheus reads


Samples = dict[tuple[str, frozenset], float]


def scraped(client: TestClient | httpx.Client) -> Samples:
    """Every sample /metrics answers, by name and labels, read by prometheus_client's own parser as a scrape reads
    them."""
    r = client.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def moved(before: Samples, after: Samples, name: str) -> dict[frozenset, float]:
    """The samples of ``name`` that changed between two scrapes, by their labels, and by how much."""
    keys = {labels for n, labels in before.keys() | after.keys() if n == name}
    return {labels: after.get((name, labels), 0) - before.get((name, labels), 0) for labels in keys
            if after.get((name, labels), 0) != before.get((name, labels), 0)}


def labels(**values: str) -> frozenset:
    return frozenset(values.items())


def counted_calls(client: TestClient) -> dict[tuple[str, str], float]:
    """The readings /metrics has counted, by stage (task) and call."""
    calls: dict[tuple[str, str], float] = {}
    for (name, given), value in scraped(client).items():
        if name == "pneumoscan_readings_total":
            key = (dict(given)["task"], dict(given)["call"])
            calls[key] = calls.get(key, 0) + value
    return calls


def test_a_reading_is_counted_by_its_call_its_scope_its_warnings_and_its_endpoint(client: TestClient,
                                                                                 xray: bytes) -> None:
    """One prediction raises the readings counter by one, under the model's call and the film's scope as the answer
    gives them, and its warning (a JPEG has no DICOM tags) by its kind; the model ran once; the request is counted
    under its endpoint and status (the scrape before it too)."""
    before = scraped(client)
    answer = upload(client, xray).json()
    after = scraped(client)
    near = {None: "unknown", True: "true", False: "false"}[answer["near_threshold"]]
    assert moved(before, after, "pneumoscan_readings_total") == {
        labels(task=answer["task"], call=answer["label"], in_scope="true", near_threshold=near): 1}
    assert NO_TAGS in answer["warnings"]
    assert moved(before, after, "pneumoscan_scope_warnings_total")[
        labels(task=answer["task"], kind="untagged", out_of_scope="false")] == 1
    assert moved(before, after, "pneumoscan_model_run_seconds_count") == {labels(task=answer["task"]): 1}
    assert moved(before, after, "pneumoscan_http_requests_total") == {
        labels(endpoint="/v1/predict", status="200"): 1, labels(endpoint="/metrics", status="200"): 1}
    assert not moved(before, after, "pneumoscan_refusals_total")


def test_a_refused_film_is_counted_by_the_kind_of_its_refusal(client: TestClient, bad_cases: dict) -> None:
    """A film that cannot be read, a file that is no image and a full queue's 503 are each counted under their own
    reason (a fixed word: never the message, which may quote the film), and no reading is counted."""
    before = scraped(client)
    for case in ("truncated JPEG", "text declared as text/plain", "empty upload"):
        data, content_type, status, _ = bad_cases[case]
        assert upload(client, data, content_type).status_code == status
    assert client.post("/v1/predict?heatmaps=true").status_code == 422  # an option it does not know
    after = scraped(client)
    assert moved(before, after, "pneumoscan_refusals_total") == {
        labels(reason="unreadable_film"): 1, labels(reason="unsupported_type"): 1, labels(reason="bad_request"): 2}
    assert not moved(before, after, "pneumoscan_readings_total")
    assert moved(before, after, "pneumoscan_http_requests_total") == {
        labels(endpoint="/v1/predict", status="422"): 2, labels(endpoint="/v1/predict", status="415"): 1,
        labels(endpoint="/v1/predict", status="400"): 1, labels(endpoint="/metrics", status="200"): 1}


def test_an_out_of_scope_film_is_counted_so_with_the_kind_that_put_it_there(client: TestClient,
                                                                           xray: bytes) -> None:
    """A lateral chest film is read out of scope: its reading is counted with in_scope false, and its warning under
    the kind lateral, out of scope."""
    film = dicom_bytes(read_gray(xray).astype(np.uint16) * 16, BodyPartExamined="CHEST", ViewPosition="LL",
                       PatientAge="004Y", StudyInstanceUID=generate_uid(), SeriesInstanceUID=generate_uid())
    before = scraped(client)
    answer = upload(client, film, "application/dicom", "film.dcm").json()
    after = scraped(client)
    assert answer["in_scope"] is False
    readings = moved(before, after, "pneumoscan_readings_total")
    assert list(readings.values()) == [1] and ("in_scope", "false") in next(iter(readings))
    assert moved(before, after, "pneumoscan_scope_warnings_total")[
        labels(task=answer["task"], kind="lateral", out_of_scope="true")] == 1


def test_metrics_name_the_model_and_the_bounds_and_no_path_a_client_sent(client: TestClient) -> None:
    """The model served by its id, version and backend; the lanes' bounds (--max-queue, 4 x --heatmap-lane) beside
    the requests in them; a path the service does not serve counted as other, never by its text."""
    model = client.get("/v1/model").json()
    assert client.get("/patients/Jane-Doe-MRN-004217").status_code == 404
    samples = scraped(client)
    assert samples[("pneumoscan_model_info", labels(task=model["task"], model_id=model["id"],
                                                    model_version=model["version"], backend="torch"))] == 1
    for lane, bound in (("prediction", Limits().max_queue), ("heatmap", Limits().heatmap_queue)):
        assert samples[("pneumoscan_requests_in_service_limit", labels(lane=lane))] == bound
        assert samples[("pneumoscan_requests_in_service", labels(lane=lane))] == 0
    assert samples[("pneumoscan_http_requests_total", labels(endpoint="other", status="404"))] >= 1
    assert "Jane-Doe" not in client.get("/metrics").text


def test_the_live_service_counts_the_requests_in_it_and_the_log_lines_it_held_back(
        live_server: tuple[str, Path, int]) -> None:
    """Over a real socket: an upload still arriving is a request in the service (its place in --max-queue taken
    before its body is read), and is not once its client has gone; the access log's lines held back by its rate
    limit (10 lines a status each 10 s) are counted, which the log says only in its next line of that status."""
    url, _, _ = live_server
    host, port = url.removeprefix("http://").split(":")
    with httpx.Client(base_url=url, timeout=60) as http:
        in_lane = ("pneumoscan_requests_in_service", labels(lane="prediction"))

        def settles_at(count: int) -> bool:
            deadline = time.monotonic() + 10
            while scraped(http)[in_lane] != count:
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.05)
            return True

        with socket.create_connection((host, int(port))) as slow:
            slow.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
                         b"boundary=b\r\nContent-Length: 100000\r\n\r\n--b\r\n")
            assert settles_at(1)
        assert settles_at(0)
        before = scraped(http)
        for _ in range(12):
            http.get("/healthz")
        after = scraped(http)
    assert moved(before, after, "pneumoscan_log_lines_held_back_total")[labels(log="access")] >= 2
