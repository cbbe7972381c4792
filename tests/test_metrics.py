"""Breaker and tool metrics move with what actually happens."""

from __future__ import annotations

import pytest
from livekit.agents.llm import ToolError
from prometheus_client import REGISTRY

from src.drill.harness import StandInRunContext
from src.error_recovery import CircuitBreaker, ErrorRecoveryMixin
from src.errors import ServiceUnavailable


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


async def fail() -> None:
    raise ServiceUnavailable("metrics-svc", status=503)


async def ok() -> str:
    return "fine"


async def test_breaker_transitions_and_open_gauge() -> None:
    clock = Clock()
    breaker = CircuitBreaker(
        failure_threshold=1, recovery_timeout=5.0, name="metrics-svc", clock=clock
    )
    opened = sample("pandadoc_circuit_transitions_total", service="metrics-svc", to_state="open")
    gauge = sample("pandadoc_circuits_open", service="metrics-svc")
    with pytest.raises(ServiceUnavailable):
        await breaker.call(fail)
    assert sample("pandadoc_circuits_open", service="metrics-svc") == gauge + 1
    clock.now = 5.0
    assert await breaker.call(ok) == "fine"
    assert sample("pandadoc_circuits_open", service="metrics-svc") == gauge
    assert (
        sample("pandadoc_circuit_transitions_total", service="metrics-svc", to_state="open")
        == opened + 1
    )
    assert (
        sample("pandadoc_circuit_transitions_total", service="metrics-svc", to_state="closed") >= 1
    )


class Agent(ErrorRecoveryMixin):
    def __init__(self) -> None:
        self.circuit_breakers = {"metrics-svc": CircuitBreaker(failure_threshold=1)}

        async def no_sleep(_: float) -> None:
            return None

        self.retry_sleep = no_sleep


async def test_fallbacks_and_tool_outcomes_are_counted() -> None:
    agent = Agent()
    failed = sample("pandadoc_service_fallbacks_total", service="metrics-svc", reason="failed")
    refused = sample(
        "pandadoc_service_fallbacks_total", service="metrics-svc", reason="circuit_open"
    )
    assert await agent.call_with_retry_and_circuit_breaker("metrics-svc", fail, "later") == "later"
    assert await agent.call_with_retry_and_circuit_breaker("metrics-svc", fail, "later") == "later"
    assert (
        sample("pandadoc_service_fallbacks_total", service="metrics-svc", reason="failed")
        == failed + 1
    )
    assert (
        sample("pandadoc_service_fallbacks_total", service="metrics-svc", reason="circuit_open")
        == refused + 1
    )
    good = sample("pandadoc_tool_calls_total", tool="t-metrics", outcome="ok")
    bad = sample("pandadoc_tool_calls_total", tool="t-metrics", outcome="fallback")
    waited = sample("pandadoc_tool_duration_seconds_count", tool="t-metrics")
    assert (
        await agent.handle_tool_with_error_recovery(StandInRunContext(None), "t-metrics", ok)
        == "fine"
    )
    with pytest.raises(ToolError):
        await agent.handle_tool_with_error_recovery(StandInRunContext(None), "t-metrics", fail)
    assert sample("pandadoc_tool_calls_total", tool="t-metrics", outcome="ok") == good + 1
    assert sample("pandadoc_tool_calls_total", tool="t-metrics", outcome="fallback") == bad + 1
    assert sample("pandadoc_tool_duration_seconds_count", tool="t-metrics") == waited + 2
