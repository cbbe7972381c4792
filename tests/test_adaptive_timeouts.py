"""Issue #15: a hang is told from slowness. A timed-out attempt is not retried inside a
voice turn; answers inside the (adaptive) request timeout are accepted; each vendor's
request timeout follows its observed latency. Real session, real clients, the sandbox."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest
from livekit.agents import AgentSession

from src import latency
from src.agent import PandaDocTrialistAgent
from src.errors import ServiceTimeout
from src.latency import AdaptiveTimeout, LatencyTracker, adaptive_timeout
from src.phrases import USAGE_FALLBACK
from src.registry import READ
from src.sandbox import Sandbox
from src.sandbox.base import FaultKind
from src.services.http import HttpOptions, ServiceHttp
from src.services.wiring import TrialistServices
from src.session import build_session
from src.settings import settings_from_env
from src.state import TrialistData

JANE = "jane.doe@acme.example.com"


async def no_sleep(_: float) -> None:
    return None


@dataclasses.dataclass
class Rig:
    sandbox: Sandbox
    agent: PandaDocTrialistAgent
    session: AgentSession[TrialistData]


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    async with Sandbox() as sandbox:
        settings = settings_from_env(sandbox.env())
        settings = dataclasses.replace(
            settings,
            resilience=dataclasses.replace(
                settings.resilience,
                service_timeout=0.5,  # the production shape, scaled down: 2.5 s -> 0.5 s
                tool_deadline=1.5,
                turn_deadline=1.5,
                llm_timeout=2.0,
            ),
        )
        services = TrialistServices.from_settings(settings)
        agent = PandaDocTrialistAgent(services, settings, sleep=no_sleep)
        session = build_session(
            settings, userdata=TrialistData(email=JANE), tts_model=None, stt_model=None
        )
        async with session:
            await session.start(agent)
            yield Rig(sandbox, agent, session)
        await services.aclose()


def usage_output(result: Any) -> Any:
    for event in result.events:
        if event.type == "function_call_output" and event.item.name == "get_trial_usage":
            return event.item
    raise AssertionError("get_trial_usage was not called")


async def test_a_hung_vendor_gets_one_attempt_not_two(rig: Rig) -> None:
    fault = rig.sandbox.amplitude.inject("*", FaultKind.HANG)
    out = usage_output(await rig.session.run(user_input="How is my trial usage?"))
    assert out.is_error and out.output == USAGE_FALLBACK
    assert fault.seen == 1  # the timed-out attempt was a hang signal: not retried
    assert len(latency.tracker("amplitude")) == 0  # a hang says nothing about answer times
    rig.sandbox.amplitude.clear()


async def test_a_slow_but_healthy_vendor_with_two_requests_per_lookup_answers(rig: Rig) -> None:
    # each request answered after 0.35 s of a 0.5 s request timeout: 0.7 s per lookup
    fault = rig.sandbox.amplitude.inject("*", FaultKind.SLOW, delay_ms=350)
    out = usage_output(await rig.session.run(user_input="How is my trial usage?"))
    assert not out.is_error and "document" in out.output.lower()
    assert fault.seen == 2
    assert len(latency.tracker("amplitude")) == 2  # both answers recorded


async def test_a_transient_error_is_still_retried(rig: Rig) -> None:
    fault = rig.sandbox.amplitude.inject("*", FaultKind.SERVICE_UNAVAILABLE, count=1)
    out = usage_output(await rig.session.run(user_input="How is my trial usage?"))
    assert not out.is_error
    assert fault.seen == 1 and rig.agent.retry_budgets["amplitude"].retries == 1


async def test_the_request_is_cut_to_the_adaptive_limit() -> None:
    async with Sandbox() as sandbox:
        sandbox.amplitude.inject("*", FaultKind.HANG)
        http = ServiceHttp(
            "amplitude", sandbox.amplitude.base_url, options=HttpOptions(timeout=30.0)
        )
        token = latency.REQUEST_LIMIT.set(0.2)
        try:
            with pytest.raises(ServiceTimeout, match=r"within 0\.2s"):
                await http.request("GET", "/api/2/usersearch")
        finally:
            latency.REQUEST_LIMIT.reset(token)
            await http.aclose()
            sandbox.amplitude.clear()


def test_adaptive_timeout_follows_latency_between_floor_and_ceiling() -> None:
    rule = AdaptiveTimeout(percentile=0.99, factor=3.0, floor=1.0, min_samples=20)
    assert adaptive_timeout("amp", rule, 2.5) == 2.5  # no history: SERVICE_TIMEOUT
    for _ in range(19):
        latency.observe("amp", 0.1)
    assert adaptive_timeout("amp", rule, 2.5) == 2.5  # still too little history
    latency.observe("amp", 0.1)
    assert adaptive_timeout("amp", rule, 2.5) == 1.0  # 0.3 s, raised to the floor
    for _ in range(20):
        latency.observe("amp", 0.6)
    assert adaptive_timeout("amp", rule, 2.5) == pytest.approx(1.8)
    latency.observe("amp", 2.0)
    assert adaptive_timeout("amp", rule, 2.5) == 2.5  # clamped to the ceiling


def test_tracker_percentile_and_settings() -> None:
    t = LatencyTracker(size=100)
    for ms in range(1, 101):
        t.observe(ms / 1000)
    assert t.percentile(0.95) == 0.095 and t.percentile(1.0) == 0.1
    t.observe(float("nan"))
    assert len(t) == 100
    r = settings_from_env(
        {"ADAPTIVE_TIMEOUT_FACTOR": "4", "ADAPTIVE_TIMEOUT_FLOOR": "0.8"}
    ).resilience
    assert (r.adaptive_timeout_factor, r.adaptive_timeout_floor) == (4.0, 0.8)


@pytest.mark.parametrize(("tool_deadline", "attempts"), [(2.0, 1), (3.0, 2)])
async def test_a_retry_starts_only_if_its_adapted_timeout_fits(
    tool_deadline: float, attempts: int
) -> None:
    from livekit.agents.llm import ToolError

    from src.error_recovery import VoiceRetryPolicy
    from src.errors import ServiceUnavailable

    now = [100.0]
    base = settings_from_env({})
    settings = dataclasses.replace(
        base,
        resilience=dataclasses.replace(
            base.resilience, service_timeout=1.0, tool_deadline=tool_deadline
        ),
    )
    agent = PandaDocTrialistAgent(
        TrialistServices(), settings, clock=lambda: now[0], sleep=no_sleep
    )
    agent.retry_policy = VoiceRetryPolicy(base_delay=0.0, max_delay=0.0, jitter=False)
    calls = 0

    async def slow_failure() -> str:
        nonlocal calls
        calls += 1
        now[0] += 1.2  # the attempt took 1.2 s of the tool's budget, then a 503
        if calls == 1:
            raise ServiceUnavailable("amplitude", status=503)
        return "data"

    # no history: the adapted timeout is SERVICE_TIMEOUT, 1.0 s
    if attempts == 1:  # 1.2 s used + 1.0 s > the 2.0 s budget (0.5 s would have fit)
        with pytest.raises(ToolError):
            await agent.protected("amplitude", slow_failure, USAGE_FALLBACK, kind=READ)
    else:
        assert await agent.protected("amplitude", slow_failure, USAGE_FALLBACK, kind=READ) == "data"
    assert calls == attempts
