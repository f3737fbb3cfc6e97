"""Resource limits derived from the settings: what one upload may decode, DB pools."""

from __future__ import annotations

from detection.readers import ReaderLimits
from service.config import Settings
from service.db import EngineOptions
from service.errors import problem
from service.guards import ASGIApp, Receive, Scope, Send


def upload_limits(settings: Settings) -> ReaderLimits:
    """Reader limits for an upload: the decoded-bytes budget and the largest image.

    The image readers compare ``width x height`` from the image header with
    ``max_member_bytes`` before decoding, and the decoded total with
    ``max_bytes`` before allocating the array.
    """
    default = ReaderLimits()
    return ReaderLimits(
        max_bytes=min(default.max_bytes, settings.max_decoded_bytes),
        max_member_bytes=min(default.max_member_bytes, settings.max_image_pixels),
    )


def engine_options(settings: Settings) -> EngineOptions:
    """The API's pool: one connection per request in flight (back-pressure bounds them)."""
    size = settings.db_pool_size or settings.api_max_inflight
    timeout_s = settings.db_timeout_s
    return EngineOptions(
        pool_size=size,
        max_overflow=max(2, size // 4),  # streamed exports hold a second session
        pool_timeout_s=timeout_s,
        sqlite_busy_timeout_ms=int(timeout_s * 1000),
    )


class InflightLimit:
    """Back-pressure: at most ``limit`` requests in flight per process; above, 503 at once.

    A request over the limit gets ``Retry-After`` instead of waiting for a
    thread or a pooled connection (which locked the API up under load).
    Health and metrics are exempt so probes stay responsive.
    """

    EXEMPT = frozenset({"/healthz", "/readyz", "/metrics"})

    def __init__(self, app: ASGIApp, limit: int, retry_after_s: int = 1) -> None:
        self.app = app
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.inflight = 0  # one event loop per process: no lock needed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.EXEMPT:
            await self.app(scope, receive, send)
            return
        if self.inflight >= self.limit:
            headers = {"Retry-After": str(self.retry_after_s)}
            detail = f"the server is busy ({self.limit} requests in flight); retry later"
            await problem(503, detail, instance=scope["path"], headers=headers)(
                scope, receive, send
            )
            return
        self.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1
