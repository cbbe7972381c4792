"""Measurement 1: overhead per successful call, ours against the peer libraries.

The protected coroutine returns at once, so each figure is the wrapper's own cost: ns per
call (median of interleaved rounds) and the ratio to a bare ``await`` of the same coroutine.
That ratio is what tells whether the protection is cheap enough to put on every tool call.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from bench.common import CALLS, FAST_CALLS, BenchAgent, Factory, time_cases, work
from bench.peers import (
    aiobreaker_call,
    circuitbreaker_call,
    purgatory_call,
    pybreaker_call,
    pybreaker_verdict,
    tenacity_aiobreaker_call,
    tenacity_call,
)
from src.drill.harness import StandInRunContext
from src.error_recovery import CircuitBreaker


@dataclass
class SmallState:
    """A small ``userdata`` for the tool-wrapper case, so it is timed with a realistic state
    to snapshot rather than an empty one."""

    email: str | None = "a@example.com"
    facts: list[str] = field(default_factory=lambda: ["on trial"])


async def bench_overhead(dropped: dict[str, str]) -> list[dict[str, Any]]:
    """One row per case. A peer that cannot run (pybreaker without tornado) is left out of
    the table and its reason recorded in ``dropped``."""

    def ours_breaker() -> Factory:
        breaker = CircuitBreaker(3, 30.0, name="svc")
        return lambda: breaker.call(work)

    def ours_retry() -> Factory:
        agent = BenchAgent(CircuitBreaker(3, 30.0, name="svc"))
        return lambda: agent.call_with_retry_and_circuit_breaker("svc", work, "fallback")

    def ours_tool() -> Factory:
        agent = BenchAgent(CircuitBreaker(3, 30.0, name="svc"))
        ctx = StandInRunContext(SmallState())

        def call() -> Awaitable[Any]:
            return agent.handle_tool_with_error_recovery(
                ctx,
                "usage",
                lambda: agent.call_with_retry_and_circuit_breaker("svc", work, "fallback"),
            )

        return call

    cases: list[tuple[str, Callable[[], Factory], int]] = [
        ("bare await", lambda: work, CALLS),
        ("ours: CircuitBreaker.call", ours_breaker, CALLS),
        ("ours: call_with_retry_and_circuit_breaker", ours_retry, CALLS),
        ("ours: handle_tool(call_with_retry...)", ours_tool, FAST_CALLS),
        ("aiobreaker: call_async", lambda: aiobreaker_call()[0], CALLS),
        ("purgatory: factory decorator", purgatory_call, FAST_CALLS),
        ("circuitbreaker: @circuit on async def", circuitbreaker_call, CALLS),
        ("tenacity: AsyncRetrying", tenacity_call, FAST_CALLS),
        ("tenacity + aiobreaker", tenacity_aiobreaker_call, FAST_CALLS),
    ]
    verdict = await pybreaker_verdict()
    if verdict is None:
        cases.append(("pybreaker: call_async", pybreaker_call, FAST_CALLS))
    else:
        dropped["pybreaker"] = verdict

    medians = await time_cases([(make, calls) for _, make, calls in cases])
    bare = medians[0]
    return [
        {"case": name, "ns_per_call": round(ns, 1), "x_bare": round(ns / bare, 2)}
        for (name, _, _), ns in zip(cases, medians, strict=True)
    ]
