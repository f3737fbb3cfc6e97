"""Scores of a succeeded job: keyset pages behind opaque cursors, and batches for exports.

Service vocabulary: :func:`list_page`, :func:`iter_batches`,
:func:`require_succeeded`. Domain errors come from :mod:`service.errors`.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator

import pyarrow as pa
from sqlalchemy.orm import Session, sessionmaker

from service import repository as repo
from service.auth import OPEN, Principal
from service.db import session_scope
from service.errors import Conflict, InvalidInput, NotFound, field_error
from service.models import JobState
from service.schemas import ScoreOrder, ScorePage, ScoreRead


def require_succeeded(
    session: Session, job_id: str, method: str | None = None, principal: Principal = OPEN
) -> str:
    """The method whose scores to read: ``method``, or the job's default (its first).

    :class:`NotFound` for a missing job (or another tenant's), :class:`Conflict` until
    it succeeded, :class:`InvalidInput` for a method the job has no scores of. Scores
    belong to their job's tenant: every score read passes here first.
    """
    job = repo.get_job(session, job_id, tenant=principal.visible_tenant)
    if job is None:
        raise NotFound(f"job {job_id} not found")
    if job.state != JobState.succeeded:
        raise Conflict(f"job {job_id} is {job.state}; scores exist once it succeeded")
    if method is None:
        return job.method
    if method not in job.score_methods:
        msg = f"job {job_id} has no scores of method {method!r}; it has {job.score_methods}"
        err = field_error(["query", "method"], msg, "enum")
        err["ctx"] = {"expected": job.score_methods}
        raise InvalidInput(msg, [err])
    return method


def list_page(
    session: Session,
    job_id: str,
    order: ScoreOrder,
    cursor: str | None,
    limit: int,
    flagged: bool | None = None,
    method: str | None = None,
    principal: Principal = OPEN,
) -> ScorePage:
    """One page of one method's scores; ``next_cursor`` continues the same query."""
    method = require_succeeded(session, job_id, method, principal)
    after = None if cursor is None else decode_cursor(cursor, order, flagged, method)
    rows = repo.page_scores(session, job_id, method, after, limit + 1, flagged, order)
    items = [ScoreRead.model_validate(r) for r in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last = items[-1]
        key = last.rank if order == "score_desc" else last.sample_index
        next_cursor = encode_cursor(order, flagged, key, method)
    return ScorePage(items=items, next_cursor=next_cursor, method=method, limit=limit)


def encode_cursor(order: ScoreOrder, flagged: bool | None, key: int, method: str) -> str:
    raw = json.dumps({"o": order, "f": flagged, "k": key, "m": method}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, order: ScoreOrder, flagged: bool | None, method: str) -> int:
    """The key a cursor continues after; it must come from the same query.

    Cursors made before scores had a method carry none and continue the default.
    """
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        key = data["k"]
        same_query = data["o"] == order and data["f"] == flagged
        same_query = same_query and data.get("m", method) == method
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
        raise InvalidInput("invalid cursor") from None
    if isinstance(key, bool) or not isinstance(key, int) or not -1 <= key < 2**31:
        raise InvalidInput("invalid cursor")
    if not same_query:
        raise InvalidInput("the cursor belongs to a different query (order, flagged or method)")
    return key


def iter_batches(
    factory: sessionmaker[Session], job_id: str, order: ScoreOrder, method: str
) -> Iterator[pa.RecordBatch]:
    """One method's scores as Arrow batches, in a session of their own (it outlives the
    request's); ``method`` comes from :func:`require_succeeded`."""
    with session_scope(factory) as session:
        yield from repo.iter_scores(session, job_id, method, order)
