"""The service's bounds, over a real uvicorn server on a loopback port (in a thread, so the tests can hold a
decode or a heatmap at a gate and count model calls): a full queue answers 503 with Retry-After, stalled
heads and bodies are cut off, work for a client that has gone is not computed, /healthz answers while every
decode slot is busy, heatmaps keep to their lane, and failures log one line each, rate-limited."""

from __future__ import annotations

import dataclasses
import errno
import io
import logging
import math
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI
from pydantic import TypeAdapter

import pneumoscan.core.logs as logs_module
import pneumoscan.serving.server as server_module
import pneumoscan.serving.service as service_module
from pneumoscan.core.logs import OneLineLog
from pneumoscan.inference.predict import Predictor
from pneumoscan.models import on_disk
from pneumoscan.serving.app import create_app
from pneumoscan.serving.limits import Limits
from pneumoscan.serving.server import (ACCESS_LOGGER, NOT_SERVED, QUIET_LOGGERS, AccessLines, AccessLog, served_paths,
                                       server_config)
from tests.builders import Clock, ClockAhead, free_port, running, wait_healthy
from tests.test_integrity import bright_overflow_bundle, png
from tests.test_serve import labels, moved, scraped

GATE_S = 20  # a gate never holds longer than this, so a failing test cannot hang


def uvicorn_server(app: FastAPI, limits: Limits | None = None) -> uvicorn.Server:
    """``app`` under uvicorn with the service's own settings (:func:`server_config`) on a free loopback port."""
    return uvicorn.Server(server_config(app, "127.0.0.1", 0, limits, log_level="warning"))


def live(app: FastAPI, limits: Limits | None = None) -> AbstractContextManager[str]:
    """:func:`uvicorn_server` running; yields its URL."""
    return running(uvicorn_server(app, limits))


class Gate:
    """Wraps a real function so that each call waits until the gate opens, counting calls as they arrive."""

    def __init__(self, fn: Callable) -> None:
        self.fn, self.open, self.entered, self.lock = fn, threading.Event(), 0, threading.Lock()

    def __call__(self, *args: object, **kwargs: object) -> object:
        with self.lock:
            self.entered += 1
        assert self.open.wait(GATE_S), "the gate was never opened"
        return self.fn(*args, **kwargs)

    def wait_entered(self, n: int) -> None:
        wait_for(lambda: self.entered >= n, f"{n} calls at the gate (got {self.entered})")


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@contextmanager
def in_background(calls: list[Callable[[], httpx.Response]]) -> Iterator[list[httpx.Response | Exception]]:
    """Run each call in its own thread; the list fills with their answers (joined on exit)."""
    results: list[httpx.Response | Exception] = []

    def run(call: Callable[[], httpx.Response]) -> None:
        try:
            results.append(call())
        except Exception as e:  # noqa: BLE001 - reported by the test's assertions
            results.append(e)

    threads = [threading.Thread(target=run, args=(call,), daemon=True) for call in calls]
    for t in threads:
        t.start()
    try:
        yield results
    finally:
        for t in threads:
            t.join(timeout=GATE_S + 10)


@pytest.fixture(scope="module")
def xray(data_root: Path) -> bytes:
    return sorted((data_root / "train" / "NORMAL").glob("*.jpeg"))[0].read_bytes()


def post(url: str, xray: bytes, heatmap: bool = False) -> Callable[[], httpx.Response]:
    query = "?heatmap=true" if heatmap else ""
    return lambda: httpx.post(f"{url}/v1/predict{query}", files={"file": ("x.jpeg", xray, "image/jpeg")}, timeout=60)


def multipart_head(length: int, boundary: str = "b") -> bytes:
    return ("POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {length}\r\n\r\n").encode()


def read_until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    start, data = time.monotonic(), b""
    sock.settimeout(timeout)
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data, time.monotonic() - start


# ---------------------------------------------------------------- queue bound


def test_full_queue_is_503_with_retry_after(tiny_bundle: Path, xray: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = Gate(service_module.decode_described)
    monkeypatch.setattr(service_module, "decode_described", gate)
    limits = Limits(max_concurrent_decodes=2, max_queue=2)
    app = create_app(tiny_bundle, limits=limits)
    with live(app, limits) as url:
        with in_background([post(url, xray), post(url, xray)]) as held:
            gate.wait_entered(2)  # both admitted requests are decoding (held at the gate)
            start = time.monotonic()
            r = post(url, xray)()
            assert time.monotonic() - start < 5  # refused at once, not queued
            assert r.status_code == 503 and r.headers["retry-after"] == "2"
            assert "busy" in r.json()["error"] and r.json()["reason"] == "busy"
            gate.open.set()
        assert sorted(x.status_code for x in held) == [200, 200]  # the admitted ones are served
        assert post(url, xray)().status_code == 200  # and the slots are given back
        assert app.state.in_flight["prediction"] == 0


# ---------------------------------------------------------------- stalled connections


def test_trickling_body_gets_408_and_is_closed(tiny_bundle: Path) -> None:
    limits = Limits(body_timeout=0.2, header_timeout=1.0)
    with live(create_app(tiny_bundle, limits=limits), limits) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(multipart_head(100_000)
                         + b'--b\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\n')
            stop = threading.Event()

            def trickle() -> None:  # a byte every 0.1 s: 100 KB would take hours
                while not stop.is_set():
                    try:
                        sock.sendall(b"\0")
                    except OSError:
                        return
                    time.sleep(0.1)

            dripper = threading.Thread(target=trickle, daemon=True)
            dripper.start()
            answer, took = read_until_closed(sock, timeout=10)
            stop.set()
            dripper.join()
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"did not arrive within 0.2 s" in answer and b'"reason":"upload_timeout"' in answer
        assert took < 5  # closed after the deadline, although bytes kept coming


def test_a_client_that_takes_none_of_its_answers_is_cut_off(tiny_bundle: Path) -> None:
    """Requests sent and answers never read: the answers filled the kernel's buffers, then the server's, and the
    connection and the answers waiting in it were held for as long as the client stayed connected (20 such clients
    of a DICOM SR with its heatmap held 95 MB for as long as they liked)."""
    limits = Limits(body_timeout=0.25, keep_alive=30)
    server = uvicorn_server(create_app(tiny_bundle, limits=limits), limits)
    with running(server) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: a small window
            sock.connect(("127.0.0.1", port))
            asked = 1000  # 1000 x 48 KB of the page's script: more than the kernel buffers of a loopback connection
            sock.sendall(b"GET /static/app.js HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * asked)
            # nothing read: the server's writes pause, and the deadline passes (the server lets go of the connection;
            # the client learns it only by reading)
            wait_for(lambda: server.server_state.connections, "the connection")
            wait_for(lambda: not server.server_state.connections, "the connection cut off", timeout=10)
            answer, took = read_until_closed(sock, timeout=20)
        answers = answer.count(b"HTTP/1.1 200 OK")
        assert answers < asked and took < 10, (answers, took)  # cut off: reading did not bring the rest
        assert httpx.get(f"{url}/healthz").status_code == 200  # a well-behaved client is unaffected


@pytest.mark.parametrize("opening", [b"", b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"])
def test_stalled_or_trickling_head_is_closed(tiny_bundle: Path, opening: bytes) -> None:
    """A connection that sends nothing, or trickles its headers a byte at a time, is closed at the head deadline."""
    limits = Limits(header_timeout=0.2, keep_alive=30)
    with live(create_app(tiny_bundle, limits=limits), limits) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(opening)
            start = time.monotonic()
            closed = False
            while time.monotonic() - start < 6:
                try:
                    sock.sendall(b"X")  # one more header byte every 0.1 s
                    sock.settimeout(0.1)
                    if sock.recv(1024) == b"":
                        closed = True
                        break
                except TimeoutError:
                    continue
                except OSError:  # reset or broken pipe: closed by the server
                    closed = True
                    break
            took = time.monotonic() - start
        assert closed and took < 4, took
        assert httpx.get(f"{url}/healthz").status_code == 200  # a well-behaved client is unaffected


def test_early_answer_leaves_time_to_finish_the_upload(tiny_bundle: Path, xray: bytes,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A 503 comes before the body is read; a client that sends its whole body before reading (as most do) must
    still get it, and keep its connection, even when the rest takes longer than the head deadline."""
    gate = Gate(service_module.decode_described)
    monkeypatch.setattr(service_module, "decode_described", gate)
    limits = Limits(max_concurrent_decodes=1, max_queue=1, header_timeout=0.3)
    with live(create_app(tiny_bundle, limits=limits), limits) as url:
        port = int(url.rsplit(":", 1)[1])
        with in_background([post(url, xray)]) as held:
            gate.wait_entered(1)
            body = (b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.jpeg"\r\n\r\n' + xray
                    + b"\r\n--b--\r\n")
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(multipart_head(len(body)) + body[:100])
                time.sleep(0.5)  # longer than the head deadline
                sock.sendall(body[100:])
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                answers, _ = read_until_closed(sock, timeout=10)
            gate.open.set()
        assert held[0].status_code == 200
    assert answers.startswith(b"HTTP/1.1 503") and b"retry-after: 2" in answers.lower()
    assert answers.count(b"HTTP/1.1 ") == 2 and b"HTTP/1.1 200" in answers  # the same connection goes on


def test_a_body_declared_over_the_limit_is_refused_before_it_arrives(tiny_bundle: Path) -> None:
    """A Content-Length over the upload limit was read until the limit was passed: a client that declared a terabyte
    and sent nothing held its place in the queue to the body deadline, then heard that its upload "did not arrive"
    (408), and one sending a larger film sent 20 MB of it before its 413. The head says enough: 413 at once."""
    limits = Limits(body_timeout=5.0)
    app = create_app(tiny_bundle, limits=limits)
    with live(app, limits) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(multipart_head(10**12) + b"--b\r\n")
            sock.settimeout(3)
            answer = b""
            try:
                while not answer.endswith(b"}"):  # the whole JSON answer, without waiting for the connection to close
                    answer += sock.recv(65536) or b"}"
            except TimeoutError:
                answer += b"(no more within 3 s)"
            assert app.state.in_flight["prediction"] == 0
    assert answer.startswith(b"HTTP/1.1 413") and b"upload too large: the limit is 20 MB" in answer, answer[:300]


def test_an_early_answer_on_a_connection_that_ends_with_it_reaches_a_client_still_sending(tiny_bundle: Path) -> None:
    """nginx speaks HTTP/1.0 to the service by default, so each connection ends with its answer: a 413 (or 401,
    503) given while a large body was still arriving was followed by a close that reset the connection, and nginx,
    still sending, answered its client 502 in place of the service's refusal. The client may send its whole body,
    then reads the answer."""
    size = 16 * 2**20  # far more than the two sockets' buffers hold
    with live(create_app(tiny_bundle, max_upload_mb=1.0)) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(multipart_head(size).replace(b"HTTP/1.1", b"HTTP/1.0", 1))
            sock.settimeout(10)
            sock.sendall(b"\0" * size)  # old code: ConnectionResetError or BrokenPipeError part of the way
            answer, took = read_until_closed(sock, timeout=10)
    assert answer.startswith(b"HTTP/1.1 413") and b"upload too large: the limit is 1 MB" in answer, answer[:300]
    assert took < 5  # the service closes once the client has sent all it announced


def test_a_lingering_close_ends_at_the_body_timeout_though_the_client_goes_on_sending(tiny_bundle: Path) -> None:
    """The lingering close after an early answer drops what the client sends for at most --body-timeout: a client
    that reads its answer and sends on without end (or never closes) does not hold the socket for ever."""
    limits = Limits(body_timeout=0.25)
    with live(create_app(tiny_bundle, limits=limits, max_upload_mb=1.0), limits) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as sock:
            start = time.monotonic()  # before the lingering close begins: a client held up after reading its answer
            sock.sendall(multipart_head(2**30).replace(b"HTTP/1.1", b"HTTP/1.0", 1))  # (load) sees less of it
            answer, _ = read_until_closed(sock, timeout=10)  # the service ends its side after the answer
            assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
            with pytest.raises(OSError):  # the socket closed on the service's side: a reset, then a broken pipe
                while time.monotonic() - start < 10:
                    sock.sendall(b"\0" * 1024)
                    time.sleep(0.02)
            took = time.monotonic() - start
    assert 0.2 < took < 5, took  # dropped for about the body's time, then closed


def test_lingering_closes_are_bounded_and_counted(tiny_bundle: Path) -> None:
    """Each lingering close holds a file descriptor for up to --body-timeout, and how many lingered at once had no
    bound, nor any count: past ``max_lingering`` a connection answered early closes at once, and /metrics counts the
    closes of each kind and those lingering now."""
    limits = Limits(body_timeout=5.0, max_lingering=1)
    with live(create_app(tiny_bundle, limits=limits, max_upload_mb=1.0), limits) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as first, \
                socket.create_connection(("127.0.0.1", port)) as second:
            for sock in (first, second):
                sock.sendall(multipart_head(2**30).replace(b"HTTP/1.1", b"HTTP/1.0", 1))
                answer, _ = read_until_closed(sock, timeout=10)  # the service ends its side after the answer
                assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
            with httpx.Client(base_url=url) as client:
                samples = scraped(client)
            start = time.monotonic()
            with pytest.raises(OSError):  # closed at once: a reset, then a broken pipe
                while time.monotonic() - start < 4:
                    second.sendall(b"\0" * 1024)
                    time.sleep(0.02)
            took = time.monotonic() - start
            first.sendall(b"\0" * 1024)  # still lingering: taken, and dropped
    assert took < 2.5, took  # not the 5 s of a lingering close
    assert samples[("pneumoscan_lingering_closes", labels())] == 1
    assert samples[("pneumoscan_lingering_closes_limit", labels())] == 1
    closes = "pneumoscan_early_answer_closes_total"
    assert samples[(closes, labels(close="lingering"))] == samples[(closes, labels(close="at_once"))] == 1


def test_a_lingering_close_the_process_has_no_descriptor_for_still_ends_the_connection(
        tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Out of file descriptors (EMFILE), the copy of the socket a lingering close needs cannot be made: the
    connection closes at once, as it would without one. The error escaped uvicorn's end of the connection, which
    kept it among its connections for good (a shutdown waited out its grace on it)."""
    import asyncio.trsock

    def no_descriptor(self: object) -> socket.socket:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(asyncio.trsock.TransportSocket, "dup", no_descriptor)
    server = uvicorn_server(create_app(tiny_bundle, max_upload_mb=1.0))
    with running(server) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(multipart_head(2**30).replace(b"HTTP/1.1", b"HTTP/1.0", 1))
            answer, _ = read_until_closed(sock, timeout=10)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
        wait_for(lambda: not server.server_state.connections, "the connection let go of", timeout=5)
        with httpx.Client(base_url=url) as client:
            closes = moved({}, scraped(client), "pneumoscan_early_answer_closes_total")
        assert closes == {labels(close="at_once"): 1}


# ---------------------------------------------------------------- clients that have gone


@contextmanager
def logged(app: FastAPI, limits: Limits | None = None) -> Iterator[tuple[str, list[logging.LogRecord]]]:
    """``app`` served as :func:`live` serves it, with its access log on at INFO (each status in a fresh window of
    :class:`AccessLog`, whatever ran before), and the access log's records."""
    log = logging.getLogger(ACCESS_LOGGER)
    for old in [f for f in log.filters if isinstance(f, AccessLog)]:
        log.removeFilter(old)
    config = server_config(app, "127.0.0.1", 0, limits, log_level="info")  # configures logging: handler after it
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    log.addHandler(handler)
    try:
        with running(uvicorn.Server(config)) as url:
            yield url, records
    finally:
        log.removeHandler(handler)


def test_work_of_a_client_that_disconnected_is_not_computed(tiny_bundle: Path, xray: bytes,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """B's work is dropped, and the access log says so (499): uvicorn writes no line for an answer to a closed
    connection, and B had left no trace."""
    gate = Gate(service_module.decode_described)
    monkeypatch.setattr(service_module, "decode_described", gate)
    limits = Limits(max_concurrent_decodes=1, max_queue=4)
    app = create_app(tiny_bundle, limits=limits)  # its start-up scores a test input: the requests' calls are after
    model_calls = []
    real = Predictor.probabilities
    monkeypatch.setattr(Predictor, "probabilities",
                        lambda self, images, tta=False: model_calls.append(len(images)) or real(self, images, tta))
    with logged(app, limits) as (url, records):
        port = int(url.rsplit(":", 1)[1])
        with in_background([post(url, xray)]) as first:
            gate.wait_entered(1)  # A holds the only decode slot
            body = (b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.jpeg"\r\n'
                    b"Content-Type: image/jpeg\r\n\r\n" + xray + b"\r\n--b--\r\n")
            with socket.create_connection(("127.0.0.1", port)) as sock:  # B: sent whole, then gives up
                sock.sendall(multipart_head(len(body)) + body)
                wait_for(lambda: app.state.in_flight["prediction"] == 2, "B admitted")
                time.sleep(0.3)  # B's body is read; it waits for the decode slot
            wait_for(lambda: app.state.in_flight["prediction"] == 1, "B leaving the queue while A still decodes")
            gate.open.set()
        assert first[0].status_code == 200
        wait_for(lambda: app.state.in_flight["prediction"] == 0, "B dropped")
    assert gate.entered == 1, "B's image was decoded although its client had gone"
    assert model_calls == [1], model_calls
    lines = sorted(AccessLines("%(request_line)s %(status_code)s", served=["/v1/predict"]).format(r) for r in records)
    assert lines == ["POST /v1/predict HTTP/1.1 200 OK", "POST /v1/predict HTTP/1.1 499 Client Closed Request"]
    gone = app.state.metrics.registry.get_sample_value("pneumoscan_refusals_total", {"reason": "client_gone"})
    assert gone == 1, f"B's departure is counted in /metrics: {gone}"


# ---------------------------------------------------------------- health and lanes under load


def test_healthz_answers_fast_while_every_decode_slot_is_busy(tiny_bundle: Path, xray: bytes,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    gate = Gate(service_module.decode_described)
    monkeypatch.setattr(service_module, "decode_described", gate)
    limits = Limits(max_concurrent_decodes=2, max_queue=6)
    app = create_app(tiny_bundle, limits=limits)
    with live(app, limits) as url:
        with in_background([post(url, xray) for _ in range(6)]) as held:
            gate.wait_entered(2)
            wait_for(lambda: app.state.in_flight["prediction"] == 6, "a full queue")
            times = []
            with httpx.Client(base_url=url, timeout=10) as http:
                for _ in range(20):
                    start = time.monotonic()
                    assert http.get("/healthz").status_code == 200
                    times.append(time.monotonic() - start)
                assert http.get("/v1/model").status_code == 200
            gate.open.set()
        assert [r.status_code for r in held] == [200] * 6
    # a probe that waited behind decodes would wait for the gate, past the client's timeout: most answer at once, and
    # none near that timeout (one held up by a loaded machine, a GC pause, is no fault: its bound was 1 s)
    assert max(times) < 5.0 and float(np.median(times)) < 0.2, times


def test_healthz_says_unhealthy_while_the_bundle_folder_hangs_and_the_rest_is_served(
        tiny_bundle: Path, xray: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Each probe stat'ed the bundle's files on the event loop: a bundle on a network drive that hangs stalled every
    request, the probes and those already admitted alike. The stat hangs here at a gate (a stand-in for the drive):
    /healthz answers 503 with the reason within the bounded wait, one check in flight for all the probes, while
    /v1/model and predictions are answered; once the folder answers the next probe says ok, and a check hung at
    the stop does not hold the server's exit. A folder that answers the stat with a change whose files take longer
    to read than the bound (a large or ensemble bundle, a slow drive) is degraded, being read, not unhealthy as a
    drive that hangs, until a file's read has not answered for BUNDLE_READ_S (a drive that hangs as it is read). A
    fault of the check itself is degraded, logged once, where it had been a 500."""
    # each check held at a gate until the test opens it: however short the wait, the held check never answers in it
    monkeypatch.setattr(on_disk, "BUNDLE_WAIT_S", wait_s := 0.05)
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    app = create_app(bundle)  # the stamps taken at start, before the gate
    gate = Gate(on_disk.file_stamp)
    monkeypatch.setattr(on_disk, "file_stamp", gate)
    silent = {"status": "unhealthy", "model_id": app.state.card.id, "model_version": app.state.card.version,
              "reason": service_module.BUNDLE_SILENT.format(wait_s)}
    times: list[float] = []

    def probe(http: httpx.Client) -> httpx.Response:
        start = time.monotonic()
        r = http.get("/healthz")
        times.append(time.monotonic() - start)
        return r

    with live(app) as url, httpx.Client(base_url=url, timeout=5) as http:
        for _ in range(5):
            r = probe(http)
            assert r.status_code == 503 and r.json() == silent, r.text
        assert http.get("/v1/model").status_code == 200
        assert post(url, xray)().status_code == 200
        gate.wait_entered(1)  # however late a loaded machine starts the check
        assert gate.entered == 1  # one check in flight for all the probes, not a thread held per probe
        gate.open.set()
        wait_for(lambda: http.get("/healthz").json()["status"] == "ok", "an ok probe once the folder answered")
        read = Gate(on_disk.verify_file)
        monkeypatch.setattr(on_disk, "verify_file", read)  # BUNDLE_READ_S as it is (30 s): reading while held
        os.utime(bundle / "model.safetensors")  # a change: the files read again, held at the gate
        http.get("/healthz")  # the check begun: reading, or silent while its stat has not answered on a loaded host
        read.wait_entered(1)
        r = probe(http)
        assert r.status_code == 200 and r.json() == {**silent, "status": "degraded",
                                                     "reason": service_module.BUNDLE_READING.format(wait_s)}, r.text
        # the read held past BUNDLE_READ_S without a file read: a drive that hangs as it is read (on the check's
        # clock, moved on by that bound)
        with monkeypatch.context() as m:
            m.setattr(on_disk, "time", ClockAhead(on_disk.BUNDLE_READ_S))
            r = probe(http)
        assert r.status_code == 503 and r.json() == silent, r.text
        read.open.set()
        wait_for(lambda: http.get("/healthz").json()["status"] == "ok", "an ok probe once the files were read")
        caplog.set_level(logging.ERROR, logger=service_module.log.name)
        with monkeypatch.context() as m:  # a fault of the check itself: degraded, said once, not a 500
            m.setattr(on_disk.BundleOnDisk, "changed", lambda self, check=None: 1 / 0)
            # the fault waited for, however late a loaded machine says it (within the client's 5 s)
            m.setattr(on_disk, "BUNDLE_WAIT_S", 4.0)
            os.utime(bundle / "model.safetensors")
            for _ in range(2):
                r = http.get("/healthz")
                assert r.status_code == 200 and r.json() == {
                    **silent, "status": "degraded", "reason": service_module.BUNDLE_CHECK_FAILED}, r.text
        assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == [
            f"{service_module.BUNDLE_CHECK_FAILED}: division by zero"]
        wait_for(lambda: http.get("/healthz").json()["status"] == "ok", "an ok probe once the check answers again")
        gate.open.clear()
        assert probe(http).status_code == 503 and gate.entered > 1
        stop = time.monotonic()
    stopped_in = time.monotonic() - stop
    gate.open.set()
    for thread in threading.enumerate():  # the check let go ends here, not in a later test of this worker (its log)
        if thread.name == "pneumoscan-bundle-check":
            thread.join(GATE_S)
    # each probe's wait bounded by BUNDLE_WAIT_S (0.05 s), not held by the hung stat (GATE_S): half that apart is no
    # longer than a loaded machine may hold a probe up (its bound was 2 s)
    assert max(times) < GATE_S / 2 and stopped_in < GATE_S / 2, (times, stopped_in)


def test_a_fault_of_the_bundle_check_is_logged_redacted_on_one_line(tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """serve's error line for a fault of the bundle check itself quoted the exception whole, where every other error
    line that quotes one is redacted: a path with a patient's name in it reached the log, and a newline in the
    message wrote a second line of the fault's making. It is redacted and shown on one line, once a fault."""
    import asyncio

    disk = service_module.OnDisk(tiny_bundle)  # no server: the check as /healthz awaits it
    faults = [OSError(errno.EIO, "Input/output error", "/mnt/films/Smith^John/bundle.json")] * 2 + [
        ValueError("a card named 'Smith^John'\nERROR forged line")]

    def check_fails(self: on_disk.BundleOnDisk, check: on_disk.Check | None = None) -> None:
        raise faults.pop(0)

    monkeypatch.setattr(on_disk.BundleOnDisk, "checked", check_fails)
    caplog.set_level(logging.ERROR)
    assert [asyncio.run(disk.check()) for _ in range(3)] == [on_disk.BundleState.FAILED] * 3
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == [
        f"{service_module.BUNDLE_CHECK_FAILED}: [Errno 5] Input/output error: '...'",  # once, for two checks
        f"{service_module.BUNDLE_CHECK_FAILED}: a card named '...'\\nERROR forged line"]
    assert "Smith" not in caplog.text


def test_a_fault_of_the_bundle_check_is_weighed_under_the_lock(tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """listen answers a check's outcome from several threads: the fault last said was read and written outside the
    lock that guards the check, so two studies that saw one fault at once could both say it. Its outcome waits for
    the lock (held here as a check starting holds it), and the fault is still said once. The thread says when it
    has reached the fault's wording (what outcome does first), so a thread not yet run is not taken for one held."""
    disk = on_disk.BundleOnDisk(tiny_bundle, lambda state: "the check failed")
    fault = OSError(errno.EIO, "Input/output error")
    caplog.set_level(logging.ERROR)
    reached, shown = threading.Event(), on_disk.shown

    def shown_once_reached(text: str) -> str:
        reached.set()
        return shown(text)

    monkeypatch.setattr(on_disk, "shown", shown_once_reached)
    with disk._lock:
        waiting = threading.Thread(target=disk.outcome, args=(on_disk.Check(), fault))
        waiting.start()
        assert reached.wait(5), "outcome was not reached"
        waiting.join(0.2)
        assert waiting.is_alive() and disk._failed is None and caplog.records == [], "outcome went on without the lock"
    waiting.join(5)
    assert disk.outcome(on_disk.Check(), fault) == on_disk.BundleState.FAILED
    assert [r.getMessage() for r in caplog.records] == ["the check failed: [Errno 5] Input/output error"]


def test_heatmaps_keep_to_their_lane(tiny_bundle: Path, xray: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    """With one Grad-CAM held, at most 4 heatmap requests are in the service (the rest get 503 at once) and plain
    predictions are answered meanwhile."""
    gate = Gate(service_module.film_overlay)
    monkeypatch.setattr(service_module, "film_overlay", gate)
    limits = Limits(max_queue=8, heatmap_lane=1)
    app = create_app(tiny_bundle, limits=limits)
    with live(app, limits) as url:
        with in_background([post(url, xray, heatmap=True) for _ in range(6)]) as heatmaps:
            gate.wait_entered(1)
            wait_for(lambda: len(heatmaps) == 2, "the two heatmap requests over the lane's bound answered")
            assert [r.status_code for r in heatmaps] == [503, 503]
            assert app.state.in_flight["heatmap"] == 4
            for _ in range(3):
                start = time.monotonic()
                r = post(url, xray)()
                assert r.status_code == 200 and r.json()["heatmap"] is None
                assert time.monotonic() - start < 3
            assert gate.entered == 1  # one Grad-CAM at a time
            gate.open.set()
        assert sorted(r.status_code for r in heatmaps) == [200] * 4 + [503] * 2
    assert gate.entered == 4


def test_a_request_in_progress_when_the_model_breaks_gets_no_reading(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A request admitted before a model gave a non-finite score, and scored after, is refused as the requests
    after it are: it was answered with a reading from the model the service had just declared broken."""
    bundle = bright_overflow_bundle(tmp_path / "b")  # finite on dark films, infinite on bright ones
    dark, bright = (png(np.tile(np.linspace(lo, lo + 40, 64).astype(np.uint8), (64, 1))) for lo in (40, 210))
    real, held = service_module.decode_described, threading.Event()

    def decode(data: bytes, *args: object) -> tuple[np.ndarray, dict]:
        if data == dark:  # the dark film waits in its decode until the bright one has broken the model
            assert held.wait(GATE_S), "never released"
        return real(data, *args)

    monkeypatch.setattr(service_module, "decode_described", decode)
    # two decode slots whatever the cores: with one (one core), the held dark film kept the bright one from its decode
    limits = Limits(max_concurrent_decodes=2)
    app = create_app(bundle, backend="torch", limits=limits)
    with live(app, limits) as url:

        def send(film: bytes) -> httpx.Response:
            return httpx.post(f"{url}/v1/predict", files={"file": ("x.png", film, "image/png")}, timeout=60)

        with in_background([lambda: send(dark)]) as late:
            wait_for(lambda: app.state.in_flight["prediction"] == 1, "the dark film admitted")
            broke = send(bright)
            assert broke.status_code == 500 and "non-finite score" in broke.json()["error"]
            held.set()
        assert httpx.get(f"{url}/healthz").status_code == 503
        metrics = httpx.get(f"{url}/metrics").text
    [answer] = late
    assert answer.status_code == 503 and "answers no more predictions" in answer.json()["error"], answer.text
    assert broke.json()["reason"] == answer.json()["reason"] == "model_broken"
    assert "probability" not in answer.json()
    # both counted as refused by the broken model, neither as a reading answered
    assert 'pneumoscan_refusals_total{reason="model_broken"} 2.0' in metrics
    assert "pneumoscan_readings_total{" not in metrics


# ---------------------------------------------------------------- logs


def test_failures_log_one_line_each_rate_limited(tiny_bundle: Path, xray: bytes,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Twenty failing requests on one connection: each a JSON 500 (the connection kept), and the server log holds
    one line, with no traceback."""
    app = create_app(tiny_bundle)  # a model that ran at start-up and fails later
    monkeypatch.setattr(Predictor, "probabilities", lambda self, images, tta=False: 1 / 0)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    with live(app) as url:
        logs = [logging.getLogger(name) for name in QUIET_LOGGERS]
        for log in logs:
            log.addHandler(handler)
        try:
            with httpx.Client(base_url=url, timeout=30) as http:
                answers = [http.post("/v1/predict", files={"file": ("x.jpeg", xray, "image/jpeg")}) for _ in range(20)]
        finally:
            for log in logs:
                log.removeHandler(handler)
    bug = {"error": "internal error", "reason": "internal_error"}
    assert [(r.status_code, r.json()) for r in answers] == [(500, bug)] * 20
    lines = stream.getvalue().splitlines()
    assert "Traceback" not in stream.getvalue()
    assert 1 <= len(lines) <= 2, lines
    assert "ZeroDivisionError" in lines[0]


def test_one_line_log_counts_what_it_held_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """The interval on the filter's clock, moved by the test: whatever the machine is doing, the 500 lines come
    within it, and the last one after it."""
    monkeypatch.setattr(logs_module, "time", clock := Clock())
    stream = io.StringIO()
    log = logging.getLogger("pneumoscan.test-one-line")
    log.propagate = False
    handler = logging.StreamHandler(stream)
    log.addHandler(handler)
    log.addFilter(OneLineLog(interval=0.3))
    try:
        for i in range(500):
            try:
                raise OSError(24, "Too many open files")
            except OSError:
                log.exception("socket.accept() out of system resource")
        log.warning("another kind of message")
        clock.now += 0.35
        try:
            raise OSError(24, "Too many open files")
        except OSError:
            log.exception("socket.accept() out of system resource")
    finally:
        log.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert lines == [
        "socket.accept() out of system resource: OSError: [Errno 24] Too many open files",
        "another kind of message",
        ("socket.accept() out of system resource: OSError: [Errno 24] Too many open files (499 more like this held "
         "back)"),
    ]


def test_a_flood_of_refused_requests_writes_a_few_access_lines(tiny_bundle: Path) -> None:
    """Two hundred refused uploads on one connection (as fast as one client sends them): every one is answered, and
    the access log, on at INFO, gets ten lines, not two hundred."""
    with logged(create_app(tiny_bundle)) as (url, lines), httpx.Client(base_url=url, timeout=30) as http:
        statuses = {http.post("/v1/predict", files={"file": ("x.txt", b"notes", "text/plain")}).status_code
                    for _ in range(200)}
    assert statuses == {415}
    assert [record.args[4] for record in lines] == [415] * 10, [record.getMessage() for record in lines]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full, a file whose every write fails ENOSPC")
def test_an_access_log_on_a_full_disk_is_said_in_one_line_and_the_service_goes_on(tiny_bundle: Path,
                                                                                  tmp_path: Path) -> None:
    """`pneumoscan serve` with its stdout (the access log) on a full disk: every request is still answered, and
    stderr says so in one line. Each line lost had written logging's traceback of some 60 lines on stderr."""
    port, err = free_port(), tmp_path / "stderr"
    with open("/dev/full", "wb") as full, err.open("wb") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "pneumoscan", "serve", str(tiny_bundle), "--port", str(port)],
                                stdout=full, stderr=stderr, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        wait_healthy(proc, f"http://127.0.0.1:{port}", err)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            statuses = {http.post("/v1/predict", files={"file": ("x.txt", b"notes", "text/plain")}).status_code
                        for _ in range(5)}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert statuses == {415}
    log = err.read_text()
    assert "Traceback" not in log and "Logging error" not in log, log
    lost = [line for line in log.splitlines() if "log lines to <stdout> are lost (No space left on device)" in line]
    assert len(lost) == 1 and lost[0].startswith("WARNING"), log


@contextmanager
def access_lines(name: str) -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger of its own writing uvicorn's access lines through :class:`AccessLines` into a string."""
    stream = io.StringIO()
    log = logging.getLogger(name)
    log.propagate = False
    handler = logging.StreamHandler(stream)
    handler.setFormatter(AccessLines('%(client_addr)s - "%(request_line)s" %(status_code)s', use_colors=False,
                                     served=("/healthz", "/v1/predict")))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield log, stream
    finally:
        log.removeHandler(handler)


def test_access_log_counts_what_it_held_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_module, "time", clock := Clock())  # the interval on the test's clock, as above
    limit = AccessLog(lines=2, interval=0.3)
    request = ("127.0.0.1:5000", "POST", "/v1/predict", "1.1")
    with access_lines("pneumoscan.test-access-lines") as (log, stream):
        log.addFilter(limit)
        for _ in range(50):
            log.info('%s - "%s %s HTTP/%s" %d', *request, 415)
        log.info('%s - "%s %s HTTP/%s" %d', *request, 200)  # another status: its own count
        clock.now += 0.35
        log.info('%s - "%s %s HTTP/%s" %d', *request, 415)
    line = '127.0.0.1:5000 - "POST /v1/predict HTTP/1.1" '
    assert stream.getvalue().splitlines() == [
        line + "415 Unsupported Media Type", line + "415 Unsupported Media Type", line + "200 OK",
        line + "415 Unsupported Media Type (48 more like this held back)",
    ]
    assert all(limit.filter(logging.makeLogRecord({"msg": "not a request's line"})) for _ in range(5))


def test_the_access_log_keeps_only_the_apis_own_query_parameters() -> None:
    """A client that tags its requests ?patient=... had its patient data written to the access log word for word."""
    with access_lines("pneumoscan.test-access-query") as (log, stream):
        for path in ("/v1/predict?heatmap=true&patient=Doe%5EJane&accession=ACC12345&format=json", "/healthz",
                     "/v1/predict?Doe%5EJane", "/v1/predict?format=Jane+Doe+1990-01-02",
                     "/v1/predict?heatmap=y&image=F"):
            log.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "POST", path, "1.1", 200)
    assert stream.getvalue().splitlines() == [
        '127.0.0.1:5000 - "POST /v1/predict?heatmap=true&format=json [2 other query parameter(s) not logged] '
        'HTTP/1.1" 200 OK',
        '127.0.0.1:5000 - "POST /healthz HTTP/1.1" 200 OK',
        '127.0.0.1:5000 - "POST /v1/predict [1 other query parameter(s) not logged] HTTP/1.1" 200 OK',
        # a known parameter with a value the API does not take (refused with 422): its value is not logged either
        '127.0.0.1:5000 - "POST /v1/predict?format=(not logged) HTTP/1.1" 200 OK',
        # booleans as pydantic also reads them (y, F): values the API takes, logged as given
        '127.0.0.1:5000 - "POST /v1/predict?heatmap=y&image=F HTTP/1.1" 200 OK',
    ]


def test_the_access_log_writes_only_the_paths_the_service_answers(tiny_bundle: Path) -> None:
    """A request for /Doe/MRN7734219 (a scanner, a mistyped link) was logged with its path as sent; the paths the
    app answers, the page's files among them, are logged as they are."""
    served = served_paths(create_app(tiny_bundle))
    assert {"/", "/healthz", "/v1/predict", "/v1/model", "/static/app.js", "/static/style.css"} <= set(served)
    config = server_config(create_app(tiny_bundle), limits=Limits())
    assert config.log_config["formatters"]["access"]["served"] == served
    # served under a root path (uvicorn's root_path), as uvicorn then logs every path
    config = server_config(create_app(tiny_bundle), limits=Limits(), root_path="/ai")
    assert config.log_config["formatters"]["access"]["served"] == ["/ai" + path for path in served]
    with access_lines("pneumoscan.test-access-paths") as (log, stream):
        for path in ("/Doe/MRN7734219", "/static/MRN7734219.png?x=1", "/healthz"):
            log.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", path, "1.1", 404)
    assert stream.getvalue().splitlines() == [
        f'127.0.0.1:5000 - "GET {NOT_SERVED} HTTP/1.1" 404 Not Found',
        f'127.0.0.1:5000 - "GET {NOT_SERVED} [1 other query parameter(s) not logged] HTTP/1.1" 404 Not Found',
        '127.0.0.1:5000 - "GET /healthz HTTP/1.1" 404 Not Found',
    ]


def test_decodes_default_to_the_cores_this_process_may_use() -> None:
    """``taskset -c 0`` leaves one core: one decode at a time, not one per core of the machine."""
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})
    try:
        assert Limits().max_concurrent_decodes == 1
    finally:
        os.sched_setaffinity(0, cpus)
    assert Limits().max_concurrent_decodes == min(4, len(cpus))


@pytest.mark.parametrize(("given", "why"), [
    ({"max_queue": 0}, "greater than 0"), ({"heatmap_lane": -1}, "greater than 0"),
    ({"max_concurrent_decodes": 2.5}, "a valid integer"), ({"max_queue": True}, "a valid integer"),
    ({"body_timeout": 0.0}, "greater than 0"), ({"header_timeout": math.inf}, "a finite number"),
    ({"keep_alive": math.nan}, "a finite number"), ({"shutdown_grace": "20"}, "a valid number"),
])  # fmt: skip
def test_a_limit_out_of_its_range_is_refused_naming_it_and_why(given: dict[str, object], why: str) -> None:
    """Declared on the fields (pydantic), not checked by hand after them: a count of 2.5 or True and a deadline of
    inf were taken (a semaphore of 2.5, a timer that never fires), and "20" failed as a TypeError naming no field."""
    [name] = given
    with pytest.raises(ValueError, match=rf"(?s)Limits\n{name}\n  Input should be {why}"):
        Limits(**given)  # type: ignore[arg-type]


def test_a_limit_limits_does_not_hold_is_refused_naming_it() -> None:
    """``Limits(max_upload_mb=1)`` (the upload limit is create_app's, as serve's --max-upload-mb) was taken without
    a word, and the service went on taking uploads of 20 MB."""
    with pytest.raises(ValueError, match=r"(?s)Limits\nmax_upload_mb\n  Unexpected keyword argument"):
        Limits(max_upload_mb=1.0)  # type: ignore[call-arg]


def test_the_limits_ranges_are_in_their_schema() -> None:
    """The ranges are data a tool can read (the fields' JSON schema), as FastAPI shows its parameters' in OpenAPI."""
    fields = TypeAdapter(Limits).json_schema()["properties"]
    assert all(fields[name]["exclusiveMinimum"] == 0 for name in [f.name for f in dataclasses.fields(Limits)])
    assert Limits(keep_alive=30).keep_alive == 30.0  # a whole number of seconds is taken
