"""What the service does for one routed request: reading its upload, the stages (pneumonia, then optionally
etiology, joined by the rules ``predict`` follows: :class:`~pneumoscan.inference.predict.Stages`), the lanes that
bound the work (decodes, Grad-CAM, requests in the service), the answer in its format, and the fault that marks a
broken model. The routes, middleware and error handlers are in :mod:`.app`."""

from __future__ import annotations

import asyncio
import logging
import math
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse, Response

from pneumoscan.core.digests import bytes_sha256, json_sha256
from pneumoscan.core.figures import png_data_url
from pneumoscan.core.logs import raised_at, redact
from pneumoscan.data import readers
from pneumoscan.evaluation.model_card import say_stale_model_cards
from pneumoscan.inference.explain import (INT8_HEATMAPS, MAX_PANEL, NoSpatialMap, explain_array, film_overlay,
                                         map_png, panel_png)
from pneumoscan.inference.predict import (NO_WX_MEMORY, NON_FINITE, Predictor, Stages, check_built_from, prove_runs,
                                          stage_scope, wx_memory_refused)
from pneumoscan.models.card import ENSEMBLE, BundleCard
from pneumoscan.models import on_disk
from pneumoscan.models.on_disk import BundleOnDisk, BundleState

from .audit import note, reading_fields
from .batching import Stage
from .formats import Health, Prediction, SecondStageResult, ServiceInfo, StageResult, report
from .guard import key_name
from .limits import RETRY_AFTER_S, ClientGone, Limits, PerClient, Rejected
from .metrics import ServiceMetrics
from .uploads import decode_described, decode_upload, disconnected, read_upload

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

T = TypeVar("T")
log = logging.getLogger(__name__)

# Why heatmaps stopped: the torch model Grad-CAM needs is built from the bundle's files when the first heatmap is
# asked for, and those files no longer hold the weights the service checked and scores with, or that model cannot be
# built from them at all (HEATMAPS_UNBUILT, with the reason). Said without paths or apostrophes, as every refusal.
HEATMAPS_LOST = ("heatmaps unavailable: the weights of the bundle on disk are no longer those this service started "
                 "with (damaged or replaced since), so a heatmap would not explain its readings; restart the service")
HEATMAPS_UNBUILT = ("heatmaps unavailable until a restart: the torch model Grad-CAM needs cannot be built from the "
                    "bundle")


# Why /healthz says degraded when a bundle's files changed on disk after the start. Said without paths (the probe
# needs no key); the log names the file and what is wrong with it.
BUNDLE_DAMAGED = ("a bundle's files on disk are damaged or missing since this service started: its readings still "
                  "come from the model checked then, but a restart would be refused; restore the bundle")
BUNDLE_REPLACED = ("a bundle on disk was replaced since this service started: its readings still come from the model "
                   "it started with; restart it to serve the new one")
# Why /healthz says unhealthy when a bundle's folder has not answered within BUNDLE_WAIT_S (a network drive that
# hangs): the readings need no file, but a restart would wait on the folder too. Said without paths, as BUNDLE_DAMAGED.
BUNDLE_SILENT = ("a bundle's folder did not answer within {:g} s (a network drive that hangs?): readings go on from "
                 "the model loaded at start-up, but a restart would wait on the folder too; check the drive")
# Why /healthz says degraded while a bundle's files, whose stat answered with a change, are still being read after
# BUNDLE_WAIT_S (each one hashed: a large or ensemble bundle, a slow drive): the folder answers, what changed is not
# known yet, and the readings come from the model loaded at start-up
BUNDLE_READING = ("a bundle's files on disk changed since this service started and are still being read after {:g} s "
                  "(a large bundle, or a slow drive): its readings come from the model checked then; what changed is "
                  "said once they are read")
# Why /healthz says degraded while the check of a bundle's files raised (a fault of its own, not of the files: the log
# has the error): whether they changed is not known, and the readings come from the model checked at start-up
BUNDLE_CHECK_FAILED = ("the check of a bundle's files on disk failed: its readings come from the model checked at "
                       "start-up, but whether the files changed is not known")
# Why /healthz says degraded while a model's last run raised (the log has the error): each request it took got a 500.
# the smallest upload limit taken: a smaller one leaves a service that answers healthy and refuses nearly every film
# (the training set's 224 px JPEGs are 5-9 KB; films as taken, DICOM or full-size JPEG, hundreds of KB and more)
MIN_UPLOAD_BYTES = 2**16
# How a service goes on without heatmaps where their Grad-CAM cannot run (said by the start's refusal), and why a
# heatmap is refused on a service started so
WITHOUT_HEATMAPS = "serve it without heatmaps (serve --no-heatmaps): readings alone, heatmaps refused with 422"
HEATMAPS_OFF = ("heatmaps are off on this service (started with --no-heatmaps: Grad-CAM runs in torch, which this "
                "host may not run): ask without heatmap")
MODEL_FAILING = ("the last run of a model failed with an internal error ({}; the log says more): predictions answer "
                 "500 until a run succeeds")
# Why a heatmap is refused (500, heatmap_failed), with the film's reading, when its Grad-CAM raised; and why /healthz
# says degraded until a heatmap succeeds (the log has the error, once a run of failures). The reading stands: its
# model ran; only the explanation of it failed (torch refused memory it needs, a bug, memory run out)
HEATMAP_FAILED = ("heatmap failed with an internal error ({}; the service log says more): the reading of this film "
                  "stands, and is given with this refusal; the heatmap may be asked for again")
# the same for format=dicom-sr, which refuses without a reading: the JSON fields are not the report asked for, and an
# SR without the overlay asked with it, answered 200, would be filed as if it were all. Asked again without heatmap,
# the film answers its SR, as any other does
HEATMAP_FAILED_SR = ("heatmap failed with an internal error ({}; the service log says more): the reading of this film "
                     "stands: send the film again without heatmap=true for the SR of its reading, without the "
                     "overlay; the heatmap may be asked for again")
HEATMAPS_FAILING = ("the last heatmap failed with an internal error ({}; the log says more): heatmaps answer 500, "
                    "a JSON answer with the reading of its film, until one succeeds")


def without_member_folders(reason: str, card: BundleCard) -> str:
    """A refusal about an ensemble's member said to a client: the member by its place alone, without the folder
    :func:`~pneumoscan.models.card.member_label` names (this machine's path, which a client is not to learn)."""
    for member in card.model_kwargs["members"] if card.model == ENSEMBLE else []:
        reason = reason.replace(f" ({member['source']})", "")
    return reason


def client_of(request: Request) -> str:
    """Who sent ``request``, for its allowance: the name of the key the guard let it in with (named keys: two
    workstations behind one proxy are two clients), else its address as uvicorn gives it, which is the
    ``X-Forwarded-For`` of a peer uvicorn trusts as a proxy (``$FORWARDED_ALLOW_IPS``, loopback by default), else the
    peer's own."""
    if (name := key_name.get()) is not None:
        return f"key {name}"  # apart from any address
    return request.client.host if request.client is not None else "unknown"  # an ASGI server that names none


class OnDisk(BundleOnDisk):
    """Whether a bundle's files on disk are still those the service checked at start (:class:`BundleOnDisk`), said
    as /healthz says it: the check's wait bounded on the event loop, whatever the folder does."""

    def __init__(self, directory: Path | str) -> None:
        self.waited = on_disk.BUNDLE_WAIT_S  # the bound of the last check's wait, as /healthz says it
        super().__init__(directory, self.reason)  # a change's warning says what /healthz says of it
        # the check in progress as the event loop awaits it, one for all its probes: a wrapper a probe, each left
        # chained to a check that hangs, would pile up for as long as the drive hangs
        self._awaited: tuple[Future[BundleState | None], asyncio.Future[BundleState | None]] | None = None
        self.last: BundleState | None = None  # the last answer, as each reading's audit line says it

    async def check(self) -> BundleState | None:
        """None while the files hold the bundle checked at start; else what changed (:attr:`BundleState.DAMAGED`,
        ...), or, once the check has not answered within :data:`~pneumoscan.models.on_disk.BUNDLE_WAIT_S` of its
        start, :attr:`BundleState.READING` while the files its stat found changed are being read,
        :attr:`BundleState.SILENT` while the stat or a read has not answered; :attr:`BundleState.FAILED` when the
        check itself raised (an error line, once a fault): :meth:`BundleOnDisk.outcome`, as ``listen`` answers.
        The files are stat'ed, and read when changed, in a thread (:meth:`BundleOnDisk.checking`): a folder on a
        network drive that hangs would otherwise stall the event loop, and every request with it; probes that come
        while a check is in progress wait for that one."""
        check = self.checking()
        self.waited = check.wait_s
        loop = asyncio.get_running_loop()
        if self._awaited is None or self._awaited[0] is not check.answer or self._awaited[1].get_loop() is not loop:
            self._awaited = (check.answer, asyncio.wrap_future(check.answer, loop=loop))
        awaited = self._awaited[1]
        answer: BundleState | None | Exception
        try:
            # shielded: a probe that gives up (or whose client goes) does not end the check the others wait for
            answer = await asyncio.wait_for(asyncio.shield(awaited), check.remaining())
        except Exception as e:  # the wait ran out (TimeoutError), or the check raised: outcome tells them apart
            answer = e
        self.last = self.outcome(check, answer)  # a fault of the check: an error line, once a fault
        return self.last

    def reason(self, state: BundleState) -> str:
        """What /healthz says of a check's answer other than None."""
        return {BundleState.DAMAGED: BUNDLE_DAMAGED, BundleState.REPLACED: BUNDLE_REPLACED,
                BundleState.READING: BUNDLE_READING.format(self.waited),
                BundleState.SILENT: BUNDLE_SILENT.format(self.waited),
                BundleState.FAILED: BUNDLE_CHECK_FAILED}[state]


def film_formats() -> list[dict[str, Any]]:
    """The registered readers' formats, types and file endings (/v1/model's film_formats): the page names and
    describes a site's own format from them, as the service takes it (:func:`pneumoscan.data.readers.media_types`)."""
    return [{"name": r.name, "formats": list(r.formats), "media_types": list(r.media_types),
             "suffixes": sorted(r.suffixes)} for r in readers.registered()]


class Service:
    """A pneumonia (or any) bundle with an optional second stage (bacteria vs virus, or a task of one's own), behind
    bounded lanes. Concurrent requests are decoded in threads and classified together in batches
    (:class:`.batching.Batcher`). Its models, lanes, readings and runs are counted in :attr:`metrics`. With
    ``rate_limit``, each client's prediction requests are also counted against that rate
    (:class:`.limits.PerClient`), in ``rate_limit_storage`` (a Redis server's URI) where it is given."""

    def __init__(self, bundle: Path | str, etiology: Path | str | None, max_upload_mb: float, backend: str,
                 limits: Limits, heatmaps: bool = True, rate_limit: str | None = None,
                 rate_limit_storage: str | None = None) -> None:
        self.limits = limits
        if rate_limit_storage is not None and rate_limit is None:
            raise ValueError("rate_limit_storage (--rate-limit-storage) is where --rate-limit's counts are kept: give "
                             "the rate too")
        # refused before the model loads (a store that does not answer too)
        self.per_client = PerClient(rate_limit, rate_limit_storage) if rate_limit is not None else None
        if not math.isfinite(max_upload_mb):  # int() of it would be an OverflowError or NaN's own ValueError
            raise ValueError(f"an upload limit of {max_upload_mb} MB is no limit: give a number of MB")
        self.max_bytes = int(max_upload_mb * 2**20)
        if self.max_bytes < MIN_UPLOAD_BYTES:  # a service that answers healthy and refuses every film
            raise ValueError(f"an upload limit of {max_upload_mb:g} MB ({self.max_bytes:,} bytes) leaves no room for a "
                             f"film: give at least {MIN_UPLOAD_BYTES / 2**20:g} MB")
        # the files as they are before the models load (seconds for ONNX or an ensemble), each /healthz's baseline:
        # a bundle replaced while they load is refused below: stamped after the load, the change went unsaid
        self.on_disk = [OnDisk(bundle), *([OnDisk(etiology)] if etiology is not None else [])]
        self.stages = Stages.load(bundle, etiology, backend)  # a pair that does not chain: refused from the cards
        self.metrics = ServiceMetrics()
        self.main = Stage(self.stages.first, self.metrics)
        self.second = Stage(self.stages.second, self.metrics) if self.stages.second is not None else None
        for said in self.stages.said_at_start():
            log.warning("%s", said)  # once, as predict says them (the page's model card says the caveats too)
        say_stale_model_cards([bundle, etiology])  # /v1/model states the card itself
        # Grad-CAM gets its own threads and bound: it never holds a decode thread or more than its share of the
        # queue. With ONNX Runtime scoring it uses the main stage's Predictor, whose torch model the first heatmap
        # builds (checked to be the weights the service started with), so a service that draws none never builds
        # one; the torch backend scores under the model's lock, so Grad-CAM gets its own torch copy. Without heatmaps
        # (``heatmaps`` False: a host where torch cannot run) neither is built, and each heatmap asked for is refused
        own_copy = backend == "torch" and heatmaps
        self.heat_predictor = Predictor(bundle, backend="torch") if own_copy else self.main.predictor
        for predictor, disk in ((self.stages.first, self.on_disk[0]), (self.stages.second, self.on_disk[-1]),
                                (self.heat_predictor, self.on_disk[0])):
            if predictor is not None:
                check_built_from(predictor, disk.card)
        self.heatmaps_off = (f"heatmap with the onnx-int8 backend: {INT8_HEATMAPS}" if backend == "onnx-int8" else
                             None if heatmaps else HEATMAPS_OFF)
        # each model proven to run here before the service answers: torch refused writable-and-executable memory
        # (MemoryDenyWriteExecute=) failed every reading, or with ONNX Runtime every heatmap, while /healthz said ok.
        # A heatmap is drawn at start only where that memory is refused: a Grad-CAM, and with ONNX Runtime torch and
        # its torch model, would add 0.3-5 s (and most of a gigabyte) to every start; the first heatmap loads them
        drawn = self.heatmaps_off is None and wx_memory_refused()
        prove_runs(self.stages, self.heat_predictor if drawn else None, without=WITHOUT_HEATMAPS)
        self.decoders = ThreadPoolExecutor(limits.max_concurrent_decodes, thread_name_prefix="pneumoscan-decode")
        self.painters = ThreadPoolExecutor(limits.heatmap_lane, thread_name_prefix="pneumoscan-heatmap")
        self.decode_slots = asyncio.Semaphore(limits.max_concurrent_decodes)
        self.heatmap_slots = asyncio.Semaphore(limits.heatmap_lane)
        self.in_flight = Counter[str]()  # requests in the service per lane (also read by tests, probes and /metrics)
        self.bounds = {"prediction": limits.max_queue, "heatmap": limits.heatmap_queue}  # the most in each lane
        self.metrics.lanes(self.in_flight, self.bounds)
        self.faults: list[str] = []  # once a model gives a non-finite score it is broken until a restart
        self.heatmap_fault: str | None = None  # once Grad-CAM's model cannot be built, until a restart
        self.heatmaps_failing: str | None = None  # the error of the last heatmap, while the last one raised
        # the cards as served, fixed for the service's life; its digest goes with each reading, so that a client
        # tells a reading of another card (a restart with other files beside the same weights and threshold)
        second = self.second.info() if self.second else None
        served = {**self.main.info().model_dump(), "etiology": second and second.model_dump(),
                  "max_upload_bytes": self.max_bytes, "film_formats": film_formats(),
                  "heatmaps": self.heatmaps_off is None}
        self.card = ServiceInfo(**served, card_digest=json_sha256(served))

    def close(self) -> None:
        for stage in (self.main, self.second):
            if stage is not None:
                stage.batcher.close()
        self.decoders.shutdown(cancel_futures=True)
        self.painters.shutdown(cancel_futures=True)

    def mark_broken(self) -> None:
        """A model gave a non-finite score: /healthz reports it from now on."""
        if not self.faults:
            self.faults.append(NON_FINITE)

    async def health(self) -> Health:
        """unhealthy (no more predictions) after a non-finite score; unhealthy too while a bundle's folder does not
        answer (:data:`BUNDLE_SILENT`: predictions go on, but a restart would hang); degraded while a model's last run
        failed (each request of that run got a 500; the next run may succeed, so the probe does not take the service
        out), when heatmaps are lost or the last one failed (readings go on), or a bundle's files on disk changed
        (:class:`OnDisk`), or changed and are still being read (:data:`BUNDLE_READING`: the folder answers), but the
        predictions still come from the model checked at start-up; degraded too while the
        rate-limit store does not answer (:meth:`.limits.PerClient.health`: every instance that shares it refuses
        predictions alike, and a probe that took them all out would end none of it)."""
        model = self.main.identity  # model_id and model_version, as each reading names them
        if self.faults:
            return Health(status="unhealthy", **model, reason=self.faults[0])
        # each bundle's folder and the rate-limit store at once
        store, checks = await asyncio.gather(self._store_health(),
                                             asyncio.gather(*[disk.check() for disk in self.on_disk]))
        if silent := [disk for disk, state in zip(self.on_disk, checks) if state is BundleState.SILENT]:
            return Health(status="unhealthy", **model, reason=silent[0].reason(BundleState.SILENT))
        failing = [MODEL_FAILING.format(s.batcher.failing) for s in (self.main, self.second) if s and s.batcher.failing]
        changes = [disk.reason(state) for disk, state in zip(self.on_disk, checks) if state is not None]
        # the files first: they say whether a restart would be refused, which the heatmaps' reason does not
        heatmaps = self.heatmap_fault or (self.heatmaps_failing and HEATMAPS_FAILING.format(self.heatmaps_failing))
        if reasons := [*changes[:1], *failing[:1], *([store] if store else []), *([heatmaps] if heatmaps else [])]:
            return Health(status="degraded", **model, reason="; ".join(reasons))
        return Health(status="ok", **model)

    async def _store_health(self) -> str | None:
        return await self.per_client.health() if self.per_client is not None else None

    def info(self) -> ServiceInfo:
        return self.card

    async def predict(self, request: Request, heatmap: bool | str, want_image: bool, format: str) -> Response:
        """The answer to one upload, in its lanes: refused at once (429) when its client has sent its allowance
        (:attr:`per_client`: each request counts, whatever its answer), at once (503) when a lane is full, and for
        good once a model has given a non-finite score (a model that is broken for one film is not trusted with the
        next); heatmaps alone for good once Grad-CAM's model could not be built from the bundle's files, and always
        where the service draws none (:attr:`heatmaps_off`). Its audit line says the last answer /healthz's check of
        the bundles' files gave (``bundle_on_disk``, as ``listen``'s lines: the first bundle's change, else the
        second's; None when the last check found none, or none has run): a reading does not wait for the files."""
        note(format=format, heatmap=heatmap,
             bundle_on_disk=next((disk.last for disk in self.on_disk if disk.last is not None), None))
        if self.per_client is not None:
            await self.per_client.admit(client_of(request))
        self._refuse_if_broken()
        if heatmap and self.heatmap_fault:
            raise Rejected(503, self.heatmap_fault, kind="heatmap_unavailable")
        if heatmap and self.heatmaps_off:  # the onnx-int8 backend, or a service started without heatmaps
            raise Rejected(422, self.heatmaps_off, kind="heatmap_unavailable")
        if format != "json" and not self.main.predictor.task.reports_pneumonia:
            # refused before the upload is read: the SR and the Observation code a pneumonia finding
            raise Rejected(422, f"format={format} reports a pneumonia reading, and the model of this service reads "
                                f"{self.main.card.task} ({' vs '.join(self.main.card.classes)}): ask for format=json",
                           kind="not_reportable")
        admitted: list[str] = []
        try:
            for lane in ("prediction", "heatmap") if heatmap else ("prediction",):
                self._admit(lane, self.bounds[lane])
                admitted.append(lane)
            return await self._predict_admitted(request, heatmap, want_image, format)
        finally:
            for lane in admitted:
                self.in_flight[lane] -= 1

    def _refuse_if_broken(self) -> None:
        """503 once a model has given a non-finite score: asked as a request comes in, and again before its answer
        leaves, since a request admitted before the fault and scored after it was answered with a reading."""
        if self.faults:
            raise Rejected(503, f"{self.faults[0]}: this service answers no more predictions; restart it with a "
                                "good bundle", kind="model_broken")

    def _admit(self, lane: str, bound: int) -> None:
        if self.in_flight[lane] >= bound:
            raise Rejected(503, f"the service is busy ({bound} {lane} request{'s' if bound != 1 else ''} in progress): "
                                "retry shortly",
                           {"Retry-After": str(RETRY_AFTER_S)})
        self.in_flight[lane] += 1

    async def _in_lane(self, gone: asyncio.Future, slots: asyncio.Semaphore, pool: ThreadPoolExecutor,
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

    def _heatmap_png(self, image: np.ndarray, shown: np.ndarray, raw: bool, label: str, warnings: list[str]) -> bytes:
        """Grad-CAM of ``image`` (the film as the model read it), drawn over ``shown`` (that film at the size the
        overlay is for), its caption saying when the reading's ``label`` is the negative class and when the film's
        ``warnings`` put it outside the model's scope; or the bare map with ``raw`` (the reading beside it says so)."""
        try:
            self.heat_predictor.model  # built by the first heatmap (ONNX backends), its weights checked on disk then
        except (OSError, ValueError) as e:
            if self.heatmap_fault is None:
                log.warning("heatmaps are off until a restart: %s", e)  # the operator's log may name the path
                self.heatmap_fault = self._heatmaps_off(e)
            raise Rejected(503, self.heatmap_fault, kind="heatmap_unavailable") from None
        try:
            if raw:
                return map_png(explain_array(self.heat_predictor, image))
            return film_overlay(self.heat_predictor, image, shown, label=label, warnings=warnings)
        except NoSpatialMap as e:  # the model's kind (no map for any film), or this film's map (NoMapOfFilm)
            raise Rejected(422, f"heatmap: {without_member_folders(str(e), self.heat_predictor.card)}",
                           kind="heatmap_unavailable") from None

    def _heatmaps_off(self, error: OSError | ValueError) -> str:
        """Why Grad-CAM's model could not be built, for the 503 and /healthz (which needs no key): the bundle changed
        on disk since the start (:class:`OnDisk`), else the reason the model cannot be built from it (model_kwargs
        the model does not take, a model not registered here), its folder said as "the bundle"."""
        if self.on_disk[0].changed() is not None:
            return HEATMAPS_LOST
        reason, folder = without_member_folders(str(error), self.heat_predictor.card), self.heat_predictor.bundle
        for form in sorted({str(folder), str(Path(folder)), str(Path(folder).resolve())}, key=len, reverse=True):
            reason = reason.removeprefix(f"{form}: ").replace(form, "the bundle")
        return f"{HEATMAPS_UNBUILT}: {reason}".replace("'", "")  # the quotes of a repr and of Python's own messages

    @staticmethod
    def _prepared(stage: Stage, image: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """The decoded film as the stage's model reads it, and why it does not look like that model's training films
        (data.appearance): one preprocessing serves the content check and the score."""
        film = stage.prepare(image)
        return film, stage.predictor.content_warnings(film[None])[0]

    async def _predict_admitted(self, request: Request, heatmap: bool | str, want_image: bool, format: str) -> Response:
        """One upload's reading, by the rules ``predict`` follows (:class:`Stages`): the same fields, warnings and
        second stage for the same film."""
        data, dicom = await read_upload(request, self.max_bytes, self.limits.body_timeout)
        # which bytes were read (hashed off the loop): the audit line's film, and the page's proof of a film where
        # the browser has none
        digest = await asyncio.to_thread(bytes_sha256, data)
        note(film_sha256=digest, film_bytes=len(data))
        identity = {"card_digest": self.card.card_digest, "film_sha256": digest}
        gone = asyncio.ensure_future(disconnected(request))  # the body is in: what comes next is a disconnect
        try:
            # the film and its warnings, UIDs and facts, from one read of it
            image, described, header = await self._decoding(gone, decode_described, data,
                                                            self.main.card.spec.decode_target, dicom)
            result, scope = await self._first_reading(gone, image, described, format)
            second_result = await self._second_reading(gone, data, dicom, image, result.label, scope)
            # the film for a reader's eyes, decoded again larger than the model's copy (at most a panel's size): on the
            # page, and under an overlay filed in a PACS, as predict draws it (the page's overlay, at the model's size,
            # stays light to send)
            under_report = bool(heatmap) and format == "dicom-sr"
            shown = (await self._decoding(gone, decode_upload, data, MAX_PANEL, dicom) if want_image or under_report
                     else None)
            png, failed = None, None
            if heatmap:
                png, failed = await self._heatmap(gone, image, shown if under_report else image, heatmap == "map",
                                                  result.label, scope["warnings"])
        finally:
            gone.cancel()
        self._refuse_if_broken()
        reading = {**result.model_dump(), **scope}
        if failed is not None:
            raise self._heatmap_refusal(failed, format, reading, result, scope, second_result, identity)
        answer = await self._answer(format, reading, header, png, shown, second_result, identity)
        self._count(result, scope, second_result)
        return answer

    async def _decoding(self, gone: asyncio.Future, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the decode lane: decodes and the preprocessing that follows them share its bound."""
        return await self._in_lane(gone, self.decode_slots, self.decoders, fn, *args)

    async def _first_reading(self, gone: asyncio.Future, image: np.ndarray, described: dict,
                             format: str) -> tuple[StageResult, dict[str, Any]]:
        """The first stage's reading of the film, with its scope (all the warnings, in_scope, the model's identity);
        a report asked of a film that has no study to file it in is refused before the model is asked."""
        film, unlike = await self._decoding(gone, self._prepared, self.main, image)
        scope = self.stages.scoped(described, unlike)  # all the warnings, in_scope, the model's identity
        if format != "json" and "study_instance_uid" not in scope:  # an SR is filed in the film's study, and an
            # Observation is linked to its study and patient
            raise Rejected(422, f"format={format} needs a DICOM upload: a report belongs to the study of the film",
                           kind="not_reportable")
        if gone.done():
            raise ClientGone()
        return await self.main.predict(film), scope

    async def _second_reading(self, gone: asyncio.Future, data: bytes, dicom: bool, image: np.ndarray, label: str,
                              scope: dict[str, Any]) -> SecondStageResult | None:
        """The second stage's reading of a film the first hands over (None otherwise), decoded again where its model
        was trained at another size, its scope from its own content check and the film's warnings."""
        if self.second is None or not self.stages.hands_over(label):
            return None
        target = self.stages.second_target
        gray = image if target is None else await self._decoding(gone, decode_upload, data, target, dicom)
        read, own = await self._decoding(gone, self._prepared, self.second, gray)
        return SecondStageResult(**(await self.second.predict(read)).model_dump(),
                                 **stage_scope(scope["warnings"], own))

    async def _heatmap(self, gone: asyncio.Future, image: np.ndarray, shown: np.ndarray | None, raw: bool, label: str,
                       warnings: list[str]) -> tuple[bytes | None, Exception | None]:
        """The heatmap's PNG (:meth:`_heatmap_png`) in its lane, or the error Grad-CAM raised: the reading stands,
        refused with it (a refusal or a client gone ends the request as they are)."""
        png, failed = None, None
        try:
            png = await self._in_lane(gone, self.heatmap_slots, self.painters, self._heatmap_png, image, shown, raw,
                                      label, warnings)
        except (Rejected, ClientGone):
            raise
        except Exception as e:  # noqa: BLE001 - the heatmap alone failed: refused below, with the reading
            failed = e
        self._heatmap_ran(failed)
        return png, failed

    def _heatmap_refusal(self, failed: Exception, format: str, reading: dict[str, Any], result: StageResult,
                         scope: dict[str, Any], second: SecondStageResult | None, identity: dict[str, str]) -> Rejected:
        """The 500 of a failed heatmap: an SR is not filed without the overlay it was asked with; a JSON answer's
        refusal carries the reading, as the JSON answer gives it, and counts it as answered."""
        if format == "dicom-sr":
            return Rejected(500, HEATMAP_FAILED_SR.format(type(failed).__name__), kind="heatmap_failed")
        self._count(result, scope, second)
        alone = Prediction(**reading, etiology=second, **identity)
        return Rejected(500, HEATMAP_FAILED.format(type(failed).__name__), kind="heatmap_failed",
                        reading=alone.model_dump())

    async def _answer(self, format: str, reading: dict[str, Any], header: Dataset | None, png: bytes | None,
                      shown: np.ndarray | None, second: SecondStageResult | None, identity: dict[str, str]) -> Response:
        """The reading in the format asked: a report (DICOM SR, FHIR) or the JSON answer with its heatmap and film."""
        if format != "json":  # a report filed apart from the service states the model's caveats (said at its start)
            card = self.main.predictor.card
            return await asyncio.to_thread(report, format, {**reading, "caveats": card.caveats}, header, png,
                                           reading["model_id"], reading["model_version"],
                                           self.main.predictor.backend)  # the backend: identity too
        film = png_data_url(panel_png(shown)) if shown is not None else None
        body = Prediction(**reading, etiology=second, heatmap=png_data_url(png) if png else None, image=film,
                          **identity)
        return JSONResponse(body.model_dump(), headers={"Cache-Control": "no-store"})

    def _count(self, result: StageResult, scope: dict[str, Any], second: SecondStageResult | None) -> None:
        """A film's readings, answered, in /metrics and the audit log."""
        self.metrics.reading(result.task, result.label, result.near_threshold, scope["in_scope"], scope["warnings"])
        readings = [reading_fields(result, scope["in_scope"], scope["warnings"])]
        if second is not None:
            self.metrics.reading(second.task, second.label, second.near_threshold, second.in_scope, second.warnings)
            readings.append(reading_fields(second, second.in_scope, second.warnings))
        note(readings=readings)

    def _heatmap_ran(self, error: Exception | None) -> None:
        """A heatmap's Grad-CAM ran (``error`` None) or raised ``error``. The first failure after a success is logged
        with its cause, once: each failure is counted in /metrics (refusals, heatmap_failed), and /healthz says
        degraded until a heatmap succeeds, which is logged too."""
        if error is None:
            if self.heatmaps_failing is not None:
                log.warning("a heatmap succeeded again: heatmaps are drawn")
            self.heatmaps_failing = None
            return
        if self.heatmaps_failing is None:
            hint = f"; {NO_WX_MEMORY}" if wx_memory_refused() else ""
            log.error("heatmaps fail: Grad-CAM raised %s at %s: %s (readings go on, each heatmap refused with its "
                      "film's reading until one succeeds; not logged again until then)%s", type(error).__name__,
                      raised_at(error), redact(str(error)), hint)
        self.heatmaps_failing = type(error).__name__
