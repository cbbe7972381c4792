"""Amplitude's quota and usage cache, fleet-wide through the resilience store (issue #18
item 3): the rules on each real backend, two conversations sharing the hourly budget and
the cache (in one process, and in two real processes), and a Redis that dies and comes
back. The budget is Amplitude's documented default (360 queries/hour, 2 per lookup)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from src.agent import PandaDocTrialistAgent
from src.drill.fleet import FleetJob, run_fleet_async
from src.phrases import USAGE_FALLBACK
from src.sandbox import Sandbox
from src.sandbox.data import TRIAL_USERS
from src.services.wiring import TrialistServices
from src.settings import settings_from_env
from src.state import TrialistData
from src.store import (
    FleetQuotaStore,
    FleetUsageCache,
    MemoryStore,
    ResilienceStore,
    SqliteStore,
    StoreGuard,
    open_store,
)
from src.tools import usage
from tests.fleet_helpers import RedisServer

HOUR = "amplitude:quota:hour"  # VendorLimiter's key for Amplitude's hourly budget
JANE, SAM, MARIA, ALEX = (u.email for u in TRIAL_USERS[:4])


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class NoSleep:
    async def __call__(self, _seconds: float) -> None:
        await asyncio.sleep(0)


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with Sandbox() as s:
        yield s


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[ResilienceStore, Clock | None]]:
    """Each real backend; ``Clock`` when its time can be moved (Redis: server time)."""
    clock = Clock()
    store: ResilienceStore
    if request.param == "memory":
        store = MemoryStore(clock)
    elif request.param == "sqlite":
        store = SqliteStore(tmp_path / "store.db", clock=clock)
    else:
        server = RedisServer(tmp_path / "redis")
        server.start()
        request.addfinalizer(server.stop)
        store = open_store(server.url)
    yield store, (None if request.param == "redis" else clock)
    await store.aclose()


async def test_quota_and_cache_rules_on_each_backend(
    backend: tuple[ResilienceStore, Clock | None],
) -> None:
    store, clock = backend
    # The hourly budget: whole lookups fit, the 361st query does not, nothing is added.
    assert await store.quota_charge(HOUR, 358, 360, 3600)
    assert await store.quota_charge(HOUR, 2, 360, 3600)
    assert not await store.quota_charge(HOUR, 1, 360, 3600)
    assert not await store.quota_charge("other", 361, 360, 3600)
    assert await store.quota_charge("other", 360, 360, 3600)  # keys are separate
    # Concurrency: limit slots, a released one is free again.
    leases = [await store.quota_acquire("slots", 2, 30) for _ in range(3)]
    assert leases[0] and leases[1] and leases[0] != leases[1] and leases[2] is None
    await store.quota_release("slots", str(leases[0]))
    assert await store.quota_acquire("slots", 2, 30) is not None
    # The cache: JSON-able dicts, per key; no TTL keeps nothing.
    facts = {"documents_created": 3, "last_active": "2026-11-28", "templates": ["nda"]}
    await store.cache_put("amplitude:usage:abc", facts, 600)
    await store.cache_put("amplitude:usage:zero", facts, 0)
    assert await store.cache_get("amplitude:usage:abc") == facts
    assert await store.cache_get("amplitude:usage:zero") is None
    assert await store.cache_get("amplitude:usage:nobody") is None
    if clock is None:
        return
    clock.now += 3600.001  # the hour slides, leases expire, the entry lapses
    assert await store.quota_charge(HOUR, 360, 360, 3600)
    assert await store.quota_acquire("slots", 1, 30) is not None
    assert await store.cache_get("amplitude:usage:abc") is None


class Conversation:
    """One conversation as the entry point builds it: its own guard and store connection
    on the shared URL, services on the fleet's quota and cache."""

    def __init__(self, env: dict[str, str], clock: Callable[[], float] | None = None) -> None:
        settings = settings_from_env(env)
        self.guard = StoreGuard(open_store(env["RESILIENCE_STORE_URL"]), clock=clock or Clock())
        self.services = TrialistServices.from_settings(
            settings,
            quota_store=FleetQuotaStore(self.guard),
            usage_cache=FleetUsageCache(self.guard),
        )
        self.agent = PandaDocTrialistAgent(
            self.services, settings, store=self.guard, sleep=NoSleep()
        )

    async def lookup(self, email: str) -> str:
        try:
            # The job's own identity (as in the console): verified, may read its usage.
            return await usage.trial_usage(self.agent, TrialistData(email=email), "")
        except Exception as exc:  # ToolError carries the spoken sentence
            return str(getattr(exc, "message", exc))

    async def aclose(self) -> None:
        await self.services.aclose()
        await self.guard.store.aclose()


async def test_two_conversations_share_the_hourly_budget_and_the_cache(
    sandbox: Sandbox, store_url: str
) -> None:
    env = {**sandbox.env(), "RESILIENCE_STORE_URL": store_url}
    earlier = open_store(store_url)  # the fleet has spent 356 of its 360 queries this hour
    assert await earlier.quota_charge(HOUR, 356, 360, 3600)
    await earlier.aclose()
    a, b = Conversation(env), Conversation(env)
    try:
        said = await a.lookup(JANE)  # queries 357-358
        assert said != USAGE_FALLBACK
        assert len(sandbox.amplitude.requests()) == 2
        assert await b.lookup(JANE) == said  # A's cached answer, no request
        assert len(sandbox.amplitude.requests()) == 2
        assert await b.lookup(SAM) != USAGE_FALLBACK  # queries 359-360
        assert len(sandbox.amplitude.requests()) == 4
        assert await a.lookup(MARIA) == USAGE_FALLBACK  # the 361st: refused, not sent
        assert len(sandbox.amplitude.requests()) == 4
        assert a.guard.healthy and b.guard.healthy
    finally:
        await a.aclose()
        await b.aclose()


async def test_redis_killed_lookups_still_answer_and_sharing_resumes(
    sandbox: Sandbox, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    env = {**sandbox.env(), "RESILIENCE_STORE_URL": server.url}
    clock = Clock()  # the guards' clock: the cool-down passes without waiting
    a, b = Conversation(env, clock), Conversation(env, clock)
    caplog.set_level(logging.WARNING)
    try:
        said = await a.lookup(JANE)
        assert said != USAGE_FALLBACK and len(sandbox.amplitude.requests()) == 2
        server.stop()  # Redis dies: its cache and counters are gone with it
        assert await b.lookup(JANE) == said  # a miss, so a request; the caller hears it
        assert len(sandbox.amplitude.requests()) == 4
        assert await b.lookup(SAM) != USAGE_FALLBACK  # the local quota lets it go
        assert len(sandbox.amplitude.requests()) == 6
        warnings = [r for r in caplog.records if "Resilience store unavailable" in r.message]
        assert len(warnings) == 1  # once a minute, not once per call
        assert "quota store unavailable" not in caplog.text  # no per-call warnings
        assert "usage cache unavailable" not in caplog.text

        server.start()  # back, empty
        clock.now += 5  # past the cool-down
        # A's pooled connection died with the old server: its first call may fail, cool
        # down and reconnect; the caller hears the usage either way.
        assert await a.lookup(MARIA) != USAGE_FALLBACK
        clock.now += 5
        sent = len(sandbox.amplitude.requests())
        assert await b.lookup(ALEX) != USAGE_FALLBACK
        assert len(sandbox.amplitude.requests()) == sent + 2
        assert await a.lookup(ALEX) != USAGE_FALLBACK  # B's answer, from Redis again
        assert len(sandbox.amplitude.requests()) == sent + 2
        assert a.guard.healthy and b.guard.healthy
        shared = open_store(server.url)  # and the budget is counted there again
        assert not await shared.quota_charge(HOUR, 359, 360, 3600)  # ALEX's 2 are in it
        await shared.aclose()
    finally:
        await a.aclose()
        await b.aclose()
        server.stop()


async def test_two_processes_share_the_budget_and_the_cache(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    earlier = open_store(url)
    assert await earlier.quota_charge(HOUR, 358, 360, 3600)
    await earlier.aclose()
    env = {**sandbox.env(), "RESILIENCE_STORE_URL": url}
    first, cached, refused = await run_fleet_async(
        [
            FleetJob(env, lookups=1, email=JANE),  # queries 359-360
            FleetJob(env, lookups=1, email=JANE),  # the first process's answer, cached
            FleetJob(env, lookups=1, email=SAM),  # would be the 361st: refused
        ]
    )
    assert first.said == cached.said and first.said != [USAGE_FALLBACK]
    assert refused.said == [USAGE_FALLBACK]
    assert len(sandbox.amplitude.requests()) == 2  # JANE once, SAM never
