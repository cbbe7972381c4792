"""The durable outbox: writes that did not apply wait in the store under their write id,
two drains never send the same one, a store outage keeps them in the job, and the
operator command lists and drains them."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from src.agent import PandaDocTrialistAgent
from src.outbox import PendingWrite
from src.outbox.cli import _drain
from src.sandbox import FaultKind, Sandbox
from src.sandbox.data import TRIAL_USERS
from src.services.wiring import TrialistServices
from src.settings import settings_from_env
from src.store import MemoryStore, StoreError, StoreGuard, open_store

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with Sandbox() as s:
        yield s


def salesforce_id(sandbox: Sandbox) -> str:
    return str(next(r["Id"] for r in sandbox.salesforce.records if r["object"] == "Contact"))


def agent_on(sandbox: Sandbox, store: MemoryStore | None) -> PandaDocTrialistAgent:
    settings = settings_from_env(sandbox.env())
    guard = StoreGuard(store) if store is not None else None
    return PandaDocTrialistAgent(TrialistServices.from_settings(settings), settings, store=guard)


async def test_two_drains_never_send_the_same_write(sandbox: Sandbox) -> None:
    store = MemoryStore()
    who = salesforce_id(sandbox)
    for n in range(6):
        write = PendingWrite("salesforce", who, f"Summary {n}", f"note {n}")
        await store.outbox_put(write.write_id, write.to_json())
    sandbox.salesforce.inject("*/sobjects/Task", FaultKind.SLOW, delay_ms=50)
    a, b = agent_on(sandbox, store), agent_on(sandbox, store)
    try:
        await asyncio.gather(a.flush_pending_writes(), b.flush_pending_writes())
    finally:
        await a.services.aclose()
        await b.services.aclose()
    assert await store.outbox_list() == []
    bodies = sorted(t["Description"] for t in sandbox.salesforce.tasks)
    assert [b.split("\n")[0] for b in bodies] == [f"note {n}" for n in range(6)]


async def test_store_down_keeps_the_write_in_the_job_then_saves_it(sandbox: Sandbox) -> None:
    store = MemoryStore()
    agent = agent_on(sandbox, store)
    try:
        store.fail = True
        write = PendingWrite("salesforce", salesforce_id(sandbox), "Summary", "note")
        await agent.outbox.queue(write)
        assert agent.pending_writes == [write]
        store.fail = False
        sandbox.salesforce.inject("*/sobjects/Task", FaultKind.SERVICE_UNAVAILABLE)
        agent.outbox.store._down_until = 0.0  # type: ignore[union-attr]  # skip the cool-down
        assert await agent.flush_pending_writes() == 1
        assert agent.pending_writes == []  # moved to the store, durable now
        assert [i.id for i in await store.outbox_list()] == [write.write_id]
    finally:
        await agent.services.aclose()


async def test_an_unreadable_stored_write_is_dropped_not_sent(sandbox: Sandbox) -> None:
    store = MemoryStore()
    await store.outbox_put("junk", "[1, 2]")
    agent = agent_on(sandbox, store)
    try:
        assert await agent.flush_pending_writes() == 0
    finally:
        await agent.services.aclose()
    assert sandbox.salesforce.tasks == []


async def test_operator_lists_and_drains(sandbox: Sandbox, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = open_store(url)
    write = PendingWrite("salesforce", salesforce_id(sandbox), "Summary", TRIAL_USERS[0].email)
    await store.outbox_put(write.write_id, write.to_json())
    await store.aclose()
    env = {**os.environ, **sandbox.env(), "RESILIENCE_STORE_URL": url}
    listing = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "src.outbox", "list"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert listing.returncode == 1, listing.stderr
    assert "1 CRM write(s) waiting" in listing.stdout and write.write_id[:12] in listing.stdout
    assert TRIAL_USERS[0].email not in listing.stdout  # bodies are never printed
    assert await _drain(settings_from_env(env)) == 0
    assert len(sandbox.salesforce.tasks) == 1


def hubspot_id() -> str:
    from src.sandbox.hubspot import contact_id_for

    return contact_id_for(next(u for u in TRIAL_USERS if u.in_hubspot))


@pytest.mark.parametrize("source", ["salesforce", "hubspot"])
async def test_an_unknown_outcome_write_that_applied_is_found_and_not_resent(
    sandbox: Sandbox, source: str
) -> None:
    settings = settings_from_env(sandbox.env())
    settings = dataclasses.replace(
        settings, resilience=dataclasses.replace(settings.resilience, service_timeout=0.5)
    )
    agent = PandaDocTrialistAgent(TrialistServices.from_settings(settings), settings)
    agent.outbox.hubspot_search_settle = 0.0  # the sandbox's search index has no lag
    server = sandbox.salesforce if source == "salesforce" else sandbox.hubspot
    record = salesforce_id(sandbox) if source == "salesforce" else hubspot_id()
    created = sandbox.salesforce.tasks if source == "salesforce" else sandbox.hubspot.notes
    write = PendingWrite(source, record, "Trialist call summary", "Wants a demo.")
    # The CRM applies the write but answers after the client gave up: outcome unknown.
    fault = server.inject("*/objects/notes" if source == "hubspot" else "*/sobjects/Task",
                          FaultKind.SLOW, delay_ms=800)  # fmt: skip
    try:
        assert await agent.outbox.send(write) == "checking" and write.verify
        for _ in range(200):
            if created:
                break
            await asyncio.sleep(0.01)
        assert len(created) == 1  # it did apply
        server.faults.remove(fault)
        assert await agent.outbox.send(write) == "saved"  # found by its write id
        assert len(created) == 1  # and not sent again
    finally:
        await agent.services.aclose()


async def test_hubspot_absent_is_trusted_only_after_the_search_index_settles(
    sandbox: Sandbox,
) -> None:
    agent = agent_on(sandbox, None)
    write = PendingWrite("hubspot", hubspot_id(), "Summary", "note", verify=True)
    now = [1000.0]
    agent.outbox._wall = lambda: now[0]
    write.sent_at = 995.0
    try:
        assert await agent.outbox.send(write) == "checking"  # 5 s: too recent to trust
        assert sandbox.hubspot.notes == []
        now[0] = 1030.0
        assert await agent.outbox.send(write) == "saved"  # certainly absent: sent once
        [note] = sandbox.hubspot.notes
        assert write.write_id in note.body
    finally:
        await agent.services.aclose()


class LosesDone(MemoryStore):
    """A store whose first ``outbox_done`` is lost (a blip just after the CRM saved)."""

    def __init__(self) -> None:
        super().__init__()
        self.lost = 0

    async def outbox_done(self, item_id: str) -> None:
        if not self.lost:
            self.lost += 1
            raise StoreError("blip")
        await super().outbox_done(item_id)


async def test_a_saved_write_whose_removal_is_lost_is_not_sent_again(sandbox: Sandbox) -> None:
    """Written ahead: before a stored write is sent, its stored copy is marked as 'may
    have applied', so the next claimer looks it up in the CRM instead of re-sending."""
    store = LosesDone()
    write = PendingWrite("salesforce", salesforce_id(sandbox), "Summary", "note")
    await store.outbox_put(write.write_id, write.to_json())
    agent = agent_on(sandbox, store)
    try:
        await agent.flush_pending_writes()  # sent and saved; the removal is lost
        assert len(sandbox.salesforce.tasks) == 1
        [left] = await store.outbox_list()
        assert PendingWrite.from_json(left.payload).verify  # marked before the send
        await store.outbox_release(left.id)  # as if its lease had expired
        agent.outbox.store._down_until = 0.0  # type: ignore[union-attr]  # skip the cool-down
        assert await agent.flush_pending_writes() == 0  # found in the CRM: done
    finally:
        await agent.services.aclose()
    assert len(sandbox.salesforce.tasks) == 1  # exactly once
