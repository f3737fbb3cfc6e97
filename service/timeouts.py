"""Read timeouts: a slow client cannot hold a connection (and a thread) forever.

- :class:`BodyTimeout` (ASGI middleware): the whole request body must arrive
  within ``body_timeout_s`` of the request's start, else 408 problem+json with
  ``Connection: close``. A byte a second never finishes an upload; without a
  deadline it would pin a worker thread and a staged file for as long as the
  client likes.
- :class:`HeaderTimeoutProtocol` (uvicorn's httptools protocol, ``poisonscan
  serve``): the request line and headers must arrive within ``header_timeout_s``
  of the connection (or of the request's first byte), else the connection is
  closed. uvicorn times out idle keep-alive connections but not slow headers,
  which never reach the application.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.exceptions import HTTPException
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.config import get_settings
from service.guards import BODY_METHODS, ASGIApp, Message, Receive, Scope, Send


class BodyTimeout:
    """408 when a request body is not complete ``timeout_s`` after the request began."""

    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        await self.app(scope, self._timed(receive), send)

    def _timed(self, receive: Receive) -> Receive:
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        complete = False

        async def timed() -> Message:
            nonlocal complete
            if complete:  # later reads wait for a disconnect: no deadline
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                detail = f"the request body did not arrive within {self.timeout_s:g} s"
                raise HTTPException(408, detail, headers={"Connection": "close"}) from None
            complete = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        return timed


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, closing connections whose headers are too slow."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout_s = get_settings().header_timeout_s
        self._header_timer: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._expired)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expired(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.logger.warning("closed a connection whose request headers were too slow")
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)
