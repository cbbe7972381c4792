"""Demo times from ChiliPiper: open a booking session, book the chosen time on it, and
hand the chosen time (with the scheduling link's booking page) to sales through the CRM
when booking by voice is not possible."""

from __future__ import annotations

from collections.abc import Awaitable

from livekit.agents.llm import ToolError

from src.errors import InvalidRequest, NotFound, ServiceTimeout
from src.phrases import (
    ASK_EMAIL,
    BOOK_FALLBACK,
    NO_SLOTS,
    NO_SLOTS_OFFERED,
    NOT_AN_OPTION,
    SLOTS_FALLBACK,
    already_booked,
    demo_handed_to_sales,
    demo_link_from_sales,
    demo_options,
    slot_taken,
)
from src.redaction import get_logger
from src.registry import READ, WRITE_WITH_LOOKUP, OutcomeUnknown
from src.services.chilipiper import (
    BookedMeeting,
    BookingSession,
    DemoSlot,
    FormIncomplete,
    Guest,
    SlotUnavailable,
    spoken_time,
)
from src.state import TrialistData
from src.tools.crm import crm_write
from src.tools.runtime import ToolRuntime, zone

__all__ = ["book_demo", "demo_slots"]

logger = get_logger("pandadoc.agent")
OPTIONS = 3  # demo times offered at once


def _guest(data: TrialistData) -> Guest:
    if not data.email:
        raise ToolError(ASK_EMAIL)
    return Guest(data.email, data.timezone, data.name or "", data.company or "")


def _offer(data: TrialistData, session: BookingSession) -> dict[int, str]:
    """Keep ``session`` (route id and start times) and number its first times."""
    data.booking_session = session
    data.offered_slots = dict(enumerate(session.slots(OPTIONS), start=1))
    tz = zone(data.timezone)
    return {i: s.spoken(tz) for i, s in data.offered_slots.items()}


async def demo_slots(rt: ToolRuntime, data: TrialistData) -> str:
    """Open a booking session for the caller; its first times become numbered options."""
    client = rt.services.chilipiper
    if client is None:
        raise ToolError(SLOTS_FALLBACK)
    guest = _guest(data)
    try:
        session = await rt.protected(
            "chilipiper", lambda: client.open_session(guest, rt.now()), SLOTS_FALLBACK, kind=READ
        )
    except (NotFound, InvalidRequest):
        raise ToolError(SLOTS_FALLBACK) from None
    offers = _offer(data, session)
    return demo_options(offers) if offers else NO_SLOTS


async def book_demo(rt: ToolRuntime, data: TrialistData, option: int) -> str:
    """Book the offered time ``option``; one demo per caller."""
    session = data.booking_session
    if not data.offered_slots or session is None:
        raise ToolError(NO_SLOTS_OFFERED)
    slot = data.offered_slots.get(option) if isinstance(option, int) else None
    if slot is None:
        raise ToolError(NOT_AN_OPTION)
    tz = zone(data.timezone)
    if data.booked_meeting is not None:
        if data.booked_meeting.slot_id == slot.slot_id:
            return data.booked_meeting.spoken_summary(tz)
        # One demo per caller: never a second meeting by accident.
        raise ToolError(already_booked(spoken_time(data.booked_meeting.starts_at, tz)))
    guest = _guest(data)
    client = rt.services.chilipiper
    if client is None:
        raise ToolError(BOOK_FALLBACK)
    deadline_at = rt.deadline()

    def book() -> Awaitable[BookedMeeting]:
        return rt.protected(
            "chilipiper",
            lambda: client.book(session, slot, guest, now=rt.now()),
            BOOK_FALLBACK,
            kind=WRITE_WITH_LOOKUP,
            deadline_at=deadline_at - rt.reserve(),
        )

    try:
        # A write with a lookup: a failure that certainly did not apply is retried (an
        # attempt renews a used or expired route). An unknown outcome is never re-sent
        # blind: the client looks the meeting up in ChiliPiper's meeting list first
        # (issue #26), so one more call resolves it (found: booked; certainly absent:
        # sent once). The reserve leaves time for the hand-off.
        try:
            meeting = await book()
        except OutcomeUnknown as exc:
            # A hang says the vendor is slow now: a lookup would likely hang too, so the
            # time left goes to the hand-off (the client looks it up before any rebooking).
            left = deadline_at - rt.reserve() - rt.retry_clock()
            hung = isinstance(exc.__cause__, ServiceTimeout | TimeoutError)
            if hung or left < rt.settings.resilience.service_timeout:
                raise
            logger.info("Booking outcome unknown; looking it up before anything else")
            meeting = await book()
    except SlotUnavailable as exc:
        return slot_taken(_offer(data, exc.fresh) if exc.fresh is not None else {})
    except FormIncomplete as exc:
        logger.info("Booking form cannot be completed by voice: %s", exc)
        return await hand_demo_to_sales(rt, data, slot, deadline_at)
    except (ToolError, OutcomeUnknown, InvalidRequest, NotFound):
        return await hand_demo_to_sales(rt, data, slot, deadline_at)
    data.booked_meeting = meeting
    return meeting.spoken_summary(tz)


async def hand_demo_to_sales(
    rt: ToolRuntime, data: TrialistData, slot: DemoSlot, deadline_at: float
) -> str:
    """Graceful degradation when booking fails: the chosen time, and the scheduling
    link's public booking page when configured, go to the sales team as a CRM task/note,
    so the caller still gets a human follow-up (or a link to pick the time themselves)."""
    when = slot.spoken(zone(data.timezone))
    client = rt.services.chilipiper
    booking_url = client.booking_url if client is not None else ""
    body = (
        f"The trialist asked for a PandaDoc demo on {when} "
        f"({slot.starts_at.isoformat()}). Automatic booking could not be confirmed "
        "(it may or may not exist in ChiliPiper); please check, and confirm the time "
        "with them by email."
    )
    if booking_url:
        body += f" Booking link to send them to pick or confirm a time: {booking_url}"
    try:
        outcome = await crm_write(rt, data, "Demo requested", body, deadline_at, tool="book_demo")
    except ToolError:  # no CRM could answer the lookup
        outcome = "unknown"
    if outcome in ("saved", "queued"):
        data.demo_requested = slot.slot_id
        queued = outcome == "queued"
        if booking_url:
            return demo_link_from_sales(when, queued=queued)
        return demo_handed_to_sales(when, queued=queued)
    raise ToolError(BOOK_FALLBACK)
