"""The app factory: ``uvicorn --factory service.main:create_app``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response

from detection.version import code_version
from service.api import datasets, health, jobs, methods, scores
from service.api.docs import install_docs
from service.config import Settings, get_settings
from service.db import get_sessionmaker
from service.errors import install_problem_handlers, problem
from service.queue import Enqueue, JobQueue
from service.storage import LocalStorage
from service.web import install as install_web

# Multipart framing around the file; a larger Content-Length cannot fit the limit.
UPLOAD_OVERHEAD = 64 * 1024


def create_app(settings: Settings | None = None, enqueue: Enqueue | None = None) -> FastAPI:
    """Build the API. ``enqueue`` replaces the Celery client (e.g. an in-process runner)."""
    settings = settings or get_settings()
    app = FastAPI(
        title="poisonscan",
        version=code_version(),
        docs_url=None,
        redoc_url=None,
        generate_unique_id_function=lambda route: route.name,  # operationId = function name
    )
    app.state.settings = settings
    app.state.sessionmaker = get_sessionmaker(settings.database_url)
    app.state.storage = LocalStorage(settings.storage_root, settings.max_upload_bytes)
    app.state.queue = JobQueue(settings, enqueue)
    install_problem_handlers(app)
    app.middleware("http")(_upload_size_guard(settings.max_upload_bytes + UPLOAD_OVERHEAD))
    for module in (datasets, jobs, scores, methods, health):
        app.include_router(module.router)
    install_docs(app, settings)
    install_web(app)
    return app


CallNext = Callable[[Request], Awaitable[Response]]


def _upload_size_guard(limit: int) -> Callable[[Request, CallNext], Awaitable[Response]]:
    """Refuse a POST whose declared size cannot fit the upload limit, before parsing it."""

    async def guard(request: Request, call_next: CallNext) -> Response:
        length = request.headers.get("content-length", "")
        if request.method == "POST" and length.isdigit() and int(length) > limit:
            return problem(413, f"request body exceeds {limit} bytes", instance=request.url.path)
        return await call_next(request)

    return guard
