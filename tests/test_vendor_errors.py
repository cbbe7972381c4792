"""Vendor contracts, round two (``reference/apis/vendor-facts.md``): Salesforce errors
classified by ``errorCode`` (``UNABLE_TO_LOCK_ROW`` kept and sent again, validation codes
rejected), HubSpot's "already written?" lookup confirmed on the note body, and Amplitude's
concurrency cap of 5 shared by every request of the fleet."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from src.agent import PandaDocTrialistAgent
from src.error_recovery.policies import counts_as_failure, is_retryable
from src.errors import (
    AuthenticationFailed,
    BadResponse,
    InvalidRequest,
    RateLimited,
    ServiceBusy,
    ServiceError,
    ServiceUnavailable,
)
from src.outbox import REF_MARK, PendingWrite
from src.sandbox import FaultKind, Sandbox
from src.sandbox.data import TRIAL_USERS
from src.sandbox.hubspot import contact_id_for
from src.services.amplitude import HOURLY_QUERY_LIMIT, MAX_CONCURRENT_REQUESTS
from src.services.crm import WRITE_REF_MARK
from src.services.http import write_outcome_is_ambiguous
from src.services.hubspot import NOTE_SEARCH_LIMIT, NOTE_SEARCH_PAGES, NOTE_SEARCH_PATH
from src.services.quota import MemoryQuotaStore
from src.services.salesforce import TRANSIENT_ERROR_CODES, classify_errors
from src.services.wiring import TrialistServices
from src.settings import settings_from_env

JANE = TRIAL_USERS[0]
TASKS = "*/sobjects/Task"


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with Sandbox() as s:
        yield s


def contact_id(sandbox: Sandbox) -> str:
    return str(next(r["Id"] for r in sandbox.salesforce.records if r["object"] == "Contact"))


def lock_row() -> list[dict[str, Any]]:
    message = "unable to obtain exclusive access to this record or 1 records"
    return [{"errorCode": "UNABLE_TO_LOCK_ROW", "message": message}]


# -- Salesforce: classified by errorCode ------------------------------------------------------


@pytest.mark.parametrize("error", [InvalidRequest, ServiceUnavailable])
def test_a_transient_code_is_busy_whatever_the_status(error: type[ServiceError]) -> None:
    refined = classify_errors(error("salesforce", "x", status=400), lock_row())
    assert isinstance(refined, ServiceBusy) and refined.status == 400
    assert is_retryable(refined) and not counts_as_failure(refined)
    assert not write_outcome_is_ambiguous(refined)  # certainly not applied
    assert "UNABLE_TO_LOCK_ROW" in TRANSIENT_ERROR_CODES


@pytest.mark.parametrize(
    "body",
    [
        [{"errorCode": "REQUIRED_FIELD_MISSING", "message": "m", "fields": ["Subject"]}],
        [{"errorCode": "FIELD_CUSTOM_VALIDATION_EXCEPTION", "message": "m"}],
        [*lock_row(), {"errorCode": "STRING_TOO_LONG", "message": "m"}],  # fails after too
        [{"errorCode": "<script>", "message": "m"}],
        [{"message": "no code"}],
    ],
)
def test_validation_codes_stay_permanent(body: Any) -> None:
    refined = classify_errors(InvalidRequest("salesforce", "x", status=400), body)
    assert type(refined) is InvalidRequest and not is_retryable(refined)
    assert "<script>" not in str(refined)  # only well-formed codes reach the log


@pytest.mark.parametrize(
    "error",
    [
        AuthenticationFailed("salesforce", "x", status=401),  # the token refresh needs it
        RateLimited("salesforce", "x"),
        InvalidRequest("salesforce", "x", status=400),
    ],
)
def test_other_answers_keep_their_meaning(error: ServiceError) -> None:
    body = lock_row() if not isinstance(error, InvalidRequest) else {"errorCode": "X"}
    assert classify_errors(error, body) is error


async def test_the_sandbox_lock_row_fault_answers_the_vendor_error_and_applies_nothing(
    sandbox: Sandbox,
) -> None:
    services = TrialistServices.from_settings(settings_from_env(sandbox.env()))
    sf = services.salesforce
    assert sf is not None
    sandbox.salesforce.inject(TASKS, FaultKind.LOCK_ROW, count=1)
    try:
        with pytest.raises(ServiceBusy):
            await sf.create_task(contact_id(sandbox), "Summary", "body")
        assert sandbox.salesforce.tasks == []
        assert sandbox.salesforce.requests(TASKS)[-1].status == 400
        await sf.create_task(contact_id(sandbox), "Summary", "body")  # the lock is gone
        with pytest.raises(InvalidRequest, match="INVALID_CROSS_REFERENCE_KEY"):
            await sf.create_task("003000000000000AAA", "Summary", "body")
    finally:
        await services.aclose()
    assert len(sandbox.salesforce.tasks) == 1
    sandbox.salesforce.inject(TASKS, FaultKind.LOCK_ROW, count=1)
    url = f"{sandbox.salesforce.base_url}/services/data/v63.0/sobjects/Task"
    async with aiohttp.ClientSession() as http, http.post(url, json={}) as resp:
        assert resp.status == 400
        assert await resp.json() == [
            {"errorCode": "UNABLE_TO_LOCK_ROW", "message": lock_row()[0]["message"]}
        ]


async def test_the_outbox_keeps_a_locked_write_and_saves_it_on_the_retry(
    sandbox: Sandbox,
) -> None:
    settings = settings_from_env(sandbox.env())
    agent = PandaDocTrialistAgent(TrialistServices.from_settings(settings), settings)
    write = PendingWrite("salesforce", contact_id(sandbox), "Call summary", "wants a demo")
    sandbox.salesforce.inject(TASKS, FaultKind.LOCK_ROW)
    try:
        assert await agent.outbox.send(write) == "queued"  # certainly not applied: kept
        await agent.outbox.queue(write)
        assert await agent.flush_pending_writes() == 1  # still locked: kept, not deleted
        assert agent.pending_writes == [write] and sandbox.salesforce.tasks == []
        sandbox.salesforce.clear()
        assert await agent.flush_pending_writes() == 0
        rejected = PendingWrite("salesforce", "003000000000000AAA", "Call summary", "x")
        assert await agent.outbox.send(rejected) == "rejected"  # a validation code
    finally:
        await agent.services.aclose()
    [task] = sandbox.salesforce.tasks
    assert task["Subject"].endswith(REF_MARK.format(write.write_id))
    assert len(sandbox.salesforce.requests(TASKS)) == 4  # 2 locked, 1 saved, 1 rejected


# -- HubSpot: the "already written?" lookup confirms the exact marker -------------------------


def test_the_marker_the_lookups_confirm_is_the_one_the_outbox_writes() -> None:
    assert REF_MARK == WRITE_REF_MARK


async def test_a_token_match_without_the_exact_marker_is_not_the_write(sandbox: Sandbox) -> None:
    services = TrialistServices.from_settings(settings_from_env(sandbox.env()))
    hs = services.hubspot
    assert hs is not None
    contact = contact_id_for(next(u for u in TRIAL_USERS if u.in_hubspot))
    ref, other = "a" * 32, "b" * 32
    try:
        # Notes the token search matches, none carrying the marker: two pages' worth.
        for n in range(NOTE_SEARCH_LIMIT + 2):
            await hs.create_note(contact, f"Pasted: ref {ref} note {n} (ref {other})")
        assert await hs.note_exists(ref) is False
        await hs.create_note(contact, f"Call summary {WRITE_REF_MARK.format(ref)}\n\nbody")
        assert await hs.note_exists(ref) is True  # found on the second page
    finally:
        await services.aclose()
    searches = sandbox.hubspot.requests(NOTE_SEARCH_PATH)
    assert len(searches) == 4  # 2 pages, then 2 pages
    assert all(s.body["properties"] == ["hs_note_body"] for s in searches)
    assert all(s.body["limit"] == NOTE_SEARCH_LIMIT > 1 for s in searches)
    assert "after" not in searches[0].body and searches[1].body["after"]


async def test_candidates_that_do_not_end_leave_it_unknown(sandbox: Sandbox) -> None:
    services = TrialistServices.from_settings(settings_from_env(sandbox.env()))
    hs = services.hubspot
    assert hs is not None
    contact = contact_id_for(next(u for u in TRIAL_USERS if u.in_hubspot))
    ref = "c" * 32
    try:
        for n in range(NOTE_SEARCH_LIMIT * NOTE_SEARCH_PAGES + 1):
            await hs.create_note(contact, f"ref {ref} copy {n}")
        with pytest.raises(BadResponse):
            await hs.note_exists(ref)
    finally:
        await services.aclose()
    assert len(sandbox.hubspot.requests(NOTE_SEARCH_PATH)) == NOTE_SEARCH_PAGES


# -- Amplitude: 5 requests in flight, across the fleet ---------------------------------------


class PeakStore(MemoryQuotaStore):
    """The fleet's shared quota store, remembering the most slots held at once."""

    def __init__(self) -> None:
        super().__init__()
        self.peak = 0
        self.leases = 0
        self._held = 0

    async def acquire(self, key: str, limit: int, lease_s: float) -> str | None:
        lease = await super().acquire(key, limit, lease_s)
        if lease is not None:
            self.leases += 1
            self._held += 1
            self.peak = max(self.peak, self._held)
        return lease

    async def release(self, key: str, lease: str) -> None:
        self._held -= 1
        await super().release(key, lease)


async def test_every_amplitude_request_of_the_fleet_shares_five_slots(sandbox: Sandbox) -> None:
    settings = settings_from_env({**sandbox.env(), "AMPLITUDE_USAGE_CACHE_TTL": "0"})
    assert settings.amplitude.max_concurrent == MAX_CONCURRENT_REQUESTS == 5
    assert settings.amplitude.hourly_query_budget == HOURLY_QUERY_LIMIT
    store = PeakStore()
    fleet = [TrialistServices.from_settings(settings, quota_store=store) for _ in range(2)]
    sandbox.amplitude.inject("*", FaultKind.SLOW, delay_ms=40)
    try:
        clients = [s.amplitude for s in fleet if s.amplitude is not None]
        await asyncio.gather(*(c.get_trial_usage(JANE.email) for c in clients for _ in range(4)))
    finally:
        for services in fleet:
            await services.aclose()
    requests = sandbox.amplitude.requests("/api/2/*")
    assert len(requests) == 16 and {r.path for r in requests} == {
        "/api/2/usersearch",
        "/api/2/useractivity",
    }
    # One slot of the one cap per lookup, held for its two requests (sent one after the
    # other): every request in flight held a slot, and never more than five at once.
    assert store.leases == len(requests) // 2 == 8
    assert store.peak == 5


# -- the drill scenarios of this contract ---------------------------------------------------


@pytest.mark.parametrize("name", ["chilipiper-book-answer-lost", "salesforce-lock-row"])
async def test_drill_scenario_passes(name: str) -> None:
    from src.drill import SCENARIOS, run_scenario

    report = await run_scenario(next(s for s in SCENARIOS if s.name == name))
    assert report.verdict == "ok", report.problems
    if name == "chilipiper-book-answer-lost":
        assert "You're all set" in report.heard
    else:
        assert report.note == "queued 1, still pending after flush 0"
