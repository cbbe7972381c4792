"""Measurement 2: fail-fast latency while the circuit is open (call to fallback / rejection).

While a service is down, an open breaker should answer without touching the network; this
times how long that answer takes, for ours (exception and fallback string) and the peers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.common import FAST_CALLS, BenchAgent, Factory, swallow, time_cases
from bench.peers import aiobreaker_call, circuitbreaker_call, purgatory_call
from src.error_recovery import CircuitBreaker
from src.errors import CircuitOpenError


async def boom() -> int:
    """The failing service: its first call opens every threshold-1 breaker."""
    raise ConnectionError("down")


async def _no_sleep(_: float) -> None:
    """Backoff that returns at once, so no sleep is timed as fail-fast latency."""
    return None


async def bench_fail_fast() -> list[dict[str, Any]]:
    """One row per case: ns from the call to the fallback or the rejection."""

    def ours_breaker() -> Factory:
        breaker = CircuitBreaker(1, 3600.0, name="svc")
        return swallow(lambda: breaker.call(boom), ConnectionError, CircuitOpenError)

    def ours_retry() -> Factory:
        agent = BenchAgent(CircuitBreaker(1, 3600.0, name="svc"))
        agent.retry_sleep = _no_sleep
        return lambda: agent.call_with_retry_and_circuit_breaker("svc", boom, "fallback")

    def aio() -> Factory:
        import aiobreaker

        call, _ = aiobreaker_call(1, boom)
        return swallow(call, ConnectionError, aiobreaker.CircuitBreakerError)

    def purg() -> Factory:
        from purgatory.domain.model import OpenedState

        return swallow(purgatory_call(1, boom), ConnectionError, OpenedState)

    def cb() -> Factory:
        from circuitbreaker import CircuitBreakerError

        return swallow(circuitbreaker_call(1, boom), ConnectionError, CircuitBreakerError)

    cases: list[tuple[str, Callable[[], Factory]]] = [
        ("ours: CircuitBreaker.call -> CircuitOpenError", ours_breaker),
        ("ours: call_with_retry... -> fallback string", ours_retry),
        ("aiobreaker -> CircuitBreakerError", aio),
        ("purgatory -> OpenedState", purg),
        ("circuitbreaker -> CircuitBreakerError", cb),
    ]
    # Threshold 1: the first warm-up call fails and opens the circuit; every timed call
    # is then rejected without touching the service.
    medians = await time_cases([(make, FAST_CALLS) for _, make in cases])
    return [
        {"case": name, "ns_to_fallback": round(ns, 1)}
        for (name, _), ns in zip(cases, medians, strict=True)
    ]
