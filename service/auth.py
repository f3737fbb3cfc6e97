"""API keys and the principal a request acts as.

A key reads ``psk_<id>_<secret>``: ``id`` is public (it names the key in
``keys list`` and logs), ``secret`` holds 256 random bits. Only the sha256 of
the whole token is stored, so a leaked database does not leak keys; a plain
hash suffices because the token is random, not a password.

Service vocabulary: :func:`create`, :func:`revoke`, :func:`list_all`,
:func:`authenticate`. Functions take the session first and raise
:mod:`service.errors` domain errors.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.config import Settings
from service.errors import InvalidInput, NotFound, Unauthorized
from service.models import DEFAULT_TENANT, ApiKey, utcnow

PREFIX = "psk"
TOKEN = re.compile(r"^psk_([a-z0-9]{16})_([A-Za-z0-9_-]{43})$")
TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class Quotas:
    """One key's limits (0: none): its own overrides, else the settings' defaults."""

    max_active_jobs: int
    max_uploads_per_minute: int
    max_stored_bytes: int
    retry_after_s: int

    @classmethod
    def of(cls, key: ApiKey, settings: Settings) -> Quotas:
        def pick(own: int | None, default: int) -> int:
            return default if own is None else own

        return cls(
            max_active_jobs=pick(key.max_active_jobs, settings.quota_max_active_jobs),
            max_uploads_per_minute=pick(
                key.max_uploads_per_minute, settings.quota_uploads_per_minute
            ),
            max_stored_bytes=pick(key.max_stored_bytes, settings.quota_max_stored_bytes),
            retry_after_s=settings.quota_retry_after_s,
        )


@dataclass(frozen=True)
class Principal:
    """Who a request acts as: a tenant, with or without the admin scope.

    ``key_id`` and ``quotas`` are None while auth is off (the open local mode),
    where every request acts as the admin of tenant ``default``, unlimited.
    """

    tenant: str
    admin: bool
    key_id: str | None = None
    quotas: Quotas | None = None

    @property
    def visible_tenant(self) -> str | None:
        """The tenant rows are filtered by; None (everything) for the admin scope."""
        return None if self.admin else self.tenant


OPEN = Principal(tenant=DEFAULT_TENANT, admin=True)


@dataclass(frozen=True)
class CreatedKey:
    """A new key and its token, which is shown this once."""

    key: ApiKey
    token: str


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create(
    session: Session,
    tenant: str,
    *,
    admin: bool = False,
    name: str | None = None,
    quotas: dict[str, int | None] | None = None,
) -> CreatedKey:
    """A new key of ``tenant``; ``quotas`` override the settings (``max_active_jobs``, ...)."""
    if not TENANT.match(tenant):
        raise InvalidInput("a tenant is 1-64 letters, digits, '_', '.' or '-'")
    if name is not None and len(name) > 255:
        raise InvalidInput("a key's name is at most 255 characters")
    key_id = secrets.token_hex(8)
    token = f"{PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
    key = ApiKey(
        id=key_id,
        secret_hash=hash_token(token),
        tenant=tenant,
        name=name,
        admin=admin,
        **(quotas or {}),
    )
    session.add(key)
    session.flush()
    return CreatedKey(key, token)


def revoke(session: Session, key_id: str) -> ApiKey:
    """Revoke a key (kept for the record); revoking twice is a no-op."""
    key = session.get(ApiKey, key_id)
    if key is None:
        raise NotFound(f"API key {key_id} not found")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.flush()
    return key


def list_all(session: Session) -> Sequence[ApiKey]:
    return session.scalars(select(ApiKey).order_by(ApiKey.tenant, ApiKey.created_at)).all()


def authenticate(session: Session, token: str | None, settings: Settings) -> Principal:
    """The principal of ``token``; :class:`Unauthorized` when missing, unknown or revoked.

    Every failure reads the same, so a caller learns nothing about which keys exist.
    """
    if not token:
        raise Unauthorized("an API key is required: send 'Authorization: Bearer <key>'")
    match = TOKEN.match(token)
    key = None if match is None else session.get(ApiKey, match.group(1))
    if key is None or not hmac.compare_digest(key.secret_hash, hash_token(token)):
        raise Unauthorized("invalid or revoked API key")
    if key.revoked_at is not None:
        raise Unauthorized("invalid or revoked API key")
    return Principal(key.tenant, key.admin, key.id, Quotas.of(key, settings))
