"""Running the service under uvicorn: the port taken before the model loads, the request-head deadline, one-line
rate-limited failure logs, a rate-limited access log (its lines held back counted in /metrics), the refusal to
listen beyond loopback without an API key, the open-file limit, and SIGHUP reading the API key file again."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import errno
import functools
import json
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, get_args
from urllib.parse import parse_qsl

import h11
import uvicorn
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from prometheus_client.metrics_core import CounterMetricFamily
from prometheus_client.registry import Collector
from starlette.routing import Mount
from uvicorn.config import LOGGING_CONFIG
from uvicorn.logging import AccessFormatter
from uvicorn.protocols.http.h11_impl import H11Protocol

from pneumoscan.core.logs import ANSWER, OneLineLog
from pneumoscan.core.network import is_loopback
from pneumoscan.core.options import MAX_UPLOAD_MB
from .app import ACCESS_LOGGER, CLIENT_GONE, create_app
from .formats import PREDICT_OPTIONS, HeatmapWord, ReportFormat, ServiceInfo
from .guard import SECURITY_HEADERS, Access, KeyInUse, key_name
from .limits import Limits, Refusal, Rejected
from .metrics import ServiceMetrics

log = logging.getLogger(__name__)
WILDCARDS = ("0.0.0.0", "::", "")  # --host values that listen on every address of the machine
CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"  # where systemd puts a unit's credentials (LoadCredential=)
# the answer to a request that is not valid HTTP/1.1 (uvicorn logs it as "Invalid HTTP request received.")
MALFORMED_HTTP = ("malformed HTTP request: its request line, a header or the framing of its body is not valid "
                  "HTTP/1.1")


class Lingering:
    """The lingering closes in progress (:meth:`GuardedH11._linger`), shared by the server's connections: at most
    ``bound`` at once, since each holds a file descriptor for up to --body-timeout, and a flood of early answers to
    large uploads held one each, towards the open-file limit; past it a connection closes at once. Each close, and
    those in progress, counted in ``metrics``. Used on the event loop alone."""

    def __init__(self, bound: int, metrics: ServiceMetrics) -> None:
        self.bound, self.now, self.closes = bound, 0, metrics.early_closes
        metrics.lingering.set_function(lambda: self.now)
        metrics.lingering_limit.set(bound)

    def began(self) -> None:
        self.now += 1
        self.closes.labels("lingering").inc()

    def ended(self) -> None:
        self.now -= 1

    def closed_at_once(self) -> None:
        self.closes.labels("at_once").inc()


class GuardedH11(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline for each request head and for an answer the client does not
    read. uvicorn only times out idle keep-alive connections, and any byte resets that timer: a client trickling
    its request line and headers, or the rest of a body after an early answer, held its connection (and a file
    descriptor) for ever; and one that never read its answer held the connection and the answer (megabytes with a
    heatmap or a DICOM SR) for as long as it stayed connected, after its prediction lane was freed."""

    def __init__(self, *args: Any, header_timeout: float, body_timeout: float, lingering: Lingering,
                 refused: Callable[[Refusal], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout, self.body_timeout, self.lingering = header_timeout, body_timeout, lingering
        self.refused = refused  # the service's count of refusals (/metrics), which its malformed requests join
        self.head_deadline: asyncio.TimerHandle | None = None
        self.write_deadline: asyncio.TimerHandle | None = None
        self.cut_off = False  # closed by one of these deadlines: the client gets no lingering close

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # Nagle's algorithm off, as asyncio turns it off itself only on sockets opened with protocol IPPROTO_TCP,
        # which :func:`listen`'s (socket.create_server's, protocol 0) are not: on a kept-alive connection each
        # answer's body waited for the ACK of its head, which the client delays by 40 ms
        sock = transport.get_extra_info("socket")
        if sock.family in (socket.AF_INET, socket.AF_INET6):  # not a Unix socket (uvicorn's uds=, by server_config)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._arm(self.header_timeout)

    def data_received(self, data: bytes) -> None:
        cycle = self.cycle
        super().data_received(data)
        if self.cycle is not cycle:  # a whole request head arrived
            self._disarm()

    def on_response_complete(self) -> None:
        cycle = self.cycle
        super().on_response_complete()
        if self.cycle is cycle and not self.transport.is_closing():  # not already on a pipelined request
            # an early answer (503, 401, 413) while the body still comes: uvicorn discards the rest, and the
            # client reads the answer once it has sent it all, so it gets the body's time, not the head's
            draining = self.conn.their_state is h11.SEND_BODY
            self._arm(self.body_timeout if draining else self.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._cancel_write_deadline()
        if exc is None and not self.cut_off and self.conn.their_state is h11.SEND_BODY and self._client_closes():
            self._linger()
        super().connection_lost(exc)

    def _client_closes(self) -> bool:
        """Whether the request's own framing ends the connection with its answer (HTTP/1.0, as nginx speaks to the
        service by default, or ``Connection: close``), rather than the service's choice (a 408 cuts a client off)."""
        return self.conn.their_http_version == b"1.0" or any(
            name == b"connection" and b"close" in value.lower() for name, value in self.headers)

    def _linger(self) -> None:
        """An early answer (401, 413, 503) on a connection that ends with it, while the body still comes: a close
        with unread bytes resets the connection, and a client still sending (nginx) got the reset and not the
        answer (nginx answered 502 instead). As nginx's own lingering close: end our side once the answer is sent,
        and drop what comes until the client closes, at most --body-timeout, on a copy of the socket the transport
        closes after this. It holds no lane, slot or queue place (those went with the answer), and uvicorn does not
        count it among its connections: a shutdown does not wait for it, and the process ending closes the socket (a
        reset, where the client is still sending).
        Without a file descriptor for the copy (EMFILE), the connection closes at once: an error here would escape
        uvicorn's end of the connection, which kept it for good (and a shutdown its grace). So does one past the
        bound of lingering closes at once (:class:`Lingering`, ``--max-lingering``), each holding a file descriptor."""
        if self.lingering.now >= self.lingering.bound:
            log.warning("no lingering close of a connection answered early: %d are in one already (--max-lingering); "
                        "it closes at once, and a client still sending gets a reset", self.lingering.bound)
            self.lingering.closed_at_once()
            return
        try:
            sock = self.transport.get_extra_info("socket").dup()
        except OSError as e:
            log.warning("no lingering close of a connection answered early: %s", e)
            self.lingering.closed_at_once()
            return
        sock.setblocking(False)
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:  # the client has gone already
            sock.close()
            self.lingering.closed_at_once()
            return
        self.lingering.began()

        def drop() -> None:
            try:
                if sock.recv(65536):
                    return
            except BlockingIOError:
                return
            except OSError:
                pass
            done()

        def done() -> None:
            self.loop.remove_reader(sock)
            deadline.cancel()
            sock.close()
            self.lingering.ended()

        self.loop.add_reader(sock, drop)
        deadline = self.loop.call_later(self.body_timeout, done)

    def pause_writing(self) -> None:
        """The answer fills the transport's buffer (the client reads it slower than it is written, or not at all):
        the client gets the body's time to take some of it, and is cut off after."""
        super().pause_writing()
        if self.write_deadline is None:
            self.write_deadline = self.loop.call_later(self.body_timeout, self._cut_off, self.transport.abort)

    def resume_writing(self) -> None:
        self._cancel_write_deadline()
        super().resume_writing()

    def _cancel_write_deadline(self) -> None:
        """Cancel the deadline of an answer the client is reading again (or of a connection gone)."""
        if self.write_deadline is not None:
            self.write_deadline.cancel()
            self.write_deadline = None

    def send_400_response(self, msg: str) -> None:
        """The answer to a request h11 cannot parse, as every refusal of the service: JSON with a reason, and the
        security headers (uvicorn's own is plain text without them)."""
        refusal = Rejected(400, MALFORMED_HTTP)
        self.refused(refusal.kind)
        body = json.dumps(refusal.body()).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close"), *SECURITY_HEADERS]
        for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"), h11.Data(data=body),
                      h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self.head_deadline = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self.head_deadline is not None:
            self.head_deadline.cancel()
            self.head_deadline = None

    def _expired(self) -> None:
        self.head_deadline = None
        if not self.transport.is_closing():
            self._cut_off(self.transport.close)

    def _cut_off(self, close: Callable[[], None]) -> None:
        self.cut_off = True
        close()


class LogStream(logging.StreamHandler):
    """The stream handler of uvicorn's logs (the access lines on stdout, its messages on stderr). A line that cannot
    be written (the disk of a log redirected to a file is full, a pipe is closed) is said as one rate-limited warning
    of this module (:class:`OneLineLog`), and the service goes on: logging's own handling wrote a traceback of some
    60 lines on stderr for each line lost, past the rate limits that keep the log small."""

    def handleError(self, record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        reason = error.strerror if isinstance(error, OSError) and error.strerror else type(error).__name__
        log.warning("log lines to %s are lost (%s): free its disk or mend where it goes; the service goes on",
                    getattr(self.stream, "name", "a stream"), reason)


# uvicorn's ERROR line when the shutdown's grace (timeout_graceful_shutdown) ran out with requests in progress
UVICORN_GRACE_RAN_OUT = "Cancel %s running task(s), timeout graceful shutdown exceeded"


class GraceRanOut(logging.Filter):
    """uvicorn's ERROR line for ``--shutdown-grace`` running out (:data:`UVICORN_GRACE_RAN_OUT`) said instead as a
    warning of this module that names the grace and the requests cut off: an event the operator set, not a fault,
    which read as one in the journal and in any alert on ERROR lines. Every other record passes untouched."""

    def __init__(self, grace: float) -> None:
        super().__init__()
        self.grace = grace

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != UVICORN_GRACE_RAN_OUT or not isinstance(record.args, tuple):
            return True
        count = record.args[0]
        log.warning("shutting down: the --shutdown-grace of %g s ran out with %s request%s in progress, cut off (one "
                    "not yet answered got 503: send it again)", self.grace, count, "" if count == 1 else "s")
        return False


class AccessLog(logging.Filter):
    """uvicorn's access log, one INFO line a request, rate-limited as :class:`OneLineLog` limits failures: each
    status code passes at most ``lines`` lines every ``interval`` seconds, and the next one to pass says how many
    were held back (:class:`AccessLines` writes it). One client sending refused requests as fast as it can once
    wrote 90 KB a second. Keyed by status alone: a client chooses the paths and methods, not the statuses."""

    def __init__(self, lines: int = 10, interval: float = 10.0) -> None:
        super().__init__()
        self.lines, self.interval = lines, interval
        self.windows: dict[int, tuple[float, int]] = {}  # status -> (when its window opened, lines passed in it)
        self.held: Counter[int] = Counter()
        self.held_back = 0  # lines held back since the start (/metrics: HeldBack)
        self.lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if not (isinstance(args, tuple) and len(args) == 5):  # not a request line (uvicorn's own format)
            return True
        status, now = int(args[4]), time.monotonic()
        with self.lock:
            opened, passed = self.windows.get(status, (-math.inf, 0))
            if now - opened >= self.interval:
                opened, passed = now, 0
            if passed >= self.lines:
                self.held[status] += 1
                self.held_back += 1
                return False
            self.windows[status] = (opened, passed + 1)
            record.held_back = self.held.pop(status, 0)
        return True


class HeldBack(Collector):
    """``pneumoscan_log_lines_held_back_total{log}``: the lines the rate limits held back, of the access log
    (:class:`AccessLog`) and of the failure and warning messages (:class:`OneLineLog`), read from the filters on
    their loggers at each scrape: a held-back line is otherwise said only in the next line of its kind."""

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily("pneumoscan_log_lines_held_back", "log lines the rate limits held back, by log "
                                     "(access: the access log; messages: warnings and failures)", labels=["log"])
        for label, kind, loggers in (("access", AccessLog, (ACCESS_LOGGER,)), ("messages", OneLineLog, QUIET_LOGGERS)):
            family.add_metric([label], sum(f.held_back for name in loggers for f in logging.getLogger(name).filters
                                           if isinstance(f, kind)))
        yield family


# the values of /v1/predict's parameters the access log writes (booleans as a query spells them, every spelling
# pydantic takes, and the route's words); any other is written as "(not logged)"
LOGGED_VALUES = ("true", "false", "t", "f", "1", "0", "yes", "no", "y", "n", "on", "off", *get_args(HeatmapWord),
                 *get_args(ReportFormat))


NOT_SERVED = "(a path not served)"  # what the access log writes for a path the app does not answer


def served_paths(app: FastAPI) -> list[str]:
    """The paths ``app`` answers: its routes' and, under a mount of static files, each file's."""
    paths = []
    for route in app.routes:
        if isinstance(route, Mount) and isinstance(route.app, StaticFiles):
            paths += [f"{route.path}/{f.name}" for f in sorted(Path(str(route.app.directory)).iterdir()) if f.is_file()]
        else:
            paths.append(getattr(route, "path", ""))
    return paths


class AccessLines(AccessFormatter):
    """uvicorn's access line, with only the paths the app answers (``served``, :func:`served_paths`; any other as
    :data:`NOT_SERVED`) and the query parameters of :data:`.formats.PREDICT_OPTIONS`: a client that tags its
    requests ``?patient=...``, or a scanner or a mistyped link with a patient's number in the path, would put
    patient data in the log. In the user's place of the line (``-`` otherwise), the name of the key the request was
    let in with (named keys), never a key. After the line, how many lines like it :class:`AccessLog` held back."""

    def __init__(self, *args: Any, served: Sequence[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.served = frozenset(served)

    def formatMessage(self, record: logging.LogRecord) -> str:
        client, method, full_path, version, status = record.args  # type: ignore[misc]
        path, _, query = str(full_path).partition("?")
        path = path if path in self.served else NOT_SERVED
        pairs = parse_qsl(query, keep_blank_values=True)
        # a known parameter's value too only when it is one the API takes: ?format=Jane+Doe is refused, and not logged
        kept = [f"{k}={v if v.lower() in LOGGED_VALUES else '(not logged)'}" for k, v in pairs if k in PREDICT_OPTIONS]
        if kept:
            path += "?" + "&".join(kept)
        if dropped := len(pairs) - len(kept):
            path += f" [{dropped} other query parameter(s) not logged]"
        record = copy.copy(record)
        record.args = (client, method, path, version, status)
        record.key_name = key_name.get() or "-"  # the request's own: logged as its answer is sent, in its task
        line = super().formatMessage(record)
        held = getattr(record, "held_back", 0)
        return f"{line} ({held} more like this held back)" if held else line

    def get_status_code(self, status_code: int) -> str:
        text = super().get_status_code(status_code)  # "499 ": Python knows no phrase for nginx's own status
        if status_code != CLIENT_GONE:
            return text
        return text.replace(f"{CLIENT_GONE} ", f"{CLIENT_GONE} Client Closed Request", 1)


def _log_config(app: FastAPI, root_path: str = "") -> dict[str, Any]:
    """uvicorn's own logging settings, with :class:`AccessLines` writing ``app``'s access log and :class:`LogStream`
    its streams; uvicorn logs a path with the ``root_path`` it is served under (as the guard strips it before
    routing)."""
    config = copy.deepcopy(LOGGING_CONFIG)
    served = [root_path.rstrip("/") + path for path in served_paths(app)]
    fmt = config["formatters"]["access"]["fmt"].replace("%(client_addr)s - ", "%(client_addr)s %(key_name)s ")
    config["formatters"]["access"].update({"()": AccessLines, "served": served, "fmt": fmt})
    for handler in config["handlers"].values():
        handler["class"] = f"{__name__}.{LogStream.__qualname__}"
    return config


# the loggers a failing request or a flood writes to: the guard's "internal error", the rate-limit store's that does
# not answer, the audit log's lines lost, and this module's warnings
QUIET_LOGGERS = ("uvicorn.error", "asyncio", "pneumoscan.serving.guard", "pneumoscan.serving.limits",
                 "pneumoscan.serving.audit", __name__)


def server_config(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, limits: Limits | None = None,
                  **kwargs: Any) -> uvicorn.Config:
    """uvicorn settings for the service: the guarded protocol (head deadline), the keep-alive limit, one-line,
    rate-limited failure logs and a rate-limited access log (``access_log=False`` turns it off). No ``server``
    header (``server: uvicorn`` names the software, which security scanners flag); the ``Date`` header, which HTTP
    asks of a server with a clock, stays."""
    limits = limits or Limits()
    kwargs.setdefault("log_config", _log_config(app, kwargs.get("root_path", "")))
    config = uvicorn.Config(
        app, host=host, port=port,
        http=functools.partial(GuardedH11, header_timeout=limits.header_timeout, body_timeout=limits.body_timeout,
                               lingering=Lingering(limits.max_lingering, app.state.metrics),
                               refused=app.state.metrics.refused),
        timeout_keep_alive=limits.keep_alive, timeout_graceful_shutdown=limits.shutdown_grace, server_header=False,
        **kwargs,
    )  # fmt: skip
    for name, kind in [(name, OneLineLog) for name in QUIET_LOGGERS] + [(ACCESS_LOGGER, AccessLog)]:
        quieted = logging.getLogger(name)  # after Config, which configures logging
        if not any(isinstance(f, kind) for f in quieted.filters):
            quieted.addFilter(kind())
    return config


def build_server(bundle: Path | str, etiology: Path | str | None = None, host: str = "127.0.0.1", port: int = 8000,
                 max_upload_mb: float = MAX_UPLOAD_MB, backend: str = "torch", limits: Limits | None = None,
                 access: Access | None = None, insecure: bool = False, quiet: bool = False,
                 heatmaps: bool = True, rate_limit: str | None = None,
                 rate_limit_storage: str | None = None, audit_log: Path | str | None = None,
                 audit_required: bool = False) -> ListeningServer:
    """The service, ready to run. Listening on anything but loopback without an API key is refused (ValueError)
    unless ``insecure``; then it goes on with a loud warning. The address being served is added to the Host
    allow-list (but not a wildcard address: name the hosts with ``access``). The port is taken before the model
    loads (:func:`listen`: OSError when it cannot be). ``quiet`` (``pneumoscan -q``): no access log and no
    information messages from uvicorn, warnings and errors only. ``heatmaps``, ``rate_limit``,
    ``rate_limit_storage``, ``audit_log``, ``audit_required``: as :func:`.app.create_app`'s."""
    access = access or Access()
    if not access.keys and not is_loopback(host):
        if not insecure:
            raise ValueError(f"refusing to listen on {host} without an API key: set one (--api-key-file or "
                             "PNEUMOSCAN_API_KEY), or pass --insecure if a proxy in front does the authentication")
        log.warning("INSECURE: listening on %s with NO API key: anyone who can reach port %d can use the service",
                    host, port)
    if host not in WILDCARDS and host not in access.allowed_hosts:
        access = dataclasses.replace(access, allowed_hosts=(*access.allowed_hosts, host))
    if host in WILDCARDS and all(is_loopback(name) for name in access.allowed_hosts):
        # every client that reaches the port by the machine's name or address gets 400, while /healthz says ok
        log.warning("listening on every address (%s), but answering only requests addressed to %s (the Host header): "
                    "a client that reaches port %d by another name or address gets 400; name the host names clients "
                    "use with --allowed-hosts", host or "all", ", ".join(access.allowed_hosts), port)
    _raise_open_file_limit()
    sockets = listen(host, port)  # before the model loads: a port in use ends the start at once
    try:
        app = create_app(bundle, etiology, max_upload_mb, backend, limits, access, heatmaps, rate_limit,
                         rate_limit_storage, audit_log, audit_required)
        _log_serving(app.state.card, bundle, etiology, backend, access)
        config = server_config(app, host, port, limits,
                               **({"access_log": False, "log_level": "warning"} if quiet else {}))
        app.state.metrics.registry.register(HeldBack())
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return ListeningServer(config, sockets)


def _log_serving(card: ServiceInfo, bundle: Path | str, etiology: Path | str | None, backend: str,
                 access: Access) -> None:
    """One line at start: the model or models served (id, version), their folders, the backend and the key, for the
    journal of an operator who swapped a bundle and restarted (uvicorn's own lines say none of it)."""
    served = f"{card.id} (version {card.version}) from {bundle}"
    if card.etiology is not None:
        served += f", then {card.etiology.id} (version {card.etiology.version}) from {etiology}"
    log.info("serving %s, scored by %s%s; %s", served, backend, "" if card.heatmaps else ", without heatmaps",
             _keys_said(access))


def _keys_said(access: Access) -> str:
    """The keys ``access`` asks for, in words, by name where they have names (never a key)."""
    if access.named_keys:
        names = [name for name, _ in access.named_keys]
        return f"one of {len(names)} named API keys is required ({', '.join(names)})"
    return "an API key is required" if access.api_key is not None else "no API key"


class ListeningServer(uvicorn.Server):
    """uvicorn serving on the sockets :func:`listen` opened (``run()`` and ``serve()`` take them by default), whose
    app's key file SIGHUP reads again (:meth:`reload_key`)."""

    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket]) -> None:
        super().__init__(config)
        self.sockets = sockets

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """uvicorn's handlers of SIGINT and SIGTERM, and SIGHUP reloading the key (:meth:`reload_key`, on the event
        loop, between requests' steps), installed and restored as uvicorn does its own. Python's default for SIGHUP
        (``systemctl reload``, an operator's ``kill -HUP``) ended the service without a line, which systemd counts
        as a clean stop and does not restart."""
        if not hasattr(signal, "SIGHUP") or threading.current_thread() is not threading.main_thread():
            with super().capture_signals():  # no SIGHUP (Windows), or signals only the main thread may handle
                yield
            return
        loop = asyncio.get_running_loop()
        previous = signal.signal(signal.SIGHUP, lambda signum, frame: loop.call_soon_threadsafe(self.reload_key))
        try:
            with super().capture_signals():
                yield
        finally:
            signal.signal(signal.SIGHUP, previous)

    def reload_key(self) -> None:
        """The API key file read again (:meth:`.guard.KeyInUse.reload`, as a change of the file is): from now on
        requests need a key it holds (a named key no longer in it is refused: revoked), and those in progress go on
        under the one they were admitted with; a file the checks of the start refuse refuses every key until it is
        mended. A file that holds the keys in use says so: systemd's copy of a ``LoadCredential=`` key, made once at
        the start, was said to be reloaded while the new key was refused and the old one let in."""
        keys: KeyInUse = self.config.app.state.key_in_use
        if (key_file := keys.key_file) is None:
            log.warning("SIGHUP: nothing to reload (the service was started without --api-key-file); it goes on",
                        extra={ANSWER: True})
            return
        if keys.reload("SIGHUP"):
            credentials = os.environ.get(CREDENTIALS_ENV)
            copied = bool(credentials) and Path(key_file).resolve().is_relative_to(Path(credentials).resolve())
            log.warning("SIGHUP: the API key file %s holds the key in use, which stays%s", key_file,
                        " (systemd copies a LoadCredential= key once, at start: systemctl restart hands over a new "
                        "one)" if copied else "", extra={ANSWER: True})

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        await super().serve(self.sockets if sockets is None else sockets)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's shutdown, its line for the grace running out said by :class:`GraceRanOut` (this server's)."""
        said, errors = GraceRanOut(self.config.timeout_graceful_shutdown), logging.getLogger("uvicorn.error")
        errors.filters.insert(0, said)  # before OneLineLog, which rewrites the message this filter knows it by
        try:
            await super().shutdown(sockets)
        finally:
            errors.removeFilter(said)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:  # uvicorn says where it listens only on sockets it opened itself
            self._log_started_message(sockets or self.sockets)


def listen(host: str, port: int) -> list[socket.socket]:
    """Sockets listening at ``port`` on every address ``host`` names, as uvicorn (asyncio's create_server) would
    open them. Opened before the model loads and handed to uvicorn, so that a port in use, an address not of this
    machine or a port that needs privileges ends the start at once with one line (OSError: exit status 2), not with
    uvicorn's log lines and exit status 3 after the load; and nothing can take the port between this check and the
    serving, which a bind tried and let go would allow. Listening, not only bound: on Linux another server that sets
    SO_REUSEADDR (as uvicorn does) may bind a port until one listens on it. A connection made while the model loads
    waits for it."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise OSError(e.errno, f"cannot listen on {where}: {host} is no address this machine knows ({e.strerror}): "
                               "check --host") from None
    sockets: list[socket.socket] = []
    try:
        for family, _, _, _, address in dict.fromkeys(infos):
            try:
                sockets.append(socket.create_server(address, family=family))  # SO_REUSEADDR, IPv6 only on IPv6
            except OSError as e:
                if e.errno != errno.EAFNOSUPPORT:  # a family this machine lacks (IPv6 off): passed over, as by asyncio
                    raise
        if not sockets:
            raise OSError(errno.EAFNOSUPPORT, os.strerror(errno.EAFNOSUPPORT))
    except OSError as e:
        for sock in sockets:
            sock.close()
        raise OSError(e.errno, _cannot_listen(where, port, e.errno)) from None
    return sockets


def _cannot_listen(where: str, port: int, code: int | None) -> str:
    """Why the service cannot listen at ``where``, and what to do, in one line."""
    if code == errno.EADDRINUSE:
        return f"{where} is in use (another service?): choose another --port"
    if code == errno.EADDRNOTAVAIL:
        return f"cannot listen on {where}: that address is not one of this machine: choose another --host"
    if code == errno.EACCES and port < 1024:
        return f"cannot listen on {where}: permission denied (ports below 1024 need privileges): choose a higher --port"
    reason = os.strerror(code).lower() if code else "unknown error"
    return f"cannot listen on {where}: {reason}: check --host and --port"


def _raise_open_file_limit() -> None:
    """Soft open-file limit up to the hard one: idle and slow connections then meet the head deadline long
    before the process runs out of descriptors."""
    try:
        import resource
    except ImportError:  # not on Windows
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 65536
    if soft != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
