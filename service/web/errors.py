"""Errors on HTML pages are HTML: the problem+json handlers answer everything else.

:func:`install_html_errors` wraps the handlers that
:func:`service.errors.install_problem_handlers` registered: a request for a
page (``/ui...`` or ``.../report.html``) gets an HTML error page with the same
status and detail; any other request gets the problem+json response as before.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.exceptions import HTTPException
from starlette.responses import Response

from service.errors import ServiceError
from service.web.templating import render

log = logging.getLogger(__name__)
Handler = Callable[[Request, Exception], Awaitable[Response]]
AnyHandler = Callable[[Request, Any], Response | Awaitable[Response]]


def is_page(request: Request) -> bool:
    path = request.url.path
    if path.startswith("/ui/static/"):
        return False
    return path == "/ui" or path.startswith("/ui/") or path.endswith(".html")


def status_and_detail(exc: Exception) -> tuple[int, str]:
    if isinstance(exc, ServiceError):
        return exc.status, exc.detail
    if isinstance(exc, HTTPException):
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        return exc.status_code, detail
    if isinstance(exc, RequestValidationError):
        parts = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        return 422, "; ".join(parts)
    return 500, "An unexpected error occurred."


def error_page(request: Request, exc: Exception) -> Response:
    """The HTML error page; a page that needs an API key redirects to the login form."""
    status, detail = status_and_detail(exc)
    if status == 401:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/ui/login?next={quote(target, safe='')}", status_code=303)
    if status >= 500:
        log.exception("error on page %s", request.url.path, exc_info=exc)
    html = render(
        "error.html",
        status=status,
        title=HTTPStatus(status).phrase,
        detail=detail,
        path=request.url.path,
    )
    headers = exc.headers if isinstance(exc, ServiceError) else None
    return HTMLResponse(html, status_code=status, headers=headers)


def _wrap(previous: AnyHandler) -> Handler:
    async def handler(request: Request, exc: Exception) -> Response:
        if is_page(request):
            return error_page(request, exc)
        response = previous(request, exc)
        return await response if inspect.isawaitable(response) else response

    return handler


def install_html_errors(app: FastAPI) -> None:
    for cls in (HTTPException, ServiceError, RequestValidationError, Exception):
        previous = app.exception_handlers.get(cls)
        if previous is not None:
            app.add_exception_handler(cls, _wrap(previous))
