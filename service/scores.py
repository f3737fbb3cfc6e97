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
from service.errors import Conflict, InvalidInput, NotFound
from service.models import JobState
from service.schemas import ScoreOrder, ScorePage, ScoreRead


def require_succeeded(session: Session, job_id: str, principal: Principal = OPEN) -> None:
    """:class:`NotFound` for a missing job (or another tenant's), :class:`Conflict` until
    it succeeded. Scores belong to their job's tenant: every score read passes here first."""
    state = repo.get_job_state(session, job_id, principal.visible_tenant)
    if state is None:
        raise NotFound(f"job {job_id} not found")
    if state != JobState.succeeded:
        raise Conflict(f"job {job_id} is {state}; scores exist once it succeeded")


def list_page(
    session: Session,
    job_id: str,
    order: ScoreOrder,
    cursor: str | None,
    limit: int,
    flagged: bool | None = None,
    principal: Principal = OPEN,
) -> ScorePage:
    """One page of scores; ``next_cursor`` continues the same query."""
    require_succeeded(session, job_id, principal)
    after = None if cursor is None else decode_cursor(cursor, order, flagged)
    rows = repo.page_scores(session, job_id, after, limit + 1, flagged, order)
    items = [ScoreRead.model_validate(r) for r in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last = items[-1]
        key = last.rank if order == "score_desc" else last.sample_index
        next_cursor = encode_cursor(order, flagged, key)
    return ScorePage(items=items, next_cursor=next_cursor)


def encode_cursor(order: ScoreOrder, flagged: bool | None, key: int) -> str:
    raw = json.dumps({"o": order, "f": flagged, "k": key}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, order: ScoreOrder, flagged: bool | None) -> int:
    """The key a cursor continues after; it must come from the same query."""
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        key = data["k"]
        same_query = data["o"] == order and data["f"] == flagged
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise InvalidInput("invalid cursor") from None
    if isinstance(key, bool) or not isinstance(key, int) or not -1 <= key < 2**31:
        raise InvalidInput("invalid cursor")
    if not same_query:
        raise InvalidInput("the cursor belongs to a different query (order or flagged)")
    return key


def iter_batches(
    factory: sessionmaker[Session], job_id: str, order: ScoreOrder
) -> Iterator[pa.RecordBatch]:
    """All scores as Arrow batches, in a session of their own (it outlives the request's)."""
    with session_scope(factory) as session:
        yield from repo.iter_scores(session, job_id, order)
