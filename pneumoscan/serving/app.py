"""HTTP service: a FastAPI app that reads an uploaded X-ray, predicts, and optionally explains with Grad-CAM.

Privacy: uploads are parsed in memory only (never spooled to disk), and nothing here logs a file name, the
image bytes or pixels. Robustness: every bad upload becomes a 4xx with ``{"error": "..."}``; the body is capped
while it is read (Content-Length is not trusted), and the decompression-bomb guard lives in :mod:`decode`.
Load: work is bounded (:class:`Limits`): a fixed number of decodes at once, a bounded number of requests in the
service (more get 503 with Retry-After), Grad-CAM in its own lane, deadlines for request heads and bodies, and
work for a client that has gone is dropped. Access (:class:`Access`): an optional API key for /v1/*, a Host
allow-list against DNS rebinding, no CORS unless configured; see docs/deployment.md.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hmac
import io
import ipaddress
import logging
import os
import queue
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import h11
import numpy as np
import uvicorn
from PIL import Image
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from python_multipart.multipart import parse_options_header
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from pneumoscan.data import readers
from pneumoscan.data.decode import DecodeError, read_dicom_header, read_gray
from pneumoscan.data.readers.dicom import redact
from pneumoscan.data.scope import describe
from pneumoscan.evaluation.model_card import card_summary
from pneumoscan.inference.explain import MAX_PANEL, explain_array, overlay_png, panel_shape
from pneumoscan.inference.export import weights_digest
from pneumoscan.inference.predict import NON_FINITE, NonFiniteScore, Predictor, check_stages

logger = logging.getLogger(__name__)
T = TypeVar("T")

STATIC = Path(__file__).parent / "static"
ACCEPTED_TYPES = ("image/jpeg", "image/png", "application/dicom")
# Room for the multipart envelope (boundaries, part headers) on top of the file itself.
ENVELOPE_BYTES = 64 * 1024
# The page loads nothing from other origins; the policy makes that a guarantee rather than a habit.
CSP = (
    "default-src 'self'; img-src 'self' data: blob:; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


# Sent with every response: no MIME sniffing of a JSON error into HTML, no URL (with its query) leaked onwards.
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
RETRY_AFTER_S = 2


@dataclass(frozen=True)
class Limits:
    """How much work the service takes on at once. Past a bound a request is refused at once (503 with
    Retry-After) rather than queued without end: a queue that only grows serves every client late and none well.

    ``max_concurrent_decodes``: images decoded at once (decoding a large film takes memory and a core).
    ``max_queue``: prediction requests in the service at once (reading, decoding, waiting, classifying); it also
    bounds the memory held by uploads (``max_queue`` x the upload limit). ``heatmap_lane``: Grad-CAM overlays
    computed at once, on their own threads and their own copy of the model; at most ``4 x heatmap_lane`` heatmap
    requests are in the service. ``body_timeout``: seconds for the whole upload to arrive (also the grace for
    the rest of a body after an early answer such as a 503). ``header_timeout``: seconds for a request line and
    headers to arrive. ``keep_alive``: seconds an idle connection stays open."""

    max_concurrent_decodes: int = max(1, min(4, os.cpu_count() or 1))
    max_queue: int = 32
    heatmap_lane: int = 1
    body_timeout: float = 60.0
    header_timeout: float = 10.0
    keep_alive: float = 5.0

    def __post_init__(self) -> None:
        for name in ("max_concurrent_decodes", "max_queue", "heatmap_lane", "body_timeout", "header_timeout", "keep_alive"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def heatmap_queue(self) -> int:
        return 4 * self.heatmap_lane


@dataclass(frozen=True)
class Access:
    """Who may use the service. ``api_key``: when set, every /v1/* request must carry it (``Authorization:
    Bearer KEY`` or ``X-API-Key: KEY``). ``allowed_hosts``: Host header values accepted (``*`` for any,
    ``*.example.org`` for subdomains): a web page on another site that points its own DNS name at this server
    (DNS rebinding) is refused. ``cors_origins``: origins whose pages may call the API from a browser (none by
    default)."""

    api_key: str | None = None
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS
    cors_origins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.api_key is not None and len(self.api_key) < 16:
            raise ValueError("the API key is too short: use at least 16 characters (e.g. `openssl rand -hex 32`)")
        if not self.allowed_hosts:
            raise ValueError("the Host allow-list is empty: name at least one host (or '*')")


class Rejected(Exception):
    """A bad request, answered as ``status`` with ``{"error": message}`` (and ``headers``)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


class _ClientGone(Exception):
    """The client closed its connection: its remaining work is dropped (and nobody hears the answer)."""


class ErrorBody(BaseModel):
    error: str = Field(description="what is wrong with the request")


class StageResult(BaseModel):
    model_id: str
    model_version: str = Field(description="sha256 prefix of the bundle's weights")
    task: str
    probability: float = Field(description="calibrated probability of the positive class")
    positive: str
    label: str
    threshold: float
    probabilities: dict[str, float]


class Prediction(StageResult):
    etiology: StageResult | None = Field(
        None, description="bacterial vs viral: only when the service has an etiology model and the image reads as pneumonia"
    )
    heatmap: str | None = Field(None, description="with ?heatmap=true: Grad-CAM PNG (original | heatmap | blend) as a "
                                "data URL; with ?heatmap=map: the Grad-CAM map alone, 8-bit grayscale (255 = most weight)")
    image: str | None = Field(None, description="with ?image=true: the decoded film as a grayscale PNG data URL "
                              "(what a browser cannot show itself, e.g. DICOM), at most 1024 pixels a side")
    warnings: list[str] = Field(
        default_factory=list, description="why the film may be outside the model's scope (scored, but flagged)"
    )
    study_instance_uid: str | None = Field(None, description="DICOM uploads: the film's StudyInstanceUID")
    series_instance_uid: str | None = Field(None, description="DICOM uploads: the film's SeriesInstanceUID")
    sop_instance_uid: str | None = Field(None, description="DICOM uploads: the film's SOPInstanceUID")
    age_years: float | None = Field(None, description="DICOM uploads: PatientAge (or from the birth date)")
    sex: str | None = Field(None, description="DICOM uploads: PatientSex")
    view: str | None = Field(None, description="DICOM uploads: ViewPosition (or the view code's meaning)")
    modality: str | None = Field(None, description="DICOM uploads: Modality")
    study_date: str | None = Field(None, description="DICOM uploads: StudyDate, ISO 8601")


class ModelInfo(BaseModel):
    id: str
    version: str
    architecture: str
    task: str
    classes: list[str]
    positive: str
    threshold: float
    threshold_policy: str
    temperature: float
    image_size: int
    resize_policy: str
    val_metrics: dict[str, Any]
    data_fingerprint: str
    package_version: str
    intended_use: str = Field(description="what the model is for (MODEL_CARD.md)")
    out_of_scope: list[str] = Field(description="uses the model is not for")
    external_evaluations: list[dict[str, Any]] = Field(description="evaluations on other data recorded in the card")
    threshold_records: list[dict[str, Any]] = Field(description="thresholds chosen after training, newest last")


class ServiceInfo(ModelInfo):
    etiology: ModelInfo | None
    max_upload_bytes: int


class Health(BaseModel):
    status: str = Field(description="ok, or unhealthy once a model has produced a non-finite score")
    model_id: str
    reason: str | None = Field(None, description="why the service is unhealthy")


_ERRORS = {code: {"model": ErrorBody} for code in (400, 401, 408, 413, 415, 422, 503)}


class _Batcher:
    """Runs the model once for every image waiting at that moment. On a small CPU, sixteen single-image calls
    side by side fight over the cores; one batch of sixteen does the same work several times faster, so the
    latency under load stays close to one batch's time instead of growing with the queue of separate calls."""

    def __init__(self, predictor: Predictor, max_batch: int = 32) -> None:
        self.predictor, self.max_batch = predictor, max_batch
        self.waiting: queue.SimpleQueue[tuple[np.ndarray, Future] | None] = queue.SimpleQueue()
        self.thread: threading.Thread | None = None

    async def probabilities(self, gray: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities of one decoded image, computed in the next batch."""
        if self.thread is None:  # started on first use, from the event loop's thread only
            self.thread = threading.Thread(target=self._loop, name="pneumoscan-batcher", daemon=True)
            self.thread.start()
        future: Future = Future()
        self.waiting.put((gray, future))
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        if self.thread is not None:
            self.waiting.put(None)
            self.thread.join()
            self.thread = None

    def _loop(self) -> None:
        while True:
            batch = [self.waiting.get()]
            while len(batch) < self.max_batch and not self.waiting.empty():
                batch.append(self.waiting.get())
            stop = None in batch
            # a request whose client went away was cancelled: skip it
            live = [item for item in batch if item is not None and item[1].set_running_or_notify_cancel()]
            if live:
                self._run(live)
            if stop:
                return

    def _run(self, batch: list[tuple[np.ndarray, Future]]) -> None:
        try:
            images = self.predictor.preprocess([gray for gray, _ in batch])
            try:
                probs, bad = self.predictor.probabilities(images), np.zeros(len(batch), bool)
            except NonFiniteScore:  # rare: score the batch again without the broken rows, so only they fail
                probs, bad = self.predictor.finite_probabilities(images)
        except Exception as e:  # not swallowed: every waiting request gets it (a 500); the loop goes on
            for _, future in batch:
                future.set_exception(e)
            return
        for (_, future), row, broken in zip(batch, probs, bad):
            if broken:  # that request only: the others in the batch got finite scores
                future.set_exception(NonFiniteScore(np.ones(1, bool)))
            else:
                future.set_result(row)


class _Stage:
    """One bundle: the identity it reports, its Predictor, and the batcher that feeds it."""

    def __init__(self, bundle: Path | str, backend: str) -> None:
        self.predictor = Predictor(bundle, backend=backend)
        self.batcher = _Batcher(self.predictor)
        self.card = self.predictor.card
        self.version = f"sha256:{weights_digest(bundle)[:12]}"

    def info(self) -> ModelInfo:
        c = self.card
        return ModelInfo(
            id=c.model_id, version=self.version, architecture=c.model, task=c.task, classes=c.classes,
            positive=c.positive, threshold=c.threshold, threshold_policy=c.threshold_policy, temperature=c.temperature,
            image_size=c.size, resize_policy=c.resize_policy, val_metrics=c.val_metrics,
            data_fingerprint=c.data_fingerprint, package_version=c.package_version, **card_summary(c),
        )

    async def predict(self, gray: np.ndarray) -> StageResult:
        probs = await self.batcher.probabilities(gray)
        p = float(self.predictor.positive(probs[None])[0])
        return StageResult(
            model_id=self.card.model_id, model_version=self.version, task=self.card.task, probability=p,
            positive=self.card.positive, label=self.predictor.label(p), threshold=float(self.card.threshold),
            probabilities={c: float(v) for c, v in zip(self.card.classes, probs)},
        )


class _InMemoryParser(MultiPartParser):
    # SpooledTemporaryFile(max_size=0) never rolls over: an upload is never written to disk.
    spool_max_size = 0


async def _capped(stream: AsyncIterator[bytes], max_bytes: int) -> AsyncIterator[bytes]:
    """The request body, refused as soon as it grows past the file limit plus the multipart envelope, whatever
    Content-Length claimed (or without one: chunked uploads)."""
    size = 0
    async for chunk in stream:
        size += len(chunk)
        if size > max_bytes + ENVELOPE_BYTES:
            raise Rejected(413, f"upload too large: the limit is {_mb(max_bytes)}")
        yield chunk


def _mb(n: int) -> str:
    return f"{n / 2**20:g} MB ({n:,} bytes)"


def _check_type(media: str, data: bytes, dicom: bool) -> None:
    """Known image types and .dcm names pass (decoding decides); generic binary must look like an image;
    anything else is 415."""
    if media in ACCEPTED_TYPES or dicom:
        return
    if media in ("", "application/octet-stream"):
        if readers.reader_for(data[: readers.HEAD_BYTES]) is None:  # by magic bytes alone: bytes carry no name
            raise Rejected(415, f"the file is not a {readers.formats()} image")
        return
    raise Rejected(415, f"unsupported content type {media!r}: send image/jpeg, image/png or application/dicom")


async def _read_upload(request: Request, max_bytes: int, timeout: float) -> tuple[bytes, bool]:
    """The multipart field ``file``, read in memory under the cap and checked for an image content type, and
    whether it was sent as DICOM (declared type or a .dcm name: files without the preamble have no magic).
    The whole body must arrive within ``timeout`` seconds: a client trickling bytes would otherwise hold a slot
    of the queue, and its connection, for ever."""
    content_type = request.headers.get("content-type", "")
    if parse_options_header(content_type)[0] != b"multipart/form-data":
        raise Rejected(415, "expected multipart/form-data with the image in a field named 'file'")
    try:
        async with asyncio.timeout(timeout):
            form = await _InMemoryParser(request.headers, _capped(request.stream(), max_bytes), max_files=1).parse()
    except MultiPartException as e:
        raise Rejected(400, f"malformed multipart upload: {e.message}") from None
    except TimeoutError:
        raise Rejected(408, f"the upload did not arrive within {timeout:g} s", {"Connection": "close"}) from None
    except ClientDisconnect:
        raise _ClientGone() from None
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise Rejected(400, "no file: send the image as multipart/form-data in a field named 'file'")
        data = await upload.read()
        media = (upload.content_type or "").split(";")[0].strip().lower()
        dicom = media == "application/dicom" or (upload.filename or "").lower().endswith(".dcm")
    finally:
        await form.close()
    if not data:
        raise Rejected(400, "empty file (0 bytes)")
    if len(data) > max_bytes:
        raise Rejected(413, f"file too large: {len(data):,} bytes exceeds the limit of {_mb(max_bytes)}")
    _check_type(media, data, dicom)
    return data, dicom


async def _disconnected(request: Request) -> None:
    """Returns when the client has closed its connection (after the body has been read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _decode(data: bytes, size: int, dicom: bool) -> np.ndarray:
    """Decoded the way the training cache decodes (reduced towards ``size``, whatever the format), so inputs match training."""
    try:
        return read_gray(data, target=size, dicom=dicom)
    except DecodeError as e:
        raise Rejected(422, f"cannot read the image: {e}") from None


def _gray_png(gray: np.ndarray) -> bytes:
    """An 8-bit grayscale PNG at the overlay's panel size (a full-size film shrunk, as the heatmap is)."""
    height, width = panel_shape(*gray.shape)
    picture = Image.fromarray(gray)
    if gray.shape != (height, width):
        picture = picture.resize((width, height), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    return buf.getvalue()


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _report(fmt: str, reading: dict, data: bytes, dicom: bool, png: bytes | None, model: str, version: str) -> Response:
    """The reading as a DICOM SR (plus the overlay as a Secondary Capture, multipart/related) or a FHIR Observation."""
    from pneumoscan.interop import fhir, sr

    headers = {"Cache-Control": "no-store"}
    try:
        if fmt == "fhir":
            return Response(fhir.observation_json(reading, model, version), media_type="application/fhir+json",
                            headers=headers)
        source = read_dicom_header(data, dicom)
        parts = [sr.dicom_bytes(sr.build_sr(source, reading, model, version))]
        if png is not None:
            parts.append(sr.dicom_bytes(sr.build_heatmap_sc(source, png, model, version)))
    except ValueError as e:  # a DecodeError, a source without its UIDs, a model that does not read pneumonia
        raise Rejected(422, f"cannot report this reading: {redact(str(e))}") from None
    if len(parts) == 1:
        return Response(parts[0], media_type="application/dicom", headers=headers)
    boundary = f"pneumoscan-{os.urandom(12).hex()}"
    head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    body = b"".join(head + part + b"\r\n" for part in parts)
    return Response(body + f"--{boundary}--\r\n".encode(), headers=headers,
                    media_type=f'multipart/related; type="application/dicom"; boundary={boundary}')


class _Guard:
    """ASGI middleware in front of everything: the Host allow-list, the API key for /v1/*, the security headers
    on every response, and a JSON 500 for a bug (caught here, so the framework neither re-raises it, which closed
    the connection and logged a traceback per request, nor answers in plain text). Pure ASGI, so request
    bodies stream through untouched."""

    def __init__(self, app: ASGIApp, access: Access | None) -> None:
        self.app, self.access = app, access
        self.key = access.api_key.encode() if access and access.api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        problem = self._refusal(scope, headers)
        if problem is not None:
            status, text, extra = problem
            response = JSONResponse({"error": text}, status_code=status, headers=extra)
            return await response(scope, receive, send_with_headers)
        started = False

        async def send_tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send_with_headers(message)

        try:
            await self.app(scope, receive, send_tracked)
        except Exception as e:  # a bug: one log line (no upload data in it), a JSON 500, the connection kept
            logger.error("internal error on %s %s", scope["method"], scope["path"], exc_info=e)
            if started:
                raise
            await JSONResponse({"error": "internal error"}, status_code=500)(scope, receive, send_with_headers)

    def _refusal(self, scope: Scope, headers: dict[str, str]) -> tuple[int, str, dict[str, str]] | None:
        if self.access is None:
            return None
        if not _host_allowed(headers.get("host", ""), self.access.allowed_hosts):
            return 400, "this host name is not served here (see --allowed-hosts)", {}
        if self.key is not None and scope["path"].startswith("/v1/") and scope["method"] != "OPTIONS":
            auth = headers.get("authorization", "")
            given = auth[7:].strip() if auth[:7].lower() == "bearer " else headers.get("x-api-key", "")
            if not hmac.compare_digest(given.encode("latin-1"), self.key):
                reason = "a valid API key is required" if given else "an API key is required"
                return 401, f"{reason}: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'", {"WWW-Authenticate": "Bearer"}
        return None


def _host_allowed(host_header: str, allowed: tuple[str, ...]) -> bool:
    """The Host header's name (port dropped, [IPv6] unbracketed) against the allow-list."""
    host = host_header.strip().lower()
    if host.startswith("["):
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    for pattern in allowed:
        pattern = pattern.lower().strip("[]")
        if pattern == "*" or host == pattern or (pattern.startswith("*.") and host.endswith(pattern[1:])):
            return True
    return False


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the service on this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def create_app(bundle: Path | str, etiology: Path | str | None = None, max_upload_mb: float = 20,
               backend: str = "torch", limits: Limits | None = None, access: Access | None = None) -> FastAPI:
    """The service for a pneumonia (or any) bundle, with an optional bacteria-vs-virus second stage.
    ``backend="onnx"`` predicts with ONNX Runtime (2-3x faster on CPU; Grad-CAM still uses torch), exporting the
    model at startup unless ``pneumoscan export`` already put a current model.onnx in the bundle. Concurrent
    requests are decoded in threads and classified together in batches (see :class:`_Batcher`), within
    ``limits``. ``access`` None applies no key and no Host check (tests, or an app mounted behind another
    guard); :func:`serve` always passes one. Security headers are always sent; /docs and /redoc are off (they
    load scripts from a CDN), the schema is at /openapi.json."""
    limits = limits or Limits()
    main = _Stage(bundle, backend)
    second = _Stage(etiology, backend) if etiology is not None else None
    handoff = check_stages(main.card.task, second.card.task) if second is not None else None
    max_bytes = int(max_upload_mb * 2**20)
    # Grad-CAM gets its own torch copy of the model, threads and bound: it never holds the prediction model's
    # lock, a decode thread, or more than its share of the queue.
    heat_predictor = Predictor(bundle, backend="torch")
    decoders = ThreadPoolExecutor(limits.max_concurrent_decodes, thread_name_prefix="pneumoscan-decode")
    painters = ThreadPoolExecutor(limits.heatmap_lane, thread_name_prefix="pneumoscan-heatmap")
    decode_slots, heatmap_slots = asyncio.Semaphore(limits.max_concurrent_decodes), asyncio.Semaphore(limits.heatmap_lane)
    in_flight = Counter[str]()  # requests in the service per lane (also app.state.in_flight, for tests and probes)
    faults: list[str] = []  # once a model gives a non-finite score it is broken: /healthz says so until a restart

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        for stage in (main, second):
            if stage is not None:
                stage.batcher.close()
        decoders.shutdown(cancel_futures=True)
        painters.shutdown(cancel_futures=True)

    app = FastAPI(
        title="pneumoscan",
        summary="Pediatric chest X-ray classifier (normal vs pneumonia; bacterial vs viral). Research use only.",
        version=main.card.package_version,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    if access is not None and access.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(access.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "X-API-Key"], max_age=600)
    app.add_middleware(_Guard, access=access)
    app.state.in_flight = in_flight

    @app.exception_handler(Rejected)
    async def _rejected(request: Request, exc: Rejected) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(_ClientGone)
    async def _gone(request: Request, exc: _ClientGone) -> JSONResponse:
        # 499 (nginx's "client closed request"): never delivered, but it marks the access log line
        return JSONResponse({"error": "client closed the connection"}, status_code=499)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(NonFiniteScore)
    async def _non_finite(request: Request, exc: NonFiniteScore) -> JSONResponse:
        if not faults:
            faults.append(NON_FINITE)
        return JSONResponse({"error": NON_FINITE}, status_code=500)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"error": f"invalid request: {problems}"}, status_code=422)

    def heatmap_png(image: np.ndarray, raw: bool) -> bytes:
        cam = explain_array(heat_predictor, image)
        return _gray_png(np.round(np.clip(cam, 0, 1) * 255).astype(np.uint8)) if raw else overlay_png(image, cam)

    async def in_lane(gone: asyncio.Future, slots: asyncio.Semaphore, pool: ThreadPoolExecutor,
                      fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on ``pool`` once a slot is free; a client that goes while waiting leaves the queue at
        once (so its place, and its slot in the queue bound, go to someone still there)."""
        acquire = asyncio.ensure_future(slots.acquire())
        await asyncio.wait({acquire, gone}, return_when=asyncio.FIRST_COMPLETED)
        if gone.done():
            if acquire.done() and not acquire.cancelled():
                slots.release()
            acquire.cancel()
            raise _ClientGone()
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)
        finally:
            slots.release()

    def admit(lane: str, bound: int) -> None:
        if in_flight[lane] >= bound:
            raise Rejected(503, f"the service is busy ({bound} {lane} requests in progress): retry shortly",
                           {"Retry-After": str(RETRY_AFTER_S)})
        in_flight[lane] += 1

    @app.post(
        "/v1/predict", response_model=Prediction, responses=_ERRORS,
        openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["file"],
            "properties": {"file": {"type": "string", "format": "binary", "description": "JPEG, PNG or DICOM"}},
        }}}}},
    )
    async def predict(
        request: Request, heatmap: bool | Literal["map"] = False, image: bool = False,
        format: Literal["json", "dicom-sr", "fhir"] = "json",
    ) -> Response:
        """Classify one uploaded X-ray (multipart field ``file``). ``format``: the JSON below; ``dicom-sr``, a DICOM
        Comprehensive SR (TID 1500) in the uploaded film's study -- with ``heatmap=true`` a multipart/related
        body of the SR and the overlay as a Secondary Capture; ``fhir``, a FHIR R4 Observation. 503 with
        Retry-After when the service is full. ``heatmap=map`` returns the Grad-CAM map alone (the page colours it);
        ``image=true`` the decoded film (the page shows DICOM films with it)."""
        lanes = [("prediction", limits.max_queue)] + ([("heatmap", limits.heatmap_queue)] if heatmap else [])
        admitted: list[str] = []
        try:
            for lane, bound in lanes:
                admit(lane, bound)
                admitted.append(lane)
            return await predict_admitted(request, heatmap, image, format)
        finally:
            for lane in admitted:
                in_flight[lane] -= 1

    async def predict_admitted(request: Request, heatmap: bool | str, want_image: bool, format: str) -> Response:
        data, dicom = await _read_upload(request, max_bytes, limits.body_timeout)
        gone = asyncio.ensure_future(_disconnected(request))  # the body is in: what comes next is a disconnect
        try:
            image = await in_lane(gone, decode_slots, decoders, _decode, data, main.card.spec.decode_target, dicom)
            scope = await in_lane(gone, decode_slots, decoders, describe, data, dicom, True)  # warnings, UIDs, facts
            if format == "dicom-sr" and "study_instance_uid" not in scope:
                raise Rejected(422, "format=dicom-sr needs a DICOM upload: a report is filed in the film's study")
            if gone.done():
                raise _ClientGone()
            result = await main.predict(image)
            etiology_result = None
            if second is not None and result.label == handoff:
                target = second.card.spec.decode_target
                same = target == main.card.spec.decode_target
                gray = image if same else await in_lane(gone, decode_slots, decoders, _decode, data, target, dicom)
                etiology_result = await second.predict(gray)
            raw = heatmap == "map" and format == "json"  # a report carries the overlay a reader can see
            png = await in_lane(gone, heatmap_slots, painters, heatmap_png, image, raw) if heatmap else None
            # the film for a reader's eyes: decoded again, larger than the model's copy (at most a panel's size)
            shown = await in_lane(gone, decode_slots, decoders, _decode, data, MAX_PANEL, dicom) if want_image else None
        finally:
            gone.cancel()
        if format != "json":
            reading = {**result.model_dump(), **scope}
            return await asyncio.to_thread(
                _report, format, reading, data, dicom, png, main.card.model_id, main.version
            )  # fmt: skip
        film = _data_url(_gray_png(shown)) if shown is not None else None
        body = Prediction(**result.model_dump(), etiology=etiology_result, heatmap=_data_url(png) if png else None,
                          image=film, **scope)
        return JSONResponse(body.model_dump(), headers={"Cache-Control": "no-store"})

    @app.get("/healthz", response_model=Health, response_model_exclude_none=True, responses={503: {"model": Health}})
    async def healthz() -> Health | JSONResponse:
        # async on purpose: it answers from the event loop, never waiting behind decodes for a worker thread
        if faults:
            body = Health(status="unhealthy", model_id=main.card.model_id, reason=faults[0])
            return JSONResponse(body.model_dump(), status_code=503)
        return Health(status="ok", model_id=main.card.model_id)

    @app.get("/v1/model", response_model=ServiceInfo)
    async def model_info() -> ServiceInfo:
        """The model card: task, classes, threshold, validation metrics, training data fingerprint."""
        return ServiceInfo(**main.info().model_dump(), etiology=second.info() if second else None, max_upload_bytes=max_bytes)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": CSP})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


class _GuardedH11(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline for each request head. uvicorn only times out idle keep-alive
    connections, and any byte resets that timer: a client trickling its request line and headers, or the rest of
    a body after an early answer, held its connection (and a file descriptor) for ever."""

    def __init__(self, *args: Any, header_timeout: float, body_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout, self.body_timeout = header_timeout, body_timeout
        self.head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
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
        super().connection_lost(exc)

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
            self.transport.close()


class OneLineLog(logging.Filter):
    """A failure's traceback becomes one line, and each kind of warning or error passes at most once every
    ``interval`` seconds, with a count of those held back. At the open-file limit, or under a flood of failing
    requests, the log must stay small and readable (it once grew by 88 MB in 45 s)."""

    def __init__(self, interval: float = 10.0) -> None:
        super().__init__()
        self.interval = interval
        self.last: dict[tuple[str, str], float] = {}
        self.held: Counter[tuple[str, str]] = Counter()
        self.lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        exc = record.exc_info[1] if record.exc_info else None
        key = (record.name, f"{record.msg}|{type(exc).__name__ if exc else ''}")
        now = time.monotonic()
        with self.lock:
            if now - self.last.get(key, -self.interval) < self.interval:
                self.held[key] += 1
                return False
            self.last[key] = now
            held = self.held.pop(key, 0)
        text = record.getMessage().rstrip() + (f": {type(exc).__name__}: {exc}" if exc else "")
        if held:
            text += f" ({held} more like this held back)"
        record.msg, record.args, record.exc_info, record.exc_text, record.stack_info = text, None, None, None, None
        return True


QUIET_LOGGERS = ("uvicorn.error", "asyncio", __name__)


def server_config(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, limits: Limits | None = None,
                  **kwargs: Any) -> uvicorn.Config:
    """uvicorn settings for the service: the guarded protocol (head deadline), the keep-alive limit, and one-line,
    rate-limited failure logs."""
    limits = limits or Limits()
    config = uvicorn.Config(
        app, host=host, port=port,
        http=functools.partial(_GuardedH11, header_timeout=limits.header_timeout, body_timeout=limits.body_timeout),
        timeout_keep_alive=limits.keep_alive, **kwargs,
    )  # fmt: skip
    for name in QUIET_LOGGERS:  # after Config, which configures logging
        log = logging.getLogger(name)
        if not any(isinstance(f, OneLineLog) for f in log.filters):
            log.addFilter(OneLineLog())
    return config


def serve(*args: Any, **kwargs: Any) -> None:
    """Run the service under uvicorn (arguments as :func:`build_server`) until interrupted."""
    build_server(*args, **kwargs).run()


def build_server(bundle: Path | str, etiology: Path | str | None = None, host: str = "127.0.0.1", port: int = 8000,
                 max_upload_mb: float = 20, backend: str = "torch", limits: Limits | None = None,
                 access: Access | None = None, insecure: bool = False) -> uvicorn.Server:
    """The service, ready to run. Listening on anything but loopback without an API key is refused (ValueError)
    unless ``insecure``; then it goes on with a loud warning. The address being served is added to the Host
    allow-list (but not a wildcard address: name the hosts with ``access``)."""
    access = access or Access()
    if access.api_key is None and not is_loopback(host):
        if not insecure:
            raise ValueError(f"refusing to listen on {host} without an API key: set one (--api-key-file or "
                             "PNEUMOSCAN_API_KEY), or pass --insecure if a proxy in front does the authentication")
        logger.warning("INSECURE: listening on %s with NO API key: anyone who can reach port %d can use the service",
                       host, port)
    if host not in ("0.0.0.0", "::", "") and host not in access.allowed_hosts:
        access = Access(access.api_key, (*access.allowed_hosts, host), access.cors_origins)
    _raise_open_file_limit()
    config = server_config(create_app(bundle, etiology, max_upload_mb, backend, limits, access), host, port, limits)
    return uvicorn.Server(config)


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
