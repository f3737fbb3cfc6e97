"""The dashboard (``/ui``), sample images and HTML reports: pages over the service layer."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from service.storage import LocalStorage
from service.web import login, pages, reports, samples
from service.web.data import DatasetCache
from service.web.errors import install_html_errors
from service.web.views import ScoreCache

STATIC_DIR = Path(__file__).parent / "static"
REFRESH_MS = 2000


def install(app: FastAPI) -> None:
    """Add the web routers to ``app`` (after :func:`service.errors.install_problem_handlers`)."""
    storage: LocalStorage = app.state.storage
    app.state.dataset_cache = DatasetCache(storage)
    app.state.score_cache = ScoreCache()
    app.state.ui_refresh_ms = REFRESH_MS  # how often live page parts poll
    app.include_router(samples.router)
    app.include_router(login.router)
    app.include_router(pages.router)
    app.include_router(reports.router)
    app.mount("/ui/static", StaticFiles(directory=STATIC_DIR), name="ui-static")
    install_html_errors(app)
