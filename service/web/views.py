"""What the job page and the report show, built from the service layer.

:func:`job_view` reads the job (``service.jobs``), its dataset
(``service.datasets`` + :class:`DatasetCache`) and, once it succeeded, every
score (``service.scores``), and derives the tables, figures and suspect grid.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote

import numpy as np
from markupsafe import Markup
from numpy.typing import NDArray
from sqlalchemy.orm import Session, sessionmaker

from detection.metrics import roc_curve
from detection.readers import LoadedDataset
from service import datasets, jobs, scores
from service.auth import OPEN, Principal
from service.models import FINISHED_STATES, Dataset, Job, JobState
from service.web.charts import class_histograms, histogram_svg, roc_svg
from service.web.data import DatasetCache, class_name, is_image, require_loaded

PAGE_SIZE = 24
N_REFERENCES = 3
# What each detector's per-class statistic means (ClassSummary.statistic).
STATISTIC_NAMES = {
    "ct": "likelihood ratio",
    "ss": "spectral tail share",
    "ac": "silhouette",
}
Thumb = Callable[[int], str]


@dataclass(frozen=True)
class ScoreArrays:
    """One job's scores in sample order."""

    scores: NDArray[np.float64]
    flags: NDArray[np.bool_]
    ranks: NDArray[np.int64]


@dataclass(frozen=True)
class ClassRow:
    label: int
    name: str
    n_samples: int
    n_flagged: int
    statistic: float | None
    suspected: bool
    n_planted: int | None
    histogram: Markup | None


@dataclass(frozen=True)
class Sample:
    index: int
    label: int
    name: str
    score: float
    rank: int
    flagged: bool
    planted: bool | None
    src: str


@dataclass(frozen=True)
class Suspect:
    sample: Sample
    references: list[Sample]


@dataclass
class JobView:
    job: Job
    dataset: Dataset
    clean_dataset: Dataset | None
    is_image: bool
    finished: bool
    succeeded: bool
    params_json: str
    timings: list[tuple[str, str]]
    statistic_name: str = "statistic"
    classes: list[ClassRow] = field(default_factory=list)
    target_classes: list[str] = field(default_factory=list)
    roc: Markup | None = None
    metrics: list[tuple[str, str]] = field(default_factory=list)
    n_scores: int = 0
    n_flagged: int = 0
    suspects: list[Suspect] = field(default_factory=list)
    first_rank: int = 1
    page_size: int = PAGE_SIZE
    device: str | None = None
    method: str = ""
    score_methods: list[str] = field(default_factory=list)

    @property
    def method_query(self) -> str:
        """``&method=..`` for links that must keep a method other than the default."""
        if not self.method or self.method == self.job.method:
            return ""
        return "&method=" + quote(self.method)

    @property
    def last_rank(self) -> int:
        return self.first_rank + len(self.suspects) - 1


def load_scores(factory: sessionmaker[Session], job_id: str, method: str) -> ScoreArrays:
    """Every score of one method of a succeeded job, in sample order (one array each)."""
    parts: list[tuple[Any, Any, Any]] = []
    for batch in scores.iter_batches(factory, job_id, "index", method):
        cols = batch.to_pydict()
        parts.append((cols["score"], cols["flagged"], cols["rank"]))
    if not parts:
        return ScoreArrays(np.zeros(0), np.zeros(0, dtype=bool), np.zeros(0, dtype=np.int64))
    return ScoreArrays(
        np.concatenate([np.asarray(p[0], dtype=np.float64) for p in parts]),
        np.concatenate([np.asarray(p[1], dtype=bool) for p in parts]),
        np.concatenate([np.asarray(p[2], dtype=np.int64) for p in parts]),
    )


class ScoreCache:
    """Score arrays of the last few succeeded jobs, keyed by job id and finish time.

    A succeeded job's scores never change; a job that runs again (a retry)
    finishes at a new time, so its old entry is never served.
    """

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self._items: OrderedDict[tuple[str, str, str], ScoreArrays] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, factory: sessionmaker[Session], job: Job, method: str) -> ScoreArrays:
        key = (job.id, str(job.finished_at), method)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        arrays = load_scores(factory, job.id, method)
        with self._lock:
            self._items[key] = arrays
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return arrays


def job_view(
    session: Session,
    factory: sessionmaker[Session],
    cache: DatasetCache,
    job_id: str,
    thumb: Thumb,
    first_rank: int = 1,
    page_size: int = PAGE_SIZE,
    score_cache: ScoreCache | None = None,
    method: str | None = None,
    principal: Principal = OPEN,
) -> JobView:
    """The job page's content; results (of ``method``, default the first) once it succeeded."""
    job = jobs.get(session, job_id, principal=principal)
    dataset = datasets.get(session, job.dataset_id)
    clean = datasets.get(session, job.clean_dataset_id) if job.clean_dataset_id else None
    view = JobView(
        job=job,
        dataset=dataset,
        clean_dataset=clean,
        is_image=is_image(dataset),
        finished=job.state in FINISHED_STATES,
        succeeded=job.state == JobState.succeeded,
        params_json=json.dumps(job.params, indent=2, sort_keys=True),
        timings=timings(job),
        first_rank=max(1, first_rank),
        page_size=page_size,
        method=job.method,
        score_methods=job.score_methods,
    )
    if view.succeeded:
        view.method = scores.require_succeeded(session, job_id, method, principal)
        view.statistic_name = STATISTIC_NAMES.get(view.method, "statistic")
        arrays = (score_cache or ScoreCache()).get(factory, job, view.method)
        _fill_results(view, arrays, require_loaded(cache, dataset), thumb)
    return view


def method_results(job: Job, method: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(summary, metrics) of one of the job's methods: the stored ones for the default,
    the per-method entry (flags, targets, TPR/FPR/AUROC) for the others."""
    summary = job.summary or {}
    if method == job.method:
        return summary, job.metrics or {}
    entry = dict((summary.get("methods") or {}).get(method) or {})
    metrics = {k: entry.pop(k) for k in list(entry) if k not in ("target_classes", "seconds")}
    return {"target_classes": entry.get("target_classes", [])}, metrics


def _fill_results(view: JobView, arr: ScoreArrays, data: LoadedDataset, thumb: Thumb) -> None:
    job = view.job
    summary, metrics = method_results(job, view.method)
    labels = data.labels[: arr.scores.size]
    planted = _planted_mask(job, arr.scores.size)
    view.n_scores, view.n_flagged = int(arr.scores.size), int(arr.flags.sum())
    view.device = summary.get("device")
    view.target_classes = [class_name(data, int(c)) for c in summary.get("target_classes", [])]
    view.classes = _class_rows(summary, data, arr, labels, planted)
    view.metrics = [(k, _fmt(v)) for k, v in sorted(metrics.items())]
    if planted is not None and planted.any() and not planted.all():
        fpr, tpr = roc_curve(arr.scores, planted)
        auroc = metrics.get("auroc")
        view.roc = roc_svg(fpr, tpr, auroc if isinstance(auroc, float) else None)
    if view.is_image and arr.scores.size:
        view.suspects = _suspects(view, arr, data, labels, planted, thumb)


def _planted_mask(job: Job, n: int) -> NDArray[np.bool_] | None:
    if job.ground_truth is None:
        return None
    mask = np.zeros(n, dtype=bool)
    idx = np.asarray(job.ground_truth.get("poison_indices", []), dtype=np.int64)
    mask[idx[(idx >= 0) & (idx < n)]] = True
    return mask


def _class_rows(
    summary: dict[str, Any],
    data: LoadedDataset,
    arr: ScoreArrays,
    labels: NDArray[np.int64],
    planted: NDArray[np.bool_] | None,
) -> list[ClassRow]:
    """One row per class: the detector's statistic and a histogram of the class's scores."""
    stored = {int(c["label"]): c for c in summary.get("classes", [])}
    names = [class_name(data, c) for c in range(data.n_classes)]
    marked = arr.flags if planted is None else planted
    panels, score_range = class_histograms(arr.scores, labels, marked, names)
    marked_name = "flagged" if planted is None else "planted"
    rows = []
    for c, name in enumerate(names):
        info = stored.get(c, {})
        in_class = labels == c
        rows.append(
            ClassRow(
                label=c,
                name=name,
                n_samples=int(in_class.sum()),
                n_flagged=int(arr.flags[in_class].sum()),
                statistic=info.get("statistic"),
                suspected=bool(info.get("suspected", False)),
                n_planted=None if planted is None else int(planted[in_class].sum()),
                histogram=histogram_svg(panels[c], score_range, marked_name),
            )
        )
    return rows


def _suspects(
    view: JobView,
    arr: ScoreArrays,
    data: LoadedDataset,
    labels: NDArray[np.int64],
    planted: NDArray[np.bool_] | None,
    thumb: Thumb,
) -> list[Suspect]:
    """Ranks ``first_rank ..`` with, for each, random unflagged samples of its class."""
    by_rank = np.argsort(arr.ranks, kind="stable")
    start = min(view.first_rank - 1, max(arr.ranks.size - 1, 0))
    view.first_rank = start + 1
    chosen = by_rank[start : start + view.page_size]
    rng = np.random.default_rng([view.job.seed, start])
    pools: dict[int, NDArray[np.int64]] = {}

    def sample(i: int) -> Sample:
        return Sample(
            index=i,
            label=int(labels[i]),
            name=class_name(data, int(labels[i])),
            score=float(arr.scores[i]),
            rank=int(arr.ranks[i]),
            flagged=bool(arr.flags[i]),
            planted=None if planted is None else bool(planted[i]),
            src=thumb(i),
        )

    out = []
    for i in chosen.tolist():
        c = int(labels[i])
        if c not in pools:
            pools[c] = np.flatnonzero((labels == c) & ~arr.flags)
        pool = pools[c][pools[c] != i]
        refs = rng.choice(pool, size=min(N_REFERENCES, pool.size), replace=False)
        out.append(Suspect(sample(i), [sample(int(r)) for r in refs]))
    return out


def timings(job: Job) -> list[tuple[str, str]]:
    """Created / started / finished times, queue wait and run time, and the detector's own."""
    rows = [("created", _when(job.created_at))]
    if job.started_at:
        rows.append(("started", _when(job.started_at)))
        rows.append(("queued for", _seconds((job.started_at - job.created_at).total_seconds())))
    if job.finished_at:
        rows.append(("finished", _when(job.finished_at)))
        if job.started_at:
            rows.append(("ran for", _seconds((job.finished_at - job.started_at).total_seconds())))
    summary = job.summary or {}
    detector = summary.get("seconds") or summary.get("timings") or {}
    if isinstance(detector, dict):
        rows += [(f"{k} (detector)", _seconds(v)) for k, v in detector.items() if _is_num(v)]
    return rows


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _when(t: datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S UTC")


def _seconds(s: float) -> str:
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return json.dumps(v) if isinstance(v, dict | list) else str(v)


def cleansed_indices(factory: sessionmaker[Session], job_id: str, method: str) -> NDArray[np.int64]:
    """Sample indices that ``method`` did not flag, ascending: what to keep."""
    arr = load_scores(factory, job_id, method)
    return np.flatnonzero(~arr.flags).astype(np.int64)
