"""OpenAPI ``responses`` entries: every error is RFC 9457 problem+json, documented as sent."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from service.errors import PROBLEM_JSON

PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}

WHY: dict[int, str] = {
    400: "Malformed request.",
    404: "No such dataset or job.",
    409: "The resource's state does not allow it (or an Idempotency-Key was reused).",
    401: "No API key, or an unknown or revoked one (auth on); see `WWW-Authenticate`.",
    413: "The upload exceeds the size limit.",
    422: "Invalid input: the fields at fault are in `errors`.",
    429: "A quota of the API key is used up; retry after `Retry-After` seconds.",
    503: "A backing service (database or broker) is unavailable.",
}


def problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries for ``codes``, each a problem+json body."""
    return {
        code: {
            "description": WHY.get(code, HTTPStatus(code).phrase),
            "content": {PROBLEM_JSON: {"schema": PROBLEM_REF}},
        }
        for code in codes
    }


def binary(media_type: str, description: str) -> dict[str, Any]:
    """A 200 whose body is a file of ``media_type``."""
    schema = {"type": "string", "format": "binary"}
    return {"description": description, "content": {media_type: {"schema": schema}}}
