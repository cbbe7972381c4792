"""Measurement 4: requests reaching a dead service over many sequential conversations.

A breaker is meant to spare a dead service (and the caller's wait); this counts how much it
does, with and without it, over ``CONVERSATIONS`` conversations. Each conversation gets a
fresh agent, and so fresh breakers, as in LiveKit's process-per-job model. Backoff sleeps
are recorded instead of slept; "waiting" is the measured request time plus the recorded
backoff.
"""

from __future__ import annotations

import contextlib
import random
import time
from typing import Any

from bench.common import EMAIL
from src.agent import PandaDocTrialistAgent
from src.error_recovery import retry_with_exponential_backoff
from src.errors import InvalidRequest, NotFound, ServiceError
from src.phrases import USAGE_FALLBACK
from src.sandbox import FaultKind, Sandbox
from src.services.amplitude import AmplitudeClient
from src.services.wiring import TrialistServices
from src.settings import Settings, settings_from_env

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

        async def lookup(client: AmplitudeClient = client) -> Any:
            nonlocal attempts
            attempts += 1
            return await client.get_trial_usage(EMAIL)

        for _ in range(lookups):
            if breaker:
                await agent.call_with_retry_and_circuit_breaker(
                    "amplitude",
                    lookup,
                    USAGE_FALLBACK,
                    max_retries=r.max_retries,
                    deadline=r.tool_deadline,
                    reraise=(NotFound, InvalidRequest),
                )
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


async def bench_dead_service() -> list[dict[str, Any]]:
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
                        "policy": "per-agent breaker + retries" if breaker else "retries only",
                        **result,
                    }
                )
    return rows
