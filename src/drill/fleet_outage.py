"""The ``fleet-outage`` drill: several conversations, each in its own process (as LiveKit
runs jobs), share their breakers through a SQLite resilience store while Amplitude
answers every request with 503. Production tuning, real backoff waits. Judged on what
every caller heard (a natural fallback, never silence or jargon), on the requests that
reached the dead vendor (the fleet's circuit opens after the threshold, not once per
conversation) and on each tool's time against its deadline."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass

from src.drill.fleet import FleetJob, run_fleet_async
from src.drill.harness import technical_leaks
from src.sandbox import FaultKind, Sandbox
from src.settings import ResilienceSettings

__all__ = ["CONVERSATIONS", "FleetOutage", "run_fleet_outage"]

CONVERSATIONS = 6
AT_ONCE = 3
LOOKUPS = 2
MAX_REQUESTS = 2 * 3  # at most two conversations' attempts before every one sees it open
NOTE = (
    f"{CONVERSATIONS} conversations x {LOOKUPS} lookups, {AT_ONCE} processes at a "
    "time, one SQLite store; tool seconds are the callers' waits"
)


@dataclass(frozen=True)
class FleetOutage:
    """What the fleet's callers heard and what the dead vendor saw."""

    heard: list[str]
    max_tool_s: float | None
    requests: int
    open_in: int
    problems: list[str]


async def run_fleet_outage(defaults: ResilienceSettings) -> FleetOutage:
    """Run the fleet against a dead Amplitude with ``defaults`` (production tuning)."""
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="fleet-outage-") as tmp:
        async with Sandbox() as sandbox:
            sandbox.amplitude.inject("*", FaultKind.SERVICE_UNAVAILABLE)
            env = {**sandbox.env(), "RESILIENCE_STORE_URL": f"sqlite:///{tmp}/store.db"}
            jobs = [FleetJob(env, lookups=LOOKUPS, real_sleep=True)] * CONVERSATIONS
            results = await run_fleet_async(jobs, at_once=AT_ONCE)
            requests = len(sandbox.amplitude.requests())
    heard = sorted({s for r in results for s in r.said})
    for r in results:
        if len(r.said) != LOOKUPS or not all(s.strip() for s in r.said):
            problems.append("silence")
        problems.extend(leak for s in r.said for leak in technical_leaks(s))
    if requests > MAX_REQUESTS:
        problems.append(f"{requests} requests reached the dead vendor (> {MAX_REQUESTS})")
    tool_times = [t for r in results for t in r.tool_seconds]
    limit = defaults.tool_deadline + 0.5
    if tool_times and max(tool_times) > limit:
        problems.append(f"tool took {max(tool_times):.2f}s > deadline {limit:g}s")
    open_in = sum(r.states.get("amplitude") == "open" for r in results)
    return FleetOutage(
        heard, max(tool_times) if tool_times else None, requests, open_in, sorted(set(problems))
    )
