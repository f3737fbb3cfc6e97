"""``Annotated`` dependency aliases shared by the routers."""

from __future__ import annotations

from typing import Annotated

from anyio import to_thread
from fastapi import Depends, Header, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from service import auth
from service.auth import Principal
from service.config import Settings
from service.db import SessionDep
from service.queue import JobQueue
from service.storage import LocalStorage

__all__ = [
    "IdempotencyKey",
    "PrincipalDep",
    "QueueDep",
    "SessionDep",
    "SettingsDep",
    "StorageDep",
]
# The dashboard's login form stores the key in this HttpOnly cookie (service/web/login.py).
KEY_COOKIE = "poisonscan_key"
AUTH_NOTE = "Required when the server runs with POISONSCAN_AUTH_ENABLED=true."
bearer_scheme = HTTPBearer(
    auto_error=False, scheme_name="bearer", description=f"An API key. {AUTH_NOTE}"
)
api_key_scheme = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    scheme_name="apiKey",
    description=f"The same API key in a header of its own. {AUTH_NOTE}",
)


async def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_storage(request: Request) -> LocalStorage:
    storage: LocalStorage = request.app.state.storage
    return storage


async def get_queue(request: Request) -> JobQueue:
    queue: JobQueue = request.app.state.queue
    return queue


SettingsDep = Annotated[Settings, Depends(get_app_settings)]


async def get_principal(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    api_key: Annotated[str | None, Depends(api_key_scheme)],
) -> Principal:
    """Who the request acts as; 401 (problem+json, ``WWW-Authenticate``) without a valid key.

    With auth off every request is the admin of tenant ``default``. The
    dashboard's cookie counts for reads only (GET/HEAD): a page on another
    site cannot make a browser change anything with it.
    """
    if not settings.auth_enabled:
        return auth.OPEN
    token = bearer.credentials if bearer is not None else api_key
    if token is None and request.method in ("GET", "HEAD"):
        token = request.cookies.get(KEY_COOKIE)
    return await to_thread.run_sync(auth.authenticate, session, token, settings)


PrincipalDep = Annotated[Principal, Depends(get_principal)]
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
