"""Issue #23: where the outbox meets the store.

* a write that cannot go never blocks those behind it; it backs off, and after its
  attempts is dead-lettered, listed, and an operator can ``retry`` or ``drop`` it;
* every write is stored before it is sent and only sent through a claim, so a slow store
  cannot make one write go out twice;
* a write cancelled mid-send is recorded for lookup;
* the store guard falls back on any exception; Redis lists the backlog in one round trip.

Real stores (a SQLite file, a redis-server), a real sandbox CRM over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from src.error_recovery import CircuitBreaker, CircuitState
from src.outbox import Outbox, OutboxPolicy, PendingWrite
from src.outbox.cli import _list, _operate, outbox_for
from src.sandbox import FaultKind, Sandbox
from src.services.wiring import TrialistServices
from src.settings import settings_from_env
from src.store import SqliteStore, StoreError, StoreGuard, open_store
from src.store import sqlite as sqlite_module

TASKS = "*/sobjects/Task"


class Clock:
    def __init__(self) -> None:
        self.now = 1_900_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with Sandbox() as s:
        yield s


def salesforce_id(sandbox: Sandbox) -> str:
    return str(next(r["Id"] for r in sandbox.salesforce.records if r["object"] == "Contact"))


async def outbox_on(
    sandbox: Sandbox,
    guard: StoreGuard | None,
    *,
    hubspot: bool = True,
    env: dict[str, str] | None = None,
    **policy: float,
) -> Outbox:
    settings = settings_from_env({**sandbox.env(), **(env or {})})
    services = TrialistServices.from_settings(settings)
    if not hubspot and services.hubspot is not None:
        await services.hubspot.aclose()
        services.hubspot = None  # not configured in this process
    return outbox_for(settings, services, guard, policy=OutboxPolicy(**policy))  # type: ignore[arg-type]


def dead_letters(crm: str) -> float:
    return REGISTRY.get_sample_value("pandadoc_outbox_dead_letters_total", {"crm": crm}) or 0.0


# -- item 3: a poison head, backoff, dead letters ---------------------------------------
async def test_a_write_that_cannot_go_never_blocks_the_others_and_is_dead_lettered(
    sandbox: Sandbox, store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    store = open_store(store_url)
    guard = StoreGuard(store)
    outbox = await outbox_on(sandbox, guard, hubspot=False, max_attempts=3)
    poison = PendingWrite("hubspot", "901", "Summary", "for a CRM this process lacks")
    await store.outbox_put(poison.write_id, poison.to_json())
    who = salesforce_id(sandbox)
    for n in range(3):
        write = PendingWrite("salesforce", who, f"Summary {n}", f"note {n}")
        await store.outbox_put(write.write_id, write.to_json())
    before = dead_letters("hubspot")
    try:
        assert await outbox.flush() == 1  # one drain: the three behind the head went
        assert len(sandbox.salesforce.tasks) == 3
        for _ in range(2):
            await outbox.flush()
        [item] = await store.outbox_list()
        assert item.dead == "3 attempts"
        assert dead_letters("hubspot") == before + 1
        assert await outbox.flush() == 0  # dead letters are not tried again
        assert PendingWrite.from_json((await store.outbox_list())[0].payload).attempts == 3

        assert await _list(store_url) == 1
        listed = capsys.readouterr().out
        assert "0 CRM write(s) waiting" in listed and "1 CRM write(s) dead-lettered" in listed
        assert poison.write_id[:12] in listed and "DEAD (3 attempts)" in listed

        assert await _operate(store_url, "drop", "nope") == 1
        assert await _operate(store_url, "retry", poison.write_id[:8]) == 0
        [item] = await store.outbox_list()
        assert not item.dead and PendingWrite.from_json(item.payload).attempts == 0
        assert await _operate(store_url, "drop", poison.write_id[:8]) == 1  # live: not dropped
        for _ in range(3):
            await outbox.flush()
        assert (await store.outbox_list())[0].dead
        assert await _operate(store_url, "drop", poison.write_id[:8]) == 0
        assert await store.outbox_list() == []
    finally:
        assert outbox.services.salesforce is not None
        await outbox.services.aclose()
        await store.aclose()


async def test_a_released_write_backs_off(sandbox: Sandbox, tmp_path: Path) -> None:
    clock = Clock()
    store = SqliteStore(tmp_path / "s.db", clock=clock)
    no_breaker = {"CIRCUIT_FAILURE_THRESHOLD": "100"}  # here the backoff alone decides
    outbox = await outbox_on(sandbox, StoreGuard(store), env=no_breaker, backoff_base_s=30.0)
    write = PendingWrite("salesforce", salesforce_id(sandbox), "Summary", "note")
    await store.outbox_put(write.write_id, write.to_json())
    sandbox.salesforce.inject(TASKS, FaultKind.UNAUTHORIZED)  # cannot go, for now
    try:
        for _ in range(3):
            await outbox.flush()  # two free attempts, then the third backs off
        [item] = await store.outbox_list()
        assert PendingWrite.from_json(item.payload).attempts == 3
        assert item.next_at == pytest.approx(clock.now + 30.0)
        await outbox.flush()
        assert PendingWrite.from_json((await store.outbox_list())[0].payload).attempts == 3
        sandbox.salesforce.clear()
        clock.now += 31.0
        assert await outbox.flush() == 0
        assert len(sandbox.salesforce.tasks) == 1
    finally:
        await outbox.services.aclose()
        await store.aclose()


# -- item 4: stored before sent; a slow store cannot double a write -----------------------
async def test_a_slow_store_never_makes_one_write_go_out_twice(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_module, "BUSY_TIMEOUT_S", 3.0)
    clock = Clock()
    path = tmp_path / "slow.db"
    store = SqliteStore(path, clock=clock)
    await store.outbox_list()  # the file and its tables exist
    guard = StoreGuard(store, timeout=0.1)
    outbox = await outbox_on(sandbox, guard)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock ...
    asyncio.get_running_loop().call_later(0.4, blocker.execute, "COMMIT")  # ... a while
    sandbox.salesforce.inject(TASKS, FaultKind.SERVICE_UNAVAILABLE)
    write = PendingWrite("salesforce", salesforce_id(sandbox), "Summary", "note")
    try:
        # as the CRM tool does it: send, and keep what did not apply
        assert await outbox.send(write) == "queued"
        await outbox.queue(write)
        for _ in range(300):  # the store gave up waiting, yet committed the insert
            if await store.outbox_list():
                break
            await asyncio.sleep(0.01)
        [stored] = await store.outbox_list()
        assert PendingWrite.from_json(stored.payload).verify  # marked before the send
        sandbox.salesforce.clear()
        await outbox.flush()  # the store is cooling down: the job's copy goes
        guard._down_until = 0.0  # skip the cool-down
        clock.now += 200.0  # the stored copy's claim expires
        assert await outbox.flush() == 0  # looked up, found: not sent again
        assert len(sandbox.salesforce.tasks) == 1
        assert len(sandbox.salesforce.requests(TASKS, "POST")) == 2  # the 503, then once
    finally:
        blocker.close()
        await outbox.services.aclose()
        await store.aclose()


# -- item 9: a write cancelled mid-send is recorded for lookup ---------------------------
async def test_a_write_cancelled_mid_send_is_recorded_for_lookup(
    sandbox: Sandbox, store_url: str
) -> None:
    store = open_store(store_url)
    outbox = await outbox_on(sandbox, StoreGuard(store))
    write = PendingWrite("salesforce", salesforce_id(sandbox), "Summary", "note")
    sandbox.salesforce.inject(TASKS, FaultKind.HANG)
    try:
        sending = asyncio.create_task(outbox.send(write))
        for _ in range(300):
            if sandbox.salesforce.requests(TASKS, "POST"):
                break
            await asyncio.sleep(0.01)
        sending.cancel()  # e.g. the caller hung up mid-send
        with pytest.raises(asyncio.CancelledError):
            await sending
        [item] = await store.outbox_list()
        assert item.id == write.write_id and item.claimed_until == 0
        assert PendingWrite.from_json(item.payload).verify  # looked up before any resend
        sandbox.salesforce.clear()
        assert await outbox.flush() == 0
        assert len(sandbox.salesforce.tasks) <= 1
    finally:
        await outbox.services.aclose()
        await store.aclose()


async def test_without_a_store_a_cancelled_write_stays_in_the_job_marked(
    sandbox: Sandbox,
) -> None:
    outbox = await outbox_on(sandbox, None)
    write = PendingWrite("salesforce", salesforce_id(sandbox), "Summary", "note")
    sandbox.salesforce.inject(TASKS, FaultKind.HANG)
    try:
        sending = asyncio.create_task(outbox.send(write))
        for _ in range(300):
            if sandbox.salesforce.requests(TASKS, "POST"):
                break
            await asyncio.sleep(0.01)
        sending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sending
        assert outbox.pending == [write] and write.verify
    finally:
        await outbox.services.aclose()


# -- item 8: the guard falls back on any exception; one round trip to list -------------
async def test_the_guard_turns_any_store_exception_into_local_state(store_url: str) -> None:
    store = open_store(store_url)
    guard = StoreGuard(store)
    if store_url.startswith("sqlite"):
        await store.outbox_list()
        with sqlite3.connect(store_url.removeprefix("sqlite://")) as conn:
            conn.execute("INSERT INTO breakers VALUES('amp', ?)", (json.dumps({"state": 1}),))
    else:
        client = aioredis.Redis.from_url(store_url)
        await client.set("pandadoc:resilience:breaker:amp", "[1, 2]")
        await client.aclose()
    breaker = CircuitBreaker(name="amp", store=guard)

    async def answers() -> str:
        return "data"

    try:
        assert await breaker.call(answers) == "data"  # a malformed record: local state
        assert breaker.state is CircuitState.CLOSED and not guard.healthy
    finally:
        await store.aclose()
    if store_url.startswith("sqlite"):  # (redis-py reconnects by itself)
        guard._down_until = 0.0
        with pytest.raises(StoreError):  # used after close: a RuntimeError underneath
            await guard.run(lambda: store.outbox_list(), "list")


async def test_redis_lists_a_backlog_in_one_round_trip(redis_server: object) -> None:
    url = redis_server.url  # type: ignore[attr-defined]
    store = open_store(url)
    client = aioredis.Redis.from_url(url)
    try:
        for n in range(300):
            await store.outbox_put(f"w{n:04d}", json.dumps({"n": n}))
        await store.outbox_list()  # loads the script once
        before = (await client.info("stats"))["total_net_input_bytes"]
        items = await StoreGuard(store).run(lambda: store.outbox_list(), "list")
        sent = (await client.info("stats"))["total_net_input_bytes"] - before
        assert [i.id for i in items] == [f"w{n:04d}" for n in range(300)]
        assert sent < 1000  # one script call, not two requests per write
    finally:
        await client.aclose()
        await store.aclose()


def test_the_outbox_command_does_not_import_the_agent() -> None:
    """The import cycle outbox -> CLI -> agent -> outbox is gone: arrows run one way."""
    import subprocess
    import sys

    code = (
        "import sys, src.outbox, src.outbox.cli; "
        "assert 'src.agent' not in sys.modules, 'src.agent imported'; "
        "assert not any(m.startswith('livekit') for m in sys.modules), 'livekit imported'"
    )
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


class _CommitsThenTimesOut:
    """A store whose next ``outbox_put`` commits, then the guard stops waiting."""

    def __init__(self, inner: SqliteStore, slow_puts: int = 1) -> None:
        self.inner, self.slow_puts = inner, slow_puts

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    async def outbox_put(self, item_id: str, payload: str) -> None:
        await self.inner.outbox_put(item_id, payload)
        if self.slow_puts:
            self.slow_puts -= 1
            raise TimeoutError


@contextlib.asynccontextmanager
async def job_and_drain(
    sandbox: Sandbox, tmp_path: Path, store_of: Callable[[SqliteStore], object]
) -> AsyncIterator[tuple[Clock, SqliteStore, StoreGuard, Outbox, Outbox, PendingWrite]]:
    """A job's outbox on a store with a fault (``store_of``), a drain elsewhere on the
    same store, and one Salesforce write; everything closed after."""
    clock = Clock()
    store = SqliteStore(tmp_path / "slow.db", clock=clock)
    await store.outbox_list()
    guard = StoreGuard(store_of(store))  # type: ignore[arg-type]
    job = await outbox_on(sandbox, guard)
    drain = await outbox_on(sandbox, StoreGuard(store))
    write = PendingWrite("salesforce", salesforce_id(sandbox), "Summary", "note")
    try:
        yield clock, store, guard, job, drain, write
    finally:
        await job.services.aclose()
        await drain.services.aclose()
        await store.aclose()


# -- issue 24 (found by the fleet simulation): the same, for a write kept in the job -----
async def test_a_kept_write_whose_slow_put_committed_is_never_sent_twice(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """A write kept in the job while the store was unavailable goes to the store on the
    next flush; the put commits but the guard gives up, so the job sends its own copy.
    The stored copy is marked "may have applied": the drain that claims it looks it up
    and finds it, instead of sending it again."""
    clock = Clock()
    store = SqliteStore(tmp_path / "slow.db", clock=clock)
    await store.outbox_list()
    guard = StoreGuard(_CommitsThenTimesOut(store))  # type: ignore[arg-type]
    outbox = await outbox_on(sandbox, guard)
    write = PendingWrite("salesforce", salesforce_id(sandbox), "Summary", "note")
    outbox.pending.append(write)  # kept in this job while the store was down
    try:
        await outbox.flush()  # the put committed, the guard gave up: the job's copy goes
        assert len(sandbox.salesforce.tasks) == 1
        [stored] = await store.outbox_list()
        assert PendingWrite.from_json(stored.payload).verify
        guard._down_until = 0.0  # skip the cool-down
        clock.now += 200.0
        assert await outbox.flush() == 0  # looked up, found: not sent again
        assert len(sandbox.salesforce.tasks) == 1
    finally:
        await outbox.services.aclose()
        await store.aclose()


async def test_a_kept_write_a_drain_sent_from_the_store_is_not_sent_again_from_the_job(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """The same slow put, the write not yet due in the job: a drain elsewhere sends the
    stored copy; the job's next flush meets a slow put again and sends its own copy,
    which is marked too, so it is looked up and found instead of going out twice."""
    slow = functools.partial(_CommitsThenTimesOut, slow_puts=2)
    async with job_and_drain(sandbox, tmp_path, slow) as (clock, _, guard, job, drain, write):
        job.pending.append(write.replace(next_at=clock.now + 3600.0))  # backing off here
        await job.flush(due_only=True)  # stored (slow put), not yet due in the job
        assert not sandbox.salesforce.tasks
        assert await drain.flush() == 0  # another process sends the stored copy
        assert len(sandbox.salesforce.tasks) == 1
        guard._down_until = 0.0  # skip the cool-down
        await job.flush()  # a slow put again: the job's own copy goes, looked up first
        assert len(sandbox.salesforce.tasks) == 1


async def test_a_queued_write_whose_slow_put_committed_is_never_sent_twice(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """(simulate --seed 31, example 4592) A write queued for later: its put commits but
    the guard gives up, so the job keeps its own copy and sends it at its flush (the
    store slow again), and the done after it is lost to the cool-down. The stored copy is
    kept marked "look it up first": the drain that claims it finds it in the CRM."""
    slow = functools.partial(_CommitsThenTimesOut, slow_puts=2)
    async with job_and_drain(sandbox, tmp_path, slow) as (clock, store, guard, job, drain, write):
        await job.queue(write)  # committed, yet kept in the job too
        assert job.pending and len(await store.outbox_list()) == 1
        guard._down_until = 0.0  # skip the cool-down
        await job.flush()  # a slow put again: the job's own copy goes
        assert len(sandbox.salesforce.tasks) == 1
        assert len(await store.outbox_list()) == 1  # its done was lost to the cool-down
        clock.now += 200.0
        assert await drain.flush() == 0  # looked up, found: not sent again
        assert len(sandbox.salesforce.tasks) == 1


class _ClaimCommitsThenTimesOut(_CommitsThenTimesOut):
    async def outbox_put_claimed(self, item_id: str, payload: str, lease: float) -> str | None:
        held = await self.inner.outbox_put_claimed(item_id, payload, lease)
        if self.slow_puts:
            self.slow_puts -= 1
            raise TimeoutError
        return held


async def test_a_job_copy_whose_slow_claim_committed_is_looked_up_before_every_send(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """(simulate --seed 57, example 6666) A write's claimed put commits but the guard
    gives up: the job sends its own copy, the CRM refuses it (certainly not applied), and
    a drain elsewhere later sends the stored copy. The job's next flush, the store down,
    looks its copy up again before sending, and finds it."""
    sandbox.salesforce.inject("*/Task", FaultKind.SERVICE_UNAVAILABLE, count=1)
    async with job_and_drain(sandbox, tmp_path, _ClaimCommitsThenTimesOut) as (
        clock,
        _,
        _,
        job,
        drain,
        write,
    ):
        assert await job.send(write) == "queued"  # stored (slow), the job's copy refused
        assert not sandbox.salesforce.tasks and job.pending
        clock.now += 200.0  # the stored copy's claim lease is over
        assert await drain.flush() == 0
        assert len(sandbox.salesforce.tasks) == 1
        job.pending[0].next_at = 0.0
        await job._flush_local(due_only=False)  # the store out of reach: from memory
        assert len(sandbox.salesforce.tasks) == 1  # looked up, found: not sent again
        assert not job.pending
