"""serve --audit-log: one JSON line for each prediction request, answered or refused, that matches the answer the
client got (model, card digest, threshold, probability, call, warnings by kind, key name, film digest), without the
key, a file name or patient data; the file 0600, opened again at its path once logrotate has moved it; and a path
that cannot be written refused at start, with the reason."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from pneumoscan.cli import main
from pneumoscan.models.card import load_card, save_card
from pneumoscan.serving.app import create_app
from pneumoscan.serving.audit import AuditLog
from pneumoscan.serving.guard import Access
from pneumoscan.serving.server import ListeningServer
from tests.builders import at_threshold, free_port, running
from tests.test_serve import labels, moved, scraped, with_threshold

WARD_KEY, PACS_KEY = "ward-" + "0123456789abcdef" * 2, "pacs-" + "fedcba9876543210" * 2
SECRET = "Jane-Doe-MRN-004217"  # a file name that must reach no line


@pytest.fixture(scope="module")
def films(data_root: Path) -> list[bytes]:
    return [sorted((data_root / "train" / label).glob("*.jpeg"))[0].read_bytes() for label in ("NORMAL", "PNEUMONIA")]


def lines(path: Path) -> list[dict]:
    """The audit file's lines, parsed: each is written before its answer's end is sent."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def post(http: httpx.Client, film: bytes, key: str, **params: str) -> httpx.Response:
    return http.post("/v1/predict", files={"file": (f"{SECRET}.jpeg", film, "image/jpeg")}, params=params,
                     headers={"X-API-Key": key})


def test_each_reading_and_refusal_is_a_line_that_matches_its_answer_and_logrotate_moves_the_file(
        tiny_bundle: Path, films: list[bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The service `pneumoscan serve --api-key-file --audit-log` builds, served over a socket in a thread: a process
    of its own took 1-2 s of CPU to start, and proved nothing more of the audit lines."""
    keys = tmp_path / "keys"
    keys.write_text(f"ward {WARD_KEY}\npacs {PACS_KEY}\n")
    keys.chmod(0o600)
    audit = tmp_path / "audit" / "readings.jsonl"
    audit.parent.mkdir()
    built: list[ListeningServer] = []
    with monkeypatch.context() as m:
        m.setattr(ListeningServer, "run", lambda server: built.append(server))  # kept, to be run below
        assert main(["serve", str(tiny_bundle), "--port", str(free_port()), "--api-key-file", str(keys),
                     "--audit-log", str(audit)]) == 0
    with running(built[0]) as url:
        with httpx.Client(base_url=url, timeout=60) as http:
            card = http.get("/v1/model", headers={"X-API-Key": WARD_KEY}).json()
            answers = [post(http, films[0], WARD_KEY), post(http, films[1], PACS_KEY, format="json"),
                       post(http, films[0], "not-" + WARD_KEY), post(http, films[1][:400], PACS_KEY)]
            assert [r.status_code for r in answers] == [200, 200, 401, 422]
            before = lines(audit)
            audit.rename(audit.with_name("readings.jsonl.1"))  # logrotate's move (no copytruncate)
            answers.append(post(http, films[1], WARD_KEY))
            assert answers[-1].status_code == 200
            after = lines(audit)
    assert [len(before), len(after)] == [4, 1]
    assert stat.S_IMODE(os.stat(audit).st_mode) == 0o600  # the file created again after the move too
    sent = [films[0], films[1], films[0], films[1][:400], films[1]]
    for line, answer, film, key in zip(before + after, answers, sent, ["ward", "pacs", "(unknown)", "pacs", "ward"],
                                       strict=True):
        assert line["request_id"] == answer.headers["x-request-id"]
        assert line["time"].endswith("Z") and line["key"] == key and line["status"] == answer.status_code
        assert (line["model_id"], line["model_version"], line["card_digest"]) == (card["id"], card["version"],
                                                                                 card["card_digest"])
        body = answer.json()
        if answer.status_code == 200:
            assert line["reason"] is None and line["format"] == "json" and line["heatmap"] is False
            assert line["film_sha256"] == "sha256:" + hashlib.sha256(film).hexdigest()
            assert line["film_bytes"] == len(film)
            assert line["readings"] == [{
                "task": card["task"], "model_id": body["model_id"], "model_version": body["model_version"],
                "probability": body["probability"], "call": body["label"], "threshold": card["threshold"],
                "near_threshold": body["near_threshold"], "in_scope": body["in_scope"],
                "warnings": ["untagged", "content_unchecked"]}]  # the JPEG's, and the tiny bundle's
            assert len(body["warnings"]) == 2
        else:
            assert line["reason"] == body["reason"] and line["readings"] == []
    assert before[2]["film_sha256"] is None  # refused at the key: no film was read
    assert before[3]["film_sha256"] == "sha256:" + hashlib.sha256(films[1][:400]).hexdigest()
    text = (audit.with_name("readings.jsonl.1").read_text() + audit.read_text())
    for absent in (SECRET, WARD_KEY, PACS_KEY, "no DICOM tags"):  # a file name, the keys, a warning's words
        assert absent not in text


@pytest.mark.parametrize("make, words", [
    (lambda tmp: tmp / "missing" / "audit.jsonl", "cannot be written (No such file or directory)"),
    (lambda tmp: tmp, "not a regular file"),
    (lambda tmp: _fifo(tmp / "fifo"), "not a regular file"),  # opened, it would wait for a reader
    (lambda tmp: _file(tmp / "audit.jsonl", 0o644), "its mode -rw-r--r-- lets others read it or a group write it"),
], ids=["no folder", "a folder", "a FIFO", "readable by others"])
def test_an_audit_log_that_cannot_be_written_or_is_open_to_others_refuses_the_start(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], make, words: str) -> None:
    """Refused before the bundle is read: the folder named as one holds none, so a check that let the path pass
    would fail on it (not serve on for ever)."""
    path = make(tmp_path)
    assert main(["serve", str(tmp_path), "--port", str(free_port()), "--audit-log", str(path)]) == 2
    assert f"error: --audit-log {path}: {words}" in capsys.readouterr().err


def _file(path: Path, mode: int) -> Path:
    path.write_text("")
    path.chmod(mode)
    return path


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def test_a_line_that_cannot_be_written_is_said_as_a_warning_not_a_traceback(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A full disk (/dev/full) loses the line: a warning says so, rate-limited by the served log's filter, where
    logging printed a traceback of its own for each line lost."""
    audit = AuditLog(tmp_path / "audit.jsonl")
    audit.handler.stream = open("/dev/full", "w")  # noqa: SIM115 - closed by the handler
    try:
        with caplog.at_level(logging.WARNING, "pneumoscan.serving.audit"):
            audit.write({"status": 200})
    finally:
        audit.close()
    assert [r.getMessage() for r in caplog.records] == [
        f"audit log lines to {tmp_path / 'audit.jsonl'} are lost (No space left on device): free its disk or mend "
        "its folder; the service goes on"]


def test_a_second_stage_reading_is_its_own_entry_after_the_first(tiny_bundle: Path, tiny_etiology_bundle: Path,
                                                                 films: list[bytes], tmp_path: Path) -> None:
    always = with_threshold(tiny_bundle, 0.0, tmp_path / "always")  # every film read as pneumonia: etiology follows
    audit = tmp_path / "audit.jsonl"
    with TestClient(create_app(always, etiology=tiny_etiology_bundle, audit_log=audit)) as c:
        body = c.post("/v1/predict", files={"file": ("x.jpeg", films[1], "image/jpeg")}).json()
        card = load_card(always)
        save_card(always, at_threshold(card, threshold=1e-6))  # replaced on disk since the start
        assert c.get("/healthz").json()["status"] == "degraded"  # the check that finds it
        c.post("/v1/predict", files={"file": ("x.jpeg", films[1], "image/jpeg")})
    line, after = lines(audit)
    assert (line["bundle_on_disk"], after["bundle_on_disk"]) == (None, "replaced")  # as listen's film_read lines
    etiology = body["etiology"]
    assert [(r["task"], r["model_id"], r["call"], r["probability"], r["in_scope"]) for r in line["readings"]] == [
        ("pneumonia", body["model_id"], "PNEUMONIA", body["probability"], body["in_scope"]),
        ("etiology", etiology["model_id"], etiology["label"], etiology["probability"], etiology["in_scope"])]
    assert line["key"] is None and line["readings"][1]["threshold"] == etiology["threshold"]


def test_a_key_refused_on_any_endpoint_is_a_line_and_one_let_in_there_is_none(tiny_bundle: Path,
                                                                               tmp_path: Path) -> None:
    """Failed authentication belongs in the trail wherever it is tried: a wrong or missing key on /v1/model or
    /metrics is a line (status, reason, key, path), as on /v1/predict, where /metrics alone counted it; a request let
    in there, or a public one, is none."""
    audit = tmp_path / "audit.jsonl"
    access = Access(named_keys=(("ward", WARD_KEY),))
    with TestClient(create_app(tiny_bundle, access=access, audit_log=audit), base_url="http://127.0.0.1:8000") as c:
        answers = [c.get("/v1/model", headers={"X-API-Key": "not-" + WARD_KEY}), c.get("/metrics"),
                   c.get("/v1/model", headers={"X-API-Key": WARD_KEY}), c.get("/healthz")]
    assert [r.status_code for r in answers] == [401, 401, 200, 200]
    assert [(line["status"], line["reason"], line["key"], line["path"]) for line in lines(audit)] == [
        (401, "key_wrong", "(unknown)", "/v1/model"), (401, "key_missing", "(none)", "/metrics")]
    assert [line["request_id"] for line in lines(audit)] == [r.headers["x-request-id"] for r in answers[:2]]


@pytest.mark.parametrize("required", [False, True], ids=["default", "required"])
def test_a_reading_whose_line_cannot_be_written_is_answered_only_when_the_line_is_not_required(
        tiny_bundle: Path, films: list[bytes], tmp_path: Path, caplog: pytest.LogCaptureFixture,
        required: bool) -> None:
    """The audit file replaced by a folder while the service runs (its lines cannot be written, as root too): by
    default the reading is answered and a warning says the line is lost; with --audit-required it is a 503 naming
    the reason, no reading in it, counted under that reason and as a 503 in /metrics as every refusal is (by its key
    too, which had counted the 200 withheld), and not as a reading (nor its key's), with the security headers every
    answer carries."""
    audit = tmp_path / "audit.jsonl"
    app = create_app(tiny_bundle, access=Access(named_keys=(("ward", WARD_KEY),)), audit_log=audit,
                     audit_required=required)
    with TestClient(app, base_url="http://127.0.0.1:8000", headers={"X-API-Key": WARD_KEY}) as c:
        audit.unlink()
        audit.mkdir()
        before = scraped(c)
        with caplog.at_level(logging.WARNING, "pneumoscan.serving.audit"):
            answer = c.post("/v1/predict", files={"file": ("x.jpeg", films[0], "image/jpeg")})
        after = scraped(c)
    readings = [sum(moved(before, after, name).values())
                for name in ("pneumoscan_readings_total", "pneumoscan_key_readings_total")]
    assert readings == ([0, 0] if required else [1, 1])  # the readings the client got
    counted = moved(before, after, "pneumoscan_refusals_total")
    assert "are lost (Is a directory)" in caplog.text
    assert counted == ({labels(reason="audit_log_lost"): 1} if required else {})
    answered = {k: n for k, n in moved(before, after, "pneumoscan_http_requests_total").items()
                if ("endpoint", "/v1/predict") in k}  # the status the client got, not the reading's
    assert answered == {labels(endpoint="/v1/predict", status="503" if required else "200"): 1}
    # by its key too (a 200 there had said the ward got a reading), beside the first scrape's 200
    assert moved(before, after, "pneumoscan_key_requests_total") == (
        {labels(key="ward", status="200"): 1, labels(key="ward", status="503"): 1} if required
        else {labels(key="ward", status="200"): 2})
    if required:
        assert (answer.status_code, answer.json()["reason"]) == (503, "audit_log_lost")
        assert "probability" not in answer.text and answer.headers["x-request-id"]
        assert (answer.headers["x-content-type-options"], answer.headers["referrer-policy"]) == ("nosniff",
                                                                                               "no-referrer")
        assert answer.headers["content-type"] == "application/json"
    else:
        assert answer.status_code == 200 and 0 <= answer.json()["probability"] <= 1
