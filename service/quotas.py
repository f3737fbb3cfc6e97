"""Per-key quotas, counted from the database so every API process sees the same numbers.

Active jobs and stored bytes count the rows a key made (``api_key_id``);
uploads per minute count the datasets it stored in the last 60 s. A check
first writes the key's ``last_used_at``: that row lock (PostgreSQL) or write
lock (SQLite) makes two concurrent requests of one key take turns, so they
cannot both pass the last free slot.
"""

from __future__ import annotations

import math
from datetime import timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from service.auth import Principal
from service.errors import QuotaExceeded
from service.models import ACTIVE_STATES, ApiKey, Dataset, Job, utcnow

WINDOW = timedelta(minutes=1)


def _lock_key(session: Session, key_id: str) -> None:
    stmt = update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=utcnow())
    session.execute(stmt.execution_options(synchronize_session=False))


def check_job(session: Session, principal: Principal) -> None:
    """:class:`QuotaExceeded` when the key has ``max_active_jobs`` queued or running."""
    quotas, key_id = principal.quotas, principal.key_id
    if quotas is None or key_id is None or not quotas.max_active_jobs:
        return
    _lock_key(session, key_id)
    stmt = select(func.count()).select_from(Job)
    stmt = stmt.where(Job.api_key_id == key_id, Job.state.in_([s.value for s in ACTIVE_STATES]))
    active = session.scalar(stmt) or 0
    if active >= quotas.max_active_jobs:
        raise QuotaExceeded(
            f"quota: {active} active jobs (limit {quotas.max_active_jobs} per key); "
            "wait for one to finish or cancel one",
            quotas.retry_after_s,
        )


def check_upload(
    session: Session, principal: Principal, size_bytes: int, lock: bool = True
) -> None:
    """:class:`QuotaExceeded` when storing ``size_bytes`` more breaks a quota of the key.

    ``lock=False`` is the early check before the upload is decoded: it takes no lock
    (on SQLite the lock is the whole database's, not to be held while decoding).
    """
    quotas, key_id = principal.quotas, principal.key_id
    if quotas is None or key_id is None:
        return
    if not (quotas.max_uploads_per_minute or quotas.max_stored_bytes):
        return
    if lock:
        _lock_key(session, key_id)
    if quotas.max_uploads_per_minute:
        _check_rate(session, key_id, quotas.max_uploads_per_minute)
    if quotas.max_stored_bytes:
        stmt = select(func.coalesce(func.sum(Dataset.size_bytes), 0))
        stored = int(session.scalar(stmt.where(Dataset.api_key_id == key_id)) or 0)
        if stored + size_bytes > quotas.max_stored_bytes:
            raise QuotaExceeded(
                f"quota: {stored} bytes stored + {size_bytes} would exceed "
                f"{quotas.max_stored_bytes} per key; delete datasets first",
                quotas.retry_after_s,
            )


def _check_rate(session: Session, key_id: str, limit: int) -> None:
    now = utcnow()
    stmt = select(Dataset.created_at).where(
        Dataset.api_key_id == key_id, Dataset.created_at > now - WINDOW
    )
    recent = sorted(session.scalars(stmt.order_by(Dataset.created_at.desc()).limit(limit)))
    if len(recent) >= limit:
        # The oldest upload that counts leaves the window first.
        wait = (recent[0] + WINDOW - now).total_seconds()
        raise QuotaExceeded(
            f"quota: {len(recent)} uploads in the last minute (limit {limit} per key)",
            max(1, math.ceil(wait)),
        )
