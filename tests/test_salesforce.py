"""SalesforceClient against the real SalesforceServer sandbox on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any, Literal

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
from src.sandbox.data import SANDBOX_CREDENTIALS, TRIAL_USERS
from src.sandbox.salesforce import SalesforceServer, SoqlError, parse_soql
from src.services.http import HttpOptions
from src.services.salesforce import (
    CrmContact,
    SalesforceClient,
    is_valid_email,
    person_query,
    soql_quote,
)
from tests.fault_helpers import down_then_up, flapping_outcomes

CLIENT_ID = SANDBOX_CREDENTIALS["SALESFORCE_CLIENT_ID"]
CLIENT_SECRET = SANDBOX_CREDENTIALS["SALESFORCE_CLIENT_SECRET"]
FAST = HttpOptions(timeout=1.0, connect_timeout=1.0)
TOKEN_PATH = "/services/oauth2/token"
QUERY = "/services/data/*/query"
TASK = "/services/data/*/sobjects/Task"

JANE = next(u for u in TRIAL_USERS if u.email.startswith("jane."))  # Lead
SAM = next(u for u in TRIAL_USERS if u.salesforce_object == "Contact")
NOT_IN_SALESFORCE = [u.email for u in TRIAL_USERS if not u.in_salesforce]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def server() -> AsyncIterator[SalesforceServer]:
    srv = SalesforceServer()
    await srv.start()
    yield srv
    await srv.stop()


@pytest.fixture
async def client(server: SalesforceServer) -> AsyncIterator[SalesforceClient]:
    async with SalesforceClient(server.base_url, CLIENT_ID, CLIENT_SECRET, options=FAST) as c:
        yield c


def token_requests(server: SalesforceServer) -> int:
    return len(server.requests(TOKEN_PATH, "POST"))


def queries(server: SalesforceServer) -> list[str]:
    return [e.query["q"] for e in server.requests(QUERY, "GET")]


# -- lookups ------------------------------------------------------------------------------


async def test_finds_a_lead(client: SalesforceClient, server: SalesforceServer) -> None:
    person = await client.find_person(JANE.email)

    assert person.object_type == "Lead"
    assert (person.first_name, person.last_name) == ("Jane", "Doe")
    assert (person.company, person.title) == ("Acme Corp", "Head of Sales Operations")
    assert person.status == "Open - Not Contacted"
    assert person.owner and person.source == "salesforce"
    assert person.full_name == "Jane Doe"
    assert person.id.startswith("00Q") and len(person.id) == 18
    assert sorted(queries(server)) == sorted(
        [person_query("Contact", JANE.email), person_query("Lead", JANE.email)]
    )
    assert person.spoken_summary() == "Jane Doe works at Acme Corp as Head of Sales Operations."


async def test_finds_a_contact_with_its_account_name(client: SalesforceClient) -> None:
    person = await client.find_person(f"  {SAM.email.upper()} ")  # SF compares case-blind

    assert person.object_type == "Contact"
    assert person.company == SAM.company  # from Account.Name
    assert person.status is None
    assert person.id.startswith("003")


async def test_contact_wins_over_a_lead_with_the_same_email(
    client: SalesforceClient, server: SalesforceServer
) -> None:
    server.add_person(SAM.email, "Sam", "Lee", object_type="Lead", company="Old Lead Inc")

    person = await client.find_person(SAM.email)

    assert person.object_type == "Contact" and person.company == SAM.company


@pytest.mark.parametrize(
    ("failing", "outcome"),
    [("Contact", ServiceUnavailable), ("Lead", "Contact")],
    ids=["contact-query-fails", "lead-query-fails"],
)
async def test_one_failing_object_query(
    monkeypatch: pytest.MonkeyPatch, failing: str, outcome: type[ServiceError] | str
) -> None:
    sf = SalesforceClient("http://127.0.0.1:9", CLIENT_ID, CLIENT_SECRET, options=FAST)

    async def query_one(object_type: Literal["Lead", "Contact"], email: str) -> CrmContact:
        if object_type == failing:
            raise ServiceUnavailable("salesforce")
        prefix = "003" if object_type == "Contact" else "00Q"
        return CrmContact(
            id=f"{prefix}000000000000AAA", source="salesforce", object_type=object_type
        )

    monkeypatch.setattr(sf, "_query_one", query_one)
    if isinstance(outcome, str):
        assert (await sf.find_person(JANE.email)).object_type == outcome
    else:
        # A Lead was found, but a Contact (which would win) may exist: no guessing.
        with pytest.raises(outcome):
            await sf.find_person(JANE.email)


@pytest.mark.parametrize("email", [*NOT_IN_SALESFORCE, "nobody@example.com"])
async def test_unknown_person_is_not_found(client: SalesforceClient, email: str) -> None:
    with pytest.raises(NotFound) as info:
        await client.find_person(email)
    assert not info.value.retryable and not info.value.counts_for_breaker


@pytest.mark.parametrize(
    ("client_id", "client_secret"),
    [("wrong-id", CLIENT_SECRET), (CLIENT_ID, "wrong-secret")],
    ids=["unknown-client-id-400", "wrong-secret-401"],
)
async def test_wrong_credentials_fail_authentication(
    server: SalesforceServer, client_id: str, client_secret: str
) -> None:
    async with SalesforceClient(server.base_url, client_id, client_secret, options=FAST) as sf:
        with pytest.raises(AuthenticationFailed) as info:
            await sf.find_person(JANE.email)
    assert not info.value.retryable
    assert queries(server) == []  # no token, no data call
    assert token_requests(server) == 1  # the single token fetch that failed was not retried


# -- token handling -------------------------------------------------------------------------


async def test_token_is_cached_across_calls(
    client: SalesforceClient, server: SalesforceServer
) -> None:
    for _ in range(3):
        await client.find_person(JANE.email)
    with pytest.raises(NotFound):
        await client.find_person("nobody@example.com")

    assert token_requests(server) == 1
    assert len(queries(server)) == 8


async def test_concurrent_callers_share_one_token_request(
    client: SalesforceClient, server: SalesforceServer
) -> None:
    results = await asyncio.gather(*(client.find_person(JANE.email) for _ in range(6)))

    assert {r.id for r in results} == {results[0].id}
    assert token_requests(server) == 1
    assert len(queries(server)) == 12


async def test_expired_session_is_refreshed_once_and_the_call_repeated(
    client: SalesforceClient, server: SalesforceServer
) -> None:
    await client.find_person(JANE.email)
    server.expire_tokens()

    person = await client.find_person(JANE.email)

    assert person.first_name == "Jane"
    assert token_requests(server) == 2  # both 401'd queries shared one refresh
    statuses = [e.status for e in server.requests(QUERY)]
    assert statuses == [200, 200, 401, 401, 200, 200]


async def test_second_consecutive_401_is_authentication_failed(
    client: SalesforceClient, server: SalesforceServer
) -> None:
    await client.find_person(JANE.email)
    server.reset_journal()
    server.inject(QUERY, FaultKind.UNAUTHORIZED)

    with pytest.raises(AuthenticationFailed) as info:
        await client.find_person(JANE.email)

    assert info.value.status == 401
    assert token_requests(server) == 1  # exactly one refresh, no loop
    assert len(queries(server)) == 4  # each query: first try + one repeat


async def test_announced_token_expiry_is_respected(server: SalesforceServer) -> None:
    server.token_expires_in = 3600
    clock = FakeClock()
    async with SalesforceClient(
        server.base_url, CLIENT_ID, CLIENT_SECRET, options=FAST, clock=clock
    ) as sf:
        await sf.find_person(JANE.email)
        clock.now += 3000  # still inside the lifetime (minus the safety margin)
        await sf.find_person(JANE.email)
        assert token_requests(server) == 1
        clock.now += 600
        await sf.find_person(JANE.email)

    assert token_requests(server) == 2
    assert all(e.status == 200 for e in server.requests(QUERY))  # renewed before any 401


# -- tasks ------------------------------------------------------------------------------------


async def test_create_task(client: SalesforceClient, server: SalesforceServer) -> None:
    person = await client.find_person(JANE.email)

    task_id = await client.create_task(person.id, "  Demo   booked ", "Tuesday 3 PM UTC")

    assert task_id.startswith("00T")
    assert len(server.tasks) == 1
    task = server.tasks[0]
    assert task["Id"] == task_id and task["WhoId"] == person.id
    assert task["Subject"] == "Demo booked" and task["Description"] == "Tuesday 3 PM UTC"


async def test_create_task_repeats_once_after_401_and_creates_one_task(
    client: SalesforceClient, server: SalesforceServer
) -> None:
    person = await client.find_person(JANE.email)
    server.expire_tokens()

    await client.create_task(person.id, "Follow up", "")

    assert len(server.tasks) == 1
    assert [e.status for e in server.requests(TASK)] == [401, 201]


async def test_create_task_is_never_retried_by_the_client(
    client: SalesforceClient, server: SalesforceServer
) -> None:
    person = await client.find_person(JANE.email)
    server.inject(TASK, FaultKind.SERVER_ERROR)

    with pytest.raises(ServiceUnavailable):
        await client.create_task(person.id, "Follow up", "")

    assert len(server.requests(TASK)) == 1


async def test_create_task_truncates_long_fields(
    client: SalesforceClient, server: SalesforceServer
) -> None:
    person = await client.find_person(JANE.email)

    await client.create_task(person.id, "x" * 300, "y" * 40_000)

    assert len(server.tasks[0]["Subject"]) == 255
    assert len(server.tasks[0]["Description"]) == 32_000


@pytest.mark.parametrize(
    ("who_id", "subject"),
    [("not-an-id", "Follow up"), ("00Q5e000000000'1AAA", "x"), ("00Q5e0000000001AAA", "  ")],
)
async def test_create_task_rejects_bad_input_without_sending(
    client: SalesforceClient, server: SalesforceServer, who_id: str, subject: str
) -> None:
    with pytest.raises(InvalidRequest):
        await client.create_task(who_id, subject, "")
    assert server.requests(TASK) == []


async def test_create_task_for_an_unknown_record_is_invalid_request(
    client: SalesforceClient, server: SalesforceServer
) -> None:
    with pytest.raises(InvalidRequest) as info:
        await client.create_task("00Q000000000000AAA", "Follow up", "")
    assert info.value.status == 400 and not info.value.counts_for_breaker
    assert server.tasks == []


# -- SOQL injection -------------------------------------------------------------------------

ACCEPTED = [
    ("o'brien@example.com", r"'o\'brien@example.com'"),
    ("\"x' OR Email != '\"@example.com", r"""'\"x\' OR Email != \'\"@example.com'"""),
    ('"x\\\' OR Id != null --"@example.com', r"""'\"x\\\' OR Id != null --\"@example.com'"""),
    ('"a\\\\b"@example.com', r"""'\"a\\\\b\"@example.com'"""),
    ('"\\"q\\""@example.com', r"""'\"\\\"q\\\"\"@example.com'"""),
    ("a%b_c@example.com", "'a%b_c@example.com'"),  # `=` gives % and _ no meaning
    ("%@example.com", "'%@example.com'"),
    ("jöhn.dœ@exämple.com", "'jöhn.dœ@exämple.com'"),
    ("o\u02bcbrien@example.com", "'o\u02bcbrien@example.com'"),  # modifier apostrophe
    ("\uff07@example.com", "'\uff07@example.com'"),  # fullwidth apostrophe: just a char
]
REJECTED = [
    f"{JANE.email}' OR Email != '",
    f"x' OR Email != '{JANE.email}",
    f"{JANE.email}\n' OR Email != '",
    "x'\r\n@example.com",
    "tab\t@example.com",
    "' OR ''='",
    "%",
    "",
    "jane\x00@example.com",
    "\u202ejane@example.com",  # right-to-left override (format character)
    "ja\x85ne@example.com",  # C1 control (inside: strip() would remove it at the ends)
]


@pytest.mark.parametrize(("email", "literal"), ACCEPTED, ids=range(len(ACCEPTED)))
async def test_hostile_but_valid_emails_are_quoted_exactly(
    client: SalesforceClient, server: SalesforceServer, email: str, literal: str
) -> None:
    assert soql_quote(email) == literal

    with pytest.raises(NotFound):
        await client.find_person(email)

    sent = queries(server)
    assert sorted(sent) == sorted(
        [
            "SELECT Id, FirstName, LastName, Title, Account.Name, Owner.Id, Owner.Name, Phone "
            "FROM Contact "
            f"WHERE Email = {literal} ORDER BY LastModifiedDate DESC LIMIT 1",
            "SELECT Id, FirstName, LastName, Company, Title, Status, Owner.Id, Owner.Name, "
            "Phone FROM Lead "
            f"WHERE Email = {literal} ORDER BY LastModifiedDate DESC LIMIT 1",
        ]
    )
    assert all(parse_soql(q).value == email for q in sent)  # unescapes to the input
    assert all(e.status == 200 for e in server.requests(QUERY))


@pytest.mark.parametrize("email", REJECTED, ids=range(len(REJECTED)))
async def test_malformed_emails_are_rejected_before_any_request(
    client: SalesforceClient, server: SalesforceServer, email: str
) -> None:
    with pytest.raises(InvalidRequest) as info:
        await client.find_person(email)
    assert not info.value.counts_for_breaker
    assert server.journal == []


@pytest.mark.parametrize(
    "email", ["o'brien@example.com", "a_b%c@example.com", '"x\\\\y"@example.com', "zoë@exämple.com"]
)
async def test_unusual_emails_find_exactly_their_own_record(
    client: SalesforceClient, server: SalesforceServer, email: str
) -> None:
    record_id = server.add_person(email, "Pat", "O'Brien", object_type="Contact")

    person = await client.find_person(email)

    assert person.id == record_id


async def test_wildcards_do_not_match_other_records(
    client: SalesforceClient, server: SalesforceServer
) -> None:
    server.add_person("a_b%c@example.com", "Pat", "Wild")

    for probe in ("axbyc@example.com", "a_b%@example.com", "%@example.com", "_@example.com"):
        with pytest.raises(NotFound):
            await client.find_person(probe)


async def _raw_query(server: SalesforceServer, soql: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http:
        form = {"grant_type": "client_credentials", "client_id": CLIENT_ID}
        form["client_secret"] = CLIENT_SECRET
        async with http.post(f"{server.base_url}{TOKEN_PATH}", data=form) as resp:
            token = (await resp.json())["access_token"]
        async with http.get(
            f"{server.base_url}/services/data/v63.0/query",
            params={"q": soql},
            headers={"Authorization": f"Bearer {token}"},
        ) as resp:
            return resp.status, await resp.json()


@pytest.mark.parametrize(
    "soql",
    [
        "SELECT Id FROM Lead WHERE Email = 'x' OR Email != ''",
        "SELECT Id FROM Lead WHERE Email = 'x' OR Email LIKE '%'",
        "SELECT Id FROM Lead WHERE Email = 'x\\\\' OR Email != '' LIMIT 1",
        "SELECT Id FROM Lead WHERE Email = 'x'; SELECT Id FROM Contact",
        "SELECT Id FROM Lead WHERE Email = 'x\\%'",
        "SELECT Id FROM Lead WHERE Email = 'x\\u0027'",
        "SELECT Id FROM Lead WHERE Email = 'unterminated",
        "SELECT Id FROM Lead WHERE Email != 'x'",
        "SELECT Id FROM Lead",
    ],
)
async def test_sandbox_rejects_broken_out_queries(server: SalesforceServer, soql: str) -> None:
    status, body = await _raw_query(server, soql)

    assert status == 400
    assert body == [{"message": body[0]["message"], "errorCode": "MALFORMED_QUERY"}]


async def test_sandbox_answers_invalid_field_and_expired_session_like_salesforce(
    server: SalesforceServer,
) -> None:
    status, body = await _raw_query(server, "SELECT Company FROM Contact WHERE Email = 'x'")
    assert (status, body[0]["errorCode"]) == (400, "INVALID_FIELD")

    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{server.base_url}/services/data/v63.0/query",
            params={"q": "SELECT Id FROM Lead WHERE Email = 'x'"},
            headers={"Authorization": "Bearer not-a-token"},
        ) as resp,
    ):
        assert resp.status == 401
        assert await resp.json() == [
            {"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}
        ]


# -- soql_quote and is_valid_email ------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain", "'plain'"),
        ("", "''"),
        ("it's", r"'it\'s'"),
        ('say "hi"', r"""'say \"hi\"'"""),
        ("back\\slash", r"'back\\slash'"),
        ("\\'", r"'\\\''"),
        ("line\nbreak\rret\ttab", r"'line\nbreak\rret\ttab'"),
        ("\b\f", r"'\b\f'"),
        ("50%_off", "'50%_off'"),
        ("ünïcødé ✓ 日本", "'ünïcødé ✓ 日本'"),
        ("\u2028sep", "'\u2028sep'"),
    ],
)
def test_soql_quote(value: str, expected: str) -> None:
    assert soql_quote(value) == expected


def test_soql_quote_like_escapes_wildcards() -> None:
    assert soql_quote("50%_off", like=True) == r"'50\%\_off'"
    assert soql_quote("a'%", like=True) == r"'a\'\%'"


@pytest.mark.parametrize("char", ["\x00", "\x1b", "\x07", "\x7f", "\x85", "\x9f"])
def test_soql_quote_refuses_unrepresentable_control_characters(char: str) -> None:
    with pytest.raises(ValueError):
        soql_quote(f"a{char}b")


def test_soql_quote_round_trips_through_the_sandbox_parser() -> None:
    nasty = "".join(chr(c) for c in range(0x20, 0x7F)) + "\n\r\t\b\f' OR ''='\\\\'"
    for value in (nasty, "'", "\\", "\\'", "''", "é'\\\"", nasty[::-1]):
        query = parse_soql(f"SELECT Id FROM Lead WHERE Email = {soql_quote(value)} LIMIT 1")
        assert query.value == value and query.limit == 1


def test_unquoted_value_cannot_be_parsed_by_the_sandbox() -> None:
    with pytest.raises(SoqlError):
        parse_soql("SELECT Id FROM Lead WHERE Email = 'x' OR Email != ''")


@pytest.mark.parametrize(
    ("email", "ok"),
    [
        ("jane.doe@acme.example.com", True),
        ("o'brien+tag@example.co.uk", True),
        ('"quoted local"@example.com', True),
        ("jöhn@exämple.com", True),
        ("a" * 64 + "@example.com", True),
        ("a" * 65 + "@example.com", False),
        ("x@" + "a" * 250 + ".com", False),
        ("jane@localhost", False),
        ("jane at acme dot com", False),
        ("jane@@acme.com", False),
        (".jane@acme.com", False),
        ("jane@-acme.com", False),
        ("jane@acme.com\n", False),
        ("", False),
    ],
)
def test_is_valid_email(email: str, ok: bool) -> None:
    assert is_valid_email(email) is ok


# -- faults ------------------------------------------------------------------------------------

FAULTS = [
    pytest.param(FaultKind.REFUSE, {}, ConnectionFailed, id="refuse"),
    pytest.param(FaultKind.SERVER_ERROR, {}, ServiceUnavailable, id="500"),
    pytest.param(FaultKind.SERVICE_UNAVAILABLE, {}, ServiceUnavailable, id="503"),
    pytest.param(FaultKind.RATE_LIMITED, {"retry_after": 2.5}, RateLimited, id="429"),
    pytest.param(FaultKind.HANG, {}, ServiceTimeout, id="hang"),
    pytest.param(FaultKind.SLOW, {"delay_ms": 60}, None, id="slow-under-timeout"),
    pytest.param(FaultKind.MALFORMED, {}, BadResponse, id="malformed"),
    pytest.param(FaultKind.UNAUTHORIZED, {}, AuthenticationFailed, id="401"),
]


@pytest.mark.parametrize(("kind", "params", "expected"), FAULTS)
async def test_fault_matrix_on_queries(
    client: SalesforceClient,
    server: SalesforceServer,
    kind: FaultKind,
    params: dict[str, Any],
    expected: type[ServiceError] | None,
) -> None:
    await client.find_person(JANE.email)  # token in hand: the faults hit the data calls
    server.inject(QUERY, kind, count=None, **params)

    if expected is None:
        assert (await client.find_person(JANE.email)).first_name == "Jane"
        return
    with pytest.raises(expected) as info:
        await client.find_person(JANE.email)
    error = info.value
    assert error.service == "salesforce"
    assert error.retryable is (expected not in (BadResponse, AuthenticationFailed))
    if kind is FaultKind.RATE_LIMITED:
        assert isinstance(error, RateLimited) and error.retry_after == 2.5
    if kind is FaultKind.UNAUTHORIZED:
        assert token_requests(server) == 2  # one refresh, then the second 401 is final


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        (FaultKind.SERVICE_UNAVAILABLE, ServiceUnavailable),
        (FaultKind.MALFORMED, BadResponse),
        (FaultKind.UNAUTHORIZED, AuthenticationFailed),
    ],
)
async def test_faults_on_the_token_endpoint(
    client: SalesforceClient,
    server: SalesforceServer,
    kind: FaultKind,
    expected: type[ServiceError],
) -> None:
    server.inject(TOKEN_PATH, kind)

    with pytest.raises(expected):
        await client.find_person(JANE.email)
    assert token_requests(server) == 1 and queries(server) == []


async def test_flapping_service(client: SalesforceClient, server: SalesforceServer) -> None:
    await client.find_person(JANE.email)
    server.inject(QUERY, FaultKind.FLAPPING, every=3)  # every 3rd query answers 503

    # two queries per lookup: ok, 3rd fails, 6th fails, ok
    outcomes = await flapping_outcomes(lambda: client.find_person(JANE.email))
    assert outcomes == ["ok", "fail", "fail", "ok"]


async def test_service_down_then_back(client: SalesforceClient, server: SalesforceServer) -> None:
    person = await down_then_up(server, lambda: client.find_person(JANE.email))
    assert person.first_name == "Jane"


# -- logs and speech -----------------------------------------------------------------------------


async def test_logs_carry_no_secrets_tokens_or_emails(
    server: SalesforceServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with SalesforceClient(server.base_url, CLIENT_ID, CLIENT_SECRET, options=FAST) as sf:
        person = await sf.find_person(JANE.email)
        server.expire_tokens()
        await sf.find_person(SAM.email)
        await sf.create_task(person.id, "Demo booked", f"Booked by {JANE.email}")
        with pytest.raises(NotFound):
            await sf.find_person("o'brien@example.com")
        server.inject(QUERY, FaultKind.SERVER_ERROR)
        with pytest.raises(ServiceUnavailable):
            await sf.find_person(JANE.email)
    async with SalesforceClient(server.base_url, CLIENT_ID, "bad-secret", options=FAST) as sf:
        with pytest.raises(AuthenticationFailed):
            await sf.find_person(JANE.email)

    text = caplog.text + "\n".join(r.getMessage() for r in caplog.records)
    assert "salesforce POST" in text  # the HTTP layer did log every request
    assert len(server.issued) == 2
    for secret in (CLIENT_ID, CLIENT_SECRET, "bad-secret", *server.issued):
        assert secret not in text
    for personal in (JANE.email, SAM.email, "jane.doe", "o'brien", "Jane", "Doe"):
        assert personal not in text


async def test_a_cancelled_token_fetch_leaves_no_stale_error(
    client: SalesforceClient, server: SalesforceServer
) -> None:
    # An earlier fetch failed with a 503 ...
    server.inject("/services/oauth2/token", FaultKind.SERVICE_UNAVAILABLE, count=1)
    with pytest.raises(ServiceUnavailable):
        await client.find_person(JANE.email)
    # ... then a fetch hangs with a caller queued behind it, and is cancelled.
    server.inject("/services/oauth2/token", FaultKind.HANG, count=1)
    first = asyncio.create_task(client.find_person(JANE.email))
    await asyncio.sleep(0.05)
    second = asyncio.create_task(client.find_person(JANE.email))
    await asyncio.sleep(0.05)
    first.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await first
    server.clear()
    person = await second  # fetches its own token, not the old 503
    assert person.first_name == "Jane"
