"""Plain functions that run one job: load, detect with progress, persist.

Every database write opens its own short session (the job is the boundary),
so progress is visible while the detector runs and a crash leaves no partial
scores: scores, summary, metrics and ``succeeded`` commit together.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, sessionmaker
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from detection.defenses.ensemble import EnsembleParams, MemberRun, fuse_results
from detection.metrics import evaluate
from detection.readers import LoadedDataset, read_dataset
from detection.registry import run_detector
from detection.types import DetectionInput, DetectionResult, JobCancelled, RunContext
from detection.version import code_version
from service import repository as repo
from service.config import Settings
from service.db import get_sessionmaker, session_scope
from service.logs import job_context
from service.models import FINISHED_STATES, FUSED_METHOD, JobState, score_methods
from service.reaper import is_alive
from service.storage import LocalStorage
from worker.heartbeat import JobHeartbeat

log = logging.getLogger(__name__)
MAX_ERROR_CHARS = 1000
# The database is unreachable (restarting, failing over): worth waiting for, not a job error.
DB_DOWN = (sa_exc.OperationalError, sa_exc.InterfaceError)


@dataclass(frozen=True)
class JobSpec:
    """What a job needs, read once so no session stays open while it runs."""

    job_id: str
    methods: list[str]
    params: dict[str, Any]  # one method's params, or {method: params} for several
    seed: int
    data_uri: str
    data_format: str
    clean_uri: str | None
    clean_format: str | None
    ground_truth: dict[str, Any] | None

    def params_for(self, method: str) -> dict[str, Any]:
        if len(self.methods) == 1:
            return self.params
        return dict(self.params.get(method) or {})

    @property
    def fused(self) -> bool:
        """Whether the job also stores ``ensemble``, fused from the listed methods."""
        return FUSED_METHOD in score_methods(self.methods) and FUSED_METHOD not in self.methods


@dataclass
class JobEnv:
    settings: Settings
    sessions: sessionmaker[Session]
    storage: LocalStorage

    @classmethod
    def from_settings(cls, settings: Settings) -> JobEnv:
        storage = LocalStorage(settings.storage_root, settings.max_upload_bytes)
        return cls(settings, get_sessionmaker(settings.database_url), storage)


def run_job(job_id: str, settings: Settings) -> str:
    """Run job ``job_id`` to a final state and return it.

    A finished job is left alone (a redelivered message is a no-op); a job found
    ``running`` with a stale heartbeat (its worker died) runs again and rewrites
    the same score rows; with a fresh heartbeat (a live worker holds it) the
    message is dropped.
    """
    with job_context(job_id):
        return _run_job(JobEnv.from_settings(settings), job_id)


def _run_job(env: JobEnv, job_id: str) -> str:
    settings = env.settings
    spec, state = start_job(env, job_id)
    if spec is None:
        return _ended(env, job_id, state)
    with JobHeartbeat(env.sessions, job_id, settings.heartbeat_interval_s):
        try:
            state = execute(env, spec)
        except JobCancelled:
            log.info("job %s cancelled", job_id)
            state = finish_cancelled(env, job_id)
        except Exception as exc:
            log.exception("job %s failed", job_id)
            state = finish_failed(env, job_id, short_error(exc))
    return _ended(env, job_id, state)


def _ended(env: JobEnv, job_id: str, state: str) -> str:
    """Remove the job's scratch dir once it can never run again (checkpoints serve a rerun)."""
    if state in FINISHED_STATES or state == "missing":
        env.storage.delete_job_scratch(job_id)
    return state


def start_job(env: JobEnv, job_id: str) -> tuple[JobSpec | None, str]:
    """Mark the job running and snapshot it; ``(None, state)`` when it must not run."""
    with session_scope(env.sessions) as session:
        job = repo.get_job(session, job_id, for_update=True)
        if job is None:
            log.warning("job %s does not exist; message dropped", job_id)
            return None, "missing"
        if job.state in FINISHED_STATES:
            return None, job.state
        if job.state == JobState.cancelling:
            repo.mark_job_cancelled(session, job_id)
            return None, JobState.cancelled.value
        if job.state == JobState.running and is_alive(job, env.settings.heartbeat_timeout_s):
            log.warning("job %s runs on a live worker; duplicate message dropped", job_id)
            return None, job.state
        repo.mark_job_running(session, job_id, code_version())
        methods = ",".join(job.method_list)
        log.info("job %s running (%s, attempt %d)", job_id, methods, job.attempts + 1)
        return _spec(session, job_id), JobState.running.value


def _spec(session: Session, job_id: str) -> JobSpec:
    job = repo.get_job(session, job_id)
    assert job is not None
    data = repo.get_dataset(session, job.dataset_id)
    clean = repo.get_dataset(session, job.clean_dataset_id) if job.clean_dataset_id else None
    assert data is not None
    return JobSpec(
        job_id=job.id,
        methods=job.method_list,
        params=dict(job.params),
        seed=job.seed,
        data_uri=data.storage_uri,
        data_format=data.format,
        clean_uri=clean.storage_uri if clean else None,
        clean_format=clean.format if clean else None,
        ground_truth=job.ground_truth,
    )


def execute(env: JobEnv, spec: JobSpec) -> str:
    """Load, detect, persist. Raises JobCancelled or the detector's error."""
    ctx = make_context(env, spec)
    ctx.report("load", 0.0)
    inp = load_input(env.storage, spec)
    ctx.check_cancel()
    runs = run_methods(spec, inp, ctx)
    ctx.check_cancel()
    return persist(env, spec, runs, ctx)


def run_methods(spec: JobSpec, inp: DetectionInput, ctx: RunContext) -> list[MemberRun]:
    """Each listed method in turn on one context (one model cache: one base model),
    then the fused ``ensemble`` when several ran. Progress splits evenly across methods."""
    runs, n = [], len(spec.methods)
    for i, name in enumerate(spec.methods):
        ctx.check_cancel()
        sub = ctx if n == 1 else ctx.sub(i / n, (i + 1) / n, f"{name}: ")
        start = time.perf_counter()
        result = run_detector(name, inp, spec.params_for(name), sub)
        runs.append(MemberRun(name, result, time.perf_counter() - start))
        log.info("job %s: %s done in %.1f s", spec.job_id, name, runs[-1].seconds)
    if spec.fused:
        start = time.perf_counter()
        members = {name: spec.params_for(name) for name in spec.methods}
        params = EnsembleParams.model_validate(
            {"detectors": spec.methods, "detector_params": members}
        )
        fused = fuse_results(inp, runs, params)
        runs.append(MemberRun(FUSED_METHOD, fused, time.perf_counter() - start))
    return runs


def _read(storage: LocalStorage, uri: str, fmt: str | None) -> LoadedDataset:
    return read_dataset(storage.path_for(uri), fmt)


def load_input(storage: LocalStorage, spec: JobSpec) -> DetectionInput:
    data = _read(storage, spec.data_uri, spec.data_format)
    clean = _read(storage, spec.clean_uri, spec.clean_format) if spec.clean_uri else None
    return DetectionInput(
        x=data.x,
        labels=data.labels,
        n_classes=data.n_classes,
        clean_x=None if clean is None else clean.x,
        clean_labels=None if clean is None else clean.labels,
    )


def make_context(env: JobEnv, spec: JobSpec) -> RunContext:
    scratch = Path(env.settings.storage_root) / "jobs" / spec.job_id
    scratch.mkdir(parents=True, exist_ok=True)
    return RunContext(
        device=env.settings.device,
        seed=spec.seed,
        progress=ProgressWriter(env.sessions, spec.job_id, env.settings.progress_interval_s),
        should_cancel=CancelPoller(env.sessions, spec.job_id, env.settings.cancel_poll_interval_s),
        scratch_dir=scratch,
    )


class ProgressWriter:
    """``RunContext.progress``: writes stage/progress to the job row, at most once per interval."""

    def __init__(self, sessions: sessionmaker[Session], job_id: str, interval_s: float) -> None:
        self.sessions = sessions
        self.job_id = job_id
        self.interval_s = interval_s
        self._last = -math.inf

    def __call__(self, stage: str, fraction: float) -> None:
        now = time.monotonic()
        if now - self._last < self.interval_s:
            return
        self._last = now
        try:
            with session_scope(self.sessions) as session:
                repo.update_job_progress(session, self.job_id, stage, fraction)
        except DB_DOWN as exc:  # progress is advisory: a database restart must not fail the job
            log.warning("job %s: progress not written (%s)", self.job_id, type(exc).__name__)


class CancelPoller:
    """``RunContext.should_cancel``: True once the job is cancelling (polled per interval)."""

    def __init__(self, sessions: sessionmaker[Session], job_id: str, interval_s: float) -> None:
        self.sessions = sessions
        self.job_id = job_id
        self.interval_s = interval_s
        self._last = -math.inf
        self._cancel = False

    def __call__(self) -> bool:
        now = time.monotonic()
        if self._cancel or now - self._last < self.interval_s:
            return self._cancel
        self._last = now
        try:
            with session_scope(self.sessions) as session:
                state = repo.get_job_state(session, self.job_id)
        except DB_DOWN as exc:  # ask again at the next poll
            log.warning("job %s: cancel state not read (%s)", self.job_id, type(exc).__name__)
            return False
        self._cancel = state in (None, JobState.cancelling, JobState.cancelled)
        if self._cancel:
            log.info("job %s: cancellation requested", self.job_id)
        return self._cancel


METHOD_METRICS = ("tpr", "fpr", "auroc", "ap", "tpr_at_fpr_1")


def job_summary(
    spec: JobSpec, runs: list[MemberRun], ctx: RunContext
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(summary, metrics) of the job: the default (first) method's, plus one entry per method.

    ``summary["methods"][name]``: flagged count, target classes, seconds and,
    with ground truth, TPR/FPR/AUROC/AP; ``summary["model_cache"]``: how many
    base models were trained (misses) and reused (hits) across the methods.
    """
    per_method, default_metrics = {}, None
    for i, run in enumerate(runs):
        metrics = job_metrics(spec, run.result)
        if i == 0:
            default_metrics = metrics
        entry: dict[str, Any] = {
            "n_flagged": run.result.n_flagged,
            "target_classes": [int(c) for c in run.result.target_classes],
            "seconds": round(run.seconds, 3),
        }
        entry |= {k: metrics.get(k) for k in METHOD_METRICS} if metrics else {}
        per_method[run.name] = entry
    summary = json_safe(runs[0].result.summary())
    summary["methods"] = per_method
    summary["model_cache"] = {"trained": ctx.models.misses, "reused": ctx.models.hits}
    return json_safe(summary), default_metrics


def job_metrics(spec: JobSpec, result: DetectionResult) -> dict[str, Any] | None:
    if spec.ground_truth is None:
        return None
    gt = spec.ground_truth
    metrics = evaluate(
        result.scores, result.flags, gt["poison_indices"], gt.get("cover_indices") or None
    )
    return json_safe(metrics)


def json_safe(value: dict[str, Any]) -> dict[str, Any]:
    """Plain JSON (numpy scalars to Python, NaN/inf to null): JSONB refuses NaN."""

    def default(obj: Any) -> Any:
        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
        raise TypeError(f"not JSON-able: {type(obj).__name__}")

    text = json.dumps(value, default=default)
    out: dict[str, Any] = json.loads(text, parse_constant=lambda _: None)
    return out


def db_retry(settings: Settings) -> Retrying:
    """Retry a final write while the database restarts (connection errors only)."""
    return Retrying(
        stop=stop_after_delay(settings.heartbeat_timeout_s),
        wait=wait_exponential(multiplier=0.5, max=5.0),
        retry=retry_if_exception_type(DB_DOWN),
        reraise=True,
    )


def persist(env: JobEnv, spec: JobSpec, runs: list[MemberRun], ctx: RunContext) -> str:
    """:func:`persist_once`, retried through a database restart (it rewrites the same rows)."""
    summary, metrics = job_summary(spec, runs, ctx)
    for attempt in db_retry(env.settings):
        with attempt:
            return persist_once(env, spec, runs, summary, metrics)
    raise AssertionError("unreachable: tenacity reraises")


def persist_once(
    env: JobEnv,
    spec: JobSpec,
    runs: list[MemberRun],
    summary: dict[str, Any],
    metrics: dict[str, Any] | None,
) -> str:
    """Every method's scores, summary, metrics and ``succeeded`` in one transaction."""
    ProgressWriter(env.sessions, spec.job_id, 0.0)("persist", 0.99)
    start = time.perf_counter()
    with session_scope(env.sessions) as session:
        job = repo.get_job(session, spec.job_id, for_update=True)
        if job is None or job.state != JobState.running:
            raise JobCancelled("cancelled before the results were stored")
        repo.delete_scores(session, spec.job_id)
        rows = sum(
            repo.insert_scores(session, spec.job_id, run.name, run.result.scores, run.result.flags)
            for run in runs
        )
        repo.mark_job_succeeded(session, spec.job_id, summary, metrics)
    log.info(
        "job %s: %d score rows stored in %.2f s", spec.job_id, rows, time.perf_counter() - start
    )
    return JobState.succeeded.value


def finish_cancelled(env: JobEnv, job_id: str) -> str:
    for attempt in db_retry(env.settings):
        with attempt, session_scope(env.sessions) as session:
            repo.mark_job_cancelled(session, job_id)
            return repo.get_job_state(session, job_id) or "missing"
    raise AssertionError("unreachable: tenacity reraises")


def finish_failed(env: JobEnv, job_id: str, error: str) -> str:
    for attempt in db_retry(env.settings):
        with attempt, session_scope(env.sessions) as session:
            repo.mark_job_failed(session, job_id, error)
            return repo.get_job_state(session, job_id) or "missing"
    raise AssertionError("unreachable: tenacity reraises")


def short_error(exc: BaseException) -> str:
    """One line for the job row; the traceback goes to the worker log."""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return text[:MAX_ERROR_CHARS]
