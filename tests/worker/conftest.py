import pytest

from tests.service.support import (  # noqa: F401
    backend,
    client,
    postgres_url,
    queue_size,
    settings,
)


@pytest.fixture
def redis_db() -> int:
    """Worker tests use their own Redis database so they never share a queue."""
    return 12
