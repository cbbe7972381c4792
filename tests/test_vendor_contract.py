"""Issue 18, vendor contract fidelity: what the real APIs accept, return and allow.

Against the sandbox stand-ins over real HTTP: Task ownership, the Salesforce id settings,
and each stand-in refusing what its vendor refuses, with the vendor's error shape."""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

from src.errors import InvalidRequest
from src.sandbox.amplitude import OMIT, AmplitudeServer
from src.sandbox.data import SANDBOX_CREDENTIALS, TRIAL_USERS
from src.sandbox.hubspot import HubSpotServer, contact_id_for
from src.sandbox.salesforce import SANDBOX_LEAD_QUEUE_ID, SANDBOX_TASK_OWNER_ID, SalesforceServer
from src.services.amplitude import AmplitudeClient
from src.services.amplitude_dates import value_shape
from src.services.http import HttpOptions
from src.services.salesforce import SalesforceClient
from src.settings import SettingsError, settings_from_env
from src.validation import is_valid_salesforce_id, salesforce_id_checksum

FAST = HttpOptions(timeout=0.5, connect_timeout=0.3)
SF_ID = SANDBOX_CREDENTIALS["SALESFORCE_CLIENT_ID"]
SF_SECRET = SANDBOX_CREDENTIALS["SALESFORCE_CLIENT_SECRET"]
JANE = next(u for u in TRIAL_USERS if u.email.startswith("jane."))


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
