"""The ``fleet-outage`` drill: several conversations, each in its own process (as LiveKit
runs jobs), share their breakers through a SQLite resilience store while Amplitude
answers every request with 503. Production tuning, real backoff waits. Judged on what
every caller heard (a natural fallback, never silence or jargon), on the requests that
reached the dead vendor (the fleet's circuit opens after the threshold, not once per
conversation) and on each tool's time against its deadline."""

from __future__ import annotations

import tempfile
from typing import TYPE_CHECKING

from src.drill.fleet import FleetJob, run_fleet_async
from src.drill.harness import technical_leaks
from src.sandbox import FaultKind, Sandbox

if TYPE_CHECKING:
    from src.drill.scenarios import Scenario, ScenarioReport

__all__ = ["CONVERSATIONS", "run_fleet_outage"]

CONVERSATIONS = 6
AT_ONCE = 3
LOOKUPS = 2
MAX_REQUESTS = 2 * 3  # at most two conversations' attempts before every one sees it open


async def run_fleet_outage(scenario: Scenario) -> ScenarioReport:
    from src.drill.scenarios import DEFAULTS, ScenarioReport

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
    limit = DEFAULTS.tool_deadline + 0.5
    if tool_times and max(tool_times) > limit:
        problems.append(f"tool took {max(tool_times):.2f}s > deadline {limit:g}s")
    open_in = sum(r.states.get("amplitude") == "open" for r in results)
    return ScenarioReport(
        name=scenario.name,
        what=scenario.what,
        heard=" | ".join(heard),
        first_words_s=None,
        tool_s=max(tool_times) if tool_times else None,
        turn_s=max(tool_times) if tool_times else 0.0,
        requests=[requests],
        failing="amplitude",
        transitions=[f"amplitude:open in {open_in}/{CONVERSATIONS} processes"],
        budget_s=scenario.budget_s,
        turn_budget_s=scenario.turn_budget_s,
        verdict="MISS" if problems else "ok",
        problems=sorted(set(problems)),
        note=(
            f"{CONVERSATIONS} conversations x {LOOKUPS} lookups, {AT_ONCE} processes at a "
            f"time, one SQLite store; tool seconds are the callers' waits"
        ),
    )
