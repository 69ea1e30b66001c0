"""The FastAPI app: its routes (/v1/predict, /v1/model, /healthz, /metrics, the page) and error handlers, in front
of the :class:`.service.Service` that does the work."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

from pneumoscan.core.options import MAX_UPLOAD_MB
from pneumoscan.inference.predict import NON_FINITE, NonFiniteScore
from pneumoscan.interop.uids import uid_root

from .audit import REQUEST_ID, AuditLog, AuditRequests, note
from .formats import ERRORS, Health, HeatmapWord, Prediction, ReportFormat, ServiceInfo, check_options
from .guard import API_KEY_ENV, KEY_FILE_REFUSED, Access, Cors, Guard, KeyInUse
from .limits import REFUSED_AS, ClientGone, Limits, Rejected
from .metrics import CountRequests, ServiceMetrics
from .service import Service

STATIC = Path(__file__).parent / "static"
ACCESS_LOGGER = "uvicorn.access"  # uvicorn's access log (server.AccessLog and AccessLines limit and redact it)
CLIENT_GONE = 499  # nginx's "client closed request": the status a request whose client went away is logged with


def create_app(bundle: Path | str, etiology: Path | str | None = None, max_upload_mb: float = MAX_UPLOAD_MB,
               backend: str = "torch", limits: Limits | None = None, access: Access | None = None,
               heatmaps: bool = True, rate_limit: str | None = None, rate_limit_storage: str | None = None,
               audit_log: Path | str | None = None, audit_required: bool = False) -> FastAPI:
    """The service for a pneumonia (or any) bundle, with an optional bacteria-vs-virus second stage.
    ``backend="onnx"`` predicts with ONNX Runtime (2-3x faster on CPU; Grad-CAM still uses torch), exporting the
    model at startup unless ``pneumoscan export`` already put a current model.onnx in the bundle. Concurrent
    requests are decoded in threads and classified together in batches, within ``limits``. ``access`` None applies
    no key and no Host check (tests, or an app mounted behind another guard); :func:`.server.build_server` always passes
    one. Security headers are always sent; /docs and /redoc are off (they load scripts from a CDN), the schema is at
    /openapi.json. With ``$PNEUMOSCAN_API_KEY`` set and no ``access``, the app is refused: it would serve without
    the key its operator set (``access=Access.from_options()`` applies it). ``heatmaps=False`` serves readings alone
    (each heatmap asked for refused with 422), without Grad-CAM's torch: for a host where torch cannot run (one that
    refuses memory both writable and executable, as systemd's ``MemoryDenyWriteExecute=yes``) with ONNX Runtime
    scoring. ``rate_limit`` (``60/minute``; none by default): each client's allowance of prediction requests, past
    which it gets 429 with Retry-After while others are served (:class:`.limits.PerClient`); the client is the
    name of the key it was let in with (``access``'s named keys), else the request's address, a trusted proxy's
    ``X-Forwarded-For`` (:func:`.service.client_of`). ``rate_limit_storage``: where the counts are kept, this process's
    memory by default, or a Redis server's URI (``redis://HOST:6379/0``) shared by the instances behind a load
    balancer (:func:`.limits.rate_store`; one that does not answer is refused). ``audit_log``: a file that each
    /v1/predict request, answered or refused, and each request refused at the key, is appended to as one JSON line
    (:mod:`.audit`); one that cannot be written is refused before the model loads. ``audit_required``: a reading
    whose line cannot be written is answered 503, not the reading."""
    _refuse_unguarded_key(access)
    uid_root()  # a wrong $PNEUMOSCAN_UID_ROOT stops the start, not every report later as the client's fault (422)
    audit = AuditLog(audit_log, audit_required) if audit_log is not None else None
    try:
        service = Service(bundle, etiology, max_upload_mb, backend, limits or Limits(), heatmaps, rate_limit,
                          rate_limit_storage)
    except BaseException:
        if audit is not None:
            audit.close()
        raise

    app = _app_of(service, audit)
    card = service.card
    _add_middleware(app, access, service.metrics, audit,
                    {"model_id": card.id, "model_version": card.version, "card_digest": card.card_digest})
    app.state.in_flight = service.in_flight
    app.state.metrics = service.metrics  # the server adds its log's held-back lines (server.build_server)
    app.state.card = service.card  # the cards as served (the start names the model: server.build_server)
    _add_error_handlers(app, service)
    _add_routes(app, service)
    return app


def _app_of(service: Service, audit: AuditLog | None) -> FastAPI:
    """The bare FastAPI app of ``service``, which closes the service and the ``audit`` when it stops; no /docs or
    /redoc (they load scripts from a CDN), and one spelling a path."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        service.close()
        if audit is not None:
            audit.close()

    return FastAPI(
        title="pneumoscan",
        summary="Pediatric chest X-ray classifier (normal vs pneumonia; bacterial vs viral). Research use only.",
        version=service.main.card.package_version,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        # one spelling a path: /healthz/ is 404, not a redirect to http://HOST/healthz that a probe configured
        # with the slash would pass only by following (to plain http behind a TLS proxy)
        redirect_slashes=False,
    )


def _refuse_unguarded_key(access: Access | None) -> None:
    """Refuse an app without access rules while ``$PNEUMOSCAN_API_KEY`` is set: the operator asked for a key, and
    the app would serve without it."""
    if access is None and os.environ.get(API_KEY_ENV) is not None:  # set, even empty: Access refuses an empty one
        raise ValueError(f"{API_KEY_ENV} is set, but this app was given no access rules, so it would serve without "
                         "the key: pass access=Access.from_options() (the key, loopback hosts; allowed_hosts=... for "
                         f"others), or unset {API_KEY_ENV}")


def _add_middleware(app: FastAPI, access: Access | None, metrics: ServiceMetrics, audit: AuditLog | None,
                    model: dict[str, str]) -> None:
    """The guard (key, Host check, security headers) on every request, and CORS for the origins ``access`` allows,
    outside the guard so that its refusals carry CORS too, with a guard of the preflights CORS answers outside it;
    the audit (of the ``model`` served) outside them, so that their refusals are written too; outside them all,
    each answer counted (its refusals too, the audit's own)."""
    app.state.key_in_use = KeyInUse(access)  # read again by a change of the key file, or SIGHUP

    def carried(key: str) -> None:  # the key a request carried, let in or not (the audit's too)
        metrics.key_carried(key)
        note(key=key)

    app.add_middleware(Guard, access=access, key=app.state.key_in_use, refused=metrics.refused, carried=carried)
    if access is not None and access.cors_origins:  # each added outside the ones before
        app.add_middleware(Cors, refused=metrics.refused, allow_origins=list(access.cors_origins),
                           allow_methods=["GET", "POST"], allow_headers=["Authorization", "X-API-Key"], max_age=600,
                           expose_headers=["Retry-After", REQUEST_ID])  # for the allowed page to read
        app.add_middleware(Guard, access=access, preflights=True, refused=metrics.refused)
    if audit is not None:
        app.add_middleware(AuditRequests, audit=audit, refused=metrics.refused, model=model)
    app.add_middleware(CountRequests, metrics=metrics)


def _add_routes(app: FastAPI, service: Service) -> None:
    """The API (/v1/predict, /v1/model, /healthz, /metrics) and the page (/ and /static), each answered by
    ``service``."""
    _add_predict(app, service)
    _add_health(app, service)

    @app.get("/v1/model", response_model=ServiceInfo)
    async def model_info() -> ServiceInfo:
        """The model card: task, classes, threshold, validation metrics, training data fingerprint."""
        return service.info()

    @app.get("/metrics", response_class=PlainTextResponse,
             responses={200: {"description": "Prometheus text format (OpenMetrics when the Accept header asks)"}})
    async def metrics(request: Request) -> Response:
        """The service's metrics for Prometheus: requests, readings, refusals and scope warnings by kind, the
        model's run time, the requests in the service against their bounds, the models served (docs/deployment.md).
        No patient data; behind the API key when one is set, as the rest of the API."""
        body, content_type = service.metrics.exposition(request.headers.get("accept"))
        return Response(body, media_type=content_type)

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")  # with the guard's Content-Security-Policy, as every response

    app.mount("/static", StaticFiles(directory=STATIC), name="static")


def _add_predict(app: FastAPI, service: Service) -> None:
    """POST /v1/predict: ``service`` reads the upload from the request itself (some refusals come before it is
    read), so the schema describes its multipart body by hand."""

    @app.post(
        "/v1/predict", response_model=Prediction, responses=ERRORS,
        openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["file"],
            "properties": {"file": {"type": "string", "format": "binary", "description": "JPEG, PNG or DICOM"}},
        }}}}},
    )
    async def predict(
        request: Request, heatmap: bool | HeatmapWord = False, image: bool = False, format: ReportFormat = "json",
    ) -> Response:
        """Classify one uploaded X-ray (multipart field ``file``). ``format``: the JSON below; ``dicom-sr``, a DICOM
        Comprehensive SR (TID 1500) in the uploaded film's study -- with ``heatmap=true`` a multipart/related
        body of the SR and the overlay as a Secondary Capture; ``fhir``, a FHIR R4 Observation. 503 with
        Retry-After when the service is full, 429 with Retry-After when the client has sent its allowance
        (serve --rate-limit). ``heatmap=map`` returns the Grad-CAM map alone (the page colours it);
        ``image=true`` the decoded film (the page shows DICOM films with it); both only with the JSON answer
        (422 otherwise)."""
        check_options(format, heatmap, image, [name for name, _ in request.query_params.multi_items()])
        return await service.predict(request, heatmap, image, format)


def _add_health(app: FastAPI, service: Service) -> None:
    """GET and HEAD /healthz: the service's health, degraded while the key file lets no client in."""

    @app.get("/healthz", response_model=Health, response_model_exclude_none=True, responses={503: {"model": Health}})
    async def healthz() -> Health | JSONResponse:
        # async on purpose: it answers from the event loop, never waiting behind decodes for a worker thread (the
        # bundle's files are stat'ed, and read when changed, in a thread of their own, for a bounded wait: OnDisk)
        health = await service.health()
        if health.status == "unhealthy":
            return JSONResponse(health.model_dump(exclude_none=True), status_code=503)
        keys: KeyInUse = app.state.key_in_use
        keys.current()  # a look at the key file, as a request that needs a key makes (once a second at most)
        if keys.refusal is not None:  # the last reason: the service works, but lets no client in (never the file's
            # words, which name its path and lines, to a probe that needs no key)
            reason = "; ".join(r for r in (health.reason, KEY_FILE_REFUSED) if r)
            return health.model_copy(update={"status": "degraded", "reason": reason})
        return health  # degraded still answers predictions: a balancer keeps sending them

    # HEAD too, for the /healthz and / the probes of some load balancers send (FastAPI answers GET routes' HEAD 405):
    # a route of its own, out of the schema, where one method and path is one operation (one id)
    app.add_api_route("/healthz", healthz, methods=["HEAD"], response_model=Health, response_model_exclude_none=True,
                      include_in_schema=False)


def _add_error_handlers(app: FastAPI, service: Service) -> None:
    """Every failure answers a :class:`~.limits.Rejected`'s ``{"error": "...", "reason": "..."}``, counted by its
    reason; a non-finite score also marks the model broken."""

    def refuse(refusal: Rejected) -> JSONResponse:
        service.metrics.refused(refusal.kind)
        return refusal.response()

    @app.exception_handler(Rejected)
    async def _rejected(request: Request, exc: Rejected) -> JSONResponse:
        return refuse(exc)

    @app.exception_handler(ClientGone)
    async def _gone(request: Request, exc: ClientGone) -> JSONResponse:
        _log_access(request.scope, CLIENT_GONE)  # never delivered
        return refuse(Rejected(CLIENT_GONE, "client closed the connection", kind="client_gone"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # the router's 404 and 405, and the static files'; any other status of theirs is the request's fault
        kind = REFUSED_AS.get(exc.status_code, "bad_request")
        return refuse(Rejected(exc.status_code, str(exc.detail), exc.headers, kind=kind))

    @app.exception_handler(NonFiniteScore)
    async def _non_finite(request: Request, exc: NonFiniteScore) -> JSONResponse:
        service.mark_broken()
        return refuse(Rejected(500, NON_FINITE, kind="model_broken"))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        problems = problems.replace("'", "")  # pydantic quotes what it expects ('json'): 422 bodies hold no apostrophes
        return refuse(Rejected(422, f"invalid request: {problems}"))


def _log_access(scope: Scope, status: int) -> None:
    """The access line of a request whose answer is never sent, as uvicorn writes its own: uvicorn writes none for an
    answer to a closed connection, so a request whose client went away (its work dropped) left no trace in the log."""
    logging.getLogger(ACCESS_LOGGER).info('%s - "%s %s HTTP/%s" %d', get_client_addr(scope), scope["method"],
                                          get_path_with_query_string(scope), scope["http_version"], status)
