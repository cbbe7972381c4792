"""Issue #15: while a capability's circuit is open the model is told it is unavailable
(a note beside its instructions, its tools not offered); the caller hears the hand-off
offer once. The real AgentSession and openai plugin against the sandbox's scripted
(keyword) model and the real clients."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from livekit.agents import AgentSession, llm

from src.agent import PandaDocTrialistAgent
from src.errors import ServiceUnavailable
from src.phrases import BOOKING_DOWN_NOTE, BOOKING_DOWN_OPENING
from src.sandbox import Sandbox
from src.sandbox.base import FaultKind
from src.services.wiring import TrialistServices
from src.session import build_session
from src.settings import settings_from_env
from src.state import TrialistData
from src.store import MemoryStore, StoreGuard

JANE = "jane.doe@acme.example.com"


async def no_sleep(_: float) -> None:
    return None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclasses.dataclass
class Rig:
    sandbox: Sandbox
    agent: PandaDocTrialistAgent
    session: AgentSession[TrialistData]
    clock: Clock


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    async with Sandbox() as sandbox:
        settings = settings_from_env(sandbox.env())
        settings = dataclasses.replace(
            settings,
            resilience=dataclasses.replace(
                settings.resilience, service_timeout=0.5, tool_deadline=2.0, llm_timeout=2.0
            ),
        )
        services = TrialistServices.from_settings(settings)
        clock = Clock()
        agent = PandaDocTrialistAgent(services, settings, sleep=no_sleep, clock=clock)
        session = build_session(
            settings, userdata=TrialistData(email=JANE), tts_model=None, stt_model=None
        )
        async with session:
            await session.start(agent)
            yield Rig(sandbox, agent, session, clock)
        await services.aclose()


def open_circuit(agent: PandaDocTrialistAgent, name: str) -> None:
    breaker = agent.circuit_breakers[name]
    for _ in range(breaker.failure_threshold):
        breaker.record_failure(ServiceUnavailable(name, status=503))


def offered(body: dict[str, Any]) -> set[str]:
    return {t["function"]["name"] for t in body.get("tools") or ()}


def notes(body: dict[str, Any]) -> list[str]:
    return [
        str(m.get("content"))
        for m in body.get("messages") or ()
        if m.get("role") in ("system", "developer")
    ]


def spoken(session: AgentSession[TrialistData]) -> list[str]:
    return [
        item.text_content or ""
        for item in session.history.items
        if item.type == "message" and item.role == "assistant"
    ]


async def test_booking_down_the_model_is_told_and_the_caller_hears_the_offer_once(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    open_circuit(rig.agent, "chilipiper")
    watch = rig.sandbox.chilipiper.inject("*", FaultKind.SLOW, delay_ms=0)  # counts requests
    caplog.set_level(logging.INFO, "pandadoc.agent")
    opening = await rig.agent.opening_words("Jane Doe")
    assert opening.endswith(BOOKING_DOWN_OPENING)
    await rig.session.say(opening)
    openai = rig.sandbox.openai
    for text in ("Can I book a demo?", "Any demo times available? Book the first one."):
        await rig.session.run(user_input=text)
        body = openai.last_request
        assert any(BOOKING_DOWN_NOTE in n for n in notes(body))  # handed the notice
        assert not offered(body) & {"book_demo", "check_demo_availability"}
        assert "get_trial_usage" in offered(body)  # the rest is still offered
    calls = [item.name for item in rig.session.history.items if item.type == "function_call"]
    assert "book_demo" not in calls and "check_demo_availability" not in calls
    heard = " ".join(spoken(rig.session))
    assert heard.count(BOOKING_DOWN_OPENING) == 1  # expectations set once
    assert watch.seen == 0  # and nothing was sent to ChiliPiper
    assert caplog.text.count("Degraded: the model is told booking is unavailable") == 1


async def test_the_note_goes_away_when_the_circuit_is_due_and_closes(rig: Rig) -> None:
    open_circuit(rig.agent, "chilipiper")
    await rig.session.run(user_input="Any demo times?")
    assert "check_demo_availability" not in offered(rig.sandbox.openai.last_request)
    rig.clock.now += rig.agent.settings.resilience.recovery_timeout + 1  # due for its probe
    result = await rig.session.run(user_input="Any demo times?")
    body = rig.sandbox.openai.requests_seen[-2]  # the request that chose the tool
    assert "check_demo_availability" in offered(body)
    assert not any(BOOKING_DOWN_NOTE in n for n in notes(body))
    assert any(
        e.type == "function_call_output" and e.item.name == "check_demo_availability"
        for e in result.events
    )
    assert rig.agent.circuit_breakers["chilipiper"].state.value == "closed"  # the probe


async def test_a_healthy_start_has_no_notice(rig: Rig) -> None:
    assert (
        await rig.agent.opening_words(None)
        == "Hi there! I'm Ava from PandaDoc. How is your trial going so far?"
    )
    await rig.session.run(user_input="Any demo times?")
    body = rig.sandbox.openai.last_request
    assert not any(BOOKING_DOWN_NOTE in n for n in notes(body))


async def test_the_fleet_view_sets_expectations_at_the_start(rig: Rig) -> None:
    store = MemoryStore(clock=rig.clock)
    guard = StoreGuard(store, clock=rig.clock)
    for _ in range(3):
        await store.breaker_failure("chilipiper", 3, 30.0)
    rig.agent.circuit_breakers["chilipiper"].store = guard  # a fresh conversation's breaker
    assert (await rig.agent.opening_words(None)).endswith(BOOKING_DOWN_OPENING)


async def test_a_stale_local_open_is_checked_with_the_fleet_before_the_reply(rig: Rig) -> None:
    """(issue #24) This process's failures opened the booking circuit; the fleet closed
    it since. Before the reply is generated, an open circuit takes the fleet's view: the
    model is not told booking is down on a stale local view."""
    open_circuit(rig.agent, "chilipiper")
    assert [cap.name for cap in rig.agent.down_capabilities()] == ["booking"]
    store = MemoryStore(clock=rig.clock)  # the fleet: the circuit is closed there
    rig.agent.circuit_breakers["chilipiper"].store = StoreGuard(store, clock=rig.clock)
    await rig.agent.on_user_turn_completed(
        llm.ChatContext.empty(), llm.ChatMessage(role="user", content=["Any demo times?"])
    )
    assert rig.agent.down_capabilities() == []
