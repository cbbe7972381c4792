"""The work the tool-path measurements share: a realistic mid-call ``TrialistData``
(scalable for the state-size table), an Amplitude client stand-in that answers at once
(the one thing mocked: the network edge), a real LiveKit ``RunContext`` and the
production agent.

The stand-in replaces the HTTP request only; everything above it (tool method, filler,
``run_tool``, ``handle_tool_with_error_recovery``, ``usage.trial_usage``, ``protected``,
``call_with_retry_and_circuit_breaker`` with its deadline) is the production code.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from livekit.agents import AgentSession, RunContext
from livekit.agents.llm import FunctionCall
from livekit.agents.voice.speech_handle import SpeechHandle

from bench.common import EMAIL
from src.agent import PandaDocTrialistAgent
from src.errors import ConnectionFailed
from src.services.amplitude import TrialUsage
from src.services.chilipiper import DemoSlot
from src.services.wiring import TrialistServices
from src.settings import Settings
from src.state import TrialistData

INTEGRATIONS = ("Salesforce", "HubSpot", "Google Drive")
SUMMARY = "Jane Doe works at Acme Corp as Head of Sales Operations."


def usage(scale: int = 1) -> TrialUsage:
    """What Amplitude returns for a mid-trial user; ``scale`` multiplies the integrations."""
    return TrialUsage(
        documents_created=12,
        documents_sent=7,
        documents_completed=4,
        templates_created=3,
        integrations=tuple(f"{name} {i}" for i in range(scale) for name in INTEGRATIONS),
        last_active_at=datetime(2026, 11, 27, 16, 5, tzinfo=UTC),
        last_active_days_ago=1,
        trial_days_left=9,
    )


def realistic_state(scale: int = 1) -> TrialistData:
    """A mid-call state: usage looked up, CRM record found, three demo times offered, one
    summary logged. ``scale`` = 10 or 100 multiplies every collection (slots offered,
    integrations) and the CRM summary text by that factor, for the state-size table."""
    start = datetime(2026, 12, 1, 15, tzinfo=UTC)
    return TrialistData(
        email=EMAIL,
        name="Jane Doe",
        timezone="America/New_York",
        usage=usage(scale),
        crm_source="salesforce",
        crm_record_id="003Dn00000XyZ12IAB",
        crm_summary=" ".join([SUMMARY] * scale),
        offered_slots={i + 1: DemoSlot.at(start + timedelta(hours=i)) for i in range(3 * scale)},
        summaries_logged=1,
    )


class InstantAmplitude:
    """The Amplitude client's ``get_trial_usage`` without the HTTP request: answers at
    once with ``result``, or raises ``ConnectionFailed`` (what the real client raises on a
    refused connection) when ``down``."""

    def __init__(self, result: TrialUsage, *, down: bool = False) -> None:
        self.result = result
        self.down = down
        self.calls = 0

    async def get_trial_usage(self, email: str, *, cached: bool = True) -> TrialUsage:
        self.calls += 1
        if self.down:
            raise ConnectionFailed("amplitude", "connection refused")
        return self.result

    async def cached_usage(self, email: str) -> TrialUsage | None:
        """The usage cache's answer: always a miss, so every call is the full path."""
        return None

    async def aclose(self) -> None:
        return None


def run_context(data: TrialistData) -> RunContext[TrialistData]:
    """A real LiveKit ``RunContext`` (real ``AgentSession`` holding ``data``, real speech
    handle), so ``with_filler`` starts and stops LiveKit's filler scheduler as in a call.
    The session is not started: no room, no audio."""
    session: AgentSession[TrialistData] = AgentSession(userdata=data)
    call = FunctionCall(call_id="call_bench", arguments="{}", name="get_trial_usage")
    return RunContext(session=session, speech_handle=SpeechHandle.create(), function_call=call)


def agent(
    client: Any, *, sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep, **resilience: Any
) -> PandaDocTrialistAgent:
    """The production agent with default settings (``resilience`` overrides some), whose
    Amplitude client is ``client``; ``sleep`` is its backoff sleep."""
    settings = Settings()
    if resilience:
        settings = dataclasses.replace(
            settings, resilience=dataclasses.replace(settings.resilience, **resilience)
        )
    return PandaDocTrialistAgent(TrialistServices(amplitude=client), settings, sleep=sleep)
