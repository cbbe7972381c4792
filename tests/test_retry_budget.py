"""Issue #15: the retry budget (token bucket per vendor, per process or fleet-wide)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from src.error_recovery import CircuitBreaker, ErrorRecoveryMixin
from src.error_recovery.budget import FleetRetryBudget, RetryBudget, process_budget
from src.errors import ServiceUnavailable
from src.settings import SettingsError, settings_from_env
from src.store import MemoryStore, SqliteStore, StoreGuard, open_store

FALLBACK = "I can't pull that up right now."


async def no_sleep(_: float) -> None:
    return None


class Caller(ErrorRecoveryMixin):
    retry_sleep = staticmethod(no_sleep)

    def __init__(self, budget: RetryBudget) -> None:
        # a high threshold: here the budget alone limits the retries
        self.circuit_breakers = {"amp": CircuitBreaker(1000, 30.0, name="amp")}
        self.retry_budgets = {"amp": budget}


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_total_outage_retries_stay_within_the_floor_and_a_fifth(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    budget = RetryBudget("amp", clock=clock)  # floor 10 per 10 s, plus 20 % of requests
    caller = Caller(budget)
    requests = 0

    async def down() -> str:
        nonlocal requests
        requests += 1
        raise ServiceUnavailable("amp", status=503)

    caplog.set_level(logging.INFO, "pandadoc.error_recovery")
    for _ in range(50):
        assert await caller.call_with_retry_and_circuit_breaker("amp", down, FALLBACK) == FALLBACK
    assert budget.firsts == 50
    assert budget.retries <= 10 + 0.2 * budget.firsts  # not the 100 a free hand would make
    assert requests == budget.firsts + budget.retries
    assert "Retry budget for amp spent; not retrying" in caplog.text


async def test_occasional_failures_are_still_retried() -> None:
    budget = RetryBudget("amp")
    caller = Caller(budget)
    n = 0

    async def every_tenth_fails() -> str:
        nonlocal n
        n += 1
        if n % 10 == 0:
            raise ServiceUnavailable("amp", status=503)
        return "data"

    results = [
        await caller.call_with_retry_and_circuit_breaker("amp", every_tenth_fails, FALLBACK)
        for _ in range(300)
    ]
    assert results == ["data"] * 300  # each failure was retried
    assert budget.refused == 0 and budget.retries == n // 10  # one per failed request


async def test_window_arithmetic_floor_plus_percent_refilling_with_time() -> None:
    clock = FakeClock()
    budget = RetryBudget("amp", max_tokens=2, token_ratio=0.5, window_s=10.0, clock=clock)
    for _ in range(4):
        budget.started(retry=False)
    granted = 0
    for _ in range(10):
        await budget.on_failure()
        if budget.may_retry():
            budget.started(retry=True)
            granted += 1
    assert granted == 4  # floor 2 + half of 4 requests
    assert not budget.may_retry()
    clock.now += 10.5  # the window slid past them: the floor is back
    await budget.on_failure()
    assert budget.may_retry()


async def test_a_quiet_clients_blip_is_retried_after_the_fleets_outage(tmp_path: Path) -> None:
    """Issue #23 item 1: an outage drained the fleet's budget (real SQLite, kept across
    restarts); a while later a new process's single blip on the healed vendor is still
    retried (the old bucket never refilled: a new process started full and wrote nothing
    on success, so the stored bucket stayed empty)."""
    clock = FakeClock()
    url = tmp_path / "r.db"
    store = SqliteStore(url, clock=clock)
    outage = Caller(FleetRetryBudget("amp", StoreGuard(store), clock=clock))

    async def down() -> str:
        raise ServiceUnavailable("amp", status=503)

    for _ in range(40):
        await outage.call_with_retry_and_circuit_breaker("amp", down, FALLBACK)
    assert outage.retry_budgets["amp"].refused > 0  # the outage was not multiplied
    await store.aclose()

    clock.now += 60.0  # a minute later, another job process on the same file
    store = SqliteStore(url, clock=clock)
    healthy = Caller(FleetRetryBudget("amp", StoreGuard(store), clock=clock))
    calls = 0

    async def one_blip() -> str:
        nonlocal calls
        calls += 1
        if calls == 6:
            raise ServiceUnavailable("amp", status=503)
        return "data"

    for _ in range(10):
        got = await healthy.call_with_retry_and_circuit_breaker("amp", one_blip, FALLBACK)
        assert got == "data"
    assert healthy.retry_budgets["amp"].retries == 1
    await store.aclose()


async def test_fleet_budget_is_shared_through_a_real_store(store_url: str) -> None:
    store = open_store(store_url)
    here = FleetRetryBudget("amp", StoreGuard(store), max_tokens=3)
    there = FleetRetryBudget("amp", StoreGuard(store), max_tokens=3)
    try:
        granted = 0
        for _ in range(5):
            await here.on_failure()
            if here.may_retry():
                here.started(retry=True)
                granted += 1
        assert granted == 3  # the floor, no requests counted
        await there.on_failure()  # a fresh process sees the fleet's window
        assert not there.may_retry()
    finally:
        await store.aclose()


async def test_fleet_budget_carries_on_locally_when_the_store_fails() -> None:
    store = MemoryStore()
    budget = FleetRetryBudget("amp", StoreGuard(store), max_tokens=1)
    store.fail = True
    await budget.on_failure()
    assert budget.may_retry()  # the local window's floor
    budget.started(retry=True)
    await budget.on_failure()
    assert not budget.may_retry()


def test_budget_settings_and_one_budget_per_vendor_per_process() -> None:
    r = settings_from_env(
        {"RETRY_BUDGET_MAX_TOKENS": "20", "RETRY_BUDGET_TOKEN_RATIO": "0.1"}
    ).resilience
    assert (r.retry_budget_max_tokens, r.retry_budget_token_ratio) == (20, 0.1)
    assert process_budget("amp", 20, 0.1) is process_budget("amp", 20, 0.1)
    with pytest.raises(SettingsError, match="RETRY_BUDGET_TOKEN_RATIO"):
        settings_from_env({"RETRY_BUDGET_TOKEN_RATIO": "0"})


async def test_retries_that_answer_are_given_back_so_a_flapping_vendor_is_always_retried(
    store_url: str,
) -> None:
    """Issue #23: far past the floor, a vendor failing every other request keeps being
    retried (each retry that answers is given back), through a real store."""
    store = open_store(store_url)
    budget = FleetRetryBudget("amp", StoreGuard(store), max_tokens=2)
    caller = Caller(budget)
    n = 0

    async def every_other_fails() -> str:
        nonlocal n
        n += 1
        if n % 2:
            raise ServiceUnavailable("amp", status=503)
        return "data"

    try:
        got = [
            await caller.call_with_retry_and_circuit_breaker("amp", every_other_fails, FALLBACK)
            for _ in range(40)
        ]
    finally:
        await store.aclose()
    assert got == ["data"] * 40
    assert budget.retries == 40 and budget.refused == 0
