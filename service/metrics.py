"""Prometheus ``/metrics`` (prometheus-client), one registry per app.

- Requests: ``poisonscan_http_requests_total{method,route,status}`` and
  ``poisonscan_http_request_duration_seconds{method,route}``, counted by an
  ASGI middleware per process (label ``route`` is the route template, so ids
  do not explode the label set).
- From the database at scrape time (the same for every API process): jobs by
  state, finished-job durations, worker heartbeat ages, live workers.
- From the broker: messages waiting per queue.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from kombu.exceptions import ChannelError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from service.config import Settings
from service.guards import ASGIApp, Message, Receive, Scope, Send
from service.models import Job, JobState, WorkerHeartbeat, utcnow
from service.queue import JobQueue, job_queues

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])
DURATION_BUCKETS = (1, 5, 15, 60, 300, 900, 1800, 3600, 4 * 3600, 24 * 3600)


class HttpMetrics:
    """Request counters and latencies, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "poisonscan_http_requests",
            "HTTP requests answered.",
            ("method", "route", "status"),
            registry=registry,
        )
        self.latency = Histogram(
            "poisonscan_http_request_duration_seconds",
            "Time to answer an HTTP request (until the response started).",
            ("method", "route"),
            registry=registry,
        )


class MetricsMiddleware:
    """Count every HTTP request by method, route template and status."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def counting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(scope["method"], route, str(status)).inc()
            self.metrics.latency.labels(scope["method"], route).observe(time.perf_counter() - start)


class StateCollector(Collector):
    """Jobs, durations and workers from the database; queue depth from the broker."""

    def __init__(
        self, sessions: sessionmaker[Session], queue: JobQueue, settings: Settings
    ) -> None:
        self.sessions = sessions
        self.queue = queue
        self.settings = settings

    def collect(self) -> Iterable[Metric]:
        try:
            with self.sessions() as session:
                yield self._jobs(session)
                yield self._durations(session)
                yield from self._workers(session)
        except Exception as exc:  # a scrape must not fail because the database is down
            log.warning("metrics: database unavailable: %s", exc)
        yield self._queue_depth()

    def _jobs(self, session: Session) -> Metric:
        family = GaugeMetricFamily("poisonscan_jobs", "Jobs by state.", labels=["state"])
        counts = dict(session.execute(select(Job.state, func.count()).group_by(Job.state)).all())
        for state in JobState:
            family.add_metric([state.value], float(counts.get(state.value, 0)))
        return family

    def _durations(self, session: Session) -> Metric:
        stmt = select(Job.started_at, Job.finished_at).where(
            Job.started_at.is_not(None), Job.finished_at.is_not(None)
        )
        seconds = [_seconds(a, b) for a, b in session.execute(stmt).all() if a and b]
        buckets = [(str(b), float(sum(s <= b for s in seconds))) for b in DURATION_BUCKETS]
        buckets.append(("+Inf", float(len(seconds))))
        family = HistogramMetricFamily(
            "poisonscan_job_duration_seconds", "Run time of finished jobs (start to finish)."
        )
        family.add_metric([], buckets, sum_value=float(sum(seconds)))
        return family

    def _workers(self, session: Session) -> Iterator[Metric]:
        now = utcnow()
        ages = GaugeMetricFamily(
            "poisonscan_worker_heartbeat_age_seconds",
            "Seconds since each worker's last heartbeat.",
            labels=["worker"],
        )
        alive = 0
        for wid, beat_at in session.execute(select(WorkerHeartbeat.id, WorkerHeartbeat.beat_at)):
            age = _seconds(beat_at, now)
            alive += age < self.settings.heartbeat_timeout_s
            ages.add_metric([wid], age)
        yield ages
        yield GaugeMetricFamily(
            "poisonscan_workers_alive", "Workers with a fresh heartbeat.", value=float(alive)
        )

    def _queue_depth(self) -> Metric:
        family = GaugeMetricFamily(
            "poisonscan_queue_depth", "Messages waiting in the broker.", labels=["queue"]
        )
        for name, size in self._queue_sizes():
            family.add_metric([name], float(size))
        return family

    def _queue_sizes(self) -> list[tuple[str, int]]:
        if self.queue.in_process:
            return []
        try:
            with self.queue.client.connection_for_read() as conn:
                channel: Any = conn.default_channel
                return [(q.name, _waiting(channel, q.name)) for q in job_queues(self.settings)]
        except Exception as exc:
            log.warning("metrics: broker unavailable: %s", exc)
            return []


def _waiting(channel: Any, name: str) -> int:
    """Messages in queue ``name``; a queue nothing was ever sent to holds none."""
    try:
        return int(channel.queue_declare(queue=name, passive=True).message_count)
    except ChannelError:
        return 0


def _seconds(start: datetime, end: datetime) -> float:
    return max(0.0, (end - start).total_seconds())


def install(app: FastAPI) -> None:
    """``/metrics`` and the request middleware, on a registry of this app's own."""
    registry = CollectorRegistry()
    app.state.metrics_registry = registry
    app.add_middleware(MetricsMiddleware, metrics=HttpMetrics(registry))
    registry.register(StateCollector(app.state.sessionmaker, app.state.queue, app.state.settings))
    app.include_router(router)


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    """Prometheus text exposition."""
    registry: CollectorRegistry = request.app.state.metrics_registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
