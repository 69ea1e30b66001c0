"""How much work the service takes on at once (:class:`Limits`), each client's allowance of it (:class:`PerClient`),
and the refusals that end a request early."""

from __future__ import annotations

import asyncio
import logging
import math
import ssl
import time
from collections.abc import Callable
from dataclasses import field
from typing import Annotated, Any, Literal, TypeVar, cast
from urllib.parse import urlsplit

from fastapi.responses import JSONResponse
from limits import RateLimitItem, parse_many
from limits.errors import StorageError
from limits.storage import MemoryStorage, RedisStorage, Storage, storage_from_string
from limits.strategies import MovingWindowRateLimiter
from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass

from pneumoscan.core.cpus import usable_cores
from pneumoscan.core.logs import ANSWER, error_chain
from pneumoscan.core.secrets import check_client_cert

log = logging.getLogger(__name__)

RETRY_AFTER_S = 2  # what a 503 for a full service tells the client to wait
# the stores --rate-limit-storage takes, by the scheme of their URI: a Redis server (over TCP or a Unix socket) that
# the instances behind a load balancer share; any other of the limits library's is untested here
SHARED_STORES = ("redis", "rediss", "redis+unix")
STORE_TIMEOUT_S = 1.0  # the longest a rate-limit store may take to connect or answer before a request is refused
# once the store has failed to answer, how long prediction requests are refused at once (503) before one asks it again:
# a store that hangs held a worker thread for STORE_TIMEOUT_S with each request, and the requests queued behind them.
# Each ask that finds it silent doubles the wait, to STORE_RETRY_MAX_S at most: a store down for minutes was asked
# once a second by each instance, and each client sent back for a second sent its film again each second, where a
# store back within the cap is counted in again at most that late
STORE_RETRY_S = 1.0
STORE_RETRY_MAX_S = 16.0
# Why /healthz says degraded while the rate-limit store does not answer: the service works, but counts no request
STORE_SILENT = ("the rate-limit store (--rate-limit-storage) does not answer: each prediction request is refused (503) "
                "until it does; check the Redis server")
# What each limit takes, declared on its field so that pydantic checks it and the schema shows it: a count of at
# least 1 (a semaphore of 2.5, or of True, is no bound), seconds above 0 and finite (a deadline of inf is none)
Count = Annotated[int, Field(gt=0)]
Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]
T = TypeVar("T")


def _cores() -> int:
    """The cores this process may run on (:func:`~pneumoscan.core.cpus.usable_cores`), at most 4: one decode a
    core, as the docs promise."""
    return max(1, min(4, usable_cores()))


@dataclass(frozen=True, config=ConfigDict(strict=True, extra="forbid"))
class Limits:
    """How much work the service takes on at once. Past a bound a request is refused at once (503 with
    Retry-After) rather than queued without end: a queue that only grows serves every client late and none well.

    ``max_concurrent_decodes``: images decoded at once (decoding a large film takes memory and a core).
    ``max_queue``: prediction requests in the service at once (reading, decoding, waiting, classifying); it also
    bounds the memory held by uploads (``max_queue`` x the upload limit). ``heatmap_lane``: Grad-CAM overlays
    computed at once, on their own threads and their own copy of the model; at most ``4 x heatmap_lane`` heatmap
    requests are in the service. ``body_timeout``: seconds for the whole upload to arrive (also the grace for
    the rest of a body after an early answer such as a 503, and the longest an answer waits on a client that takes
    none of it). ``header_timeout``: seconds for a request line and
    headers to arrive. ``keep_alive``: seconds an idle connection stays open. ``shutdown_grace``: seconds requests
    in progress get to finish after SIGTERM or Ctrl-C, under an orchestrator's own grace (Kubernetes: 30 s); without
    it one slow upload held the exit for up to ``body_timeout``. ``max_lingering``: connections in a lingering close
    at once (an early answer on a connection that ends with it, the rest of its body dropped for at most
    ``body_timeout``), each holding a file descriptor; past it such a connection closes at once.

    Each is checked as it is given (pydantic, strict: ``"5"`` is no number, ``True`` no count): a value out of its
    range (:data:`Count`, :data:`Seconds`), or a name that is none of these (``max_upload_mb`` is create_app's), is
    refused with a ValueError naming the field and why."""

    max_concurrent_decodes: Count = field(default_factory=_cores)
    max_queue: Count = 32
    heatmap_lane: Count = 1
    body_timeout: Seconds = 60.0
    header_timeout: Seconds = 10.0
    keep_alive: Seconds = 5.0
    shutdown_grace: Seconds = 20.0
    max_lingering: Count = 128

    @property
    def heatmap_queue(self) -> int:
        return 4 * self.heatmap_lane


# Why a request was refused, in a fixed set of words that /metrics counts it under (pneumoscan_refusals_total's
# reason) and a client branches on: every answer of the service that is not a 2xx but /healthz's (whose status says
# it) names one. The message says more, but holds what the film or the request said, which a metric's label must not
Refusal = Literal["bad_request", "host_not_served", "cors_not_allowed", "key_missing", "key_wrong", "not_found",
                  "method_not_allowed", "upload_timeout", "too_large", "unsupported_type", "unreadable_film",
                  "not_reportable", "heatmap_unavailable", "heatmap_failed", "rate_limited", "rate_limit_unavailable",
                  "busy", "shutting_down", "key_file_refused", "model_broken", "internal_error", "client_gone",
                  "audit_log_lost"]
# each status's refusal where its raise names none: the 422 of a request's options, the 429 of a client past its
# rate, the 503 of a full lane, a path not served and a method it does not take (the router's), a bug's 500 (the
# guard's)
REFUSED_AS: dict[int, Refusal] = {400: "bad_request", 404: "not_found", 405: "method_not_allowed",
                                  408: "upload_timeout", 413: "too_large", 415: "unsupported_type",
                                  422: "bad_request", 429: "rate_limited", 500: "internal_error", 503: "busy"}


class Rejected(Exception):
    """A bad request, answered as ``status`` with ``{"error": message, "reason": kind}`` (and ``headers``), counted
    as ``kind`` (:data:`Refusal`; by default the status's, :data:`REFUSED_AS`). ``reading``: the film's reading, which
    stands where only its heatmap failed (``heatmap_failed``)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None,
                 kind: Refusal | None = None, reading: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers, self.reading = status, message, headers, reading
        self.kind: Refusal = kind or REFUSED_AS[status]

    def body(self) -> dict[str, Any]:
        return {"error": self.message, "reason": self.kind, **({"reading": self.reading} if self.reading else {})}

    def response(self) -> JSONResponse:
        """The answer, as every refusal of the service is given (the app's handlers and the guard's alike)."""
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


class ClientGone(Exception):
    """The client closed its connection: its remaining work is dropped (and nobody hears the answer)."""


def per_client_rate(text: str) -> RateLimitItem:
    """``text`` (``60/minute``, ``10 per 30 seconds``: the ``limits`` library's notation) as one rate of at least one
    request; none it can read, several (``1/second;50/minute``), or one of no request refused (ValueError)."""
    try:
        rates = parse_many(text)
    except ValueError:  # the library's own words quote the text, and say nothing of what is taken
        rates = []
    if len(rates) != 1 or rates[0].amount < 1:
        raise ValueError(f"rate_limit (--rate-limit) must be one rate of at least one request, as N/minute, N/second, "
                         f"N/hour or N per M minutes (60/minute, 10 per 30 seconds), got {text!r}")
    return rates[0]


def _said(rate: RateLimitItem) -> str:
    """``rate`` in words (``60 per minute``, ``10 per 30 seconds``), where the library's own says ``30 second``."""
    unit = rate.GRANULARITY.name
    return f"{rate.amount} per {unit}" if rate.multiples == 1 else f"{rate.amount} per {rate.multiples} {unit}s"


def said_store(uri: str) -> str:
    """A store's URI as the log and the errors say it: without its password (``redis://:***@host:6379/0``)."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)).geturl()


def _said_reason(error: Exception, uri: str) -> str:
    """``error``'s words as the errors say them: without ``uri``'s password, which the Redis client may quote."""
    password = urlsplit(uri).password
    return str(error).replace(password, "***") if password else str(error)


def known_store(uri: str) -> str:
    """``uri`` if it names a store :func:`rate_store` can count in (``memory://``, :data:`SHARED_STORES`) and, over
    TLS, verifies it (:func:`_verified`), else a ValueError, without reaching the store: an empty or mistyped one,
    or one not to be verified, is refused as the options are read."""
    if uri != "memory://" and urlsplit(uri).scheme not in SHARED_STORES:
        raise ValueError(f"rate_limit_storage (--rate-limit-storage) takes memory:// or a Redis server's URI "
                         f"(redis://HOST:6379/0, rediss://HOST:6380/0 over TLS, redis+unix:///PATH), "
                         f"got {said_store(uri)!r}")
    if urlsplit(uri).scheme == "rediss":
        _verified(uri)
    return uri


def _verified(uri: str) -> None:
    """A ValueError if ``uri``'s options, read as the Redis client reads them, turn off its check of the server's
    certificate (``ssl_cert_reqs=none``) or of the name it gives (``ssl_check_hostname=false``): a hospital's tool
    does not count in a server it has not verified, and a URI should not make it so without a word."""
    from redis.connection import parse_url  # here: the Redis client takes 65 ms to import, and memory:// needs none

    where = said_store(uri)
    try:
        options = parse_url(uri)
    except ValueError as e:  # a value the client cannot read (ssl_check_hostname, db, a verify flag)
        raise ValueError(f"rate_limit_storage (--rate-limit-storage) {where}: {e}") from None
    off = [said for said, is_off in (("ssl_cert_reqs=none", options.get("ssl_cert_reqs") == "none"),
                                     ("ssl_check_hostname=false", options.get("ssl_check_hostname") is False))
           if is_off]
    if off:
        raise ValueError(f"rate_limit_storage (--rate-limit-storage) {where}: {' and '.join(off)} would turn off the "
                         f"check of the Redis server's certificate, and pneumoscan counts in no server it has not "
                         f"verified: drop {'them' if len(off) > 1 else 'it'}, and give the CA that signed the "
                         f"server's certificate in ssl_ca_certs (rediss://HOST:6380/0?ssl_ca_certs=CA.pem) with a "
                         f"host the certificate names")


def rate_store(uri: str | None) -> Storage:
    """Where :class:`PerClient` counts: this process's memory (None, ``memory://``), or the Redis server at ``uri``
    (:data:`SHARED_STORES`), each call of which waits :data:`STORE_TIMEOUT_S` at most and fails as the library's
    StorageError. Any other URI is refused (ValueError), and so is a Redis server that does not answer now: the
    service would start, then refuse every prediction request."""
    if uri is None or known_store(uri) == "memory://":
        return MemoryStorage()
    where = said_store(uri)
    certified = _client_cert(uri)
    try:
        store = storage_from_string(uri, wrap_exceptions=True, socket_timeout=STORE_TIMEOUT_S,
                                    socket_connect_timeout=STORE_TIMEOUT_S)
    except Exception as e:  # the library's ConfigurationError, or the Redis client's own for a URI it cannot read
        raise ValueError(f"rate_limit_storage (--rate-limit-storage) {where}: {_said_reason(e, uri)}") from None
    try:
        _ping(store)
    except StorageError as e:  # refused, timed out, a certificate not verified (rediss://), a password refused
        hint = "" if certified or not _tls_refused(e.storage_error) else (
            "; a Redis server that asks each client for a certificate (tls-auth-clients yes) ends the connection of "
            "one without: give it in ssl_certfile, and its key in ssl_keyfile unless that file holds it "
            "(rediss://HOST:6380/0?ssl_ca_certs=CA.pem&ssl_certfile=CLIENT.pem)")
        raise ValueError(f"rate_limit_storage (--rate-limit-storage) {where}: the Redis server does not answer "
                         f"(within {STORE_TIMEOUT_S:g} s): start it, or check the URI "
                         f"({_said_reason(e.storage_error, uri)}){hint}") from None
    return store


def _ping(store: Storage) -> None:
    """PING the Redis server of ``store``, failing as a request's count does (the library's StorageError) with the
    Redis client's own error: a timeout for a server that hangs, a refused connection for a stopped one, a
    certificate not verified, which the start and the log say, where the library's check() says no more than
    False."""
    try:
        cast(RedisStorage, store).get_connection().ping()
    except Exception as e:  # any failure of the client is the store not answering
        raise StorageError(e) from None


def _retry_after(seconds: float) -> int:
    """``seconds`` as a Retry-After gives them: whole, rounded up (a client back a fraction early is refused
    again), and at least 1."""
    return max(1, math.ceil(seconds))


def _client_cert(uri: str) -> bool:
    """Whether ``uri`` (rediss://) gives the Redis client a certificate of its own (``ssl_certfile``, its key in
    ``ssl_keyfile`` or in that file), for a server that asks each client for one (mutual TLS); checked before the
    server is asked as the PACS's client certificate is (:func:`~pneumoscan.core.secrets.check_client_cert`), where
    a file missing was said as the server not answering ("Error 2 connecting to HOST"), naming no file."""
    from redis.connection import parse_url

    if urlsplit(uri).scheme != "rediss":
        return False
    options = parse_url(uri)  # read once already by known_store (_verified)
    cert, key = options.get("ssl_certfile"), options.get("ssl_keyfile")
    if cert is None and key is None:
        return False
    where = f"rate_limit_storage (--rate-limit-storage) {said_store(uri)}"
    if cert is None:
        raise ValueError(f"{where}: ssl_keyfile goes with ssl_certfile: give the certificate too")
    check_client_cert(cert, key, f"{where}: ssl_certfile", "ssl_keyfile")
    return True


def _tls_refused(error: BaseException) -> bool:
    """Whether the Redis client's ``error`` was the TLS connection ended or refused by the server (as one that asks
    for a client certificate ends a connection without one), not the server's certificate left unverified."""
    return any(isinstance(c, ssl.SSLError) and not isinstance(c, ssl.SSLCertVerificationError)
               for c in error_chain(error))


class StoreSilent(Exception):
    """The shared store did not answer, or is known not to and is not yet due to be asked again."""


class PerClient:
    """Each client's allowance of prediction requests (``serve --rate-limit``), so that one client sending as fast
    as it can (a misconfigured script) gets 429 with Retry-After while the others are served, where the bound on
    all of them together (:class:`Limits`' ``max_queue``) answered everyone 503 once it had filled the queue.
    Counted in a moving window (at most ``rate.amount`` requests in any ``rate``'s window) by the ``limits``
    library, in this process's memory, or in a Redis server that instances share (``storage``,
    :func:`rate_store`: a client allowed N by each instance behind a load balancer sent N times as many).
    ``rate``: as :func:`per_client_rate` takes it.

    A shared store that does not answer is an outage, with a start and an end: logged once as it starts (a
    warning) and once as it ends (with its length and the requests it refused), said by :meth:`health` meanwhile,
    and asked again :data:`STORE_RETRY_S` after the ask that found it silent, then after twice the last wait each
    time it is still silent (to :data:`STORE_RETRY_MAX_S`), by one request or probe at a time, the others refused at
    once: each request waited on a store that hangs (:data:`STORE_TIMEOUT_S`)."""

    def __init__(self, rate: str, storage: str | None = None) -> None:
        self.rate, self.store = per_client_rate(rate), rate_store(storage)
        self.counts = MovingWindowRateLimiter(self.store)
        self.where = said_store(storage) if storage is not None and storage != "memory://" else None
        if self.where is not None:
            log.info("each client's requests are counted against --rate-limit in %s, with every instance that counts "
                     "there", self.where)
        # the outage, if any (all on the event loop, which alone reads and sets them): when it began
        # (time.monotonic()), when the store may be asked again, whether it is being asked, and the requests refused
        self.silent_since: float | None = None
        self.backoff = STORE_RETRY_S  # the wait after the last ask that found it silent
        self.ask_at = 0.0
        self.asking = False
        self.refused = 0

    async def admit(self, client: str) -> None:
        """Count one request of ``client``, or refuse it (429, ``rate_limited``) with the seconds until the oldest
        of its window's requests leaves it (Retry-After). A shared store is asked in a thread (a server that hangs
        holds that thread, not the event loop), and one that does not answer refuses the request (503,
        ``rate_limit_unavailable``, Retry-After the seconds until it is next asked): it cannot be counted, and the
        allowance is the operator's bound."""
        if self.where is None:
            wait = self._count(client)  # memory: on the event loop, which alone uses it
        else:
            try:
                wait = await self._ask(self._count, client)
            except StoreSilent:
                self.refused += 1
                # Retry-After: the seconds until the store is next asked (the back-off after its last ask), so
                # that a client sent back is sent back once it may be counted, not before
                retry = _retry_after(self.ask_at - time.monotonic())
                raise Rejected(503, "the service cannot count this client's requests: its rate-limit store "
                                    "(--rate-limit-storage) does not answer; send it again after the Retry-After "
                                    "seconds", {"Retry-After": str(retry)}, kind="rate_limit_unavailable") from None
        if wait is not None:
            raise Rejected(429, f"too many prediction requests from this client: each may send {_said(self.rate)} "
                                f"(serve --rate-limit); send it again after {wait} s (Retry-After)",
                           {"Retry-After": str(wait)})

    async def health(self) -> str | None:
        """:data:`STORE_SILENT` while the shared store does not answer, else None. The probe asks it too (a PING,
        as a request would be asked), so that an idle service says an outage, and sees its end, without a request."""
        if self.where is None:
            return None
        try:
            await self._ask(_ping, self.store)
        except StoreSilent:
            return STORE_SILENT
        return None

    async def _ask(self, call: Callable[..., T], *args: Any) -> T:
        """``call(*args)`` on the store in a thread, or :class:`StoreSilent` at once while it is known not to answer
        and is not due (or is being asked by another). Its failure starts an outage (logged), its answer ends one."""
        if self.silent_since is not None and (self.asking or time.monotonic() < self.ask_at):
            raise StoreSilent
        probe = self.silent_since is not None  # the one ask of a store known silent
        self.asking |= probe
        try:
            answer = await asyncio.to_thread(call, *args)
        except StorageError as e:
            if self.silent_since is None:
                self.silent_since, self.refused = time.monotonic(), 0
                log.warning("the rate-limit store %s does not answer (%s): prediction requests get 503 until it "
                            "does", self.where, type(e.storage_error).__name__, extra={ANSWER: True})
                self.backoff = STORE_RETRY_S
            elif probe:  # not a request that set out before the outage was known, as several may have
                self.backoff = min(STORE_RETRY_MAX_S, 2 * self.backoff)
            self.ask_at = time.monotonic() + self.backoff
            raise StoreSilent from None
        finally:
            if probe:
                self.asking = False
        if self.silent_since is not None:
            log.info("the rate-limit store %s answers again, after %.1f s without: prediction requests are counted "
                     "again (%d refused 503 meanwhile)", self.where, time.monotonic() - self.silent_since,
                     self.refused)
            self.silent_since = None
        return answer

    def _count(self, client: str) -> int | None:
        """Count one request of ``client``: None if it is within its allowance, else the seconds to wait."""
        if self.counts.hit(self.rate, client):
            return None
        reset, _ = self.counts.get_window_stats(self.rate, client)
        return _retry_after(reset - time.time())  # the library's clock
