from collections.abc import Iterator

import pytest
import torch

from tests.service.support import (  # noqa: F401
    backend,
    client,
    postgres_url,
    queue_size,
    redis_db,
    settings,
)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Jobs here run in the test process: train on one CPU thread, as CI's budget assumes."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
