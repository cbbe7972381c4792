"""Issue 18, vendor contract fidelity: what the real APIs accept, return and allow.

Against the sandbox stand-ins over real HTTP: Task ownership, the Salesforce id settings,
and each stand-in refusing what its vendor refuses, with the vendor's error shape."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from src.errors import InvalidRequest
from src.sandbox.data import SANDBOX_CREDENTIALS, TRIAL_USERS
from src.sandbox.salesforce import SANDBOX_LEAD_QUEUE_ID, SANDBOX_TASK_OWNER_ID, SalesforceServer
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
