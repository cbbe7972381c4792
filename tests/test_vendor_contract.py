"""Issue 18, vendor contract fidelity: what the real APIs accept, return and allow.

Against the sandbox stand-ins over real HTTP: Task ownership, the Salesforce id settings,
and each stand-in refusing what its vendor refuses, with the vendor's error shape."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

from src.agent import PandaDocTrialistAgent
from src.error_recovery import CircuitState
from src.errors import InvalidRequest
from src.identity import CallerIdentity
from src.phrases import USAGE_FALLBACK
from src.sandbox import Sandbox
from src.sandbox.amplitude import OMIT, AmplitudeServer
from src.sandbox.base import FaultKind
from src.sandbox.data import SANDBOX_CREDENTIALS, TRIAL_USERS, TrialUser
from src.sandbox.hubspot import HubSpotServer, contact_id_for
from src.sandbox.salesforce import SANDBOX_LEAD_QUEUE_ID, SANDBOX_TASK_OWNER_ID, SalesforceServer
from src.services.amplitude import QUERIES_PER_LOOKUP, AmplitudeClient, TrialUsage
from src.services.amplitude_dates import value_shape
from src.services.http import HttpOptions
from src.services.quota import (
    MemoryQuotaStore,
    MemoryUsageCache,
    QuotaExhausted,
    VendorLimiter,
    cache_key,
)
from src.services.salesforce import SalesforceClient
from src.services.wiring import TrialistServices
from src.session import build_session
from src.settings import SettingsError, settings_from_env
from src.state import TrialistData
from src.validation import is_valid_salesforce_id, salesforce_id_checksum
from tests.test_agent import NoSleep, fast_settings, tool_output

FAST = HttpOptions(timeout=1.0, connect_timeout=1.0)
SF_ID = SANDBOX_CREDENTIALS["SALESFORCE_CLIENT_ID"]
SF_SECRET = SANDBOX_CREDENTIALS["SALESFORCE_CLIENT_SECRET"]
JANE = next(u for u in TRIAL_USERS if u.email.startswith("jane."))
SAM = next(u for u in TRIAL_USERS if u.email.startswith("sam."))


@pytest.fixture
async def salesforce() -> AsyncIterator[SalesforceServer]:
    srv = SalesforceServer()
    await srv.start()
    yield srv
    await srv.stop()


def sf_client(server: SalesforceServer, task_owner_id: str = "") -> SalesforceClient:
    return SalesforceClient(
        server.base_url, SF_ID, SF_SECRET, options=FAST, task_owner_id=task_owner_id
    )


async def sf_token(http: aiohttp.ClientSession, server: SalesforceServer) -> str:
    form = {"grant_type": "client_credentials", "client_id": SF_ID, "client_secret": SF_SECRET}
    async with http.post(f"{server.base_url}/services/oauth2/token", data=form) as resp:
        token: str = (await resp.json())["access_token"]
    return token


# -- 1. Salesforce Task ownership ------------------------------------------------------------


async def test_task_is_assigned_to_the_record_owner(salesforce: SalesforceServer) -> None:
    async with sf_client(salesforce, SANDBOX_TASK_OWNER_ID) as sf:
        person = await sf.find_person(JANE.email)
        await sf.create_task(person.id, "Call summary", "wants a demo", owner_id=person.owner_id)

    record = next(r for r in salesforce.records if r["Email"] == JANE.email)
    assert person.owner_id == record["OwnerId"] and person.owner_id.startswith("005")
    assert salesforce.tasks[0]["OwnerId"] == record["OwnerId"] != SANDBOX_TASK_OWNER_ID


async def test_queue_owned_record_falls_back_to_the_configured_owner(
    salesforce: SalesforceServer,
) -> None:
    email = "queued.lead@example.com"
    salesforce.add_person(email, "Queued", "Lead", owner_id=SANDBOX_LEAD_QUEUE_ID)
    async with sf_client(salesforce, SANDBOX_TASK_OWNER_ID) as sf:
        person = await sf.find_person(email)
        await sf.create_task(person.id, "Call summary", "", owner_id=person.owner_id)

    assert person.owner_id is None  # a queue cannot own a Task
    assert salesforce.tasks[0]["OwnerId"] == SANDBOX_TASK_OWNER_ID


async def test_without_owner_or_fallback_the_task_goes_to_the_integration_user(
    salesforce: SalesforceServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with sf_client(salesforce) as sf:
        person = await sf.find_person(JANE.email)
        await sf.create_task(person.id, "Call summary", "", owner_id=None)
        await sf.create_task(person.id, "Call summary", "", owner_id="not-an-id")
    assert all("OwnerId" not in task for task in salesforce.tasks)
    assert "ignoring a malformed task owner id" in caplog.text


async def test_sandbox_refuses_a_task_owned_by_a_queue(salesforce: SalesforceServer) -> None:
    async with sf_client(salesforce, SANDBOX_LEAD_QUEUE_ID) as sf:
        person = await sf.find_person(JANE.email)
        with pytest.raises(InvalidRequest):
            await sf.create_task(person.id, "Call summary", "")
    assert salesforce.tasks == []
    assert salesforce.requests("/services/data/*/sobjects/Task")[0].status == 400


# -- 4. Salesforce id settings -----------------------------------------------------------------


def test_salesforce_id_checksum() -> None:
    # The suffix encodes which of each five characters are upper case.
    assert salesforce_id_checksum("005Hs00000A1b2c") == "IAB"
    assert is_valid_salesforce_id("005Hs00000A1b2c")
    assert is_valid_salesforce_id("005Hs00000A1b2cIAB")
    assert is_valid_salesforce_id("005Hs00000A1b2ciab")  # the suffix is case-insensitive
    assert is_valid_salesforce_id("005Hs00000A1b2cIAB", prefix="005")
    assert not is_valid_salesforce_id("005Hs00000A1b2cIAB", prefix="00G")
    for bad in ("005Hs00000A1b2cAAA", "005Hs00000A1b2", "005Hs00000A1b2c!", "005Hs00000A1b2cIA"):
        assert not is_valid_salesforce_id(bad)


@pytest.mark.parametrize("value", ["005Hs00000A1b2c", "005Hs00000A1b2cIAB", ""])
def test_task_owner_setting_accepts_salesforce_ids(value: str) -> None:
    settings = settings_from_env({"SALESFORCE_TASK_OWNER_ID": value})
    assert settings.salesforce.task_owner_id == value


@pytest.mark.parametrize(
    "value", ["005Hs00000A1b2cAAA", "rep@example.com", "005Hs00000A1b2", "005Hs00000A1b2c-x"]
)
def test_malformed_task_owner_stops_start_naming_the_variable_not_the_value(value: str) -> None:
    with pytest.raises(SettingsError) as info:
        settings_from_env({"SALESFORCE_TASK_OWNER_ID": value})
    assert "SALESFORCE_TASK_OWNER_ID" in str(info.value)
    assert value not in str(info.value)


# -- 5. strict sandboxes: Salesforce -------------------------------------------------------------


async def test_salesforce_sandbox_answers_post_query_like_salesforce(
    salesforce: SalesforceServer,
) -> None:
    url = f"{salesforce.base_url}/services/data/v63.0/query"
    soql = f"SELECT Id FROM Lead WHERE Email = '{JANE.email}'"
    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {await sf_token(http, salesforce)}"}
        async with http.post(url, json={"q": soql}, headers=headers) as resp:
            status, body = resp.status, await resp.json()
        async with http.get(url, params={"q": soql}, headers=headers) as ok:
            assert ok.status == 200
        async with http.get(f"{url}All", params={"q": soql}, headers=headers) as missing:
            missing_status, missing_body = missing.status, await missing.json()

    assert status == 405
    assert body == [
        {
            "errorCode": "METHOD_NOT_ALLOWED",
            "message": "HTTP Method 'POST' not allowed. Allowed are GET,HEAD",
        }
    ]
    assert missing_status == 404 and missing_body[0]["errorCode"] == "NOT_FOUND"


@pytest.mark.parametrize(
    ("task", "code", "field"),
    [
        ({"WhoId": "00Q-not-an-id"}, "MALFORMED_ID", "WhoId"),
        ({"OwnerId": "rep@example.com"}, "MALFORMED_ID", "OwnerId"),
        ({"OwnerId": SANDBOX_LEAD_QUEUE_ID}, "INVALID_CROSS_REFERENCE_KEY", "OwnerId"),
        ({"Subject": ""}, "REQUIRED_FIELD_MISSING", "Subject"),
    ],
)
async def test_salesforce_sandbox_refuses_malformed_tasks_like_salesforce(
    salesforce: SalesforceServer, task: dict[str, str], code: str, field: str
) -> None:
    who_id = next(r["Id"] for r in salesforce.records if r["Email"] == JANE.email)
    url = f"{salesforce.base_url}/services/data/v63.0/sobjects/Task"
    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {await sf_token(http, salesforce)}"}
        body = {"WhoId": who_id, "Subject": "Call summary", **task}
        async with http.post(url, json=body, headers=headers) as resp:
            status, answer = resp.status, await resp.json()
    assert status == 400
    assert answer == [{"message": answer[0]["message"], "errorCode": code, "fields": [field]}]
    assert salesforce.tasks == []


async def raw(method: str, url: str, headers: dict[str, str], **kwargs: Any) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, url, headers=headers, **kwargs) as resp,
    ):
        return resp.status, await resp.json(content_type=None)


# -- 2. Amplitude trial_end_date, read leniently ----------------------------------------------

NOW = datetime(2025, 3, 12, 15, 0, tzinfo=UTC)  # Jane's trial ends 2025-03-19: 7 days left
AMP_KEY = SANDBOX_CREDENTIALS["AMPLITUDE_API_KEY"]
AMP_SECRET = SANDBOX_CREDENTIALS["AMPLITUDE_SECRET_KEY"]


@pytest.fixture
async def amplitude() -> AsyncIterator[AmplitudeServer]:
    srv = AmplitudeServer(now=lambda: NOW)
    await srv.start()
    yield srv
    await srv.stop()


def amp_client(server: AmplitudeServer) -> AmplitudeClient:
    return AmplitudeClient(AMP_KEY, AMP_SECRET, server.base_url, options=FAST, clock=lambda: NOW)


@pytest.mark.parametrize(
    "value",
    [
        "2025-03-19",
        "2025-03-19T15:30:00Z",
        "2025-03-19T10:00:00.123+00:00",
        "2025-03-19 08:00:00",
        "20250319",
        "03/19/2025",
        "3/19/2025",
        "03-19-2025",
        "3/19/25",
        "Mar 19, 2025",
        "March 19, 2025",
        1742385600000,  # epoch ms, 2025-03-19T12:00Z
        "1742385600000",
        1742385600,  # epoch seconds
    ],
)
async def test_usage_is_spoken_with_each_odd_trial_end_form(
    amplitude: AmplitudeServer, value: object
) -> None:
    amplitude.trial_end_values[JANE.email] = value
    async with amp_client(amplitude) as client:
        usage = await client.get_trial_usage(JANE.email)
    assert usage.trial_days_left == 7
    assert usage.spoken_summary() == (
        "You've created fourteen documents and sent nine, six of them already completed, "
        "and you have seven days left in your trial."
    )


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        None,
        OMIT,
        "next Tuesday",
        "19/03/2025",
        "2025-02-30",
        "1900-01-01",
        12,
        True,
        {"date": "2025-03-19"},
        ["2025-03-19"],
        "x" * 500,
    ],
)
async def test_unreadable_trial_end_drops_only_that_fact(
    amplitude: AmplitudeServer, value: object, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    amplitude.trial_end_values[JANE.email] = value
    async with amp_client(amplitude) as client:
        usage = await client.get_trial_usage(JANE.email)
    assert usage.trial_days_left is None
    assert (usage.documents_created, usage.documents_sent) == (14, 9)
    assert usage.spoken_summary() == (
        "You've created fourteen documents and sent nine, six of them already completed."
    )
    empty = value is None or value is OMIT or (isinstance(value, str) and not value.strip())
    lines = [r.getMessage() for r in caplog.records if "trial_end_date" in r.getMessage()]
    assert len(lines) == (0 if empty else 1)  # operators hear about unreadable, not absent
    if lines and isinstance(value, str):
        assert value not in lines[0]  # its shape, never its content


def test_value_shape_outlines_without_content() -> None:
    assert value_shape("03/19/2025") == "str:99/99/9999"
    assert value_shape("next Tuesday") == "str:aaaa aaaaaaa"
    assert value_shape({"a": 1}) == "dict"


# -- 5. strict sandboxes: Amplitude ---------------------------------------------------------------


def amp_auth() -> dict[str, str]:
    token = base64.b64encode(f"{AMP_KEY}:{AMP_SECRET}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


async def test_amplitude_sandbox_refuses_a_user_id_keyed_activity_request(
    amplitude: AmplitudeServer,
) -> None:
    url = f"{amplitude.base_url}/api/2/useractivity"
    status, body = await raw("GET", url, amp_auth(), params={"user": JANE.email})
    assert (status, body) == (400, {"message": "Invalid user: expected an Amplitude ID"})
    status, _ = await raw("GET", url, amp_auth(), params={"user": str(JANE.amplitude_id)})
    assert status == 200


@pytest.mark.parametrize(
    ("method", "path", "headers", "expected"),
    [
        ("POST", "/api/2/usersearch", "basic", 405),
        ("GET", "/api/2/users", "basic", 404),
        ("GET", "/api/2/usersearch", "bearer", 401),  # Basic auth only
        ("GET", "/api/2/usersearch", "none", 401),
    ],
)
async def test_amplitude_sandbox_refuses_what_amplitude_refuses(
    amplitude: AmplitudeServer, method: str, path: str, headers: str, expected: int
) -> None:
    auth = {
        "basic": amp_auth(),
        "bearer": {"Authorization": f"Bearer {AMP_SECRET}"},
        "none": {},
    }[headers]
    status, body = await raw(method, f"{amplitude.base_url}{path}", auth, params={"user": "x"})
    assert status == expected and isinstance(body, dict) and body["message"]


# -- 5. strict sandboxes: HubSpot -----------------------------------------------------------------


@pytest.fixture
async def hubspot() -> AsyncIterator[HubSpotServer]:
    srv = HubSpotServer()
    await srv.start()
    yield srv
    await srv.stop()


def note(contact_id: str, timestamp: str) -> dict[str, Any]:
    kind = {"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 202}
    return {
        "properties": {"hs_note_body": "Call summary", "hs_timestamp": timestamp},
        "associations": [{"to": {"id": contact_id}, "types": [kind]}],
    }


async def test_hubspot_sandbox_refuses_what_hubspot_refuses(hubspot: HubSpotServer) -> None:
    auth = {"Authorization": f"Bearer {SANDBOX_CREDENTIALS['HUBSPOT_ACCESS_TOKEN']}"}
    jane = contact_id_for(JANE)
    notes = f"{hubspot.base_url}/crm/v3/objects/notes"
    cases = [
        ("POST", notes, note(jane, "2025-03-12T15:00:00.000Z"), 201),
        ("POST", notes, note(jane, "1741791600000"), 201),
        ("POST", notes, note(jane, "March 12"), 400),
        ("POST", notes, note(jane, "2025-03-12"), 400),  # a date-time, not a date
        ("POST", notes, note(JANE.email, "2025-03-12T15:00:00Z"), 400),  # ids are numeric
        ("GET", f"{hubspot.base_url}/crm/v3/objects/contacts/search", None, 405),
        ("POST", f"{hubspot.base_url}/crm/v3/objects/contact/search", {}, 404),
    ]
    for method, url, body, expected in cases:
        status, answer = await raw(method, url, auth, json=body)
        assert status == expected, (method, url, body)
        if expected >= 400:
            assert answer["status"] == "error" and answer["category"] and answer["correlationId"]
    assert len(hubspot.notes) == 2
    status, answer = await raw("POST", notes, {"Authorization": "Basic abc"}, json=note(jane, "1"))
    assert (status, answer["category"]) == (401, "INVALID_AUTHENTICATION")


# -- 3. Amplitude quota and usage cache ------------------------------------------------------------


class Ticker:
    """A monotonic clock that moves only when told to; its ``sleep`` advances it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)  # let in-flight requests run, without waiting


def bulk_users(count: int) -> tuple[TrialUser, ...]:
    return tuple(
        dataclasses.replace(JANE, email=f"trialist{i}@bulk.example.com", amplitude_id=200_000 + i)
        for i in range(count)
    )


def limited_client(
    server: AmplitudeServer,
    ticker: Ticker,
    *,
    store: MemoryQuotaStore | None = None,
    cache_ttl: float = 600.0,
    budget: int = 360,
    concurrent: int = 10,
) -> AmplitudeClient:
    limiter = VendorLimiter(
        "amplitude",
        store or MemoryQuotaStore(ticker),
        hourly_budget=budget,
        max_concurrent=concurrent,
        sleep=ticker.sleep,
        clock=ticker,
    )
    return AmplitudeClient(
        AMP_KEY,
        AMP_SECRET,
        server.base_url,
        options=FAST,
        clock=lambda: NOW,
        limiter=limiter,
        cache=MemoryUsageCache(ticker),
        cache_ttl=cache_ttl,
    )


def test_quota_settings_have_the_documented_defaults() -> None:
    amplitude = settings_from_env({}).amplitude
    assert (amplitude.hourly_query_budget, amplitude.max_concurrent) == (360, 5)
    assert amplitude.usage_cache_ttl == 600.0
    assert QUERIES_PER_LOOKUP == 2
    custom = settings_from_env(
        {
            "AMPLITUDE_HOURLY_QUERY_BUDGET": "120",
            "AMPLITUDE_MAX_CONCURRENT": "4",
            "AMPLITUDE_USAGE_CACHE_TTL": "0",
        }
    ).amplitude
    assert (custom.hourly_query_budget, custom.max_concurrent, custom.usage_cache_ttl) == (
        120,
        4,
        0.0,
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("AMPLITUDE_HOURLY_QUERY_BUDGET", "-1"),
        ("AMPLITUDE_HOURLY_QUERY_BUDGET", "lots"),
        ("AMPLITUDE_MAX_CONCURRENT", "-3"),
        ("AMPLITUDE_USAGE_CACHE_TTL", "-5"),
    ],
)
def test_bad_quota_settings_stop_start(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        settings_from_env({name: value})


async def test_the_361st_lookup_in_an_hour_is_cached_or_refused_without_a_request() -> None:
    users = bulk_users(181)
    server = AmplitudeServer(now=lambda: NOW, users=users)
    await server.start()
    ticker = Ticker()
    try:
        async with limited_client(server, ticker) as client:
            for user in users[:180]:  # 180 lookups x 2 queries: the hourly budget, spent
                assert (await client.get_trial_usage(user.email)).documents_created == 14
                ticker.now += 5.0  # spread over fifteen minutes
            sent = len(server.requests())
            assert sent == 360

            # Lookups 181 to 361: a cached person is answered, a new one refused; no request.
            for i in range(181):
                if i % 2:
                    with pytest.raises(QuotaExhausted) as info:
                        await client.get_trial_usage(users[180].email)
                    assert not info.value.retryable and not info.value.counts_for_breaker
                else:
                    # looked up in the last ten minutes (the cache's lifetime)
                    usage = await client.get_trial_usage(users[179 - i // 2].email)
                    assert usage.trial_days_left == 7
            assert len(server.requests()) == sent

            ticker.now += 3600.0  # the window slides: the budget is back, the cache expired
            await client.get_trial_usage(users[180].email)
            await client.get_trial_usage(users[0].email)
            assert len(server.requests()) == sent + 4
    finally:
        await server.stop()


async def test_no_more_requests_in_flight_than_the_concurrency_cap(
    amplitude: AmplitudeServer,
) -> None:
    amplitude.inject("/api/2/usersearch", FaultKind.SLOW, delay_ms=300)
    ticker = Ticker()
    async with limited_client(amplitude, ticker, concurrent=2, cache_ttl=0) as client:
        outcomes = await asyncio.gather(
            *(client.get_trial_usage(JANE.email) for _ in range(3)), return_exceptions=True
        )
    refused = [o for o in outcomes if isinstance(o, QuotaExhausted)]
    assert len(refused) == 1 and sum(isinstance(o, TrialUsage) for o in outcomes) == 2
    assert len(amplitude.requests("/api/2/usersearch")) == 2
    assert sum(ticker.slept) >= 1.0  # waited (on the fake clock) for a slot, then gave up


async def test_a_slot_freed_in_time_is_taken() -> None:
    ticker = Ticker()
    limiter = VendorLimiter(
        "x",
        MemoryQuotaStore(ticker),
        hourly_budget=0,
        max_concurrent=1,
        sleep=ticker.sleep,
        clock=ticker,
    )
    entered = asyncio.Event()
    leave = asyncio.Event()

    async def holder() -> None:
        async with limiter.slot():
            entered.set()
            await leave.wait()

    task = asyncio.create_task(holder())
    await entered.wait()
    waiter_done = False

    async def waiter() -> None:
        nonlocal waiter_done
        async with limiter.slot():
            waiter_done = True

    second = asyncio.create_task(waiter())
    await asyncio.sleep(0)
    leave.set()
    await asyncio.gather(task, second)
    assert waiter_done and ticker.now - 1000.0 < 1.0


async def test_a_lease_never_released_expires() -> None:
    ticker = Ticker()
    store = MemoryQuotaStore(ticker)
    assert await store.acquire("k", 1, lease_s=10.0) is not None
    assert await store.acquire("k", 1, lease_s=10.0) is None
    ticker.now += 10.0
    assert await store.acquire("k", 1, lease_s=10.0) is not None


def test_cache_keys_hold_no_email() -> None:
    key = cache_key("amplitude", " Jane.Doe@Acme.example.com ")
    assert key == cache_key("amplitude", "jane.doe@acme.example.com")
    assert "jane" not in key.lower() and "@" not in key


async def test_spent_budget_is_spoken_as_the_fallback_and_the_cache_still_answers() -> None:
    """Through the agent's tool: no request, a natural sentence, the circuit untouched."""
    ticker = Ticker()
    store = MemoryQuotaStore(ticker)
    async with Sandbox() as sandbox:
        settings = fast_settings(sandbox.env())
        services = TrialistServices.from_settings(settings, quota_store=store)
        agent = PandaDocTrialistAgent(services, settings, sleep=NoSleep())
        data = TrialistData(email=JANE.email)
        session = build_session(settings, userdata=data, tts_model=None, stt_model=None)
        try:
            async with session:
                await session.start(agent)
                result = await session.run(user_input="How is my trial usage going?")
                assert "fourteen documents" in tool_output(result, "get_trial_usage").output

                key = "amplitude:quota:hour"
                assert store.used(key) == QUERIES_PER_LOOKUP
                assert await store.charge(key, 358, 360, 3600.0)  # the rest of the hour's
                assert store.used(key) == 360
                sent = len(sandbox.amplitude.requests())
                result = await session.run(user_input="How is my trial usage going?")
                out = tool_output(result, "get_trial_usage")  # cached: answered anyway
                assert not out.is_error and "fourteen documents" in out.output

                data.usage = None
                data.email = SAM.email
                data.identity = CallerIdentity("verified", SAM.email, "dispatch")
                result = await session.run(user_input="How is my trial usage going?")
                out = tool_output(result, "get_trial_usage")
                assert out.is_error and out.output == USAGE_FALLBACK
                assert len(sandbox.amplitude.requests()) == sent
                assert agent.circuit_breakers["amplitude"].state is CircuitState.CLOSED
        finally:
            await services.aclose()


class BrokenStore:
    """A shared store that is down: every call raises."""

    async def charge(self, key: str, cost: int, limit: int, window_s: float) -> bool:
        raise ConnectionError("store down")

    async def acquire(self, key: str, limit: int, lease_s: float) -> str | None:
        raise ConnectionError("store down")

    async def release(self, key: str, lease: str) -> None:
        raise ConnectionError("store down")

    async def get(self, key: str) -> dict[str, Any] | None:
        raise ConnectionError("store down")

    async def put(self, key: str, value: dict[str, Any], ttl_s: float) -> None:
        raise ConnectionError("store down")


async def test_a_store_that_is_down_neither_blocks_nor_breaks_a_lookup(
    amplitude: AmplitudeServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    broken = BrokenStore()
    limiter = VendorLimiter("amplitude", broken, hourly_budget=360, max_concurrent=10)
    async with AmplitudeClient(
        AMP_KEY,
        AMP_SECRET,
        amplitude.base_url,
        options=FAST,
        clock=lambda: NOW,
        limiter=limiter,
        cache=broken,
        cache_ttl=600.0,
    ) as client:
        usage = await client.get_trial_usage(JANE.email)
    assert usage.documents_created == 14
    assert len(amplitude.requests()) == 2
    assert "quota store unavailable (ConnectionError)" in caplog.text
    assert "usage cache unavailable (ConnectionError)" in caplog.text


async def test_cached_usage_is_spoken_while_the_circuit_is_open() -> None:
    """An open circuit refuses at once, but not when the cache already knows the verified
    caller's usage: that answer needs no request, so the caller still hears it."""
    async with Sandbox() as sandbox:
        settings = fast_settings(sandbox.env())
        services = TrialistServices.from_settings(settings)
        agent = PandaDocTrialistAgent(services, settings, sleep=NoSleep())
        data = TrialistData(email=JANE.email)
        session = build_session(settings, userdata=data, tts_model=None, stt_model=None)
        try:
            async with session:
                await session.start(agent)
                result = await session.run(user_input="How is my trial usage going?")
                assert "fourteen documents" in tool_output(result, "get_trial_usage").output
                breaker = agent.circuit_breakers["amplitude"]
                for _ in range(breaker.failure_threshold):
                    breaker.record_failure(ConnectionError("down"))
                assert breaker.state is CircuitState.OPEN
                sent = len(sandbox.amplitude.requests())

                result = await session.run(user_input="How is my trial usage going?")
                out = tool_output(result, "get_trial_usage")
                assert not out.is_error and "fourteen documents" in out.output
                assert len(sandbox.amplitude.requests()) == sent

                data.identity = CallerIdentity("verified", SAM.email, "dispatch")
                data.email, data.usage = SAM.email, None
                result = await session.run(user_input="How is my trial usage going?")
                out = tool_output(result, "get_trial_usage")  # not cached: refused at once
                assert out.is_error and out.output == USAGE_FALLBACK
                assert len(sandbox.amplitude.requests()) == sent
        finally:
            await services.aclose()


async def test_a_placeholder_trial_end_is_not_spoken(amplitude: AmplitudeServer) -> None:
    """2099-12-31 ("no end", a converted account) is not a trial: no "over twenty-six
    thousand days left", just the usage."""
    amplitude.trial_end_values[JANE.email] = "2099-12-31"
    async with amp_client(amplitude) as client:
        usage = await client.get_trial_usage(JANE.email)
    assert usage.trial_days_left is None
    assert usage.spoken_summary() == (
        "You've created fourteen documents and sent nine, six of them already completed."
    )
