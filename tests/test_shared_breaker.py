"""Shared circuit breakers in one process: several breakers (conversations) on one store.
The cross-process claims are in test_fleet.py; these pin the rules and the store outage."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from src.agent import PandaDocTrialistAgent
from src.error_recovery import CircuitBreaker, CircuitState
from src.errors import CircuitOpenError, ServiceUnavailable
from src.phrases import USAGE_FALLBACK
from src.sandbox import FaultKind, Sandbox
from src.services.wiring import TrialistServices
from src.settings import settings_from_env
from src.state import TrialistData
from src.store import MemoryStore, StoreGuard, open_store
from src.store.base import Mutation, R, Record
from src.tools import usage
from tests.fleet_helpers import RedisServer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingStore(MemoryStore):
    """A memory store that counts round trips."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.reads = 0
        self.writes = 0

    async def _read(self, name: str) -> tuple[Record, float]:
        self.reads += 1
        return await super()._read(name)

    async def _mutate(self, name: str, fn: Mutation[R]) -> tuple[R, Record, float]:
        self.writes += 1
        return await super()._mutate(name, fn)


async def fail() -> None:
    raise ServiceUnavailable("amplitude", "down")


async def ok() -> str:
    return "ok"


def breaker(store: MemoryStore, clock: Clock) -> CircuitBreaker:
    return CircuitBreaker(3, 30.0, name="amp", clock=clock, store=StoreGuard(store, clock=clock))


async def test_failures_of_different_conversations_add_up_and_everyone_sees_open() -> None:
    clock = Clock()
    store = CountingStore(clock)
    a, b, c = (breaker(store, clock) for _ in range(3))
    for conversation in (a, b):
        with pytest.raises(ServiceUnavailable):
            await conversation.call(fail)
    assert a.state is b.state is CircuitState.CLOSED
    with pytest.raises(ServiceUnavailable):
        await c.call(fail)
    assert c.state is CircuitState.OPEN  # the third failure, whoever made it
    clock.now += 0.3  # a and b trust their cached view for share_ttl (0.25 s) only
    for other in (a, b):
        with pytest.raises(CircuitOpenError):
            await other.call(ok)
        assert other.state is CircuitState.OPEN


async def test_closed_success_path_does_not_touch_the_store_within_the_ttl() -> None:
    clock = Clock()
    store = CountingStore(clock)
    b = breaker(store, clock)
    for _ in range(50):
        assert await b.call(ok) == "ok"
    assert store.reads == 1 and store.writes == 0
    clock.now += 0.3
    await b.call(ok)
    assert store.reads == 2 and store.writes == 0


async def test_one_transient_failure_never_opens_and_success_clears_the_count() -> None:
    clock = Clock()
    store = CountingStore(clock)
    a, b = breaker(store, clock), breaker(store, clock)
    for _ in range(5):
        with pytest.raises(ServiceUnavailable):
            await a.call(fail)
        assert await a.call(ok) == "ok"
        clock.now += 0.3
    assert a.state is CircuitState.CLOSED and a.failure_count == 0
    assert (await store.breaker_view("amp", 30.0)).failures == 0
    await b.call(ok)
    assert b.state is CircuitState.CLOSED


async def test_one_probe_fleet_wide_and_its_success_closes_everywhere() -> None:
    clock = Clock()
    store = MemoryStore(clock)
    fleet = [breaker(store, clock) for _ in range(5)]
    for _ in range(3):
        with pytest.raises(ServiceUnavailable):
            await fleet[0].call(fail)
    clock.now += 31
    gate = asyncio.Event()
    calls = 0

    async def probe() -> str:
        nonlocal calls
        calls += 1
        await gate.wait()
        return "up"

    tasks = [asyncio.create_task(b.call(probe)) for b in fleet]
    await asyncio.sleep(0.01)
    gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert calls == 1
    assert sum(isinstance(r, CircuitOpenError) for r in results) == 4
    clock.now += 0.3
    for b in fleet:
        assert await b.call(ok) == "ok" and b.state is CircuitState.CLOSED


async def test_a_dead_probe_lease_expires() -> None:
    clock = Clock()
    store = MemoryStore(clock)
    a, b = breaker(store, clock), breaker(store, clock)
    a.probe_lease = b.probe_lease = 10.0
    for _ in range(3):
        with pytest.raises(ServiceUnavailable):
            await a.call(fail)
    clock.now += 31
    assert await a.admit()  # a's process takes the probe... and dies
    with pytest.raises(CircuitOpenError):
        await b.admit()
    clock.now += 11
    assert await b.admit()  # the lease expired: b probes
    await b.on_success(probe=1)
    clock.now += 0.3
    await a.refresh()
    assert b.state is CircuitState.CLOSED


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with Sandbox() as s:
        yield s


class NoSleep:
    async def __call__(self, _seconds: float) -> None:
        await asyncio.sleep(0)


async def test_redis_killed_mid_conversation_tools_answer_and_sharing_resumes(
    sandbox: Sandbox, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    clock = Clock()
    # No usage cache: every lookup must reach the (shared) breaker.
    env = {**sandbox.env(), "RESILIENCE_STORE_URL": server.url, "AMPLITUDE_USAGE_CACHE_TTL": "0"}
    settings = settings_from_env(env)
    settings = dataclasses.replace(
        settings, resilience=dataclasses.replace(settings.resilience, service_timeout=1.0)
    )
    opened: list[Any] = []

    def conversation() -> tuple[PandaDocTrialistAgent, StoreGuard]:
        guard = StoreGuard(open_store(server.url), clock=clock)
        agent = PandaDocTrialistAgent(
            TrialistServices.from_settings(settings), settings, store=guard, sleep=NoSleep()
        )
        opened.append((agent, guard))
        return agent, guard

    async def lookup(agent: PandaDocTrialistAgent) -> str:
        data = TrialistData(email=env["TRIALIST_EMAIL"])
        try:
            return await usage.trial_usage(agent, data, "")
        except Exception as exc:  # ToolError carries the spoken sentence
            return str(getattr(exc, "message", exc))

    caplog.set_level(logging.WARNING, logger="pandadoc.store")
    try:
        first, _ = conversation()
        assert await lookup(first) != USAGE_FALLBACK  # healthy, shared store up
        server.stop()  # Redis dies mid-conversation
        assert await lookup(first) != USAGE_FALLBACK  # the tool still answers
        sandbox.amplitude.inject("*", FaultKind.SERVICE_UNAVAILABLE)
        assert await lookup(first) == USAGE_FALLBACK  # honest fallback, local breaker
        assert first.circuit_breakers["amplitude"].state is CircuitState.OPEN
        warnings = [r for r in caplog.records if "local state" in r.getMessage()]
        assert len(warnings) == 1  # one warning, not one per call

        server.start()  # back (empty: nothing was saved)
        clock.now += 5  # past the cool-down
        second, _ = conversation()
        sent = len(sandbox.amplitude.requests())
        assert await lookup(second) == USAGE_FALLBACK
        assert len(sandbox.amplitude.requests()) == sent + 3  # opened the shared circuit
        third, _ = conversation()
        assert await lookup(third) == USAGE_FALLBACK
        assert len(sandbox.amplitude.requests()) == sent + 3  # sharing resumed
    finally:
        for agent, guard in opened:
            await agent.services.aclose()
            await guard.store.aclose()
        server.stop()
