from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fleet_helpers import RedisServer


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server on a free port, in a temp dir; killed after the test."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()
