"""The app factory: ``uvicorn --factory service.main:create_app``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from anyio import CapacityLimiter, to_thread
from fastapi import FastAPI

from detection.version import code_version
from service import logs, metrics
from service.api import datasets, deliveries, health, jobs, methods, scores
from service.api.docs import install_docs
from service.config import Settings, get_settings
from service.db import get_sessionmaker
from service.errors import install_problem_handlers
from service.guards import RequestGuard, install_fault_handlers
from service.limits import InflightLimit, engine_options
from service.logs import RequestIdMiddleware
from service.queue import Enqueue, JobQueue
from service.reaper import ReaperThread
from service.storage import LocalStorage
from service.timeouts import BodyTimeout
from service.web import install as install_web
from service.webhooks import WebhookDispatcher

# Multipart framing around the file; a larger Content-Length cannot fit the limit.
UPLOAD_OVERHEAD = 64 * 1024


def create_app(settings: Settings | None = None, enqueue: Enqueue | None = None) -> FastAPI:
    """Build the API. ``enqueue`` replaces the Celery client (e.g. an in-process runner)."""
    settings = settings or get_settings()
    body_limit = settings.max_upload_bytes + UPLOAD_OVERHEAD
    app = FastAPI(
        title="poisonscan",
        version=code_version(),
        docs_url=None,
        redoc_url=None,
        generate_unique_id_function=lambda route: route.name,  # operationId = function name
        lifespan=_lifespan,
    )
    app.state.settings = settings
    app.state.sessionmaker = get_sessionmaker(settings.database_url, engine_options(settings))
    app.state.storage = LocalStorage(settings.storage_root, settings.max_upload_bytes)
    app.state.queue = JobQueue(settings, enqueue)
    app.state.db_slots = CapacityLimiter(settings.api_db_concurrency)  # see get_session
    install_problem_handlers(app)
    install_fault_handlers(app)
    app.add_middleware(RequestGuard, max_body_bytes=body_limit)
    app.add_middleware(BodyTimeout, timeout_s=settings.body_timeout_s)
    app.add_middleware(InflightLimit, limit=settings.api_max_inflight)
    metrics.install(app)  # counts the 503s of the limit too
    app.add_middleware(RequestIdMiddleware)
    for module in (datasets, jobs, deliveries, scores, methods, health):
        app.include_router(module.router)
    install_docs(app, settings)
    install_web(app)
    return app


def create_served_app() -> FastAPI:
    """The factory ``poisonscan serve`` runs in each uvicorn process: JSON logs, then the app."""
    settings = get_settings()
    if settings.json_logs:
        logs.configure()
    return create_app(settings)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Run the reaper (and sweeper) and the webhook dispatcher while the app serves; size
    the thread pool to the limit."""
    settings: Settings = app.state.settings
    # Sync routes run on this pool: one thread per request in flight, plus the exempt probes.
    to_thread.current_default_thread_limiter().total_tokens = settings.api_max_inflight + 8
    threads = [
        ReaperThread(app.state.sessionmaker, settings, app.state.queue),
        WebhookDispatcher(app.state.sessionmaker, settings),
    ]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        for thread in threads:
            thread.stop()
