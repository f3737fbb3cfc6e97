"""Property-based tests over the served OpenAPI document (schemathesis), bounded in time.

Every operation gets generated requests, valid and invalid; no response may be a
5xx, and each must match the document: a documented status, its media type
and its schema.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.main import create_app
from tests.service.support import make_settings

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


MAX_EXAMPLES = 15  # per operation: bounded in time for CI


def test_no_server_error_and_every_response_matches_the_document(tmp_path: Path) -> None:
    app_settings = make_settings("sqlite", tmp_path, redis_db=0, pg_url=None)
    app = create_app(app_settings, enqueue=lambda job_id: None)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result  # every operation's schema loads
        operations.append(result.ok())
    assert len(operations) >= 15

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def check(case: schemathesis.Case[Any]) -> None:
            case.call_and_validate(checks=CHECKS)

        check()
