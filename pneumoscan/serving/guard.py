"""Who may use the service (:class:`Access`: API key, Host allow-list, CORS origins) and the ASGI guard in front
of every request, which also adds the security headers and turns a bug into a JSON 500."""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import time
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pneumoscan.core.atomic import file_stamp
from pneumoscan.core.logs import ANSWER, raised_at, redact
from pneumoscan.core.secrets import one_secret, read_secret, secret_text, warn_if_shared

from .limits import RETRY_AFTER_S, Refusal, Rejected

log = logging.getLogger(__name__)

# The page loads nothing from other origins and no other site may frame it; the policy makes that a guarantee
# rather than a habit. Sent with every response, so that the page is covered however it is reached (/ or
# /static/index.html), as are any other files served.
CSP = (
    "default-src 'self'; img-src 'self' data: blob:; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# Sent with every response: no MIME sniffing of a JSON error into HTML, no URL (with its query) leaked onwards.
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                    (b"content-security-policy", CSP.encode()), (b"x-frame-options", b"DENY")]
# What needs no key: the page and its assets (a browser must load them to show the key field), the health probe
# (load balancers) and the schema. Everything else, the API and any path not served, needs the key.
HEALTH_PATH = "/healthz"
PUBLIC_PATHS = ("/", HEALTH_PATH, "/openapi.json")
PUBLIC_PREFIXES = ("/static/",)
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
API_KEY_ENV = "PNEUMOSCAN_API_KEY"  # the key when no key file is named
# the answer to a request still in progress when the shutdown's grace ran out (--shutdown-grace)
SHUTTING_DOWN = "the service is shutting down: send the request again (to another instance, or once it is back)"
# a key's name in a key file of named keys (`NAME KEY` a line): what the access log and the rate limit call the
# client, so a short word of the operator's, never a value a request chose
KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")
# the name of the key the request in progress was let in with (None: no key, or the one unnamed key), set by the
# guard for the access log (server.AccessLines) and the rate limit (service.client_of) of the same request
key_name: ContextVar[str | None] = ContextVar("key_name", default=None)
# how /metrics counts by key (pneumoscan_key_requests_total's key) a request that carried no key of the key file's
# named keys: a key not in it, or none; never a key file's name (KEY_NAME starts with a letter or a digit)
UNKNOWN_KEY, NO_KEY = "(unknown)", "(none)"
# how often a request may look whether the key file has changed on disk (its stamp), to read it again
KEY_FILE_CHECK_S = 1.0
# the answer to a request that needs a key while the key file as it stands is refused: every key is refused
KEY_FILE_REFUSED = ("the service cannot check API keys: its API key file is refused (the service log says why); "
                    "its operator must mend the file")


@dataclass(frozen=True)
class Access:
    """Who may use the service. ``api_key``: when set, every request but the page, its assets, /healthz and
    /openapi.json must carry it (``Authorization:
    Bearer KEY`` or ``X-API-Key: KEY``). ``named_keys``: in its place, one key for each client, ``(name, key)``
    pairs (a key file of ``NAME KEY`` lines: :func:`read_keys`): a request carrying any of them is let in, as that
    name's. ``allowed_hosts``: Host header values accepted (``*`` for any,
    ``*.example.org`` for subdomains): a web page on another site that points its own DNS name at this server
    (DNS rebinding) is refused. ``cors_origins``: origins whose pages may call the API from a browser (none by
    default)."""

    api_key: str | None = field(default=None, repr=False)  # a repr may end up in a log, a traceback or a report
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS
    cors_origins: tuple[str, ...] = ()
    key_file: Path | str | None = None  # where the key was read from: SIGHUP reads it again (server.ListeningServer)
    named_keys: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if self.api_key is not None:
            check_key(self.api_key)
        if self.api_key is not None and self.named_keys:
            raise ValueError("give either one API key or named keys, not both")
        names, keys = [name for name, _ in self.named_keys], [key for _, key in self.named_keys]
        if len(set(names)) < len(names) or len(set(keys)) < len(keys):
            raise ValueError("each named API key needs a name and a key of its own")
        for name, key in self.named_keys:
            check_name(name)
            check_key(key, f"the API key named {name}")
        if not self.allowed_hosts:
            raise ValueError("the Host allow-list is empty: name at least one host (or '*')")
        with_port = [h for h in self.allowed_hosts if _host_name(h) != h.lower().strip("[]")]
        if with_port:
            # the Host header's port is dropped before the comparison: such a name matched no request, every one 400
            raise ValueError(f"allowed_hosts (--allowed-hosts) {', '.join(with_port)}: give host names without a "
                             "port (the port a client uses is not compared): "
                             f"{', '.join(_host_name(h) for h in with_port)}")
        for origin in self.cors_origins:
            # CORS compares the Origin header as a browser sends it: any other spelling allows no page at all
            if origin != "*" and (sent := _browser_origin(origin)) != origin:
                fix = ("give each origin apart (repeat --cors-origin)" if "," in origin else
                       f"give {sent}" if sent else "not an origin (https://viewer.example, say)")
                raise ValueError(f"cors_origins (--cors-origin) {origin}: a browser names a page's origin by its "
                                 "scheme, host and a port other than the default, nothing after, and would never "
                                 f"send this: {fix}")

    @classmethod
    def from_options(cls, api_key_file: Path | str | None = None, allowed_hosts: Sequence[str] = (),
                     cors_origins: Sequence[str] = ()) -> Access:
        """The rules as ``serve`` is given them. The keys: ``api_key_file``'s, one bare key or named keys
        (:func:`read_keys`), else ``$PNEUMOSCAN_API_KEY``'s one key, else none
        (:func:`~pneumoscan.core.secrets.read_secret`: stripped; empty or blank, or of several lines, refused).
        ``allowed_hosts``: names, each item possibly a comma-separated list; none given means loopback only."""
        key, named = read_keys(api_key_file) if api_key_file is not None else (read_secret(None, API_KEY_ENV,
                                                                                           "API key"), ())
        hosts = tuple(h.strip() for item in allowed_hosts for h in item.split(",") if h.strip()) or LOOPBACK_HOSTS
        return cls(api_key=key, allowed_hosts=hosts, cors_origins=tuple(cors_origins), key_file=api_key_file,
                   named_keys=named)

    @property
    def keys(self) -> tuple[tuple[str | None, str], ...]:
        """Every key a request may carry, each with its name (None: the one unnamed key); none without a key."""
        return self.named_keys or (((None, self.api_key),) if self.api_key is not None else ())


def check_key(key: str, what: str = "the API key") -> None:
    """Refuse (ValueError) a key too short to be one, or one that no client can send in a header."""
    if len(key) < 16:
        raise ValueError(f"{what} is too short: use at least 16 characters (e.g. `openssl rand -hex 32`)")
    if not all(" " < c <= "~" for c in key):
        # a service started with it would pass its health checks and answer every client 401
        raise ValueError(f"{what} holds a character no client can send in a header (a line break, a space, a tab or "
                         "a letter beyond ASCII): use printable ASCII (e.g. `openssl rand -hex 32`)")


def check_name(name: str) -> None:
    """Refuse (ValueError) a key's name that is not :data:`KEY_NAME`'s short word (it is written in the log)."""
    if not KEY_NAME.fullmatch(name):
        raise ValueError(f"the key name {name!r} is not a short name: 1 to 32 letters, digits, '.', '_' or '-', "
                         "starting with a letter or a digit")


def read_keys(path: Path | str) -> tuple[str | None, tuple[tuple[str, str], ...]]:
    """The API key file at ``path``: one bare key (``(key, ())``, as :func:`~pneumoscan.core.secrets.read_secret`
    reads it), or named keys (``(None, ((name, key), ...))``), one ``NAME KEY`` line each (``#`` comments and
    blank lines allowed). A line that is no ``NAME KEY``, a name or key given twice, or a key that
    :func:`check_key` refuses is refused (ValueError) naming the file and the line, never the key."""
    text = secret_text(path, "API key")
    if len(text.split()) <= 1:  # the one-key file (an empty one, or one key that holds a control character, refused)
        return one_secret(text, path, None, "API key"), ()
    named: dict[str, tuple[int, str]] = {}
    lines: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        where = f"the API key file {path}, line {number}"
        if len(fields) != 2:
            raise ValueError(f"{where}: give one key a line, as NAME KEY (a name, a space, the key)")
        name, key = fields
        try:
            check_name(name)
            check_key(key, "its key")
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        if name in named:
            raise ValueError(f"{where}: the name {name} is line {named[name][0]}'s too: give each client a name of "
                             "its own")
        if key in lines:
            raise ValueError(f"{where}: its key is line {lines[key]}'s too: give each client a key of its own")
        named[name], lines[key] = (number, key), number
    if not named:
        raise ValueError(f"the API key file {path} holds no key: only comments and blank lines")
    warn_if_shared(path, f"the API key file {path}")
    return None, tuple((name, key) for name, (_, key) in named.items())


class KeyInUse:
    """The API keys an app's guard asks for, one set for the app, as its key file (``access.key_file``) holds them:
    read again when the file changes on disk (its :func:`~pneumoscan.core.atomic.file_stamp`, which a request looks
    at once a :data:`KEY_FILE_CHECK_S` at most) and on SIGHUP (:meth:`.server.ListeningServer.reload_key`), so that
    a line deleted is a key revoked within a second, where it was one only once someone sent SIGHUP. A file that
    cannot be read, or that the checks of the start refuse (empty, removed, a line malformed), refuses every key
    (:attr:`refusal` says why; never the service opened): the keys in use may hold the one its operator meant to
    revoke. A request is checked against the keys in use as it arrives, and one admitted goes on under its key.
    Used on the event loop alone."""

    def __init__(self, access: Access | None) -> None:
        self.access = access
        self.keys = self._encoded(access)
        self.refusal: str | None = None  # why the key file as it stands is refused: every key with it
        # no file's stamp (nor a missing file's None): the first look reads the file, which may have changed since it
        # was read, before the model loaded
        self.stamp: str | None = ""
        self.looked = time.monotonic()

    @staticmethod
    def _encoded(access: Access | None) -> tuple[tuple[str | None, bytes], ...]:
        return tuple((name, key.encode()) for name, key in access.keys) if access else ()

    @property
    def key_file(self) -> Path | str | None:
        """Where the key file is (``serve --api-key-file``'s path, systemd's copy of a ``LoadCredential=`` key
        among them); None where the keys are not a file's (``$PNEUMOSCAN_API_KEY``'s, or none): the one answer the
        looks, the reloads and SIGHUP read."""
        return self.access.key_file if self.access is not None else None

    def current(self) -> tuple[tuple[str | None, bytes], ...]:
        """The keys a request must carry now (none with :attr:`refusal`): the key file read again first where it
        has changed since it was last read."""
        key_file = self.key_file
        if key_file is not None and (now := time.monotonic()) - self.looked >= KEY_FILE_CHECK_S:
            self.looked = now
            if file_stamp(key_file) != self.stamp:
                self.reload("the API key file changed")
        return self.keys

    def reload(self, said: str) -> bool:
        """The key file read again, with the checks of the start (:meth:`Access.from_options`), its outcome logged
        after ``said`` (what made it read); True when it holds the keys in use, which stay (nothing logged)."""
        key_file, self.looked = self.key_file, time.monotonic()
        assert self.access is not None and key_file is not None
        self.stamp = file_stamp(key_file)  # before the read: a change during it is read at the next look
        try:
            access = Access.from_options(key_file, self.access.allowed_hosts, self.access.cors_origins)
        except (OSError, ValueError) as e:  # an OSError's words without its "[Errno 2]"
            self.keys, self.refusal = (), e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            log.warning("%s: every API key is refused (503, key_file_refused) until the file is mended: %s", said,
                        self.refusal, extra={ANSWER: True})
            return False
        refused, self.refusal = self.refusal is not None, None
        if self._encoded(access) == self.keys:  # none while refused
            return True
        self.access, self.keys = access, self._encoded(access)
        log.info("%s: the API key was reloaded from %s; requests from now on need %s", said, key_file,
                 f"one of its keys ({', '.join(name for name, _ in access.named_keys)})" if access.named_keys
                 else "its key" if refused else "the new key", extra={ANSWER: True})
        return False


class Guard:
    """ASGI middleware in front of everything but CORS: the Host allow-list, the API key for all but the public
    paths, the security headers on every response, and a JSON 500 for a bug (caught here, so the framework neither
    re-raises it, which closed the connection and logged a traceback per request, nor answers in plain text). Each
    of its refusals is a :class:`~.limits.Rejected`, with its reason, counted by ``refused`` (the service's
    /metrics) as the app's are: a client sending a wrong key shows as ``key_wrong``; with named keys, the key each
    request carried is given to ``carried`` (:meth:`_refusal`), which /metrics counts the request's answer under.
    Pure ASGI, so request bodies stream through untouched. With ``preflights``, the guard outside CORS: CORS
    preflights only (which carry no key, by the Fetch standard, and CORS answers itself) get the Host check and the
    security headers; every other request passes to the CORS middleware, whose own guard inside sees it."""

    def __init__(self, app: ASGIApp, access: Access | None, preflights: bool = False,
                 key: KeyInUse | None = None, refused: Callable[[Refusal], None] = lambda kind: None,
                 carried: Callable[[str], None] = lambda key: None) -> None:
        self.app, self.access, self.preflights, self.refused = app, access, preflights, refused
        self.carried = carried  # the key a request that needed a named key carried (/metrics, the audit)
        self.key = KeyInUse(None) if preflights else key or KeyInUse(access)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (self.preflights and not _preflight(scope)):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        problem, carried = self._refusal(scope, headers)
        if carried is not None:
            self.carried(carried)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        if problem is not None:
            return await self._refuse(problem, scope, receive, send_with_headers)
        started = False

        async def send_tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send_with_headers(message)

        try:
            await self.app(scope, receive, send_tracked)
        except asyncio.CancelledError:  # the shutdown's grace ran out with this request in progress: uvicorn
            if started:  # cancels it, and answered a request not yet answered 500 with an "Exception" logged
                raise
            # with the busy 503's Retry-After: without one a balancer or client sent it again at once
            headers = {"Connection": "close", "Retry-After": str(RETRY_AFTER_S)}
            await self._refuse(Rejected(503, SHUTTING_DOWN, headers, kind="shutting_down"), scope, receive,
                               send_with_headers)
        except Exception as e:  # a bug: one log line, a JSON 500, the connection kept
            # the kind of error, where it was raised and its message with what it quotes redacted, no traceback: a
            # message may quote a value of the film's header (a patient's name, a birth date), as pydicom's and
            # highdicom's do, and a traceback repeats it. The kind and place are in the format, which the served
            # log's rate limit (core.logs.OneLineLog) tells failures apart by
            where = raised_at(e).replace("%", "%%")  # in the format
            log.error(f"internal error on %s %s: {type(e).__name__} at {where}: %s", scope["method"],
                      scope["path"], redact(str(e)))
            if started:  # too late for a 500: the server closes the connection and logs this, not the message
                raise RuntimeError("internal error after the answer had begun") from None
            await self._refuse(Rejected(500, "internal error"), scope, receive, send_with_headers)

    async def _refuse(self, refusal: Rejected, scope: Scope, receive: Receive, send: Send) -> None:
        self.refused(refusal.kind)
        await refusal.response()(scope, receive, send)

    def _refusal(self, scope: Scope, headers: dict[str, str]) -> tuple[Rejected | None, str | None]:
        """Why the request is refused (None: let in), and, where it needed one of the named keys, the key it carried
        as /metrics counts it: its name, :data:`UNKNOWN_KEY` or :data:`NO_KEY`."""
        if self.access is None:
            return None, None
        path = route_path(scope)
        # the health probe answers any Host: a load balancer's or an orchestrator's probe names the instance by its
        # address (or localhost), and the probe reveals nothing a rebound page could use (the model id)
        if path != HEALTH_PATH and not _host_allowed(headers.get("host", ""), self.access.allowed_hosts):
            return Rejected(400, "this host name is not served here (see --allowed-hosts)",
                            kind="host_not_served"), None
        if _public(path):
            return None, None
        # no method is exempt: a browser's CORS preflight is answered before this guard (CORSMiddleware is outside
        # it, and only with --cors-origin; the guard outside that asks no key), so an OPTIONS that reaches here
        # needs the key as any other request
        keys = self.key.current()  # the keys as this request arrives: a reload replaces them, not this request's check
        if self.key.refusal is not None:  # no key can be trusted, and none is not the service opened
            return Rejected(503, KEY_FILE_REFUSED, kind="key_file_refused"), None
        if not keys:
            return None, None
        # either header may hold the key: a proxy that adds X-API-Key passes a client's own Bearer token (a
        # hospital sign-on's) on beside it
        auth = headers.get("authorization", "")
        given = [k.encode("latin-1") for k in (auth[7:].strip() if auth[:7].lower() == "bearer " else "",
                                               headers.get("x-api-key", "")) if k]
        # every key compared, each in constant time: neither the time taken nor the answer says which came close
        matched = [name for name, key in keys for k in given if hmac.compare_digest(k, key)]
        named = keys[0][0] is not None
        if not matched:
            reason = "a valid API key is required" if given else "an API key is required"
            return (Rejected(401, f"{reason}: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
                             {"WWW-Authenticate": "Bearer"}, kind="key_wrong" if given else "key_missing"),
                    (UNKNOWN_KEY if given else NO_KEY) if named else None)
        key_name.set(matched[0])
        return None, matched[0]


class Cors(CORSMiddleware):
    """Starlette's CORS, whose refusal of a preflight (an origin, method or header not allowed) is answered as every
    refusal of the service, a :class:`~.limits.Rejected` (``cors_not_allowed``) counted by ``refused``, not in
    Starlette's plain text without a reason."""

    def __init__(self, app: ASGIApp, refused: Callable[[Refusal], None], **options: Any) -> None:
        super().__init__(app, **options)
        self.refused = refused

    def preflight_response(self, request_headers: Headers) -> Response:
        answer = super().preflight_response(request_headers)
        if answer.status_code < 400:
            return answer
        # Starlette's text names what was not allowed ("Disallowed CORS origin, method"); its CORS headers stay
        failures = bytes(answer.body).decode().removeprefix("Disallowed CORS ")
        headers = {k: v for k, v in answer.headers.items() if k not in ("content-length", "content-type")}
        self.refused("cors_not_allowed")
        return Rejected(400, f"CORS preflight refused: its {failures} not allowed here (see --cors-origin)",
                        headers, kind="cors_not_allowed").response()


def _browser_origin(origin: str) -> str | None:
    """``origin`` as a browser's Origin header spells it (``https://viewer.example``: scheme and host in lower case,
    no default port, no path), or None when it names no http(s) origin."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:  # a port that is no number, or an unclosed IPv6 bracket
        return None
    scheme, host = parts.scheme.lower(), parts.hostname or ""
    if scheme not in ("http", "https") or not re.fullmatch(r"[a-z0-9.-]+|[0-9a-f:.]*:[0-9a-f:.]*", host):
        return None
    if parts.username is not None or parts.query or parts.fragment:
        return None
    host = f"[{host}]" if ":" in host else host
    default = {"http": 80, "https": 443}[scheme]
    return f"{scheme}://{host}" + (f":{port}" if port not in (None, default) else "")


def _preflight(scope: Scope) -> bool:
    """Whether a request is a CORS preflight: OPTIONS with an Origin and the method it asks for."""
    names = {k.lower() for k, _ in scope["headers"]}
    return scope["method"] == "OPTIONS" and {b"origin", b"access-control-request-method"} <= names


def route_path(scope: Scope) -> str:
    """The path the app routes on: behind a proxy's prefix (uvicorn --root-path) or mounted under one, the request's
    path starts with that prefix, and a check of the raw path would miss /v1/ while the router still finds it."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


def _public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def _host_name(host: str) -> str:
    """A Host header value's name: lower case, its port dropped, an [IPv6] address unbracketed."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.split(":", 1)[0] if host.count(":") == 1 else host


def _host_allowed(host_header: str, allowed: tuple[str, ...]) -> bool:
    """The Host header's name (:func:`_host_name`) against the allow-list."""
    host = _host_name(host_header)
    for pattern in allowed:
        pattern = pattern.lower().strip("[]")
        if pattern == "*" or host == pattern or (pattern.startswith("*.") and host.endswith(pattern[1:])):
            return True
    return False
