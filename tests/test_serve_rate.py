"""Each client's allowance of prediction requests (serve --rate-limit): a client past it gets 429 with Retry-After
and a reason while another is still served, its allowance frees once its window has passed, the health probe, the
model card and the page are never counted, a shared API key does not make its holders one client, a named key is
one client wherever it is sent from, and behind a proxy each forwarded address is a client of its own, its 429s
counted in /metrics and held back in the access log as any status's. Instances sharing a Redis server
(--rate-limit-storage, a real redis-server started here) count one allowance."""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from pneumoscan import cli
from pneumoscan.serving.app import create_app
from pneumoscan.serving.guard import Access
from pneumoscan.serving import limits
from pneumoscan.serving.limits import STORE_SILENT, PerClient, Rejected
from tests.builders import Clock, free_port
from tests.test_serve import labels, moved, scraped
from tests.test_serve_auth import KEY, LOCAL, PACS_KEY, WARD_KEY, predict, predict_at
from tests.test_interop import private_ca
from tests.test_serve_limits import logged

WARD, SCRIPT = ("10.1.0.7", 50123), ("10.1.0.99", 50124)  # two workstations' addresses


@pytest.fixture(scope="module")
def xray(data_root: Path) -> bytes:
    return sorted((data_root / "train" / "NORMAL").glob("*.jpeg"))[0].read_bytes()


def as_client(app: FastAPI, address: tuple[str, int], **headers: str) -> TestClient:
    """A client of ``app`` from ``address`` (the app started by the test's own ``with TestClient(app)``)."""
    return TestClient(app, base_url=LOCAL, client=address, headers=headers)


def no_film(client: TestClient | httpx.Client, **headers: str) -> httpx.Response:
    """A prediction request without its film: cheap, and counted as any other (415 when let in: no multipart form)."""
    return client.post("/v1/predict", headers=headers)


def test_a_client_past_its_rate_gets_429_with_retry_after_and_another_is_still_served(tiny_bundle: Path,
                                                                                     xray: bytes) -> None:
    """The script that sends films as fast as it can had the whole service answer 503 busy to every workstation once
    the queue was full; past its own allowance it alone is refused, with the wait, in the service's own form."""
    app = create_app(tiny_bundle, rate_limit="2/minute")
    with as_client(app, SCRIPT) as script:
        ward = as_client(app, WARD)
        before = scraped(script)
        assert [predict(script, xray).status_code for _ in range(2)] == [200, 200]
        refused = predict(script, xray)
        assert refused.status_code == 429, refused.text
        assert refused.json() == {"reason": "rate_limited", "error": refused.json()["error"]}
        assert "each may send 2 per minute (serve --rate-limit)" in refused.json()["error"]
        assert 55 <= int(refused.headers["retry-after"]) <= 60  # until its first request leaves the minute
        assert refused.headers["x-content-type-options"] == "nosniff"  # the guard's headers, as every answer
        assert predict(ward, xray).status_code == 200
        # what is no work is never counted, for the client past its allowance too
        for path in ("/healthz", "/v1/model", "/", "/static/app.js", "/openapi.json") * 3:
            assert script.get(path).status_code == 200, path
        assert script.head("/healthz").status_code == 200
        assert moved(before, scraped(script), "pneumoscan_refusals_total") == {labels(reason="rate_limited"): 1}
        # any request for work: a FHIR answer's and a heatmap's too
        assert predict_at(script, "/v1/predict?format=fhir", xray).status_code == 429
        assert script.post("/v1/predict?heatmap=true", files={"file": ("x.jpeg", xray)}).status_code == 429


def test_the_allowance_frees_once_its_window_has_passed(tiny_bundle: Path, xray: bytes) -> None:
    """A window of a second, so that the test waits no minute: Retry-After says when, and then the film is read."""
    with as_client(create_app(tiny_bundle, rate_limit="1/second"), SCRIPT) as script:
        assert no_film(script).status_code == 415  # counted, whatever its answer
        refused = no_film(script)
        assert (refused.status_code, refused.headers["retry-after"]) == (429, "1"), refused.text
        time.sleep(int(refused.headers["retry-after"]))
        assert predict(script, xray).status_code == 200


def test_holders_of_the_one_key_are_told_apart_by_address_and_a_request_without_it_spends_nothing(
        tiny_bundle: Path) -> None:
    """The service has one API key, which every workstation (or the proxy for them) sends: counted by key, they
    would share one allowance, and the script would starve the ward as the full queue did. A request the key check
    refuses (401) is no work and spends none of its address's allowance."""
    app = create_app(tiny_bundle, access=Access(api_key=KEY), rate_limit="2/minute")
    with as_client(app, SCRIPT) as anonymous:
        assert {no_film(anonymous).status_code for _ in range(5)} == {401}
        script, ward = as_client(app, SCRIPT, **{"X-API-Key": KEY}), as_client(app, WARD, **{"X-API-Key": KEY})
        assert [no_film(script).status_code for _ in range(3)] == [415, 415, 429]
        assert no_film(ward).status_code == 415


def test_behind_a_proxy_each_forwarded_address_is_a_client_and_its_429s_are_logged_as_any_status(
        tiny_bundle: Path) -> None:
    """A real server: uvicorn takes X-Forwarded-For from a peer on loopback (the nginx of docs/deployment.md), so a
    ward behind the proxy is not one client; a flood of 429s writes ten access lines, not one a request."""
    with logged(create_app(tiny_bundle, rate_limit="1/minute")) as (url, lines), \
            httpx.Client(base_url=url, timeout=30) as http:
        script = {"X-Forwarded-For": SCRIPT[0]}
        statuses = [no_film(http, **script).status_code for _ in range(40)]
        assert statuses == [415] + [429] * 39
        assert no_film(http, **{"X-Forwarded-For": WARD[0]}).status_code == 415
        assert no_film(http).status_code == 415  # the proxy's own address: a client too
        refused = [record for record in lines if record.args[4] == 429]
        assert scraped(http)[("pneumoscan_refusals_total", labels(reason="rate_limited"))] == 39
    assert len(refused) == 10 and all(str(record.args[0]).startswith(SCRIPT[0]) for record in refused)


def test_each_named_key_is_a_client_of_its_own_whatever_address_it_comes_from(tiny_bundle: Path) -> None:
    """Two workstations behind one proxy (one address) were one client, and one sending fast spent the other's
    allowance: with a key each, each is counted under its key's name, and a key sent from another address is the
    same client."""
    access = Access(named_keys=(("ward-1", WARD_KEY), ("ward-2", PACS_KEY)))
    app = create_app(tiny_bundle, access=access, rate_limit="2/minute")
    with as_client(app, SCRIPT, **{"X-API-Key": WARD_KEY}) as first:
        second = as_client(app, SCRIPT, **{"X-API-Key": PACS_KEY})
        assert [no_film(first).status_code for _ in range(3)] == [415, 415, 429]
        assert [no_film(second).status_code for _ in range(3)] == [415, 415, 429]
        assert no_film(as_client(app, WARD, **{"X-API-Key": WARD_KEY})).status_code == 429


@pytest.mark.parametrize("given", ["lots", "0/minute", "1/second;50/minute", "60/fortnight", ""])
def test_a_rate_the_service_cannot_keep_is_refused_as_the_options_are_read(given: str,
                                                                           capsys: pytest.CaptureFixture) -> None:
    """Refused before the model loads, saying what is taken: by the command, and by the library's own classes."""
    with pytest.raises(SystemExit) as exit:
        cli.main(["serve", "bundle", "--rate-limit", given])
    assert exit.value.code == 2
    assert (f"argument --rate-limit: must be one rate of at least one request, as N/minute, N/second, N/hour or N per "
            f"M minutes (60/minute, 10 per 30 seconds), got {given!r}") in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"rate_limit \(--rate-limit\) must be one rate of at least one request"):
        PerClient(given)
    assert cli.build_parser().parse_args(["serve", "b", "--rate-limit", "10 per 30 seconds"]).rate_limit == (
        "10 per 30 seconds")


# ---------------------------------------------------------------- a store the instances share


@contextmanager
def started_redis(folder: Path, *options: str) -> Iterator[subprocess.Popen]:
    """A real redis-server on loopback with ``options`` (its ports), with no file of its own (`make
    rate-limit-store` installs it; missing, the test fails), once it answers a PING on its Unix socket."""
    assert shutil.which("redis-server"), "no redis-server: `make rate-limit-store` installs it"
    sock = folder / "redis.sock"
    server = subprocess.Popen(["redis-server", *options, "--bind", "127.0.0.1", "--unixsocket", str(sock), "--save", "",
                               "--appendonly", "no", "--dir", str(folder)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while subprocess.run(["redis-cli", "-s", str(sock), "ping"], capture_output=True, text=True).stdout != "PONG\n":
            assert server.poll() is None and time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
        yield server
    finally:
        server.send_signal(signal.SIGCONT)  # one a test left hung ends as any other
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[tuple[tuple[str, str], subprocess.Popen]]:
    """A real redis-server on a free port of loopback and on a Unix socket, and its two URIs."""
    port = free_port()
    with started_redis(tmp_path, "--port", str(port)) as server:
        yield (f"redis://127.0.0.1:{port}/0", f"redis+unix://{tmp_path / 'redis.sock'}"), server


def test_instances_sharing_a_redis_server_count_one_allowance_and_refuse_503_while_it_is_down(
        tiny_bundle: Path, redis_server: tuple[tuple[str, str], subprocess.Popen],
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Two instances behind a load balancer counted apart in their memory: a client allowed 2 a minute sent 2 to
    each. With --rate-limit-storage they count in one Redis server (reached over TCP by one, a Unix socket by the
    other); while it does not answer, a prediction request cannot be counted and is refused (503 with Retry-After,
    the seconds until the store is next asked, rounded up: 2 whatever the back-off, before), never let in uncounted,
    and the service answers again once it is back. The back-off 2.5 s for the test (limits.STORE_RETRY_S), on the
    store's clock (limits.time), which the test moves: no back-off is waited out."""
    monkeypatch.setattr(limits, "STORE_RETRY_S", 2.5)
    clock = Clock()
    monkeypatch.setattr(limits, "time", clock)
    uris, server = redis_server
    first, second = (create_app(tiny_bundle, rate_limit="2/minute", rate_limit_storage=uri) for uri in uris)
    with as_client(first, SCRIPT) as script_first, as_client(second, SCRIPT) as script_second:
        assert [no_film(script_first).status_code, no_film(script_second).status_code] == [415, 415]
        refused = no_film(script_first)
        assert refused.status_code == 429 and 55 <= int(refused.headers["retry-after"]) <= 60, refused.text
        assert no_film(script_second).status_code == 429
        assert no_film(as_client(second, WARD)).status_code == 415  # another client, its own allowance
        server.terminate()
        server.wait(timeout=10)
        down = no_film(as_client(first, WARD))
        assert (down.status_code, down.headers["retry-after"]) == (503, "3"), down.text
        clock.now += 1.2  # 1.3 s left of the back-off: counted down, not said anew
        later = no_film(as_client(first, WARD))
        assert (later.status_code, later.headers["retry-after"]) == (503, "2"), later.headers
        assert down.json()["reason"] == "rate_limit_unavailable"
        assert "its rate-limit store (--rate-limit-storage) does not answer" in down.json()["error"]
        assert script_first.get("/healthz").status_code == 200  # what is never counted needs no store
        with started_redis(tmp_path, *server.args[1:3]):  # the same server again (its --port), counts lost
            assert no_film(as_client(first, WARD)).status_code == 503  # not asked before its back-off ends
            clock.now += 1.3
            answer = no_film(as_client(first, WARD))
            assert answer.status_code == 415, answer.text  # counted again, and let in


def timed(call: object, *args: object) -> tuple[httpx.Response, float]:
    """``call(*args)``'s answer and the seconds it took."""
    start = time.monotonic()
    answer = call(*args)  # type: ignore[operator]
    return answer, time.monotonic() - start


def connections(folder: Path) -> int:
    """The connections the redis-server of ``folder`` (:func:`started_redis`) has taken since it started, this
    one's included: while it is stopped, those it will take once continued are waiting in its listen queue."""
    stats = subprocess.run(["redis-cli", "-s", str(folder / "redis.sock"), "info", "stats"], capture_output=True,
                           text=True, check=True).stdout
    return int(re.search(r"^total_connections_received:(\d+)", stats, re.MULTILINE)[1])  # type: ignore[index]


def test_a_store_that_hangs_is_an_outage_refused_at_once_said_by_healthz_and_logged_as_it_starts_and_ends(
        tiny_bundle: Path, redis_server: tuple[tuple[str, str], subprocess.Popen], caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A Redis server that hangs (stopped: its port takes connections, and nothing answers) held each prediction
    request for the store's timeout, and a worker thread with it; /healthz said ok, and the log said an outage's
    start, never its end (nor the start of a second one within 10 s). Once a request has found it silent, the others
    are refused without asking it: the server, counting its connections once continued, took none of theirs (each
    ask of a hung server is a new connection, its last one dropped at the timeout), where a wall-clock bound on each
    refusal failed on a busy machine. It is asked again a back-off later (on the store's clock, which the test
    moves), by the health probe alone where no request comes, and the service counts again by itself. A real server,
    whose log holds back a warning said twice within 10 s: the store's timeout half a second for the test
    (limits.STORE_TIMEOUT_S)."""
    monkeypatch.setattr(limits, "STORE_TIMEOUT_S", 0.5)
    clock = Clock()
    monkeypatch.setattr(limits, "time", clock)
    uris, server = redis_server
    caplog.set_level(logging.INFO, logger="pneumoscan.serving.limits")
    with logged(create_app(tiny_bundle, rate_limit="100/minute", rate_limit_storage=uris[0])) as (url, _), \
            httpx.Client(base_url=url, timeout=30) as http:
        assert http.get("/healthz").json()["status"] == "ok"
        for outage in (1, 2):
            before = connections(tmp_path)
            server.send_signal(signal.SIGSTOP)
            first, waited = timed(no_film, http)
            assert first.status_code == 503 and waited >= 0.45, (first.text, waited)  # the store's timeout
            for _ in range(5):
                down = no_film(http)
                assert (down.status_code, down.json()["reason"], down.headers["retry-after"]) == (
                    503, "rate_limit_unavailable", "1"), down.text
            health = http.get("/healthz").json()
            assert (health["status"], health["reason"]) == ("degraded", STORE_SILENT), health
            server.send_signal(signal.SIGCONT)
            # this count's own connection alone: the first request asked over the one the service held, and neither
            # the refusals nor the probe asked at all
            assert connections(tmp_path) - before == 1, "refused after asking the store"
            clock.now += limits.STORE_RETRY_S  # the back-off after the last ask
            back = http.get("/healthz").json()  # the probe asks it: no request needed
            assert (back["status"], "reason" in back) == ("ok", False), back
            assert no_film(http).status_code == 415
        said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("the rate-limit store")]
    assert len(said) == 4, said
    for start, end in (said[:2], said[2:]):
        assert start == (f"the rate-limit store {uris[0]} does not answer (TimeoutError): prediction requests get 503 "
                         f"until it does"), said
        assert end == (f"the rate-limit store {uris[0]} answers again, after {limits.STORE_RETRY_S:.1f} s without: "
                       "prediction requests are counted again (6 refused 503 meanwhile)"), said


def test_a_store_that_stays_down_is_asked_again_after_a_back_off_that_doubles_to_its_cap_and_said_in_retry_after(
        redis_server: tuple[tuple[str, str], subprocess.Popen], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """A Redis server down for minutes was asked once a second by each instance, and every client, sent back for a
    second, sent its film again each second (its whole upload, for a PACS that keeps to Retry-After). Each ask that
    finds it silent doubles the wait before the next, from 1 s to 16 s at most, Retry-After saying the seconds left
    of it; the outage's end starts the next one's at 1 s again, and requests that set out together before the
    outage was known double nothing. A real server, hung (stopped), then down and started again on its port; the
    store's clock (limits.time) is the test's, so that the waits are proved whatever else the machine is doing."""
    monkeypatch.setattr(limits, "STORE_TIMEOUT_S", 0.5)
    clock = Clock()
    monkeypatch.setattr(limits, "time", clock)
    uris, server = redis_server
    per_client = PerClient("100/minute", uris[0])

    def retry_after() -> int | None:
        """The Retry-After of a request now (None: let in)."""
        try:
            asyncio.run(per_client.admit("10.1.0.7"))
        except Rejected as refused:
            assert refused.status == 503, refused.message
            return int(refused.headers["Retry-After"])  # type: ignore[index]
        return None

    assert retry_after() is None

    async def together() -> list[BaseException | None]:
        return await asyncio.gather(*(per_client.admit(f"10.1.0.{n}") for n in range(3)), return_exceptions=True)

    server.send_signal(signal.SIGSTOP)
    try:
        assert [getattr(r, "status", r) for r in asyncio.run(together())] == [503] * 3  # each asked, and waited
        assert retry_after() == 1
    finally:
        server.send_signal(signal.SIGCONT)
    clock.now += 1
    assert retry_after() is None  # the outage ends
    server.terminate()
    server.wait(timeout=10)
    waits = []
    for _ in range(7):
        waits.append(retry_after())  # the ask: it finds the server silent
        clock.now += waits[-1] - 0.5
        assert retry_after() == 1  # half a second left of that wait: not asked, said so
        clock.now += 0.5
    assert waits == [1, 2, 4, 8, 16, 16, 16]
    with started_redis(tmp_path, "--port", str(urlsplit(uris[0]).port)) as back:  # the same server again
        assert retry_after() is None  # asked as its wait ends: counted again
        back.terminate()
        back.wait(timeout=10)
        assert [retry_after(), retry_after()] == [1, 1]  # a new outage: from 1 s again


def test_a_store_that_hangs_found_by_the_health_probe_is_logged_as_timing_out(
        tiny_bundle: Path, redis_server: tuple[tuple[str, str], subprocess.Popen], caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An idle service whose probe was the first to find a hung Redis server logged the outage as a refused
    connection (ConnectionError), where a request finding it logged TimeoutError: the probe's PING fails with the
    client's own error, as a request's count does."""
    monkeypatch.setattr(limits, "STORE_TIMEOUT_S", 0.5)
    uris, server = redis_server
    caplog.set_level(logging.WARNING, logger="pneumoscan.serving.limits")
    with as_client(create_app(tiny_bundle, rate_limit="100/minute", rate_limit_storage=uris[0]), SCRIPT) as http:
        server.send_signal(signal.SIGSTOP)
        try:
            assert http.get("/healthz").json()["status"] == "degraded"
        finally:
            server.send_signal(signal.SIGCONT)
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("the rate-limit store")]
    assert said == [f"the rate-limit store {uris[0]} does not answer (TimeoutError): prediction requests get 503 "
                    "until it does"], said


def test_a_redis_server_over_tls_counts_with_its_ca_given_in_the_uri_and_is_refused_at_start_without_it(
        tiny_bundle: Path, tmp_path: Path) -> None:
    """A hospital that keeps TLS inside its network too had its rediss:// refused as no store. A real redis-server
    on a TLS port alone, its certificate signed by the hospital's own CA, which the URI names (``ssl_ca_certs``, as
    the Redis client reads it): the counts are kept there. Without it, or by a name the certificate does not give,
    the server is not trusted, and the start is refused with the client's reason."""
    ca, _ = private_ca(tmp_path)
    port, server_pem = free_port(), str(tmp_path / "server.pem")
    with started_redis(tmp_path, "--port", "0", "--tls-port", str(port), "--tls-cert-file", server_pem,
                       "--tls-key-file", server_pem, "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no"):
        uri = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}"
        assert cli.build_parser().parse_args(["serve", "b", "--rate-limit", "2/minute", "--rate-limit-storage",
                                              uri]).rate_limit_storage == uri
        with as_client(create_app(tiny_bundle, rate_limit="2/minute", rate_limit_storage=uri), SCRIPT) as script:
            assert [no_film(script).status_code for _ in range(3)] == [415, 415, 429]
            assert script.get("/healthz").json()["status"] == "ok"
        with pytest.raises(ValueError, match=rf"rediss://127\.0\.0\.1:{port}/0: the Redis server does not answer .*"
                                             r"certificate verify failed"):
            PerClient("2/minute", f"rediss://127.0.0.1:{port}/0")
        with pytest.raises(ValueError, match=r"certificate verify failed: Hostname mismatch"):  # named 127.0.0.1
            PerClient("2/minute", f"rediss://localhost:{port}/0?ssl_ca_certs={ca}")


def test_a_redis_server_that_asks_for_a_client_certificate_counts_with_it_given_in_the_uri_and_names_it_without(
        tiny_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A hospital whose Redis server asks each client for a certificate (tls-auth-clients yes): the start was refused
    with the TLS library's words alone (EOF occurred in violation of protocol), naming no setting, and a certificate
    file missing was said as the server not answering. A real redis-server that asks for one: given in the URI
    (``ssl_certfile``, its key in the same file), the counts are kept there; without it, the start is refused naming
    the setting; its file is checked before the server is asked, and its key warned of where every user can read
    it, as the PACS's client key is."""
    ca, _ = private_ca(tmp_path)
    port, server_pem, client_pem = free_port(), str(tmp_path / "server.pem"), tmp_path / "client.pem"
    caplog.set_level(logging.WARNING, logger="pneumoscan.core.secrets")

    def warned() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "pneumoscan.core.secrets"]

    with started_redis(tmp_path, "--port", "0", "--tls-port", str(port), "--tls-cert-file", server_pem,
                       "--tls-key-file", server_pem, "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "yes"):
        server = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}"
        with pytest.raises(ValueError, match=r"the Redis server does not answer .*; a Redis server that asks each "
                                             r"client for a certificate \(tls-auth-clients yes\) ends the connection "
                                             r"of one without: give it in ssl_certfile"):
            PerClient("2/minute", server)
        uri = f"{server}&ssl_certfile={client_pem}"
        with as_client(create_app(tiny_bundle, rate_limit="2/minute", rate_limit_storage=uri), SCRIPT) as script:
            assert [no_film(script).status_code for _ in range(3)] == [415, 415, 429]
            assert script.get("/healthz").json()["status"] == "ok"
        assert warned() == []  # mode 600: the account's alone
        client_pem.chmod(0o644)
        PerClient("2/minute", f"{uri}&ssl_keyfile={client_pem}")
        assert warned() == [
            f"the client key file {client_pem} is readable by every user of this machine (mode 644): make it "
            "readable by the account that runs pneumoscan alone (chmod 600, or 640 with a group of its own)"]
    missing = tmp_path / "missing.pem"  # the server is gone: refused before it is asked
    for given, said in ((f"ssl_certfile={missing}", f"the client certificate file {missing} cannot be read (no such "
                                                    "file or directory)"),
                        (f"ssl_keyfile={client_pem}", "ssl_keyfile goes with ssl_certfile: give the certificate too")):
        with pytest.raises(ValueError if "ssl_keyfile" in said else OSError, match=re.escape(said)):
            PerClient("2/minute", f"{server}&{given}")


@pytest.mark.parametrize(("options", "off"), [
    ("ssl_cert_reqs=none", "ssl_cert_reqs=none"),
    ("ssl_ca_certs=/etc/ca.pem&ssl_check_hostname=false", "ssl_check_hostname=false"),
    ("ssl_check_hostname=0&ssl_cert_reqs=none", "ssl_cert_reqs=none and ssl_check_hostname=false")])
def test_a_redis_server_over_tls_left_unverified_by_its_uri_is_refused_as_the_options_are_read(
        options: str, off: str, capsys: pytest.CaptureFixture) -> None:
    """The Redis client takes options in the URI that turn off its check of the server's certificate or of the name
    it gives: the counts were kept in a server not verified, without a word. Refused before the model loads or the
    server is reached (nothing listens at the port), saying which option and what to give instead; the options that
    keep the checks are taken."""
    port = free_port()
    uri = f"rediss://:s3cret-pass@127.0.0.1:{port}/0?{options}"
    said = (f"://:***@127.0.0.1:{port}/0?{options}: {off} would turn off the check of the Redis server's "
            f"certificate, and pneumoscan counts in no server it has not verified: drop ")
    with pytest.raises(SystemExit) as exit:
        cli.main(["serve", "bundle", "--rate-limit", "2/minute", "--rate-limit-storage", uri])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and f"argument --rate-limit-storage: rediss{said}" in err, err
    assert "give the CA that signed the server's certificate in ssl_ca_certs" in err and "s3cret" not in err, err
    with pytest.raises(ValueError, match=re.escape(f"(--rate-limit-storage) rediss{said}")):
        PerClient("2/minute", uri)
    kept = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs=/etc/ca.pem&ssl_cert_reqs=required&ssl_check_hostname=true"
    assert cli.build_parser().parse_args(["serve", "b", "--rate-limit", "2/minute", "--rate-limit-storage",
                                          kept]).rate_limit_storage == kept


def test_a_store_that_does_not_answer_or_is_not_redis_is_refused_at_start_without_its_password(
        tiny_bundle: Path) -> None:
    """The service would start and refuse every prediction request; and a URI's password is never said."""
    port = free_port()  # nothing listens there
    with pytest.raises(ValueError, match=rf"--rate-limit-storage\) redis://:\*\*\*@127\.0\.0\.1:{port}/0: the "
                                         r"Redis server does not answer \(within 1 s\): start it, or check the URI"):
        PerClient("2/minute", f"redis://:s3cret-pass@127.0.0.1:{port}/0")
    with pytest.raises(ValueError, match=r"takes memory:// or a Redis server's URI .*got 'memcached://127\.0\.0\.1'"):
        PerClient("2/minute", "memcached://127.0.0.1")
    with pytest.raises(ValueError, match=r"is where --rate-limit's counts are kept: give the rate too"):
        create_app(tiny_bundle, rate_limit_storage="memory://")
