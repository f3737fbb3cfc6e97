"""``Idempotency-Key`` on POSTs: the same key and body replay the first outcome.

A record maps (endpoint scope, key) to a fingerprint of the request body, the
status it got and the resource it made. The same key with another body is a
:class:`Conflict`. The record is written in the transaction that creates the
resource, so a retry after a crash either finds both or neither.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.errors import Conflict
from service.models import DEFAULT_TENANT, IdempotencyRecord

MAX_KEY_LENGTH = 255


@dataclass(frozen=True)
class IdempotentRequest:
    """A POST sent with a key: its endpoint ``scope`` and its body's fingerprint."""

    scope: str
    key: str
    fingerprint: str
    shown: str | None = None  # the key as the client sent it (``key`` may be tenant-scoped)

    @property
    def label(self) -> str:
        return self.shown if self.shown is not None else self.key


def scoped_key(key: str, tenant: str) -> str:
    """Keys are per tenant: another tenant's key never replays (or reveals) this one's outcome.

    The default tenant keeps the key as sent (the records of the open mode).
    """
    if tenant == DEFAULT_TENANT:
        return key
    return hashlib.sha256(f"{tenant}\x00{key}".encode()).hexdigest()


def fingerprint(payload: Any) -> str:
    """sha256 of the canonical JSON of ``payload``."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def replayed(session: Session, request: IdempotentRequest | None) -> IdempotencyRecord | None:
    """The first outcome for this key, or None; :class:`Conflict` when the body differs."""
    if request is None:
        return None
    record = session.get(IdempotencyRecord, (request.scope, request.key))
    if record is not None and record.fingerprint != request.fingerprint:
        raise Conflict(f"Idempotency-Key {request.label!r} was used with a different request body")
    return record


def remember(
    session: Session, request: IdempotentRequest | None, status_code: int, resource_id: str
) -> None:
    """Store the outcome (in the caller's transaction); a concurrent twin raises Conflict."""
    if request is None:
        return
    record = IdempotencyRecord(
        scope=request.scope,
        key=request.key,
        fingerprint=request.fingerprint,
        status_code=status_code,
        resource_id=resource_id,
    )
    try:
        with session.begin_nested():
            session.add(record)
    except IntegrityError:
        raise Conflict(
            f"a request with Idempotency-Key {request.label!r} is in progress; retry"
        ) from None
