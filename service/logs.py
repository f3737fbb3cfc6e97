"""JSON logs that carry the request id (``X-Request-ID``) and the job id.

:class:`RequestIdMiddleware` takes the client's ``X-Request-ID`` (or makes
one), echoes it on the response and keeps it in a context variable for the
request; the worker sets the job id the same way (:func:`job_context`).
:func:`configure` installs a python-json-logger formatter whose records
carry both ids.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from pythonjsonlogger.json import JsonFormatter

from service.guards import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
JOB_ID: ContextVar[str | None] = ContextVar("job_id", default=None)
HEADER = b"x-request-id"
VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class ContextIds(logging.Filter):
    """Adds ``request_id`` and ``job_id`` to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        record.job_id = getattr(record, "job_id", None) or JOB_ID.get()
        return True


def json_handler() -> logging.Handler:
    """A stderr handler writing one JSON object per record."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter(FORMAT, rename_fields={"levelname": "level"}))
    handler.addFilter(ContextIds())
    return handler


def configure(level: int = logging.INFO) -> None:
    """Root logger -> one JSON line per record on stderr (API and worker processes)."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(json_handler())
    root.setLevel(level)


@contextmanager
def job_context(job_id: str) -> Iterator[None]:
    """Log records inside the block carry ``job_id``."""
    token = JOB_ID.set(job_id)
    try:
        yield
    finally:
        JOB_ID.reset(token)


class RequestIdMiddleware:
    """Keep (or make) the request id, expose it to logs, echo it as ``X-Request-ID``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = _incoming(scope) or uuid.uuid4().hex
        token = REQUEST_ID.set(rid)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (HEADER, rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            REQUEST_ID.reset(token)


def _incoming(scope: Scope) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == HEADER:
            rid = str(value.decode("latin-1"))
            return rid if VALID_ID.match(rid) else None
    return None
