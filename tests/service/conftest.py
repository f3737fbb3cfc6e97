from tests.service.support import (  # noqa: F401
    backend,
    client,
    moto_s3,
    postgres_url,
    queue_size,
    redis_db,
    settings,
)
