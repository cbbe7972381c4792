"""Layer breakdown: what each part of our stack costs per successful call, next to the
peer libraries' parts.

The protected coroutine returns at once, so each figure is the wrapper's own cost, with
INFO logging on (nothing is logged on success) and metrics on. These rows are *not* the
production path: each says what it leaves out. The production path is
:mod:`bench.fullstack`; these rows explain where its time goes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from bench.common import (
    BenchAgent,
    Budget,
    Factory,
    Report,
    Rows,
    growth_vs_table,
    time_cases,
    us,
    work,
)
from bench.peers import (
    aiobreaker_call,
    circuitbreaker_call,
    peer_versions,
    purgatory_call,
    pybreaker_call,
    tenacity_aiobreaker_call,
    tenacity_call,
)
from bench.workload import realistic_state
from src.drill.harness import StandInRunContext
from src.error_recovery import CircuitBreaker
from src.settings import ResilienceSettings

R = ResilienceSettings()
LAYER = "tool method, filler, tool body, state"


def ours_breaker() -> Factory:
    breaker = CircuitBreaker(3, 30.0, name="svc")
    return lambda: breaker.call(work)


def ours_retry(*, deadline: bool) -> Callable[[], Factory]:
    """``call_with_retry_and_circuit_breaker``; with ``deadline`` as ``protected`` calls it
    (tool deadline and minimum attempt: one ``asyncio.timeout`` per attempt)."""

    def make() -> Factory:
        agent = BenchAgent(CircuitBreaker(3, 30.0, name="svc"))
        if not deadline:
            return lambda: agent.call_with_retry_and_circuit_breaker("svc", work, "fallback")
        return lambda: agent.call_with_retry_and_circuit_breaker(
            "svc", work, "fallback", deadline=R.tool_deadline, min_attempt=0.5
        )

    return make


def ours_wrapper() -> Factory:
    """``handle_tool_with_error_recovery`` around the deadline call, realistic state."""
    agent = BenchAgent(CircuitBreaker(3, 30.0, name="svc"))
    ctx = StandInRunContext(realistic_state())

    def call() -> Awaitable[Any]:
        return agent.handle_tool_with_error_recovery(
            ctx,
            "usage",
            lambda: agent.call_with_retry_and_circuit_breaker(
                "svc", work, "fallback", deadline=R.tool_deadline, min_attempt=0.5
            ),
        )

    return call


async def measure(budget: Budget) -> Report:
    cases: list[tuple[str, Callable[[], Factory], str]] = [
        ("bare await", lambda: work, "everything"),
        ("ours: CircuitBreaker.call", ours_breaker, f"retry, timeout, {LAYER}"),
        (
            "ours: call_with_retry_and_circuit_breaker, no deadline",
            ours_retry(deadline=False),
            f"per-attempt timeout, {LAYER}",
        ),
        (
            "ours: call_with_retry_and_circuit_breaker, tool deadline",
            ours_retry(deadline=True),
            LAYER,
        ),
        (
            "ours: handle_tool_with_error_recovery + the above",
            ours_wrapper,
            "tool method, filler, tool body",
        ),
    ]
    versions = peer_versions()
    peers: list[tuple[str, Callable[[], Factory], str, str]] = [
        ("aiobreaker: call_async", lambda: aiobreaker_call()[0], "aiobreaker", "retry"),
        ("purgatory: factory decorator", purgatory_call, "purgatory", "retry"),
        ("circuitbreaker: @circuit on async def", circuitbreaker_call, "circuitbreaker", "retry"),
        ("pybreaker: with breaker.calling(): await", pybreaker_call, "pybreaker", "retry"),
        ("tenacity: AsyncRetrying", tenacity_call, "tenacity", "breaker"),
        ("tenacity + aiobreaker", tenacity_aiobreaker_call, "aiobreaker", "per-attempt timeout"),
    ]
    for name, make, lib, what in peers:
        if versions.get(lib) != "not installed" and versions.get("tenacity") != "not installed":
            cases.append((name, make, f"{what}, {LAYER}"))
    timings = await time_cases([make for _, make, _ in cases], budget)
    bare = timings[0].median_ns
    rows: Rows = [
        {
            "case": name,
            "µs/call": us(t.median_ns),
            "x bare await": round(t.median_ns / bare, 1),
            "late ÷ early rounds": round(t.growth, 2),
            "growth vs table": growth,
            "leaves out": leaves_out,
        }
        for (name, _, leaves_out), t, growth in zip(
            cases, timings, growth_vs_table(timings), strict=True
        )
    ]
    return Report(
        key="layer_overhead",
        data={"calls_per_case": budget.calls, "rows": rows},
        tables=[("4. Layer breakdown: successful call (not the production path)", rows)],
    )
