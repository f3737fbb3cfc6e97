"""The dashboard (``/ui``), sample images and HTML reports: pages over the service layer."""

from __future__ import annotations

from fastapi import FastAPI

from service.storage import LocalStorage
from service.web import samples
from service.web.data import DatasetCache


def install(app: FastAPI) -> None:
    """Add the web routers to ``app`` (after :func:`service.errors.install_problem_handlers`)."""
    storage: LocalStorage = app.state.storage
    app.state.dataset_cache = DatasetCache(storage)
    app.include_router(samples.router)
