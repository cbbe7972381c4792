"""Issue #15: the retry budget (token bucket per vendor, per process or fleet-wide)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from src.error_recovery import CircuitBreaker, ErrorRecoveryMixin
from src.error_recovery.budget import FleetRetryBudget, RetryBudget, process_budget
from src.errors import ServiceUnavailable
from src.settings import SettingsError, settings_from_env
from src.store import MemoryStore, StoreGuard, open_store

FALLBACK = "I can't pull that up right now."


async def no_sleep(_: float) -> None:
    return None


class Caller(ErrorRecoveryMixin):
    retry_sleep = staticmethod(no_sleep)

    def __init__(self, budget: RetryBudget) -> None:
        # a high threshold: here the budget alone limits the retries
        self.circuit_breakers = {"amp": CircuitBreaker(1000, 30.0, name="amp")}
        self.retry_budgets = {"amp": budget}


async def test_total_outage_retries_stay_under_a_fifth_of_first_attempts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    budget = RetryBudget("amp")
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
    assert budget.retries <= 0.2 * budget.firsts
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


async def test_bucket_arithmetic() -> None:
    budget = RetryBudget("amp", max_tokens=10, token_ratio=0.5)
    for _ in range(4):
        await budget.on_failure()
    assert budget.may_retry()  # 6 > 5
    await budget.on_failure()
    assert not budget.may_retry()  # 5 is not more than half
    await budget.on_success()
    assert budget.may_retry() and budget.tokens == 5.5
    for _ in range(20):
        await budget.on_success()
    assert budget.tokens == 10  # capped


async def test_fleet_budget_is_shared_through_a_real_sqlite_store(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'r.db'}")
    here = FleetRetryBudget("amp", StoreGuard(store))
    there = FleetRetryBudget("amp", StoreGuard(store))
    for _ in range(5):
        await here.on_failure()
    assert not here.may_retry()
    await there.on_failure()  # its first write sees the fleet's count
    assert there.tokens == 4 and not there.may_retry()
    await store.aclose()


async def test_fleet_budget_carries_on_locally_when_the_store_fails() -> None:
    store = MemoryStore()
    budget = FleetRetryBudget("amp", StoreGuard(store))
    await budget.on_failure()
    store.fail = True
    await budget.on_failure()
    assert budget.tokens == 8


def test_budget_settings_and_one_budget_per_vendor_per_process() -> None:
    r = settings_from_env(
        {"RETRY_BUDGET_MAX_TOKENS": "20", "RETRY_BUDGET_TOKEN_RATIO": "0.1"}
    ).resilience
    assert (r.retry_budget_max_tokens, r.retry_budget_token_ratio) == (20, 0.1)
    assert process_budget("amp", 20, 0.1) is process_budget("amp", 20, 0.1)
    with pytest.raises(SettingsError, match="RETRY_BUDGET_TOKEN_RATIO"):
        settings_from_env({"RETRY_BUDGET_TOKEN_RATIO": "0"})
