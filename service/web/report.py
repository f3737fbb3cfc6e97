"""One self-contained HTML report of a job: manifest, detection table, figures, suspect gallery.

Everything is inline (CSS, SVG figures, PNG thumbnails as data URIs), so the
file opens offline and references no URL. Served at ``/jobs/{id}/report.html``
and written by ``poisonscan report``.
"""

from __future__ import annotations

import base64
import os
import platform
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from detection.readers import LoadedDataset
from service import datasets, jobs
from service.auth import OPEN, Principal
from service.models import JobState
from service.web.data import DatasetCache, encode_png, is_image, require_loaded
from service.web.templating import render
from service.web.views import Thumb, job_view

STYLE = Path(__file__).parent / "static" / "ui.css"
GALLERY_SIZE = 48


def data_uri_thumbs(data: LoadedDataset) -> Thumb:
    def thumb(index: int) -> str:
        png = base64.b64encode(encode_png(data.x[index])).decode("ascii")
        return f"data:image/png;base64,{png}"

    return thumb


def _no_thumb(index: int) -> str:
    del index
    return ""


def hardware_rows(device: str | None) -> list[tuple[str, str]]:
    """What is known of the hardware: the detector's device when it recorded one, and this host."""
    worker = device or "not recorded by the detector"
    host = f"{platform.machine()} · {os.cpu_count()} CPUs · {platform.platform(terse=True)}"
    return [("detector device", worker), ("report rendered on", host)]


def render_report(
    session: Session,
    factory: sessionmaker[Session],
    cache: DatasetCache,
    job_id: str,
    principal: Principal = OPEN,
) -> str:
    """The report of job ``job_id`` as one HTML document (results once it succeeded)."""
    job = jobs.get(session, job_id, principal=principal)
    dataset = datasets.get(session, job.dataset_id)
    images = is_image(dataset) and job.state == JobState.succeeded
    thumb = data_uri_thumbs(require_loaded(cache, dataset)) if images else _no_thumb
    view = job_view(
        session, factory, cache, job_id, thumb, page_size=GALLERY_SIZE, principal=principal
    )
    return render(
        "report.html",
        v=view,
        job=view.job,
        style=STYLE.read_text(),
        hardware=hardware_rows(view.device),
        generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        pager=False,
    )
