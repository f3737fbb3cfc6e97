"""Engines and sessions. A session is opened only at a boundary (request, job).

Repositories flush; the boundary commits. :func:`get_session` is the request
boundary: it commits when the endpoint returns and rolls back when it raises.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from anyio import CancelScope, CapacityLimiter, to_thread
from fastapi import Depends, Request
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

SQLITE_BUSY_TIMEOUT_MS = 30_000


@dataclass(frozen=True)
class EngineOptions:
    """Pool sizing and lock waits (:func:`service.limits.engine_options` sizes them)."""

    pool_size: int = 5
    max_overflow: int = 10
    pool_timeout_s: float = 30.0
    sqlite_busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS


def normalise_url(url: str) -> str:
    """Use psycopg 3 for every PostgreSQL URL."""
    for prefix in ("postgresql://", "postgres://", "postgresql+psycopg2://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def _sqlite_pragmas(busy_timeout_ms: int) -> Any:
    def on_connect(dbapi_connection: Any, connection_record: Any) -> None:
        del connection_record
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.close()

    return on_connect


def create_db_engine(url: str, options: EngineOptions | None = None) -> Engine:
    """An engine for ``url``; SQLite gets WAL, foreign keys and cross-thread use."""
    url = normalise_url(url)
    opts = options or EngineOptions()
    pool = {
        "pool_size": opts.pool_size,
        "max_overflow": opts.max_overflow,
        "pool_timeout": opts.pool_timeout_s,
    }
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True, **pool)
    database = make_url(url).database
    if database:
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    timeout_s = opts.sqlite_busy_timeout_ms / 1000
    connect_args = {"check_same_thread": False, "timeout": timeout_s}
    engine = create_engine(url, connect_args=connect_args, **pool)
    event.listen(engine, "connect", _sqlite_pragmas(opts.sqlite_busy_timeout_ms))
    return engine


@lru_cache(maxsize=16)
def get_engine(url: str, options: EngineOptions | None = None) -> Engine:
    """One engine per URL (and pool options) per process."""
    return create_db_engine(url, options)


def get_sessionmaker(url: str, options: EngineOptions | None = None) -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(url, options), expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A unit of work outside a request (worker, exports): commit or roll back."""
    with factory() as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


async def get_session(request: Request) -> AsyncIterator[Session]:
    """Request boundary: commit when the endpoint returns, roll back when it raises.

    Async, so that only the end takes a worker-thread hop: a new session does no
    I/O (it checks a connection out on first use, in the endpoint's thread). Each
    hop costs the event loop a GIL hand-off, the main cost of a poll under load.
    Requests hold one of ``app.state.db_slots`` for their unit of work: with every
    request in flight running queries at once, threads convoy on the GIL and each
    answer is late; a few at a time, the others queued on the loop, answer sooner.
    """
    factory: sessionmaker[Session] = request.app.state.sessionmaker
    async with request.app.state.db_slots:
        session = factory()
        try:
            yield session
        except BaseException:
            await _in_thread(_finish, session, False)
            raise
        await _in_thread(_finish, session, True)


def _finish(session: Session, commit: bool) -> None:
    try:
        if commit:
            session.commit()
        else:
            session.rollback()
    finally:
        session.close()


async def _in_thread(func: Callable[[Session, bool], None], *args: Any) -> None:
    """Shielded, and outside the request threads' limit: a pooled connection must come
    back even when the request was cancelled or every thread waits for the pool."""
    with CancelScope(shield=True):
        await to_thread.run_sync(func, *args, limiter=CapacityLimiter(1))


SessionDep = Annotated[Session, Depends(get_session, scope="function")]
