"""Webhooks: a signed POST when a job ends, retried with backoff, every attempt logged.

A job created with a ``callback_url`` gets ``webhook_state = pending``. Once it
reaches a terminal state (succeeded, failed, cancelled: by the worker, the
reaper or a cancel), a :class:`WebhookDispatcher` (one runs in every API process
and every worker) claims it with a conditional update, POSTs one JSON event
signed per the Standard Webhooks spec (``webhook-id``, ``webhook-timestamp``,
``webhook-signature: v1,<base64 HMAC-SHA256 of id.timestamp.body>``), retries
network errors, timeouts, 408, 429 and 5xx with exponential backoff (tenacity)
up to ``webhook_max_attempts``, and records every attempt in ``webhook_delivery``.
The job's own state never depends on the delivery.

The outbox lives on the job row, so an event survives a crash of whoever was
sending it: a claim older than :func:`claim_timeout_s` is taken again, and the
retry carries the same ``webhook-id`` (receivers deduplicate on it).
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import json
import logging
import secrets
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

import httpx
from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.orm import Session, sessionmaker
from standardwebhooks import Webhook
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from service import repository as repo
from service.auth import OPEN, Principal
from service.config import Settings
from service.db import session_scope
from service.errors import InvalidInput, NotFound, field_error
from service.models import FINISHED_STATES, Job, WebhookDelivery, WebhookState, utcnow
from service.reaper import Periodic

log = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
SECRET_RANGE = (24, 64)  # the spec's recommended key sizes, in bytes
RETRY_STATUSES = frozenset({408, 429})
Sleep = Callable[[float], None]


# --- validation at POST /jobs -------------------------------------------------------------


def _refuse(field: str, msg: str, type_: str) -> InvalidInput:
    return InvalidInput(msg, [field_error(["body", field], msg, type_)])


def _host_allowed(host: str, allowed: Sequence[str]) -> bool:
    return not allowed or any(fnmatch.fnmatch(host, pattern.lower()) for pattern in allowed)


def check_callback_url(url: str, settings: Settings) -> str:
    """``url`` when it is an absolute http(s) URL to an allowed host, else :class:`InvalidInput`."""
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise _refuse("callback_url", "callback_url is not a valid URL", "url_parsing") from None
    if parts.scheme not in ("http", "https") or not host:
        msg = "callback_url must be an absolute http:// or https:// URL"
        raise _refuse("callback_url", msg, "url_scheme")
    if any(ch.isspace() or ord(ch) < 32 for ch in url):
        raise _refuse("callback_url", "callback_url must not contain whitespace", "url_parsing")
    if not _host_allowed(host, settings.webhook_allowed_hosts):
        msg = f"callback_url host {host!r} is not in the server's allow-list"
        raise _refuse("callback_url", msg, "url_host")
    return url


def check_secret(secret: str) -> str:
    """A client's own signing key: ``whsec_`` + base64 of 24 to 64 bytes."""
    msg = "webhook_secret must be 'whsec_' followed by base64 of 24 to 64 random bytes"
    if not secret.startswith(SECRET_PREFIX):
        raise _refuse("webhook_secret", msg, "webhook_secret")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise _refuse("webhook_secret", msg, "webhook_secret") from None
    if not SECRET_RANGE[0] <= len(key) <= SECRET_RANGE[1]:
        raise _refuse("webhook_secret", msg, "webhook_secret")
    return secret


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def job_fields(
    callback_url: str | None, secret: str | None, settings: Settings
) -> dict[str, str | None]:
    """The job columns for a POST's ``callback_url`` / ``webhook_secret`` (validated)."""
    if callback_url is None:
        if secret is not None:
            raise _refuse("webhook_secret", "webhook_secret needs a callback_url", "missing")
        return {}
    return {
        "callback_url": check_callback_url(callback_url, settings),
        "webhook_secret": new_secret() if secret is None else check_secret(secret),
        "webhook_state": WebhookState.pending.value,
    }


# --- the event ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """One signed message: the same ``message_id`` and body on every attempt."""

    job_id: str
    message_id: str
    type: str
    body: str
    url: str
    secret: str


def message_id(job_id: str, event_type: str) -> str:
    return "msg_" + uuid.uuid5(uuid.NAMESPACE_URL, f"poisonscan:{job_id}:{event_type}").hex


def _links(job_id: str, settings: Settings) -> dict[str, str]:
    base = (settings.public_base_url or "").rstrip("/")
    return {
        "job": f"{base}/jobs/{job_id}",
        "scores": f"{base}/jobs/{job_id}/scores",
        "deliveries": f"{base}/jobs/{job_id}/deliveries",
    }


def build_event(job: Job, settings: Settings) -> Event:
    """The JSON event of a finished job (``type`` is ``job.<state>``)."""
    assert job.callback_url is not None and job.webhook_secret is not None
    event_type = f"job.{job.state}"
    summary = job.summary or {}
    data = {
        "job_id": job.id,
        "state": job.state,
        "method": job.method,
        "dataset_id": job.dataset_id,
        "error": job.error,
        "n_samples": summary.get("n_samples"),
        "n_flagged": summary.get("n_flagged"),
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "metadata": job.job_metadata,
        "links": _links(job.id, settings),
    }
    when = (job.finished_at or utcnow()).isoformat()
    body = json.dumps({"type": event_type, "timestamp": when, "data": data}, sort_keys=True)
    msg_id = message_id(job.id, event_type)
    return Event(job.id, msg_id, event_type, body, job.callback_url, job.webhook_secret)


def signed_headers(event: Event, when: datetime) -> dict[str, str]:
    """The Standard Webhooks headers for one attempt sent at ``when``."""
    signature = Webhook(event.secret).sign(event.message_id, when, event.body)
    return {
        "content-type": "application/json",
        "user-agent": "poisonscan-webhooks",
        "webhook-id": event.message_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": signature,
    }


# --- one attempt, and the retries ---------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    status_code: int | None
    error: str | None
    duration_ms: float

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    @property
    def retryable(self) -> bool:
        if self.status_code is None:  # network error or timeout
            return True
        return self.status_code >= 500 or self.status_code in RETRY_STATUSES


class RetryDelivery(Exception):
    """Raised inside a tenacity attempt whose outcome deserves another try."""


def post_once(client: httpx.Client, event: Event) -> Attempt:
    start = time.perf_counter()
    try:
        headers = signed_headers(event, utcnow())
        response = client.post(event.url, content=event.body.encode(), headers=headers)
    except httpx.HTTPError as exc:
        elapsed = (time.perf_counter() - start) * 1000
        return Attempt(None, f"{type(exc).__name__}: {exc}"[:1000], elapsed)
    elapsed = (time.perf_counter() - start) * 1000
    error = None if response.is_success else f"HTTP {response.status_code}"
    return Attempt(response.status_code, error, elapsed)


def _record(sessions: sessionmaker[Session], event: Event, number: int, a: Attempt) -> None:
    row = WebhookDelivery(
        job_id=event.job_id,
        message_id=event.message_id,
        event_type=event.type,
        attempt=number,
        url=event.url,
        status_code=a.status_code,
        error=a.error,
        succeeded=a.succeeded,
        duration_ms=round(a.duration_ms, 2),
    )
    with session_scope(sessions) as session:
        session.add(row)


def send(
    sessions: sessionmaker[Session], settings: Settings, event: Event, sleep: Sleep = time.sleep
) -> bool:
    """POST ``event`` until it succeeds, is refused (4xx) or the attempts run out."""
    retrying = Retrying(
        stop=stop_after_attempt(settings.webhook_max_attempts),
        wait=wait_exponential(
            multiplier=settings.webhook_backoff_s, max=settings.webhook_backoff_max_s
        ),
        retry=retry_if_exception_type(RetryDelivery),
        sleep=sleep,
        reraise=True,
    )
    timeout = httpx.Timeout(settings.webhook_timeout_s)
    with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
        try:
            for attempt in retrying:
                with attempt:
                    result = post_once(client, event)
                    _record(sessions, event, attempt.retry_state.attempt_number, result)
                    if not result.succeeded and result.retryable:
                        raise RetryDelivery(result.error)
        except RetryDelivery:
            return False
    return result.succeeded


# --- the outbox ---------------------------------------------------------------------------


def claim_timeout_s(settings: Settings) -> float:
    """Longer than any delivery can take: a claim older than this was abandoned."""
    attempts = settings.webhook_max_attempts
    waits = settings.webhook_backoff_max_s * attempts
    return attempts * settings.webhook_timeout_s + waits + 60.0


def _due(settings: Settings) -> ColumnElement[bool]:
    """Finished, with an event waiting (or whose sender vanished mid-delivery)."""
    stale = utcnow() - timedelta(seconds=claim_timeout_s(settings))
    waiting = or_(
        Job.webhook_state == WebhookState.pending.value,
        and_(Job.webhook_state == WebhookState.sending.value, Job.webhook_claimed_at < stale),
    )
    return and_(waiting, Job.state.in_([s.value for s in FINISHED_STATES]))


def due(session: Session, settings: Settings, limit: int = 20) -> list[str]:
    """Ids of the jobs whose event should be sent now, oldest first."""
    stmt = select(Job.id).where(_due(settings)).order_by(Job.finished_at).limit(limit)
    return list(session.scalars(stmt))


def _set_state(
    session: Session, job_id: str, state: WebhookState, where: ColumnElement[bool]
) -> bool:
    stmt = (
        update(Job)
        .where(Job.id == job_id, where)
        .values(webhook_state=state.value, webhook_claimed_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return bool(session.execute(stmt).rowcount)  # type: ignore[attr-defined]


def claim(sessions: sessionmaker[Session], settings: Settings, job_id: str) -> Event | None:
    """Take the job's event for sending (one dispatcher wins); None if not due."""
    with session_scope(sessions) as session:
        if not _set_state(session, job_id, WebhookState.sending, _due(settings)):
            return None
        job = repo.get_job(session, job_id)
        assert job is not None
        return build_event(job, settings)


def deliver(
    sessions: sessionmaker[Session], settings: Settings, job_id: str, sleep: Sleep = time.sleep
) -> str | None:
    """Claim, send and settle one job's event; its final webhook state (None: not due)."""
    event = claim(sessions, settings, job_id)
    if event is None:
        return None
    try:
        ok = send(sessions, settings, event, sleep)
    except Interrupted:
        with session_scope(sessions) as session:  # let another process take it
            sending = Job.webhook_state == WebhookState.sending.value
            _set_state(session, job_id, WebhookState.pending, sending)
        raise
    state = WebhookState.delivered if ok else WebhookState.failed
    with session_scope(sessions) as session:
        _set_state(session, job_id, state, Job.webhook_state == WebhookState.sending.value)
    level = logging.INFO if ok else logging.WARNING
    log.log(level, "webhook %s of job %s: %s", event.type, job_id, state.value)
    return state.value


def deliver_due(
    sessions: sessionmaker[Session], settings: Settings, sleep: Sleep = time.sleep
) -> int:
    """Deliver every due event; how many were settled."""
    with session_scope(sessions) as session:
        ids = due(session, settings)
    return sum(deliver(sessions, settings, job_id, sleep) is not None for job_id in ids)


def list_deliveries(
    session: Session, job_id: str, principal: Principal = OPEN
) -> list[WebhookDelivery]:
    """Every attempt for ``job_id``, oldest first; :class:`NotFound` for no such job
    (or another tenant's)."""
    if repo.get_job(session, job_id, tenant=principal.visible_tenant) is None:
        raise NotFound(f"job {job_id} not found")
    stmt = select(WebhookDelivery).where(WebhookDelivery.job_id == job_id)
    return list(session.scalars(stmt.order_by(WebhookDelivery.id)))


# --- running it ---------------------------------------------------------------------------


class Interrupted(Exception):
    """The dispatcher is stopping in the middle of a backoff."""


class WebhookDispatcher(Periodic):
    """Delivers due events every ``webhook_poll_interval_s`` (API processes and workers)."""

    def __init__(self, sessions: sessionmaker[Session], settings: Settings) -> None:
        super().__init__("webhooks", settings.webhook_poll_interval_s)
        self.sessions = sessions
        self.settings = settings

    def _sleep(self, seconds: float) -> None:
        if self._stop.wait(seconds):
            raise Interrupted

    def tick(self) -> None:
        try:
            deliver_due(self.sessions, self.settings, self._sleep)
        except Interrupted:
            log.info("webhooks: stopped during a backoff; the event stays pending")
