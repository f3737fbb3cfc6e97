"""Domain errors of the service layer, and RFC 9457 problem details for every error response.

The service layer (``service/jobs.py``, ``datasets.py``, ``scores.py``) raises
:class:`ServiceError` subclasses (:class:`NotFound`, :class:`Conflict`,
:class:`InvalidInput`, ...) and knows nothing of HTTP; :func:`install_problem_handlers`
maps each to its status here, once, for every router (and pages to come).
"""

from __future__ import annotations

import json
import logging
import math
from http import HTTPStatus
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

PROBLEM_JSON = "application/problem+json"
log = logging.getLogger(__name__)


class ProblemResponse(JSONResponse):
    media_type = PROBLEM_JSON

    def render(self, content: Any) -> bytes:
        # Errors echo the input, which may hold NaN or infinities: strict JSON has neither.
        return super().render(_json_finite(content))


def _json_finite(value: Any) -> Any:
    """``value`` with non-finite floats as strings (``"nan"``, ``"inf"``)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_finite(v) for v in value]
    return value


def problem(
    status: int,
    detail: str | None = None,
    *,
    instance: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    type_: str = "about:blank",
    headers: dict[str, str] | None = None,
) -> ProblemResponse:
    body: dict[str, Any] = {"type": type_, "title": HTTPStatus(status).phrase, "status": status}
    if detail is not None:
        body["detail"] = detail
    if instance is not None:
        body["instance"] = instance
    if errors is not None:
        body["errors"] = errors
    return ProblemResponse(body, status_code=status, headers=headers)


class ServiceError(Exception):
    """A request the service refuses; ``status`` is its HTTP status, mapped in one place.

    ``errors`` are pydantic-style ``{"loc", "msg", "type"}`` entries naming the fields at fault.
    """

    status: ClassVar[int] = 400

    def __init__(
        self,
        detail: str,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.headers = headers


class Unauthorized(ServiceError):
    """No API key, or one that is unknown or revoked (auth on)."""

    status = 401

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer realm="poisonscan"'})


class QuotaExceeded(ServiceError):
    """A per-key quota (active jobs, uploads per minute, stored bytes); retry after a while."""

    status = 429

    def __init__(self, detail: str, retry_after_s: int) -> None:
        super().__init__(detail, headers={"Retry-After": str(max(1, int(retry_after_s)))})


class NotFound(ServiceError):
    """No dataset / job with that id."""

    status = 404


class Conflict(ServiceError):
    """The resource's state does not allow it (e.g. cancelling a finished job)."""

    status = 409


class TooLarge(ServiceError):
    """An upload above the configured limit."""

    status = 413


class InvalidInput(ServiceError):
    """Well-formed but unacceptable input: bad params, a dataset that does not read, ..."""

    status = 422


class Unavailable(ServiceError):
    """A backing service (the broker) cannot be reached."""

    status = 503


def field_error(loc: list[str | int], msg: str, type_: str) -> dict[str, Any]:
    """One entry of a problem's ``errors`` list."""
    return {"loc": loc, "msg": msg, "type": type_}


def validation_errors(exc: ValidationError, prefix: tuple[str | int, ...] = ()) -> list[Any]:
    """JSON-safe pydantic errors, their ``loc`` prefixed (e.g. ``("body", "params")``)."""
    errors: list[dict[str, Any]] = json.loads(exc.json(include_url=False))
    for err in errors:
        err["loc"] = [*prefix, *err.get("loc", [])]
    return errors


def _instance(request: Request) -> str:
    return request.url.path


async def _http_exception(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, HTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
    headers = dict(exc.headers) if exc.headers else None
    return problem(exc.status_code, detail, instance=_instance(request), headers=headers)


async def _service_error(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, ServiceError)
    return problem(
        exc.status, exc.detail, instance=_instance(request), errors=exc.errors, headers=exc.headers
    )


async def _request_validation(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, RequestValidationError)
    errors = json.loads(json.dumps(list(exc.errors()), default=str))
    return problem(422, "Request validation failed.", instance=_instance(request), errors=errors)


async def _unexpected(request: Request, exc: Exception) -> ProblemResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem(500, "An unexpected error occurred.", instance=_instance(request))


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(HTTPException, _http_exception)
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _request_validation)
    app.add_exception_handler(Exception, _unexpected)
