"""The FastAPI app: its routes (/v1/predict, /v1/model, /healthz, the page), the request lanes and their bounds,
and the error handlers."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware

from pneumoscan.data.scope import describe
from pneumoscan.inference.explain import MAX_PANEL, explain_array, overlay_png
from pneumoscan.inference.predict import NON_FINITE, NonFiniteScore, Predictor, check_stages

from .batching import Stage
from .formats import ERRORS, Health, Prediction, ServiceInfo, check_options, data_url, gray_png, report
from .guard import Access, Guard
from .limits import RETRY_AFTER_S, ClientGone, Limits, Rejected
from .uploads import decode_upload, disconnected, read_upload

T = TypeVar("T")

STATIC = Path(__file__).parent / "static"
# The page loads nothing from other origins; the policy makes that a guarantee rather than a habit.
CSP = (
    "default-src 'self'; img-src 'self' data: blob:; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def create_app(bundle: Path | str, etiology: Path | str | None = None, max_upload_mb: float = 20,
               backend: str = "torch", limits: Limits | None = None, access: Access | None = None) -> FastAPI:
    """The service for a pneumonia (or any) bundle, with an optional bacteria-vs-virus second stage.
    ``backend="onnx"`` predicts with ONNX Runtime (2-3x faster on CPU; Grad-CAM still uses torch), exporting the
    model at startup unless ``pneumoscan export`` already put a current model.onnx in the bundle. Concurrent
    requests are decoded in threads and classified together in batches (see :class:`.batching.Batcher`), within
    ``limits``. ``access`` None applies no key and no Host check (tests, or an app mounted behind another
    guard); :func:`.server.serve` always passes one. Security headers are always sent; /docs and /redoc are off (they
    load scripts from a CDN), the schema is at /openapi.json."""
    limits = limits or Limits()
    main = Stage(bundle, backend)
    second = Stage(etiology, backend) if etiology is not None else None
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
    app.add_middleware(Guard, access=access)
    app.state.in_flight = in_flight

    @app.exception_handler(Rejected)
    async def _rejected(request: Request, exc: Rejected) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(ClientGone)
    async def _gone(request: Request, exc: ClientGone) -> JSONResponse:
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
        return gray_png(np.round(np.clip(cam, 0, 1) * 255).astype(np.uint8)) if raw else overlay_png(image, cam)

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
            raise ClientGone()
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
        "/v1/predict", response_model=Prediction, responses=ERRORS,
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
        ``image=true`` the decoded film (the page shows DICOM films with it); both only with the JSON answer
        (422 otherwise)."""
        check_options(format, heatmap, image)
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
        data, dicom = await read_upload(request, max_bytes, limits.body_timeout)
        gone = asyncio.ensure_future(disconnected(request))  # the body is in: what comes next is a disconnect
        try:
            image = await in_lane(gone, decode_slots, decoders, decode_upload, data, main.card.spec.decode_target, dicom)
            scope = await in_lane(gone, decode_slots, decoders, describe, data, dicom, True)  # warnings, UIDs, facts
            if format == "dicom-sr" and "study_instance_uid" not in scope:
                raise Rejected(422, "format=dicom-sr needs a DICOM upload: a report is filed in the film's study")
            if gone.done():
                raise ClientGone()
            result = await main.predict(image)
            etiology_result = None
            if second is not None and result.label == handoff:
                target = second.card.spec.decode_target
                same = target == main.card.spec.decode_target
                gray = image if same else await in_lane(gone, decode_slots, decoders, decode_upload, data, target, dicom)
                etiology_result = await second.predict(gray)
            png = await in_lane(gone, heatmap_slots, painters, heatmap_png, image, heatmap == "map") if heatmap else None
            # the film for a reader's eyes: decoded again, larger than the model's copy (at most a panel's size)
            shown = await in_lane(gone, decode_slots, decoders, decode_upload, data, MAX_PANEL, dicom) if want_image else None
        finally:
            gone.cancel()
        if format != "json":
            reading = {**result.model_dump(), **scope}
            return await asyncio.to_thread(
                report, format, reading, data, dicom, png, main.card.model_id, main.version
            )  # fmt: skip
        film = data_url(gray_png(shown)) if shown is not None else None
        body = Prediction(**result.model_dump(), etiology=etiology_result, heatmap=data_url(png) if png else None,
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
