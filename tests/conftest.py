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


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A shared resilience store of each kind that spans hosts or processes: a SQLite file,
    and a real redis-server (stopped after the test)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fleet.db'}"
    server = RedisServer(tmp_path / "redis")
    server.start()
    request.addfinalizer(server.stop)
    return server.url


@pytest.fixture(autouse=True)
def fresh_process_protection() -> Iterator[None]:
    """Issue #15: each test starts as a fresh worker process (no shared sliding windows,
    bulkheads or retry budgets left over from another test)."""
    from src.error_recovery.protection import reset_process_protection

    reset_process_protection()
    yield
    reset_process_protection()
