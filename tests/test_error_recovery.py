"""The spec's error-recovery suite: breaker, retries, phrases, state preservation, and an
end-to-end run over real HTTP. No test sleeps: clocks and sleeps are injected."""

from __future__ import annotations

import asyncio
import logging
import random
import re
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from livekit.agents.llm import StopResponse, ToolError

from src.drill.harness import StandInRunContext
from src.error_recovery import (
    ERROR_RESPONSES,
    CircuitBreaker,
    CircuitState,
    ErrorRecoveryMixin,
    RateRule,
    SlidingWindow,
    VoiceRetryPolicy,
    backoff_delay,
    counts_as_failure,
    error_type_for,
    is_retryable,
    process_window,
    retry_with_exponential_backoff,
)
from src.error_recovery.budget import FleetRetryBudget, RetryBudget, process_budget
from src.error_recovery.bulkhead import Bulkhead, BulkheadFull, process_bulkhead
from src.error_recovery.protection import reset_process_protection
from src.errors import (
    AuthenticationFailed,
    BadResponse,
    CircuitOpenError,
    ConnectionFailed,
    InvalidRequest,
    NotFound,
    RateLimited,
    ServiceTimeout,
    ServiceUnavailable,
)
from src.registry import (
    READ,
    WRITE_WITH_LOOKUP,
    WRITE_WITHOUT_LOOKUP,
    OutcomeUnknown,
    outcome_unknown,
    retry_rule,
)
from src.sandbox.base import FaultKind, SandboxServer
from src.services.http import HttpOptions, ServiceHttp
from src.store import MemoryStore, StoreGuard

# ---------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class RecordingSleep:
    """Records requested delays and advances the fake clock instead of waiting."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        self.clock.advance(seconds)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sleep(clock: FakeClock) -> RecordingSleep:
    return RecordingSleep(clock)


class Flaky:
    """An async callable failing with the given exceptions, then returning ``value``."""

    def __init__(self, *errors: BaseException, value: Any = "ok") -> None:
        self.errors = list(errors)
        self.value = value
        self.calls = 0

    async def __call__(self) -> Any:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.value


def unavailable() -> ServiceUnavailable:
    return ServiceUnavailable("amplitude", "down", status=503)


@dataclass
class TrialState:
    email: str = "jane.doe@acme.example.com"
    facts: list[str] = field(default_factory=list)
    offered: dict[int, str] = field(default_factory=dict)


class RecoveringAgent(ErrorRecoveryMixin):
    def __init__(self, clock: FakeClock, sleep: RecordingSleep, seed: int = 7) -> None:
        self.circuit_breakers = {
            name: CircuitBreaker(failure_threshold=3, recovery_timeout=30.0, name=name, clock=clock)
            for name in ("amplitude", "salesforce", "chilipiper", "hubspot")
        }
        self.error_rng = random.Random(seed)
        self.retry_sleep = sleep
        self.retry_clock = clock


@pytest.fixture
def agent(clock: FakeClock, sleep: RecordingSleep) -> RecoveringAgent:
    return RecoveringAgent(clock, sleep)


ALL_PHRASES = {p for variants in ERROR_RESPONSES.values() for p in variants}

# ---------------------------------------------------------------------------------------
# circuit breaker
# ---------------------------------------------------------------------------------------


async def test_circuit_breaker_starts_closed(clock: FakeClock) -> None:
    breaker = CircuitBreaker(clock=clock)
    assert breaker.state is CircuitState.CLOSED
    assert breaker.failure_count == 0
    assert breaker.opened_at is None
    assert (breaker.failure_threshold, breaker.recovery_timeout) == (3, 30.0)
    assert await breaker.call(Flaky(value=42)) == 42


async def test_circuit_breaker_opens_after_threshold(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    breaker = CircuitBreaker(
        failure_threshold=3, recovery_timeout=30.0, name="amplitude", clock=clock
    )
    for i in range(3):
        with pytest.raises(ServiceUnavailable):
            await breaker.call(Flaky(unavailable()))
        expected = CircuitState.OPEN if i == 2 else CircuitState.CLOSED
        assert breaker.state is expected
    assert breaker.opened_at == clock.now
    opening = [r for r in caplog.records if "Opening circuit" in r.getMessage()]
    assert [r.getMessage() for r in opening] == [
        "Circuit breaker: Opening circuit after 3 failures"
    ]
    assert opening[0].levelno == logging.WARNING
    assert opening[0].breaker == "amplitude"  # type: ignore[attr-defined]


async def test_open_circuit_fails_fast_without_calling(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=30.0, clock=clock)
    with pytest.raises(ServiceUnavailable):
        await breaker.call(Flaky(unavailable()))
    func = Flaky(value="never")
    clock.advance(29.9)
    with pytest.raises(CircuitOpenError) as info:
        await breaker.call(func)
    assert func.calls == 0
    assert info.value.retry_in == pytest.approx(0.1)
    assert breaker.retry_in() == pytest.approx(0.1)


async def test_half_open_after_recovery_timeout_then_closes(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pandadoc.error_recovery")
    transitions: list[tuple[str, CircuitState, CircuitState]] = []
    breaker = CircuitBreaker(
        failure_threshold=2,
        recovery_timeout=30.0,
        name="hubspot",
        clock=clock,
        listeners=[lambda *t: transitions.append(t)],
    )
    for _ in range(2):
        with pytest.raises(ServiceUnavailable):
            await breaker.call(Flaky(unavailable()))
    clock.advance(30.0)
    assert breaker.state is CircuitState.OPEN  # reading the state has no side effect
    assert await breaker.call(Flaky(value="back")) == "back"
    assert breaker.state is CircuitState.CLOSED
    assert breaker.failure_count == 0
    assert transitions == [
        ("hubspot", CircuitState.CLOSED, CircuitState.OPEN),
        ("hubspot", CircuitState.OPEN, CircuitState.HALF_OPEN),
        ("hubspot", CircuitState.HALF_OPEN, CircuitState.CLOSED),
    ]
    messages = [r.getMessage() for r in caplog.records]
    assert "Circuit breaker: Transitioning to half-open state" in messages
    assert "Circuit breaker: Service recovered, closing circuit" in messages


async def test_failed_probe_reopens_with_fresh_timeout(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=30.0, clock=clock)
    with pytest.raises(ServiceUnavailable):
        await breaker.call(Flaky(unavailable()))
    clock.advance(31.0)
    with pytest.raises(ServiceTimeout):
        await breaker.call(Flaky(ServiceTimeout("amplitude")))
    assert breaker.state is CircuitState.OPEN
    assert breaker.opened_at == clock.now
    clock.advance(29.0)
    with pytest.raises(CircuitOpenError):
        await breaker.call(Flaky())
    clock.advance(1.0)
    assert await breaker.call(Flaky(value=1)) == 1


async def test_single_half_open_probe_under_concurrency(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=5.0, clock=clock)
    with pytest.raises(ServiceUnavailable):
        await breaker.call(Flaky(unavailable()))
    clock.advance(5.0)
    release = asyncio.Event()
    calls = 0

    async def slow_probe() -> str:
        nonlocal calls
        calls += 1
        await release.wait()
        return "probe"

    tasks = [asyncio.create_task(breaker.call(slow_probe)) for _ in range(20)]
    await asyncio.sleep(0)  # let every task reach the breaker
    assert breaker.state is CircuitState.HALF_OPEN
    release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert calls == 1
    assert results.count("probe") == 1
    assert sum(isinstance(r, CircuitOpenError) for r in results) == 19
    assert breaker.state is CircuitState.CLOSED


async def test_cancelled_probe_frees_the_slot(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=5.0, clock=clock)
    with pytest.raises(ServiceUnavailable):
        await breaker.call(Flaky(unavailable()))
    clock.advance(5.0)
    task = asyncio.create_task(breaker.call(asyncio.Event().wait))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # issue #23: never half-open without a probe in flight; due at once for the next
    assert breaker.state is CircuitState.OPEN and breaker.retry_in() == 0
    assert await breaker.call(Flaky(value="next probe")) == "next probe"
    assert breaker.state is CircuitState.CLOSED


async def test_success_resets_failure_count(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=3, clock=clock)
    for _ in range(2):
        with pytest.raises(ServiceUnavailable):
            await breaker.call(Flaky(unavailable()))
    assert breaker.failure_count == 2
    await breaker.call(Flaky())
    assert breaker.failure_count == 0
    for _ in range(2):
        with pytest.raises(ServiceUnavailable):
            await breaker.call(Flaky(unavailable()))
    assert breaker.state is CircuitState.CLOSED  # 2 + 2 failures, never 3 in a row


@pytest.mark.parametrize(
    "exc",
    [NotFound("hubspot"), InvalidRequest("hubspot", status=422), asyncio.CancelledError()],
    ids=["not-found", "invalid-request", "cancelled"],
)
async def test_uncounted_errors_do_not_open_circuit(clock: FakeClock, exc: BaseException) -> None:
    breaker = CircuitBreaker(failure_threshold=1, clock=clock)
    with pytest.raises(type(exc)):
        await breaker.call(Flaky(exc))
    assert breaker.state is CircuitState.CLOSED
    assert breaker.failure_count == 0


async def test_not_found_probe_proves_service_is_up(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=1.0, clock=clock)
    with pytest.raises(ServiceUnavailable):
        await breaker.call(Flaky(unavailable()))
    clock.advance(1.0)
    with pytest.raises(NotFound):
        await breaker.call(Flaky(NotFound("salesforce")))
    assert breaker.state is CircuitState.CLOSED


async def test_custom_failure_predicate_and_reset(clock: FakeClock) -> None:
    breaker = CircuitBreaker(
        failure_threshold=1, clock=clock, is_failure=lambda e: isinstance(e, KeyError)
    )
    with pytest.raises(ValueError):
        await breaker.call(Flaky(ValueError("ignored")))
    assert breaker.state is CircuitState.CLOSED
    with pytest.raises(KeyError):
        await breaker.call(Flaky(KeyError("counted")))
    assert breaker.state is CircuitState.OPEN
    breaker.reset()
    assert breaker.state is CircuitState.CLOSED
    assert breaker.opened_at is None
    assert "closed" in repr(breaker)


async def test_broken_listener_does_not_break_the_call(clock: FakeClock) -> None:
    def boom(*_: object) -> None:
        raise RuntimeError("metrics down")

    breaker = CircuitBreaker(failure_threshold=1, clock=clock, listeners=[boom])
    with pytest.raises(ServiceUnavailable):
        await breaker.call(Flaky(unavailable()))
    assert breaker.state is CircuitState.OPEN


def test_breaker_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="failure_threshold"):
        CircuitBreaker(failure_threshold=0)
    with pytest.raises(ValueError, match="recovery_timeout"):
        CircuitBreaker(recovery_timeout=-1)


def test_counts_as_failure_follows_taxonomy() -> None:
    assert counts_as_failure(unavailable())
    assert counts_as_failure(AuthenticationFailed("salesforce", status=401))
    assert counts_as_failure(BadResponse("amplitude"))
    assert counts_as_failure(TimeoutError())
    assert not counts_as_failure(NotFound("hubspot"))
    assert not counts_as_failure(CircuitOpenError("x"))
    assert not counts_as_failure(asyncio.CancelledError())


# ---------------------------------------------------------------------------------------
# retry
# ---------------------------------------------------------------------------------------


async def test_retry_exact_delays_without_jitter(sleep: RecordingSleep) -> None:
    func = Flaky(*(unavailable() for _ in range(4)), value="done")
    result = await retry_with_exponential_backoff(
        func, max_retries=4, base_delay=1.0, max_delay=10.0, jitter=False, sleep=sleep
    )
    assert result == "done"
    assert func.calls == 5
    assert sleep.delays == [1.0, 2.0, 4.0, 8.0]


async def test_retry_delays_are_capped(sleep: RecordingSleep) -> None:
    func = Flaky(*(unavailable() for _ in range(4)))
    await retry_with_exponential_backoff(
        func, max_retries=4, base_delay=0.5, max_delay=3.0, jitter=False, sleep=sleep
    )
    assert sleep.delays == [0.5, 1.0, 2.0, 3.0]


async def test_retry_jitter_stays_within_bounds(sleep: RecordingSleep) -> None:
    rng = random.Random(1234)
    draws = [backoff_delay(n, 0.5, 3.0, rng=random.Random(n)) for n in range(50)]
    assert all(0.0 <= d <= min(3.0, 0.5 * 2**n) for n, d in enumerate(draws))
    func = Flaky(*(unavailable() for _ in range(3)))
    await retry_with_exponential_backoff(func, max_retries=3, base_delay=1.0, sleep=sleep, rng=rng)
    caps = [1.0, 2.0, 4.0]
    assert all(0.0 <= d <= cap for d, cap in zip(sleep.delays, caps, strict=True))
    assert sleep.delays != caps  # jitter actually moved them


async def test_retry_gives_up_after_max_retries(sleep: RecordingSleep) -> None:
    func = Flaky(*(unavailable() for _ in range(5)))
    with pytest.raises(ServiceUnavailable):
        await retry_with_exponential_backoff(func, max_retries=2, jitter=False, sleep=sleep)
    assert func.calls == 3
    assert sleep.delays == [1.0, 2.0]


@pytest.mark.parametrize(
    "exc",
    [
        AuthenticationFailed("salesforce", status=401),
        BadResponse("amplitude"),
        NotFound("hubspot"),
        InvalidRequest("chilipiper", status=400),
        ValueError("bug"),
        CircuitOpenError("amplitude"),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_non_retryable_errors_are_not_retried(
    sleep: RecordingSleep, exc: BaseException
) -> None:
    func = Flaky(exc)
    with pytest.raises(type(exc)):
        await retry_with_exponential_backoff(func, max_retries=3, sleep=sleep)
    assert func.calls == 1
    assert sleep.delays == []


def test_is_retryable_policy() -> None:
    assert is_retryable(TimeoutError())
    assert is_retryable(ConnectionRefusedError())
    assert is_retryable(ConnectionFailed("hubspot"))
    assert is_retryable(RateLimited("hubspot"))
    assert not is_retryable(asyncio.CancelledError())
    assert not is_retryable(KeyError())


async def test_retry_honours_retry_after(sleep: RecordingSleep) -> None:
    func = Flaky(RateLimited("hubspot", retry_after=2.5), value="ok")
    assert (
        await retry_with_exponential_backoff(func, base_delay=0.5, jitter=False, sleep=sleep)
        == "ok"
    )
    assert sleep.delays == [2.5]


async def test_retry_after_longer_than_max_delay_is_not_retried(sleep: RecordingSleep) -> None:
    func = Flaky(RateLimited("hubspot", retry_after=60.0))
    with pytest.raises(RateLimited):
        await retry_with_exponential_backoff(func, max_delay=3.0, sleep=sleep)
    assert func.calls == 1
    assert sleep.delays == []


async def test_retry_respects_deadline(sleep: RecordingSleep, clock: FakeClock) -> None:
    async def slow_failure() -> None:
        clock.advance(1.0)  # each attempt "takes" one second
        raise unavailable()

    calls = 0

    async def counted() -> None:
        nonlocal calls
        calls += 1
        await slow_failure()

    with pytest.raises(ServiceUnavailable):
        await retry_with_exponential_backoff(
            counted,
            max_retries=10,
            base_delay=1.0,
            max_delay=1.0,
            jitter=False,
            deadline=4.5,
            sleep=sleep,
            clock=clock,
        )
    # t=1 fail, sleep to 2, t=3 fail, sleep to 4, t=5 fail -> no sleep may end past 4.5
    assert calls == 3
    assert sleep.delays == [1.0, 1.0]


async def test_retry_attempt_timeout_turns_hang_into_timeout() -> None:
    func = Flaky(value="late")
    hang = asyncio.Event()

    async def hanging() -> str:
        if func.calls == 0:
            func.calls += 1
            await hang.wait()
        return "second attempt"

    delays: list[float] = []

    async def no_sleep(seconds: float) -> None:
        delays.append(seconds)

    result = await retry_with_exponential_backoff(
        hanging, max_retries=1, attempt_timeout=0.01, jitter=False, sleep=no_sleep
    )
    assert result == "second attempt"
    assert delays == [1.0]


def test_retry_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        asyncio.run(retry_with_exponential_backoff(Flaky(), max_retries=-1))
    with pytest.raises(ValueError):
        asyncio.run(retry_with_exponential_backoff(Flaky(), base_delay=-1))
    with pytest.raises(ValueError):
        VoiceRetryPolicy(base_delay=5.0, max_delay=3.0)
    with pytest.raises(ValueError):
        VoiceRetryPolicy(max_retries=-1)


# ---------------------------------------------------------------------------------------
# phrases
# ---------------------------------------------------------------------------------------

SPEC_PHRASES = {
    "tool_failure": "Let me try finding that information another way.",
    "connection_issue": "I'm experiencing a brief connection issue. "
    "Bear with me for just a second.",
    "timeout": "That's taking longer than expected. Let me try a quicker approach.",
    "service_unavailable": "That service appears to be temporarily unavailable. "
    "Let's continue without it for now.",
    "data_not_found": "I couldn't find that information. Can you clarify what you're looking for?",
    "generic": "I encountered an issue, but I'm still here to help. What else can I do for you?",
}


@pytest.mark.parametrize("error_type", sorted(SPEC_PHRASES))
def test_error_response_types(agent: RecoveringAgent, error_type: str) -> None:
    variants = ERROR_RESPONSES[error_type]
    assert SPEC_PHRASES[error_type] in variants
    assert len(set(variants)) >= 3
    seen = {agent.get_error_response(error_type) for _ in range(200)}
    assert seen == set(variants)  # every variant is reachable, nothing else comes out


def test_phrases_are_short_and_jargon_free() -> None:
    for phrase in ALL_PHRASES:
        sentences = [s for s in re.split(r"[.!?]", phrase) if s.strip()]
        assert 1 <= len(sentences) <= 2, phrase
        assert len(phrase) < 110, phrase
        assert not re.search(r"error|exception|http|\d{3}|api|null|none|\{", phrase, re.I), phrase


def test_unknown_error_type_gets_generic(agent: RecoveringAgent) -> None:
    assert agent.get_error_response("no_such_type") in ERROR_RESPONSES["generic"]


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ServiceTimeout("amplitude"), "timeout"),
        (TimeoutError(), "timeout"),
        (ConnectionFailed("hubspot"), "connection_issue"),
        (ConnectionResetError(), "connection_issue"),
        (CircuitOpenError("amplitude"), "service_unavailable"),
        (ServiceUnavailable("amplitude", status=503), "service_unavailable"),
        (RateLimited("hubspot"), "service_unavailable"),
        (NotFound("salesforce"), "data_not_found"),
        (BadResponse("chilipiper"), "tool_failure"),
        (ValueError("bug"), "tool_failure"),
    ],
)
def test_error_type_for_exception(exc: BaseException, expected: str) -> None:
    assert error_type_for(exc) == expected


# ---------------------------------------------------------------------------------------
# ErrorRecoveryMixin.handle_tool_with_error_recovery
# ---------------------------------------------------------------------------------------


async def test_handle_tool_success_returns_result_unchanged(agent: RecoveringAgent) -> None:
    ctx = StandInRunContext(TrialState())
    result = {"documents": 3}

    async def tool() -> dict[str, int]:
        ctx.userdata.facts.append("has 3 documents")
        return result

    assert await agent.handle_tool_with_error_recovery(ctx, "usage", tool) is result
    assert ctx.userdata.facts == ["has 3 documents"]


async def test_handle_tool_restores_state_on_failure(
    agent: RecoveringAgent, caplog: pytest.LogCaptureFixture
) -> None:
    state = TrialState(facts=["on trial"], offered={1: "slot-a"})
    ctx = StandInRunContext(state)

    async def tool() -> None:
        state.facts.append("half-written")
        state.offered.clear()
        state.email = "changed@example.com"
        raise ServiceUnavailable(
            "amplitude", "upstream said 503 at https://amplitude.com", status=503
        )

    with pytest.raises(ToolError) as info:
        await agent.handle_tool_with_error_recovery(ctx, "get_trial_usage", tool)
    assert ctx.userdata is state  # restored in place, identity kept
    assert state == TrialState(facts=["on trial"], offered={1: "slot-a"})
    assert info.value.message in ERROR_RESPONSES["service_unavailable"]
    assert "503" not in info.value.message and "http" not in info.value.message.lower()
    warning = [r for r in caplog.records if r.levelno == logging.WARNING][-1].getMessage()
    assert "get_trial_usage" in warning and "ServiceUnavailable" in warning
    assert "amplitude.com" not in warning


async def test_handle_tool_explicit_error_type_wins(agent: RecoveringAgent) -> None:
    ctx = StandInRunContext({"step": 1})

    async def tool() -> None:
        ctx.userdata["step"] = 2
        raise ValueError("boom")

    with pytest.raises(ToolError) as info:
        await agent.handle_tool_with_error_recovery(ctx, "t", tool, error_type="connection_issue")
    assert info.value.message in ERROR_RESPONSES["connection_issue"]
    assert ctx.userdata == {"step": 1}


@pytest.mark.parametrize(
    ("exc", "phrase_type"),
    [
        (ServiceTimeout("amplitude"), "timeout"),
        (NotFound("salesforce"), "data_not_found"),
        (ConnectionFailed("hubspot"), "connection_issue"),
        (CircuitOpenError("chilipiper"), "service_unavailable"),
        (KeyError("x"), "tool_failure"),
    ],
)
async def test_handle_tool_derives_phrase_from_exception(
    agent: RecoveringAgent, exc: BaseException, phrase_type: str
) -> None:
    with pytest.raises(ToolError) as info:
        await agent.handle_tool_with_error_recovery(
            StandInRunContext(TrialState()), "t", Flaky(exc)
        )
    assert info.value.message in ERROR_RESPONSES[phrase_type]


async def test_handle_tool_keeps_tool_error_and_stop_response(agent: RecoveringAgent) -> None:
    state = TrialState()
    ctx = StandInRunContext(state)

    async def declines() -> None:
        state.facts.append("x")
        raise ToolError("Could you spell that email address for me?")

    with pytest.raises(ToolError, match="spell that email"):
        await agent.handle_tool_with_error_recovery(ctx, "t", declines)
    assert state.facts == []
    with pytest.raises(StopResponse):
        await agent.handle_tool_with_error_recovery(ctx, "t", Flaky(StopResponse()))


async def test_handle_tool_never_swallows_cancellation(agent: RecoveringAgent) -> None:
    state = TrialState()
    ctx = StandInRunContext(state)

    async def hang() -> None:
        state.facts.append("partial")
        await asyncio.Event().wait()

    task = asyncio.create_task(agent.handle_tool_with_error_recovery(ctx, "t", hang))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert state.facts == []


async def test_handle_tool_without_userdata(agent: RecoveringAgent) -> None:
    ctx = StandInRunContext(None)
    assert await agent.handle_tool_with_error_recovery(ctx, "t", Flaky(value=5)) == 5
    with pytest.raises(ToolError):
        await agent.handle_tool_with_error_recovery(ctx, "t", Flaky(unavailable()))


# ---------------------------------------------------------------------------------------
# ErrorRecoveryMixin.call_with_retry_and_circuit_breaker
# ---------------------------------------------------------------------------------------

FALLBACK = "I'll continue without that data for now."


async def test_call_with_retry_returns_result_after_transient_failure(
    agent: RecoveringAgent, sleep: RecordingSleep
) -> None:
    func = Flaky(unavailable(), value={"docs": 3})
    assert await agent.call_with_retry_and_circuit_breaker("amplitude", func, FALLBACK) == {
        "docs": 3
    }
    assert func.calls == 2
    assert len(sleep.delays) == 1 and 0 <= sleep.delays[0] <= 0.5  # voice base delay, jittered
    assert agent.circuit_breakers["amplitude"].failure_count == 0


async def test_call_with_retry_falls_back_and_opens_after_three_failed_attempts(
    agent: RecoveringAgent, sleep: RecordingSleep
) -> None:
    func = Flaky(*(unavailable() for _ in range(100)))
    assert await agent.call_with_retry_and_circuit_breaker("amplitude", func, FALLBACK) == FALLBACK
    assert func.calls == 3  # 1 + max_retries=2; every failed attempt counts
    assert all(d <= 3.0 for d in sleep.delays)
    assert agent.circuit_breakers["amplitude"].state is CircuitState.OPEN
    for _ in range(2):
        assert (
            await agent.call_with_retry_and_circuit_breaker("amplitude", func, FALLBACK) == FALLBACK
        )
    assert func.calls == 3  # the open circuit sent nothing


async def test_call_with_retry_half_open_probe_keeps_its_retries(
    agent: RecoveringAgent, clock: FakeClock
) -> None:
    """Issue #24: a probe is a call, not an attempt. A blip on its first attempt is
    retried like any call's (plain retries would have answered), and the circuit
    re-opens only when the whole probe call failed."""
    breaker = agent.circuit_breakers["hubspot"]
    func = Flaky(*(unavailable() for _ in range(100)))
    for _ in range(3):
        await agent.call_with_retry_and_circuit_breaker("hubspot", func, FALLBACK)
    calls = func.calls
    clock.advance(30.0)
    assert await agent.call_with_retry_and_circuit_breaker("hubspot", func, FALLBACK) == FALLBACK
    assert func.calls == calls + 3  # the probe's attempt and its two retries, no more
    assert breaker.state is CircuitState.OPEN and breaker.retry_in() == 30.0
    clock.advance(30.0)
    blip = Flaky(unavailable(), value="recovered")
    assert await agent.call_with_retry_and_circuit_breaker("hubspot", blip, FALLBACK) == "recovered"
    assert blip.calls == 2
    assert breaker.state is CircuitState.CLOSED and breaker.failure_count == 0


async def test_call_with_retry_others_are_refused_while_a_probe_retries(
    agent: RecoveringAgent, clock: FakeClock
) -> None:
    breaker = agent.circuit_breakers["hubspot"]
    for _ in range(3):
        await agent.call_with_retry_and_circuit_breaker(
            "hubspot", Flaky(*(unavailable() for _ in range(3))), FALLBACK
        )
    clock.advance(30.0)
    gate = asyncio.Event()
    first = True

    async def probe_call() -> str:
        nonlocal first
        if first:
            first = False
            raise unavailable()
        await gate.wait()  # the probe's retry is in flight
        return "recovered"

    probe = asyncio.create_task(
        agent.call_with_retry_and_circuit_breaker("hubspot", probe_call, FALLBACK)
    )
    for _ in range(20):
        await asyncio.sleep(0)
    other = Flaky(value="other")
    assert await agent.call_with_retry_and_circuit_breaker("hubspot", other, FALLBACK) == FALLBACK
    assert other.calls == 0 and breaker.state is CircuitState.HALF_OPEN
    gate.set()
    assert await probe == "recovered"
    assert breaker.state is CircuitState.CLOSED


async def test_call_with_retry_reraises_requested_types(agent: RecoveringAgent) -> None:
    func = Flaky(NotFound("salesforce"))
    with pytest.raises(NotFound):
        await agent.call_with_retry_and_circuit_breaker(
            "salesforce", func, FALLBACK, reraise=(NotFound,)
        )
    assert func.calls == 1
    assert agent.circuit_breakers["salesforce"].failure_count == 0


async def test_call_with_retry_does_not_retry_non_retryable(agent: RecoveringAgent) -> None:
    func = Flaky(AuthenticationFailed("salesforce", status=401))
    assert await agent.call_with_retry_and_circuit_breaker("salesforce", func, FALLBACK) == FALLBACK
    assert func.calls == 1
    assert agent.circuit_breakers["salesforce"].failure_count == 1


async def test_call_with_retry_unknown_service(agent: RecoveringAgent) -> None:
    with pytest.raises(KeyError) as info:
        await agent.call_with_retry_and_circuit_breaker("zendesk", Flaky(), FALLBACK)
    message = str(info.value)
    for name in ("amplitude", "chilipiper", "hubspot", "salesforce", "zendesk"):
        assert name in message


async def test_call_with_retry_propagates_cancellation(agent: RecoveringAgent) -> None:
    task = asyncio.create_task(
        agent.call_with_retry_and_circuit_breaker("amplitude", asyncio.Event().wait, FALLBACK)
    )
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert agent.circuit_breakers["amplitude"].failure_count == 0


async def test_call_with_retry_deadline_bounds_the_wait(
    agent: RecoveringAgent, clock: FakeClock, sleep: RecordingSleep
) -> None:
    async def slow_fail() -> None:
        clock.advance(1.2)
        raise unavailable()

    started = clock.now
    result = await agent.call_with_retry_and_circuit_breaker(
        "amplitude", slow_fail, FALLBACK, max_retries=5, deadline=2.0
    )
    assert result == FALLBACK
    assert clock.now - started <= 2.0 + 1.2  # no sleep started that would end past 2 s


# ---------------------------------------------------------------------------------------
# end to end: real HTTP, real client layer, breaker, retries, phrases, state
# ---------------------------------------------------------------------------------------


class UsageServer(SandboxServer):
    name = "amplitude"

    def add_routes(self, app: web.Application) -> None:
        async def usage(request: web.Request) -> web.Response:
            return web.json_response({"documents_sent": 4})

        app.router.add_get("/usage", usage)


async def test_end_to_end_outage_recovery(agent: RecoveringAgent, clock: FakeClock) -> None:
    async with UsageServer() as server:
        http = ServiceHttp(
            "amplitude", server.base_url, options=HttpOptions(timeout=1.0, connect_timeout=0.5)
        )
        state = TrialState()
        ctx = StandInRunContext(state)

        async def tool() -> str:
            async def fetch() -> Any:
                return await http.request("GET", "/usage")

            result = await agent.call_with_retry_and_circuit_breaker("amplitude", fetch, FALLBACK)
            if isinstance(result, str):
                return result
            state.facts.append(f"sent {result['documents_sent']}")
            return f"They have sent {result['documents_sent']} documents."

        try:
            # healthy
            out = await agent.handle_tool_with_error_recovery(ctx, "usage", tool)
            assert out == "They have sent 4 documents."
            # one transient 503 is absorbed by a retry
            server.inject("/usage", FaultKind.SERVICE_UNAVAILABLE, count=1)
            assert await agent.handle_tool_with_error_recovery(ctx, "usage", tool) == out
            # a full outage: three calls fall back, then the circuit is open
            server.reset_journal()
            server.inject("/usage", FaultKind.SERVICE_UNAVAILABLE)
            for _ in range(3):
                assert await agent.handle_tool_with_error_recovery(ctx, "usage", tool) == FALLBACK
            assert len(server.requests("/usage")) == 3  # three failed attempts opened it
            assert await agent.handle_tool_with_error_recovery(ctx, "usage", tool) == FALLBACK
            assert len(server.requests("/usage")) == 3
            assert state.facts == ["sent 4", "sent 4"]
            # the service comes back; after the recovery timeout one probe closes the circuit
            server.clear()
            clock.advance(30.0)
            assert await agent.handle_tool_with_error_recovery(ctx, "usage", tool) == out
            assert len(server.requests("/usage")) == 4
            assert agent.circuit_breakers["amplitude"].state is CircuitState.CLOSED
        finally:
            await http.aclose()


# ---------------------------------------------------------------------------------------
# edges
# ---------------------------------------------------------------------------------------


async def test_straggler_outcomes_do_not_disturb_an_open_circuit(clock: FakeClock) -> None:
    seen: list[CircuitState] = []
    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=10.0, clock=clock)
    breaker.add_listener(lambda _n, _o, new: seen.append(new))
    assert breaker.retry_in() == 0.0
    slow_ok = asyncio.Event()

    async def straggler() -> str:
        await slow_ok.wait()
        return "late success"

    task = asyncio.create_task(breaker.call(straggler))  # admitted while closed
    await asyncio.sleep(0)
    with pytest.raises(ServiceUnavailable):
        await breaker.call(Flaky(unavailable()))
    slow_ok.set()
    assert await task == "late success"
    # a success that started before the outage must not close the circuit
    assert breaker.state is CircuitState.OPEN
    assert breaker.retry_in() == pytest.approx(10.0)
    breaker.record_failure(unavailable(), probe=True)  # stray probe report: ignored
    assert seen == [CircuitState.OPEN]


async def test_uncopyable_userdata_still_runs_the_tool(
    agent: RecoveringAgent, caplog: pytest.LogCaptureFixture
) -> None:
    class Uncopyable:
        def __deepcopy__(self, memo: dict[int, Any]) -> Any:
            raise TypeError("holds a socket")

    ctx = StandInRunContext(Uncopyable())
    assert await agent.handle_tool_with_error_recovery(ctx, "t", Flaky(value=1)) == 1
    assert any("could not snapshot" in r.getMessage() for r in caplog.records)


async def test_restore_replaces_userdata_without_attributes(agent: RecoveringAgent) -> None:
    ctx = StandInRunContext(["a"])

    async def tool() -> None:
        ctx.session.userdata = ("replaced",)
        raise unavailable()

    with pytest.raises(ToolError):
        await agent.handle_tool_with_error_recovery(ctx, "t", tool)
    assert ctx.session.userdata == ["a"]


async def test_base_exceptions_pass_through_untouched(agent: RecoveringAgent) -> None:
    class Shutdown(BaseException):
        pass

    with pytest.raises(Shutdown):
        await agent.handle_tool_with_error_recovery(
            StandInRunContext(TrialState()), "t", Flaky(Shutdown())
        )
    with pytest.raises(Shutdown):
        await agent.call_with_retry_and_circuit_breaker("amplitude", Flaky(Shutdown()), FALLBACK)


# ---------------------------------------------------------------------------------------
# integration with PandaDocTrialistAgent
# ---------------------------------------------------------------------------------------


async def test_agent_integration_uses_the_recovery_layer(clock: FakeClock) -> None:
    from src.agent import PandaDocTrialistAgent
    from src.registry import VENDORS
    from src.services.wiring import TrialistServices

    agent = PandaDocTrialistAgent(TrialistServices(), clock=clock, sleep=RecordingSleep(clock))
    assert isinstance(agent, ErrorRecoveryMixin)
    assert {"amplitude", "chilipiper", "hubspot", "salesforce"} <= set(agent.circuit_breakers)
    assert tuple(agent.circuit_breakers) == VENDORS.names()  # one per registered vendor
    assert agent.retry_policy == VoiceRetryPolicy(max_retries=2, base_delay=0.5, max_delay=3.0)
    func = Flaky(*(unavailable() for _ in range(9)))
    for _ in range(3):
        assert await agent.call_with_retry_and_circuit_breaker("amplitude", func, FALLBACK) == (
            FALLBACK
        )
    assert agent.circuit_breakers["amplitude"].state is CircuitState.OPEN
    assert agent.get_error_response("timeout") in ERROR_RESPONSES["timeout"]


# ---------------------------------------------------------------------------------------
# review findings: probes, concurrency, budgets
# ---------------------------------------------------------------------------------------


async def test_probe_ended_by_a_base_exception_does_not_close(clock: FakeClock) -> None:
    class Shutdown(BaseException):
        pass

    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=1.0, clock=clock)
    with pytest.raises(ServiceUnavailable):
        await breaker.call(Flaky(unavailable()))
    clock.advance(1.0)
    with pytest.raises(Shutdown):
        await breaker.call(Flaky(Shutdown()))
    assert breaker.state is CircuitState.OPEN  # undecided: due again at once (issue #23)
    assert breaker.retry_in() == 0
    assert await breaker.call(Flaky(value="probe")) == "probe"
    assert breaker.state is CircuitState.CLOSED


async def test_a_probe_that_outlived_a_reset_is_ignored(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=1.0, clock=clock)
    with pytest.raises(ServiceUnavailable):
        await breaker.call(Flaky(unavailable()))
    clock.advance(1.0)
    stale = breaker.acquire()
    assert stale
    breaker.reset()
    with pytest.raises(ServiceUnavailable):
        await breaker.call(Flaky(unavailable()))
    clock.advance(1.0)
    current = breaker.acquire()
    assert current and current != stale
    breaker.record_success(probe=stale)  # the old probe finishes late
    assert breaker.state is CircuitState.HALF_OPEN
    with pytest.raises(CircuitOpenError):  # the current probe still holds the slot
        breaker.acquire()
    breaker.record_failure(unavailable(), probe=current)
    assert breaker.state is CircuitState.OPEN


async def test_bad_arguments_are_not_a_service_failure(agent: RecoveringAgent) -> None:
    with pytest.raises(ValueError):
        await agent.call_with_retry_and_circuit_breaker("amplitude", Flaky(), FALLBACK, -1)
    assert agent.circuit_breakers["amplitude"].failure_count == 0


async def test_restore_keeps_identity_of_slotted_dataclasses(agent: RecoveringAgent) -> None:
    @dataclass(slots=True)
    class Slotted:
        facts: list[str] = field(default_factory=list)

    state = Slotted(["kept"])
    ctx = StandInRunContext(state)

    async def tool() -> None:
        state.facts.append("half-written")
        raise unavailable()

    with pytest.raises(ToolError):
        await agent.handle_tool_with_error_recovery(ctx, "t", tool)
    assert ctx.session.userdata is state
    assert state.facts == ["kept"]


async def test_no_retry_starts_without_time_for_an_attempt(
    sleep: RecordingSleep, clock: FakeClock
) -> None:
    async def slow_failure() -> None:
        clock.advance(0.6)
        raise unavailable()

    func_calls = 0

    async def counted() -> None:
        nonlocal func_calls
        func_calls += 1
        await slow_failure()

    with pytest.raises(ServiceUnavailable):
        await retry_with_exponential_backoff(
            counted,
            max_retries=5,
            base_delay=0.1,
            jitter=False,
            deadline=1.0,
            min_attempt=0.3,
            sleep=sleep,
            clock=clock,
        )
    # t=0.6 failed; 0.6 + 0.1 delay + 0.3 minimum attempt >= 1.0: stop instead of a
    # doomed second attempt
    assert func_calls == 1 and sleep.delays == []


async def test_parallel_tools_never_erase_a_siblings_success(agent: RecoveringAgent) -> None:
    state = TrialState()
    ctx = StandInRunContext(state)
    started = asyncio.Event()

    async def failing() -> None:
        state.facts.append("half-written")
        started.set()
        await asyncio.sleep(0)
        raise unavailable()

    async def succeeding() -> str:
        await started.wait()
        state.email = "saved@example.com"
        return "ok"

    results = await asyncio.gather(
        agent.handle_tool_with_error_recovery(ctx, "a", failing),
        agent.handle_tool_with_error_recovery(ctx, "b", succeeding),
        return_exceptions=True,
    )
    assert isinstance(results[0], ToolError) and results[1] == "ok"
    assert state.email == "saved@example.com"  # the sibling's save survived the rollback
    assert state.facts == []  # and the failed tool left nothing behind


# ---------------------------------------------------------------------------------------
# The package's other parts, covered here too (the spec's coverage command): the shared
# breaker, the rate rule's window, the retry budget, the bulkhead, the change set, and
# the operation kinds' retry rules (src/registry/kinds.py).
# ---------------------------------------------------------------------------------------


class BrokenStore(MemoryStore):
    """A store that fails every operation (the guard turns it into StoreError)."""

    async def _mutate(self, name: str, fn: Any) -> Any:
        raise OSError("store down")

    async def _read(self, name: str) -> Any:
        raise OSError("store down")


def _guard(store: Any, clock: FakeClock) -> StoreGuard:
    return StoreGuard(store, clock=clock, cool_down=0.0)


def _shared(name: str, guard: StoreGuard, clock: FakeClock, **kw: Any) -> CircuitBreaker:
    return CircuitBreaker(
        failure_threshold=3, recovery_timeout=30.0, name=name, clock=clock, store=guard, **kw
    )


async def test_shared_breaker_opens_probes_and_closes_for_the_fleet(clock: FakeClock) -> None:
    guard = _guard(MemoryStore(clock=clock), clock)
    first, second = _shared("amplitude", guard, clock), _shared("amplitude", guard, clock)
    for _ in range(3):
        assert await first.admit() == 0
        await first.on_failure(unavailable())
    assert first.state is CircuitState.OPEN
    await second.refresh(force=True)
    assert second.state is CircuitState.OPEN and second.retry_in() > 0
    with pytest.raises(CircuitOpenError):
        await second.admit()
    clock.advance(31.0)
    probe = await first.admit()
    assert probe  # one probe for the fleet
    with pytest.raises(CircuitOpenError):
        await second.admit()
    await first.on_success(probe=probe)
    assert first.state is CircuitState.CLOSED
    await second.refresh(force=True)
    assert second.state is CircuitState.CLOSED
    # a success after counted failures clears the shared count
    await second.on_failure(unavailable())
    await second.on_success()
    await first.refresh(force=True)
    assert first.failure_count == 0
    # an uncounted answer does not count fleet-wide
    await first.on_failure(NotFound("amplitude"))
    assert first.failure_count == 0
    assert "amplitude" in repr(first)


async def test_shared_breaker_failed_probe_reopens_for_everyone(clock: FakeClock) -> None:
    guard = _guard(MemoryStore(clock=clock), clock)
    breaker = _shared("hubspot", guard, clock)
    for _ in range(3):
        await breaker.on_failure(unavailable())
    clock.advance(31.0)
    probe = await breaker.admit()
    await breaker.on_failure(unavailable(), probe=probe)
    assert breaker.state is CircuitState.OPEN
    other = _shared("hubspot", guard, clock)
    await other.refresh(force=True)
    assert other.state is CircuitState.OPEN
    # a probe that only got an uncounted answer proves the service is up
    clock.advance(31.0)
    probe = await breaker.admit()
    await breaker.on_failure(NotFound("hubspot"), probe=probe)
    assert breaker.state is CircuitState.CLOSED


async def test_shared_breaker_keeps_working_when_the_store_is_down(clock: FakeClock) -> None:
    breaker = _shared("salesforce", _guard(BrokenStore(clock=clock), clock), clock)
    await breaker.refresh(force=True)  # nothing to adopt: local state stays
    for _ in range(3):
        assert await breaker.admit() == 0
        await breaker.on_failure(unavailable())
    assert breaker.state is CircuitState.OPEN  # counted locally
    with pytest.raises(CircuitOpenError):
        await breaker.admit()
    clock.advance(31.0)
    probe = await breaker.admit()  # this process decides alone
    assert probe
    await breaker.on_success(probe=probe)
    assert breaker.state is CircuitState.CLOSED


async def test_shared_breaker_slow_calls_open_it_for_the_fleet(clock: FakeClock) -> None:
    guard = _guard(MemoryStore(clock=clock), clock)
    rule = RateRule(slow_call_duration=1.0, slow_call_rate_threshold=0.5, minimum_calls=2)
    breaker = _shared("chilipiper", guard, clock, rate_rule=rule)
    await breaker.on_success(duration=2.0)
    await breaker.on_success(duration=2.0)
    assert breaker.state is CircuitState.OPEN
    other = _shared("chilipiper", guard, clock)
    await other.refresh(force=True)
    assert other.state is CircuitState.OPEN
    # the failure rate opens it through the store at once
    rated = _shared("amplitude", guard, clock, rate_rule=RateRule(minimum_calls=2))
    await rated.on_success(duration=0.1)
    await rated.on_failure(unavailable(), duration=0.1)
    assert rated.state is CircuitState.OPEN


def test_breaker_rate_rule_and_listeners_locally(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[tuple[str, str]] = []

    def broken(name: str, old: Any, new: Any) -> None:
        raise RuntimeError("metrics hook broke")

    breaker = CircuitBreaker(
        failure_threshold=10,
        recovery_timeout=30.0,
        name="amplitude",
        clock=clock,
        rate_rule=RateRule(minimum_calls=4, window_size=4),
        listeners=[broken],
    )
    breaker.add_listener(lambda name, old, new: seen.append((str(old), str(new))))
    caplog.set_level(logging.WARNING)
    breaker.record_success()
    breaker.record_success()
    breaker.record_failure(unavailable())
    breaker.record_failure(unavailable())  # 2 of 4 failed: the 50 % rate opens it
    assert breaker.state is CircuitState.OPEN
    assert seen == [("closed", "open")]
    assert "failure rate 50% over the last 4 calls" in caplog.text
    assert "listener failed" in caplog.text
    stale = 0
    clock.advance(31.0)
    stale = breaker.acquire()
    breaker.reset()  # an operator closed it while the probe was out
    breaker.record_failure(unavailable(), probe=stale)  # the stale probe decides nothing
    assert breaker.state is CircuitState.CLOSED
    breaker.record_success(probe=stale)
    assert breaker.state is CircuitState.CLOSED


def test_rate_rule_window_judges_recent_calls_only() -> None:
    for bad in (
        {"failure_rate_threshold": 0.0},
        {"slow_call_rate_threshold": 1.5},
        {"slow_call_duration": -1.0},
        {"minimum_calls": 30, "window_size": 20},
    ):
        with pytest.raises(ValueError):
            RateRule(**bad)
    rule = RateRule(minimum_calls=2, window_size=4, window_seconds=10.0, slow_call_duration=1.0)
    window = SlidingWindow(rule)
    assert window.failure_rate() == 0.0 and window.slow_rate() == 0.0
    assert window.record(0.0, failed=True, duration=0.1) is None  # below minimum_calls
    assert window.record(20.0, failed=False, duration=0.1) is None  # the old one expired
    assert len(window) == 1
    assert window.record(21.0, failed=False, duration=5.0) is None
    assert window.record(22.0, failed=False, duration=5.0) is None  # 2 of 3 slow < 100 %
    assert window.slow_rate() == pytest.approx(2 / 3)
    assert window.record(23.0, failed=True, duration=0.1) is None  # 1 of 4 failed
    assert window.record(24.0, failed=True, duration=0.1) == "failure rate"  # 2 of 4
    window.clear()
    assert len(window) == 0
    assert process_window("amplitude", rule) is process_window("amplitude", rule)
    reset_process_protection()
    assert process_window("amplitude", rule) is not window


async def test_retry_budgets_local_and_fleet(clock: FakeClock) -> None:
    for bad in ({"max_tokens": 0.5}, {"token_ratio": 0.0}, {"window_s": 0.0}):
        with pytest.raises(ValueError):
            RetryBudget("amplitude", **bad)  # type: ignore[arg-type]
    # Floor 1 per 10 s window, no share: one retry, then none until the window slides.
    budget = RetryBudget("amplitude", max_tokens=1.0, token_ratio=0.01, clock=clock)
    budget.started(retry=False)
    assert await budget.on_failure()  # reserved: the floor allows one
    assert budget.may_retry()
    budget.started(retry=True)
    assert not await budget.on_failure()  # the retry failed too: the floor is spent
    assert not budget.may_retry()
    budget.refuse()
    clock.advance(11.0)  # the window slid: the floor refilled
    budget.started(retry=False)
    assert await budget.on_failure()
    budget.started(retry=True)
    await budget.on_success(retry=True)  # a retry that answered is given back
    fresh = RetryBudget("amplitude", max_tokens=1.0, token_ratio=0.01, clock=clock)
    assert fresh.may_retry()  # no failure reported yet: the window's estimate
    fresh.started(retry=True)  # granted by the estimate: counted at once
    assert not fresh.may_retry()
    assert (budget.firsts, budget.retries, budget.refused) == (2, 2, 1)

    guard = _guard(MemoryStore(clock=clock), clock)
    fleet = process_budget("hubspot", 1.0, 0.01, guard=guard)
    assert isinstance(fleet, FleetRetryBudget)
    assert process_budget("hubspot", 1.0, 0.01, guard=guard) is fleet
    other = FleetRetryBudget("hubspot", guard, 1.0, 0.01, clock=clock)
    fleet.started(retry=False)
    assert await fleet.on_failure()  # the fleet's one retry of the window...
    other.started(retry=False)
    assert not await other.on_failure()  # ...is gone for another conversation
    fleet.started(retry=True)
    await fleet.on_success(retry=True)  # given back through the store
    other.started(retry=False)
    assert await other.on_failure()
    broken = FleetRetryBudget(
        "hubspot", _guard(BrokenStore(clock=clock), clock), 1.0, 0.01, clock=clock
    )
    broken.started(retry=False)
    assert await broken.on_failure()  # the store is down: the local window goes on
    broken.started(retry=True)
    await broken.on_success(retry=True)
    assert broken.may_retry()
    assert isinstance(process_budget("salesforce", 4.0, 0.5), RetryBudget)


async def test_bulkhead_limits_and_refuses() -> None:
    with pytest.raises(ValueError):
        Bulkhead("amplitude", max_concurrent=0)
    with pytest.raises(ValueError):
        Bulkhead("amplitude", max_wait=-1.0)
    at_once = Bulkhead("amplitude", max_concurrent=1, max_wait=0.0)
    async with at_once.slot():
        assert at_once.in_flight == 1
        with pytest.raises(BulkheadFull):
            async with at_once.slot():
                pass
    waiting = Bulkhead("amplitude", max_concurrent=1, max_wait=0.01)
    async with waiting.slot():
        with pytest.raises(BulkheadFull):
            async with waiting.slot():
                pass
    assert waiting.peak == 1 and waiting.in_flight == 0
    shared = process_bulkhead("amplitude", 2, 0.1)
    assert process_bulkhead("amplitude", 2, 0.1) is shared
    assert process_bulkhead("amplitude", 3, 0.1) is not shared  # reconfigured


async def test_call_with_retry_uses_the_fallback_when_the_bulkhead_is_full(
    agent: RecoveringAgent,
) -> None:
    bulkhead = Bulkhead("amplitude", max_concurrent=1, max_wait=0.0)
    agent.bulkheads = {"amplitude": bulkhead}
    async with bulkhead.slot():
        func = Flaky()
        assert await agent.call_with_retry_and_circuit_breaker("amplitude", func, FALLBACK) == (
            FALLBACK
        )
    assert func.calls == 0


async def test_call_with_retry_spends_and_respects_the_retry_budget(
    agent: RecoveringAgent,
) -> None:
    budget = RetryBudget("amplitude", max_tokens=1.0, token_ratio=0.01, clock=agent.retry_clock)
    agent.retry_budgets = {"amplitude": budget}
    func = Flaky(unavailable(), unavailable(), unavailable())
    assert await agent.call_with_retry_and_circuit_breaker("amplitude", func, FALLBACK) == (
        FALLBACK
    )
    assert func.calls == 2  # the window's one retry spent: the second was refused
    assert budget.refused == 1
    func = Flaky(value="data")
    assert await agent.call_with_retry_and_circuit_breaker("amplitude", func, FALLBACK) == "data"
    assert (budget.firsts, budget.retries) == (2, 1)


async def test_operation_kinds_decide_what_is_sent_again(agent: RecoveringAgent) -> None:
    """One rule per kind (src/registry/kinds.py): a read retries but not a hang; a
    write re-sends only what certainly did not apply and ends an unknown outcome in
    OutcomeUnknown; a write without a lookup is retried once at most."""
    call = agent.call_with_retry_and_circuit_breaker
    hang = Flaky(ServiceTimeout("amplitude"), value="data")
    assert await call("amplitude", hang, FALLBACK, kind=READ) == FALLBACK
    assert hang.calls == 1
    blip = Flaky(unavailable(), value="data")
    assert await call("amplitude", blip, FALLBACK, kind=READ) == "data"
    with pytest.raises(NotFound):  # an answer goes to the tool body
        await call("amplitude", Flaky(NotFound("amplitude")), FALLBACK, kind=READ)

    err500 = ServiceUnavailable("salesforce", status=500)
    write = Flaky(err500, value="saved")
    with pytest.raises(OutcomeUnknown) as info:
        await call("salesforce", write, FALLBACK, kind=WRITE_WITH_LOOKUP)
    assert write.calls == 1 and info.value.__cause__ is err500
    write = Flaky(ServiceUnavailable("salesforce", status=503), value="saved")
    assert await call("salesforce", write, FALLBACK, kind=WRITE_WITH_LOOKUP) == "saved"

    once = Flaky(*(ServiceUnavailable("hubspot", status=503) for _ in range(3)))
    assert await call("hubspot", once, FALLBACK, kind=WRITE_WITHOUT_LOOKUP) == FALLBACK
    assert once.calls == 2  # the first attempt and one retry
    reset = Flaky(ConnectionFailed("hubspot"))
    with pytest.raises(OutcomeUnknown):
        await call("hubspot", reset, FALLBACK, kind=WRITE_WITHOUT_LOOKUP)
    assert reset.calls == 1
    assert retry_rule(READ).retries(2) == 2 and retry_rule(WRITE_WITHOUT_LOOKUP).retries(2) == 1
    assert WRITE_WITH_LOOKUP.is_write is not False
    assert outcome_unknown(ServiceTimeout("x")) and not outcome_unknown(RateLimited("x"))


class PlainState:
    """Userdata that is neither a dict nor a dataclass: deep-copied, restored whole."""

    def __init__(self) -> None:
        self.notes: list[str] = []


class Uncopyable:
    def __deepcopy__(self, memo: Any) -> Any:
        raise TypeError("no copies")


async def test_tool_wrapper_restores_any_kind_of_userdata(agent: RecoveringAgent) -> None:
    async def fail_after(change: Any) -> None:
        change()
        raise unavailable()

    plain = PlainState()
    ctx = StandInRunContext(plain)
    with pytest.raises(ToolError):
        await agent.handle_tool_with_error_recovery(
            ctx, "t", lambda: fail_after(lambda: plain.notes.append("x"))
        )
    assert plain.notes == [] and ctx.userdata is plain

    listed: list[str] = []
    ctx = StandInRunContext(listed)
    with pytest.raises(ToolError):
        await agent.handle_tool_with_error_recovery(
            ctx, "t", lambda: fail_after(lambda: listed.append("x"))
        )
    assert ctx.userdata == []

    none_ctx = StandInRunContext(None)  # no userdata: nothing to restore
    with pytest.raises(ToolError):
        await agent.handle_tool_with_error_recovery(none_ctx, "t", lambda: fail_after(list))

    odd = StandInRunContext(Uncopyable())  # cannot be copied: run anyway
    with pytest.raises(ToolError):
        await agent.handle_tool_with_error_recovery(odd, "t", lambda: fail_after(list))


async def test_change_set_restores_dict_keys_and_set_entries(agent: RecoveringAgent) -> None:
    state: dict[str, Any] = {"tags": {"a"}, "kept": 1}
    ctx = StandInRunContext(state)

    async def fail() -> None:
        state["new"] = "added"
        state["tags"].add("b")
        raise unavailable()

    with pytest.raises(ToolError):
        await agent.handle_tool_with_error_recovery(ctx, "t", fail)
    assert state == {"tags": {"a"}, "kept": 1}

    async def replace() -> None:
        state["tags"] = {"z"}
        raise unavailable()

    tags = state["tags"]
    with pytest.raises(ToolError):
        await agent.handle_tool_with_error_recovery(ctx, "t", replace)
    assert state["tags"] is tags and tags == {"a"}


async def test_change_set_siblings_keep_each_others_saves(agent: RecoveringAgent) -> None:
    """Two tools of one reply on one state: the failed one's rollback keeps what the
    successful sibling saved, and undoes only its own change."""
    state: dict[str, Any] = {"usage": None, "record": None, "slots": ["old"]}
    ctx = StandInRunContext(state)
    started = asyncio.Event()
    release = asyncio.Event()

    async def failing() -> None:
        state["record"] = "half-written"
        state["slots"].append("partial")
        started.set()
        await release.wait()
        raise unavailable()

    async def succeeding() -> str:
        await started.wait()
        state["usage"] = "14 documents"
        release.set()
        return "ok"

    results = await asyncio.gather(
        agent.handle_tool_with_error_recovery(ctx, "fail", failing),
        agent.handle_tool_with_error_recovery(ctx, "ok", succeeding),
        return_exceptions=True,
    )
    assert isinstance(results[0], ToolError) and results[1] == "ok"
    assert state == {"usage": "14 documents", "record": None, "slots": ["old"]}


async def _let_others_run() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.mark.parametrize("tracked", [False, True])
async def test_change_set_a_failure_while_a_sibling_runs(
    agent: RecoveringAgent, tracked: bool
) -> None:
    """The failing tool ends first, while its sibling still runs: what it left is undone
    when the last tool of the reply ends, unless the sibling saved over it."""
    from src.state import TrialistData

    data: Any = TrialistData() if tracked else {"name": None, "company": None, "email": None}

    def put(name: str, value: Any) -> None:
        if tracked:
            setattr(data, name, value)
        else:
            data[name] = value

    def get(name: str) -> Any:
        return getattr(data, name) if tracked else data[name]

    ctx = StandInRunContext(data)
    started, failed = asyncio.Event(), asyncio.Event()

    async def failing() -> None:
        put("name", "Half Written")
        put("company", "Left Behind")
        started.set()
        raise unavailable()

    async def succeeding() -> str:
        await started.wait()
        await _let_others_run()  # the sibling failed and rolled back meanwhile
        put("company", "Acme")  # a save over what the failed sibling left
        put("email", "jane@acme.example.com")
        return "ok"

    results = await asyncio.gather(
        agent.handle_tool_with_error_recovery(ctx, "fail", failing),
        agent.handle_tool_with_error_recovery(ctx, "ok", succeeding),
        return_exceptions=True,
    )
    assert isinstance(results[0], ToolError) and results[1] == "ok"
    assert get("name") is None  # the failed tool's own change: undone
    assert get("company") == "Acme"  # the sibling's save: kept
    assert get("email") == "jane@acme.example.com"
    assert not failed.is_set()
