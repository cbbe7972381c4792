"""The one place the simulation touches our code's wiring: how a job process is built
(a real :class:`~src.agent.PandaDocTrialistAgent`, its breakers, retry budgets,
bulkheads, rate-rule windows, outbox and store guard), how a tool is called, how a job
ends, how another process drains the outbox, and what is read back (probe in flight,
dead letters). When interfaces move (operation kinds, the dead-letter outbox), adjust
this module only.

Everything below the vendor clients and the store is real: the model swaps only the
edge (:mod:`.vendors`, :mod:`.faults`).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

from livekit.agents.llm import ToolError

from src.agent import PandaDocTrialistAgent
from src.error_recovery import CircuitBreaker, CircuitState
from src.error_recovery.protection import reset_process_protection
from src.outbox import PendingWrite
from src.phrases import ACCOUNT_FALLBACK, SLOTS_FALLBACK, USAGE_FALLBACK
from src.sandbox.data import TrialUser
from src.services.amplitude import AmplitudeClient
from src.services.quota import VendorLimiter
from src.services.wiring import TrialistServices
from src.settings import Settings
from src.state import TrialistData
from src.store import (
    FleetQuotaStore,
    FleetUsageCache,
    ResilienceStore,
    SqliteStore,
    StoreGuard,
    open_store,
)
from src.tools import crm, demo, usage

from .clock import VirtualClock
from .faults import FaultyStore, StoreFaults
from .vendors import (
    AmplitudeHttp,
    ChiliPiperStandIn,
    HubSpotStandIn,
    SalesforceStandIn,
    Vendors,
)

__all__ = [
    "FALLBACK",
    "QUOTA_KEY",
    "TOOLS",
    "Job",
    "circuit_open",
    "dead_letters",
    "drain",
    "end_job",
    "not_due",
    "open_job",
    "open_sim_store",
    "probe_in_flight",
    "run_reply",
    "settle",
    "store_heard_at",
    "stored_writes",
]

TOOLS = ("usage", "account", "slots", "book", "summary")
FALLBACK = {"usage": USAGE_FALLBACK, "account": ACCOUNT_FALLBACK, "slots": SLOTS_FALLBACK}
VENDOR_OF = {"usage": "amplitude", "slots": "chilipiper"}
QUOTA_KEY = "amplitude:quota:hour"
SIM_GUARD_S = 30.0  # the store guard's real-time wait in the simulation
CALL_INDEX: ContextVar[int] = ContextVar("sim_call_index", default=-1)


@dataclass
class Job:
    """One conversation in its own (simulated) job process."""

    agent: PandaDocTrialistAgent
    data: TrialistData
    guard: StoreGuard
    services: TrialistServices
    person: TrialUser
    writes: dict[str, PendingWrite] = field(default_factory=dict)  # write id -> write
    origin: dict[str, int] = field(default_factory=dict)  # write id -> call of its reply
    # (vendor, old, new, requests the vendor had seen) for every breaker transition
    transitions: list[tuple[str, str, str, int]] = field(default_factory=list)
    opened_at: dict[str, int] = field(default_factory=dict)  # vendor -> requests seen
    # when this job's circuit last opened (kept: transitions are cleared each step)
    closed_at: dict[str, int] = field(default_factory=dict)  # ... last closed
    # vendor -> requests seen when the circuit that last opened had closed before (its
    # rate window had started again then)
    window_from: dict[str, int] = field(default_factory=dict)
    opened_time: dict[str, float] = field(default_factory=dict)  # ... on the clock


def _transition_log(job: Job, vendors: Vendors) -> Callable[[str, Any, Any], None]:
    def note(name: str, old: Any, new: Any) -> None:
        seen = len(vendors[name].journal)
        job.transitions.append((name, str(old), str(new), seen))
        if new is CircuitState.OPEN:
            job.opened_at[name] = seen
            job.window_from[name] = job.closed_at.get(name, 0)
            job.opened_time[name] = vendors[name].clock.now()
        elif new is CircuitState.CLOSED:
            job.closed_at[name] = seen

    return note


def open_sim_store(store_url: str, clock: VirtualClock) -> ResilienceStore:
    """The real store for ``store_url``; a SQLite file on the virtual wall clock (Redis
    keeps the server's own clock)."""
    if store_url.startswith("sqlite://"):
        return SqliteStore(store_url[len("sqlite://") :], clock=clock.wall)
    return open_store(store_url)


def _process(
    store_url: str, faults: StoreFaults, clock: VirtualClock, vendors: Vendors, settings: Settings
) -> tuple[StoreGuard, TrialistServices]:
    """A fresh process: its own store connection, guard and per-process protection."""
    reset_process_protection()  # windows, bulkheads, budgets: this process's own
    inner = open_sim_store(store_url, clock)
    # The guard's wait is real time (0.3 s): on a loaded host a healthy SQLite operation
    # could outlast it, and a run would not replay. A store slower than the guard is the
    # proxy's ``slow`` fault (deterministic); the real wait only bounds a stuck store.
    guard = StoreGuard(
        cast(ResilienceStore, FaultyStore(inner, faults, clock.now)),
        timeout=SIM_GUARD_S,
        clock=clock.now,
    )
    if hasattr(vendors, "env"):  # the sandbox over real HTTP: the real clients, as a job
        services = TrialistServices.from_settings(
            settings, quota_store=FleetQuotaStore(guard), usage_cache=FleetUsageCache(guard)
        )
        return guard, services
    a = settings.amplitude
    amplitude = AmplitudeClient(
        "sim-key",
        "sim-secret",
        "http://amplitude.invalid",
        clock=clock.utc_now,
        limiter=VendorLimiter(
            "amplitude",
            FleetQuotaStore(guard),
            hourly_budget=a.hourly_query_budget,
            max_concurrent=a.max_concurrent,
            lease_s=2 * settings.resilience.tool_deadline,
            sleep=clock.sleep,
            clock=clock.now,
        ),
        cache=FleetUsageCache(guard),
        cache_ttl=a.usage_cache_ttl,
    )
    amplitude._http = AmplitudeHttp(vendors["amplitude"])  # type: ignore[assignment]
    services = TrialistServices(
        amplitude=amplitude,
        salesforce=SalesforceStandIn(vendors["salesforce"]),
        hubspot=HubSpotStandIn(vendors["hubspot"]),
        chilipiper=ChiliPiperStandIn(vendors["chilipiper"], vendors.meetings),
    )
    return guard, services


def _agent(
    guard: StoreGuard,
    services: TrialistServices,
    settings: Settings,
    clock: VirtualClock,
    seed: int,
) -> PandaDocTrialistAgent:
    agent = PandaDocTrialistAgent(
        services, settings, clock=clock.now, sleep=clock.sleep, now=clock.utc_now, store=guard
    )
    agent.error_rng = random.Random(seed)  # backoff jitter and phrase choice replay
    agent.outbox._wall = clock.wall  # HubSpot's search settle and sent_at, virtual
    return agent


def open_job(
    store_url: str,
    faults: StoreFaults,
    clock: VirtualClock,
    vendors: Vendors,
    settings: Settings,
    person: TrialUser,
    seed: int,
) -> Job:
    guard, services = _process(store_url, faults, clock, vendors, settings)
    agent = _agent(guard, services, settings, clock, seed)
    job = Job(agent, TrialistData(email=person.email), guard, services, person)
    for breaker in agent.circuit_breakers.values():
        breaker.add_listener(_transition_log(job, vendors))
    send = agent.outbox.send

    async def spy(write: PendingWrite, deadline_at: float | None = None) -> Any:
        # Observes only (the real send runs). A tool's write is sent with its deadline;
        # a flush sends without one, and may carry another conversation's writes.
        if deadline_at is not None:
            job.writes.setdefault(write.write_id, write)
            job.origin.setdefault(write.write_id, CALL_INDEX.get())
        return await send(write, deadline_at)

    agent.outbox.send = spy  # type: ignore[method-assign]
    return job


def _tool(job: Job, tool: str, arg: Any) -> tuple[str, Callable[[], Awaitable[str]]]:
    agent, data = job.agent, job.data
    if tool == "usage":
        return "get_trial_usage", lambda: usage.trial_usage(agent, data, arg or "")
    if tool == "account":
        return "lookup_account", lambda: crm.lookup_account(agent, data, arg or "")
    if tool == "slots":
        return "check_demo_availability", lambda: demo.demo_slots(agent, data)
    if tool == "book":
        return "book_demo", lambda: demo.book_demo(agent, data, int(arg or 1))
    text = "Wants a demo next week; asked about templates."
    return "log_call_summary", lambda: crm.log_summary(agent, data, text, "high")


class _Handle:
    """A reply's speech handle: every tool call of one reply shares it (one turn)."""

    num_steps = 0


async def run_reply(
    job: Job, calls: list[tuple[str, Any]]
) -> list[tuple[str, BaseException | None]]:
    """Run one model reply's tool calls together; per call what the caller hears and
    the exception behind a fallback (``None`` for an answer)."""
    context = SimpleNamespace(userdata=job.data, speech_handle=_Handle())

    async def one(index: int, tool: str, arg: Any) -> tuple[str, BaseException | None]:
        CALL_INDEX.set(index)  # this call's own task: the writes it sends are its own
        name, body = _tool(job, tool, arg)
        try:
            return await job.agent.run_tool(context, name, body), None
        except ToolError as exc:
            return exc.message, exc.__cause__ or exc

    heard = list(await asyncio.gather(*(one(i, t, a) for i, (t, a) in enumerate(calls))))
    await settle(job)
    return heard


async def settle(job: Job) -> None:
    """Wait for the job's background outbox flush (started after a CRM answer)."""
    background = list(job.agent.outbox._background)
    if background:
        await asyncio.gather(*background, return_exceptions=True)


async def end_job(job: Job, *, cancel_mid_send: Callable[[], bool] | None = None) -> None:
    """The job's shutdown: the session's ``on_exit`` flush, then the store closed. With
    ``cancel_mid_send``, the flush is cancelled as soon as it returns True (a request in
    flight): the job ends mid-send."""
    try:
        if cancel_mid_send is None:
            await job.agent.on_exit()
        else:
            task = asyncio.ensure_future(job.agent.on_exit())
            for _ in range(200):
                if task.done() or cancel_mid_send():
                    break
                await asyncio.sleep(0)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    finally:
        await job.services.aclose()
        await _close(job.guard)


async def _close(guard: StoreGuard) -> None:
    store = guard.store
    inner = getattr(store, "inner", store)
    await inner.aclose()


async def drain(
    store_url: str,
    faults: StoreFaults,
    clock: VirtualClock,
    vendors: Vendors,
    settings: Settings,
    seed: int,
    without: str = "",
) -> int:
    """``python -m src.outbox drain`` from another process (``without`` one vendor
    configured there, e.g. a host set up for Salesforce only): how many writes still
    wait."""
    guard, services = _process(store_url, faults, clock, vendors, settings)
    if without:
        setattr(services, without, None)
    agent = _agent(guard, services, settings, clock, seed)
    try:
        return await agent.flush_pending_writes()
    finally:
        await services.aclose()
        await _close(guard)


def probe_in_flight(breaker: CircuitBreaker) -> bool:
    """Whether this breaker holds a half-open probe that has not ended."""
    return bool(breaker._probe_token)


def circuit_open(job: Job, vendor: str) -> bool:
    """Whether the job's own breaker for ``vendor`` is open (its local view)."""
    breaker = job.agent.circuit_breakers.get(vendor)
    return breaker is not None and breaker.state is CircuitState.OPEN


def store_heard_at(job: Job, vendor: str) -> float:
    """When the job's process last completed a breaker operation for ``vendor`` with the
    store (what it had to tell, it told by then); ``-inf`` when never."""
    proxy = cast(FaultyStore, job.guard.store)
    return proxy.heard_at.get(vendor, float("-inf"))


def opened_at(job: Job, vendor: str) -> int | None:
    """How many requests ``vendor`` had seen when the job's circuit for it last opened."""
    return job.opened_at.get(vendor)


def half_open(breaker: CircuitBreaker) -> bool:
    return breaker.state is CircuitState.HALF_OPEN


async def dead_letters(store_url: str, clock: VirtualClock) -> set[str]:
    """Write ids in the outbox's dead-letter list (issue #23: ``dead`` in the store's
    outbox listing); empty when the store cannot be read."""
    store = open_sim_store(store_url, clock)
    try:
        items = await store.outbox_list()
    except Exception:
        return set()
    finally:
        await store.aclose()
    return {i.id for i in items if i.dead}


async def not_due(store_url: str, clock: VirtualClock) -> set[str]:
    """Write ids in the store's outbox that a drain starting now does not take: backing
    off (issue #23) or claimed by another drain; empty when the store cannot be read.
    Judged on the store's clock: the virtual one for SQLite, Redis keeps its own."""
    now = clock.wall() if store_url.startswith("sqlite://") else time.time()
    listed = await _listed(store_url, clock)
    return {i.id for i in listed or () if i.next_at > now or i.claimed_until > now}


async def _listed(store_url: str, clock: VirtualClock) -> list[Any] | None:
    store = open_sim_store(store_url, clock)
    try:
        return list(await store.outbox_list())
    except Exception:
        return None
    finally:
        await store.aclose()


async def stored_writes(store_url: str, clock: VirtualClock) -> dict[str, bool] | None:
    """Write ids in the store's outbox, and whether each is claimed now; ``None`` when
    the store cannot be read."""
    store = open_sim_store(store_url, clock)
    try:
        items = await store.outbox_list()
    except Exception:
        return None
    finally:
        await store.aclose()
    return {i.id: i.claimed_until > clock.wall() for i in items}
