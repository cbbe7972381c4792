"""The simulated fleet: conversations (each a job process of its own) sharing one real
store, the vendor stand-ins, virtual time, and what every caller heard and was promised.
Each step is one event (a reply with its tool calls, a fault, a clock jump, a job
ending, a drain from another process); :mod:`.invariants` judges the world after each.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

from src.phrases import BOOK_FALLBACK, NOTE_QUEUED, NOTE_SAVED, NOTE_WILL_CONFIRM
from src.settings import Settings

from . import adapter
from .clock import WALL_START, VirtualClock
from .faults import StoreFaults, corrupt, wipe
from .vendors import (
    PEOPLE,
    SENDER,
    Outcome,
    Request,
    Vendors,
    last_attempts_failed,
    rate_rule_honest,
)

__all__ = ["Heard", "Promise", "World"]

PROMISING = frozenset({NOTE_SAVED, NOTE_QUEUED, NOTE_WILL_CONFIRM})


@dataclass
class Promise:
    """A CRM write the caller was told is saved (``saved``) or will be (``kept``)."""

    write_id: str
    vendor: str
    job: int
    saved: bool


@dataclass
class Heard:
    """One tool call of a reply: what the caller heard, and what judges it."""

    job: int
    person: int
    tool: str
    arg: Any
    said: str
    cause: BaseException | None
    alone: bool  # the only call of its reply (the harm-free oracle judges those)
    oracle: dict[str, list[Outcome]]  # each vendor's next outcomes as the reply began
    failed_before: dict[str, bool]  # vendor -> its last three attempts had all failed
    # vendor -> this job's own circuit refused it in this reply (no request sent, the
    # circuit open since a failed request of the job's own) after the job's own last
    # three attempts to it had all failed, or its own recent calls had failed at the
    # failure-rate threshold: a process judges on what it saw (the store down, or its
    # shared view not yet due for a refresh, its rate window its own), not on others'
    # answers; or its circuit opened in this reply on the vendor's third failed attempt
    # in a row (whoever sent them), refusing the reply's own retry
    own_circuit: dict[str, bool] = field(default_factory=dict)


@dataclass
class DrainReport:
    left: int
    store_down: bool
    healthy: set[str]
    promised: list[Promise]  # promises not yet applied as the drain began
    dead_letters: set[str] = field(default_factory=set)  # write ids dead-lettered
    not_due: set[str] = field(default_factory=set)  # backing off or claimed as it began


@dataclass
class World:
    store_url: str
    seed: int = 0
    settings: Settings = field(default_factory=Settings)
    # the vendors: in-process stand-ins (default), or the sandbox over HTTP (duck-typed)
    vendors_over_http: Any = None
    wall_start: float = WALL_START

    def __post_init__(self) -> None:
        self.clock = VirtualClock(wall=self.wall_start)
        r = self.settings.resilience
        self.vendors: Vendors = self.vendors_over_http or Vendors(self.clock, r.service_timeout)
        self.faults = StoreFaults()
        self.jobs: dict[int, adapter.Job] = {}
        self.ended: list[adapter.Job] = []
        self.by_key: dict[int, adapter.Job] = {}  # every job started, running or ended
        self.promises: dict[str, Promise] = {}
        self.heard: list[Heard] = []  # this step's
        self.all_heard = 0
        self.memory_only: set[str] = set()  # ended with the store down: kept in memory only
        self.lost_by_store: set[str] = set()  # in the store when it restarted empty
        self.quota_spent_at: float | None = None
        self.crashes: list[str] = []  # exceptions that escaped a step (never expected)
        self.drains: list[DrainReport] = []
        self._next = 0

    # -- conversations -------------------------------------------------------------------
    def start(self, person: int) -> int:
        key = self._next
        self._next += 1
        self.jobs[key] = self.by_key[key] = adapter.open_job(
            self.store_url,
            self.faults,
            self.clock,
            self.vendors,
            self.settings,
            PEOPLE[person % len(PEOPLE)],
            seed=self.seed * 1000 + key,
        )
        return key

    def job_key(self, index: int) -> int | None:
        keys = sorted(self.jobs)
        return keys[index % len(keys)] if keys else None

    async def reply(
        self, index: int, calls: list[tuple[str, Any]], schedule: dict[str, list[Outcome]]
    ) -> None:
        key = self.job_key(index)
        if key is None:
            return
        job = self.jobs[key]
        self.vendors.set_schedule(schedule)
        vendors = self.vendors.by_name
        oracle = {n: v.peek(6) for n, v in vendors.items()}  # 3 tries x 2
        failed = {n: v.last_failed() for n, v in vendors.items()}
        own_failed = {n: v.last_failed(job=key) for n, v in vendors.items()}
        sent = {n: len(v.journal) for n, v in vendors.items()}
        deaf = self.faults.down or job.guard.cooling_down  # the fleet's word can't reach it
        before = set(job.writes)
        token = SENDER.set(key)
        try:
            results = await adapter.run_reply(job, calls)
        except Exception as exc:  # the conversation broke: every invariant's concern
            self.crashes.append(f"reply raised {type(exc).__name__}")
            return
        finally:
            SENDER.reset(token)
            self.vendors.set_schedule({})
        own_circuit = {
            n: adapter.circuit_open(job, n)
            and (
                (
                    self._opened_on_own_failure(job, key, n)
                    and (
                        (
                            (own_failed[n] or self._opened_by_honest_rate(job, key, n))
                            and not any(r.job == key for r in v.journal[sent[n] :])
                        )
                        or self._opened_on_three_in_this_reply(job, n, sent[n])
                    )
                )
                or self._opened_honestly_and_unheard_since(job, key, n, deaf)
            )
            for n, v in vendors.items()
        }
        person = PEOPLE.index(job.person)
        for (tool, arg), (said, cause) in zip(calls, results, strict=True):
            self.heard.append(
                Heard(
                    key,
                    person,
                    tool,
                    arg,
                    said,
                    cause,
                    len(calls) == 1,
                    oracle,
                    failed,
                    own_circuit,
                )
            )
        self.all_heard += len(results)
        self._promise(key, job, before, calls, results)

    def _opened_on_own_failure(self, job: adapter.Job, key: int, vendor: str) -> bool:
        """Whether the job's circuit for ``vendor`` last opened on a failed request of
        its own (its count or rate rule), not by adopting the fleet's view."""
        seen = adapter.opened_at(job, vendor)
        journal = self.vendors[vendor].journal
        if not seen or seen > len(journal):
            return False
        last = journal[seen - 1]
        return last.job == key and not last.answered

    def _opened_on_three_in_this_reply(self, job: adapter.Job, vendor: str, sent: int) -> bool:
        """Whether the job's circuit for ``vendor`` opened during this reply (from journal
        index ``sent``) when the vendor had failed its last three attempts, whoever sent
        them: the spec's honest opening; the reply's own retry is then refused."""
        seen = adapter.opened_at(job, vendor)
        journal = self.vendors[vendor].journal
        return seen is not None and seen > sent and last_attempts_failed(journal[:seen])

    def _opened_honestly_and_unheard_since(
        self, job: adapter.Job, key: int, vendor: str, deaf: bool
    ) -> bool:
        """Whether the job's circuit for ``vendor`` opened when the vendor had failed its
        last three attempts as far as the fleet could know (answers whose processes have
        not been able to tell the store yet left out), and no word of an answer since
        could reach the job: none to its own requests, and either it cannot hear the
        store (``deaf``: down, or its guard cooling down) or every answer since is one
        the store has not heard of yet. It then judges on what the fleet knows, for the
        recovery timeout: the spec's breaker (issue #24)."""
        seen = adapter.opened_at(job, vendor)
        journal = self.vendors[vendor].journal
        if seen is None or seen > len(journal):
            return False
        known = [r for r in journal[:seen] if not self._untold(r, vendor)]
        if not last_attempts_failed(known):
            return False
        since = [r for r in journal[seen:] if r.answered]
        if any(r.job == key for r in since):
            return False
        return deaf or all(self._untold(r, vendor) for r in since)

    def _untold(self, req: Request, vendor: str) -> bool:
        """An answer its process has not told the store yet: no breaker operation of that
        process on ``vendor`` completed since the answer came."""
        job = self.by_key.get(req.job) if req.job is not None else None
        return req.answered and job is not None and req.done >= adapter.store_heard_at(job, vendor)

    def _opened_by_honest_rate(self, job: adapter.Job, key: int, vendor: str) -> bool:
        """Whether the job's circuit for ``vendor`` last opened when the job's own recent
        calls had failed, as its callers felt them, at the failure-rate threshold (the
        rate rule's honest reason; its window is the process's own, since the circuit
        last closed, of the calls that ended in the window's time before the opening: a
        call that started up to one request limit earlier may have ended in it)."""
        seen = adapter.opened_at(job, vendor)
        r = self.settings.resilience
        since = job.window_from.get(vendor, 0)
        journal = self.vendors[vendor].journal[since : seen or 0]
        window_s = r.window_seconds or float("inf")
        started = job.opened_time.get(vendor, 0.0) - window_s - r.service_timeout
        return rate_rule_honest(
            journal, key, r.window_size, r.minimum_calls, r.failure_rate_threshold, started
        )

    def _promise(
        self,
        key: int,
        job: adapter.Job,
        before: set[str],
        calls: list[tuple[str, Any]],
        results: list[tuple[str, BaseException | None]],
    ) -> None:
        for write_id, write in job.writes.items():
            if write_id in before:
                continue
            index = job.origin.get(write_id, -1)
            if not 0 <= index < len(calls):
                continue
            tool, said = calls[index][0], results[index][0]
            # a summary heard as saved or to be saved, or a demo handed to sales
            promised = said in PROMISING or (tool == "book" and said != BOOK_FALLBACK)
            if promised:
                saved = said == NOTE_SAVED
                self.promises[write_id] = Promise(write_id, write.source, key, saved)

    async def end(self, index: int, mid_send: bool) -> None:
        key = self.job_key(index)
        if key is None:
            return
        job = self.jobs.pop(key)
        requests = sum(len(v.journal) for v in self.vendors.by_name.values())

        def in_flight() -> bool:
            return sum(len(v.journal) for v in self.vendors.by_name.values()) > requests

        token = SENDER.set(key)
        try:
            await adapter.end_job(job, cancel_mid_send=in_flight if mid_send else None)
        except Exception as exc:
            self.crashes.append(f"job end raised {type(exc).__name__}")
        finally:
            SENDER.reset(token)
        self.memory_only |= {w.write_id for w in job.agent.outbox.pending}
        self.ended.append(job)

    async def end_all(self) -> None:
        for _ in range(len(self.jobs)):
            await self.end(0, mid_send=False)

    # -- faults and time -------------------------------------------------------------------
    def vendor_mode(self, vendor: str, mode: str) -> None:
        self.vendors[vendor].mode = mode

    def jump(self, seconds: float) -> None:
        self.clock.advance(seconds)

    async def store_event(self, event: str, arg: str = "") -> None:
        if event == "down":
            self.faults.down = True
        elif event == "up":
            self.faults.down = False
        elif event == "slow":
            self.faults.slow[arg] = self.faults.slow.get(arg, 0) + 1
        elif event in ("wipe", "corrupt") and not self.faults.down:
            store = adapter.open_sim_store(self.store_url, self.clock)
            try:
                await store.outbox_list()  # the schema exists (a store used once)
                if event == "wipe":
                    listed = await adapter.stored_writes(self.store_url, self.clock)
                    self.lost_by_store |= set(listed or ())
                    await wipe(store)
                else:
                    await corrupt(store, arg, f"malformed-{self._next}-{self.all_heard}")
            finally:
                await store.aclose()

    async def spend_quota(self) -> None:
        """Amplitude's hourly query budget spent by the rest of the fleet."""
        if self.faults.down:
            return
        store = adapter.open_sim_store(self.store_url, self.clock)
        budget = self.settings.amplitude.hourly_query_budget
        with contextlib.suppress(Exception):
            cost = budget
            while cost:  # fill what is left of the hour's budget, greedily
                if not await store.quota_charge(adapter.QUOTA_KEY, cost, budget, 3600.0):
                    cost //= 2
            self.quota_spent_at = self.clock.now()
        await store.aclose()

    async def drain(self, later: float, without: str = "") -> None:
        """Some time later, ``python -m src.outbox drain`` in another process (where
        ``without`` is not configured)."""
        self.clock.advance(later)
        healthy = {n for n, v in self.vendors.by_name.items() if v.healthy and n != without}
        open_promises = [p for p in self.promises.values() if not self.applied(p.write_id)]
        down = self.faults.down
        waiting = set() if down else await adapter.not_due(self.store_url, self.clock)
        try:
            left = await adapter.drain(
                self.store_url,
                self.faults,
                self.clock,
                self.vendors,
                self.settings,
                self.seed,
                without,
            )
        except Exception as exc:
            self.crashes.append(f"drain raised {type(exc).__name__}")
            return
        dead = await adapter.dead_letters(self.store_url, self.clock)
        self.drains.append(
            DrainReport(
                left, down or bool(self.faults.escaped), healthy, open_promises, dead, waiting
            )
        )

    # -- reading the journals ----------------------------------------------------------------
    def applied(self, write_id: str) -> int:
        """How many times a CRM write is held by its vendor (by its write reference)."""
        return sum(
            1
            for name in ("salesforce", "hubspot")
            for w in self.vendors[name].writes
            if write_id in w.text
        )

    def all_jobs(self) -> list[adapter.Job]:
        return [*self.jobs.values(), *self.ended]

    def begin_step(self) -> None:
        self.heard = []
        self.faults.escaped.clear()
