"""AmplitudeClient against the real Amplitude sandbox server on 127.0.0.1."""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

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
from src.sandbox.amplitude import AmplitudeServer
from src.sandbox.base import FaultKind, SandboxServer
from src.sandbox.data import SANDBOX_CREDENTIALS, TRIAL_USERS, TrialUser
from src.services.amplitude import AmplitudeClient, TrialUsage
from src.services.http import HttpOptions
from tests.fault_helpers import down_then_up, flapping_outcomes

NOW = datetime(2025, 3, 12, 15, 0, tzinfo=UTC)
OPTIONS = HttpOptions(timeout=1.0, connect_timeout=1.0)
API_KEY = SANDBOX_CREDENTIALS["AMPLITUDE_API_KEY"]
SECRET_KEY = SANDBOX_CREDENTIALS["AMPLITUDE_SECRET_KEY"]
JANE = TRIAL_USERS[0]
EMAIL_RE = re.compile(r"[A-Za-z0-9._%+\-']+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}")


@pytest.fixture
async def server() -> AsyncIterator[AmplitudeServer]:
    srv = AmplitudeServer(now=lambda: NOW)
    await srv.start()
    yield srv
    await srv.stop()


def make_client(
    server: AmplitudeServer, *, api_key: str = API_KEY, secret_key: str = SECRET_KEY
) -> AmplitudeClient:
    return AmplitudeClient(api_key, secret_key, server.base_url, options=OPTIONS, clock=lambda: NOW)


@pytest.fixture
async def client(server: AmplitudeServer) -> AsyncIterator[AmplitudeClient]:
    async with make_client(server) as c:
        yield c


# -- success ------------------------------------------------------------------------------


@pytest.mark.parametrize("user", TRIAL_USERS, ids=lambda u: u.first_name)
async def test_usage_matches_seed(client: AmplitudeClient, user: TrialUser) -> None:
    usage = await client.get_trial_usage(user.email)

    assert usage.documents_created == user.documents_created
    assert usage.documents_sent == user.documents_sent
    assert usage.documents_completed == user.documents_completed
    assert usage.templates_created == user.templates_created
    assert usage.integrations == user.integrations
    assert usage.last_active_days_ago == user.last_active_days_ago
    assert usage.trial_days_left == user.trial_days_left
    assert usage.last_active_at is not None and usage.last_active_at.tzinfo is not None


async def test_email_lookup_is_case_insensitive(client: AmplitudeClient) -> None:
    usage = await client.get_trial_usage("  " + JANE.email.upper() + " ")
    assert usage.documents_created == JANE.documents_created


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        (
            TRIAL_USERS[0],
            "You've created fourteen documents and sent nine, six of them already "
            "completed, and you have seven days left in your trial.",
        ),
        (
            TRIAL_USERS[1],
            "You've created one document but haven't sent it yet, and you have two days "
            "left in your trial.",
        ),
        (
            TRIAL_USERS[2],
            "You've created six documents and sent four, all of them completed, and you "
            "have twelve days left in your trial.",
        ),
        (
            TRIAL_USERS[3],
            "You've created three documents and sent one, and you have nine days left in "
            "your trial.",
        ),
    ],
    ids=lambda v: v.first_name if isinstance(v, TrialUser) else None,
)
async def test_spoken_summary_for_seeded_users(
    client: AmplitudeClient, user: TrialUser, expected: str
) -> None:
    usage = await client.get_trial_usage(user.email)
    assert usage.spoken_summary() == expected


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        (TrialUsage(), "You haven't created any documents yet."),
        (
            TrialUsage(documents_created=2, last_active_days_ago=5),
            "You've created two documents but haven't sent any yet, and you were last in "
            "five days ago.",
        ),
        (
            TrialUsage(documents_created=1, documents_sent=1, documents_completed=1),
            "You've created one document and sent one, and it's been completed.",
        ),
        (
            TrialUsage(documents_created=120, documents_sent=42, trial_days_left=0),
            "You've created one hundred and twenty documents and sent forty-two, and today "
            "is the last day of your trial.",
        ),
        (
            TrialUsage(documents_created=3, trial_days_left=-2),
            "You've created three documents but haven't sent any yet, and your trial has ended.",
        ),
        (
            TrialUsage(trial_days_left=1, last_active_days_ago=9),
            "You haven't created any documents yet, and you have one day left in your trial.",
        ),
    ],
)
def test_spoken_summary_wording(usage: TrialUsage, expected: str) -> None:
    sentence = usage.spoken_summary()
    assert sentence == expected
    assert sentence.count(".") == 1 and sentence.endswith(".")


def test_trial_usage_rejects_negative_counts() -> None:
    with pytest.raises(ValueError):
        TrialUsage(documents_sent=-1)


# -- not found, bad input, credentials ----------------------------------------------------


async def test_unknown_user_is_not_found(client: AmplitudeClient, server: AmplitudeServer) -> None:
    with pytest.raises(NotFound) as info:
        await client.get_trial_usage("nobody@nowhere.example.com")
    assert not info.value.retryable
    assert not info.value.counts_for_breaker
    assert [e.path for e in server.journal] == ["/api/2/usersearch"]


async def test_only_an_exact_user_id_match_counts(
    client: AmplitudeClient, server: AmplitudeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A search that answers with somebody else must not read their usage to the caller.
    monkeypatch.setattr(server, "_find", lambda key: JANE)
    with pytest.raises(NotFound):
        await client.get_trial_usage("someone.else@acme.example.com")
    assert [e.path for e in server.journal] == ["/api/2/usersearch"]


async def test_blank_email_is_rejected_without_a_request(
    client: AmplitudeClient, server: AmplitudeServer
) -> None:
    with pytest.raises(InvalidRequest):
        await client.get_trial_usage("   ")
    assert server.journal == []


@pytest.mark.parametrize(
    "creds",
    [{"secret_key": "wrong-secret"}, {"api_key": "wrong-key"}],
    ids=["wrong-secret", "wrong-key"],
)
async def test_wrong_credentials(server: AmplitudeServer, creds: dict[str, str]) -> None:
    async with make_client(server, **creds) as bad:
        with pytest.raises(AuthenticationFailed) as info:
            await bad.get_trial_usage(JANE.email)
    assert not info.value.retryable
    assert info.value.counts_for_breaker
    assert server.journal[-1].status == 401


def test_constructor_requires_credentials() -> None:
    with pytest.raises(ValueError):
        AmplitudeClient("", SECRET_KEY)


# -- fault matrix -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "extra", "expected", "retryable"),
    [
        pytest.param(kind, extra, expected, retryable, id=kind.value)
        for kind, extra, expected, retryable in [
            (FaultKind.REFUSE, {}, ConnectionFailed, True),
            (FaultKind.SERVER_ERROR, {}, ServiceUnavailable, True),
            (FaultKind.SERVICE_UNAVAILABLE, {}, ServiceUnavailable, True),
            (FaultKind.RATE_LIMITED, {"retry_after": 1.5}, RateLimited, True),
            (FaultKind.HANG, {}, ServiceTimeout, True),
            (FaultKind.MALFORMED, {}, BadResponse, False),
            (FaultKind.UNAUTHORIZED, {}, AuthenticationFailed, False),
        ]
    ],
)
async def test_fault_matrix(
    client: AmplitudeClient,
    server: AmplitudeServer,
    kind: FaultKind,
    extra: dict[str, Any],
    expected: type[ServiceError],
    retryable: bool,
) -> None:
    # count=None: aiohttp silently retries an idempotent GET once on a dropped connection.
    server.inject("*", kind, count=None, **extra)
    with pytest.raises(ServiceError) as info:
        await client.get_trial_usage(JANE.email)
    exc = info.value
    assert type(exc) is expected
    assert exc.retryable is retryable
    assert exc.counts_for_breaker
    assert exc.service == "amplitude"
    assert JANE.email not in str(exc)
    if kind is FaultKind.RATE_LIMITED:
        assert isinstance(exc, RateLimited) and exc.retry_after == 1.5


@pytest.mark.parametrize("endpoint", ["/api/2/usersearch", "/api/2/useractivity"])
async def test_malformed_body_on_each_endpoint(
    client: AmplitudeClient, server: AmplitudeServer, endpoint: str
) -> None:
    server.inject(endpoint, FaultKind.MALFORMED, count=1)
    with pytest.raises(BadResponse) as info:
        await client.get_trial_usage(JANE.email)
    assert not info.value.retryable
    # The next call is unaffected: the fault was for one request only.
    assert (await client.get_trial_usage(JANE.email)).documents_sent == JANE.documents_sent


async def test_unparseable_json_is_bad_response(
    client: AmplitudeClient, server: AmplitudeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The base sandbox's truncated JSON instead of our wrong-shape JSON.
    monkeypatch.setattr(server, "malformed_body", lambda r: SandboxServer.malformed_body(server, r))
    server.inject("*", FaultKind.MALFORMED, count=1)
    with pytest.raises(BadResponse):
        await client.get_trial_usage(JANE.email)


async def test_slow_under_timeout_succeeds(
    client: AmplitudeClient, server: AmplitudeServer
) -> None:
    server.inject("*", FaultKind.SLOW, delay_ms=50)
    usage = await client.get_trial_usage(JANE.email)
    assert usage.documents_created == JANE.documents_created
    assert [e.fault for e in server.journal] == ["slow", "slow"]


async def test_flapping_alternates(client: AmplitudeClient, server: AmplitudeServer) -> None:
    server.inject("/api/2/useractivity", FaultKind.FLAPPING, every=2)
    outcomes = await flapping_outcomes(lambda: client.get_trial_usage(JANE.email))
    assert outcomes == ["ok", "fail", "ok", "fail"]


async def test_server_down_then_up(client: AmplitudeClient, server: AmplitudeServer) -> None:
    usage = await down_then_up(server, lambda: client.get_trial_usage(JANE.email))
    assert usage.templates_created == JANE.templates_created


# -- what went over the wire, what was logged ---------------------------------------------


async def test_journal_shows_requests_with_redacted_auth(
    client: AmplitudeClient, server: AmplitudeServer
) -> None:
    await client.get_trial_usage(JANE.email)

    search, activity = server.journal
    assert (search.method, search.path, search.query) == (
        "GET",
        "/api/2/usersearch",
        {"user": JANE.email},
    )
    assert (activity.method, activity.path) == ("GET", "/api/2/useractivity")
    assert activity.query == {"user": str(JANE.amplitude_id), "offset": "0", "limit": "1000"}
    for entry in (search, activity):
        assert entry.headers["Authorization"] == "<redacted>"
        assert entry.status == 200


async def test_sandbox_sends_basic_auth_shapes(server: AmplitudeServer) -> None:
    """The sandbox itself: useractivity takes the Amplitude id, events newest first."""
    import aiohttp

    token = base64.b64encode(f"{API_KEY}:{SECRET_KEY}".encode()).decode()
    async with aiohttp.ClientSession(headers={"Authorization": f"Basic {token}"}) as http:
        url = f"{server.base_url}/api/2/useractivity"
        async with http.get(url, params={"user": str(JANE.amplitude_id), "limit": "5"}) as resp:
            body = await resp.json()
        async with http.get(url) as missing:
            assert missing.status == 400
        async with http.get(url, params={"user": "999"}) as unknown:
            assert unknown.status == 400
    assert resp.status == 200
    assert len(body["events"]) == 5
    times = [e["event_time"] for e in body["events"]]
    assert times == sorted(times, reverse=True)
    newest = datetime.strptime(times[0], "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC)
    assert NOW - newest < timedelta(days=1)
    assert body["userData"]["properties"]["trial_end_date"] == "2025-03-19"


async def test_logs_hold_no_secrets_or_emails(
    server: AmplitudeServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with make_client(server) as good:
        for user in TRIAL_USERS:
            await good.get_trial_usage(user.email)
        with pytest.raises(NotFound):
            await good.get_trial_usage("ghost@nowhere.example.com")
        server.inject("*", FaultKind.SERVICE_UNAVAILABLE, count=1)
        with pytest.raises(ServiceUnavailable):
            await good.get_trial_usage(JANE.email)
    async with make_client(server, secret_key="wrong-secret") as bad:
        with pytest.raises(AuthenticationFailed):
            await bad.get_trial_usage(JANE.email)

    text = caplog.text
    assert "amplitude GET /api/2/usersearch -> 200" in text  # logging did happen
    token = base64.b64encode(f"{API_KEY}:{SECRET_KEY}".encode()).decode()
    for secret in (API_KEY, SECRET_KEY, "wrong-secret", token):
        assert secret not in text
    assert EMAIL_RE.search(text) is None
