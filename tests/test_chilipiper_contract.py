"""ChiliPiper against its documented shapes (``reference/apis/chilipiper-booking.md``,
``chilipiper-meetings.openapi.yml``): the meeting list ``{"data": {"list": [...]},
"hasMore": "Yes"|"No"}`` read page by page with guest and start checked on every meeting,
Concierge start times as objects, the router's own form fields, and a sandbox that never
answers the old shapes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from src.errors import BadResponse, ConnectionFailed
from src.sandbox.chilipiper import CONCIERGE_ROUTER, SANDBOX_ENV, ChiliPiperServer
from src.sandbox.data import TRIAL_USERS
from src.services.chilipiper import (
    CONCIERGE_INIT_PATH,
    MEETINGS_PATH,
    ChiliPiperClient,
    Guest,
    SchedulingLink,
)
from src.services.chilipiper_wire import (
    DEFAULT_CONCIERGE_FIELDS,
    MEETING_LOOKUP_PAGES,
    MEETINGS_PAGE_SIZE,
    concierge_fields,
    meeting_page,
    parse_session,
)
from src.services.http import HttpOptions
from src.settings import SettingsError, settings_from_env

API_KEY = SANDBOX_ENV["CHILIPIPER_API_KEY"]
SLUG = SANDBOX_ENV["CHILIPIPER_SCHEDULING_LINK"]
FAST = HttpOptions(timeout=1.0, connect_timeout=1.0)
MONDAY = datetime(2030, 1, 7, 12, tzinfo=UTC)
AT = datetime(2030, 1, 7, 15, tzinfo=UTC)
JANE = Guest(TRIAL_USERS[0].email, "America/New_York", "Jane Doe", "Acme Corp")


def documented(meetings: list[dict[str, Any]], more: str = "No") -> dict[str, Any]:
    return {"data": {"list": meetings}, "hasMore": more, "hasMoreItems": more == "Yes"}


def item(meeting_id: str, start: str, email: str) -> dict[str, Any]:
    return {
        "meetingId": meeting_id,
        "dateTime": {"start": start, "end": "2030-01-07T15:30:00Z"},
        "primaryGuest": {"value": email},
    }


@pytest.fixture
async def server() -> AsyncIterator[ChiliPiperServer]:
    srv = ChiliPiperServer()
    await srv.start()
    yield srv
    await srv.stop()


@pytest.fixture
async def client(server: ChiliPiperServer) -> AsyncIterator[ChiliPiperClient]:
    link = SchedulingLink.parse(SLUG)
    async with ChiliPiperClient(
        API_KEY, link, server.base_url, options=FAST, now=lambda: MONDAY
    ) as c:
        yield c


# -- the documented meeting list ------------------------------------------------------------


def test_a_documented_page_is_read() -> None:
    meetings, more = meeting_page(
        documented([item("m-1", "2030-01-07T10:00:00-05:00", "Jane@Example.com")], "Yes")
    )
    assert more is True
    [m] = meetings
    assert (m.meeting_id, m.starts_at, m.guest_email) == ("m-1", AT, "Jane@Example.com")
    assert m.is_for("jane@example.com", AT) and not m.is_for("jane@example.com", MONDAY)
    assert meeting_page(documented([]))[1] is False


@pytest.mark.parametrize(
    "answer",
    [
        {"data": [item("m-1", "2030-01-07T15:00:00Z", "a@b.co")], "hasMore": "No"},  # old shape
        {"results": [item("m-1", "2030-01-07T15:00:00Z", "a@b.co")]},
        documented([item("m-1", "2030-01-07T15:00:00Z", "a@b.co")], more="maybe"),
        {"data": {"list": []}},  # no hasMore
        documented([{"meetingId": "m-1", "startTime": "2030-01-07T15:00:00Z"}]),
        documented([{**item("m-1", "2030-01-07T15:00:00Z", "a@b.co"), "primaryGuest": {}}]),
        documented([{**item("m-1", "2030-01-07T15:00:00", "a@b.co")}]),  # no zone
        documented([item("../other", "2030-01-07T15:00:00Z", "a@b.co")]),
        [item("m-1", "2030-01-07T15:00:00Z", "a@b.co")],
    ],
)
def test_anything_else_is_a_bad_response_never_not_booked(answer: Any) -> None:
    with pytest.raises(BadResponse):
        meeting_page(answer)


async def test_lookup_follows_has_more_and_checks_guest_and_start_itself(
    client: ChiliPiperClient, server: ChiliPiperServer
) -> None:
    server.guest_filter = False  # a coarse server-side filter: others' meetings come back
    for n in range(MEETINGS_PAGE_SIZE + 3):
        server.take(AT, f"someone{n}@example.com")
    server.take(AT + timedelta(seconds=30), JANE.email)  # Jane, in the window, another time
    mine = server.take(AT, JANE.email.upper())  # on the second page

    assert await client.find_meeting(JANE.email, AT) == mine.meeting_id
    pages = server.requests(MEETINGS_PATH, "PUT")
    assert [p.body["page"] for p in pages] == [0, 1]
    assert all(p.body["pageSize"] == MEETINGS_PAGE_SIZE for p in pages)
    assert pages[0].body["guestEmail"] == JANE.email


async def test_lookup_reads_every_page_before_concluding_none(
    client: ChiliPiperClient, server: ChiliPiperServer
) -> None:
    server.guest_filter = False
    for n in range(MEETINGS_PAGE_SIZE + 1):
        server.take(AT, f"someone{n}@example.com")
    assert await client.find_meeting(JANE.email, AT) is None
    assert len(server.requests(MEETINGS_PATH)) == 2


async def test_a_list_that_does_not_end_leaves_the_outcome_unknown(
    client: ChiliPiperClient, server: ChiliPiperServer
) -> None:
    server.guest_filter = False
    for n in range(MEETINGS_PAGE_SIZE * MEETING_LOOKUP_PAGES + 1):
        server.take(AT, f"someone{n}@example.com")
    with pytest.raises(BadResponse):
        await client.find_meeting(JANE.email, AT)
    assert len(server.requests(MEETINGS_PATH)) == MEETING_LOOKUP_PAGES


async def test_an_answer_lost_after_booking_is_found_by_the_documented_lookup(
    client: ChiliPiperClient, server: ChiliPiperServer
) -> None:
    session = await client.open_session(JANE, MONDAY)
    slot = session.slots()[0]
    server.drop_next_answer()
    with pytest.raises(ConnectionFailed):
        await client.book(session, slot, JANE)
    meeting = await client.book(session, slot, JANE)  # what the retry policy does next
    assert [m.meeting_id for m in server.meetings] == [meeting.meeting_id]
    assert len(server.requests("*/schedule-simple")) == 1
    assert len(server.requests(MEETINGS_PATH)) == 1


# -- Concierge: start times as objects, the router's own form fields ------------------------


def test_start_times_may_be_instants_or_objects() -> None:
    session = parse_session(
        {
            "routingId": "r-1",
            "startTimes": [
                "2030-01-07T15:00:00Z",
                {"startTime": "2030-01-07T17:00:00+01:00", "attendees": ["u-1"]},
            ],
        }
    )
    assert session.start_times == (AT, AT + timedelta(hours=1))
    for bad in ({"attendees": []}, {"startTime": "soon"}, {"startTime": "2030-01-07T15:00:00"}):
        with pytest.raises(BadResponse):
            parse_session({"routingId": "r-1", "startTimes": [bad]})


async def test_concierge_sends_the_configured_fields_and_reads_object_times(
    server: ChiliPiperServer,
) -> None:
    server.router_form = ("PersonEmail", "FullName", "Org")
    fields = concierge_fields("email=PersonEmail, name=FullName, company=Org")
    link = SchedulingLink.concierge(CONCIERGE_ROUTER)
    async with ChiliPiperClient(
        API_KEY, link, server.base_url, options=FAST, concierge_fields=fields
    ) as c:
        session = await c.open_session(JANE, MONDAY)
        meeting = await c.book(session, session.slots()[0], JANE)
    [sent] = server.requests(CONCIERGE_INIT_PATH.format(router=CONCIERGE_ROUTER))
    assert sent.body["form"] == {
        "PersonEmail": JANE.email,
        "FullName": "Jane Doe",
        "Org": "Acme Corp",
    }
    assert session.start_times and all(t.tzinfo is UTC for t in session.start_times)
    assert [m.meeting_id for m in server.meetings] == [meeting.meeting_id]


async def test_the_sandbox_router_refuses_the_old_form_keys(server: ChiliPiperServer) -> None:
    path = CONCIERGE_INIT_PATH.format(router=CONCIERGE_ROUTER)
    options = {"guestTimezone": "UTC"}
    for form in ({"email": "a@example.com"}, {"PersonEmail": "a@example.com", "name": "A"}):
        status, _ = await raw(server, "POST", path, {"form": form, "options": options})
        assert status == 400


def test_concierge_fields_setting() -> None:
    defaults = settings_from_env({}).chilipiper.concierge_fields
    assert defaults == DEFAULT_CONCIERGE_FIELDS and ("email", "PersonEmail") in defaults
    custom = settings_from_env({"CHILIPIPER_CONCIERGE_FIELDS": "email=PersonEmail,name=Name"})
    assert custom.chilipiper.concierge_fields == (("email", "PersonEmail"), ("name", "Name"))


@pytest.mark.parametrize(
    "value",
    [
        "email=Email",  # PersonEmail is required by every router
        "name=FullName",
        "email=PersonEmail,phone=Phone",
        "email=PersonEmail,name",
        "email=PersonEmail,name=Full Name",
        "email=PersonEmail,name=A,name=B",
        "email=PersonEmail,name=PersonEmail",
    ],
)
def test_a_bad_concierge_fields_setting_stops_start_in_one_line(value: str) -> None:
    with pytest.raises(SettingsError, match="CHILIPIPER_CONCIERGE_FIELDS") as caught:
        settings_from_env({"CHILIPIPER_CONCIERGE_FIELDS": value})
    assert "\n" not in str(caught.value)


# -- the sandbox answers the documented shape only ---------------------------------------------


async def raw(server: ChiliPiperServer, method: str, path: str, body: Any) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, server.base_url + path, json=body, headers=headers) as resp,
    ):
        text = await resp.text()
        try:
            return resp.status, json.loads(text)
        except ValueError:
            return resp.status, text


@pytest.mark.parametrize(("meetings", "page_size"), [(0, 10), (3, 10), (25, 10), (7, 3), (5, 5)])
async def test_the_sandbox_meeting_list_is_only_ever_the_documented_shape(
    server: ChiliPiperServer, meetings: int, page_size: int
) -> None:
    for n in range(meetings):
        server.take(AT + timedelta(hours=n), f"guest{n}@example.com")
    query = {"start": "2030-01-07T00:00:00Z", "end": "2030-01-14T00:00:00Z"}
    seen: list[str] = []
    for page in range(meetings // page_size + 2):
        status, answer = await raw(
            server, "PUT", MEETINGS_PATH, query | {"page": page, "pageSize": page_size}
        )
        assert status == 200
        assert set(answer) == {"data", "hasMore", "hasMoreItems"}
        assert set(answer["data"]) == {"list"} and answer["hasMore"] in ("Yes", "No")
        for m in answer["data"]["list"]:
            assert {"startTime", "attendees", "id"}.isdisjoint(m)  # the old item shape
            assert set(m["dateTime"]) == {"start", "end"} and "@" in m["primaryGuest"]["value"]
        listed, more = meeting_page(answer)  # the client reads every page
        seen += [m.meeting_id for m in listed]
        assert more == (len(seen) < meetings)
        if not more:
            break
    assert seen == [m.meeting_id for m in server.meetings]
    # Only the default page size is implied; a malformed paging request is refused.
    for bad in ({"page": -1}, {"pageSize": 0}, {"page": "1"}):
        assert (await raw(server, "PUT", MEETINGS_PATH, query | bad))[0] == 400
