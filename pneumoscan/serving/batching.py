"""The batching queue in front of each model (:class:`Batcher`) and the stage that pairs a Predictor with its batcher
and the identity it reports (:class:`Stage`)."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from concurrent.futures import Future

import numpy as np

from pneumoscan.evaluation.model_card import card_summary
from pneumoscan.inference.explain import EMPTY, NEGATIVE, caption, heatmap_scale, scale_top
from pneumoscan.inference.predict import NonFiniteScore, Predictor

from .formats import ModelInfo, StageResult
from .metrics import ModelRuns, ServiceMetrics


class Batcher:
    """Runs the model once for every image waiting at that moment. On a small CPU, sixteen single-image calls
    side by side fight over the cores; one batch of sixteen does the same work several times faster, so the
    latency under load stays close to one batch's time instead of growing with the queue of separate calls. Each
    run's seconds, and each run that raised, feed ``runs`` (the service's /metrics)."""

    def __init__(self, predictor: Predictor, max_batch: int = 32, runs: ModelRuns | None = None) -> None:
        self.predictor, self.max_batch, self.runs = predictor, max_batch, runs
        self.waiting: queue.SimpleQueue[tuple[np.ndarray, Future] | None] = queue.SimpleQueue()
        self.thread: threading.Thread | None = None
        # the kind of error the model's last run raised (None once a run succeeds): /healthz says it, so that a
        # service whose model fails every run is not probed "ok" while it answers each request 500
        self.failing: str | None = None

    async def probabilities(self, film: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities of one film as the model reads it (a :meth:`Predictor.preprocess` row,
        made by the caller: the service checks the same pixels' content), computed in the next batch."""
        if self.thread is None:  # started on first use, from the event loop's thread only
            self.thread = threading.Thread(target=self._loop, name="pneumoscan-batcher", daemon=True)
            self.thread.start()
        future: Future = Future()
        self.waiting.put((film, future))
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
        started = time.perf_counter()
        try:
            images = np.stack([film for film, _ in batch])
            probs, bad = self.predictor.finite_probabilities(images)  # a broken row fails alone
        except Exception as e:  # not swallowed: every waiting request gets it (a 500); the loop goes on
            self.failing = type(e).__name__
            if self.runs is not None:
                self.runs.errors.inc()
            for _, future in batch:
                future.set_exception(e)
            return
        self.failing = None
        if self.runs is not None:
            self.runs.seconds.observe(time.perf_counter() - started)
        for (_, future), row, broken in zip(batch, probs, bad):
            if broken:  # that request only: the others in the batch got finite scores
                future.set_exception(NonFiniteScore(np.ones(1, bool)))
            else:
                future.set_result(row)


class Stage:
    """One stage of the service's reading (:class:`~pneumoscan.inference.predict.Stages`): its Predictor, the
    batcher that feeds it, and the identity it reports, each counted in ``metrics``."""

    def __init__(self, predictor: Predictor, metrics: ServiceMetrics) -> None:
        self.predictor = predictor
        self.card = predictor.card
        # taken at start: the weights the service checked and scores with, whatever the bundle on disk holds later
        self.identity = predictor.identity
        runs = metrics.stage(self.card.task, self.identity, predictor.backend, lambda: self.batcher.waiting.qsize())
        self.batcher = Batcher(predictor, runs=runs)

    def info(self) -> ModelInfo:
        c, scale = self.card, heatmap_scale(self.card)
        return ModelInfo(
            id=self.identity["model_id"], version=self.identity["model_version"], architecture=c.model, task=c.task,
            classes=c.classes, positive=c.positive, threshold=c.threshold, threshold_policy=c.threshold_policy,
            threshold_interval=c.threshold_interval, caveats=c.caveats, temperature=c.temperature,
            image_size=c.size, resize_policy=c.resize_policy, val_metrics=c.val_metrics,
            data_fingerprint=c.data_fingerprint, package_version=c.package_version,
            content_checked=self.predictor.appearance is not None, follows=list(self.predictor.task.follows),
            heatmap_scale=c.heatmap_scale,
            heatmap_caption=caption(c.positive, scale), heatmap_top=scale_top(scale),
            heatmap_top_spoken=scale_top(scale, spoken=True),
            heatmap_negative=NEGATIVE.format(label=c.classes[0], explains=c.positive),
            heatmap_empty=EMPTY.format(explains=c.positive), **card_summary(c),
        )

    def prepare(self, gray: np.ndarray) -> np.ndarray:
        """One decoded film as this stage's model reads it (the service makes it in its decode lane)."""
        return self.predictor.preprocess([gray])[0]

    async def predict(self, film: np.ndarray) -> StageResult:
        """The reading of one film as :meth:`prepare` makes it, scored in the batcher's next batch."""
        probs = await self.batcher.probabilities(film)
        return StageResult(**self.identity, task=self.card.task, positive=self.card.positive,
                           **self.predictor.reading(probs))
