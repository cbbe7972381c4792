"""Requests reaching a dead service over many sequential conversations, in one process.

A breaker is meant to spare a dead service (and the caller's wait); this counts how much it
does over ``CONVERSATIONS`` conversations. Each conversation gets a fresh production agent,
and so fresh breakers, as in LiveKit's process-per-job model, and calls the
``get_trial_usage`` tool method (stand-in ``RunContext``, real ``AmplitudeClient`` over
HTTP to the sandbox). The "retries only" rows are the counterfactual without a breaker
(``retry_with_exponential_backoff`` alone, same settings). Backoff sleeps are recorded
instead of slept; "waiting" is the measured request time plus the recorded backoff.

Left out: real processes and a breaker state shared between them (the fleet benchmark).
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from livekit.agents.llm import ToolError

from bench.common import EMAIL, Budget, Report
from src.agent import PandaDocTrialistAgent
from src.drill.harness import StandInRunContext
from src.error_recovery import retry_with_exponential_backoff
from src.errors import ServiceError
from src.sandbox import FaultKind, Sandbox
from src.services.wiring import TrialistServices
from src.settings import Settings, settings_from_env
from src.state import TrialistData

CONVERSATIONS = 20
LOOKUPS = (3, 6)  # usage lookups per conversation (3 asked; 6 shows when the breaker pays)


class RecordingSleep:
    """A ``sleep`` that adds up the backoff instead of waiting it out, so 20 conversations
    of retries finish in seconds while their backoff still counts in "waiting"."""

    def __init__(self) -> None:
        self.total = 0.0

    async def __call__(self, seconds: float) -> None:
        self.total += seconds


async def conversations(
    settings: Settings, lookups: int, *, breaker: bool, sandbox: Sandbox
) -> dict[str, Any]:
    """``CONVERSATIONS`` conversations of ``lookups`` usage lookups each, through the
    per-agent breaker + retries (``breaker=True``) or through retries alone."""
    sleep = RecordingSleep()
    attempts = 0
    start = time.perf_counter()
    r = settings.resilience
    rng = random.Random(11)
    for _ in range(CONVERSATIONS):
        services = TrialistServices.from_settings(settings)
        agent = PandaDocTrialistAgent(services, settings, sleep=sleep)
        agent.error_rng = rng
        client = services.amplitude
        assert client is not None

        async def lookup(
            email: str = EMAIL,
            get: Callable[..., Awaitable[Any]] = client.get_trial_usage,
            *,
            cached: bool = True,
        ) -> Any:
            nonlocal attempts
            attempts += 1
            return await get(email, cached=cached)

        client.get_trial_usage = lookup  # type: ignore[method-assign]
        ctx = StandInRunContext(TrialistData(email=EMAIL))
        for _ in range(lookups):
            if breaker:
                with contextlib.suppress(ToolError):
                    await agent.get_trial_usage(ctx)
            else:
                with contextlib.suppress(ServiceError):
                    await retry_with_exponential_backoff(
                        lookup,
                        max_retries=r.max_retries,
                        base_delay=r.base_delay,
                        max_delay=r.max_delay,
                        deadline=r.tool_deadline,
                        sleep=sleep,
                        rng=rng,
                    )
        await services.aclose()
    request_s = time.perf_counter() - start
    return {
        "attempts": attempts,
        "requests_received": len(sandbox.amplitude.requests()),
        "request_seconds": round(request_s, 3),
        "backoff_seconds_recorded": round(sleep.total, 3),
        "waiting_seconds": round(request_s + sleep.total, 3),
    }


async def measure(budget: Budget) -> Report:
    """One row per fault (503 / refused) x lookups per conversation x with / without breaker,
    each against its own sandbox so the request counts do not mix."""
    rows: list[dict[str, Any]] = []
    for fault in ("503", "refused"):
        for lookups in LOOKUPS:
            for breaker in (True, False):
                async with Sandbox() as sandbox:
                    if fault == "503":
                        sandbox.amplitude.inject("*", FaultKind.SERVICE_UNAVAILABLE)
                    else:
                        await sandbox.amplitude.go_down()
                    settings = settings_from_env(sandbox.env())
                    result = await conversations(
                        settings, lookups, breaker=breaker, sandbox=sandbox
                    )
                rows.append(
                    {
                        "fault": fault,
                        "lookups_per_conversation": lookups,
                        "policy": "tool path (per-agent breaker)"
                        if breaker
                        else "retries only (no breaker)",
                        **result,
                    }
                )
    return Report(
        key="dead_service_conversations",
        data={"conversations": CONVERSATIONS, "rows": rows},
        tables=[(f"7. Dead vendor, {CONVERSATIONS} conversations in one process", rows)],
        notes=[
            "dead service: a fresh agent per conversation (closed breakers); backoff "
            "recorded, not slept; refused requests never reach the sandbox journal, so "
            "'attempts' counts them"
        ],
    )
