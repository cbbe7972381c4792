"""Issue #15: failure-rate and slow-call rules beside the spec's consecutive rule."""

from __future__ import annotations

import logging

import pytest

from src.error_recovery import CircuitBreaker, CircuitState, RateRule, SlidingWindow
from src.errors import CircuitOpenError, ServiceUnavailable
from src.settings import SettingsError, settings_from_env
from src.store import MemoryStore, StoreGuard

BOOM = ServiceUnavailable("amp")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_default_consecutive_rule_unchanged_by_alternating_failures() -> None:
    breaker = CircuitBreaker(3, 30.0, name="amp")  # no rate rule: the spec's behaviour
    for _ in range(100):
        breaker.record_failure(BOOM)
        breaker.record_failure(BOOM)
        breaker.record_success()
    assert breaker.state is CircuitState.CLOSED


def test_failure_rate_opens_with_its_own_log_line(caplog: pytest.LogCaptureFixture) -> None:
    breaker = CircuitBreaker(3, 30.0, name="amp", rate_rule=RateRule(minimum_calls=10))
    caplog.set_level(logging.WARNING, "pandadoc.error_recovery")
    for _ in range(4):
        breaker.record_failure(BOOM)
        breaker.record_success()
    assert breaker.state is CircuitState.CLOSED  # 8 calls: below the minimum
    breaker.record_failure(BOOM)
    assert breaker.state is CircuitState.CLOSED  # 9 calls
    breaker.record_success()
    assert breaker.state is CircuitState.CLOSED  # 10 calls, 50 %: a success never opens
    breaker.record_failure(BOOM)
    assert breaker.state is CircuitState.OPEN  # the last 10 calls, 50 % failed
    assert "Opening circuit on failure rate 55% over the last 11 calls" in caplog.text
    assert "after" not in caplog.text  # not the consecutive rule's line


def test_a_success_never_opens_the_circuit_by_the_failure_rate() -> None:
    # Issue #24 (simulate --seed 57, example 5415): on a vendor failing every other call,
    # a success brought a full window to the threshold and opened the circuit (and wrote
    # it to the fleet's store). Only a failure opens it by the failure rate.
    rule = RateRule(failure_rate_threshold=0.5, minimum_calls=4, window_size=4)
    breaker = CircuitBreaker(3, 30.0, name="amp", rate_rule=rule)
    for _ in range(2):
        breaker.record_failure(BOOM)
        breaker.record_success()
    assert breaker.state is CircuitState.CLOSED  # [F S F S]: 50 %, on a success
    breaker.record_failure(BOOM)
    assert breaker.state is CircuitState.OPEN  # [S F S F]: 50 %, on a failure


def test_ten_percent_failures_never_open_the_rate_rule() -> None:
    breaker = CircuitBreaker(3, 30.0, name="amp", rate_rule=RateRule())
    for i in range(1000):
        if i % 10 == 0:
            breaker.record_failure(BOOM)
        else:
            breaker.record_success()
    assert breaker.state is CircuitState.CLOSED


def test_time_window_forgets_old_failures() -> None:
    clock = Clock()
    rule = RateRule(minimum_calls=4, window_size=10, window_seconds=10.0)
    breaker = CircuitBreaker(99, 30.0, name="amp", clock=clock, rate_rule=rule)
    for _ in range(3):
        breaker.record_failure(BOOM)
    clock.now += 11.0  # those three are out of the window now
    breaker.record_failure(BOOM)
    for _ in range(3):
        breaker.record_success()
    assert breaker.state is CircuitState.CLOSED  # 1 of 4 recent calls failed


async def test_slow_calls_open_the_circuit_and_fast_ones_do_not() -> None:
    clock = Clock()
    rule = RateRule(slow_call_duration=2.0, slow_call_rate_threshold=0.8, minimum_calls=5)
    breaker = CircuitBreaker(3, 30.0, name="amp", clock=clock, rate_rule=rule)

    async def answer(after: float) -> str:
        clock.now += after
        return "ok"

    for _ in range(10):
        assert await breaker.call(answer, 1.9) == "ok"
    assert breaker.state is CircuitState.CLOSED
    for _ in range(7):
        await breaker.call(answer, 2.1)
    assert breaker.state is CircuitState.CLOSED  # 7 of the last 17 (window 20) are slow
    for _ in range(9):
        if breaker.state is CircuitState.OPEN:
            break
        await breaker.call(answer, 2.1)
    assert breaker.state is CircuitState.OPEN  # 16 of 20 slow: 80 %
    with pytest.raises(CircuitOpenError):
        await breaker.call(answer, 0.1)


async def test_rate_rule_opening_is_shared_with_the_fleet() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock)
    rule = RateRule(minimum_calls=4, window_size=4)
    window = SlidingWindow(rule)
    here = CircuitBreaker(
        5, 30.0, name="amp", clock=clock, store=StoreGuard(store, clock=clock), window=window
    )
    there = CircuitBreaker(5, 30.0, name="amp", clock=clock, store=StoreGuard(store, clock=clock))
    for _ in range(2):
        await here.on_success()
        await here.on_failure(BOOM)
    assert here.state is CircuitState.OPEN
    with pytest.raises(CircuitOpenError):
        await there.admit()


def test_rate_settings_from_env_and_validation() -> None:
    s = settings_from_env(
        {
            "CIRCUIT_FAILURE_RATE_THRESHOLD": "0.3",
            "CIRCUIT_MINIMUM_CALLS": "5",
            "CIRCUIT_SLOW_CALL_DURATION": "2.0",
        }
    ).resilience
    assert (s.failure_rate_threshold, s.minimum_calls, s.slow_call_duration) == (0.3, 5, 2.0)
    with pytest.raises(SettingsError, match="CIRCUIT_FAILURE_RATE_THRESHOLD"):
        settings_from_env({"CIRCUIT_FAILURE_RATE_THRESHOLD": "1.5"})
    with pytest.raises(SettingsError, match="CIRCUIT_MINIMUM_CALLS"):
        settings_from_env({"CIRCUIT_MINIMUM_CALLS": "50"})
