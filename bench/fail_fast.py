"""Layer breakdown while the circuit is open: call to fallback or rejection, for our
breaker and retry + breaker call and for the peer breakers. INFO logging is on, so our
"Circuit for ... is open" line is written on every call. Not the production path (no tool,
no state): :mod:`bench.fullstack` has the open-circuit tool path.
"""

from __future__ import annotations

from collections.abc import Callable

from bench.common import (
    BenchAgent,
    Budget,
    Factory,
    Report,
    Rows,
    growth_vs_table,
    swallow,
    time_cases,
    us,
)
from bench.peers import (
    aiobreaker_call,
    circuitbreaker_call,
    peer_versions,
    purgatory_call,
    pybreaker_call,
)
from src.error_recovery import CircuitBreaker
from src.errors import CircuitOpenError


async def boom() -> int:
    """The failing service: its first call opens every threshold-1 breaker."""
    raise ConnectionError("down")


async def _no_sleep(_: float) -> None:
    """Backoff that returns at once, so no sleep is timed as fail-fast latency."""
    return None


def ours_breaker() -> Factory:
    breaker = CircuitBreaker(1, 3600.0, name="svc")
    return swallow(lambda: breaker.call(boom), ConnectionError, CircuitOpenError)


def ours_retry() -> Factory:
    agent = BenchAgent(CircuitBreaker(1, 3600.0, name="svc"))
    agent.retry_sleep = _no_sleep
    return lambda: agent.call_with_retry_and_circuit_breaker(
        "svc", boom, "fallback", deadline=6.0, min_attempt=0.5
    )


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


def pyb() -> Factory:
    import pybreaker

    return swallow(pybreaker_call(1, boom), ConnectionError, pybreaker.CircuitBreakerError)


async def measure(budget: Budget) -> Report:
    cases: list[tuple[str, Callable[[], Factory], str]] = [
        ("ours: CircuitBreaker.call -> CircuitOpenError", ours_breaker, "nothing is logged"),
        ("ours: call_with_retry... -> fallback string", ours_retry, "logs one INFO line"),
    ]
    versions = peer_versions()
    for name, make, lib in (
        ("aiobreaker -> CircuitBreakerError", aio, "aiobreaker"),
        ("purgatory -> OpenedState", purg, "purgatory"),
        ("circuitbreaker -> CircuitBreakerError", cb, "circuitbreaker"),
        ("pybreaker (calling()) -> CircuitBreakerError", pyb, "pybreaker"),
    ):
        if versions.get(lib) != "not installed":
            cases.append((name, make, "nothing is logged"))
    # Threshold 1: the first warm-up call fails and opens the circuit; every timed call
    # is then rejected without touching the service.
    timings = await time_cases([make for _, make, _ in cases], budget)
    rows: Rows = [
        {
            "case": name,
            "µs to fallback": us(t.median_ns),
            "late ÷ early rounds": round(t.growth, 2),
            "growth vs table": growth,
            "logging": logging,
        }
        for (name, _, logging), t, growth in zip(
            cases, timings, growth_vs_table(timings), strict=True
        )
    ]
    return Report(
        key="layer_open_circuit",
        data={"calls_per_case": budget.calls, "rows": rows},
        tables=[("5. Layer breakdown: circuit open (not the production path)", rows)],
    )
