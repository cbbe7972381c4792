"""Measurement 3: time to resolution when Amplitude hangs or refuses connections.

What the caller hears depends on how long the agent waits before it answers or falls back.
Three policies, each against a sandbox Amplitude that hangs and one that refuses:

* ours: the real tool path (real ``AmplitudeClient``, defaults of ``ResilienceSettings``);
* LiveKit's default ``APIConnectOptions`` retry loop;
* a naive ``asyncio.wait_for`` pattern.

Wall clock of the real event loop; the six cases run concurrently so the ~44 s LiveKit hang
case overlaps the others.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable
from typing import Any

from bench.common import EMAIL
from src.agent import PandaDocTrialistAgent
from src.drill.harness import StandInRunContext
from src.errors import ServiceError
from src.sandbox import FaultKind, Sandbox
from src.services.amplitude import AmplitudeClient
from src.services.http import HttpOptions
from src.services.wiring import TrialistServices
from src.settings import Settings, settings_from_env
from src.state import TrialistData
from src.tools import usage


async def policy_ours(settings: Settings) -> tuple[str, int]:
    """The real tool path: handle_tool -> usage.trial_usage -> breaker + retries in budget."""
    services = TrialistServices.from_settings(settings)
    agent = PandaDocTrialistAgent(services, settings)
    agent.error_rng = random.Random(3)
    attempts = 0
    client = services.amplitude
    assert client is not None
    original = client.get_trial_usage

    async def counted(email: str) -> Any:
        nonlocal attempts
        attempts += 1
        return await original(email)

    client.get_trial_usage = counted  # type: ignore[method-assign]
    ctx = StandInRunContext(TrialistData(email=EMAIL))
    try:
        await agent.handle_tool_with_error_recovery(
            ctx, "get_trial_usage", lambda: usage.trial_usage(agent, ctx.userdata, "")
        )
        return "answered", attempts
    except Exception as exc:
        return f"fallback ({type(exc).__name__})", attempts
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


async def bench_resolution() -> list[dict[str, Any]]:
    """Six rows (three policies x hang / refused), all run concurrently."""
    async with Sandbox() as hang, Sandbox() as down:
        hang.amplitude.inject("*", FaultKind.HANG)
        await down.amplitude.go_down()
        hs, ds = settings_from_env(hang.env()), settings_from_env(down.env())
        r = hs.resilience
        ours = (
            f"ours ({r.service_timeout}s/attempt, {r.max_retries} retries, "
            f"{r.tool_deadline}s deadline)"
        )
        lk = "LiveKit APIConnectOptions default (10s, 3 retries)"
        naive = "naive wait_for(5s), 2 retries"
        rows = await asyncio.gather(
            timed(ours, "hang", policy_ours(hs)),
            timed(lk, "hang", policy_livekit(hang.amplitude.base_url)),
            timed(naive, "hang", policy_naive(hang.amplitude.base_url)),
            timed(ours, "refused", policy_ours(ds)),
            timed(lk, "refused", policy_livekit(down.amplitude.base_url)),
            timed(naive, "refused", policy_naive(down.amplitude.base_url)),
        )
        hang.amplitude.clear()
    return list(rows)
