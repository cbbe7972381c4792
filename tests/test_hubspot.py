"""HubSpotClient against the real HubSpot sandbox server on 127.0.0.1."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

from src.errors import (
    AuthenticationFailed,
    BadResponse,
    ConnectionFailed,
    InvalidRequest,
    NotFound,
    RateLimited,
    ServiceError,
    ServiceTimeout,
    ServiceUnavailable,
)
from src.sandbox.base import FaultKind
from src.sandbox.data import SANDBOX_CREDENTIALS, TRIAL_USERS, TrialUser
from src.sandbox.hubspot import HubSpotServer, contact_id_for
from src.services.http import HttpOptions
from src.services.hubspot import HubSpotClient, write_outcome_is_ambiguous
from tests.fault_helpers import down_then_up, flapping_outcomes

NOW = datetime(2025, 3, 12, 15, 0, 7, 250_000, tzinfo=UTC)
OPTIONS = HttpOptions(timeout=1.0, connect_timeout=1.0)
TOKEN = SANDBOX_CREDENTIALS["HUBSPOT_ACCESS_TOKEN"]
IN_HUBSPOT = [u for u in TRIAL_USERS if u.in_hubspot]
NOT_IN_HUBSPOT = [u for u in TRIAL_USERS if not u.in_hubspot]
JANE = TRIAL_USERS[0]
JANE_ID = contact_id_for(JANE)
SEARCH = "/crm/v3/objects/contacts/search"
NOTES = "/crm/v3/objects/notes"
EMAIL_RE = re.compile(r"[A-Za-z0-9._%+\-']+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}")


@pytest.fixture
async def server() -> AsyncIterator[HubSpotServer]:
    srv = HubSpotServer(now=lambda: NOW)
    await srv.start()
    yield srv
    await srv.stop()


def make_client(server: HubSpotServer, token: str = TOKEN) -> HubSpotClient:
    return HubSpotClient(token, server.base_url, options=OPTIONS, clock=lambda: NOW)


@pytest.fixture
async def client(server: HubSpotServer) -> AsyncIterator[HubSpotClient]:
    async with make_client(server) as c:
        yield c


def param(kind: FaultKind, extra: dict[str, Any], expected: type[ServiceError], retry: bool) -> Any:
    return pytest.param(kind, extra, expected, retry, id=kind.value)


# -- find_contact -------------------------------------------------------------------------


@pytest.mark.parametrize("user", IN_HUBSPOT, ids=lambda u: u.first_name)
async def test_find_contact_for_seeded_users(client: HubSpotClient, user: TrialUser) -> None:
    contact = await client.find_contact(user.email)

    assert contact.id == contact_id_for(user)
    assert (contact.first_name, contact.last_name) == (user.first_name, user.last_name)
    assert (contact.company, contact.title) == (user.company, user.title)
    assert contact.lifecycle_stage
    assert contact.source == "hubspot"
    assert contact.full_name == f"{user.first_name} {user.last_name}"


async def test_owner_is_optional(client: HubSpotClient) -> None:
    owners = [(await client.find_contact(u.email)).owner for u in IN_HUBSPOT]
    assert owners[0] == "81234567"
    assert None in owners


async def test_find_contact_is_case_insensitive(client: HubSpotClient) -> None:
    contact = await client.find_contact(f" {JANE.email.upper()} ")
    assert contact.id == JANE_ID


@pytest.mark.parametrize(
    "email",
    [NOT_IN_HUBSPOT[0].email, "nobody@nowhere.example.com"],
    ids=["not-in-hubspot", "unknown"],
)
async def test_missing_contact_is_not_found(client: HubSpotClient, email: str) -> None:
    with pytest.raises(NotFound) as info:
        await client.find_contact(email)
    assert not info.value.retryable
    assert not info.value.counts_for_breaker


async def test_blank_email_is_rejected_without_a_request(
    client: HubSpotClient, server: HubSpotServer
) -> None:
    with pytest.raises(InvalidRequest):
        await client.find_contact("  ")
    assert server.journal == []


async def test_wrong_token(server: HubSpotServer) -> None:
    async with make_client(server, token="wrong-hubspot-token") as bad:
        with pytest.raises(AuthenticationFailed) as info:
            await bad.find_contact(JANE.email)
        assert not info.value.retryable
        with pytest.raises(AuthenticationFailed):
            await bad.create_note(JANE_ID, "hello")
    assert [e.status for e in server.journal] == [401, 401]
    assert server.notes == []


def test_constructor_requires_token() -> None:
    with pytest.raises(ValueError):
        HubSpotClient("")


async def test_spoken_summary_never_leaks_crm_details(client: HubSpotClient) -> None:
    for user in IN_HUBSPOT:
        contact = await client.find_contact(user.email)
        sentence = contact.spoken_summary()
        assert sentence.count(".") <= 2 and sentence.endswith(".")  # "Corp." is allowed
        for leak in (contact.id, contact.lifecycle_stage, "hubspot", "@", "_"):
            assert leak is None or leak.lower() not in sentence.lower()


# -- find_contact fault matrix ------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "extra", "expected", "retryable"),
    [
        param(FaultKind.REFUSE, {}, ConnectionFailed, True),
        param(FaultKind.SERVER_ERROR, {}, ServiceUnavailable, True),
        param(FaultKind.SERVICE_UNAVAILABLE, {}, ServiceUnavailable, True),
        param(FaultKind.RATE_LIMITED, {"retry_after": 2.5}, RateLimited, True),
        param(FaultKind.HANG, {}, ServiceTimeout, True),
        param(FaultKind.MALFORMED, {}, BadResponse, False),
        param(FaultKind.UNAUTHORIZED, {}, AuthenticationFailed, False),
    ],
)
async def test_find_contact_fault_matrix(
    client: HubSpotClient,
    server: HubSpotServer,
    kind: FaultKind,
    extra: dict[str, Any],
    expected: type[ServiceError],
    retryable: bool,
) -> None:
    server.inject(SEARCH, kind, count=None, **extra)
    with pytest.raises(ServiceError) as info:
        await client.find_contact(JANE.email)
    exc = info.value
    assert type(exc) is expected
    assert exc.retryable is retryable
    assert exc.counts_for_breaker
    assert exc.service == "hubspot"
    if kind is FaultKind.RATE_LIMITED:
        assert isinstance(exc, RateLimited) and exc.retry_after == 2.5


async def test_slow_under_timeout_succeeds(client: HubSpotClient, server: HubSpotServer) -> None:
    server.inject("*", FaultKind.SLOW, delay_ms=50)
    assert (await client.find_contact(JANE.email)).id == JANE_ID
    assert server.journal[-1].fault == "slow"


async def test_flapping_alternates(client: HubSpotClient, server: HubSpotServer) -> None:
    server.inject("*", FaultKind.FLAPPING, every=2)
    outcomes = await flapping_outcomes(lambda: client.find_contact(JANE.email))
    assert outcomes == ["ok", "fail", "ok", "fail"]


async def test_server_down_then_up(client: HubSpotClient, server: HubSpotServer) -> None:
    assert (await down_then_up(server, lambda: client.find_contact(JANE.email))).id == JANE_ID


# -- create_note --------------------------------------------------------------------------


async def test_note_is_stored_with_association(
    client: HubSpotClient, server: HubSpotServer
) -> None:
    contact = await client.find_contact(JANE.email)
    note_id = await client.create_note(contact.id, "Booked a demo for Thursday.")

    [note] = server.notes
    assert note.id == note_id
    assert note.body == "Booked a demo for Thursday."
    assert note.properties["hs_timestamp"] == "2025-03-12T15:00:07.250Z"
    assert note.contact_ids == (JANE_ID,)
    assert note.associations == [
        {
            "to": {"id": JANE_ID},
            "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 202}],
        }
    ]
    assert server.journal[-1].status == 201


async def test_note_timestamp_can_be_given(client: HubSpotClient, server: HubSpotServer) -> None:
    when = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    await client.create_note(JANE_ID, "Called back.", timestamp=when)
    assert server.notes[0].properties["hs_timestamp"] == "2025-01-02T03:04:05.000Z"


async def test_note_for_unknown_contact_is_invalid(
    client: HubSpotClient, server: HubSpotServer
) -> None:
    with pytest.raises(InvalidRequest) as info:
        await client.create_note("404404", "hello")
    assert not info.value.retryable
    assert not info.value.counts_for_breaker
    assert server.journal[-1].status == 400
    assert server.notes == []


@pytest.mark.parametrize(
    ("contact_id", "body"),
    [("", "hello"), (JANE_ID, "   "), (JANE_ID, "x" * 65_537)],
    ids=["no-contact", "blank-body", "too-long"],
)
async def test_bad_note_input_is_rejected_locally(
    client: HubSpotClient, server: HubSpotServer, contact_id: str, body: str
) -> None:
    with pytest.raises(InvalidRequest):
        await client.create_note(contact_id, body)
    assert server.journal == []


@pytest.mark.parametrize(
    ("kind", "extra", "expected", "retryable"),
    [
        # The server may have created the note: never repeat blindly.
        param(FaultKind.HANG, {}, ServiceTimeout, False),
        param(FaultKind.SERVER_ERROR, {}, ServiceUnavailable, False),
        # 503 means "unable to handle the request" (RFC 9110): nothing was applied.
        param(FaultKind.SERVICE_UNAVAILABLE, {}, ServiceUnavailable, True),
        param(FaultKind.REFUSE, {}, ConnectionFailed, False),
        # The server certainly did not create it.
        param(FaultKind.RATE_LIMITED, {"retry_after": 1}, RateLimited, True),
        param(FaultKind.UNAUTHORIZED, {}, AuthenticationFailed, False),
        param(FaultKind.MALFORMED, {}, BadResponse, False),
    ],
)
async def test_create_note_fault_matrix(
    client: HubSpotClient,
    server: HubSpotServer,
    kind: FaultKind,
    extra: dict[str, Any],
    expected: type[ServiceError],
    retryable: bool,
) -> None:
    server.inject(NOTES, kind, count=1, **extra)
    with pytest.raises(ServiceError) as info:
        await client.create_note(JANE_ID, "Booked a demo.")
    assert type(info.value) is expected
    assert info.value.retryable is retryable
    assert len(server.requests(NOTES, "POST")) == 1  # POSTs are never resent by aiohttp
    assert server.notes == []


async def test_create_note_refused_connection_stays_retryable(
    client: HubSpotClient, server: HubSpotServer
) -> None:
    await server.go_down()
    with pytest.raises(ConnectionFailed) as info:
        await client.create_note(JANE_ID, "Booked a demo.")
    assert info.value.retryable  # nothing was sent, so a retry cannot duplicate the note


def test_write_outcome_policy() -> None:
    def failed(exc: ServiceError, cause: BaseException | None = None) -> ServiceError:
        exc.__cause__ = cause
        return exc

    # A connect timeout means nothing was sent (the refused case runs for real above).
    assert not write_outcome_is_ambiguous(
        failed(ServiceTimeout("hubspot"), aiohttp.ConnectionTimeoutError())
    )
    assert write_outcome_is_ambiguous(
        failed(ConnectionFailed("hubspot"), aiohttp.ServerDisconnectedError())
    )
    assert write_outcome_is_ambiguous(failed(ServiceTimeout("hubspot"), TimeoutError()))
    assert write_outcome_is_ambiguous(ServiceUnavailable("hubspot", status=502))
    assert not write_outcome_is_ambiguous(RateLimited("hubspot"))
    assert not write_outcome_is_ambiguous(InvalidRequest("hubspot", status=400))


# -- the wire, the sandbox, the logs ------------------------------------------------------


async def test_journal_shows_search_and_note_requests(
    client: HubSpotClient, server: HubSpotServer
) -> None:
    await client.find_contact(JANE.email)
    await client.create_note(JANE_ID, "Booked a demo.")

    search, create = server.journal
    assert (search.method, search.path) == ("POST", SEARCH)
    assert search.json["filterGroups"] == [
        {"filters": [{"propertyName": "email", "operator": "EQ", "value": JANE.email}]}
    ]
    assert {"email", "firstname", "lastname", "company", "jobtitle"} <= set(
        search.json["properties"]
    )
    assert (create.method, create.path) == ("POST", NOTES)
    assert create.json["properties"]["hs_note_body"] == "Booked a demo."
    for entry in (search, create):
        assert entry.headers["Authorization"] == "<redacted>"


async def test_sandbox_search_semantics(server: HubSpotServer) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    url = f"{server.base_url}{SEARCH}"
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.post(url, json={"limit": 2}) as page1:
            first = await page1.json()
        async with http.post(url, json={"limit": 2, "after": "2"}) as page2:
            second = await page2.json()
        either = {
            "filterGroups": [
                {"filters": [{"propertyName": "email", "operator": "EQ", "value": u.email}]}
                for u in IN_HUBSPOT[:2]
            ]
        }
        async with http.post(url, json=either) as ored:
            both = await ored.json()
        bad_op = {"filterGroups": [{"filters": [{"propertyName": "email", "operator": "LIKE"}]}]}
        async with http.post(url, json=bad_op) as rejected:
            assert rejected.status == 400
        async with http.post(url, json={}, headers={"Authorization": "Bearer nope"}) as denied:
            assert denied.status == 401
            assert (await denied.json())["category"] == "INVALID_AUTHENTICATION"
        bad_type = {
            "properties": {"hs_note_body": "x", "hs_timestamp": "2025-01-01T00:00:00.000Z"},
            "associations": [
                {
                    "to": {"id": JANE_ID},
                    "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 1}],
                }
            ],
        }
        async with http.post(f"{server.base_url}{NOTES}", json=bad_type) as wrong_type:
            assert wrong_type.status == 400
    assert first["total"] == len(IN_HUBSPOT)
    assert first["paging"]["next"]["after"] == "2"
    assert len(first["results"]) + len(second["results"]) == len(IN_HUBSPOT)
    assert "paging" not in second
    assert sorted(r["properties"]["email"] for r in both["results"]) == sorted(
        u.email for u in IN_HUBSPOT[:2]
    )
    assert server.notes == []


async def test_logs_hold_no_token_or_emails(
    server: HubSpotServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with make_client(server) as good:
        for user in IN_HUBSPOT:
            contact = await good.find_contact(user.email)
            await good.create_note(contact.id, f"Spoke with {user.email} about the trial.")
        with pytest.raises(NotFound):
            await good.find_contact("ghost@nowhere.example.com")
        server.inject(NOTES, FaultKind.SERVICE_UNAVAILABLE, count=1)
        with pytest.raises(ServiceUnavailable):
            await good.create_note(JANE_ID, "again")
    async with make_client(server, token="wrong-hubspot-token") as bad:
        with pytest.raises(AuthenticationFailed):
            await bad.find_contact(JANE.email)

    text = caplog.text
    assert f"hubspot POST {SEARCH} -> 200" in text  # logging did happen
    assert TOKEN not in text and "wrong-hubspot-token" not in text
    assert "Spoke with" not in text  # note bodies are personal data too
    assert EMAIL_RE.search(text) is None
