"""ChiliPiperClient against the real ChiliPiperServer sandbox on 127.0.0.1: the two-step
booking (init-simple, schedule-simple), route renewal, reconciliation after an unknown
outcome, form fields, the sandbox's strict contract and the fault matrix."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from src.errors import (
    AuthenticationFailed,
    BadResponse,
    ConnectionFailed,
    InvalidRequest,
    RateLimited,
    ServiceError,
    ServiceTimeout,
    ServiceUnavailable,
)
from src.sandbox.base import FaultKind
from src.sandbox.chilipiper import (
    CONCIERGE_ROUTER,
    LINK_ID,
    SANDBOX_ENV,
    ChiliPiperServer,
    parse_duration,
)
from src.sandbox.data import TRIAL_USERS
from src.services.chilipiper import (
    CONCIERGE_INIT_PATH,
    INIT_PATH,
    MEETINGS_PATH,
    BookingSession,
    ChiliPiperClient,
    FormIncomplete,
    Guest,
    SchedulingLink,
    SlotUnavailable,
    business_window,
    spoken_time,
)
from src.services.http import HttpOptions
from src.services.wiring import TrialistServices
from src.settings import SettingsError, settings_from_env
from tests.fault_helpers import down_then_up

API_KEY = SANDBOX_ENV["CHILIPIPER_API_KEY"]
SLUG = SANDBOX_ENV["CHILIPIPER_SCHEDULING_LINK"]
FAST = HttpOptions(timeout=1.0, connect_timeout=1.0)
MONDAY = datetime(2030, 1, 7, 12, tzinfo=UTC)
JANE = Guest(TRIAL_USERS[0].email, "America/New_York", "Jane Doe", "Acme Corp")
SCHEDULES = "*/schedule-simple"


@pytest.fixture
async def server() -> AsyncIterator[ChiliPiperServer]:
    srv = ChiliPiperServer()
    await srv.start()
    yield srv
    await srv.stop()


def make_client(
    server: ChiliPiperServer, api_key: str = API_KEY, link: str = SLUG
) -> ChiliPiperClient:
    return ChiliPiperClient(
        api_key, SchedulingLink.parse(link), server.base_url, options=FAST, now=lambda: MONDAY
    )


@pytest.fixture
async def client(server: ChiliPiperServer) -> AsyncIterator[ChiliPiperClient]:
    async with make_client(server) as c:
        yield c


async def opened(client: ChiliPiperClient) -> BookingSession:
    return await client.open_session(JANE, MONDAY)


def schedules(server: ChiliPiperServer) -> list[Any]:
    return server.requests(SCHEDULES, "POST")


# -- step 1: the booking session ----------------------------------------------------------------


async def test_open_session(client: ChiliPiperClient, server: ChiliPiperServer) -> None:
    session = await opened(client)

    # Monday noon UTC: the rest of Monday plus three business days, at 15/17/19 UTC.
    assert len(session.start_times) == 12
    assert session.start_times[0] == datetime(2030, 1, 7, 15, tzinfo=UTC)
    assert session.start_times[-1] == datetime(2030, 1, 10, 19, tzinfo=UTC)
    assert session.route_id in server.routes
    assert [f.requirement for f in session.form_fields] == ["Required", "Optional", "Hidden"]
    [sent] = server.requests(INIT_PATH, "POST")
    assert sent.headers["Authorization"] == "<redacted>"  # journal hides it; auth passed
    assert sent.body["link"] == {"slug": SLUG}
    assert sent.body["guestEmail"] == JANE.email and sent.body["guestTimezone"] == JANE.timezone
    assert sent.body["interval"]["startsAt"] == "2030-01-07T12:00:00Z"
    assert [s.slot_id for s in session.slots(2)] == ["slot-20300107T1500Z", "slot-20300107T1700Z"]


async def test_link_by_id_and_unknown_link(server: ChiliPiperServer) -> None:
    async with make_client(server, link=LINK_ID.upper()) as by_id:
        assert (await opened(by_id)).start_times
    assert server.requests(INIT_PATH)[-1].body["link"] == {"id": LINK_ID}
    async with make_client(server, link="no-such-link") as unknown:
        with pytest.raises(InvalidRequest):  # a configuration gap, not retried
            await opened(unknown)


@pytest.mark.parametrize("api_key", ["wrong-key", f"Bearer {API_KEY}"])
async def test_wrong_api_key_fails_authentication(server: ChiliPiperServer, api_key: str) -> None:
    async with make_client(server, api_key) as bad:
        with pytest.raises(AuthenticationFailed):
            await opened(bad)


def test_business_window() -> None:
    friday = datetime(2030, 1, 11, 16, tzinfo=UTC)
    start, span = business_window(friday)
    assert start == friday and start + span == datetime(2030, 1, 17, tzinfo=UTC)  # Mon-Wed
    assert business_window(friday, 10)[1] == timedelta(days=7)  # never past the API's limit


# -- step 2: booking -----------------------------------------------------------------------------


async def test_book_succeeds(client: ChiliPiperClient, server: ChiliPiperServer) -> None:
    session = await opened(client)
    slot = session.slots()[1]

    meeting = await client.book(session, slot, JANE)

    [made] = server.meetings
    assert meeting.meeting_id == made.meeting_id and made.start_time == slot.starts_at
    assert meeting.slot_id == slot.slot_id
    assert made.form_data == {"email": JANE.email, "company": "Acme Corp", "source": "voice-agent"}
    [sent] = schedules(server)
    assert sent.path.endswith(f"/routing/{session.route_id}/schedule-simple")
    assert sent.body["startTime"] == "2030-01-07T17:00:00Z"
    assert server.requests(MEETINGS_PATH) == []  # nothing in doubt: no lookup


async def test_slot_taken_gives_fresh_options(
    client: ChiliPiperClient, server: ChiliPiperServer
) -> None:
    session = await opened(client)
    slot = session.slots()[0]
    server.take(slot.starts_at)

    with pytest.raises(SlotUnavailable) as info:
        await client.book(session, slot, JANE)

    fresh = info.value.fresh
    assert fresh is not None and fresh.route_id != session.route_id
    assert slot.starts_at not in fresh.start_times and len(fresh.start_times) == 11
    assert len(server.meetings) == 1  # only the other person's
    assert [e.status for e in schedules(server)] == [200]  # Failure{reason}, then no retry


async def test_expired_route_is_renewed_transparently(
    client: ChiliPiperClient, server: ChiliPiperServer
) -> None:
    session = await opened(client)
    server.expire_routes()

    meeting = await client.book(session, session.slots()[0], JANE)

    assert len(server.meetings) == 1 and server.meetings[0].meeting_id == meeting.meeting_id
    routes = [e.path.split("/")[-2] for e in schedules(server)]
    assert routes[0] == session.route_id and routes[1] != session.route_id
    assert len(server.requests(INIT_PATH)) == 2


async def test_route_ttl_on_the_sandbox_clock(
    client: ChiliPiperClient, server: ChiliPiperServer
) -> None:
    now = [0.0]
    server.clock = lambda: now[0]
    session = await opened(client)
    now[0] = server.route_ttl + 1
    assert await client.book(session, session.slots()[0], JANE)
    assert len(server.requests(INIT_PATH)) == 2 and len(server.meetings) == 1


async def test_unknown_route_is_renewed(client: ChiliPiperClient, server: ChiliPiperServer) -> None:
    session = await opened(client)
    server.routes.clear()  # e.g. the route was dropped on the vendor's side: 404
    await client.book(session, session.slots()[0], JANE)
    assert [e.status for e in schedules(server)] == [404, 200]
    assert len(server.meetings) == 1


async def test_a_used_route_is_never_reused(
    client: ChiliPiperClient, server: ChiliPiperServer
) -> None:
    session = await opened(client)
    await client.book(session, session.slots()[0], JANE)
    other = Guest("sam.lee@example.com", "Europe/Paris")
    await client.book(session, session.slots()[1], other)
    routes = [e.path.split("/")[-2] for e in schedules(server)]
    assert len(routes) == 2 and routes[0] != routes[1]
    assert len(server.meetings) == 2


async def test_concurrent_and_repeated_bookings_make_one_meeting(
    client: ChiliPiperClient, server: ChiliPiperServer
) -> None:
    session = await opened(client)
    slot = session.slots()[0]
    first, second = await asyncio.gather(
        client.book(session, slot, JANE), client.book(session, slot, JANE)
    )
    again = await client.book(session, slot, JANE)
    assert first == second == again
    assert len(server.meetings) == 1 and len(schedules(server)) == 1


async def test_vendor_route_id_is_validated_before_it_enters_a_path(
    client: ChiliPiperClient, server: ChiliPiperServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("src.sandbox.chilipiper.uuid.uuid4", lambda: "../../v1/org/other")
    with pytest.raises(BadResponse):
        await opened(client)


@pytest.mark.parametrize("applied", [True, False], ids=["applied", "not-applied"])
async def test_timeout_after_schedule_is_reconciled_to_one_meeting(
    client: ChiliPiperClient, server: ChiliPiperServer, applied: bool
) -> None:
    session = await opened(client)
    slot = session.slots()[0]
    server.lose_next_schedule(applied=applied)

    with pytest.raises(ServiceTimeout):
        await client.book(session, slot, JANE)
    meeting = await client.book(session, slot, JANE)  # what the retry policy does next

    assert len(server.meetings) == 1
    assert server.meetings[0].meeting_id == meeting.meeting_id
    assert len(server.requests(MEETINGS_PATH, "PUT")) == 1  # looked up before any resend
    assert len(schedules(server)) == (1 if applied else 2)
    query = server.requests(MEETINGS_PATH)[0].body
    assert query["guestEmail"] == JANE.email and query["start"] == "2030-01-07T15:00:00Z"


async def test_failed_lookup_never_resends(
    client: ChiliPiperClient, server: ChiliPiperServer
) -> None:
    session = await opened(client)
    slot = session.slots()[0]
    server.lose_next_schedule(applied=True)
    with pytest.raises(ServiceTimeout):
        await client.book(session, slot, JANE)
    server.clear()
    server.inject(MEETINGS_PATH, FaultKind.SERVICE_UNAVAILABLE, count=1)

    with pytest.raises(ServiceUnavailable):
        await client.book(session, slot, JANE)
    assert len(schedules(server)) == 1  # not re-sent while the outcome is unknown
    await client.book(session, slot, JANE)
    assert len(schedules(server)) == 1 and len(server.meetings) == 1


@pytest.mark.parametrize(
    ("kind", "lookups"),
    [(FaultKind.UNAUTHORIZED, 0), (FaultKind.SERVICE_UNAVAILABLE, 0), (FaultKind.SERVER_ERROR, 1)],
)
async def test_only_ambiguous_failures_are_looked_up(
    client: ChiliPiperClient, server: ChiliPiperServer, kind: FaultKind, lookups: int
) -> None:
    session = await opened(client)
    server.inject(SCHEDULES, kind, count=1)
    with pytest.raises(ServiceError):
        await client.book(session, session.slots()[0], JANE)
    await client.book(session, session.slots()[0], JANE)
    assert len(server.requests(MEETINGS_PATH)) == lookups
    assert len(server.meetings) == 1


async def test_required_field_unknown_sends_nothing(
    client: ChiliPiperClient, server: ChiliPiperServer
) -> None:
    server.form_fields.append({"reference": "phone", "requirement": "Required"})
    session = await opened(client)
    with pytest.raises(FormIncomplete):
        await client.book(session, session.slots()[0], JANE)
    assert schedules(server) == [] and server.meetings == []


async def test_required_name_and_company_are_filled(
    client: ChiliPiperClient, server: ChiliPiperServer
) -> None:
    server.form_fields = [
        {"reference": "First Name", "requirement": "Required"},
        {"reference": "last_name", "requirement": "Required"},
        {"reference": "Company", "requirement": "Required"},
    ]
    session = await opened(client)
    await client.book(session, session.slots()[0], JANE)
    assert server.meetings[0].form_data == {
        "First Name": "Jane",
        "last_name": "Doe",
        "Company": "Acme Corp",
    }


# -- Concierge router instead of a scheduling link --------------------------------------------


@pytest.fixture
async def concierge(server: ChiliPiperServer) -> AsyncIterator[ChiliPiperClient]:
    link = SchedulingLink.concierge(CONCIERGE_ROUTER)
    async with ChiliPiperClient(
        API_KEY, link, server.base_url, options=FAST, now=lambda: MONDAY
    ) as c:
        yield c


async def test_concierge_books_renews_and_reconciles(
    concierge: ChiliPiperClient, server: ChiliPiperServer
) -> None:
    session = await opened(concierge)
    [sent] = server.requests(CONCIERGE_INIT_PATH.format(router=CONCIERGE_ROUTER))
    assert sent.body["form"] == {
        "PersonEmail": JANE.email,
        "PersonFirstName": "Jane",
        "PersonLastName": "Doe",
        "CompanyName": "Acme Corp",
    }
    assert sent.body["options"]["guestTimezone"] == JANE.timezone
    assert len(session.start_times) == 12 and session.form_fields == ()

    server.expire_routes()
    server.lose_next_schedule(applied=False)
    with pytest.raises(ServiceTimeout):
        await concierge.book(session, session.slots()[0], JANE)
    meeting = await concierge.book(session, session.slots()[0], JANE)

    assert [m.meeting_id for m in server.meetings] == [meeting.meeting_id]
    assert all("/concierge/routing/" in e.path for e in schedules(server))
    assert len(server.requests(MEETINGS_PATH)) == 1


async def test_concierge_unknown_router_and_booking_link(server: ChiliPiperServer) -> None:
    async with ChiliPiperClient(
        API_KEY, SchedulingLink.concierge("no-such-router"), server.base_url, options=FAST
    ) as unknown:
        with pytest.raises(InvalidRequest):
            await opened(unknown)
    path = CONCIERGE_INIT_PATH.format(router=CONCIERGE_ROUTER)
    no_window = {"form": {"PersonEmail": "a@example.com"}, "options": {"guestTimezone": "UTC"}}
    status, _, text = await _raw(server, "POST", path, no_window)
    assert status == 200 and server.booking_url in text  # without a window: a link


# -- the sandbox's contract ----------------------------------------------------------------------


async def _raw(
    server: ChiliPiperServer, method: str, path: str, body: Any, auth: str = f"Bearer {API_KEY}"
) -> tuple[int, str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.request(
            method, server.base_url + path, json=body, headers={"Authorization": auth}
        ) as resp,
    ):
        text = await resp.text()
        return resp.status, resp.content_type, text


def _init_body(**changes: Any) -> dict[str, Any]:
    body = {
        "link": {"slug": SLUG},
        "guestEmail": "a@example.com",
        "guestTimezone": "Europe/Paris",
        "interval": {"startsAt": "2030-01-07T00:00:00Z", "duration": "P2D"},
        "outputs": ["StartTimes"],
    }
    return body | changes


@pytest.mark.parametrize(
    "changes",
    [
        {"link": "pandadoc-demo"},
        {"link": {"id": "pandadoc-demo"}},
        {"link": {"id": "3f2a9c1e-0000-4000-8000-00000000000g"}},
        {"guestEmail": "nobody"},
        {"guestTimezone": "Mars/Base"},
        {"guestTimezone": "x" * 5000},  # longer than a file name: ZoneInfo raises OSError
        {"interval": {"startsAt": "2030-01-07T00:00:00Z", "duration": "P8D"}},
        {"interval": {"startsAt": "2030-01-07T00:00:00", "duration": "P1D"}},
        {"outputs": []},
    ],
)
async def test_sandbox_rejects_malformed_init_as_plain_text(
    server: ChiliPiperServer, changes: dict[str, Any]
) -> None:
    status, kind, text = await _raw(server, "POST", INIT_PATH, _init_body(**changes))
    assert (status, kind) == (400, "text/plain") and text.startswith("Invalid value for: body")


async def test_sandbox_error_envelope_and_contract(server: ChiliPiperServer) -> None:
    status, _, text = await _raw(server, "POST", INIT_PATH, _init_body(), auth=API_KEY)
    assert status == 401 and '"errorCode"' in text and '"arguments"' in text
    status, _, text = await _raw(server, "POST", INIT_PATH, _init_body(link={"slug": "other"}))
    assert status == 404 and "SchedulingLinkNotFound" in text
    status, _, text = await _raw(server, "POST", INIT_PATH, _init_body())
    assert status == 200
    route = next(iter(server.routes))
    path = f"/v1/org/schedulingLinks/routing/{route}/schedule-simple"
    book = {
        "startTime": "2030-01-07T15:00:00Z",
        "guestEmail": "a@example.com",
        "guestTimezone": "Europe/Paris",
        "formData": {"email": "a@example.com", "source": "voice-agent"},
    }
    bad_hidden = book | {"formData": {"email": "a@example.com", "source": "other"}}
    assert (await _raw(server, "POST", path, bad_hidden))[0] == 400
    assert '"Success"' in (await _raw(server, "POST", path, book))[2]
    assert "RouteExpired" in (await _raw(server, "POST", path, book))[2]  # single-use
    week = {"start": "2030-01-07T00:00:00Z", "end": "2030-01-15T00:00:00Z"}
    assert (await _raw(server, "PUT", MEETINGS_PATH, week))[0] == 400  # over 7 days
    listed = await _raw(server, "PUT", MEETINGS_PATH, week | {"end": "2030-01-08T00:00:00Z"})
    assert listed[0] == 200 and '"hasMore": "No"' in listed[2]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("P7D", timedelta(days=7)), ("PT1H30M", timedelta(minutes=90)), ("2 days", timedelta(2))],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


# -- faults ----------------------------------------------------------------------------------

FAULTS = [
    pytest.param(FaultKind.REFUSE, {}, ConnectionFailed, id="refuse"),
    pytest.param(FaultKind.SERVICE_UNAVAILABLE, {}, ServiceUnavailable, id="503"),
    pytest.param(FaultKind.RATE_LIMITED, {"retry_after": 4}, RateLimited, id="429"),
    pytest.param(FaultKind.HANG, {}, ServiceTimeout, id="hang"),
    pytest.param(FaultKind.MALFORMED, {}, BadResponse, id="malformed"),
    pytest.param(FaultKind.UNAUTHORIZED, {}, AuthenticationFailed, id="401"),
]


@pytest.mark.parametrize(("kind", "params", "expected"), FAULTS)
async def test_fault_matrix_on_both_steps(
    client: ChiliPiperClient,
    server: ChiliPiperServer,
    kind: FaultKind,
    params: dict[str, Any],
    expected: type[ServiceError],
) -> None:
    session = await opened(client)
    server.inject("*", kind, **params)
    with pytest.raises(expected):
        await opened(client)
    with pytest.raises(expected) as info:
        await client.book(session, session.slots()[0], JANE)
    if kind is FaultKind.RATE_LIMITED:
        assert isinstance(info.value, RateLimited) and info.value.retry_after == 4.0
    server.clear()
    await client.book(session, session.slots()[0], JANE)
    assert len(server.meetings) == 1


async def test_service_down_then_back(client: ChiliPiperClient, server: ChiliPiperServer) -> None:
    assert (await down_then_up(server, lambda: opened(client))).start_times


# -- configuration, logs, speech -------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("pandadoc-demo", SchedulingLink(slug="pandadoc-demo")),
        (LINK_ID.upper(), SchedulingLink(id=LINK_ID)),
    ],
)
def test_scheduling_link_parse(value: str, expected: SchedulingLink) -> None:
    assert SchedulingLink.parse(value) == expected


@pytest.mark.parametrize(
    "value",
    ["3f2b6c1e-8d4a-4e5f-9a0b-1c2d3e4f5a6", "3f2b6c1e-8d4a-4e5f-9a0b-1c2d3e4f5a6bz", "Demo!"],
)
def test_malformed_link_stops_startup_naming_the_variable_not_the_value(value: str) -> None:
    env = {"CHILIPIPER_API_KEY": "k", "CHILIPIPER_SCHEDULING_LINK": value}
    with pytest.raises(SettingsError) as info:
        settings_from_env(env)
    assert "CHILIPIPER_SCHEDULING_LINK" in str(info.value) and value not in str(info.value)


async def test_settings_concierge_router() -> None:
    env = {"CHILIPIPER_API_KEY": "k", "CHILIPIPER_CONCIERGE_ROUTER": CONCIERGE_ROUTER}
    cp = settings_from_env(env).chilipiper
    assert cp.configured and cp.concierge_router == CONCIERGE_ROUTER and not cp.scheduling_link
    services = TrialistServices.from_settings(settings_from_env(env))
    assert services.chilipiper is not None
    assert services.chilipiper.link == SchedulingLink(router=CONCIERGE_ROUTER)
    with pytest.raises(SettingsError, match="not both"):
        settings_from_env(env | {"CHILIPIPER_SCHEDULING_LINK": SLUG})
    with pytest.raises(SettingsError) as info:
        settings_from_env(env | {"CHILIPIPER_CONCIERGE_ROUTER": "Inbound Demo"})
    assert "CHILIPIPER_CONCIERGE_ROUTER" in str(info.value) and "Inbound" not in str(info.value)


def test_settings_need_a_link_with_a_key_and_validate_the_booking_url() -> None:
    with pytest.raises(SettingsError, match="CHILIPIPER_SCHEDULING_LINK"):
        settings_from_env({"CHILIPIPER_API_KEY": "k"})
    with pytest.raises(SettingsError, match="CHILIPIPER_BOOKING_URL"):
        settings_from_env(
            {
                "CHILIPIPER_API_KEY": "k",
                "CHILIPIPER_SCHEDULING_LINK": "x",
                "CHILIPIPER_BOOKING_URL": "x",
            }
        )
    cp = settings_from_env(
        {"CHILIPIPER_API_KEY": "k", "CHILIPIPER_SCHEDULING_LINK": LINK_ID}
    ).chilipiper
    assert cp.configured and cp.scheduling_link == LINK_ID and cp.booking_url == ""


async def test_logs_carry_no_key_or_email(
    server: ChiliPiperServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with make_client(server) as cp:
        session = await opened(cp)
        server.lose_next_schedule(applied=True)
        with pytest.raises(ServiceTimeout):
            await cp.book(session, session.slots()[0], JANE)
        await cp.book(session, session.slots()[0], JANE)
    text = caplog.text + "\n".join(r.getMessage() for r in caplog.records)
    assert "found on reconciliation" in text
    for secret in (API_KEY, JANE.email, "jane.doe"):
        assert secret not in text


def test_spoken_time() -> None:
    tz = ZoneInfo("America/New_York")
    assert spoken_time(datetime(2030, 1, 8, 20, 30, tzinfo=UTC), tz) == "Tuesday at 3:30 PM"
    assert spoken_time(datetime(2030, 1, 8, 3, tzinfo=UTC), tz) == "Monday at 10 PM"
