"""Time to resolution when Amplitude hangs, refuses connections, or is slow but healthy.

What the caller hears depends on how long the agent waits before it answers or falls back.
Three policies, each against a sandbox Amplitude (real HTTP on 127.0.0.1) that hangs, one
that refuses, and one that answers every request after 2 s (slow but healthy: every
policy must answer, none may fall back):

* ours: the ``get_trial_usage`` tool method of the production agent (real
  ``AmplitudeClient``, defaults of ``ResilienceSettings``), with a stand-in ``RunContext``
  (no filler: the session is not running);
* LiveKit's default ``APIConnectOptions`` retry loop;
* a naive ``asyncio.wait_for`` pattern.

Wall clock of the real event loop; all cases run concurrently. ``--quick`` leaves out the
LiveKit (~44 s) and naive (~15 s) hang cases.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable
from typing import Any

from livekit.agents.llm import ToolError

from bench.common import EMAIL, Budget, Report
from src.agent import PandaDocTrialistAgent
from src.drill.harness import StandInRunContext
from src.errors import ServiceError
from src.sandbox import FaultKind, Sandbox
from src.services.amplitude import AmplitudeClient
from src.services.http import HttpOptions
from src.services.wiring import TrialistServices
from src.settings import Settings, settings_from_env
from src.state import TrialistData


async def policy_ours(settings: Settings) -> tuple[str, int]:
    """The production tool method: run_tool -> handle_tool -> usage.trial_usage ->
    protected -> breaker + retries inside the tool deadline."""
    services = TrialistServices.from_settings(settings)
    agent = PandaDocTrialistAgent(services, settings)
    agent.error_rng = random.Random(3)
    attempts = 0
    client = services.amplitude
    assert client is not None
    original = client.get_trial_usage

    async def counted(email: str, *, cached: bool = True) -> Any:
        nonlocal attempts
        attempts += 1
        return await original(email, cached=cached)

    client.get_trial_usage = counted  # type: ignore[method-assign]
    ctx = StandInRunContext(TrialistData(email=EMAIL))
    try:
        await agent.get_trial_usage(ctx)
        return "answered", attempts
    except ToolError:
        return "fallback (spoken sentence)", attempts
    finally:
        await services.aclose()


async def policy_livekit(base_url: str) -> tuple[str, int]:
    """LiveKit's default APIConnectOptions loop (as in its LLM/STT/TTS streams): up to
    1 + max_retry attempts of ``timeout`` each, sleeping ``_interval_for_retry(i)``."""
    from livekit.agents import APIConnectOptions

    opts = APIConnectOptions()
    client = _client(base_url, opts.timeout)
    attempts = 0
    try:
        for i in range(opts.max_retry + 1):
            attempts += 1
            try:
                async with asyncio.timeout(opts.timeout):
                    await client.get_trial_usage(EMAIL)
                return "answered", attempts
            except (ServiceError, TimeoutError) as exc:
                retryable = getattr(exc, "retryable", True)
                if i == opts.max_retry or not retryable:
                    return f"raised ({type(exc).__name__})", attempts
                await asyncio.sleep(opts._interval_for_retry(i))
        return "exhausted", attempts
    finally:
        await client.aclose()


async def policy_naive(base_url: str) -> tuple[str, int]:
    """asyncio.wait_for(5 s) per attempt, 2 retries, no backoff."""
    client = _client(base_url, 10.0)
    attempts = 0
    try:
        for _ in range(3):
            attempts += 1
            try:
                await asyncio.wait_for(client.get_trial_usage(EMAIL), 5.0)
                return "answered", attempts
            except (ServiceError, TimeoutError):
                continue
        return "raised", attempts
    finally:
        await client.aclose()


def _client(base_url: str, timeout: float) -> AmplitudeClient:
    """A bare client for the non-ours policies: no breaker, no retries of its own, with
    ``timeout`` as both request and connect limit."""
    from src.sandbox.data import SANDBOX_CREDENTIALS as C

    return AmplitudeClient(
        C["AMPLITUDE_API_KEY"],
        C["AMPLITUDE_SECRET_KEY"],
        base_url,
        options=HttpOptions(timeout=timeout, connect_timeout=timeout),
    )


async def timed(label: str, fault: str, coro: Awaitable[tuple[str, int]]) -> dict[str, Any]:
    """One result row: the policy's outcome and attempts, and its wall-clock seconds."""
    start = time.perf_counter()
    outcome, attempts = await coro
    return {
        "policy": label,
        "fault": fault,
        "seconds": round(time.perf_counter() - start, 3),
        "attempts": attempts,
        "outcome": outcome,
    }


SLOW_MS = 2_000


async def measure(budget: Budget) -> Report:
    """Three policies x hang / refused / slow, all run concurrently (quick: only ours
    against the hang)."""
    async with Sandbox() as hang, Sandbox() as down, Sandbox() as slow:
        hang.amplitude.inject("*", FaultKind.HANG)
        await down.amplitude.go_down()
        slow.amplitude.inject("*", FaultKind.SLOW, delay_ms=SLOW_MS)
        r = settings_from_env(hang.env()).resilience
        ours = (
            f"ours ({r.service_timeout}s/attempt, {r.max_retries} retries, "
            f"{r.tool_deadline}s deadline)"
        )
        lk = "LiveKit APIConnectOptions default (10s, 3 retries)"
        naive = "naive wait_for(5s), 2 retries"
        slow_label = f"slow ({SLOW_MS / 1000:g} s, healthy)"
        cases: list[Awaitable[dict[str, Any]]] = []
        for fault, sandbox in (("hang", hang), ("refused", down), (slow_label, slow)):
            url = sandbox.amplitude.base_url
            cases.append(timed(ours, fault, policy_ours(settings_from_env(sandbox.env()))))
            if not (budget.quick and fault == "hang"):
                cases.append(timed(lk, fault, policy_livekit(url)))
                cases.append(timed(naive, fault, policy_naive(url)))
        rows = list(await asyncio.gather(*cases))
        hang.amplitude.clear()
    notes = ["all cases ran concurrently, one run each"]
    if budget.quick:
        notes.append("--quick: LiveKit (~44 s) and naive (~15 s) hang cases left out")
    false_fallbacks = [
        row["policy"] for row in rows if row["fault"] == slow_label and row["outcome"] != "answered"
    ]
    return Report(
        key="time_to_resolution",
        data={"rows": rows, "false_fallbacks_on_slow_vendor": false_fallbacks},
        tables=[("6. Time to resolution (wall clock, sandbox Amplitude over HTTP)", rows)],
        notes=notes,
    )
