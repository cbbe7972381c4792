"""The resilience store backends (memory, SQLite file, real redis-server) obey the same
breaker rules and outbox claims; the guard turns store failures into local fallbacks."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from src.store import (
    MemoryStore,
    ResilienceStore,
    SqliteStore,
    StoreError,
    StoreGuard,
    open_store,
    validate_store_url,
)
from tests.fleet_helpers import RedisServer


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ResilienceStore]:
    server: RedisServer | None = None
    if request.param == "memory":
        s: ResilienceStore = MemoryStore()
    elif request.param == "sqlite":
        s = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    else:
        server = RedisServer(tmp_path / "redis")
        server.start()
        s = open_store(server.url)
    try:
        yield s
    finally:
        await s.aclose()
        if server is not None:
            server.stop()


async def test_failures_open_at_threshold_and_success_resets(store: ResilienceStore) -> None:
    assert (await store.breaker_failure("amp", 3, 30.0))[0] is False
    await store.breaker_success("amp")  # consecutive: a success in between clears
    for _ in range(2):
        opened, view = await store.breaker_failure("amp", 3, 30.0)
        assert not opened and view.state == "closed"
    opened, view = await store.breaker_failure("amp", 3, 30.0)
    assert opened and view.state == "open" and 29.0 < view.retry_in <= 30.0
    # Further failures while open change nothing and do not "open" again.
    assert (await store.breaker_failure("amp", 3, 30.0))[0] is False
    assert (await store.breaker_view("other", 30.0)).state == "closed"


async def test_one_probe_lease_then_close(store: ResilienceStore) -> None:
    for _ in range(3):
        await store.breaker_failure("sf", 3, 0.0)
    tokens = await asyncio.gather(*(store.breaker_probe("sf", 0.0, 5.0) for _ in range(8)))
    granted = [t for t, _ in tokens if t]
    assert len(granted) == 1
    assert await store.breaker_probe_done("sf", "not-the-token", True) == "half_open"
    assert await store.breaker_probe_done("sf", granted[0], True) == "closed"
    assert (await store.breaker_view("sf", 0.0)).failures == 0


async def test_probe_failure_reopens_and_expired_lease_is_retaken(
    store: ResilienceStore,
) -> None:
    for _ in range(3):
        await store.breaker_failure("hs", 3, 0.0)
    token, _ = await store.breaker_probe("hs", 0.0, 5.0)
    assert await store.breaker_probe_done("hs", token, False) == "open"
    dead, _ = await store.breaker_probe("hs", 0.0, 0.0)  # a probe whose lease ends at once
    assert dead
    again, view = await store.breaker_probe("hs", 0.0, 5.0)  # its process "died"
    assert again and again != dead and view.state == "half_open" and view.probing


async def test_outbox_claims_are_exclusive_and_released(store: ResilienceStore) -> None:
    await store.outbox_put("w1", '{"n": 1}')
    await store.outbox_put("w2", '{"n": 2}')
    await store.outbox_put("w1", '{"n": "dup"}')  # idempotent on the id
    first, second = await asyncio.gather(store.outbox_claim(10, 30.0), store.outbox_claim(10, 30.0))
    assert sorted(i.id for i in first + second) == ["w1", "w2"]
    await store.outbox_release("w1", '{"n": 1, "attempts": 1}')
    await store.outbox_done("w2")
    again = await store.outbox_claim(10, 30.0)
    assert [(i.id, i.payload) for i in again] == [("w1", '{"n": 1, "attempts": 1}')]
    assert [i.id for i in await store.outbox_list()] == ["w1"]


def test_store_urls_are_validated() -> None:
    for good in ("sqlite:///tmp/x.db", "redis://localhost:6379/0", "rediss://h", "memory://"):
        assert validate_store_url(good) == good
    for bad in ("", "postgres://x", "sqlite://", "redis://", "/tmp/x.db"):
        with pytest.raises(ValueError):
            validate_store_url(bad)


async def test_unwritable_sqlite_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    store = SqliteStore(blocker / "store.db")
    with pytest.raises(StoreError):
        await store.breaker_view("amp", 30.0)
    await store.aclose()


async def test_guard_warns_once_cools_down_and_recovers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    store = MemoryStore()
    guard = StoreGuard(store, cool_down=2.0, clock=lambda: now[0])
    store.fail = True
    caplog.set_level(logging.WARNING, logger="pandadoc.store")
    for _ in range(3):
        with pytest.raises(StoreError):
            await guard.run(lambda: store.breaker_view("amp", 30.0))
    store.fail = False
    with pytest.raises(StoreError):  # still cooling down: no store call at all
        await guard.run(lambda: store.breaker_view("amp", 30.0))
    now[0] = 2.5
    assert (await guard.run(lambda: store.breaker_view("amp", 30.0))).state == "closed"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "local state" in warnings[0].getMessage()


async def test_unknown_writes_are_remembered_with_a_ttl(store: ResilienceStore) -> None:
    """A write without a lookup whose outcome is unknown (src/registry/kinds.py): every
    backend remembers its key, apart from the usage cache's keys, for the TTL."""
    assert not await store.unknown_write_seen("k1")
    await store.unknown_write_put("k1", 60.0)
    assert await store.unknown_write_seen("k1")
    assert not await store.unknown_write_seen("k2")
    assert await store.cache_get("k1") is None  # its own prefix, not a cache entry
    await store.unknown_write_put("k3", 0.0)  # no time to live: nothing kept
    assert not await store.unknown_write_seen("k3")
