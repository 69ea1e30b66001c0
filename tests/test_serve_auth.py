"""The service's locks: the API key for all but the page, /healthz and the schema, the Host allow-list (DNS
rebinding), refusing a public bind without a key, the security headers on every answer, API docs that load nothing
from a CDN, and CORS only when configured. The key file, the bind check and the locks over a socket are also proved
through the command."""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import get_args

import httpx
import pytest
from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.types import Receive, Scope, Send

from pneumoscan import cli
from pneumoscan.inference.onnx_runtime import model_version
from pneumoscan.models.card import load_card
from pneumoscan.serving.app import create_app
from pneumoscan.serving import guard
from pneumoscan.serving.guard import KEY_FILE_REFUSED, Access
from pneumoscan.serving.limits import RETRY_AFTER_S, Limits
from pneumoscan.serving.server import UVICORN_GRACE_RAN_OUT, GraceRanOut, build_server
from tests.builders import free_port, running, start_serve, wait_healthy
from tests.test_serve import labels, scraped

KEY = "k3y-" + "0123456789abcdef" * 2
LOCAL = "http://127.0.0.1:8000"  # a Host the default allow-list accepts


@pytest.fixture(scope="module")
def xray(data_root: Path) -> bytes:
    return sorted((data_root / "train" / "NORMAL").glob("*.jpeg"))[0].read_bytes()


@pytest.fixture(scope="module")
def locked(tiny_bundle: Path) -> Iterator[TestClient]:
    with TestClient(create_app(tiny_bundle, access=Access(api_key=KEY)), base_url=LOCAL) as c:
        yield c


def predict(client: TestClient | httpx.Client, xray: bytes, **headers: str) -> httpx.Response:
    return predict_at(client, "/v1/predict", xray, **headers)


def predict_at(client: TestClient | httpx.Client, path: str, xray: bytes, **headers: str) -> httpx.Response:
    return client.post(path, files={"file": ("x.jpeg", xray, "image/jpeg")}, headers=headers)


# ---------------------------------------------------------------- the key


@pytest.mark.parametrize("headers, words", [
    ({}, "an API key is required"),
    ({"Authorization": "Bearer wrong-key-of-some-length"}, "a valid API key is required"),
    ({"X-API-Key": KEY[:-1]}, "a valid API key is required"),
    ({"Authorization": KEY}, "an API key is required"),  # the key without the Bearer scheme
])
def test_missing_or_wrong_key_is_401(locked: TestClient, xray: bytes, headers: dict, words: str) -> None:
    for r in (predict(locked, xray, **headers), locked.get("/v1/model", headers=headers),
              locked.get("/metrics", headers=headers)):
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert words in r.json()["error"]


@pytest.mark.parametrize("headers", [
    {"Authorization": f"Bearer {KEY}"}, {"authorization": f"bearer {KEY}"}, {"X-API-Key": KEY},
    # a proxy adds the key and passes on the client's Bearer token of a hospital sign-on: the token had been checked
    # instead of the key, and every such client refused
    {"Authorization": "Bearer sso-token-from-the-hospital-idp", "X-API-Key": KEY},
    {"Authorization": f"Bearer {KEY}", "X-API-Key": "another-header-of-the-proxy"},
])  # fmt: skip
def test_right_key_opens_the_api(locked: TestClient, xray: bytes, headers: dict) -> None:
    assert predict(locked, xray, **headers).status_code == 200
    assert locked.get("/v1/model", headers=headers).status_code == 200
    assert locked.get("/metrics", headers=headers).status_code == 200


def test_metrics_are_scraped_with_the_key_from_a_host_served_and_their_refusals_counted(locked: TestClient) -> None:
    """/metrics reveals no patient but the service's volumes: it needs the key as the API does (Prometheus sends it
    as a bearer token), and a Host the service serves; each refused scrape is counted under /metrics."""
    bearer = {"Authorization": f"Bearer {KEY}"}
    assert locked.get("/metrics", headers={**bearer, "host": "attacker.example"}).status_code == 400
    assert locked.get("/metrics").status_code == 401
    text = locked.get("/metrics", headers=bearer).text
    for status in ("400", "401"):
        assert f'pneumoscan_http_requests_total{{endpoint="/metrics",status="{status}"}}' in text


def test_probe_and_page_need_no_key(locked: TestClient) -> None:
    """Health probes and the page itself stay open; the page asks for the key and sends it."""
    assert locked.get("/healthz").status_code == 200
    page = locked.get("/")
    assert page.status_code == 200 and 'id="api-key"' in page.text
    assert "Authorization" in locked.get("/static/app.js").text


def test_short_key_is_refused() -> None:
    with pytest.raises(ValueError, match="too short"):
        Access(api_key="secret")


def test_a_key_no_client_can_send_is_refused_and_the_environments_line_break_is_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A service started with such a key passed its health checks and answered every request 401."""
    for key in (KEY + "\nsecond-line-0123456789", KEY[:8] + " " + KEY[8:], KEY + "\t", KEY + "é"):
        with pytest.raises(ValueError, match="no client can send in a header"):
            Access(api_key=key)
    (tmp_path / "key").write_text(f"{KEY}\nsecond-line-0123456789\n")  # two keys, neither named
    with pytest.raises(ValueError, match="line 1: give one key a line, as NAME KEY"):
        Access.from_options(tmp_path / "key")
    monkeypatch.setenv("PNEUMOSCAN_API_KEY", KEY + "\n")  # a secret made from a file, an env file written by echo
    assert Access.from_options().api_key == KEY
    for blank in (" \n", ""):  # PNEUMOSCAN_API_KEY= in a unit file had meant no key, with no word said
        monkeypatch.setenv("PNEUMOSCAN_API_KEY", blank)
        with pytest.raises(ValueError, match="PNEUMOSCAN_API_KEY is set but empty or only blanks"):
            Access.from_options()


def test_a_key_or_auth_file_of_raw_bytes_is_refused_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A key made with `openssl rand 32` (the -hex forgotten) had ended the start in the codec's words alone ('utf-8'
    codec can't decode byte 0xff in position 0), which named no file, and quoted a byte of the secret."""
    (tmp_path / "key").write_bytes(b"\xff" + KEY.encode())
    assert cli.main(["serve", "b", "--api-key-file", str(tmp_path / "key")]) == 2
    assert capsys.readouterr().err == (f"pneumoscan serve: error: the API key file {tmp_path / 'key'} is not text: it "
                                       "must hold one API key value, in printable ASCII\n")
    (tmp_path / "auth").write_bytes(b"Bearer \xfftoken")
    assert cli.main(["pacs", "b", "--url", "http://127.0.0.1:1/dicom-web", "--study", "1.2.3", "--auth-file",
                     str(tmp_path / "auth")]) == 2
    assert f"the auth file {tmp_path / 'auth'} is not text" in capsys.readouterr().err


# ---------------------------------------------------------------- named keys

WARD_KEY, PACS_KEY = "w4rd-" + "0123456789abcdef" * 2, "p4cs-" + "fedcba9876543210" * 2


def test_each_named_key_opens_the_api_and_a_key_not_in_the_file_does_not(tiny_bundle: Path, xray: bytes,
                                                                           tmp_path: Path) -> None:
    """The ward's workstations, the PACS router and a script shared one key: none could be revoked alone. A key
    file of NAME KEY lines, with comments and blank lines, gives each its own, and any of them is let in."""
    keys = tmp_path / "keys"
    keys.write_text(f"# who may call the service\n\nward {WARD_KEY}\n  pacs-router\t{PACS_KEY}  \n")
    access = Access.from_options(keys)
    assert access.named_keys == (("ward", WARD_KEY), ("pacs-router", PACS_KEY)) and access.api_key is None
    with TestClient(create_app(tiny_bundle, access=access), base_url=LOCAL) as client:
        assert predict(client, xray, Authorization=f"Bearer {WARD_KEY}").status_code == 200
        assert predict(client, xray, **{"X-API-Key": PACS_KEY}).status_code == 200
        for headers in ({}, {"X-API-Key": KEY}, {"X-API-Key": f"ward {WARD_KEY}"}, {"X-API-Key": "ward"}):
            assert client.get("/v1/model", headers=headers).status_code == 401, headers
    # as the file's rules, so the rules made in Python
    with pytest.raises(ValueError, match="each named API key needs a name and a key of its own"):
        Access(named_keys=(("ward", WARD_KEY), ("pacs", WARD_KEY)))
    with pytest.raises(ValueError, match="either one API key or named keys, not both"):
        Access(api_key=KEY, named_keys=(("ward", WARD_KEY),))
    with pytest.raises(ValueError, match="the API key named pacs is too short"):
        Access(named_keys=(("ward", WARD_KEY), ("pacs", "short-key")))


@pytest.mark.parametrize("text, line, words", [
    (f"ward {WARD_KEY}\n{PACS_KEY}\n", 2, "give one key a line, as NAME KEY (a name, a space, the key)"),
    (f"ward {WARD_KEY} pacs\n", 1, "give one key a line, as NAME KEY"),
    (f"# keys\nward {WARD_KEY}\nward {PACS_KEY}\n", 3, "the name ward is line 2's too: give each client a name of "
                                                      "its own"),
    (f"ward {WARD_KEY}\npacs {WARD_KEY}\n", 2, "its key is line 1's too: give each client a key of its own"),
    (f"ward {WARD_KEY}\n\npacs short-key\n", 3, "its key is too short: use at least 16 characters"),
    (f"ward/3 {WARD_KEY}\n", 1, "the key name 'ward/3' is not a short name"),
    (f"{'w' * 33} {WARD_KEY}\n", 1, "is not a short name: 1 to 32 letters, digits, '.', '_' or '-'"),
    (f"ward {WARD_KEY}\npacs {PACS_KEY}\u00e9\n", 2, "its key holds a character no client can send in a header"),
])  # fmt: skip
def test_a_malformed_key_file_is_refused_naming_the_line_never_the_key(text: str, line: int, words: str,
                                                                       tmp_path: Path) -> None:
    (keys := tmp_path / "keys").write_text(text)
    with pytest.raises(ValueError) as refused:
        Access.from_options(keys)
    said = str(refused.value)
    assert said.startswith(f"the API key file {keys}, line {line}: ") and words in said, said
    assert WARD_KEY not in said and PACS_KEY not in said


def test_a_key_file_of_comments_alone_is_refused_and_a_shared_one_warned_of(tmp_path: Path,
                                                                            caplog: pytest.LogCaptureFixture) -> None:
    (keys := tmp_path / "keys").write_text("# ward\n# pacs\n")
    with pytest.raises(ValueError, match="holds no key: only comments and blank lines"):
        Access.from_options(keys)
    keys.write_text(f"ward {WARD_KEY}\npacs {PACS_KEY}\n")
    keys.chmod(0o644)
    with caplog.at_level(logging.WARNING, "pneumoscan.core.secrets"):
        Access.from_options(keys)
    assert f"the API key file {keys} is readable by every user of this machine" in caplog.text


@pytest.fixture
def quick_looks(monkeypatch: pytest.MonkeyPatch) -> None:
    """A request may look at the key file 0.05 s after the last look, not a second: each test below waits for a
    look twice (2.2 s of sleep each, 8.8 s a run, where the looks and reloads they prove take milliseconds)."""
    monkeypatch.setattr(guard, "KEY_FILE_CHECK_S", 0.05)


def _after_a_look(client: TestClient, **headers: str) -> httpx.Response:
    """/v1/model asked once the service may look at its key file again (KEY_FILE_CHECK_S after its last look)."""
    time.sleep(guard.KEY_FILE_CHECK_S + 0.05)
    return client.get("/v1/model", headers=headers)


def test_a_line_deleted_from_the_key_file_is_a_key_revoked_within_a_second_without_sighup(
        tiny_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, quick_looks: None) -> None:
    """An operator who deletes a client's line expects its key to stop working: it went on being let in until
    someone sent SIGHUP. The file is looked at by a request once a second at most, read again when it has changed
    (a line deleted or added, a key replaced), and what the others send goes on being let in."""
    (keys := tmp_path / "keys").write_text(f"ward {WARD_KEY}\npacs {PACS_KEY}\n")
    with TestClient(create_app(tiny_bundle, access=Access.from_options(keys)), base_url=LOCAL) as client:
        assert client.get("/v1/model", headers={"X-API-Key": PACS_KEY}).status_code == 200
        keys.write_text(f"ward {WARD_KEY}\n")
        with caplog.at_level(logging.INFO, "pneumoscan.serving.guard"):
            assert _after_a_look(client, **{"X-API-Key": PACS_KEY}).status_code == 401
        assert client.get("/v1/model", headers={"X-API-Key": WARD_KEY}).status_code == 200
        assert (f"the API key file changed: the API key was reloaded from {keys}; requests from now on need one of "
                "its keys (ward)") in caplog.text
        keys.write_text(f"ward {WARD_KEY}\npacs {KEY}\n")  # the client given a key of its own again
        assert _after_a_look(client, **{"X-API-Key": KEY}).status_code == 200
    assert not any(secret in caplog.text for secret in (KEY, WARD_KEY, PACS_KEY)), caplog.text


@pytest.mark.parametrize("spoil, words", [
    (lambda keys: keys.write_text(""), "is empty"),
    (lambda keys: keys.unlink(), "cannot be read (no such file or directory)"),
    (lambda keys: keys.write_text(f"ward {WARD_KEY}\npacs short-key\n"), "line 2: its key is too short"),
])  # fmt: skip
def test_a_key_file_emptied_removed_or_spoiled_refuses_every_key_with_its_reason_never_opens_the_service(
        spoil: Callable[[Path], object], words: str, tiny_bundle: Path, tmp_path: Path,
        caplog: pytest.LogCaptureFixture, quick_looks: None) -> None:
    """A key file the checks of the start would refuse, found so while the service runs: every key is refused (503,
    key_file_refused: the keys in use may hold the one being revoked), a request without a key too, the log says
    why, and the file mended lets the keys in again. The page and the probe need no key, and stay; the probe says
    degraded (the service works, but lets no client in), where it said ok."""
    (keys := tmp_path / "keys").write_text(f"ward {WARD_KEY}\npacs {PACS_KEY}\n")
    with TestClient(create_app(tiny_bundle, access=Access.from_options(keys)), base_url=LOCAL) as client:
        spoil(keys)
        with caplog.at_level(logging.WARNING, "pneumoscan.serving.guard"):
            refused = _after_a_look(client, **{"X-API-Key": WARD_KEY})
        assert refused.status_code == 503, refused.text
        assert refused.json() == {"reason": "key_file_refused", "error": KEY_FILE_REFUSED}
        assert [client.get(path, headers=headers).status_code for path, headers in (
            ("/v1/model", {}), ("/v1/model", {"X-API-Key": PACS_KEY}), ("/metrics", {}),
            ("/healthz", {}), ("/", {}))] == [503, 503, 503, 200, 200]
        said = [r for r in caplog.records if "every API key is refused" in r.getMessage()]
        assert len(said) == 1 and said[0].levelno == logging.WARNING, caplog.text  # said once, not a request
        assert said[0].getMessage().startswith("the API key file changed: every API key is refused (503, "
                                               f"key_file_refused) until the file is mended: the API key file {keys}")
        assert words in said[0].getMessage() and WARD_KEY not in caplog.text
        # the probe says it, without the file's words (its path, its lines), which the log holds
        assert client.get("/healthz").json()["status"] == "degraded"
        assert client.get("/healthz").json()["reason"] == KEY_FILE_REFUSED
        keys.write_text(f"ward {WARD_KEY}\n")
        assert _after_a_look(client, **{"X-API-Key": WARD_KEY}).status_code == 200
        assert client.get("/healthz").json()["status"] == "ok"
        assert client.get("/v1/model", headers={"X-API-Key": PACS_KEY}).status_code == 401


def test_metrics_count_requests_and_readings_by_the_named_key_they_carried(tiny_bundle: Path, xray: bytes,
                                                                          tmp_path: Path) -> None:
    """IT saw how many requests were refused, but not which client sent them: each answer to a request that needs a
    key is counted by the key's name, a key not in the file as (unknown) and none as (none) (a client sends no name
    of its own: the series stay as few as the file's names), with its status (429: past --rate-limit), and each
    reading by the key's name. A service of one key has no such series."""
    from tests.test_serve import labels, moved, scraped

    (keys := tmp_path / "keys").write_text(f"ward {WARD_KEY}\npacs {PACS_KEY}\nprometheus {KEY}\n")
    app = create_app(tiny_bundle, access=Access.from_options(keys), rate_limit="2/minute")
    with TestClient(app, base_url=LOCAL, headers={"X-API-Key": KEY}) as prometheus:
        before = scraped(prometheus)
        assert predict(prometheus, xray, **{"X-API-Key": WARD_KEY}).status_code == 200
        assert [prometheus.post("/v1/predict", headers={"X-API-Key": PACS_KEY}).status_code
                for _ in range(3)] == [415, 415, 429]
        for sent in ("k3y-" + "a" * 32, "ward", "(unknown)"):
            assert prometheus.get("/v1/model", headers={"X-API-Key": sent}).status_code == 401
        assert TestClient(app, base_url=LOCAL).get("/v1/model").status_code == 401
        after = scraped(prometheus)
    assert moved(before, after, "pneumoscan_key_requests_total") == {
        labels(key="ward", status="200"): 1, labels(key="pacs", status="415"): 2, labels(key="pacs", status="429"): 1,
        labels(key="(unknown)", status="401"): 3, labels(key="(none)", status="401"): 1,
        labels(key="prometheus", status="200"): 1}  # the first scrape
    assert moved(before, after, "pneumoscan_key_readings_total") == {labels(key="ward", task="pneumonia"): 1}
    with TestClient(create_app(tiny_bundle, access=Access(api_key=KEY)), base_url=LOCAL,
                    headers={"X-API-Key": KEY}) as one_key:
        assert predict(one_key, xray).status_code == 200
        assert one_key.get("/v1/model", headers={"X-API-Key": WARD_KEY}).status_code == 401
        assert not any(name.startswith("pneumoscan_key_") for name, _ in scraped(one_key))


# ---------------------------------------------------------------- Host allow-list


@pytest.mark.parametrize("host, ok", [
    ("127.0.0.1:8000", True), ("localhost", True), ("LOCALHOST:8000", True), ("[::1]:8000", True),
    ("attacker.example", False), ("attacker.example:8000", False), ("127.0.0.1.attacker.example", False), ("", False),
])
def test_host_header_is_checked(tiny_bundle: Path, host: str, ok: bool) -> None:
    with TestClient(create_app(tiny_bundle, access=Access()), base_url=LOCAL) as c:
        r = c.get("/v1/model", headers={"host": host})
    if ok:
        assert r.status_code == 200
    else:
        assert r.status_code == 400 and "host name is not served here" in r.json()["error"]


def test_allowed_hosts_take_names_and_subdomain_patterns(tiny_bundle: Path) -> None:
    with TestClient(create_app(tiny_bundle, access=Access(allowed_hosts=("xray.hospital.org", "*.ward.org")))) as c:
        assert c.get("/", headers={"host": "xray.hospital.org:443"}).status_code == 200
        assert c.get("/", headers={"host": "ct.ward.org"}).status_code == 200
        assert c.get("/", headers={"host": "ward.org.evil.net"}).status_code == 400
        assert c.get("/", headers={"host": "localhost"}).status_code == 400  # replaced, not added to


def test_the_health_probe_answers_whatever_the_host(tiny_bundle: Path) -> None:
    """A load balancer's or an orchestrator's probe names the instance by its address or localhost: behind
    --allowed-hosts it had got 400, and every instance was taken out of rotation."""
    with TestClient(create_app(tiny_bundle, access=Access(api_key=KEY, allowed_hosts=("xray.hospital.org",)))) as c:
        for host in ("10.1.2.3:8000", "localhost", "xray.hospital.org"):
            r = c.get("/healthz", headers={"host": host})
            assert r.status_code == 200 and r.json()["status"] == "ok", (host, r.text)
        assert c.get("/v1/model", headers={"host": "10.1.2.3:8000", "X-API-Key": KEY}).status_code == 400


def test_an_options_request_needs_the_key_as_any_other(locked: TestClient) -> None:
    """Only a CORS preflight may go without it, and with --cors-origin that is answered before the key is asked
    for: an OPTIONS for an unknown path had answered 404 (a 401 elsewhere), telling which paths exist."""
    for path in ("/nope", "/v1/model"):
        r = locked.options(path)
        assert r.status_code == 401, (path, r.status_code)


def test_an_app_made_in_python_with_a_key_in_the_environment_applies_it_or_is_refused(
    tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``create_app(BUNDLE)`` for an ASGI server of one's own answered without the key PNEUMOSCAN_API_KEY set (and
    without the Host check): refused, saying how to apply it."""
    monkeypatch.setenv("PNEUMOSCAN_API_KEY", KEY)
    with pytest.raises(ValueError, match="PNEUMOSCAN_API_KEY is set, but this app was given no access rules"):
        create_app(tiny_bundle)
    with TestClient(create_app(tiny_bundle, access=Access.from_options()), base_url="http://127.0.0.1") as c:
        assert c.get("/v1/model").status_code == 401
        assert c.get("/v1/model", headers={"X-API-Key": KEY}).status_code == 200


# ---------------------------------------------------------------- headers, docs, CORS


def test_security_headers_on_every_answer(locked: TestClient, xray: bytes) -> None:
    auth = {"X-API-Key": KEY}
    answers = {
        "page": locked.get("/"), "asset": locked.get("/static/app.js"), "health": locked.get("/healthz"),
        "schema": locked.get("/openapi.json"), "card": locked.get("/v1/model", headers=auth),
        "prediction": predict(locked, xray, **auth), "401": predict(locked, xray),
        "404": locked.get("/nope"), "413": predict(locked, xray + b"\0" * (21 * 2**20), **auth),
        "415": locked.post("/v1/predict", json={}, headers=auth),
        "400 host": locked.get("/", headers={"host": "evil.example"}),
    }
    answers["page as a file"] = locked.get("/static/index.html")  # the same page: framed nowhere either
    for name, r in answers.items():
        assert r.headers.get("x-content-type-options") == "nosniff", name
        assert r.headers.get("referrer-policy") == "no-referrer", name
        assert "frame-ancestors 'none'" in r.headers.get("content-security-policy", ""), name
        assert r.headers.get("x-frame-options") == "DENY", name
    assert answers["prediction"].status_code == 200 and answers["413"].status_code == 413
    assert answers["400 host"].status_code == 400
    assert answers["page as a file"].status_code == 200 and 'id="api-key"' in answers["page as a file"].text
    assert answers["404"].status_code == 401  # a path not served needs the key too: only the named ones are open


def test_the_key_is_required_behind_a_path_prefix(tiny_bundle: Path, xray: bytes) -> None:
    """Behind a proxy's prefix (uvicorn --root-path) or mounted under one, the request's path starts with the
    prefix: the key is still asked for where the router finds /v1/."""
    app = create_app(tiny_bundle, access=Access(api_key=KEY))
    outer = Starlette(routes=[Mount("/ps", app=app)])
    for client in (TestClient(app, base_url=LOCAL, root_path="/ps"), TestClient(outer, base_url=LOCAL)):
        with client as c:
            assert c.get("/ps/v1/model").status_code == 401 and predict_at(c, "/ps/v1/predict", xray).status_code == 401
            assert c.get("/ps/v1/model", headers={"X-API-Key": KEY}).status_code == 200
            assert c.get("/ps/healthz").status_code == 200 and c.get("/ps/").status_code == 200


def test_api_docs_load_nothing_from_outside(locked: TestClient) -> None:
    """/docs and /redoc (Swagger UI, ReDoc) would pull scripts and fonts from a CDN: they are off; the schema is
    served and is the documentation a client generator needs."""
    for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        r = locked.get(path, headers={"X-API-Key": KEY})
        assert r.status_code == 404 and "http" not in r.text
    schema = locked.get("/openapi.json")
    assert schema.status_code == 200 and "/v1/predict" in schema.json()["paths"]
    assert not re.search(r"https?://", schema.text)
    assert set(schema.json()["paths"]["/v1/predict"]["post"]["responses"]) >= {"401", "408", "503"}


def test_no_cors_unless_configured(tiny_bundle: Path) -> None:
    """A preflight CORS refuses (an origin, method or header not allowed) is answered as every refusal: JSON with
    its reason, counted under it (it was Starlette's plain-text 400, with no reason and not counted)."""
    from tests.test_serve import labels, moved, scraped

    origin = {"Origin": "https://other.example"}
    preflight = {**origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    with TestClient(create_app(tiny_bundle, access=Access()), base_url=LOCAL) as c:
        assert "access-control-allow-origin" not in c.get("/healthz", headers=origin).headers
        assert "access-control-allow-origin" not in c.options("/v1/predict", headers=preflight).headers
    access = Access(api_key=KEY, cors_origins=("https://viewer.hospital.org",))
    with TestClient(create_app(tiny_bundle, access=access), base_url=LOCAL) as c:
        before = scraped(TestClient(c.app, base_url=LOCAL, headers={"X-API-Key": KEY}))
        ok = c.options("/v1/predict", headers={**preflight, "Origin": "https://viewer.hospital.org"})
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "https://viewer.hospital.org"
        assert "authorization" in ok.headers["access-control-allow-headers"].lower()
        other = c.options("/v1/predict", headers=preflight)
        assert other.headers.get("access-control-allow-origin") != "https://other.example"
        put = c.options("/v1/predict", headers={**preflight, "Origin": "https://viewer.hospital.org",
                                                "Access-Control-Request-Method": "PUT"})
        for refused, words in ((other, "origin"), (put, "method")):
            assert refused.status_code == 400 and refused.json()["reason"] == "cors_not_allowed", refused.text
            assert refused.json()["error"].startswith(f"CORS preflight refused: its {words} not allowed here")
            assert "400" in documented_reasons()["cors_not_allowed"]
        counted = moved(before, scraped(TestClient(c.app, base_url=LOCAL, headers={"X-API-Key": KEY})),
                        "pneumoscan_refusals_total")
        assert counted == {labels(reason="cors_not_allowed"): 2}
        assert c.get("/v1/model", headers=origin).status_code == 401  # CORS does not replace the key
        refused = c.get("/v1/model", headers={"Origin": "https://viewer.hospital.org"})
        # the allowed page can read why it was refused
        assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == "https://viewer.hospital.org"
        # and when to try again, and which audit line its answer has: headers a browser hides unless exposed
        exposed = {h.strip().lower() for h in refused.headers["access-control-expose-headers"].split(",")}
        assert {"retry-after", "x-request-id"} <= exposed, exposed
        # preflights, which CORS answers before the key is asked, had no Host check and no security headers
        assert ok.headers["x-frame-options"] == "DENY" and other.headers["x-content-type-options"] == "nosniff"
        rebound = c.options("/v1/predict", headers={**preflight, "Origin": "https://viewer.hospital.org",
                                                    "Host": "evil.example"})
        assert rebound.status_code == 400 and rebound.json()["error"].startswith("this host name is not served")


# ---------------------------------------------------------------- through `pneumoscan serve`


def test_cli_serves_with_a_key_file(tiny_bundle: Path, xray: bytes, tmp_path: Path) -> None:
    """Quiet (``pneumoscan -q serve``), as well: no access log, no information messages; and each client's
    --rate-limit, which the requests the key check refuses spend none of."""
    (tmp_path / "key").write_text(KEY + "\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k != "PNEUMOSCAN_API_KEY"}
    with (tmp_path / "log").open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "pneumoscan", "-q", "serve", str(tiny_bundle),
                                 "--port", str(port), "--api-key-file", str(tmp_path / "key"), "--backend", "onnx",
                                 "--rate-limit", "3/minute"],
                                stdout=out, stderr=subprocess.STDOUT, env={**env, "PYTHONUNBUFFERED": "1"})
    try:
        wait_healthy(proc, url, tmp_path / "log")
        with httpx.Client(base_url=url, timeout=120) as http:
            assert predict(http, xray).status_code == 401
            r = predict(http, xray, Authorization=f"Bearer {KEY}")
            assert r.status_code == 200 and r.headers["x-content-type-options"] == "nosniff"
            assert http.get("/v1/model",
                            headers={"host": "rebound.attacker.example", "X-API-Key": KEY}).status_code == 400
            assert http.get("/docs", headers={"X-API-Key": KEY}).status_code == 404
            # the film read above is the first of three; the next two (no film: 415) spend the rest
            spent = [http.post("/v1/predict", headers={"X-API-Key": KEY}).status_code for _ in range(3)]
            assert spent == [415, 415, 429]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    log = (tmp_path / "log").read_text()
    assert KEY not in log
    assert "/v1/predict" not in log and "/healthz" not in log and "INFO" not in log, log


def _wait_for_line(proc: subprocess.Popen, log: Path, text: str, count: int = 1) -> str:
    """The served LOG once it holds ``text`` ``count`` times (the service answering still)."""
    deadline = time.monotonic() + 30
    while (said := log.read_text()).count(text) < count:
        assert proc.poll() is None and time.monotonic() < deadline, f"no {text!r} in the log:\n{said}"
        time.sleep(0.02)  # the line comes milliseconds after its signal or request
    return said


def test_sighup_reloads_the_key_file_and_a_file_refused_refuses_every_key_until_mended(tiny_bundle: Path,
                                                                                        tmp_path: Path) -> None:
    """`systemctl reload` (SIGHUP) ended the service without a line, a stop systemd did not restart: it reads the
    key file again, with the checks of the start, and a file they refuse refuses every key until it is mended (the
    keys in use stayed, the one its operator meant to revoke among them). A file that holds
    the key in use says so, and where it is systemd's copy of a LoadCredential= key (under $CREDENTIALS_DIRECTORY,
    made once at the start) that a restart hands over a new one: the copy was said to be reloaded, "requests from
    now on need the new key", while the new key written over /etc/pneumoscan/key was refused (systemd 252). A file
    of named keys replaces the one key, and a line removed from it revokes that key alone."""
    new_key = "n3w-" + "fedcba9876543210" * 2
    (credentials := tmp_path / "credentials").mkdir()
    (key := credentials / "key").write_text(KEY + "\n")
    port, log = free_port(), tmp_path / "log"
    url = f"http://127.0.0.1:{port}"
    proc = start_serve([str(tiny_bundle), "--port", str(port), "--api-key-file", str(key)], log,
                       env={"CREDENTIALS_DIRECTORY": str(credentials)})
    try:
        wait_healthy(proc, url, log)
        with httpx.Client(base_url=url, timeout=30) as http:
            assert http.get("/v1/model", headers={"X-API-Key": KEY}).status_code == 200
            proc.send_signal(signal.SIGHUP)
            _wait_for_line(proc, log, "holds the key in use, which stays (systemd copies a LoadCredential= key once, "
                                      "at start: systemctl restart hands over a new one)")
            assert http.get("/v1/model", headers={"X-API-Key": KEY}).status_code == 200
            key.write_text(new_key + "\n")
            proc.send_signal(signal.SIGHUP)
            _wait_for_line(proc, log, "SIGHUP: the API key was reloaded from")
            assert http.get("/v1/model", headers={"X-API-Key": KEY}).status_code == 401
            assert http.get("/v1/model", headers={"X-API-Key": new_key}).status_code == 200
            # a key each: both let in, each named in the access log; a line removed is that key revoked
            key.write_text(f"ward {WARD_KEY}\npacs {PACS_KEY}\n")
            proc.send_signal(signal.SIGHUP)
            _wait_for_line(proc, log, "requests from now on need one of its keys (ward, pacs)")
            assert http.get("/v1/model", headers={"X-API-Key": new_key}).status_code == 401
            for name, each in (("ward", WARD_KEY), ("pacs", PACS_KEY)):
                assert http.get("/v1/model", headers={"X-API-Key": each}).status_code == 200
                _wait_for_line(proc, log, f' {name} "GET /v1/model HTTP/1.1" 200')
            key.write_text(f"ward {WARD_KEY}\n")
            proc.send_signal(signal.SIGHUP)
            _wait_for_line(proc, log, "requests from now on need one of its keys (ward)")
            assert http.get("/v1/model", headers={"X-API-Key": PACS_KEY}).status_code == 401
            key.write_text(f"ward {WARD_KEY}\npacs short-key\n")  # refused: so is every key
            proc.send_signal(signal.SIGHUP)
            _wait_for_line(proc, log, "SIGHUP: every API key is refused")
            # the operator's next try within seconds is answered too: an answer to a signal is never held back
            key.write_text(f"ward {WARD_KEY}\nward {PACS_KEY}\n")
            proc.send_signal(signal.SIGHUP)
            _wait_for_line(proc, log, "SIGHUP: every API key is refused", count=2)
            for each in (WARD_KEY, "short-key", PACS_KEY):
                assert http.get("/v1/model", headers={"X-API-Key": each}).status_code == 503
            key.write_text(f"ward {WARD_KEY}\n")
            proc.send_signal(signal.SIGHUP)
            said = _wait_for_line(proc, log, "requests from now on need one of its keys (ward)", count=2)
            assert http.get("/v1/model", headers={"X-API-Key": WARD_KEY}).status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert said.count("the API key was reloaded") == 4, said
    assert re.search(rf"^WARNING .*SIGHUP: every API key is refused \(503, key_file_refused\) until the file is "
                     rf"mended: the API key file {re.escape(str(key))}, line 2: its key is too short", said, re.M), said
    assert re.search(r"^WARNING .*SIGHUP: every API key is refused .*line 2: the name ward is line 1's too: ",
                     said, re.M), said
    assert re.search(r'^INFO: +127\.0\.0\.1:\d+ - "GET /v1/model HTTP/1\.1" 200', said, re.M), said  # one key: no name
    assert not any(secret in said for secret in (KEY, new_key, WARD_KEY, PACS_KEY)), said


def test_sighup_without_a_key_file_is_logged_and_shutdown_waits_for_a_slow_upload_only_its_grace(
        tiny_bundle: Path, tmp_path: Path) -> None:
    """SIGHUP to a service started without a key file is a line in the log, and the service goes on. SIGTERM closes
    the listener at once; one client trickling an upload held the exit until its 408 (60 s by default), past an
    orchestrator's grace (Kubernetes: SIGKILL after 30 s). One service proves both (a start costs seconds)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with (tmp_path / "log").open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "pneumoscan", "serve", str(tiny_bundle), "--port", str(port),
                                 "--shutdown-grace", "0.2", "--body-timeout", "60"],
                                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        wait_healthy(proc, url, tmp_path / "log")
        proc.send_signal(signal.SIGHUP)
        said = _wait_for_line(proc, tmp_path / "log", "SIGHUP: nothing to reload")
        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
        assert proc.poll() is None, said
        with socket.create_connection(("127.0.0.1", port)) as slow:
            slow.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n"
                         b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n")
            # the request is in the service, its body still coming: as /metrics counts it, however late a loaded
            # machine reads its head
            in_service, deadline = ("pneumoscan_requests_in_service", labels(lane="prediction")), time.monotonic() + 10
            with httpx.Client(base_url=url, timeout=10) as http:
                while scraped(http)[in_service] != 1:
                    assert time.monotonic() < deadline, "the upload never came into the service"
                    time.sleep(0.02)
            proc.terminate()
            start = time.monotonic()
            proc.wait(timeout=30)
            took = time.monotonic() - start
            slow.settimeout(5)
            answer = slow.recv(65536)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGTERM  # uvicorn's handling of SIGTERM, beside SIGHUP's, unchanged
    assert took < 10, f"exit {took:.1f} s after SIGTERM with a grace of 0.2 s"
    # answered 503 (send it again), not 500 with uvicorn's "Exception in ASGI application" for a cancelled request,
    # with the busy 503's Retry-After: a balancer or client without one retried at once
    assert answer.startswith(b"HTTP/1.1 503 ") and b"the service is shutting down" in answer, answer
    assert f"\r\nretry-after: {RETRY_AFTER_S}\r\n".encode() in answer.lower(), answer
    log = (tmp_path / "log").read_text()
    assert "Exception in ASGI application" not in log
    # an event the operator chose, said as a warning that names it, not uvicorn's ERROR line (the journal's and an
    # alert's sign of a fault)
    assert "ERROR" not in log and "timeout graceful shutdown exceeded" not in log, log
    assert re.search(r"^WARNING .*the --shutdown-grace of 0.2 s ran out with 1 request in progress", log, re.M), log
    # and `serve --help` says what such a request gets: it had said only how long the requests have
    (sub,) = [a for a in cli.build_parser()._actions if a.dest == "command"]
    (grace,) = [a for a in sub.choices["serve"]._actions if "--shutdown-grace" in a.option_strings]
    assert "503" in grace.help and "Retry-After" in grace.help, grace.help


def test_only_uvicorns_line_for_the_grace_running_out_is_said_otherwise(caplog: pytest.LogCaptureFixture) -> None:
    """GraceRanOut turns that one line into a warning of pneumoscan's own and lets every other record pass: a real
    error of uvicorn's during the shutdown is not hidden."""
    said = GraceRanOut(20.0)

    def record(msg: str, *args: object) -> logging.LogRecord:
        return logging.LogRecord("uvicorn.error", logging.ERROR, __file__, 1, msg, args, None)

    with caplog.at_level(logging.WARNING, "pneumoscan"):
        assert not said.filter(record(UVICORN_GRACE_RAN_OUT, 2))
        assert said.filter(record("Exception in ASGI application"))
        assert said.filter(record("Cancel %s running task(s), something else", 2))
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert caplog.messages[0].startswith("shutting down: the --shutdown-grace of 20 s ran out with 2 requests in "
                                         "progress, cut off")


def test_public_bind_without_a_key_is_refused(tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture) -> None:
    monkeypatch.delenv("PNEUMOSCAN_API_KEY", raising=False)
    for host in ("0.0.0.0", "::", "192.168.1.4", "localhost."):  # localhost. is resolved, so may be elsewhere
        assert cli.main(["serve", str(tiny_bundle), "--host", host, "--port", "1"]) == 2
        err = capsys.readouterr().err
        assert f"refusing to listen on {host} without an API key" in err and "Traceback" not in err


def test_an_address_that_cannot_be_served_ends_the_start_with_one_line(tiny_bundle: Path,
                                                                        monkeypatch: pytest.MonkeyPatch,
                                                                        capsys: pytest.CaptureFixture) -> None:
    """A port in use printed uvicorn's `[Errno 98] ... address already in use` between its start-up and shutdown
    lines, once the model was loaded, and exited 3, which docs/cli.md keeps for pretrained weights missing. It is
    one line naming the address and what to do, exit 2, before the model loads (which logs that this bundle records
    no appearance), and the port stays its owner's; an address not of this machine likewise."""
    monkeypatch.setenv("PNEUMOSCAN_API_KEY", KEY)  # a key, so that a non-loopback --host is not refused for that
    with socket.create_server(("127.0.0.1", 0)) as owner:
        port = owner.getsockname()[1]
        assert cli.main(["serve", str(tiny_bundle), "--port", str(port)]) == 2
        assert capsys.readouterr().err == (f"pneumoscan serve: error: 127.0.0.1:{port} is in use (another service?): "
                                           "choose another --port\n")
        with socket.create_connection(("127.0.0.1", port)), owner.accept()[0]:
            pass  # still listening, and still the owner's
    assert cli.main(["serve", str(tiny_bundle), "--host", "192.0.2.1", "--port", "8000"]) == 2  # TEST-NET-1
    assert capsys.readouterr().err == ("pneumoscan serve: error: cannot listen on 192.0.2.1:8000: that address is not "
                                       "one of this machine: choose another --host\n")


def test_insecure_public_bind_warns_and_serves(tiny_bundle: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "pneumoscan.serving.server"):
        server = build_server(tiny_bundle, host="0.0.0.0", port=0, insecure=True)
    assert "INSECURE: listening on 0.0.0.0 with NO API key" in caplog.text
    with running(server) as url:
        assert httpx.get(f"{url}/v1/model").status_code == 200
        assert httpx.get(f"{url}/v1/model", headers={"host": "evil.example"}).status_code == 400


def test_a_wildcard_address_answering_loopback_names_only_warns_that_others_get_400(
        tiny_bundle: Path, caplog: pytest.LogCaptureFixture) -> None:
    """`serve --host 0.0.0.0 --api-key-file KEY` without --allowed-hosts listened on every address and answered
    every client that reached it by the machine's name or address 400, while /healthz (which answers whatever the
    Host) told the load balancer ok, and the start said nothing. It warns at start, naming the option; with the
    names clients use given, it does not."""
    for hosts, warned in ((("localhost", "127.0.0.1", "::1"), True), (("xray.example", "localhost"), False)):
        caplog.clear()
        with caplog.at_level(logging.WARNING, "pneumoscan.serving.server"):
            server = build_server(tiny_bundle, host="0.0.0.0", port=0, backend="onnx",
                                  access=Access(api_key=KEY, allowed_hosts=hosts))
        for sock in server.sockets:
            sock.close()
        said = [r.getMessage() for r in caplog.records if "--allowed-hosts" in r.getMessage()]
        assert bool(said) == warned, caplog.text


def test_the_start_says_which_model_it_serves_from_where_and_whether_a_key_is_required(
        tiny_bundle: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The start printed uvicorn's lines alone: after a bundle was swapped and the service restarted, the journal
    said neither which model nor which folder was being served, nor whether the API needed a key. One line says the
    model's id and version, the bundle, the backend and the key."""
    card = load_card(tiny_bundle)
    for access, words in ((Access(api_key=KEY), "an API key is required"), (Access(), "no API key")):
        caplog.clear()
        with caplog.at_level(logging.INFO, "pneumoscan.serving.server"):
            server = build_server(tiny_bundle, port=0, backend="onnx", access=access)
        for sock in server.sockets:
            sock.close()
        said = [r.getMessage() for r in caplog.records if r.name == "pneumoscan.serving.server"]
        version = model_version(tiny_bundle, "onnx", card)
        assert said == [f"serving {card.model_id} (version {version}) from {tiny_bundle}, scored by onnx; {words}"]


def test_the_services_connections_send_without_waiting_for_an_ack(tiny_bundle: Path) -> None:
    """Each connection the service accepts has Nagle's algorithm off (TCP_NODELAY), as asyncio's own servers do. The
    sockets `serve` opens before the model loads (:func:`.server.listen`) gave asyncio connections it left with Nagle
    on, so on a kept-alive connection each answer's body waited for the ACK of its head, which the client delays by
    40 ms: one client got 19 readings a second, p50 52 ms, where the model takes 3 ms (bench_serve.py)."""
    server = build_server(tiny_bundle, port=0, backend="onnx")
    with running(server) as url, httpx.Client(base_url=url) as client:
        assert client.get("/healthz").status_code == 200  # the connection stays open (kept alive)
        accepted = [c.transport.get_extra_info("socket") for c in server.server_state.connections]
        assert accepted and all(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for s in accepted), accepted


def test_served_address_joins_the_host_list(tiny_bundle: Path) -> None:
    server = build_server(tiny_bundle, host="127.0.0.2", port=0)
    with TestClient(server.config.app, base_url="http://127.0.0.2:8000") as c:
        assert c.get("/healthz").status_code == 200
    for sock in server.sockets:  # taken by build_server, and not served here
        sock.close()


def test_cli_reads_the_key_from_a_file_or_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:
    parse = cli.build_parser().parse_args
    monkeypatch.setenv("PNEUMOSCAN_API_KEY", KEY)
    limits, access = cli.serve_settings(parse(["serve", "b"]))
    assert (access.api_key == KEY and access.allowed_hosts == ("localhost", "127.0.0.1", "::1")
            and not access.cors_origins)
    assert limits == Limits()
    (tmp_path / "key").write_text("from-the-file-0123456789\n")
    (tmp_path / "key").chmod(0o600)  # as docs/deployment.md makes it: one every user could read is warned of
    limits, access = cli.serve_settings(parse(["serve", "b", "--api-key-file", str(tmp_path / "key"),
                                               "--allowed-hosts", "a.org, b.org", "--allowed-hosts", "c.org",
                                               "--cors-origin", "https://v.org", "--max-queue", "5",
                                               "--body-timeout", "7.5"]))
    assert access.api_key == "from-the-file-0123456789"  # the file wins, its newline dropped
    assert access.allowed_hosts == ("a.org", "b.org", "c.org") and access.cors_origins == ("https://v.org",)
    assert (limits.max_queue, limits.body_timeout, limits.heatmap_lane) == (5, 7.5, Limits().heatmap_lane)
    monkeypatch.delenv("PNEUMOSCAN_API_KEY")
    assert cli.serve_settings(parse(["serve", "b"]))[1].api_key is None
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="is empty"):
        cli.serve_settings(parse(["serve", "b", "--api-key-file", str(tmp_path / "empty")]))
    # a bare "permission denied" (or "is a directory") named no key file nor who must read it
    assert cli.main(["serve", "b", "--api-key-file", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (f"pneumoscan serve: error: the API key file {tmp_path} cannot be read (is a "
                                       "directory): it must be a file the user running pneumoscan can read\n")
    with pytest.raises(SystemExit):
        parse(["serve", "b", "--max-queue", "0"])


def test_access_rules_from_the_serve_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PNEUMOSCAN_API_KEY", KEY)
    (tmp_path / "key").write_text(" from-the-file-0123456789 \n")
    assert Access.from_options(tmp_path / "key").api_key == "from-the-file-0123456789"  # the file wins
    assert Access.from_options(None, ["a.org,b.org", " c.org "]) == Access(KEY, ("a.org", "b.org", "c.org"))
    monkeypatch.delenv("PNEUMOSCAN_API_KEY")
    assert Access.from_options() == Access()  # no key, loopback only
    (tmp_path / "blank").write_text(" \n")
    with pytest.raises(ValueError, match="is empty"):  # a blank key file must not mean "no key"
        Access.from_options(tmp_path / "blank")


def test_the_keys_in_use_say_where_their_key_file_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The looks at the key file, its reloads and SIGHUP's answer each read where the file is from one place: serve's
    --api-key-file path, and none for a key from the environment or no key at all."""
    (keys := tmp_path / "keys").write_text(f"ward {WARD_KEY}\n")
    keys.chmod(0o600)
    assert guard.KeyInUse(Access.from_options(keys)).key_file == keys
    monkeypatch.setenv("PNEUMOSCAN_API_KEY", KEY)
    assert guard.KeyInUse(Access.from_options()).key_file is None
    assert guard.KeyInUse(None).key_file is None


@pytest.mark.parametrize("option, value", [
    ("--max-upload-mb", "inf"), ("--max-upload-mb", "nan"), ("--body-timeout", "inf"), ("--header-timeout", "-inf"),
    ("--port", "65536"), ("--port", "-1"), ("--port", "http"),
])  # fmt: skip
def test_serve_refuses_numbers_it_cannot_use(option: str, value: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.build_parser().parse_args(["serve", "b", option, value])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and f"argument {option}" in err and "Traceback" not in err


def test_serve_takes_any_port_from_0_to_65535() -> None:
    parse = cli.build_parser().parse_args
    assert [parse(["serve", "b", "--port", p]).port for p in ("0", "65535")] == [0, 65535]


def test_a_host_name_given_with_a_port_is_refused_at_start() -> None:
    """The Host header's port is dropped before the comparison, so `--allowed-hosts xray.org:8443` matched no
    request: the service started, passed its health checks and answered every client 400. It is refused, naming the
    name to give; bare and bracketed IPv6 addresses are not ports."""
    refusal = r"xray\.org:8443, \[::1\]:80: give host names without a port .*: xray\.org, ::1"
    with pytest.raises(ValueError, match=refusal):
        cli.serve_settings(cli.build_parser().parse_args(["serve", "b", "--allowed-hosts", "a.org,xray.org:8443",
                                                          "--allowed-hosts", "[::1]:80"]))
    assert Access(allowed_hosts=("::1", "[::1]", "*.ward.org")).allowed_hosts == ("::1", "[::1]", "*.ward.org")


def test_a_cors_origin_no_browser_sends_is_refused_at_start() -> None:
    """`--cors-origin https://viewer.hospital.org/` (copied from the address bar) started a service whose every
    preflight from that viewer got `400 Disallowed CORS origin`: a browser's Origin header is the scheme, the host and
    a port other than the default, nothing after, and CORS compares it as it comes. Such an origin is refused at
    start naming the one to give; two origins in one option (as --allowed-hosts takes them) too, and a wildcard
    stays allowed."""
    parse = cli.build_parser().parse_args
    for given, fix in (("https://viewer.hospital.org/", "give https://viewer.hospital.org"),
                       ("HTTPS://Viewer.Hospital.org:443", "give https://viewer.hospital.org"),
                       ("http://[::1]:80/app", r"give http://\[::1\]"),
                       ("viewer.hospital.org", "not an origin"),
                       ("https://a.org,https://b.org", r"give each origin apart \(repeat --cors-origin\)")):
        with pytest.raises(ValueError, match=rf"cors_origins \(--cors-origin\) {re.escape(given)}: .*{fix}"):
            cli.serve_settings(parse(["serve", "b", "--cors-origin", given]))
    kept = ("https://viewer.hospital.org", "http://10.1.2.3:8080", "https://[2001:db8::1]:8443", "*")
    assert Access(cors_origins=kept).cors_origins == kept


# ---------------------------------------------------------------- every refusal says its reason

# the reasons proved by the tests of their own conditions, each of which asserts its answer's reason (a full lane, an
# upload too slow or too large, a model broken, a heatmap refused or failed); a client gone hears no answer
PROVED_ELSEWHERE = {  # each reason's answer needs a service state of its own: the test (module, name) that proves it
    "busy": ("test_serve_limits", "test_full_queue_is_503_with_retry_after"),
    "upload_timeout": ("test_serve_limits", "test_trickling_body_gets_408_and_is_closed"),
    "too_large": ("test_serve", "test_file_over_the_default_limit_is_413"),
    "model_broken": ("test_serve_limits", "test_a_request_in_progress_when_the_model_breaks_gets_no_reading"),
    "heatmap_unavailable": ("test_serve", "test_a_model_that_cannot_be_built_refuses_heatmaps_with_its_own_reason"),
    "heatmap_failed": ("test_runs_here", "test_a_heatmap_that_fails_after_the_start_is_refused_with_its_films_reading"),
    "client_gone": ("test_serve_limits", "test_work_of_a_client_that_disconnected_is_not_computed"),
    "cors_not_allowed": ("test_serve_auth", "test_no_cors_unless_configured"),
    "rate_limited": ("test_serve_rate",
                     "test_a_client_past_its_rate_gets_429_with_retry_after_and_another_is_still_served"),
    "rate_limit_unavailable": ("test_serve_rate", "test_instances_sharing_a_redis_server_count_one_allowance_and_"
                                                  "refuse_503_while_it_is_down"),
    "audit_log_lost": ("test_serve_audit",
                       "test_a_reading_whose_line_cannot_be_written_is_answered_only_when_the_line_is_not_required"),
    "key_file_refused": ("test_serve_auth", "test_a_key_file_emptied_removed_or_spoiled_refuses_every_key_with_its_"
                                            "reason_never_opens_the_service"),
}


def documented_reasons() -> dict[str, str]:
    """docs/api.md's table of reasons: each reason and the statuses its row gives."""
    text = (Path(__file__).parents[1] / "docs" / "api.md").read_text()
    return {m[1]: m[2] for m in re.finditer(r"^\| `([a-z_]+)` \| ([0-9][^|]*) \| [^|]*\w[^|]* \|$", text, re.M)}


def test_every_refusal_names_a_documented_reason_and_is_counted_under_it(locked: TestClient, xray: bytes) -> None:
    """Each non-2xx answer the service gives carries a `reason` a client can branch on, listed in docs/api.md with
    its status and what to do: the key's and the Host check's refusals, a path not served, a method not taken, the
    framework's 422 and a bug's 500 carried none. Each is counted under it in /metrics, the unauthenticated ones too
    (a client with a wrong key shows as key_wrong)."""
    from pneumoscan.serving.guard import SHUTTING_DOWN, Guard
    from pneumoscan.serving.limits import Refusal
    from tests.test_serve import labels, moved, scraped

    key = {"Authorization": f"Bearer {KEY}"}
    text = ("notes.txt", b"Patient notes\n" * 20, "text/plain")

    async def failing(scope: Scope, receive: Receive, send: Send) -> None:
        raise ZeroDivisionError("a bug")

    async def cancelled(scope: Scope, receive: Receive, send: Send) -> None:
        raise asyncio.CancelledError  # what uvicorn does to a request when the shutdown's grace runs out

    keyed = TestClient(locked.app, base_url=LOCAL, headers=key)  # the same app (started by locked), with the key
    before = scraped(keyed)
    answers = {
        "key_missing": locked.get("/v1/model"),
        "key_wrong": locked.get("/v1/model", headers={"X-API-Key": KEY[:-1]}),
        "host_not_served": locked.get("/v1/model", headers={**key, "host": "attacker.example"}),
        "not_found": locked.get("/v1/model/", headers=key),
        "method_not_allowed": locked.get("/v1/predict", headers=key),
        "bad_request": locked.post("/v1/predict?format=xml", headers=key, files={"file": ("x.jpeg", xray)}),
        "unsupported_type": locked.post("/v1/predict", headers=key, files={"file": text}),
        "unreadable_film": predict(locked, xray[: len(xray) // 2], **key),
        "not_reportable": locked.post("/v1/predict?format=fhir", headers=key,
                                      files={"file": ("x.jpeg", xray, "image/jpeg")}),
    }
    counted = moved(before, scraped(keyed), "pneumoscan_refusals_total")
    answers["internal_error"] = TestClient(Guard(failing, None)).get("/")  # no lifespan: bare apps
    answers["shutting_down"] = TestClient(Guard(cancelled, None)).get("/")
    documented = documented_reasons()
    for reason, answer in answers.items():
        assert answer.status_code >= 400 and answer.json()["reason"] == reason, (reason, answer.text)
        assert str(answer.status_code) in documented[reason], (reason, answer.status_code, documented[reason])
    assert answers["shutting_down"].json()["error"] == SHUTTING_DOWN
    assert counted == {labels(reason=r): 1 for r in answers if r not in ("internal_error", "shutting_down")}
    assert set(documented) == set(get_args(Refusal)) == {*answers, *PROVED_ELSEWHERE}
    for reason, (module, name) in PROVED_ELSEWHERE.items():  # a test renamed or gone leaves its reason unproved
        assert callable(getattr(importlib.import_module(f"tests.{module}"), name, None)), (reason, module, name)
