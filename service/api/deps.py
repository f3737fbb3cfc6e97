"""``Annotated`` dependency aliases shared by the routers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from service.config import Settings
from service.db import SessionDep
from service.queue import JobQueue
from service.storage import LocalStorage

__all__ = ["IdempotencyKey", "QueueDep", "SessionDep", "SettingsDep", "StorageDep"]


def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_storage(request: Request) -> LocalStorage:
    storage: LocalStorage = request.app.state.storage
    return storage


def get_queue(request: Request) -> JobQueue:
    queue: JobQueue = request.app.state.queue
    return queue


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
StorageDep = Annotated[LocalStorage, Depends(get_storage)]
QueueDep = Annotated[JobQueue, Depends(get_queue)]

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=255,
        description="Repeat a POST safely: the same key and body return the first outcome; "
        "the same key with another body is 409.",
    ),
]
