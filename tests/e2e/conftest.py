from tests.service.support import (  # noqa: F401
    backend,
    client,
    postgres_url,
    queue_size,
    redis_db,
    settings,
)
