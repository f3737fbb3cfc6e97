"""Resource limits derived from the settings: what one upload may decode, DB pools."""

from __future__ import annotations

from detection.readers import ReaderLimits
from service.config import Settings
from service.db import EngineOptions


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
