"""A quiet, fast open-circuit path (issue #11): while a service's circuit is open its
read-only tools answer at once, call nothing, copy nothing, and write no log line per
call; the refusals are counted in metrics and the breaker logs only its state changes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from livekit.agents.llm import ToolError
from prometheus_client import REGISTRY

from src.agent import PandaDocTrialistAgent
from src.drill.harness import StandInRunContext
from src.error_recovery import CircuitState
from src.errors import ServiceUnavailable
from src.phrases import ACCOUNT_FALLBACK, USAGE_FALLBACK
from src.sandbox import Sandbox
from src.services.wiring import TrialistServices
from src.settings import settings_from_env
from src.state import TrialistData
from src.store import StoreGuard, open_store
from src.tools import crm, usage

JANE = "jane.doe@acme.example.com"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def refusals(service: str) -> float:
    labels = {"service": service, "reason": "circuit_open"}
    return REGISTRY.get_sample_value("pandadoc_service_fallbacks_total", labels) or 0.0


@pytest.fixture
async def parts() -> AsyncIterator[tuple[Sandbox, PandaDocTrialistAgent, FakeClock]]:
    async with Sandbox() as sb:
        services = TrialistServices.from_settings(settings_from_env(sb.env()))
        clock = FakeClock()
        agent = PandaDocTrialistAgent(services, settings_from_env(sb.env()), clock=clock)
        yield sb, agent, clock
        await services.aclose()


def open_circuit(agent: PandaDocTrialistAgent, name: str) -> None:
    breaker = agent.circuit_breakers[name]
    for _ in range(breaker.failure_threshold):
        breaker.record_failure(ConnectionError("down"))
    assert breaker.state is CircuitState.OPEN


async def usage_tool(agent: PandaDocTrialistAgent, ctx: StandInRunContext) -> str:
    return await agent.run_tool(
        ctx, "get_trial_usage", lambda: usage.trial_usage(agent, ctx.userdata, "")
    )


async def test_open_circuit_tool_answers_quietly_and_counts(
    parts: tuple[Sandbox, PandaDocTrialistAgent, FakeClock], caplog: pytest.LogCaptureFixture
) -> None:
    sandbox, agent, _ = parts
    open_circuit(agent, "amplitude")
    ctx = StandInRunContext(TrialistData(email=JANE))
    before = refusals("amplitude")
    caplog.set_level(logging.INFO)
    caplog.clear()
    for _ in range(5):
        with pytest.raises(ToolError) as info:
            await usage_tool(agent, ctx)
        assert str(info.value) == USAGE_FALLBACK
    assert caplog.records == []  # no line per refused call
    assert refusals("amplitude") == before + 5
    assert sandbox.amplitude.journal == []  # nothing was sent
    assert ctx.userdata == TrialistData(email=JANE)


async def test_due_probe_is_not_refused_and_recovery_is_logged_once(
    parts: tuple[Sandbox, PandaDocTrialistAgent, FakeClock], caplog: pytest.LogCaptureFixture
) -> None:
    _, agent, clock = parts
    open_circuit(agent, "amplitude")
    clock.now += agent.circuit_breakers["amplitude"].recovery_timeout + 1
    ctx = StandInRunContext(TrialistData(email=JANE))
    caplog.set_level(logging.INFO)
    caplog.clear()
    sentence = await usage_tool(agent, ctx)
    assert sentence.startswith("You've created fourteen documents")
    assert agent.circuit_breakers["amplitude"].state is CircuitState.CLOSED
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("Circuit breaker: Transitioning to half-open state") == 1
    assert messages.count("Circuit breaker: Service recovered, closing circuit") == 1


async def test_one_open_crm_falls_through_to_the_other(
    parts: tuple[Sandbox, PandaDocTrialistAgent, FakeClock],
) -> None:
    _, agent, _ = parts
    open_circuit(agent, "salesforce")
    ctx = StandInRunContext(TrialistData(email=JANE))
    assert agent.refused_by_open_circuits("lookup_account") is None
    sentence = await agent.run_tool(
        ctx, "lookup_account", lambda: crm.lookup_account(agent, ctx.userdata, "")
    )
    assert "Jane Doe" in sentence
    assert ctx.userdata.crm_source == "hubspot"
    open_circuit(agent, "hubspot")
    assert agent.refused_by_open_circuits("lookup_account") == ACCOUNT_FALLBACK


async def test_a_circuit_the_fleet_closed_is_not_refused_from_a_stale_local_view(
    tmp_path: Path,
) -> None:
    """(simulate --seed 7, example 8292) This process's failure opened the circuit; the
    fleet closed it since (an answer another process got). The tool's up-front refusal
    read only the local breaker and refused a call the vendor would answer: it now takes
    the fleet's view of an open circuit first."""
    async with Sandbox() as sb:
        env = sb.env() | {"RESILIENCE_STORE_URL": f"sqlite:///{tmp_path / 'fleet.db'}"}
        settings = settings_from_env(env)
        services = TrialistServices.from_settings(settings)
        store = open_store(settings.fleet.store_url)
        clock = FakeClock()
        agent = PandaDocTrialistAgent(services, settings, clock=clock, store=StoreGuard(store))
        try:
            breaker = agent.circuit_breakers["amplitude"]
            for _ in range(breaker.failure_threshold):
                await breaker.on_failure(ServiceUnavailable("amplitude", status=503))
            assert breaker.state is CircuitState.OPEN
            ctx = StandInRunContext(TrialistData(email=JANE))
            with pytest.raises(ToolError):  # the fleet agrees: refused up front
                await usage_tool(agent, ctx)
            assert sb.amplitude.journal == []
            await store.breaker_reset("amplitude")  # closed elsewhere in the fleet
            clock.now += 1.0  # past the shared view's cache
            sentence = await usage_tool(agent, ctx)
            assert sentence.startswith("You've created fourteen documents")
            assert breaker.state is CircuitState.CLOSED
        finally:
            await services.aclose()
            await store.aclose()
