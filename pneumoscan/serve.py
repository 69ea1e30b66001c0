"""HTTP service: a FastAPI app that reads an uploaded X-ray, predicts, and optionally explains with Grad-CAM.

Privacy: uploads are parsed in memory only (never spooled to disk), and nothing here logs a file name, the
image bytes or pixels. Robustness: every bad upload becomes a 4xx with ``{"error": "..."}``; the body is capped
while it is read (Content-Length is not trusted), and the decompression-bomb guard lives in :mod:`decode`.
"""

from __future__ import annotations

import asyncio
import base64
import os
import queue
import threading
from collections.abc import AsyncIterator
from concurrent.futures import Future
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import anyio
import numpy as np
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from python_multipart.multipart import parse_options_header
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from .decode import DecodeError, read_dicom_header, read_gray, redact
from .explain import explain_array, overlay_png
from .export import weights_digest
from .model_card import card_summary
from .predict import NON_FINITE, NonFiniteScore, Predictor, check_stages
from .scope import describe

STATIC = Path(__file__).parent / "static"
ACCEPTED_TYPES = ("image/jpeg", "image/png", "application/dicom")
# Room for the multipart envelope (boundaries, part headers) on top of the file itself.
ENVELOPE_BYTES = 64 * 1024
# The page loads nothing from other origins; the policy makes that a guarantee rather than a habit.
CSP = (
    "default-src 'self'; img-src 'self' data: blob:; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


class Rejected(Exception):
    """A bad request, answered as ``status`` with ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


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
    heatmap: str | None = Field(None, description="with ?heatmap=true: Grad-CAM PNG (original | heatmap | blend) as a data URL")
    warnings: list[str] = Field(
        default_factory=list, description="why the film may be outside the model's scope (scored, but flagged)"
    )
    study_instance_uid: str | None = Field(None, description="DICOM uploads: the film's StudyInstanceUID")
    series_instance_uid: str | None = Field(None, description="DICOM uploads: the film's SeriesInstanceUID")
    sop_instance_uid: str | None = Field(None, description="DICOM uploads: the film's SOPInstanceUID")


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


_ERRORS = {code: {"model": ErrorBody} for code in (400, 413, 415, 422)}


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


def _sniff(data: bytes) -> str | None:
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data[128:132] == b"DICM":
        return "application/dicom"
    return None


def _check_type(media: str, data: bytes, dicom: bool) -> None:
    """Known image types and .dcm names pass (decoding decides); generic binary must look like an image;
    anything else is 415."""
    if media in ACCEPTED_TYPES or dicom:
        return
    if media in ("", "application/octet-stream"):
        if _sniff(data) is None:
            raise Rejected(415, "the file is not a JPEG, PNG or DICOM image")
        return
    raise Rejected(415, f"unsupported content type {media!r}: send image/jpeg, image/png or application/dicom")


async def _read_upload(request: Request, max_bytes: int) -> tuple[bytes, bool]:
    """The multipart field ``file``, read in memory under the cap and checked for an image content type, and
    whether it was sent as DICOM (declared type or a .dcm name: files without the preamble have no magic)."""
    content_type = request.headers.get("content-type", "")
    if parse_options_header(content_type)[0] != b"multipart/form-data":
        raise Rejected(415, "expected multipart/form-data with the image in a field named 'file'")
    try:
        form = await _InMemoryParser(request.headers, _capped(request.stream(), max_bytes), max_files=1).parse()
    except MultiPartException as e:
        raise Rejected(400, f"malformed multipart upload: {e.message}") from None
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


def _decode(data: bytes, size: int, dicom: bool) -> np.ndarray:
    """Decoded the way the training cache decodes (reduced towards ``size``, whatever the format), so inputs match training."""
    try:
        return read_gray(data, target=size, dicom=dicom)
    except DecodeError as e:
        raise Rejected(422, f"cannot read the image: {e}") from None


def _report(fmt: str, reading: dict, data: bytes, dicom: bool, png: bytes | None, model: str, version: str) -> Response:
    """The reading as a DICOM SR (plus the overlay as a Secondary Capture, multipart/related) or a FHIR Observation."""
    from .interop import fhir, sr

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


def create_app(bundle: Path | str, etiology: Path | str | None = None, max_upload_mb: float = 20,
               backend: str = "torch") -> FastAPI:
    """The service for a pneumonia (or any) bundle, with an optional bacteria-vs-virus second stage.
    ``backend="onnx"`` predicts with ONNX Runtime (2-3x faster on CPU; Grad-CAM still uses torch), exporting the
    model at startup unless ``pneumoscan export`` already put a current model.onnx in the bundle. Concurrent
    requests are decoded in threads and classified together in batches (see :class:`_Batcher`)."""
    main = _Stage(bundle, backend)
    second = _Stage(etiology, backend) if etiology is not None else None
    if second is not None:
        check_stages(main.card.task, second.card.task)
    max_bytes = int(max_upload_mb * 2**20)
    faults: list[str] = []  # once a model gives a non-finite score it is broken: /healthz says so until a restart

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        for stage in (main, second):
            if stage is not None:
                stage.batcher.close()

    app = FastAPI(
        title="pneumoscan",
        summary="Pediatric chest X-ray classifier (normal vs pneumonia; bacterial vs viral). Research use only.",
        version=main.card.package_version,
        lifespan=lifespan,
    )

    @app.exception_handler(Rejected)
    async def _rejected(request: Request, exc: Rejected) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(NonFiniteScore)
    async def _non_finite(request: Request, exc: NonFiniteScore) -> JSONResponse:
        if not faults:
            faults.append(NON_FINITE)
        return JSONResponse({"error": NON_FINITE}, status_code=500)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        # still JSON for the client; the traceback goes to the server log (it holds no upload data)
        return JSONResponse({"error": "internal error"}, status_code=500)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"error": f"invalid request: {problems}"}, status_code=422)

    def heatmap_png(image: np.ndarray) -> bytes:
        return overlay_png(image, explain_array(main.predictor, image))  # torch, one at a time (the Predictor's lock)

    @app.post(
        "/v1/predict", response_model=Prediction, responses=_ERRORS,
        openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["file"],
            "properties": {"file": {"type": "string", "format": "binary", "description": "JPEG, PNG or DICOM"}},
        }}}}},
    )
    async def predict(
        request: Request, heatmap: bool = False, format: Literal["json", "dicom-sr", "fhir"] = "json"
    ) -> Response:
        """Classify one uploaded X-ray (multipart field ``file``). ``format``: the JSON below; ``dicom-sr``, a DICOM
        Comprehensive SR (TID 1500) in the uploaded film's study -- with ``heatmap=true`` a multipart/related
        body of the SR and the overlay as a Secondary Capture; ``fhir``, a FHIR R4 Observation."""
        data, dicom = await _read_upload(request, max_bytes)
        image = await anyio.to_thread.run_sync(_decode, data, main.card.spec.decode_target, dicom)
        scope = await anyio.to_thread.run_sync(describe, data, dicom)  # warnings and DICOM UIDs
        if format == "dicom-sr" and "study_instance_uid" not in scope:
            raise Rejected(422, "format=dicom-sr needs a DICOM upload: a report is filed in the film's study")
        result = await main.predict(image)
        etiology_result = None
        if second is not None and result.label == main.card.positive:
            target = second.card.spec.decode_target
            same = target == main.card.spec.decode_target
            gray = image if same else await anyio.to_thread.run_sync(_decode, data, target, dicom)
            etiology_result = await second.predict(gray)
        png = await anyio.to_thread.run_sync(heatmap_png, image) if heatmap else None
        if format != "json":
            reading = {**result.model_dump(), **scope}
            return await anyio.to_thread.run_sync(
                _report, format, reading, data, dicom, png, main.card.model_id, main.version
            )  # fmt: skip
        overlay = "data:image/png;base64," + base64.b64encode(png).decode("ascii") if png else None
        body = Prediction(**result.model_dump(), etiology=etiology_result, heatmap=overlay, **scope)
        return JSONResponse(body.model_dump(), headers={"Cache-Control": "no-store"})

    @app.get("/healthz", response_model=Health, response_model_exclude_none=True, responses={503: {"model": Health}})
    def healthz() -> Health | JSONResponse:
        if faults:
            body = Health(status="unhealthy", model_id=main.card.model_id, reason=faults[0])
            return JSONResponse(body.model_dump(), status_code=503)
        return Health(status="ok", model_id=main.card.model_id)

    @app.get("/v1/model", response_model=ServiceInfo)
    def model_info() -> ServiceInfo:
        """The model card: task, classes, threshold, validation metrics, training data fingerprint."""
        return ServiceInfo(**main.info().model_dump(), etiology=second.info() if second else None, max_upload_bytes=max_bytes)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": CSP})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def serve(bundle: Path | str, etiology: Path | str | None = None, host: str = "127.0.0.1", port: int = 8000,
          max_upload_mb: float = 20, backend: str = "torch") -> None:
    """Run the app under uvicorn."""
    uvicorn.run(create_app(bundle, etiology, max_upload_mb, backend), host=host, port=port)
