"""Issue #15: the per-vendor bulkhead (a cap on calls in flight per process)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from src.error_recovery import CircuitBreaker, ErrorRecoveryMixin
from src.error_recovery.bulkhead import Bulkhead, BulkheadFull, process_bulkhead
from src.settings import settings_from_env

FALLBACK = "I can't pull that up right now."


class Caller(ErrorRecoveryMixin):
    def __init__(self, bulkhead: Bulkhead) -> None:
        self.circuit_breakers = {"amp": CircuitBreaker(3, 30.0, name="amp")}
        self.bulkheads = {"amp": bulkhead}


async def test_over_the_cap_a_caller_gets_the_fallback_and_the_vendor_is_not_called(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caller = Caller(Bulkhead("amp", max_concurrent=2, max_wait=0.0))
    release = asyncio.Event()
    started = 0

    async def slow_vendor() -> str:
        nonlocal started
        started += 1
        await release.wait()
        return "data"

    first = asyncio.create_task(
        caller.call_with_retry_and_circuit_breaker("amp", slow_vendor, FALLBACK)
    )
    second = asyncio.create_task(
        caller.call_with_retry_and_circuit_breaker("amp", slow_vendor, FALLBACK)
    )
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert started == 2
    caplog.set_level(logging.WARNING, "pandadoc.error_recovery")
    third = await caller.call_with_retry_and_circuit_breaker("amp", slow_vendor, FALLBACK)
    assert third == FALLBACK and started == 2
    assert "Bulkhead for amp full (2 calls in flight); using the fallback" in caplog.text
    release.set()
    assert await first == "data" and await second == "data"
    assert caller.circuit_breakers["amp"].failure_count == 0  # a full bulkhead is not a failure
    assert caller.bulkheads["amp"].peak == 2 and caller.bulkheads["amp"].in_flight == 0
    assert await caller.call_with_retry_and_circuit_breaker("amp", slow_vendor, FALLBACK) == "data"


async def test_a_waiting_caller_takes_the_slot_that_frees_up() -> None:
    bulkhead = Bulkhead("amp", max_concurrent=1, max_wait=30.0)  # an upper bound only
    holding = asyncio.Event()
    release = asyncio.Event()

    async def hold() -> None:
        async with bulkhead.slot():
            holding.set()
            await release.wait()

    holder = asyncio.create_task(hold())
    await holding.wait()
    waiter_in = asyncio.Event()

    async def wait_for_slot() -> None:
        async with bulkhead.slot():
            waiter_in.set()

    waiter = asyncio.create_task(wait_for_slot())
    await asyncio.sleep(0)
    assert not waiter_in.is_set() and bulkhead.in_flight == 1
    release.set()
    await asyncio.wait_for(asyncio.gather(holder, waiter), 5.0)
    assert waiter_in.is_set() and bulkhead.peak == 1


async def test_a_full_bulkhead_refuses_with_no_wait() -> None:
    bulkhead = Bulkhead("amp", max_concurrent=1, max_wait=0.0)
    async with bulkhead.slot():
        with pytest.raises(BulkheadFull):
            async with bulkhead.slot():
                pass
    async with bulkhead.slot():
        assert bulkhead.in_flight == 1


def test_one_bulkhead_per_vendor_per_process_from_settings() -> None:
    r = settings_from_env({"BULKHEAD_MAX_CONCURRENT": "4", "BULKHEAD_MAX_WAIT": "0.2"}).resilience
    assert (r.bulkhead_max_concurrent, r.bulkhead_max_wait) == (4, 0.2)
    a = process_bulkhead("amp", r.bulkhead_max_concurrent, r.bulkhead_max_wait)
    assert a is process_bulkhead("amp", 4, 0.2) and a is not process_bulkhead("hubspot", 4, 0.2)
    assert a.max_concurrent == 4
