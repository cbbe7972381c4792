"""The Hypothesis state machine over :class:`~.world.World`: rules are the fleet's events,
the invariant checks every rule of :mod:`.invariants` after each step. Hypothesis picks
the rules and their arguments, and shrinks a failing run to a minimal schedule.

:func:`machine_for` makes a machine for one store (a fresh SQLite file per example, or
a ``redis-server`` flushed per example) that enforces a chosen set of invariants; the
others are still checked and counted in :data:`STATS`, never raised.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar

from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from src.sandbox import Sandbox
from src.settings import settings_from_env

from . import adapter
from .invariants import INVARIANTS
from .sandboxed import SandboxVendors
from .vendors import PEOPLE, Outcome, Vendors
from .world import World

__all__ = ["STATS", "FleetMachine", "machine_for"]

STATS: Counter[str] = Counter()  # steps, examples, and violations per invariant

# a healthy answer three times as likely as each fault: blips between answers
OUTCOMES = st.sampled_from([Outcome.OK, Outcome.OK, *Outcome])
VENDOR = st.sampled_from(Vendors.NAMES)
SCHEDULE = st.dictionaries(VENDOR, st.lists(OUTCOMES, min_size=1, max_size=3), max_size=2)
ARG = st.one_of(st.none(), st.integers(0, len(PEOPLE) - 1))
# the CRM tools twice as likely: they are where the outbox, the store and the lookups meet
TOOL = st.sampled_from([*adapter.TOOLS, "account", "summary"])
CALL = st.tuples(TOOL, ARG)
STORE_OPS = ("*", "outbox_put", "outbox_claim", "breaker_failure", "budget_update")
MAX_JOBS = 4
TOOL_OF = {
    "amplitude": "usage",
    "salesforce": "account",
    "hubspot": "account",
    "chilipiper": "slots",
}


class FleetMachine(RuleBasedStateMachine):
    """Subclassed by :func:`machine_for` (store and enforced invariants set there)."""

    make_store: ClassVar[Callable[[Path], str]]
    enforced: ClassVar[frozenset[str]] = frozenset(INVARIANTS)
    with_clock_jumps: ClassVar[bool] = True

    over_http: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.tmp = Path(tempfile.mkdtemp(prefix="sim-"))
        url = type(self).make_store(self.tmp)
        self.sandbox: Sandbox | None = None
        if self.over_http:  # the sandbox servers on this example's event loop
            self.sandbox = Sandbox()
            self.runner.run(self.sandbox.start())
            vendors = SandboxVendors(self.sandbox)
            self.world = World(
                url,
                settings=settings_from_env(vendors.env()),
                vendors_over_http=vendors,
                wall_start=time.time(),  # the sandbox's availability is on real dates
            )
        else:
            self.world = World(url)
        self.found: dict[str, list[str]] = {}
        STATS["examples"] += 1

    def _run(self, coro: Any) -> None:
        self.world.begin_step()
        STATS["steps"] += 1
        self.runner.run(coro)

    # -- rules: conversations ---------------------------------------------------------------
    @initialize(people=st.lists(st.integers(0, len(PEOPLE) - 1), min_size=1, max_size=2))
    def first_conversations(self, people: list[int]) -> None:
        """Every run starts with a conversation or two already under way."""
        for person in people:
            self.world.start(person)

    @precondition(lambda self: len(self.world.jobs) < MAX_JOBS)
    @rule(person=st.integers(0, len(PEOPLE) - 1))
    def start_conversation(self, person: int) -> None:
        self.world.begin_step()
        STATS["steps"] += 1
        self.world.start(person)

    @precondition(lambda self: bool(self.world.jobs))
    @rule(
        job=st.integers(0, MAX_JOBS - 1),
        calls=st.lists(CALL, min_size=1, max_size=2),
        schedule=SCHEDULE,
    )
    def reply(
        self, job: int, calls: list[tuple[str, int | None]], schedule: dict[str, list[Outcome]]
    ) -> None:
        resolved = [(tool, _arg(tool, arg)) for tool, arg in calls]
        self._run(self.world.reply(job, resolved, schedule))

    @precondition(lambda self: bool(self.world.jobs))
    @rule(
        job=st.integers(0, MAX_JOBS - 1),
        tool=TOOL,
        schedules=st.lists(SCHEDULE, min_size=2, max_size=6),
    )
    def burst(self, job: int, tool: str, schedules: list[dict[str, list[Outcome]]]) -> None:
        """One conversation asks the same thing several times in a row (a window's worth
        of calls for the rate rule, a bucket's worth for the retry budget)."""

        async def replies() -> None:
            for schedule in schedules:
                await self.world.reply(job, [(tool, _arg(tool, None))], schedule)

        self._run(replies())

    @precondition(lambda self: bool(self.world.jobs))
    @rule(job=st.integers(0, MAX_JOBS - 1), mid_send=st.booleans())
    def end_conversation(self, job: int, mid_send: bool) -> None:
        self._run(self.world.end(job, mid_send))

    @rule(without=st.sampled_from(["", "", "hubspot", "salesforce"]))
    def drain_from_another_process(self, without: str) -> None:
        """Later (past claim leases and recovery timeouts), ``python -m src.outbox
        drain`` on a host where every CRM, or all but one, is configured."""
        self._run(self.world.drain(later=130.0, without=without))

    # the two stories wait out the recovery timeout, backoffs and claim leases on virtual
    # time: not on a store that keeps its own clock (Redis), like clock_jump
    @precondition(lambda self: bool(self.world.jobs) and self.with_clock_jumps)
    @rule(job=st.integers(0, MAX_JOBS - 1), vendor=VENDOR, replies=st.integers(1, 4))
    def outage_then_recovery(self, job: int, vendor: str, replies: int) -> None:
        """A vendor dies while a conversation keeps asking (its circuit opens, its retry
        budget is spent), then recovers: past the recovery timeout a probe answers. What
        a later blip meets (issue 23, item 1: a budget starved by earlier outages)."""
        tool = TOOL_OF[vendor]

        async def story() -> None:
            self.world.vendor_mode(vendor, "down")
            for _ in range(replies):
                await self.world.reply(job, [(tool, _arg(tool, None))], {})
            self.world.jump(31.0)
            self.world.vendor_mode(vendor, "healthy")
            await self.world.reply(job, [(tool, _arg(tool, None))], {})

        self._run(story())

    @precondition(lambda self: bool(self.world.jobs) and self.with_clock_jumps)
    @rule(
        jobs=st.lists(st.integers(0, MAX_JOBS - 1), min_size=1, max_size=3),
        stuck=st.sampled_from(["salesforce", "hubspot"]),
    )
    def writes_queue_behind_a_stuck_write(self, jobs: list[int], stuck: str) -> None:
        """Conversations find their CRM record, then both CRMs fail while they save their
        call summaries (kept in the outbox); all but ``stuck`` recover and another
        process drains (issue 23, item 3: one write that cannot go blocks the others)."""

        async def story() -> None:
            for job in jobs:
                await self.world.reply(job, [("account", None)], {})
            for vendor in ("salesforce", "hubspot"):
                self.world.vendor_mode(vendor, "down")
            for job in jobs:
                await self.world.reply(job, [("summary", None)], {})
            self.world.vendor_mode("hubspot" if stuck == "salesforce" else "salesforce", "healthy")
            await self.world.drain(later=130.0)

        self._run(story())

    # -- rules: faults and time ---------------------------------------------------------------
    @rule(vendor=VENDOR, mode=st.sampled_from(["healthy", "down", "flapping"]))
    def vendor_mode(self, vendor: str, mode: str) -> None:
        self.world.begin_step()
        STATS["steps"] += 1
        self.world.vendor_mode(vendor, mode)

    @precondition(lambda self: self.with_clock_jumps)
    @rule(seconds=st.sampled_from([1.0, 11.0, 31.0, 121.0, 3601.0]))
    def clock_jump(self, seconds: float) -> None:
        """Past share TTLs, the probe lease (10 s), the recovery timeout (30 s), the claim
        lease (120 s), the quota hour."""
        self.world.begin_step()
        STATS["steps"] += 1
        self.world.jump(seconds)

    @rule(event=st.sampled_from(["down", "up", "wipe"]))
    def store_event(self, event: str) -> None:
        self._run(self.world.store_event(event))

    @rule(op=st.sampled_from(STORE_OPS))
    def store_slower_than_guard(self, op: str) -> None:
        self._run(self.world.store_event("slow", op))

    @rule(record=st.sampled_from(["breaker", "outbox"]))
    def store_malformed_record(self, record: str) -> None:
        self._run(self.world.store_event("corrupt", record))

    @rule()
    def amplitude_quota_spent(self) -> None:
        self._run(self.world.spend_quota())

    # -- the invariants -------------------------------------------------------------------------
    @invariant()
    def invariants_hold(self) -> None:
        broken = []
        for name, check in INVARIANTS.items():
            problems = check(self.world)
            if problems:
                STATS[f"violations:{name}"] += 1
                STATS.setdefault(f"first:{name}", STATS["examples"])
                self.found.setdefault(name, problems)
                if name in self.enforced:
                    broken.append(f"{name}: {problems[0]}")
        assert not broken, "; ".join(broken)

    def teardown(self) -> None:
        try:
            self.runner.run(self.world.end_all())
            if self.sandbox is not None:
                self.runner.run(self.sandbox.stop())
        finally:
            self.runner.close()
            shutil.rmtree(self.tmp, ignore_errors=True)


def _arg(tool: str, arg: int | None) -> Any:
    if tool in ("usage", "account"):
        return None if arg is None else PEOPLE[arg].email  # someone else, or the caller
    if tool == "book":
        return 1 + (arg or 0) % 3
    return None


def sqlite_store(tmp: Path) -> str:
    return f"sqlite:///{tmp / 'fleet.db'}"


def machine_for(
    enforce: Iterable[str] = INVARIANTS,
    *,
    store: Callable[[Path], str] = sqlite_store,
    clock_jumps: bool = True,
    over_http: bool = False,
) -> type[FleetMachine]:
    """A machine class enforcing ``enforce`` on ``store`` (default: a SQLite file)."""
    enforced = frozenset(enforce)
    unknown = enforced - set(INVARIANTS)
    if unknown:
        raise ValueError(f"unknown invariant(s): {', '.join(sorted(unknown))}")
    return type(
        "FleetMachine",
        (FleetMachine,),
        {
            "make_store": staticmethod(store),
            "enforced": enforced,
            "with_clock_jumps": clock_jumps,
            "over_http": over_http,
        },
    )
