"""Conversations in their own processes, sharing one resilience store: LiveKit runs every
job in a process of its own, so this is how a fleet meets a dead vendor. Used by the
``fleet-outage`` drill, ``bench/fleet.py`` and the fleet tests.

Each conversation is a real :class:`~src.agent.PandaDocTrialistAgent` with real clients
(HTTP to the sandbox), its breakers, Amplitude quota and usage cache shared through
``RESILIENCE_STORE_URL``, running the real tool bodies. Processes come from a
``forkserver`` (as LiveKit's worker does on Linux) that imports the agent once, so a new
conversation process starts in milliseconds, and each process runs exactly one
conversation.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from livekit.agents.llm import ToolError

from src import metrics
from src.agent import PandaDocTrialistAgent
from src.services.wiring import TrialistServices
from src.settings import settings_from_env
from src.state import TrialistData
from src.store import FleetQuotaStore, FleetUsageCache, StoreGuard, open_store
from src.tools import crm, usage

__all__ = ["ConversationResult", "FleetJob", "conversation", "run_fleet"]


@dataclass(frozen=True)
class FleetJob:
    """One conversation: ``lookups`` usage lookups, then an optional call summary.

    ``start_at``: wall-clock time to begin (lines up many processes); ``real_sleep``:
    wait out backoffs (benchmarks) instead of recording them (tests); ``watch``: instead
    of talking, poll the amplitude circuit until it is open elsewhere and report when
    (the visibility measurement)."""

    env: Mapping[str, str]
    lookups: int = 3
    summary: str = ""
    start_at: float = 0.0
    real_sleep: bool = False
    watch: float = 0.0  # seconds to watch for; 0: talk
    email: str = ""  # the caller (default: TRIALIST_EMAIL of env)


@dataclass
class ConversationResult:
    said: list[str] = field(default_factory=list)
    states: dict[str, str] = field(default_factory=dict)
    tool_seconds: list[float] = field(default_factory=list)
    opened_at_wall: float = 0.0  # when this process opened the amplitude circuit
    saw_open_at_wall: float = 0.0  # watch mode: when it saw the circuit open
    pending_after: int = 0  # outbox writes left when the conversation ended


async def _recorded_sleep(_seconds: float) -> None:
    await asyncio.sleep(0)


async def conversation(job: FleetJob) -> ConversationResult:
    """One conversation, start to end, in this process."""
    settings = settings_from_env(job.env)
    guard = StoreGuard(open_store(settings.fleet.store_url))
    services = TrialistServices.from_settings(  # as the entry point: fleet-wide quota, cache
        settings, quota_store=FleetQuotaStore(guard), usage_cache=FleetUsageCache(guard)
    )
    agent = PandaDocTrialistAgent(
        services, settings, store=guard, sleep=asyncio.sleep if job.real_sleep else _recorded_sleep
    )
    result = ConversationResult()
    breaker = agent.circuit_breakers["amplitude"]
    breaker.add_listener(
        lambda _n, _o, new: setattr(result, "opened_at_wall", time.time())
        if str(new) == "open" and not result.opened_at_wall
        else None
    )
    data = TrialistData(email=job.email or job.env.get("TRIALIST_EMAIL") or None)
    try:
        if job.start_at:
            await asyncio.sleep(max(0.0, job.start_at - time.time()))
        if job.watch:
            await _watch(agent, job.watch, result)
            return result
        for _ in range(job.lookups):
            started = time.perf_counter()
            try:
                result.said.append(
                    await agent.run_tool(
                        None, "get_trial_usage", lambda: usage.trial_usage(agent, data, "")
                    )
                )
            except ToolError as exc:
                result.said.append(exc.message)
            result.tool_seconds.append(time.perf_counter() - started)
        if job.summary:
            try:
                result.said.append(await crm.log_summary(agent, data, job.summary, "high"))
            except ToolError as exc:
                result.said.append(exc.message)
        result.pending_after = await agent.flush_pending_writes()  # as at job shutdown
    finally:
        result.states = {n: b.state.value for n, b in agent.circuit_breakers.items()}
        await services.aclose()
        await guard.store.aclose()
        metrics.job_ended()
    return result


async def _watch(agent: PandaDocTrialistAgent, seconds: float, result: ConversationResult) -> None:
    """Ask to call Amplitude every 5 ms (as conversations do) until the shared circuit
    refuses; no request is made."""
    breaker = agent.circuit_breakers["amplitude"]
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        await breaker.refresh()
        if breaker.state.value != "closed":
            result.saw_open_at_wall = time.time()
            return
        await asyncio.sleep(0.005)


def _in_process(job: FleetJob) -> dict[str, Any]:
    logging.basicConfig(level=logging.CRITICAL)  # results are reported, not logged
    return asdict(asyncio.run(conversation(job)))


_CONTEXT: Any = None


def _context() -> Any:
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = multiprocessing.get_context("forkserver")
        _CONTEXT.set_forkserver_preload(["src.drill.fleet", "src.store.redis_store"])
    return _CONTEXT


def run_fleet(
    jobs: Sequence[FleetJob], *, at_once: int = 1, spawn: bool = False
) -> list[ConversationResult]:
    """Run ``jobs``, one process each, ``at_once`` at a time; results in job order.
    ``spawn``: fresh interpreters that see this process's current environment (slower;
    e.g. for ``PROMETHEUS_MULTIPROC_DIR`` set after the forkserver started)."""
    context = multiprocessing.get_context("spawn") if spawn else _context()
    with ProcessPoolExecutor(
        max_workers=max(1, at_once), mp_context=context, max_tasks_per_child=1
    ) as pool:
        return [ConversationResult(**r) for r in pool.map(_in_process, jobs)]


async def run_fleet_async(
    jobs: Sequence[FleetJob], *, at_once: int = 1, spawn: bool = False
) -> list[ConversationResult]:
    """:func:`run_fleet` without blocking the caller's event loop (the sandbox serving
    the conversations runs on it)."""
    return await asyncio.to_thread(run_fleet, jobs, at_once=at_once, spawn=spawn)
