"""Hardening: bad input becomes a 4xx, infrastructure faults a 503/507, never a 500.

- :class:`RequestGuard` (ASGI middleware) refuses NUL bytes in the path or query
  and bodies above the limit: a declared ``Content-Length`` at once, a chunked
  body while it streams (413 before the whole body is stored).
- :func:`install_fault_handlers` maps database and disk faults to problems:
  values the database cannot store -> 422; the database unreachable, locked or
  its pool exhausted -> 503; disk full -> 507; both with ``Retry-After``.
- :func:`check_finite` refuses NaN and infinities anywhere in a JSON value.
"""

from __future__ import annotations

import errno
import logging
import math
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI, Request
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException

from service.errors import InvalidInput, ProblemResponse, field_error, problem

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
RESOURCE_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN})
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class RequestGuard:
    """Refuse NUL bytes in the URL (422) and bodies above ``max_body_bytes`` (413).

    (FastAPI's own ``max_body_size`` answers a declared size in plain text, outside
    the problem handlers; this one raises an ``HTTPException`` they render.)
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        if scope["method"] in BODY_METHODS:
            receive = self._capped(receive)
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope) -> ProblemResponse | None:
        path: str = scope["path"]
        if "\x00" in path or b"%00" in scope.get("query_string", b""):
            return problem(422, "NUL bytes are not allowed in the URL", instance=_safe(path))
        length = _header(scope, b"content-length")
        declared = int(length) if length.isdigit() else 0
        if scope["method"] in BODY_METHODS and declared > self.max_body_bytes:
            detail = f"request body exceeds {self.max_body_bytes} bytes"
            return problem(413, detail, instance=path)
        return None

    def _capped(self, receive: Receive) -> Receive:
        seen = 0

        async def capped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    raise HTTPException(413, f"request body exceeds {self.max_body_bytes} bytes")
            return message

        return capped


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return ""


def _safe(path: str) -> str:
    return path.replace("\x00", "\\u0000")


def is_infrastructure_fault(exc: BaseException) -> bool:
    """A fault of the server (disk, file handles), not of the input."""
    return isinstance(exc, OSError) and exc.errno in DISK_FULL | RESOURCE_EXHAUSTED | {errno.EIO}


def check_finite(value: Any, loc: tuple[str | int, ...]) -> None:
    """:class:`InvalidInput` when ``value`` holds NaN or an infinity (JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        msg = "numbers must be finite (NaN and infinities are not JSON)"
        raise InvalidInput(msg, [field_error(list(loc), msg, "finite_number")])
    if isinstance(value, dict):
        for key, item in value.items():
            check_finite(item, (*loc, str(key)))
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            check_finite(item, (*loc, i))


# --- exception handlers -------------------------------------------------------


def retry_problem(
    request: Request, status: int, detail: str, retry_after_s: int
) -> ProblemResponse:
    headers = {"Retry-After": str(retry_after_s)}
    return problem(status, detail, instance=_safe(request.url.path), headers=headers)


async def _unstorable(request: Request, exc: Exception) -> ProblemResponse:
    # NUL in a string on PostgreSQL, an integer beyond the column's range, ...
    log.info("refused a value the database cannot store: %s", exc)
    detail = "a value in the request cannot be stored (out of range or contains NUL bytes)"
    return problem(422, detail, instance=_safe(request.url.path))


async def _database_unavailable(request: Request, exc: Exception) -> ProblemResponse:
    log.warning("database unavailable on %s: %s", request.url.path, exc)
    return retry_problem(request, 503, "the database is unavailable or busy; retry later", 5)


async def _os_error(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, OSError)
    if exc.errno in DISK_FULL:
        log.error("storage full on %s: %s", request.url.path, exc)
        return retry_problem(request, 507, "insufficient storage on the server; retry later", 60)
    if exc.errno in RESOURCE_EXHAUSTED:
        log.warning("resources exhausted on %s: %s", request.url.path, exc)
        return retry_problem(request, 503, "the server is out of resources; retry later", 5)
    log.exception("unhandled OS error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem(500, "An unexpected error occurred.", instance=_safe(request.url.path))


def install_fault_handlers(app: FastAPI) -> None:
    """Register after :func:`service.errors.install_problem_handlers`."""
    app.add_exception_handler(sa_exc.DataError, _unstorable)
    app.add_exception_handler(OverflowError, _unstorable)
    for unavailable in (
        sa_exc.OperationalError,
        sa_exc.InterfaceError,
        sa_exc.DisconnectionError,
        sa_exc.TimeoutError,
    ):
        app.add_exception_handler(unavailable, _database_unavailable)
    app.add_exception_handler(OSError, _os_error)
