"""The audit trail of readings (``serve --audit-log FILE``): one JSON line for each /v1/predict request answered, a
reading or a refusal, so that a hospital can say later which model (id, version, card digest, threshold) gave which
answer on which film, when, to which client key, with which warnings; and one for each request to another endpoint
refused at the key (401), since failed authentication anywhere is what a security officer looks for.

A film is named by its SHA-256 and size alone, a client by its key's name (never the key), a warning by its kind (the
names /metrics counts them under: a warning's words may quote a value of the film's header, such as the patient's
age): no file name, patient identifier, UID or pixel. The file links films to answers, so it is created for the
service's user alone (0600), and one that others may read or any group may write is refused at start. Lines are
written through :mod:`logging` by a :class:`logging.handlers.WatchedFileHandler`, flushed one by one, which opens the
file again at the same path once logrotate has moved it."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pneumoscan.core import audit
from pneumoscan.core.audit import now

from .formats import StageResult
from .guard import key_name, route_path
from .limits import Refusal, Rejected
from .metrics import unanswered, warning_kind

log = logging.getLogger(__name__)
PREDICT_PATH = "/v1/predict"
REQUEST_ID = "X-Request-ID"  # the answer's header that names its audit line
KEY_REFUSED = 401  # a request refused at the key (guard: key_wrong, key_missing): a line whatever its path
AUDIT_LOST: Refusal = "audit_log_lost"  # a reading refused (503) since its line cannot be written (required)
MAX_REFUSAL_BYTES = 2**16  # the most of a refusal's body read for its reason (a heatmap_failed one holds a reading)
# the fields of the request in progress, filled by the service (film, options, readings) and the guard (the key a
# refused request carried); None outside an audited request
audit_entry: ContextVar[dict[str, Any] | None] = ContextVar("audit_entry", default=None)


def note(**fields: Any) -> None:
    """``fields`` into the audit line of the request in progress (nothing when the service keeps no audit log)."""
    if (entry := audit_entry.get()) is not None:
        entry.update(fields)


def reading_fields(stage: StageResult, in_scope: bool, warnings: Sequence[str]) -> dict[str, Any]:
    """One stage's reading as its audit line records it: its model, probability, call and threshold, and its
    warnings by kind."""
    return {"task": stage.task, "model_id": stage.model_id, "model_version": stage.model_version,
            "probability": stage.probability, "call": stage.label, "threshold": stage.threshold,
            "near_threshold": stage.near_threshold, "in_scope": in_scope,
            "warnings": [warning_kind(warning)[0] for warning in warnings]}


class AuditLog(audit.AuditLog):
    """The service's audit file (:class:`pneumoscan.core.audit.AuditLog`), a line lost said by this module's logger,
    which the served log rate-limits, with what the service does about it."""

    log = log
    goes_on = "the service goes on"
    goes_on_required = "readings are refused until it can be written (--audit-required)"


class AuditRequests:
    """ASGI middleware outside the guard: each /v1/predict request, answered or refused, and each other request
    refused at the key (:data:`KEY_REFUSED`), written to ``audit`` as one line, with its path, the model served
    (``model``: id, version and card digest, as /v1/model gives them) and a request id that its answer carries too
    (:data:`REQUEST_ID`). With ``audit.required`` a reading's line is written before its answer begins, and a reading
    whose line cannot be written is answered 503 (:data:`AUDIT_LOST`) in its place, nothing of it sent, counted by
    ``refused`` as every refusal of the service is, and its readings not counted (/metrics)."""

    def __init__(self, app: ASGIApp, audit: AuditLog, model: Mapping[str, str],
                 refused: Callable[[Refusal], None] = lambda kind: None) -> None:
        self.app, self.audit, self.model, self.refused = app, audit, dict(model), refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = route_path(scope)
        request_id = uuid.uuid4().hex
        entry: dict[str, Any] = {}
        status: int | None = None
        refusal = bytearray()
        written = withheld = False

        def write() -> bool:
            nonlocal written
            if not written and (path == PREDICT_PATH or status == KEY_REFUSED):
                written = True
                return self.audit.write(self._line(request_id, path, entry, status, bytes(refusal)))
            return True

        async def watched(message: Message) -> None:
            nonlocal status, withheld
            if withheld:  # a reading whose line was lost: none of its answer is sent
                return
            if message["type"] == "http.response.start":
                status = message["status"]
                entry.setdefault("time", now())
                if self.audit.required and path == PREDICT_PATH and status < 400 and not write():
                    withheld = True
                    return await self._refuse(request_id, message.get("headers", []), send)
                if path == PREDICT_PATH or status == KEY_REFUSED:  # the answers that have a line
                    message["headers"] = [*message.get("headers", []),
                                          (REQUEST_ID.lower().encode(), request_id.encode())]
            elif message["type"] == "http.response.body":
                if status is not None and status >= 400:
                    refusal.extend(message.get("body", b"")[:MAX_REFUSAL_BYTES - len(refusal)])
                if not message.get("more_body", False):  # written before the answer's end is sent: an answer a
                    write()  # client holds whole is in the file
            await send(message)

        token = audit_entry.set(entry)
        try:
            await self.app(scope, receive, watched)
        finally:
            audit_entry.reset(token)
            write()  # an answer that never ended (the client gone, the shutdown's grace run out)

    async def _refuse(self, request_id: str, headers: Sequence[tuple[bytes, bytes]], send: Send) -> None:
        """The 503 that takes a reading's place when its audit line cannot be written (``--audit-required``), with
        the headers the layers inside gave the reading (security headers, CORS) but its body's own."""
        refusal = Rejected(503, "the reading is not answered: its audit line cannot be written (--audit-required); "
                                "the service's log says why", kind=AUDIT_LOST)
        self.refused(refusal.kind)
        unanswered()  # nor are its readings counted in /metrics
        body = json.dumps(refusal.body()).encode()
        kept = [(name, value) for name, value in headers if name.lower() not in (b"content-type", b"content-length")]
        await send({"type": "http.response.start", "status": 503,
                    "headers": [*kept, (b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (REQUEST_ID.lower().encode(), request_id.encode())]})
        await send({"type": "http.response.body", "body": body})

    def _line(self, request_id: str, path: str, entry: dict[str, Any], status: int | None,
              refusal: bytes) -> dict[str, Any]:
        """The request's audit line: when, which request and key, the film, the options, the model, its readings
        answered, the status with the refusal's reason, and the path asked for."""
        reason = None
        if refusal:
            try:
                reason = json.loads(refusal).get("reason")
            except ValueError:  # cut short at MAX_REFUSAL_BYTES, or no JSON: the status still says it was refused
                reason = None
        return {"time": entry.pop("time", None) or now(),  # when the answer began; else when it was given up
                "request_id": request_id, "key": entry.pop("key", None) or key_name.get(),
                "film_sha256": entry.pop("film_sha256", None), "film_bytes": entry.pop("film_bytes", None),
                "format": entry.pop("format", None), "heatmap": entry.pop("heatmap", None),
                **self.model, "bundle_on_disk": entry.pop("bundle_on_disk", None),
                "readings": entry.pop("readings", []), "status": status, "reason": reason, "path": path}

