"""ChiliPiperClient against the real ChiliPiperServer sandbox on 127.0.0.1."""

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
from src.sandbox.chilipiper import ChiliPiperServer, parse_duration
from src.sandbox.data import SANDBOX_CREDENTIALS, TRIAL_USERS
from src.services.chilipiper import (
    AVAILABILITY_PATH,
    BOOKING_PATH,
    IDEMPOTENCY_HEADER,
    BookedMeeting,
    ChiliPiperClient,
    DemoSlot,
    SlotUnavailable,
    booking_key,
    spoken_time,
)
from src.services.http import HttpOptions
from tests.fault_helpers import down_then_up

API_KEY = SANDBOX_CREDENTIALS["CHILIPIPER_API_KEY"]
DISTRIBUTION = SANDBOX_CREDENTIALS["CHILIPIPER_DISTRIBUTION_ID"]
MEETING_TYPE = SANDBOX_CREDENTIALS["CHILIPIPER_MEETING_TYPE_ID"]
FAST = HttpOptions(timeout=0.5, connect_timeout=0.3)
NOW = datetime(2030, 1, 4, 12, 0, tzinfo=UTC)  # used as the meeting-type version time
MONDAY = datetime(2030, 1, 7, tzinfo=UTC)
NEW_YORK = ZoneInfo("America/New_York")
JANE = TRIAL_USERS[0]


def at(day_offset: int, hour: int) -> datetime:
    return MONDAY + timedelta(days=day_offset, hours=hour)


@pytest.fixture
async def server() -> AsyncIterator[ChiliPiperServer]:
    srv = ChiliPiperServer()
    await srv.start()
    yield srv
    await srv.stop()


def make_client(server: ChiliPiperServer, api_key: str = API_KEY) -> ChiliPiperClient:
    return ChiliPiperClient(
        api_key, DISTRIBUTION, MEETING_TYPE, server.base_url, options=FAST, now=lambda: NOW
    )


@pytest.fixture
async def client(server: ChiliPiperServer) -> AsyncIterator[ChiliPiperClient]:
    async with make_client(server) as c:
        yield c


def bookings(server: ChiliPiperServer) -> list[Any]:
    return server.requests(BOOKING_PATH, "POST")


# -- availability -----------------------------------------------------------------------------


def test_fixed_dates_are_what_the_tests_assume() -> None:
    assert MONDAY.weekday() == 0


async def test_demo_slots(client: ChiliPiperClient, server: ChiliPiperServer) -> None:
    slots = await client.get_demo_slots(MONDAY)

    assert [s.starts_at for s in slots] == [at(0, 15), at(0, 17), at(0, 19)]
    assert [s.slot_id for s in slots] == [
        "slot-20300107T1500Z",
        "slot-20300107T1700Z",
        "slot-20300107T1900Z",
    ]
    assert [s.spoken(NEW_YORK) for s in slots] == [
        "Monday at 10 AM",
        "Monday at 12 PM",
        "Monday at 2 PM",
    ]
    (request,) = server.requests(AVAILABILITY_PATH)
    assert request.body == {
        "expectedHost": {"type": "AssigneeFromDistribution", "distributionId": DISTRIBUTION},
        "attendees": [
            {"type": "DistributionAssignee", "distributionId": DISTRIBUTION, "required": True}
        ],
        "meetingTypeRef": {"id": MEETING_TYPE, "timestamp": "2030-01-04T12:00:00Z"},
        "interval": {"startsAt": "2030-01-07T00:00:00Z", "duration": "P5D"},
    }


@pytest.mark.parametrize(
    ("start", "days", "limit", "expected"),
    [
        (at(4, 18), 5, 3, [at(4, 19), at(7, 15), at(7, 17)]),  # Friday: skips the weekend
        (at(0, 15) + timedelta(minutes=30), 5, 3, [at(0, 17), at(0, 19), at(1, 15)]),
        (at(0, 0), 2, 10, [at(d, h) for d in (0, 1) for h in (15, 17, 19)]),
        (at(5, 0), 2, 3, []),  # a weekend: nothing open
        (datetime(2030, 1, 7, 9, tzinfo=NEW_YORK), 1, 3, [at(0, 15), at(0, 17), at(0, 19)]),
    ],
    ids=["friday", "mid-slot", "limit", "weekend", "local-tz"],
)
async def test_demo_slot_windows(
    client: ChiliPiperClient,
    start: datetime,
    days: int,
    limit: int,
    expected: list[datetime],
) -> None:
    slots = await client.get_demo_slots(start, days=days, limit=limit)
    assert [s.starts_at for s in slots] == expected


@pytest.mark.parametrize(
    ("start", "days", "limit"),
    [(datetime(2030, 1, 7), 5, 3), (MONDAY, 0, 3), (MONDAY, 8, 3), (MONDAY, 5, 0)],
)
async def test_demo_slots_reject_bad_arguments_without_sending(
    client: ChiliPiperClient, server: ChiliPiperServer, start: datetime, days: int, limit: int
) -> None:
    with pytest.raises(ValueError):
        await client.get_demo_slots(start, days=days, limit=limit)
    assert server.journal == []


@pytest.mark.parametrize("api_key", ["wrong-key", f"Bearer {API_KEY}"])
async def test_wrong_api_key_fails_authentication(server: ChiliPiperServer, api_key: str) -> None:
    async with make_client(server, api_key) as cp:
        with pytest.raises(AuthenticationFailed) as info:
            await cp.get_demo_slots(MONDAY)
    assert not info.value.retryable


async def _raw(
    server: ChiliPiperServer, path: str, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{server.base_url}{path}",
            json=body,
            headers={"Authorization": f"Bearer {API_KEY}", **(headers or {})},
        ) as resp,
    ):
        return resp.status, await resp.text()


def _valid_availability_body() -> dict[str, Any]:
    return {
        "expectedHost": {"type": "AssigneeFromDistribution", "distributionId": DISTRIBUTION},
        "attendees": [
            {"type": "DistributionAssignee", "distributionId": DISTRIBUTION, "required": True}
        ],
        "meetingTypeRef": {"id": MEETING_TYPE, "timestamp": "2030-01-04T12:00:00Z"},
        "interval": {"startsAt": "2030-01-07T00:00:00Z", "duration": "7 days"},
    }


def _without(body: dict[str, Any], *path: str | int) -> dict[str, Any]:
    target: Any = body
    for step in path[:-1]:
        target = target[step]
    del target[path[-1]]
    return body


@pytest.mark.parametrize(
    "path",
    [
        ("attendees", 0, "required"),
        ("attendees", 0, "type"),
        ("expectedHost",),
        ("meetingTypeRef", "timestamp"),
        ("interval", "duration"),
        ("interval", "startsAt"),
    ],
)
async def test_sandbox_rejects_requests_missing_required_fields(
    server: ChiliPiperServer, path: tuple[str | int, ...]
) -> None:
    assert (await _raw(server, AVAILABILITY_PATH, _valid_availability_body()))[0] == 200

    status, text = await _raw(
        server, AVAILABILITY_PATH, _without(_valid_availability_body(), *path)
    )

    assert status == 400 and text.startswith("Invalid value for: body")


async def test_sandbox_rejects_empty_attendees_and_unknown_ids(server: ChiliPiperServer) -> None:
    body = _valid_availability_body()
    body["attendees"] = []
    assert (await _raw(server, AVAILABILITY_PATH, body))[0] == 400
    body = _valid_availability_body()
    body["attendees"][0]["required"] = "yes"
    assert (await _raw(server, AVAILABILITY_PATH, body))[0] == 400
    body = _valid_availability_body()
    body["expectedHost"]["distributionId"] = "someone-else"
    assert (await _raw(server, AVAILABILITY_PATH, body))[0] == 404


# -- booking -------------------------------------------------------------------------------


async def test_book_demo(client: ChiliPiperClient, server: ChiliPiperServer) -> None:
    slot = (await client.get_demo_slots(MONDAY))[0]

    meeting = await client.book_demo(JANE.email, "Jane Doe", slot)

    assert isinstance(meeting, BookedMeeting)
    assert meeting.starts_at == slot.starts_at and meeting.slot_id == slot.slot_id
    assert meeting.meeting_id == server.meetings[0].meeting_id
    assert meeting.link and meeting.meeting_id in meeting.link
    assert meeting.spoken_summary() == "You're all set for the demo at the time you picked."
    assert meeting.spoken_summary(UTC) == "You're all set for a demo on Monday at 3 PM."
    assert meeting.spoken_summary(NEW_YORK) == "You're all set for a demo on Monday at 10 AM."
    (stored,) = server.meetings
    assert (stored.guest_email, stored.guest_name) == (JANE.email, "Jane Doe")
    (request,) = bookings(server)
    assert request.headers[IDEMPOTENCY_HEADER] == booking_key(
        DISTRIBUTION, MEETING_TYPE, JANE.email, slot.starts_at
    )
    assert request.body["startTime"] == "2030-01-07T15:00:00Z"
    # The booked slot is no longer offered.
    assert [s.starts_at for s in await client.get_demo_slots(MONDAY)] == [
        at(0, 17),
        at(0, 19),
        at(1, 15),
    ]


async def test_booking_twice_makes_one_meeting_and_one_request(
    client: ChiliPiperClient, server: ChiliPiperServer
) -> None:
    slot = DemoSlot.at(at(0, 15))

    first = await client.book_demo(JANE.email, "Jane Doe", slot)
    again = await client.book_demo(f" {JANE.email.upper()} ", "Jane", slot)

    assert again == first
    assert len(server.meetings) == 1 and len(bookings(server)) == 1


async def test_concurrent_duplicate_bookings_make_one_meeting(
    client: ChiliPiperClient, server: ChiliPiperServer
) -> None:
    slot = DemoSlot.at(at(0, 17))

    results = await asyncio.gather(*(client.book_demo(JANE.email, "Jane", slot) for _ in range(4)))

    assert len({r.meeting_id for r in results}) == 1
    assert len(server.meetings) == 1 and len(bookings(server)) == 1


async def test_a_second_process_retrying_gets_the_same_meeting(server: ChiliPiperServer) -> None:
    slot = DemoSlot.at(at(1, 19))
    async with make_client(server) as first, make_client(server) as second:
        one, two = await asyncio.gather(
            first.book_demo(JANE.email, "Jane", slot), second.book_demo(JANE.email, "Jane", slot)
        )

    assert one == two
    assert len(server.meetings) == 1
    assert sorted(e.status or 0 for e in bookings(server)) == [200, 201]  # one replay


async def test_retry_after_a_lost_response_makes_one_meeting(
    client: ChiliPiperClient, server: ChiliPiperServer
) -> None:
    slot = DemoSlot.at(at(0, 15))
    server.inject(BOOKING_PATH, FaultKind.SLOW, count=1, delay_ms=700)  # beyond the 0.5 s

    with pytest.raises(ServiceTimeout):
        await client.book_demo(JANE.email, "Jane", slot)
    for _ in range(100):  # the server finishes the first attempt after its delay
        if server.meetings:
            break
        await asyncio.sleep(0.01)
    assert len(server.meetings) == 1  # the write happened; only the answer was lost

    meeting = await client.book_demo(JANE.email, "Jane", slot)

    assert meeting.meeting_id == server.meetings[0].meeting_id
    assert len(server.meetings) == 1
    first, second = bookings(server)
    assert first.headers[IDEMPOTENCY_HEADER] == second.headers[IDEMPOTENCY_HEADER]
    assert second.status == 200  # answered from the idempotency record


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        (FaultKind.REFUSE, ConnectionFailed),
        (FaultKind.SERVICE_UNAVAILABLE, ServiceUnavailable),
        (FaultKind.RATE_LIMITED, RateLimited),
    ],
)
async def test_booking_retried_after_a_failure_makes_one_meeting(
    client: ChiliPiperClient,
    server: ChiliPiperServer,
    kind: FaultKind,
    expected: type[ServiceError],
) -> None:
    slot = DemoSlot.at(at(2, 15))
    server.inject(BOOKING_PATH, kind, count=1)

    with pytest.raises(expected) as info:
        await client.book_demo(JANE.email, "Jane", slot)
    assert info.value.retryable
    meeting = await client.book_demo(JANE.email, "Jane", slot)

    assert [m.meeting_id for m in server.meetings] == [meeting.meeting_id]


async def test_slot_taken_by_someone_else(
    client: ChiliPiperClient, server: ChiliPiperServer
) -> None:
    slot = DemoSlot.at(at(0, 15))
    await client.book_demo("someone@example.com", "Someone", slot)

    with pytest.raises(SlotUnavailable) as info:
        await client.book_demo(JANE.email, "Jane", slot)

    assert isinstance(info.value, InvalidRequest) and info.value.status == 409
    assert not info.value.retryable
    assert len(server.meetings) == 1


async def test_a_time_that_was_never_offered_is_unavailable(client: ChiliPiperClient) -> None:
    with pytest.raises(SlotUnavailable):
        await client.book_demo(JANE.email, "Jane", DemoSlot.at(at(5, 15)))  # Saturday


@pytest.mark.parametrize(
    ("email", "name"),
    [("not-an-email", "Jane"), ("jane @x.com", "Jane"), (JANE.email, "Jane\x00"), ("", "")],
)
async def test_book_demo_rejects_bad_input_without_sending(
    client: ChiliPiperClient, server: ChiliPiperServer, email: str, name: str
) -> None:
    with pytest.raises(InvalidRequest):
        await client.book_demo(email, name, DemoSlot.at(at(0, 15)))
    assert server.journal == []


async def test_blank_name_is_left_out(client: ChiliPiperClient, server: ChiliPiperServer) -> None:
    await client.book_demo(JANE.email, "   ", DemoSlot.at(at(0, 15)))
    assert bookings(server)[0].body["guest"] == {"email": JANE.email}


async def test_missing_booking_endpoint_is_invalid_request(server: ChiliPiperServer) -> None:
    async with ChiliPiperClient(
        API_KEY, DISTRIBUTION, MEETING_TYPE, f"{server.base_url}/elsewhere", options=FAST
    ) as cp:
        with pytest.raises(InvalidRequest) as info:
            await cp.book_demo(JANE.email, "Jane", DemoSlot.at(at(0, 15)))
    assert info.value.status == 404 and not info.value.counts_for_breaker


async def test_sandbox_booking_contract(server: ChiliPiperServer) -> None:
    body = _valid_availability_body()
    del body["interval"]
    body |= {"startTime": "2030-01-07T15:00:00Z", "guest": {"email": "a@example.com"}}

    assert (await _raw(server, BOOKING_PATH, body))[0] == 400  # no idempotency key
    assert (await _raw(server, BOOKING_PATH, body, {IDEMPOTENCY_HEADER: "k1"}))[0] == 201
    assert (await _raw(server, BOOKING_PATH, body, {IDEMPOTENCY_HEADER: "k1"}))[0] == 200
    body["startTime"] = "2030-01-07T17:00:00Z"
    assert (await _raw(server, BOOKING_PATH, body, {IDEMPOTENCY_HEADER: "k1"}))[0] == 422
    assert len(server.meetings) == 1


# -- faults -------------------------------------------------------------------------------------

FAULTS = [
    pytest.param(FaultKind.REFUSE, {}, ConnectionFailed, id="refuse"),
    pytest.param(FaultKind.SERVER_ERROR, {}, ServiceUnavailable, id="500"),
    pytest.param(FaultKind.SERVICE_UNAVAILABLE, {}, ServiceUnavailable, id="503"),
    pytest.param(FaultKind.RATE_LIMITED, {"retry_after": 4}, RateLimited, id="429"),
    pytest.param(FaultKind.HANG, {}, ServiceTimeout, id="hang"),
    pytest.param(FaultKind.SLOW, {"delay_ms": 60}, None, id="slow-under-timeout"),
    pytest.param(FaultKind.MALFORMED, {}, BadResponse, id="malformed"),
    pytest.param(FaultKind.UNAUTHORIZED, {}, AuthenticationFailed, id="401"),
]


@pytest.mark.parametrize(("kind", "params", "expected"), FAULTS)
async def test_fault_matrix_on_availability(
    client: ChiliPiperClient,
    server: ChiliPiperServer,
    kind: FaultKind,
    params: dict[str, Any],
    expected: type[ServiceError] | None,
) -> None:
    server.inject("*", kind, count=None, **params)

    if expected is None:
        assert len(await client.get_demo_slots(MONDAY)) == 3
        return
    with pytest.raises(expected) as info:
        await client.get_demo_slots(MONDAY)
    error = info.value
    assert error.service == "chilipiper"
    assert error.retryable is (expected not in (BadResponse, AuthenticationFailed))
    if kind is FaultKind.RATE_LIMITED:
        assert isinstance(error, RateLimited) and error.retry_after == 4.0
    if kind is FaultKind.UNAUTHORIZED:
        assert len(server.requests(AVAILABILITY_PATH)) == 1  # an API key is not refreshed


async def test_flapping_service(client: ChiliPiperClient, server: ChiliPiperServer) -> None:
    server.inject("*", FaultKind.FLAPPING, every=2)

    outcomes = []
    for _ in range(4):
        try:
            await client.get_demo_slots(MONDAY)
            outcomes.append("ok")
        except ServiceUnavailable:
            outcomes.append("503")

    assert outcomes == ["ok", "503", "ok", "503"]


async def test_service_down_then_back(client: ChiliPiperClient, server: ChiliPiperServer) -> None:
    assert len(await down_then_up(server, lambda: client.get_demo_slots(MONDAY))) == 3


# -- logs, speech and helpers -----------------------------------------------------------------


async def test_logs_carry_no_key_email_or_name(
    server: ChiliPiperServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with make_client(server) as cp:
        slot = (await cp.get_demo_slots(MONDAY))[0]
        await cp.book_demo(JANE.email, "Jane Doe", slot)
        await cp.book_demo(JANE.email, "Jane Doe", slot)
        with pytest.raises(SlotUnavailable):
            await cp.book_demo("other.person@example.com", "Other Person", slot)
    async with make_client(server, "wrong-api-key") as cp:
        with pytest.raises(AuthenticationFailed):
            await cp.get_demo_slots(MONDAY)

    text = caplog.text + "\n".join(r.getMessage() for r in caplog.records)
    assert "chilipiper POST" in text and "demo booked" in text
    for secret in (API_KEY, "wrong-api-key", JANE.email, "jane.doe", "Jane", "other.person"):
        assert secret not in text


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        (datetime(2030, 1, 8, 15, tzinfo=UTC), "Tuesday at 3 PM"),
        (datetime(2030, 1, 8, 12, tzinfo=UTC), "Tuesday at 12 PM"),
        (datetime(2030, 1, 8, 0, tzinfo=UTC), "Tuesday at 12 AM"),
        (datetime(2030, 1, 8, 9, 30, tzinfo=UTC), "Tuesday at 9:30 AM"),
        (datetime(2030, 1, 8, 3, tzinfo=UTC), "Monday at 10 PM"),  # New York is a day behind
    ],
)
def test_spoken_time(when: datetime, expected: str) -> None:
    tz = NEW_YORK if when.hour == 3 else UTC
    assert spoken_time(when, tz) == expected
    assert DemoSlot.at(when).spoken(tz) == expected


def test_demo_slot_needs_an_aware_time_and_has_a_stable_id() -> None:
    with pytest.raises(ValueError):
        DemoSlot.at(datetime(2030, 1, 8, 15))
    with pytest.raises(ValueError):
        DemoSlot("slot-x", datetime(2030, 1, 8, 15))
    local = datetime(2030, 1, 8, 10, tzinfo=NEW_YORK)
    assert DemoSlot.at(local).slot_id == DemoSlot.at(at(1, 15)).slot_id == "slot-20300108T1500Z"


def test_booking_key_is_deterministic_and_reveals_no_email() -> None:
    key = booking_key(DISTRIBUTION, MEETING_TYPE, JANE.email, at(0, 15))

    assert key == booking_key(DISTRIBUTION, MEETING_TYPE, f" {JANE.email.upper()}", at(0, 15))
    assert key == booking_key(
        DISTRIBUTION, MEETING_TYPE, JANE.email, datetime(2030, 1, 7, 10, tzinfo=NEW_YORK)
    )
    assert key != booking_key(DISTRIBUTION, MEETING_TYPE, JANE.email, at(0, 17))
    assert key != booking_key(DISTRIBUTION, MEETING_TYPE, "sam.lee@globex.example.com", at(0, 15))
    assert "jane" not in key and "@" not in key


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("P7D", timedelta(days=7)),
        ("PT168H", timedelta(days=7)),
        ("PT1H30M", timedelta(minutes=90)),
        ("7 days", timedelta(days=7)),
        ("1 hour", timedelta(hours=1)),
        ("30 minutes", timedelta(minutes=30)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "P", "PT", "7", "seven days", "P1W"])
def test_parse_duration_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


async def test_a_retry_repeats_the_very_same_request(server: ChiliPiperServer) -> None:
    ticks = iter(NOW + timedelta(seconds=7 * i) for i in range(100))  # time moves on
    slot = DemoSlot.at(at(0, 15))
    async with ChiliPiperClient(
        API_KEY,
        DISTRIBUTION,
        MEETING_TYPE,
        server.base_url,
        options=FAST,
        now=lambda: next(ticks),
    ) as client:
        server.inject(BOOKING_PATH, FaultKind.SLOW, count=1, delay_ms=700)  # answer lost
        with pytest.raises(ServiceTimeout):
            await client.book_demo(JANE.email, "Jane", slot)
        for _ in range(100):
            if server.meetings:
                break
            await asyncio.sleep(0.01)
        meeting = await client.book_demo(JANE.email, "Jane", slot)
    first, second = bookings(server)
    assert first.body == second.body  # the strict store replays it instead of a 422
    assert second.status == 200
    assert meeting.meeting_id == server.meetings[0].meeting_id
    assert len(server.meetings) == 1
