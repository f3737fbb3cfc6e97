"""``poisonscan report``: write a job's self-contained HTML report to a file.

Locally (default) it reads the configured database and storage
(``POISONSCAN_*``, embedded defaults otherwise) and renders the report with
:mod:`service.web.report`; with ``api_url`` it downloads the same report from
a running service.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from service.config import Settings
from service.db import get_sessionmaker, session_scope
from service.storage import LocalStorage
from service.web.data import DatasetCache
from service.web.report import render_report


def local_report(job_id: str, settings: Settings | None = None) -> str:
    """Render the report from this machine's database and storage."""
    settings = settings or Settings()
    factory = get_sessionmaker(settings.database_url)
    cache = DatasetCache(LocalStorage(settings.storage_root, settings.max_upload_bytes))
    with session_scope(factory) as session:
        return render_report(session, factory, cache, job_id)


def remote_report(job_id: str, api_url: str, timeout_s: float = 120.0) -> str:
    """Download the report from a running service; raises ``ValueError`` on an error status."""
    url = f"{api_url.rstrip('/')}/jobs/{job_id}/report.html"
    resp = httpx.get(url, timeout=timeout_s)
    if resp.status_code != 200:
        raise ValueError(f"{url} answered {resp.status_code}")
    return resp.text


def write_report(job_id: str, out: Path | None = None, api_url: str | None = None) -> Path:
    """Write the report to ``out`` (default ``<job_id>-report.html``); returns the path."""
    html = remote_report(job_id, api_url) if api_url else local_report(job_id)
    path = out or Path(f"{job_id}-report.html")
    path.write_text(html, encoding="utf-8")
    return path
