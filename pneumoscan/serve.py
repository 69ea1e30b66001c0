"""HTTP service: a FastAPI app that reads an uploaded X-ray, predicts, and optionally explains with Grad-CAM.

Privacy: uploads are parsed in memory only (never spooled to disk), and nothing here logs a file name, the
image bytes or pixels. Robustness: every bad upload becomes a 4xx with ``{"error": "..."}``; the body is capped
while it is read (Content-Length is not trusted), and the decompression-bomb guard lives in :mod:`decode`.
"""

from __future__ import annotations

import base64
import hashlib
import os
import queue
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from python_multipart.multipart import parse_options_header
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from .bundle import WEIGHTS
from .decode import DecodeError, read_gray
from .explain import explain_array, overlay_png
from .predict import Predictor

STATIC = Path(__file__).parent / "static"
MAX_WORKERS = 4
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


class ServiceInfo(ModelInfo):
    etiology: ModelInfo | None
    max_upload_bytes: int


class Health(BaseModel):
    status: str
    model_id: str


_ERRORS = {code: {"model": ErrorBody} for code in (400, 413, 415, 422)}


class _Stage:
    """One bundle: the identity it reports and a Predictor per worker (a Predictor runs one call at a time)."""

    def __init__(self, bundle: Path | str, workers: int, backend: str) -> None:
        self.predictors = [Predictor(bundle, backend=backend) for _ in range(workers)]
        self.card = self.predictors[0].card
        digest = hashlib.sha256((Path(bundle) / WEIGHTS).read_bytes()).hexdigest()
        self.version = f"sha256:{digest[:12]}"

    def info(self) -> ModelInfo:
        c = self.card
        return ModelInfo(
            id=c.model_id, version=self.version, architecture=c.model, task=c.task, classes=c.classes,
            positive=c.positive, threshold=c.threshold, threshold_policy=c.threshold_policy, temperature=c.temperature,
            image_size=c.size, resize_policy=c.resize_policy, val_metrics=c.val_metrics,
            data_fingerprint=c.data_fingerprint, package_version=c.package_version,
        )

    def predict(self, worker: int, gray: np.ndarray) -> StageResult:
        out = self.predictors[worker].predict_array(gray)
        return StageResult(
            model_id=self.card.model_id, model_version=self.version, task=self.card.task,
            probability=float(out["probability"]), positive=self.card.positive, label=str(out["label"]),
            threshold=float(out["threshold"]), probabilities={k: float(v) for k, v in out["probabilities"].items()},
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


def _check_type(declared: str | None, data: bytes) -> None:
    """Known image types pass (decoding decides); generic binary must look like one; anything else is 415."""
    media = (declared or "").split(";")[0].strip().lower()
    if media in ACCEPTED_TYPES:
        return
    if media in ("", "application/octet-stream"):
        if _sniff(data) is None:
            raise Rejected(415, "the file is not a JPEG, PNG or DICOM image")
        return
    raise Rejected(415, f"unsupported content type {media!r}: send image/jpeg, image/png or application/dicom")


async def _read_upload(request: Request, max_bytes: int) -> bytes:
    """The multipart field ``file``, read in memory under the cap and checked for an image content type."""
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
        declared = upload.content_type
    finally:
        await form.close()
    if not data:
        raise Rejected(400, "empty file (0 bytes)")
    if len(data) > max_bytes:
        raise Rejected(413, f"file too large: {len(data):,} bytes exceeds the limit of {_mb(max_bytes)}")
    _check_type(declared, data)
    return data


def _workers() -> int:
    """Concurrent inferences: one per core, at most MAX_WORKERS (each holds a copy of the model)."""
    return min(MAX_WORKERS, len(os.sched_getaffinity(0)))


def _decode(data: bytes, size: int) -> np.ndarray:
    """Decoded the way the training cache decodes (JPEG draft-scaled towards ``size``), so inputs match training."""
    try:
        return read_gray(data, target=size)
    except DecodeError as e:
        raise Rejected(422, f"cannot read the image: {e}") from None


def create_app(bundle: Path | str, etiology: Path | str | None = None, max_upload_mb: float = 20,
               backend: str = "torch") -> FastAPI:
    """The service for a pneumonia (or any) bundle, with an optional bacteria-vs-virus second stage.
    ``backend="onnx"`` predicts with ONNX Runtime (2-3x faster on CPU; Grad-CAM still uses torch); each worker
    exports the model at startup unless ``pneumoscan export`` already put a current model.onnx in the bundle."""
    # Requests run side by side, each on its own copy of the model (a Predictor serialises its calls, and
    # Grad-CAM hooks the model it explains); a burst waits for a free worker instead of piling into threads.
    workers = _workers()
    main = _Stage(bundle, workers, backend)
    second = _Stage(etiology, workers, backend) if etiology is not None else None
    if second is not None and (main.card.task != "pneumonia" or second.card.task != "etiology"):
        raise ValueError(f"--etiology needs a pneumonia bundle and an etiology bundle, got {main.card.task} and {second.card.task}")
    free: queue.SimpleQueue[int] = queue.SimpleQueue()
    for worker in range(workers):
        free.put(worker)
    limiter = anyio.CapacityLimiter(workers)
    max_bytes = int(max_upload_mb * 2**20)

    app = FastAPI(
        title="pneumoscan",
        summary="Pediatric chest X-ray classifier (normal vs pneumonia; bacterial vs viral). Research use only.",
        version=main.card.package_version,
    )

    @app.exception_handler(Rejected)
    async def _rejected(request: Request, exc: Rejected) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        # still JSON for the client; the traceback goes to the server log (it holds no upload data)
        return JSONResponse({"error": "internal error"}, status_code=500)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"error": f"invalid request: {problems}"}, status_code=422)

    def run(data: bytes, heatmap: bool) -> Prediction:
        image = _decode(data, main.card.size)
        worker = free.get()  # never waits: the limiter admits at most `workers` calls
        try:
            result = main.predict(worker, image)
            etiology_result = None
            if second is not None and result.label == main.card.positive:
                gray = image if second.card.size == main.card.size else _decode(data, second.card.size)
                etiology_result = second.predict(worker, gray)
            overlay = None
            if heatmap:
                cam = explain_array(main.predictors[worker], image)
                overlay = "data:image/png;base64," + base64.b64encode(overlay_png(image, cam)).decode("ascii")
        finally:
            free.put(worker)
        return Prediction(**result.model_dump(), etiology=etiology_result, heatmap=overlay)

    @app.post(
        "/v1/predict", response_model=Prediction, responses=_ERRORS,
        openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["file"],
            "properties": {"file": {"type": "string", "format": "binary", "description": "JPEG, PNG or DICOM"}},
        }}}}},
    )
    async def predict(request: Request, heatmap: bool = False) -> JSONResponse:
        """Classify one uploaded X-ray (multipart field ``file``)."""
        data = await _read_upload(request, max_bytes)
        result = await anyio.to_thread.run_sync(run, data, heatmap, limiter=limiter)
        return JSONResponse(result.model_dump(), headers={"Cache-Control": "no-store"})

    @app.get("/healthz", response_model=Health)
    def healthz() -> Health:
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
    """Run the app under uvicorn. The cores are shared out between the concurrent inferences (one thread each
    on a small machine), which beats every request running many threads that fight each other."""
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // _workers()))
    uvicorn.run(create_app(bundle, etiology, max_upload_mb, backend), host=host, port=port)
