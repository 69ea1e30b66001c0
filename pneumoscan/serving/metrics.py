"""The service's metrics for Prometheus (``GET /metrics``, its text format, by ``prometheus_client``): requests by
endpoint and status, readings by stage, call and scope, refusals and scope warnings by kind, the model's run time,
the requests in the service against their bounds, the lingering closes of connections answered early, the models
served, and requests and readings by the named key they carried.

Every label takes its values from a small fixed set (an endpoint of the app, a status, a class of the bundle, a kind
of refusal or warning, a name of the operator's key file): nothing a client or a film says (a path, a file name, a
message, a tag's value, a key not in the file) becomes a label, so the metrics hold no patient data and their series
stay few. One registry a service, in its one process
(``serve`` runs one): no multiprocess mode."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector
from prometheus_client.exposition import choose_encoder
from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pneumoscan.data.scope import NAMED_KINDS, kind_of

from .guard import key_name, route_path
from .limits import Refusal

OTHER = "other"  # the endpoint of a path the app does not serve; the kind of a warning no scope check wrote, or of one
# whose kind has no name in scope.NAMED_KINDS (a plug-in's)
KIND_NAMES = {kind: name for name, kind in NAMED_KINDS.items()}
# a model run on a CPU: a few ms for a small model's film, seconds for a batch of 32 through an ensemble
RUN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass
class Answering:
    """What the request in progress is counted under once its answer begins (:class:`CountRequests`), when the
    status the client gets is known: a layer outside the one that made the answer may replace it (the audit's 503
    in a reading's place)."""

    readings: list[Counter] = field(default_factory=list)  # its readings' series; none once withheld (unanswered)
    key: str | None = None  # the named key it carried (:meth:`ServiceMetrics.key_carried`), counted with that status


# the request in progress's, None outside a counted request
answering: ContextVar[Answering | None] = ContextVar("answering", default=None)


@dataclass(frozen=True)
class ModelRuns:
    """One stage's model-run series, fed by its :class:`~.batching.Batcher`: each batch's seconds, and its runs
    that raised (each request in such a batch answered 500)."""

    seconds: Histogram
    errors: Counter


def unanswered() -> None:
    """The readings of the request in progress are not answered (their answer withheld): none is counted."""
    if (pending := answering.get()) is not None:
        pending.readings.clear()


def warning_kind(warning: str) -> tuple[str, bool]:
    """A scope warning's kind, by its name in :data:`~pneumoscan.data.scope.NAMED_KINDS` (a kind no name was given
    yet, or a warning no scope check wrote, is :data:`OTHER`), and whether it puts the film out of scope: the warning
    without its words, which may quote a value of the film's header."""
    kind = kind_of(warning)
    return (KIND_NAMES.get(kind, OTHER), kind.out_of_scope) if kind is not None else (OTHER, False)


class ServiceMetrics:
    """The series of one service, in a registry of its own (apps made side by side, as tests make them, count
    apart), with the process's memory, CPU time and open files (``process_*``)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        r = self.registry
        self.requests = Counter("pneumoscan_http_requests", "HTTP requests answered, by endpoint (a path the app "
                                "serves, else other) and status", ["endpoint", "status"], registry=r)
        self.readings = Counter("pneumoscan_readings", "readings answered, by stage (its task), the model's call, "
                                "whether the film was in the model's scope, and whether the probability was near the "
                                "threshold (unknown: the model records no threshold interval)",
                                ["task", "call", "in_scope", "near_threshold"], registry=r)
        self.refusals = Counter("pneumoscan_refusals", "requests refused, by reason (the key's and the Host "
                                "check's refusals, and paths not served, included)", ["reason"], registry=r)
        for reason in get_args(Refusal):  # each series from 0, so that a rate sees the first refusal of its kind
            self.refusals.labels(reason)
        # by the key file's names (and UNKNOWN_KEY, NO_KEY) alone, so IT tells clients apart: a few series a client
        self.key_requests = Counter("pneumoscan_key_requests", "requests that needed one of the key file's named keys, "
                                    "by the key they carried (its name; (unknown): a key not in the file; (none): no "
                                    "key) and status (401: refused; 429: past --rate-limit)", ["key", "status"],
                                    registry=r)
        self.key_readings = Counter("pneumoscan_key_readings", "readings answered to a request let in with a named "
                                    "key, by its name and stage", ["key", "task"], registry=r)
        self.warnings = Counter("pneumoscan_scope_warnings", "scope warnings given with readings, by stage, kind "
                                "(other: a warning no scope check wrote) and whether it puts the film out of scope",
                                ["task", "kind", "out_of_scope"], registry=r)
        self.run_seconds = Histogram("pneumoscan_model_run_seconds", "seconds of each run of a model over a batch of "
                                     "films, by stage", ["task"], buckets=RUN_BUCKETS, registry=r)
        self.run_errors = Counter("pneumoscan_model_run_errors", "runs of a model that raised, by stage (each "
                                  "request of the batch answered 500)", ["task"], registry=r)
        self.in_service = Gauge("pneumoscan_requests_in_service", "prediction requests in the service (reading, "
                                "decoding, waiting, scored), by lane", ["lane"], registry=r)
        self.in_service_limit = Gauge("pneumoscan_requests_in_service_limit", "the most requests a lane takes "
                                      "(--max-queue; 4 x --heatmap-lane); past it a request gets 503", ["lane"],
                                      registry=r)
        self.waiting = Gauge("pneumoscan_films_waiting_for_model", "films decoded and waiting for the next run of "
                             "the model, by stage", ["task"], registry=r)
        self.early_closes = Counter("pneumoscan_early_answer_closes", "connections that end with an answer given "
                                    "before their upload had all arrived, by how they were closed: lingering (the "
                                    "rest dropped until the client closes, at most --body-timeout), at_once (the "
                                    "bound of lingering closes reached, no file descriptor for one, or the client "
                                    "gone)", ["close"], registry=r)
        for close in ("lingering", "at_once"):
            self.early_closes.labels(close)
        self.lingering = Gauge("pneumoscan_lingering_closes", "connections in a lingering close now, each holding a "
                               "file descriptor", registry=r)
        self.lingering_limit = Gauge("pneumoscan_lingering_closes_limit", "the most connections in a lingering close "
                                     "at once; past it one closes at once", registry=r)
        self.model = Info("pneumoscan_model", "the models served, by stage: id and version as each reading names "
                          "them, and the backend", ["task"], registry=r)

    def stage(self, task: str, identity: Mapping[str, str], backend: str, waiting: Callable[[], int]) -> ModelRuns:
        """A stage's model, its queue of films (``waiting``) read at each scrape, and the series its runs feed."""
        self.model.labels(task).info({**identity, "backend": backend})
        self.waiting.labels(task).set_function(waiting)
        return ModelRuns(self.run_seconds.labels(task), self.run_errors.labels(task))

    def lanes(self, in_flight: Mapping[str, int], bounds: Mapping[str, int]) -> None:
        """The requests in each lane (``in_flight``, read at each scrape) and its bound."""
        for lane, bound in bounds.items():
            self.in_service.labels(lane).set_function(lambda lane=lane: in_flight[lane])
            self.in_service_limit.labels(lane).set(bound)

    def reading(self, task: str, call: str, near_threshold: bool | None, in_scope: bool,
                warnings: Sequence[str]) -> None:
        """One stage's reading, with its warnings by kind, counted when its answer begins (:data:`answering`)."""
        near = "unknown" if near_threshold is None else str(near_threshold).lower()
        series = [self.readings.labels(task, call, str(in_scope).lower(), near)]
        if (name := key_name.get()) is not None:  # the request's own (the guard's): a named key's
            series.append(self.key_readings.labels(name, task))
        for warning in warnings:
            name, out = warning_kind(warning)
            series.append(self.warnings.labels(task, name, str(out).lower()))
        if (pending := answering.get()) is not None:  # the service answers inside CountRequests alone
            pending.readings.extend(series)

    def refused(self, reason: Refusal) -> None:
        self.refusals.labels(reason).inc()

    def key_carried(self, key: str) -> None:
        """The request in progress needed a named key and carried ``key`` (:meth:`.guard.Guard._refusal`): counted
        when its answer begins, with the status the client gets (:class:`Answering`), never the one a layer inside
        gave a reading that the audit then withheld."""
        if (pending := answering.get()) is not None:
            pending.key = key

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """Every series, and its content type, in the format the scrape's ``accept`` header asks for, as
        ``prometheus_client`` chooses it: Prometheus's text format 0.0.4 by default, OpenMetrics when asked."""
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type


class CountRequests:
    """ASGI middleware outside every other: each answer counted by endpoint and status, the guard's refusals (401,
    a Host not served) and CORS preflights too, and, as it begins, the readings it gives and the named key the
    request carried, under the status the client gets (:data:`answering`). The endpoint is the path the app routes
    on if it serves it (a mount, such as /static, by its prefix), else :data:`OTHER`: a path is what a client
    chooses, and may hold a patient's number."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app, self.metrics = app, metrics
        self.paths: frozenset[str] | None = None  # the app's paths and mounts, read from its routes when first asked
        self.mounts: tuple[str, ...] = ()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        endpoint = self._endpoint(scope)
        pending = Answering()

        async def counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                status = str(message["status"])
                self.metrics.requests.labels(endpoint, status).inc()
                if pending.key is not None:
                    self.metrics.key_requests.labels(pending.key, status).inc()
                for counter in pending.readings:
                    counter.inc()
                pending.readings.clear()
            await send(message)

        token = answering.set(pending)
        try:
            await self.app(scope, receive, counted)
        finally:
            answering.reset(token)

    def _endpoint(self, scope: Scope) -> str:
        if self.paths is None:  # all added by the first request (create_app adds the routes after this middleware)
            routes = scope["app"].routes
            self.paths = frozenset(r.path for r in routes if not isinstance(r, Mount))
            self.mounts = tuple(r.path for r in routes if isinstance(r, Mount))
        path = route_path(scope)
        if path in self.paths:
            return path
        return next((mount for mount in self.mounts if path.startswith(mount + "/")), OTHER)
